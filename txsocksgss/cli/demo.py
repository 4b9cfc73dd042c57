"""
``socksgss demo``: a private Kerberos realm and a proxy to try, all on 127.0.0.1.

    socksgss demo [--port 1080]

Theory of operation.  Everything runs in one Twisted process under
`task.react`, with MIT Kerberos's own programs as children:

1. `find_kerberos_programs` finds ``krb5kdc``, ``kdb5_util``,
   ``kadmin.local`` and ``kinit``; when one is missing the demo names the
   Debian packages to install and exits with status 2, before touching
   anything.  A busy ``--port`` is refused the same way.
2. `DemoRealm` is the throwaway realm: a temporary directory holding
   ``krb5.conf`` and ``kdc.conf`` (KDC on a free port of 127.0.0.1, no DNS,
   no host name canonicalisation, so ``rcmd@localhost`` always means
   ``rcmd/localhost@SOCKSGSS.TEST``), the KDC database, the keytab of the
   proxy's service principal, the demo user's ticket cache and the proxy's
   password file.  ``kdb5_util`` and ``kadmin.local`` fill it in, the KDC
   runs as a child process, and ``kinit`` gets the user a ticket.
3. The proxy is `makeService` with GSS-API (levels confidentiality,
   integrity and clear), username/password and no authentication, on
   127.0.0.1:PORT; a small web server on another port of 127.0.0.1 serves
   the demo page, so the printed commands need no network beyond loopback.
4. `format_instructions` prints the set-up and the commands to paste into
   another shell: they are a valid shell script and work as printed.
5. `SessionReporter`, a twisted.logger observer, turns the proxy's own log
   events (the GSS-API login line and the session line) into one friendly
   line per session: method, user or principal, mechanism, protection level.
6. SIGINT or SIGTERM stop the reactor; the "before shutdown" trigger stops
   the proxy and the web server, then the KDC, and removes the directory.

The children run in a process group of their own, so that Ctrl-C in the
terminal reaches the demo alone, which then stops them in order.

Exit status: 0 stopped by SIGINT or SIGTERM; 1 the set-up failed or the
KDC died; 2 bad usage, a missing program or a busy port.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import socket
import string
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TextIO

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, LogLevel, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.errors import ConfigError

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "DEFAULT_PORT",
    "REALM_NAME",
    "USER_NAME",
    "SERVICE_HOST",
    "PAGE_GREETING",
    "KERBEROS_PROGRAMS",
    "DemoError",
    "DemoRealm",
    "Instructions",
    "SessionReporter",
    "find_kerberos_programs",
    "missing_programs_message",
    "socksgss_command",
    "format_instructions",
    "demo_page",
    "add_demo_parser",
    "run_demo",
]

# Not imported from txsocksgss.cli, which imports this module.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

DEFAULT_PORT = 1080
REALM_NAME = "SOCKSGSS.TEST"  # .test is reserved for testing (RFC 2606)
USER_NAME = "demo"
SERVICE_NAME = "rcmd"  # what Dante, curl and our client ask for by default
SERVICE_HOST = "localhost"  # the proxy's name in the printed proxy URL
PAGE_GREETING = "Hello from the socksgss demo page!"
_PROTECTION = ("confidentiality", "integrity", "clear")
_KDC_START_TIMEOUT = 30  # seconds
_METHODS = ("gssapi", "userpass", "none")

_PROGRAM = "socksgss"
_COMMAND = "demo"

#: Every MIT Kerberos program the demo runs, with the Debian package holding it.
KERBEROS_PROGRAMS: Mapping[str, str] = {
    "krb5kdc": "krb5-kdc",
    "kdb5_util": "krb5-kdc",
    "kadmin.local": "krb5-admin-server",
    "kinit": "krb5-user",
}
# The administration programs live in sbin, often not on an ordinary user's PATH.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")

# The log namespaces of the two server events the reporter reads
# (txsocksgss.auth.gssapi's module logger and txsocksgss.server.session's).
_GSSAPI_NAMESPACE = "txsocksgss.auth.gssapi"
_SESSION_NAMESPACE = "txsocksgss.session"

# RFC 1961 s4.3 numbers the levels; CLEAR (0) is the Dante/curl extension.
_LEVEL_NUMBERS = {"clear": 0, "integrity": 1, "confidentiality": 2}
_METHOD_TITLES = {"gssapi": "GSS-API", "userpass": "username/password", "none": "no authentication"}

# exec'd by a tiny Python so that the child leaves our process group before
# the program starts (spawnProcess has no pre-exec hook).
_OWN_PROCESS_GROUP = "import os, sys; os.setpgid(0, 0); os.execv(sys.argv[1], sys.argv[1:])"


class DemoError(Exception):
    """The demo cannot go on; the text is one line for the user, ``status`` the exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


