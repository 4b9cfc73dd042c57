"""
twistd's ``--logger`` factories: `txsocksgss.logs.jsonObserver` writes one
JSON object per line and a session line keeps its fields;
`txsocksgss.logs.fastTextObserver` writes twistd's text log where twistd's
``--logfile`` says, also for the workers' lines.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger, LogPublisher, eventsFromJSONLogFile
from twisted.trial.unittest import SynchronousTestCase

from tests.ops_support import EchoFactory, openTunnel, spawnTwistd
from tests.support import IntegrationTestCase
from tests.helpers.ports import free_port
from txsocksgss import logs
from txsocksgss.server import session
from txsocksgss.server.session import SessionRecord
from txsocksgss.textlog import TextLogObserver
from txsocksgss.server.outcomes import CLOSED

SESSION_FIELDS = ("client", "user", "method", "command", "destination", "up", "down", "duration", "outcome")


class JSONObserverTests(SynchronousTestCase):
    def logSession(self, out: io.StringIO) -> None:
        publisher = LogPublisher(logs.jsonLineObserver(out))
        self.patch(session, "_log", Logger(namespace="txsocksgss.session", observer=publisher))
        record = SessionRecord(client="127.0.0.1:4000", started=10.0, user="alice", method="userpass",
                               command="connect", destination="example.com:443",
                               bytes_from_client=12, bytes_to_client=34)
        record.finish(12.5, CLOSED)

    def test_one_json_object_per_line_with_the_session_fields(self) -> None:
        out = io.StringIO()
        self.logSession(out)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        event = json.loads(lines[0])
        self.assertEqual(
            {key: event[key] for key in SESSION_FIELDS},
            {"client": "127.0.0.1:4000", "user": "alice", "method": "userpass", "command": "connect",
             "destination": "example.com:443", "up": 12, "down": 34, "duration": 2.5, "outcome": "closed"},
        )
        self.assertEqual(event["log_namespace"], "txsocksgss.session")
        self.assertEqual(event["log_level"]["name"], "info")
        self.assertTrue(event["text"].startswith("session client=127.0.0.1:4000 socks5 user=alice"))

    def test_twisted_reads_the_lines_back(self) -> None:
        out = io.StringIO()
        self.logSession(out)
        events = list(eventsFromJSONLogFile(io.StringIO(out.getvalue()), recordSeparator=""))
        self.assertEqual([e["outcome"] for e in events], ["closed"])

    def test_the_environment_variable_names_a_file(self) -> None:
        path = self.mktemp()
        self.patch(os, "environ", {**os.environ, logs.LOG_FILE_VARIABLE: path})
        observer = logs.jsonObserver()
        self.addCleanup(lambda: observer._outFile.close())  # type: ignore[attr-defined]
        Logger(observer=observer).info("hello {who}", who="world")
        with open(path) as f:
            event = json.loads(f.read())
        self.assertEqual((event["who"], event["text"]), ("world", "hello world"))


class TwistdLoggerTests(IntegrationTestCase):
    @inlineCallbacks
    def test_twistd_logger_option_writes_json_lines(self) -> None:
        port = free_port()
        process = spawnTwistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1",
                              twistd_args=("--logger", "txsocksgss.logs.jsonObserver"))
        yield process.waitFor(b"txsocksgss listening on")
        echo_port = self.listen(EchoFactory())
        tunnel = yield openTunnel(self, port, echo_port)
        yield tunnel.roundTrip(b"through json")
        tunnel.transport.loseConnection()
        yield tunnel.lost
        yield process.waitFor(b'"outcome":')
        process.transport.signalProcess(signal.SIGTERM)
        yield process.ended
        events = [json.loads(line) for line in process.out.decode().splitlines()]  # every line is JSON
        sessions = [e for e in events if e.get("log_namespace") == "txsocksgss.session"]
        self.assertEqual(len(sessions), 1, process.output.decode())
        fields = {key: sessions[0][key] for key in SESSION_FIELDS}
        self.assertEqual(fields["destination"], f"127.0.0.1:{echo_port}")
        self.assertEqual((fields["method"], fields["command"], fields["user"]), ("none", "connect", "-"))
        self.assertEqual((fields["up"], fields["down"]), (12, 12))
        self.assertIsInstance(fields["duration"], float)
        self.assertIn(fields["outcome"], ("closed", "client closed"))
        self.assertTrue(fields["client"].startswith("127.0.0.1:"))
        self.assertIn("Server Shut Down.", [e.get("text") for e in events])


class TextObserverForTwistdTests(SynchronousTestCase):
    """`logs.textObserverFor` reads twistd's command line as twistd does for its own text log."""

    def setUp(self) -> None:
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    def logFileOf(self, observer: TextLogObserver) -> str:
        self.addCleanup(observer.outFile.close)
        return str(observer.outFile.path)

    def test_the_logfile_option_in_any_spelling(self):
        path = os.path.abspath(self.mktemp())
        for arguments in (["-n", "--logfile", path], ["--logfile=" + path], ["-nl", path], ["-l" + path, "-n"],
                          ["--nodaemon", "--logf", path, "--logger", "txsocksgss.logs.fastTextObserver",
                           "socksgss", "--logfile", "not-this"]):
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
            observer = logs.textObserverFor(arguments)
            self.assertEqual(self.logFileOf(observer), path, arguments)
            self.assertTrue(callable(signal.getsignal(signal.SIGUSR1)))  # rotated on SIGUSR1, as twistd does
        Logger(observer=observer).info("hello {who}", who="world")
        with open(path) as f:
            self.assertTrue(f.read().endswith("#info] hello world\n"))

    def test_standard_output(self):
        for arguments in (["-n"], ["-n", "--logfile=-"], ["--nodaemon", "-l", "-", "socksgss", "--logfile=x"]):
            self.assertIs(logs.textObserverFor(arguments).outFile, sys.stdout, arguments)
        error = self.assertRaises(SystemExit, logs.textObserverFor, ["--logfile=-"])
        self.assertEqual(str(error), "Daemons cannot log to stdout, exiting!")

    def test_a_daemon_without_logfile_writes_twistd_log(self):
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(directory)
        self.assertEqual(self.logFileOf(logs.textObserverFor(["--pidfile=", "socksgss"])),
                         os.path.join(directory, "twistd.log"))

    def test_the_factory_is_the_processes_text_observer(self):
        self.patch(sys, "argv", ["twistd", "-n", "--logger", "txsocksgss.logs.fastTextObserver", "socksgss"])
        self.patch(logs, "_process_text_observer", None)
        self.assertIsNone(logs.processTextObserver())
        observer = logs.fastTextObserver()
        self.assertIs(logs.processTextObserver(), observer)
        self.assertIs(observer.outFile, sys.stdout)


