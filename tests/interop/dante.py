"""
Dante with GSS-API as an interop peer: where the build is, configuration
generators for its server (sockd) and its client library (libdsocks.so,
"socksify"), and running sockd under the test's reactor.

Debian's dante packages have no GSS-API; tests/interop/build_dante_gssapi.sh
rebuilds Debian's source package with it into `DANTE_GSSAPI_PREFIX`
(``scripts/bootstrap.sh test`` runs it; CI caches the prefix).  Tests call
`dante_gssapi_build()`, which fails with a message naming the script when the
build is missing, never skips.

Facts the generators encode (checked with Dante 1.4.2, Debian 1.4.2+dfsg-7):

- sockd takes its GSS-API settings (``gssapi.servicename``,
  ``gssapi.keytab``, ``gssapi.enctype``) from the ``client pass {}`` rule:
  GSS-API is negotiated before the SOCKS request, so with the keywords only
  in ``socks pass {}`` the acceptor finds no credentials ("No credentials
  were supplied") and looks for /etc/sockd.keytab.  The generator writes
  them into both rules.
- A client asking for a level that the rule's ``gssapi.enctype`` does not
  list is refused (connection closed; sockd logs "the client requests
  different authentication from what we offer").
- sockd started as root with ``user.privileged: root`` reads a root-only
  (0600) keytab, but its negotiate children run as ``user.unprivileged``
  (nobody) when they call the GSS-API library: krb5.conf and the replay
  cache must be reachable by nobody, or the acceptor fails with "Permission
  denied" (`Sockd.start` sees to it).
- sockd logs each session (``log: connect``) as ``pass(N): tcp/connect [:
  gssapi/<level>%<principal>@<client> <proxy> -> <external> <destination>``
  (addresses as ``a.b.c.d.port``): `Sockd.sessions` parses it, so a test
  can prove which level and principal were used.
- The other session lines (``log: connect disconnect``) have the same
  shape: ``pass(N): tcp/bind [: gssapi/<level>%<principal>@<client> <proxy>
  -> <bound> 0.0.0.0.0``, ``tcp/bindreply``, ``udp/udpassociate``,
  ``udp/udpreply``; ``[`` opens a session, ``]`` closes it (with byte
  counts), ``-`` is one relayed piece of data.  `Sockd.events` parses them
  all.  BIND and UDP ASSOCIATE work under GSS-API at every level (each UDP
  datagram is one wrapped MTYP 03 frame at levels 1 and 2).
- sockd prints ``info: Dante/server[1/1] v1.4.2 running`` once it listens.
- The client (LD_PRELOAD of libdsocks.so, config in SOCKS_CONF) routes
  loopback and every local network directly, so run it in the client
  namespace of tests/interop/netns.py; it asks for ``rcmd/<name>`` where
  <name> is what getnameinfo gives for the proxy's address (the namespace's
  /etc/hosts).  Its config keyword is ``method:`` (sockd's is
  ``socksmethod:``); ``gssapi.enctype`` takes one level (clear, integrity
  or confidentiality; a list makes it ask for the strongest).
- The client logs (at ``debug: 0`` too) ``Offering server protection
  "<level>" (n)`` and then ``using gssapi <level> protection (n)``:
  `client_protection` reads both.  When the server answers a level that
  the client's ``gssapi.enctype`` lists, the client adopts it; when it
  answers a valid level (0, 1, 2) that the client does NOT list, the
  client neither closes nor complains: it goes on at the level it offered
  (clientmethod_gssapi() in the client library: the ``switch`` on the
  server's answer only ``break``s, and only an unknown value is an
  error).  So a Dante client configured with one level always uses that
  level, whatever the server agreed to.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable

from tests.helpers.integration import IntegrationTestCase
from tests.helpers.processes import require_program
from tests.interop import netns
from tests.interop.netns import WatchedProcess

__all__ = [
    "GSSAPINamespaceRig",
    "DANTE_GSSAPI_PREFIX",
    "BUILD_SCRIPT",
    "DanteBuild",
    "dante_gssapi_build",
    "dante_server_config",
    "dante_client_config",
    "socksify_argv",
    "service_keytab",
    "combined_keytab",
    "Sockd",
    "Session",
    "Event",
    "SOCKD_READY",
    "client_protection",
]

DANTE_GSSAPI_PREFIX = os.environ.get("DANTE_GSSAPI_PREFIX", "/opt/txsocksgss-dante-gssapi")
BUILD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "build_dante_gssapi.sh")
SOCKD_READY = re.compile(r"info: Dante/server\[\d+/\d+\] v\S+ running")
LEVELS = ("clear", "integrity", "confidentiality")


@dataclass(frozen=True)
class DanteBuild:
    prefix: str
    sockd: str
    libdsocks: str
    features: tuple[str, ...]  # sockd -vv "build:" line


_build: DanteBuild | None = None


def dante_gssapi_build(prefix: str = DANTE_GSSAPI_PREFIX) -> DanteBuild:
    """
    The GSS-API build of Dante, checked (sockd runs and lists ``gssapi``).
    Raises AssertionError naming the build script when it is missing: CI runs
    the script before the tests (scripts/bootstrap.sh test), so a missing
    build is a failure, not a skip.
    """
    global _build
    if _build is not None and _build.prefix == prefix:
        return _build
    hint = (f"run tests/interop/build_dante_gssapi.sh as root first (scripts/bootstrap.sh test "
            f"does; a few minutes once, then cached in {prefix})")
    sockd = os.path.join(prefix, "sbin", "sockd")
    libdsocks = os.path.join(prefix, "lib", "libdsocks.so")
    for path in (sockd, libdsocks):
        if not os.path.exists(path):
            raise AssertionError(f"the GSS-API build of Dante is missing ({path}): {hint}")
    result = subprocess.run([sockd, "-vv"], capture_output=True, text=True)
    features: tuple[str, ...] = ()
    for line in result.stdout.splitlines():
        if line.startswith("build:"):
            features = tuple(line.split()[1:])
    if "gssapi" not in features:
        raise AssertionError(
            f"{sockd} does not list gssapi among its build features "
            f"(exit {result.returncode}: {result.stdout[-500:]}{result.stderr[-500:]}): {hint}")
    _build = DanteBuild(prefix=prefix, sockd=sockd, libdsocks=libdsocks, features=features)
    return _build


def _levels(enctypes: str | Iterable[str]) -> str:
    levels = [enctypes] if isinstance(enctypes, str) else list(enctypes)
    for level in levels:
        if level not in LEVELS + ("per-message",):
            raise ValueError(f"unknown gssapi.enctype {level!r}")
    if not levels:
        raise ValueError("at least one gssapi.enctype")
    return " ".join(levels)


def dante_server_config(
    internal: str,
    port: int,
    external: str,
    *,
    keytab: str | None = None,
    socksmethods: Iterable[str] = ("gssapi",),
    enctypes: str | Iterable[str] = LEVELS,
    servicename: str = "rcmd",
    commands: Iterable[str] = ("connect",),
    client_from: str = "0.0.0.0/0",
    debug: int = 0,
    extra: str = "",
) -> str:
    """
    A sockd.conf: listen on ``internal`` port ``port``, reach destinations
    from ``external``, require ``socksmethods`` (``gssapi``, ``none``,
    ``username``), and with GSS-API accept ``rcmd/<host>`` from ``keytab``
    at the levels ``enctypes`` (any of clear, integrity, confidentiality,
    per-message).  Logs go to stderr (`Sockd` reads them).  ``extra`` is
    appended verbatim (more rules, options).
    """
    methods = " ".join(socksmethods)
    gssapi = ""
    if "gssapi" in methods.split():
        if keytab is None:
            raise ValueError("socksmethod gssapi needs a keytab")
        gssapi = (
            f"    gssapi.servicename: {servicename}\n"
            f"    gssapi.keytab: {keytab}\n"
            f"    gssapi.enctype: {_levels(enctypes)}\n"
        )
    return (
        "# sockd.conf generated by tests/interop/dante.py\n"
        "logoutput: stderr\n"
        f"debug: {int(debug)}\n"
        f"internal: {internal} port = {int(port)}\n"
        f"external: {external}\n"
        f"socksmethod: {methods}\n"
        "clientmethod: none\n"
        "user.privileged: root\n"
        "user.unprivileged: nobody\n"
        "\n"
        "# GSS-API is negotiated under the client rule: its gssapi.* keywords count.\n"
        "client pass {\n"
        f"    from: {client_from} to: 0.0.0.0/0\n"
        f"{gssapi}"
        "    log: error connect disconnect\n"
        "}\n"
        "\n"
        "socks pass {\n"
        f"    from: {client_from} to: 0.0.0.0/0\n"
        f"    command: {' '.join(commands)}\n"
        f"{gssapi}"
        "    log: error connect disconnect\n"
        "}\n"
        f"{extra}"
    )


def dante_client_config(
    proxy: str,
    port: int,
    *,
    method: str = "gssapi",
    enctype: str | Iterable[str] = "confidentiality",
    servicename: str = "rcmd",
    to: str = "0.0.0.0/0",
    debug: int = 1,
    extra: str = "",
) -> str:
    """
    A socks.conf (SOCKS_CONF) for libdsocks.so: every destination in ``to``
    through the SOCKS 5 proxy ``proxy``:``port`` with ``method`` (``gssapi``,
    ``none``, ``username``) and, with GSS-API, ``rcmd`` at ``enctype``.
    Logs (``debug: 1`` by default: one info line per step) go to the
    socksified program's stderr.
    """
    gssapi = ""
    if method == "gssapi":
        gssapi = (
            f"    gssapi.servicename: {servicename}\n"
            f"    gssapi.enctype: {_levels(enctype)}\n"
        )
    return (
        "# socks.conf generated by tests/interop/dante.py\n"
        "logoutput: stderr\n"
        f"debug: {int(debug)}\n"
        "route {\n"
        f"    from: 0.0.0.0/0 to: {to} via: {proxy} port = {int(port)}\n"
        "    proxyprotocol: socks_v5\n"
        f"    method: {method}\n"
        f"{gssapi}"
        "}\n"
        f"{extra}"
    )


def socksify_argv(build: DanteBuild, argv: list[str], socks_conf: str, env: dict[str, str] | None = None) -> list[str]:
    """
    ``argv`` run through ``env`` with LD_PRELOAD of the built libdsocks.so
    and SOCKS_CONF (plus ``env``, e.g. KRB5CCNAME and KRB5_CONFIG).  Put it
    after `Namespace.argv` so that ``ip`` itself is not socksified::

        namespace.argv(*socksify_argv(build, ["curl", url], conf, {...}))
    """
    assignments = [f"{k}={v}" for k, v in {"LD_PRELOAD": build.libdsocks, "SOCKS_CONF": socks_conf, **(env or {})}.items()]
    return ["env", *assignments, *argv]


_keytabs: dict[tuple[int, str], str] = {}


def service_keytab(realm: Any, host: str, service: str = "rcmd") -> str:
    """
    A keytab holding ``<service>/<host>@REALM`` in the test realm
    (tests/helpers/kerberos.py TestRealm), made once per process and host (adding
    the principal twice would fail).
    """
    key = (id(realm), f"{service}/{host}")
    if key not in _keytabs:
        path = os.path.join(realm.realm.tmpdir, f"{service}-{host}.keytab")
        realm.addService(f"{service}/{host}", path)
        _keytabs[key] = path
    return _keytabs[key]


def combined_keytab(paths: Iterable[str], destination: str) -> str:
    """
    One keytab with the entries of all ``paths`` (MIT keytab version 2:
    a 0x0502 header, then length-prefixed entries, so the entries simply
    follow each other).  Copies, never re-extracts: ``kadmin ktadd`` would
    give the principal new keys and make older keytabs stale.  Returns
    ``destination`` (mode 0600).
    """
    entries = b""
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] != b"\x05\x02":
            raise ValueError(f"{path} is not a version 2 keytab")
        entries += data[2:]
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"\x05\x02" + entries)
    return destination


@dataclass(frozen=True)
class Session:
    """One session from sockd's log: the method and GSS-API level, the client's principal and addresses."""

    method: str  # "gssapi", "username", ... or "none"
    level: str | None  # "clear", "integrity", "confidentiality" with gssapi
    principal: str | None  # user@REALM with gssapi
    client: str  # "a.b.c.d.port", Dante's notation
    destination: str  # "a.b.c.d.port"


# The line sockd logs when a session starts ("[", "]" when it ends), e.g.
# pass(1): tcp/connect [: gssapi/integrity%user@KRBTEST.COM@10.200.1.2.45602 10.200.1.1.1080 -> 10.201.1.1.45602 10.201.1.2.44729
_SESSION = re.compile(
    r"pass\(\d+\): tcp/connect \[: "
    r"(?:(?P<method>[a-z]+)(?:/(?P<level>[a-z-]+))?%(?P<principal>\S+)@)?(?P<client>[0-9a-f.:]+) "
    r"\S+ -> \S+ (?P<dst>\S+)"
)


@dataclass(frozen=True)
class Event:
    """
    One session line of sockd's log (any command): ``pass(N):
    <protocol>/<command> <marker>: <text>``, with the GSS-API method,
    level and principal when the text names them.
    """

    protocol: str  # "tcp" or "udp"
    command: str  # "accept", "connect", "bind", "bindreply", "udpassociate", "udpreply"
    marker: str  # "[" session start, "]" session end, "-" data relayed
    method: str | None
    level: str | None
    principal: str | None
    text: str  # after the marker and the colon


_EVENT = re.compile(r"pass\(\d+\): (?P<protocol>tcp|udp)/(?P<command>[a-z]+) (?P<marker>[\[\]-]): (?P<text>.*)$", re.M)
_AUTH = re.compile(r"(?P<method>[a-z]+)/(?P<level>[a-z-]+)%(?P<principal>\S+)@[0-9a-f.:]+")

# The client library's log (socksified program's stderr).
_CLIENT_OFFER = re.compile(r'Offering server protection "(?P<level>[a-z -]+)" \((?P<n>\d+)\)')
_CLIENT_USING = re.compile(r"using gssapi (?P<level>[a-z -]+) protection \((?P<n>\d+)\)")


def client_protection(log: str) -> tuple[str | None, str | None]:
    """
    From a socksified program's stderr (debug 0 or more): the level the
    Dante client offered and the level it then used, (None, None) when it
    did not get that far.
    """
    offer = _CLIENT_OFFER.search(log)
    using = _CLIENT_USING.search(log)
    return (offer["level"] if offer else None, using["level"] if using else None)


class Sockd:
    """
    Dante's sockd running in the foreground under the reactor, logging to
    stderr.  ``Sockd.start(...)`` returns at once; wait for `ready` (the
    "running" line), and register `stop` as a cleanup first.
    """

    def __init__(self, process: WatchedProcess, config_path: str, public_dir: str) -> None:
        self.process = process
        self.config_path = config_path
        self.public_dir = public_dir

    @classmethod
    def start(cls, build: DanteBuild, config: str, workdir: str, reactor: Any = None,
              env: dict[str, str] | None = None) -> "Sockd":
        """
        Write ``config`` to ``workdir``/sockd.conf and start sockd.  Its
        negotiate children run as ``nobody``, which must be able to read
        krb5.conf: the realm's lives in a root-only directory, so a copy goes
        into a world-readable directory of its own (removed by `stop`).  The
        realm's KRB5RCACHEDIR is not writable by nobody either (the acceptor
        fails with "Permission denied"): sockd gets the library's default
        replay cache (/var/tmp).  The keytab may stay root-only: sockd reads
        it with its privileged user.
        """
        os.makedirs(workdir, exist_ok=True)
        config_path = os.path.join(workdir, "sockd.conf")
        with open(config_path, "w") as f:
            f.write(config)
        environ = {k: v for k, v in (os.environ if env is None else env).items()
                   if k not in ("LD_PRELOAD", "KRB5RCACHEDIR", "KRB5_KTNAME", "KRB5_CLIENT_KTNAME")}
        public = tempfile.mkdtemp(prefix="txsocksgss-sockd-")
        os.chmod(public, 0o755)
        if "KRB5_CONFIG" in environ:
            krb5_conf = os.path.join(public, "krb5.conf")
            shutil.copyfile(environ["KRB5_CONFIG"], krb5_conf)
            os.chmod(krb5_conf, 0o644)
            environ["KRB5_CONFIG"] = krb5_conf
        argv = [build.sockd, "-f", config_path, "-p", os.path.join(workdir, "sockd.pid")]
        try:
            process = WatchedProcess.spawn(argv, "sockd", env=environ, path=workdir, reactor=reactor)
        except BaseException:
            shutil.rmtree(public, ignore_errors=True)
            raise
        return cls(process, config_path, public)

    def ready(self, timeout: float = 30.0):
        return self.process.waitFor(SOCKD_READY, timeout)

    def stop(self):
        def removed(result: Any) -> Any:
            shutil.rmtree(self.public_dir, ignore_errors=True)
            return result

        return self.process.stop().addBoth(removed)

    @property
    def log(self) -> str:
        return self.process.text

    def sessions(self) -> list[Session]:
        return [
            Session(method=m["method"] or "none", level=m["level"], principal=m["principal"],
                    client=m["client"], destination=m["dst"])
            for m in _SESSION.finditer(self.log)
        ]

    def waitForSession(self, timeout: float = 30.0):
        """Fires once sockd has logged a connected session (the first)."""
        return self.process.waitFor(_SESSION, timeout)

    def events(self, command: str | None = None, marker: str | None = None) -> list[Event]:
        """Every session line so far (optionally of one command and marker), in log order."""
        found = []
        for m in _EVENT.finditer(self.log):
            if command is not None and m["command"] != command:
                continue
            if marker is not None and m["marker"] != marker:
                continue
            auth = _AUTH.search(m["text"])
            found.append(Event(
                protocol=m["protocol"], command=m["command"], marker=m["marker"],
                method=auth["method"] if auth else None, level=auth["level"] if auth else None,
                principal=auth["principal"] if auth else None, text=m["text"].rstrip()))
        return found

    def waitForEvent(self, command: str, marker: str, timeout: float = 30.0):
        """Fires once sockd has logged a ``command`` line with ``marker`` ("[", "]" or "-")."""
        pattern = re.compile(rf"pass\(\d+\): (?:tcp|udp)/{re.escape(command)} {re.escape(marker)}: ")
        return self.process.waitFor(pattern, timeout)


class GSSAPINamespaceRig(IntegrationTestCase):
    """
    What every test of Dante's GSS-API build needs: the build, the network
    namespaces (tests/interop/netns.py), a ticket and the client's
    krb5.conf (the KDC through the veth), the proxy's keytab, and an HTTP
    server in the destination namespace serving ``body_size`` random bytes
    at ``self.url``.
    """

    timeout = 120
    body_size = 2_000_000

    def setUp(self) -> Any:
        self.build = dante_gssapi_build()
        reason = netns.netns_unavailable_reason()
        if reason is not None:
            raise AssertionError(reason)
        self.curl = require_program("curl")
        from tests.helpers.kerberos import test_realm

        self.realm = test_realm()
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)

        self.topology = netns.create_topology()
        self.addCleanup(self.topology.teardown)
        self.proxy_name = self.topology.proxy_name
        self.service_principal = f"rcmd/{self.proxy_name}@{self.realm.name}"
        self.keytab = service_keytab(self.realm, self.proxy_name)

        # The client's ticket and its view of the realm: the KDC (listening on
        # all addresses of the root namespace) through the veth.
        self.ccache = os.path.join(self.workdir, "ccache")
        self.realm.kinit(self.realm.user_principal, self.realm.user_password, f"FILE:{self.ccache}")
        self.krb5_conf = netns.krb5_conf_via(
            self.realm.realm.env["KRB5_CONFIG"], self.topology.proxy_address,
            os.path.join(self.workdir, "krb5-client.conf"))

        www = os.path.join(self.workdir, "www")
        os.makedirs(www)
        self.body = os.urandom(self.body_size)
        with open(os.path.join(www, "body"), "wb") as f:
            f.write(self.body)
        self.http = netns.serve_http(self.topology.destination, www)
        self.addCleanup(self.http.stop)
        return self.http.waitFor(netns.HTTP_SERVER_READY).addCallback(self._httpReady)

    def _httpReady(self, match: re.Match[str]) -> None:
        self.http_port = int(match.group(2))
        self.url = f"http://{self.topology.destination.address}:{self.http_port}/body"
