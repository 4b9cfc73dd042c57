"""
``socksgss demo``: a private Kerberos realm and a proxy to try, all on 127.0.0.1.

    socksgss demo [--port 1080]

Theory of operation.  Everything runs in one Twisted process under
`task.react`, with MIT Kerberos's own programs as children:

1. `txsocksgss.cli.kerberos_programs.find_kerberos_programs` finds
   ``krb5kdc``, ``kdb5_util``, ``kadmin.local`` and ``kinit``; when one is
   missing the demo names the Debian packages to install and exits with
   status 2, before touching anything.  A busy ``--port`` is refused the
   same way.
2. `txsocksgss.cli.demo_realm.DemoRealm` is the throwaway realm: a
   temporary directory holding ``krb5.conf`` and ``kdc.conf`` (KDC on a
   free port of 127.0.0.1, no DNS, no host name canonicalisation, so
   ``rcmd@localhost`` always means ``rcmd/localhost@SOCKSGSS.TEST``), the
   KDC database, the keytab of the proxy's service principal, the demo
   user's ticket cache and the proxy's password file.
3. `txsocksgss.cli.demo_setup.DemoSetup` fills it in with ``kdb5_util``
   and ``kadmin.local``, runs the KDC as a child process, gets the user a
   ticket with ``kinit``, then starts the proxy, `makeService` with
   GSS-API (levels confidentiality, integrity and clear),
   username/password and no authentication, on 127.0.0.1:PORT, and a small
   web server on another port of 127.0.0.1 that serves the demo page
   (`txsocksgss.cli.demo_page`), so the printed commands need no network
   beyond loopback.
4. `txsocksgss.cli.demo_instructions.format_instructions` prints the
   set-up and the commands to paste into another shell: they are a valid
   shell script and work as printed.
5. `txsocksgss.cli.demo_sessions.SessionReporter`, a twisted.logger
   observer, turns the proxy's own log events (the GSS-API login line and
   the session line) into one friendly line per session: method, user or
   principal, mechanism, protection level.
6. SIGINT or SIGTERM stop the reactor; the "before shutdown" trigger
   (`DemoSetup.stop`) stops the proxy and the web server, then the KDC,
   and removes the directory.

The children run in a process group of their own, so that Ctrl-C in the
terminal reaches the demo alone, which then stops them in order.

Exit status: 0 stopped by SIGINT or SIGTERM; 1 the set-up failed or the
KDC died; 2 bad usage, a missing program or a busy port.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred

from txsocksgss.cli.console import StdioConsole
from txsocksgss.cli.demo_instructions import Instructions, format_instructions, socksgss_command
from txsocksgss.cli.demo_sessions import SessionReporter
from txsocksgss.cli.demo_setup import DemoError, DemoSetup
from txsocksgss.cli.kerberos_programs import find_kerberos_programs, missing_programs_message
from txsocksgss.cli.status import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, react_for_status

__all__ = ["DEFAULT_PORT", "add_demo_parser", "run_demo"]

#: The proxy's port on 127.0.0.1 without ``--port``.
DEFAULT_PORT = 1080

_COMMAND = "demo"


async def run_demo(
    reactor: Any,
    port: int = DEFAULT_PORT,
    verbose: bool = False,
    console: StdioConsole | None = None,
    search_path: str | None = None,
    environ: Mapping[str, str] | None = None,
    begin_logging: Callable[[Any], None] | None = None,
) -> int:
    """
    Run the demo until SIGINT or SIGTERM stops the reactor (or the KDC dies).

    :param search_path: where to look for the Kerberos programs (see `find_kerberos_programs`).
    :param environ: the environment of the Kerberos programs (default os.environ).
    :param begin_logging: takes the `SessionReporter` and makes it see the
        global log (the default begins twisted.logger's global logging).
    :return: the exit status when the demo ends by itself: 1 for a failed
        set-up or a dead KDC, 2 for a missing program or a busy port.  When
        a signal stops the reactor, it never returns (the caller's status is 0).
    """
    console = console or StdioConsole(_COMMAND)
    programs, missing = find_kerberos_programs(search_path)
    if missing:
        console.err(missing_programs_message(missing))
        return EXIT_USAGE
    try:
        _check_port(port)
    except DemoError as error:
        console.error(str(error))
        return error.status

    reporter = SessionReporter(console.out, console.err, verbose)
    (begin_logging or _begin_logging)(reporter)
    demo = DemoSetup(reactor, console, programs, port, environ if environ is not None else os.environ)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(demo.stop()))
    try:
        await demo.start()
    except DemoError as error:
        if demo.stopping:  # a signal came during the set-up; its failure is no news
            return EXIT_OK
        console.error(str(error))
        return error.status
    assert demo.realm is not None and demo.kdc is not None
    console.out(format_instructions(Instructions(
        demo.realm, port, demo.http_port, socksgss_command(), curl_missing=shutil.which("curl") is None)))
    code, signal = await demo.kdc.ended
    if demo.stopping:
        return EXIT_OK
    how = f"signal {signal}" if signal else f"exit status {code}"
    console.error(f"the KDC stopped by itself ({how}); the end of its log:\n{_tail(demo.realm.kdc_log)}")
    return EXIT_FAILURE


def _check_port(port: int) -> None:
    """Raise `DemoError` (status 2) when 127.0.0.1:``port`` cannot be listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted listens
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise DemoError(f"cannot listen on 127.0.0.1:{port}: {error.strerror or error}; "
                            f"choose another port with --port", EXIT_USAGE) from None


def _tail(path: str, lines: int = 5) -> str:
    """The last ``lines`` lines of a file, indented (it is about to be removed with the realm)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()[-8192:]
    except OSError as error:
        return f"    ({path}: {error.strerror or error})"
    return "\n".join(f"    {line}" for line in text.splitlines()[-lines:]) or "    (empty)"


def _begin_logging(observer: Any) -> None:
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([observer], discardBuffer=True, redirectStandardIO=False)


# --- the subcommand ------------------------------------------------------------------------

_DESCRIPTION = """\
Start a private, throwaway MIT Kerberos realm on 127.0.0.1 (a KDC, the user
demo with a password and a ticket, a keytab for the proxy's service
principal rcmd/localhost) and the proxy with GSS-API, username/password and
no authentication on 127.0.0.1:PORT, then print commands to try from
another shell and, live, one line per session: method, user or principal,
mechanism, protection level.  Ctrl-C stops everything and removes the realm.

Needs MIT Kerberos's KDC programs: on Debian, the packages krb5-kdc,
krb5-admin-server and krb5-user.
"""


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)")
    return int(text)


def add_demo_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``socksgss demo`` to the ``socksgss`` subparsers."""
    parser = subparsers.add_parser(
        _COMMAND,
        help="a throwaway Kerberos realm and a proxy on 127.0.0.1, with commands to try",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help=f"the proxy's port on 127.0.0.1 (default {DEFAULT_PORT}); a busy port is an error")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show every line of the proxy's log on standard error")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    # Stopped before the end: SIGINT or SIGTERM, the way to end the demo.
    return react_for_status(lambda reactor: run_demo(reactor, args.port, args.verbose), stopped=EXIT_OK)