# --- what is needed --------------------------------------------------------------


def find_kerberos_programs(path: str | None = None) -> tuple[dict[str, str], list[str]]:
    """
    Find every program of `KERBEROS_PROGRAMS` on ``path``, a list of
    directories as PATH spells it (default: PATH, then the sbin directories).

    :return: the paths found by name, and the names not found (in the order
        of `KERBEROS_PROGRAMS`).
    """
    search = path if path is not None else os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN])
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in KERBEROS_PROGRAMS:
        location = shutil.which(name, path=search)
        if location is None:
            missing.append(name)
        else:
            found[name] = location
    return found, missing


def missing_programs_message(missing: Sequence[str]) -> str:
    """What to tell the user when ``missing`` programs are not installed: names, packages, the command."""
    packages = list(dict.fromkeys(KERBEROS_PROGRAMS.values()))
    by_package = ", ".join(f"{name} ({KERBEROS_PROGRAMS[name]})" for name in missing)
    return (
        f"{_PROGRAM} {_COMMAND}: error: the demo runs its own MIT Kerberos KDC, and these programs are "
        f"missing: {by_package}.\n"
        f"On Debian or Ubuntu, install them with:\n\n"
        f"    sudo apt-get install {' '.join(packages)}\n\n"
        f"The demo only runs these programs, in a temporary directory of its own: it neither configures "
        f"nor uses the system's KDC (which the krb5-kdc package may start; `sudo systemctl disable --now "
        f"krb5-kdc` stops it).\n"
    )


def socksgss_command(executable: str | None = None, which: Callable[[str], str | None] = shutil.which) -> str:
    """
    How to run ``socksgss`` from a shell, as the printed commands spell it:
    ``socksgss`` when that is the console script next to the running
    interpreter, its absolute path when PATH finds another one or none,
    and ``PYTHON -m txsocksgss.cli`` when the interpreter has no script.
    """
    executable = executable or sys.executable
    # Not realpath: a virtualenv's python is a symbolic link out of its bin.
    script = os.path.join(os.path.dirname(os.path.abspath(executable)), _PROGRAM)
    if not os.access(script, os.X_OK):
        return shlex.join([executable, "-m", "txsocksgss.cli"])
    on_path = which(_PROGRAM)
    try:
        if on_path is not None and os.path.samefile(on_path, script):
            return _PROGRAM
    except OSError:
        pass
    return shlex.quote(script)