def whenFileHas(test: SynchronousTestCase, path: str, text: bytes) -> Deferred[None]:
    """Fires once the file ``path`` holds ``text``: checked on each inotify change of its directory."""
    from twisted.internet import inotify
    from twisted.python.filepath import FilePath

    found: Deferred[None] = Deferred()

    def check(*_: object) -> None:
        if not found.called and os.path.exists(path):
            with open(path, "rb") as f:
                if text in f.read():
                    found.callback(None)

    notifier = inotify.INotify()
    notifier.startReading()
    test.addCleanup(notifier.loseConnection)
    notifier.watch(FilePath(os.path.dirname(path)), mask=inotify.IN_MODIFY | inotify.IN_CREATE, callbacks=[check])
    check()
    return found


class TwistdTextLoggerTests(IntegrationTestCase):
    @inlineCallbacks
    def test_twistd_logger_option_writes_the_text_log_to_the_logfile(self) -> None:
        port = free_port()
        path = os.path.join(os.path.abspath(self.mktemp()), "socksgss.log")
        os.mkdir(os.path.dirname(path))
        process = spawnTwistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1",
                              twistd_args=("--logfile", path, "--logger", "txsocksgss.logs.fastTextObserver"))
        yield whenFileHas(self, path, b"txsocksgss listening on")
        echo_port = self.listen(EchoFactory())
        tunnel = yield openTunnel(self, port, echo_port)
        yield tunnel.roundTrip(b"through text")
        tunnel.transport.loseConnection()
        yield tunnel.lost
        process.transport.signalProcess(signal.SIGTERM)
        yield process.ended
        with open(path) as f:
            lines = f.read().splitlines()
        sessions = [line for line in lines if " [txsocksgss.session#info] session client=127.0.0.1:" in line]
        self.assertEqual(len(sessions), 1, lines)
        self.assertIn(f" method=none protection=- command=connect destination=127.0.0.1:{echo_port} up=12 down=12 ",
                      sessions[0])
        self.assertTrue(lines[-1].endswith("#info] Server Shut Down."), lines[-1])

    @inlineCallbacks
    def test_a_workers_lines_go_into_the_masters_file_as_they_are(self) -> None:
        port = free_port()
        path = os.path.join(os.path.abspath(self.mktemp()), "socksgss.log")
        os.mkdir(os.path.dirname(path))
        process = spawnTwistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "2",
                              twistd_args=("--logfile", path, "--logger", "txsocksgss.logs.fastTextObserver"))
        yield whenFileHas(self, path, b"] worker 1: txsocksgss listening on")
        process.transport.signalProcess(signal.SIGTERM)
        yield process.ended
        with open(path) as f:
            lines = f.read().splitlines()
        worker_lines = [line for line in lines if "worker 1: " in line and "ended" not in line]
        self.assertTrue(worker_lines, lines)
        for line in worker_lines:  # the worker's own time and system, not inside an event of the master's
            stamp, system, rest = line.split(" ", 2)
            self.assertEqual((system[0], system[-1], rest[:10]), ("[", "]", "worker 1: "), line)
