"""
The running demo, set up and torn down: `DemoSetup` creates the realm's
directory and files, fills the KDC database with ``kdb5_util`` and
``kadmin.local``, runs the KDC, gets the user a ticket with ``kinit``,
then starts the proxy (`makeService` with GSS-API, username/password and
no authentication on 127.0.0.1:PORT) and the web page; `DemoSetup.stop`
undoes all of it in order and removes the directory.

The Kerberos programs run in a process group of their own, so that Ctrl-C
in the terminal reaches the demo alone, which then stops them in order.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import string
import sys
import tempfile
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from txsocksgss.cli.console import PROGRAM, StdioConsole
from txsocksgss.cli.demo_page import demo_page, demo_site
from txsocksgss.cli.demo_realm import DemoRealm
from txsocksgss.cli.status import EXIT_FAILURE, EXIT_USAGE
from txsocksgss.errors import ConfigError
from txsocksgss.auth.passwordfile import set_password
from txsocksgss.server.config import Config
from txsocksgss.server.service import makeService

__all__ = ["PROXY_METHODS", "PROXY_PROTECTION", "DemoError", "DemoSetup"]

#: The proxy's methods, in its order of preference.
PROXY_METHODS = ("gssapi", "userpass", "none")
#: The GSS-API protection levels the proxy accepts (RFC 1961 s4.3; clear is the Dante/curl extension).
PROXY_PROTECTION = ("confidentiality", "integrity", "clear")
_KDC_START_TIMEOUT = 30  # seconds

# exec'd by a tiny Python so that the child leaves our process group before
# the program starts (spawnProcess has no pre-exec hook).
_OWN_PROCESS_GROUP = "import os, sys; os.setpgid(0, 0); os.execv(sys.argv[1], sys.argv[1:])"


class DemoError(Exception):
    """The demo cannot go on; the text is one line for the user, ``status`` the exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def _free_kdc_port() -> int:
    """A port of 127.0.0.1 free for both TCP and UDP (the KDC listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise DemoError("found no port of 127.0.0.1 free for both TCP and UDP for the KDC")


def _new_password() -> str:
    # Letters and digits only: it is printed in a shell command and passed
    # through a kadmin query, which splits on spaces.
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(16))


class _Child(ProcessProtocol):
    """
    One Kerberos program: feeds it ``stdin``, keeps its output for error
    messages, fires ``ready`` once ``sentinel`` shows up in its output and
    ``ended`` with (exit code, signal) when it is gone.
    """

    def __init__(self, name: str, stdin: bytes = b"", sentinel: bytes | None = None) -> None:
        # ``ready`` is only for a child with a sentinel: nobody waits on the others'.
        self.name = name
        self.stdin = stdin
        self.sentinel = sentinel
        self.output = bytearray()
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()
        self.running = False

    def connectionMade(self) -> None:
        self.running = True
        if self.stdin:
            self.transport.write(self.stdin)  # type: ignore[union-attr]
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self._received(data)

    def errReceived(self, data: bytes) -> None:
        self._received(data)

    def _received(self, data: bytes) -> None:
        self.output += data
        del self.output[:-65536]  # enough for any error message
        if self.sentinel is not None and not self.ready.called and self.sentinel in self.output:
            self.ready.callback(None)

    def text(self) -> str:
        """The last lines of its output, for an error message."""
        lines = self.output.decode("utf-8", "replace").strip().splitlines()
        return " / ".join(line.strip() for line in lines[-3:] if line.strip()) or "no output"

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        status = (getattr(reason.value, "exitCode", None), getattr(reason.value, "signal", None))
        if self.sentinel is not None and not self.ready.called:
            self.ready.errback(DemoError(f"{self.name} ended before it was ready: {self.text()}"))
        self.ended.callback(status)

    def stop(self) -> None:
        if self.running:
            try:
                self.transport.signalProcess("TERM")  # type: ignore[union-attr]
            except OSError:
                pass


class DemoSetup:
    """The running demo: its children, its listeners, its directory; `stop` undoes all of them."""

    def __init__(self, reactor: Any, console: StdioConsole, programs: Mapping[str, str], port: int,
                 environ: Any) -> None:
        self.reactor = reactor
        self.console = console
        self.programs = programs
        self.port = port
        self.environ = environ
        self.realm: DemoRealm | None = None
        self.children: set[_Child] = set()
        self.kdc: _Child | None = None
        self.service: Any = None
        self.http: Any = None
        self.http_port = 0
        self.stopping = False

    # -- start ---------------------------------------------------------------

    def _spawn(self, child: _Child, program: str, *args: str) -> _Child:
        assert self.realm is not None
        executable = sys.executable
        argv = [executable, "-I", "-c", _OWN_PROCESS_GROUP, self.programs[program], *args]
        self.children.add(child)

        def forget(status: tuple[int | None, int | None]) -> tuple[int | None, int | None]:
            self.children.discard(child)
            return status

        child.ended.addCallback(forget)
        try:
            self.reactor.spawnProcess(child, executable, argv, env=self.realm.program_env(self.environ),
                                      path=self.realm.directory)
        except OSError as error:
            self.children.discard(child)
            raise DemoError(f"cannot run {self.programs[program]}: {error.strerror or error}") from None
        return child

    async def _run(self, what: str, program: str, *args: str, stdin: bytes = b"") -> str:
        """Run ``program`` to its end; `DemoError` naming ``what`` it was doing unless it exits 0."""
        self._checkNotStopping()
        child = self._spawn(_Child(program, stdin), program, *args)
        code, signal = await child.ended
        self._checkNotStopping()
        if code != 0:
            raise DemoError(f"{program} failed to {what}: {child.text()}")
        return child.output.decode("utf-8", "replace")

    def _checkNotStopping(self) -> None:
        # A signal may stop the demo in the middle of the set-up: go no further.
        if self.stopping:
            raise DemoError("stopped during the set-up")

    async def start(self) -> None:
        kdc_port = _free_kdc_port()
        directory = tempfile.mkdtemp(prefix="socksgss-demo-")  # mode 0700: it holds a keytab
        self.realm = realm = DemoRealm(directory, kdc_port, _new_password())
        with open(realm.krb5_conf, "w") as f:
            f.write(realm.krb5_conf_text())
        with open(realm.kdc_conf, "w") as f:
            f.write(realm.kdc_conf_text())

        # -W: the weak random source is enough for a realm that lives minutes.
        await self._run("create the KDC database", "kdb5_util", "-r", realm.name, "create", "-s", "-W",
                        "-P", secrets.token_hex(16))
        await self._run(f"add {realm.user_principal}", "kadmin.local", "-r", realm.name, "-q",
                        f"addprinc -pw {realm.password} {realm.user_principal}")
        service = realm.service_principal
        await self._run(f"add {service}", "kadmin.local", "-r", realm.name, "-q", f"addprinc -randkey {service}")
        await self._run(f"write the keytab of {service}", "kadmin.local", "-r", realm.name, "-q",
                        f"ktadd -norandkey -k {realm.keytab} {service}")
        if not os.path.exists(realm.keytab):  # kadmin.local -q exits 0 even when the query failed
            raise DemoError(f"kadmin.local wrote no keytab for {service}")

        # "starting..." is written once the KDC's sockets are set up.
        self.kdc = self._spawn(_Child("krb5kdc", sentinel=b"starting..."), "krb5kdc", "-n", "-r", realm.name)
        try:
            await self.kdc.ready.addTimeout(_KDC_START_TIMEOUT, self.reactor)
        except DeferredTimeout:
            raise DemoError(f"krb5kdc did not start within {_KDC_START_TIMEOUT} seconds: {self.kdc.text()}") from None
        self._checkNotStopping()
        await self._run(f"get a ticket for {realm.user_principal}", "kinit", "-c", f"FILE:{realm.ccache}",
                        realm.user_principal,
                        stdin=realm.password.encode() + b"\n")

        set_password(realm.passwd, realm.user, realm.password.encode())
        self._startProxy()
        self._startWebServer()

    def _startProxy(self) -> None:
        assert self.realm is not None
        # The proxy's GSS-API library reads these when it first needs them, below.
        os.environ.update(KRB5_CONFIG=self.realm.krb5_conf, KRB5RCACHEDIR=self.realm.directory)
        for name in ("KRB5CCNAME", "KRB5_KTNAME", "KRB5_CLIENT_KTNAME"):
            os.environ.pop(name, None)
        try:
            config = Config.build(
                listen=[f"tcp:{self.port}:interface=127.0.0.1"],
                methods=list(PROXY_METHODS),
                passwd=self.realm.passwd,
                gssapi_keytab=self.realm.keytab,
                gssapi_protection=list(PROXY_PROTECTION),
            )
            self.service = makeService(config, self.reactor)
        except ConfigError as error:
            raise DemoError(f"the proxy cannot start: {error}") from None
        try:
            self.service.startService()
        except CannotListenError as error:
            raise DemoError(f"cannot listen on 127.0.0.1:{self.port}: {error.socketError}; "
                            f"choose another port with --port", EXIT_USAGE) from None

    def _startWebServer(self) -> None:
        site = demo_site(lambda: demo_page(self.http_port, self.port))
        self.http = self.reactor.listenTCP(0, site, interface="127.0.0.1")
        self.http_port = self.http.getHost().port

    # -- stop ----------------------------------------------------------------

    async def stop(self) -> None:
        """Stop the proxy, the web server and the children, then remove the directory; never raises."""
        if self.stopping:
            return
        self.stopping = True
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("the proxy", self._stopProxy),
            ("the web server", self._stopWebServer),
            ("the Kerberos programs", self._stopChildren),
        ]
        for what, step in steps:
            try:
                await step()
            except Exception as error:
                self.console.error(f"stopping {what}: {error}")
        if self.realm is None:
            return
        try:
            shutil.rmtree(self.realm.directory)
        except OSError as error:
            self.console.error(f"cannot remove {self.realm.directory}: {error.strerror or error}")
            return
        self.console.out(f"{PROGRAM} demo: stopped; removed the realm in {self.realm.directory}. Goodbye.")

    async def _stopProxy(self) -> None:
        service = self.service
        if service is None or not service.running:
            return
        await service.stopService()
        context = service.factory.context
        context.closeSessions()
        await _within(self.reactor, context.whenDrained(), 5)

    async def _stopWebServer(self) -> None:
        if self.http is not None:
            await self.http.stopListening()

    async def _stopChildren(self) -> None:
        children = list(self.children)
        for child in children:
            child.stop()
        ended = DeferredList([child.ended for child in children], consumeErrors=True)
        await _within(self.reactor, ended, 5)
        for child in children:  # deaf to TERM
            if child.running:
                try:
                    child.transport.signalProcess("KILL")  # type: ignore[union-attr]
                except OSError:
                    pass
        await _within(self.reactor, DeferredList([c.ended for c in children], consumeErrors=True), 5)


async def _within(reactor: Any, deferred: Deferred[Any], seconds: float) -> None:
    """Wait for ``deferred``, at most ``seconds``; its result and any timeout are ignored."""
    deferred.addTimeout(seconds, reactor)
    try:
        await deferred
    except Exception:
        pass
