"""
``socksgss demo`` (txsocksgss.cli.demo and its modules): the pieces without
a KDC (what is missing, the printed commands, the live session lines), then the whole demo
as a child process with a real MIT KDC: every printed command is run with
bash exactly as printed and must succeed, the live lines must show what was
negotiated, and SIGINT must end it with status 0 and no realm left behind.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import require_program, run_program
from txsocksgss import cli
from txsocksgss.cli import demo
from txsocksgss.cli.console import StdioConsole
from txsocksgss.cli.demo_instructions import Instructions, format_instructions, socksgss_command
from txsocksgss.cli.demo_page import PAGE_GREETING
from txsocksgss.cli.demo_realm import DemoRealm
from txsocksgss.cli.demo_sessions import SessionReporter
from txsocksgss.cli.kerberos_programs import KERBEROS_PROGRAMS, find_kerberos_programs
from txsocksgss.cli.status import EXIT_USAGE

COMMANDS_START = "Paste these commands into another shell:"
COMMANDS_END = "Sessions as the proxy sees them"


def printed_commands(output: str) -> list[str]:
    """The command lines of the block the demo prints (comments and blank lines left out)."""
    block = output.split(COMMANDS_START, 1)[1].split(COMMANDS_END, 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def fake_programs(directory: str, names: Any = KERBEROS_PROGRAMS) -> None:
    for name in names:
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\nexit 99\n")
        os.chmod(path, 0o755)


class Capture(StdioConsole):
    def __init__(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        super().__init__("demo", self.stdout, self.stderr)


def finished(coroutine: Any) -> Any:
    """The result of a coroutine that must finish without waiting on the reactor."""
    results: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results, "the coroutine waited on something"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


# --- without a KDC -------------------------------------------------------------------------


class RequirementTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="txsocksgss-test-")
        self.addCleanup(shutil.rmtree, self.directory)

    def test_finds_every_program_on_the_path(self) -> None:
        fake_programs(self.directory)
        found, missing = find_kerberos_programs(self.directory)
        self.assertEqual(missing, [])
        self.assertEqual(found["kadmin.local"], os.path.join(self.directory, "kadmin.local"))

    def test_reports_the_missing_programs_in_order(self) -> None:
        fake_programs(self.directory, ["kdb5_util"])
        found, missing = find_kerberos_programs(self.directory)
        self.assertEqual(list(found), ["kdb5_util"])
        self.assertEqual(missing, ["krb5kdc", "kadmin.local", "kinit"])

    def test_missing_programs_exit_2_naming_the_debian_packages(self) -> None:
        console = Capture()
        status = finished(demo.run_demo(object(), port=free_port(), console=console,
                                        search_path=self.directory))
        self.assertEqual(status, EXIT_USAGE)
        message = console.stderr.getvalue()
        self.assertIn("krb5kdc (krb5-kdc)", message)
        self.assertIn("kinit (krb5-user)", message)
        self.assertIn("sudo apt-get install krb5-kdc krb5-admin-server krb5-user", message)
        self.assertEqual(console.stdout.getvalue(), "")

    def test_busy_port_exits_2_before_creating_anything(self) -> None:
        fake_programs(self.directory)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            console = Capture()
            status = finished(demo.run_demo(object(), port=port, console=console, search_path=self.directory))
        self.assertEqual(status, EXIT_USAGE)
        self.assertIn(f"cannot listen on 127.0.0.1:{port}", console.stderr.getvalue())
        self.assertIn("--port", console.stderr.getvalue())

    def test_the_subcommand_is_registered(self) -> None:
        args = cli.build_parser().parse_args(["demo", "--port", "1081", "-v"])
        self.assertEqual((args.port, args.verbose, args.run), (1081, True, demo._run))
        self.assertEqual(cli.build_parser().parse_args(["demo"]).port, demo.DEFAULT_PORT)

    def test_a_bad_port_is_a_usage_error(self) -> None:
        self.patch(sys, "stderr", io.StringIO())
        self.assertEqual(cli.main(["demo", "--port", "70000"]), 2)
        self.assertEqual(cli.main(["demo", "--port", "http"]), 2)


class SocksgssCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.bin = tempfile.mkdtemp(prefix="txsocksgss-test-")
        self.addCleanup(shutil.rmtree, self.bin)
        self.python = os.path.join(self.bin, "python")
        fake_programs(self.bin, ["python", "socksgss"])

    def test_bare_name_when_path_finds_the_interpreters_script(self) -> None:
        script = os.path.join(self.bin, "socksgss")
        self.assertEqual(socksgss_command(self.python, lambda name: script), "socksgss")

    def test_absolute_path_when_path_finds_none(self) -> None:
        self.assertEqual(socksgss_command(self.python, lambda name: None),
                         os.path.join(self.bin, "socksgss"))

    def test_absolute_path_when_path_finds_another_one(self) -> None:
        other = tempfile.mkdtemp(prefix="txsocksgss-test-")
        self.addCleanup(shutil.rmtree, other)
        fake_programs(other, ["socksgss"])
        self.assertEqual(socksgss_command(self.python, lambda name: os.path.join(other, "socksgss")),
                         os.path.join(self.bin, "socksgss"))

    def test_module_when_the_interpreter_has_no_script(self) -> None:
        os.remove(os.path.join(self.bin, "socksgss"))
        self.assertEqual(socksgss_command(self.python, lambda name: None),
                         f"{self.python} -m txsocksgss.cli")


class InstructionTests(SynchronousTestCase):
    def setUp(self) -> None:
        realm = DemoRealm("/tmp/socksgss-demo-x", 41234, "Secret123")
        self.text = format_instructions(Instructions(realm, 1081, 8080, "/venv/bin/socksgss"))

    def test_commands_block_is_the_export_and_four_commands(self) -> None:
        self.assertEqual(printed_commands(self.text), [
            "export KRB5_CONFIG=/tmp/socksgss-demo-x/krb5.conf KRB5CCNAME=FILE:/tmp/socksgss-demo-x/ccache",
            "klist",
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /venv/bin/socksgss connect --proxy socks5h://localhost:1081 "
            "--method gssapi --gssapi-protection confidentiality 127.0.0.1 8080",
            "curl --socks5-basic --proxy-user demo:Secret123 --socks5-hostname localhost:1081 http://127.0.0.1:8080/",
            "curl --socks5-basic --socks5-hostname localhost:1081 http://127.0.0.1:8080/",
        ])

    def test_summary_names_the_realm_principals_and_paths(self) -> None:
        for text in ("SOCKSGSS.TEST", "krb5kdc on 127.0.0.1:41234", "demo@SOCKSGSS.TEST, password Secret123",
                     "rcmd/localhost@SOCKSGSS.TEST, keytab /tmp/socksgss-demo-x/proxy.keytab",
                     "SOCKS 5 on 127.0.0.1:1081", "removed when the demo stops"):
            self.assertIn(text, self.text)

    def test_realm_configuration_stays_on_loopback_without_dns(self) -> None:
        realm = DemoRealm("/d", 41234, "pw")
        krb5 = realm.krb5_conf_text()
        for setting in ("rdns = false", "dns_canonicalize_hostname = false", "ignore_acceptor_hostname = true",
                        "dns_lookup_kdc = false", "kdc = 127.0.0.1:41234", "default_realm = SOCKSGSS.TEST"):
            self.assertIn(setting, krb5)
        kdc = realm.kdc_conf_text()
        self.assertIn("kdc_listen = 127.0.0.1:41234", kdc)
        self.assertIn("kdc_tcp_listen = 127.0.0.1:41234", kdc)
        self.assertIn("database_name = /d/principal", kdc)


def gssapi_login(principal: str, agreed: str = "confidentiality", requested: str = "confidentiality",
                 mechanism: str = "krb5") -> dict[str, Any]:
    return {"log_namespace": "txsocksgss.auth.gssapi", "log_level": LogLevel.info, "log_format": "GSS-API: ...",
            "principal": principal, "mechanism": mechanism, "requested": requested, "agreed": agreed,
            "tokens": 1}


def session(method: str, user: str = "-", protection: str = "-", command: str = "connect",
            outcome: str = "closed") -> dict[str, Any]:
    return {"log_namespace": "txsocksgss.session", "log_level": LogLevel.info, "log_format": "session ...",
            "log_time": 0.0, "client": "127.0.0.1:5000", "version": 5, "user": user, "method": method,
            "protection": protection, "command": command, "destination": "127.0.0.1:8080", "up": 18,
            "down": 321, "duration": 0.01, "outcome": outcome}


class SessionReporterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.reporter = SessionReporter(self.lines.append, self.errors.append)

    def test_gssapi_session_shows_principal_mechanism_and_level(self) -> None:
        self.reporter(gssapi_login("demo@SOCKSGSS.TEST"))
        self.assertEqual(self.lines, [])  # one line per session, when it ends
        self.reporter(session("gssapi", "demo@SOCKSGSS.TEST", "confidentiality"))
        [line] = self.lines
        self.assertIn("session 1: GSS-API as demo@SOCKSGSS.TEST, mechanism krb5, "
                      "protection level 2 (confidentiality); connect 127.0.0.1:8080; 18 B up, 321 B down; closed",
                      line)
        self.assertRegex(line, r"^\[\d\d:\d\d:\d\d\] ")

    def test_a_level_other_than_the_one_asked_for_is_shown(self) -> None:
        self.reporter(gssapi_login("demo@R", agreed="integrity", requested="confidentiality", mechanism="spnego"))
        self.reporter(session("gssapi", "demo@R", "integrity"))
        self.assertIn("mechanism spnego, protection level 1 (integrity), asked for level 2 (confidentiality)",
                      self.lines[0])

    def test_sessions_are_matched_to_their_principals_login(self) -> None:
        self.reporter(gssapi_login("alice@R", agreed="clear"))
        self.reporter(gssapi_login("bob@R", agreed="integrity"))
        self.reporter(session("gssapi", "bob@R"))
        self.reporter(session("gssapi", "alice@R"))
        self.assertIn("bob@R, mechanism krb5, protection level 1 (integrity)", self.lines[0])
        self.assertIn("alice@R, mechanism krb5, protection level 0 (clear)", self.lines[1])

    def test_userpass_and_none_sessions(self) -> None:
        self.reporter(session("userpass", "demo"))
        self.reporter(session("none"))
        self.assertIn("session 1: username/password as demo; connect", self.lines[0])
        self.assertIn("session 2: no authentication; connect", self.lines[1])

    def test_failed_authentication_shows_the_outcome(self) -> None:
        self.reporter(session("gssapi", command="-", outcome="authentication failed: bad ticket"))
        self.assertTrue(self.lines[0].endswith("session 1: GSS-API, not authenticated; "
                                               "authentication failed: bad ticket"), self.lines[0])

    def test_warnings_and_failures_go_to_the_error_stream_other_events_nowhere(self) -> None:
        self.reporter({"log_namespace": "x", "log_level": LogLevel.info, "log_format": "chatter"})
        self.reporter({"log_namespace": "x", "log_level": LogLevel.warn, "log_format": "careful {what}",
                       "what": "now"})
        self.reporter({"log_namespace": "y", "log_level": LogLevel.critical, "log_format": "broke",
                       "log_failure": Failure(ValueError("boom"))})
        self.assertEqual(self.errors, ["[x] careful now", "[y] broke: boom"])
        self.assertEqual(self.lines, [])

    def test_verbose_shows_every_event(self) -> None:
        reporter = SessionReporter(self.lines.append, self.errors.append, verbose=True)
        reporter({"log_namespace": "x", "log_level": LogLevel.info, "log_format": "chatter"})
        self.assertEqual(self.errors, ["[x] chatter"])


# --- the whole demo, with a real KDC -------------------------------------------------------


class DemoProcess(ProcessProtocol):
    """The demo as a child: its output so far, Deferreds for text to come, its exit."""

    def __init__(self) -> None:
        self.stdout = ""
        self.stderr = ""
        self.waiting: list[tuple[str, Deferred[str]]] = []
        self.ended: Deferred[BaseException] = Deferred()  # ProcessDone or ProcessTerminated
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.stdout += data.decode()
        for entry in list(self.waiting):
            if entry[0] in self.stdout:
                self.waiting.remove(entry)
                entry[1].callback(self.stdout)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data.decode()

    def waitFor(self, text: str) -> Deferred[str]:
        """Fires with the whole output once ``text`` is in it; fails if the demo ends first."""
        waiter: Deferred[str] = Deferred()
        if text in self.stdout:
            waiter.callback(self.stdout)
        elif not self.running:
            waiter.errback(AssertionError(f"the demo ended without printing {text!r}:\n{self.stdout}\n{self.stderr}"))
        else:
            self.waiting.append((text, waiter))
        return waiter

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        waiting, self.waiting = self.waiting, []
        for text, waiter in waiting:
            waiter.errback(AssertionError(f"the demo ended without printing {text!r}:\n"
                                          f"{self.stdout}\n{self.stderr}"))
        self.ended.callback(reason.value)


def fresh_shell_environment() -> dict[str, str]:
    """Our environment without any Kerberos variable (the test realm's, if another test made one)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("KRB5")}


class DemoEndToEndTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        for program in ("krb5kdc", "kdb5_util", "kadmin.local", "kinit", "klist", "curl"):
            require_program(program)
        self.env = fresh_shell_environment()

    def startDemo(self, port: int) -> DemoProcess:
        process = DemoProcess()
        script = os.path.join(os.path.dirname(sys.executable), "socksgss")
        if os.access(script, os.X_OK):
            argv = [script, "demo", "--port", str(port)]
        else:
            argv = [sys.executable, "-m", "txsocksgss.cli", "demo", "--port", str(port)]
        transport = reactor.spawnProcess(process, argv[0], argv, env=self.env)

        def stop() -> Deferred[Any] | None:
            if not process.running:
                return None
            transport.signalProcess("TERM")
            return process.ended

        self.addCleanup(stop)
        return process

    @pytest.mark.kerberos
    @inlineCallbacks
    def test_printed_commands_work_as_printed_and_sigint_ends_cleanly(self):
        port = free_port()
        process = self.startDemo(port)
        output = yield process.waitFor(COMMANDS_END)
        directory = re.search(r"^  realm .* in (\S+) \(removed", output, re.MULTILINE).group(1)
        self.assertTrue(os.path.isdir(directory))

        commands = printed_commands(output)
        self.assertEqual(len(commands), 5, commands)
        self.assertTrue(commands[0].startswith("export KRB5_CONFIG="), commands[0])
        exports = [line for line in commands if line.startswith("export ")]
        for command in commands:
            # Each command as printed, after the export lines above it, as in the shell it is pasted into.
            script = "\n".join([*exports, command]) if not command.startswith("export ") else command
            out, err, code = yield run_program("/bin/bash", ["-c", script], env=self.env)
            self.assertEqual(code, 0, f"{command}\n{out!r}\n{err!r}")
            if command == "klist":
                self.assertIn(b"demo@SOCKSGSS.TEST", out)
            elif not command.startswith("export "):
                self.assertIn(PAGE_GREETING.encode(), out, f"{command}\n{err!r}")

        output = yield process.waitFor("session 3:")
        sessions = [line for line in output.splitlines() if re.match(r"\[\d\d:\d\d:\d\d\] session ", line)]
        self.assertEqual(len(sessions), 3, sessions)
        self.assertIn("session 1: GSS-API as demo@SOCKSGSS.TEST, mechanism krb5, "
                      "protection level 2 (confidentiality); connect 127.0.0.1:", sessions[0])
        self.assertIn("session 2: username/password as demo; connect 127.0.0.1:", sessions[1])
        self.assertIn("session 3: no authentication; connect 127.0.0.1:", sessions[2])

        os.kill(process.transport.pid, signal.SIGINT)  # as Ctrl-C does
        ended = yield process.ended
        self.assertEqual(ended.exitCode, 0, f"{process.stdout}\n{process.stderr}")
        self.assertIn(f"removed the realm in {directory}. Goodbye.", process.stdout)
        self.assertEqual(process.stderr, "")
        self.assertFalse(os.path.exists(directory))