def _check_port(port: int) -> None:
    """Raise `DemoError` (status 2) when 127.0.0.1:``port`` cannot be listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted listens
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise DemoError(f"cannot listen on 127.0.0.1:{port}: {error.strerror or error}; "
                            f"choose another port with --port", EXIT_USAGE) from None


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


# --- the realm ---------------------------------------------------------------------


@dataclass(frozen=True)
class DemoRealm:
    """
    The paths and names of the throwaway realm in ``directory``.

    :ivar kdc_port: the KDC's TCP and UDP port on 127.0.0.1.
    :ivar password: the demo user's, for Kerberos and the proxy's password file alike.
    """

    directory: str
    kdc_port: int
    password: str = field(repr=False)
    name: str = REALM_NAME
    user: str = USER_NAME

    @property
    def krb5_conf(self) -> str:
        return os.path.join(self.directory, "krb5.conf")

    @property
    def kdc_conf(self) -> str:
        return os.path.join(self.directory, "kdc.conf")

    @property
    def keytab(self) -> str:
        return os.path.join(self.directory, "proxy.keytab")

    @property
    def ccache(self) -> str:
        return os.path.join(self.directory, "ccache")

    @property
    def passwd(self) -> str:
        return os.path.join(self.directory, "passwd")

    @property
    def kdc_log(self) -> str:
        return os.path.join(self.directory, "kdc.log")

    @property
    def user_principal(self) -> str:
        return f"{self.user}@{self.name}"

    @property
    def service_principal(self) -> str:
        return f"{SERVICE_NAME}/{SERVICE_HOST}@{self.name}"

    def krb5_conf_text(self) -> str:
        """
        The clients' (and the proxy's) krb5.conf.  No DNS anywhere, and no
        host name canonicalisation, so the service principal is the name
        the client was given (``localhost``); TCP first, since the KDC is
        on loopback anyway.
        """
        return (
            "[libdefaults]\n"
            f"    default_realm = {self.name}\n"
            "    dns_lookup_kdc = false\n"
            "    dns_lookup_realm = false\n"
            "    rdns = false\n"
            "    dns_canonicalize_hostname = false\n"
            "    ignore_acceptor_hostname = true\n"
            "    udp_preference_limit = 1\n"
            "\n[realms]\n"
            f"    {self.name} = {{\n"
            f"        kdc = 127.0.0.1:{self.kdc_port}\n"
            "    }\n"
            "\n[domain_realm]\n"
            f"    {SERVICE_HOST} = {self.name}\n"
        )

    def kdc_conf_text(self) -> str:
        """The KDC's kdc.conf: listen on 127.0.0.1 only, everything in the directory."""
        listen = f"127.0.0.1:{self.kdc_port}"
        return (
            "[kdcdefaults]\n"
            f"    kdc_listen = {listen}\n"
            f"    kdc_tcp_listen = {listen}\n"
            "\n[realms]\n"
            f"    {self.name} = {{\n"
            f"        database_name = {os.path.join(self.directory, 'principal')}\n"
            f"        key_stash_file = {os.path.join(self.directory, 'stash')}\n"
            f"        kdc_listen = {listen}\n"
            f"        kdc_tcp_listen = {listen}\n"
            "    }\n"
            "\n[logging]\n"
            f"    kdc = FILE:{self.kdc_log}\n"
        )

    def client_env(self) -> dict[str, str]:
        """The variables a shell exports to use the realm (`Instructions` prints them)."""
        return {"KRB5_CONFIG": self.krb5_conf, "KRB5CCNAME": f"FILE:{self.ccache}"}

    def program_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` pointed at the realm, for the Kerberos programs and for the proxy itself."""
        env = {k: v for k, v in base.items() if k not in ("KRB5CCNAME", "KRB5_KTNAME", "KRB5_CLIENT_KTNAME")}
        env.update(KRB5_CONFIG=self.krb5_conf, KRB5_KDC_PROFILE=self.kdc_conf,
                   # The replay cache would otherwise outlive the demo in /var/tmp.
                   KRB5RCACHEDIR=self.directory)
        return env


# --- child processes -----------------------------------------------------------------


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


# --- the demo page ---------------------------------------------------------------------


def demo_page(http_port: int, proxy_port: int) -> bytes:
    """The text the demo's web server answers every request with."""
    return (
        f"{PAGE_GREETING}\n\n"
        f"You fetched this page from 127.0.0.1:{http_port} through the txsocksgss proxy on "
        f"127.0.0.1:{proxy_port}.\n"
        "The demo's window shows how you authenticated.\n"
    ).encode()


def _demo_site(page: Callable[[], bytes]) -> Any:
    # twisted.web is imported here, not at the top: every other subcommand
    # imports this module too.
    from twisted.web.http import HTTPChannel
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    @implementer(IHalfCloseableProtocol)
    class DemoPageChannel(HTTPChannel):
        """
        An HTTPChannel that still answers a client that has closed its
        sending side after the request (``printf ... | socksgss connect``
        does: the end of its input is a half-close).  A plain HTTPChannel
        takes that for the end of the connection and may drop the answer.
        """

        def readConnectionLost(self) -> None:
            if not self.requests:  # the page is answered at once, so this is the usual case
                self.transport.loseConnection()  # type: ignore[union-attr]

        def writeConnectionLost(self) -> None:
            self.transport.loseConnection()  # type: ignore[union-attr]

    class Page(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return page()

    class DemoSite(Site):
        protocol = DemoPageChannel  # type: ignore[assignment]

        def log(self, request: Any) -> None:
            """No access log: the session lines say enough."""

    return DemoSite(Page())


# --- the instructions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instructions:
    """Everything the printed instructions name."""

    realm: DemoRealm
    proxy_port: int
    http_port: int
    socksgss: str = _PROGRAM
    curl_missing: bool = False


def format_instructions(i: Instructions) -> str:
    """
    The text printed once everything runs: a summary of the set-up, then a
    block of commands that is a valid shell script (every other line in it
    is a comment) and works as printed in another shell.
    """
    realm = i.realm
    q = shlex.quote
    exports = " ".join(f"{name}={q(value)}" for name, value in realm.client_env().items())
    url = f"http://127.0.0.1:{i.http_port}/"
    proxy = f"{SERVICE_HOST}:{i.proxy_port}"
    gssapi = (f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | {i.socksgss} connect --proxy socks5h://{proxy} "
              f"--method gssapi --gssapi-protection confidentiality 127.0.0.1 {i.http_port}")
    userpass = (f"curl --socks5-basic --proxy-user {q(f'{realm.user}:{realm.password}')} "
                f"--socks5-hostname {proxy} {url}")
    none = f"curl --socks5-basic --socks5-hostname {proxy} {url}"
    levels = ", ".join(_PROTECTION)
    lines = [
        f"{_PROGRAM} {_COMMAND}: a throwaway Kerberos realm and a SOCKS proxy, all on 127.0.0.1",
        "",
        f"  realm     {realm.name}, in {realm.directory} (removed when the demo stops)",
        f"  KDC       krb5kdc on 127.0.0.1:{realm.kdc_port}, log in {realm.kdc_log}",
        f"  user      {realm.user_principal}, password {realm.password}, ticket in {realm.ccache}",
        f"  service   {realm.service_principal}, keytab {realm.keytab}",
        f"  proxy     SOCKS 5 on 127.0.0.1:{i.proxy_port}, methods gssapi (levels {levels}), "
        f"userpass (user {realm.user}, file {realm.passwd}), none",
        f"  web page  {url}, served by the demo itself: nothing leaves 127.0.0.1",
        "",
        "Paste these commands into another shell:",
        "",
        "# 1. GSS-API: the demo user's Kerberos ticket, then this project's client fetching the page",
        "#    through the proxy at protection level 2 (confidentiality); add -v to see the handshake.",
        f"export {exports}",
        "klist",
        gssapi,
        "",
        "# 2. Username and password, with curl (--socks5-basic: curl offers GSS-API too unless told",
        "#    not to, this proxy prefers it, and curl's GSS-API does not protect the data).",
        userpass,
        "",
        "# 3. No authentication.",
        none,
    ]
    if i.curl_missing:
        lines += ["", "# curl is not installed here: sudo apt-get install curl"]
    lines += [
        "",
        "Sessions as the proxy sees them, live (Ctrl-C stops the demo and removes the realm):",
    ]
    return "\n".join(lines) + "\n"


# --- the live lines ---------------------------------------------------------------------


@dataclass
class _GSSAPILogin:
    principal: str
    mechanism: str
    requested: str
    agreed: str


def _level(name: str) -> str:
    number = _LEVEL_NUMBERS.get(name)
    return f"level {number} ({name})" if number is not None else name


def _bytes(count: Any) -> str:
    return f"{count} B" if isinstance(count, int) else "?"


@implementer(ILogObserver)
class SessionReporter:
    """
    A twisted.logger observer that writes one line per proxy session, from
    the server's own events: the GSS-API login line (principal, mechanism,
    requested and agreed level) and the session line written when a session
    ends (method, user, protection, destination, bytes, outcome).

    The login event carries no client address, so a GSS-API session is
    matched to the oldest login of its principal not yet reported.

    :param write: takes each session line.
    :param error: takes warnings and errors of the proxy's log, and every
        event when ``verbose``.
    """

    _KEPT_LOGINS = 256

    def __init__(self, write: Callable[[str], None], error: Callable[[str], None], verbose: bool = False) -> None:
        self._write = write
        self._error = error
        self._verbose = verbose
        self._logins: list[_GSSAPILogin] = []
        self.sessions = 0

    def __call__(self, event: Mapping[str, Any]) -> None:
        namespace = event.get("log_namespace", "")
        if namespace == _GSSAPI_NAMESPACE and "principal" in event and "agreed" in event:
            self._logins.append(_GSSAPILogin(str(event["principal"]), str(event.get("mechanism", "?")),
                                             str(event.get("requested", "?")), str(event["agreed"])))
            del self._logins[:-self._KEPT_LOGINS]
        elif namespace == _SESSION_NAMESPACE and "method" in event and "outcome" in event:
            self.sessions += 1
            self._write(self.describe(event))
        level = event.get("log_level")
        if self._verbose or "log_failure" in event or (level is not None and level >= LogLevel.warn):
            text = formatEvent(dict(event))
            failure = event.get("log_failure")
            if failure is not None and not self._verbose:
                text = f"{text}: {failure.getErrorMessage()}"
            elif failure is not None:
                text = f"{text}\n{failure.getTraceback()}"
            self._error(f"[{namespace or '-'}] {text}")

    def _login_of(self, principal: str) -> _GSSAPILogin | None:
        for index, login in enumerate(self._logins):
            if login.principal == principal:
                return self._logins.pop(index)
        return None

    def describe(self, event: Mapping[str, Any]) -> str:
        """The line for one session event."""
        stamp = time.strftime("%H:%M:%S", time.localtime(event.get("log_time", time.time())))
        method = str(event.get("method", "-"))
        user = event.get("user", "-")
        user = None if user in (None, "-") else str(user)
        title = _METHOD_TITLES.get(method, method)
        if method == "gssapi" and user is not None:
            login = self._login_of(user)
            if login is not None:
                asked = "" if login.requested == login.agreed else f", asked for {_level(login.requested)}"
                how = f"{title} as {user}, mechanism {login.mechanism}, protection {_level(login.agreed)}{asked}"
            else:
                how = f"{title} as {user}, protection {_level(str(event.get('protection', '-')))}"
        elif user is not None:
            how = f"{title} as {user}"
        elif method in ("-", "socks4"):
            how = "SOCKS 4" if method == "socks4" else "no method agreed"
        else:
            how = f"{title}" + ("" if method == "none" else ", not authenticated")
        parts = [how]
        command = event.get("command", "-")
        if command != "-":  # the session got as far as a request
            parts.append(f"{command} {event.get('destination', '-')}")
            parts.append(f"{_bytes(event.get('up'))} up, {_bytes(event.get('down'))} down")
        parts.append(str(event.get("outcome", "")))
        return f"[{stamp}] session {self.sessions}: " + "; ".join(parts)


# --- the run ---------------------------------------------------------------------------


class _Console:
    """Standard output for the instructions and the session lines; standard error for the rest."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out
        self._err = err

    @staticmethod
    def _put(stream: TextIO, text: str) -> None:
        try:
            stream.write(text if text.endswith("\n") else text + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say there
            pass

    def out(self, text: str) -> None:
        self._put(self._out or sys.stdout, text)

    def err(self, text: str) -> None:
        self._put(self._err or sys.stderr, text)

    def error(self, message: str) -> None:
        self.err(f"{_PROGRAM} {_COMMAND}: error: {message}")


class _Demo:
    """The running demo: its children, its listeners, its directory; `stop` undoes all of them."""

    def __init__(self, reactor: Any, console: _Console, programs: Mapping[str, str], port: int,
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

        from txsocksgss.auth.passwordfile import set_password

        set_password(realm.passwd, realm.user, realm.password.encode())
        self._startProxy()
        self._startWebServer()

    def _startProxy(self) -> None:
        assert self.realm is not None
        from txsocksgss.server.config import Config
        from txsocksgss.server.service import makeService

        # The proxy's GSS-API library reads these when it first needs them, below.
        os.environ.update(KRB5_CONFIG=self.realm.krb5_conf, KRB5RCACHEDIR=self.realm.directory)
        for name in ("KRB5CCNAME", "KRB5_KTNAME", "KRB5_CLIENT_KTNAME"):
            os.environ.pop(name, None)
        try:
            config = Config.build(
                listen=[f"tcp:{self.port}:interface=127.0.0.1"],
                methods=list(_METHODS),
                passwd=self.realm.passwd,
                gssapi_keytab=self.realm.keytab,
                gssapi_protection=list(_PROTECTION),
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
        site = _demo_site(lambda: demo_page(self.http_port, self.port))
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
        self.console.out(f"{_PROGRAM} {_COMMAND}: stopped; removed the realm in {self.realm.directory}. Goodbye.")

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


async def run_demo(
    reactor: Any,
    port: int = DEFAULT_PORT,
    verbose: bool = False,
    console: _Console | None = None,
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
    console = console or _Console()
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
    demo = _Demo(reactor, console, programs, port, environ if environ is not None else os.environ)
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
    from twisted.internet import task

    outcome: list[int] = []

    async def main(reactor: Any) -> None:
        outcome.append(await run_demo(reactor, args.port, args.verbose))

    try:
        task.react(main)
    except SystemExit:  # react always ends with sys.exit; the status is ours
        pass
    # No outcome: SIGINT or SIGTERM stopped the reactor, the way to end the demo.
    return outcome[0] if outcome else EXIT_OK
