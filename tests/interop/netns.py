"""
Network namespaces for interop tests whose SOCKS client must not see the
destination (Dante's client library routes every local network directly,
so a socksify'd program on this host would never use the proxy for a
destination on this host).

`create_topology()` builds, for one test module or test case::

    client namespace               root namespace (the proxy)           destination namespace
    10.200.X.2/24 ---- veth ---- 10.200.X.1/24      10.201.X.1/24 ---- veth ---- 10.201.X.2/24

- the client namespace's only link is the veth to ``proxy_address``
  (10.200.X.1): it reaches the proxy and, through the same address, the
  test KDC in the root namespace (k5test's KDC listens on all addresses);
- the destination namespace's only link is the veth to
  ``external_address`` (10.201.X.1): only the root namespace, where the
  proxy runs, talks to both sides, so no IP forwarding is needed (and none
  is turned on): the client cannot reach the destination except through
  the proxy;
- ``/etc/netns/<client>/hosts`` names the proxy's address (``proxy_name``),
  because a GSS-API SOCKS client turns the proxy's address into a host name
  with getnameinfo and asks for ``rcmd/<that name>``; ``ip netns exec``
  bind-mounts that file over /etc/hosts for programs it runs.

Needs root and ``ip`` (iproute2).  Every name carries this process's pid
(base 36), so parallel test runs do not clash; X is the first /24 not in use
on this host (chosen under a lock file).  `Topology.teardown()` kills what still runs in
the namespaces and deletes the namespaces, the veths and /etc/netns/<name>;
it is idempotent and carries on past errors.  Leftovers of a run that died
(its pid no longer alive) are swept when the next topology is created.

The namespaces are made with plain synchronous ``subprocess`` calls (a few
tens of milliseconds).  Long-running programs (a server in a namespace,
Dante's sockd) run under the test's reactor as `WatchedProcess`, whose
readiness is a line in their output, never a sleep; `serve_http` runs
``python3 -m http.server`` in a namespace.  In a trial TestCase::

    topology = netns.create_topology()
    self.addCleanup(topology.teardown)
    http = netns.serve_http(topology.destination, directory)
    self.addCleanup(http.stop)
    port = int((yield http.waitFor(netns.HTTP_SERVER_READY)).group(2))
    # a proxy in the root namespace listens on topology.proxy_address and
    # connects out from topology.external_address; a client runs as
    # topology.client.argv(...)
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import error as _error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol

from benchmarks.processes import descendants  # the same /proc walk the benchmark harness uses

__all__ = [
    "Namespace",
    "Topology",
    "NetnsUnavailable",
    "create_topology",
    "netns_unavailable_reason",
    "sweep_stale",
    "krb5_conf_via",
    "WatchedProcess",
    "ProcessFailed",
    "serve_http",
    "HTTP_SERVER_READY",
    "serve_echo",
    "ECHO_SERVER_READY",
]

PREFIX = "txsg"  # every namespace, veth and /etc/netns entry we make starts with it
CLIENT_NET = "10.200"
DESTINATION_NET = "10.201"
LOCK_FILE = "/run/txsocksgss-netns.lock"
_counter = itertools.count(1)
_NAME = re.compile(rf"^{PREFIX}([0-9a-z]+)n(\d+)[cd]$")


class NetnsUnavailable(AssertionError):
    """This host cannot create network namespaces (not root, no ``ip``)."""


def netns_unavailable_reason() -> str | None:
    """None when namespaces can be created here; otherwise why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None and not os.path.exists("/usr/sbin/ip") and not os.path.exists("/sbin/ip"):
        return "`ip` (iproute2) is not installed; scripts/bootstrap.sh test installs it"
    return None


def _ip_program() -> str:
    return shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([_ip_program(), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class Namespace:
    """One network namespace: its name, its address and the root-side address of its veth."""

    name: str
    address: str  # inside the namespace
    peer: str  # the root namespace's end of the veth
    root_ifname: str  # the root namespace's end of the veth

    @property
    def etc(self) -> str:
        """/etc/netns/<name>: files here replace /etc/<file> under `ip netns exec`."""
        return os.path.join("/etc/netns", self.name)

    def argv(self, *args: str) -> list[str]:
        """The command line that runs ``args`` inside this namespace."""
        return [_ip_program(), "netns", "exec", self.name, *args]

    def run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run a short command inside the namespace (subprocess.run keywords)."""
        return subprocess.run(self.argv(*args), **kwargs)

    def write_etc(self, filename: str, text: str) -> str:
        """Write /etc/netns/<name>/<filename> (seen as /etc/<filename> inside); returns its path."""
        os.makedirs(self.etc, exist_ok=True)
        path = os.path.join(self.etc, filename)
        with open(path, "w") as f:
            f.write(text)
        return path

    def set_hosts(self, entries: dict[str, str | list[str]]) -> str:
        """The namespace's /etc/hosts: localhost plus ``{address: name or [names]}``."""
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        for address, names in entries.items():
            if isinstance(names, str):
                names = [names]
            lines.append(f"{address}\t{' '.join(names)}")
        return self.write_etc("hosts", "\n".join(lines) + "\n")

    def pids(self) -> list[int]:
        result = _ip("netns", "pids", self.name, check=False)
        return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []


@dataclass
class Topology:
    """A client namespace and a destination namespace around the root namespace (the proxy)."""

    index: int  # X in 10.200.X.0/24 and 10.201.X.0/24
    client: Namespace
    destination: Namespace
    proxy_name: str
    _torn_down: bool = field(default=False, repr=False)

    @property
    def proxy_address(self) -> str:
        """Where a proxy in the root namespace listens for the client namespace."""
        return self.client.peer

    @property
    def external_address(self) -> str:
        """The root namespace's address towards the destination (Dante's ``external:``)."""
        return self.destination.peer

    @property
    def namespaces(self) -> tuple[Namespace, Namespace]:
        return (self.client, self.destination)

    def teardown(self) -> None:
        """Delete everything this topology made.  Safe to call twice; raises only at the end."""
        if self._torn_down:
            return
        self._torn_down = True
        errors = _remove(self.namespaces)
        if errors:
            raise RuntimeError("netns teardown: " + "; ".join(errors))


def _remove(namespaces: tuple[Namespace, ...] | list[Namespace]) -> list[str]:
    errors: list[str] = []
    for ns in namespaces:
        # Deleting a namespace does not end its processes (they keep it alive).
        for pid in ns.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except OSError as e:
                errors.append(f"kill {pid} in {ns.name}: {e}")
    for ns in namespaces:
        # Deleting one end deletes the pair; it may be gone with its namespace.
        result = _ip("link", "del", ns.root_ifname, check=False)
        if result.returncode != 0 and "Cannot find device" not in result.stderr:
            errors.append(f"ip link del {ns.root_ifname}: {result.stderr.strip()}")
        result = _ip("netns", "del", ns.name, check=False)
        if result.returncode != 0 and "No such file" not in result.stderr:
            errors.append(f"ip netns del {ns.name}: {result.stderr.strip()}")
        shutil.rmtree(ns.etc, ignore_errors=True)
    return errors


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def sweep_stale() -> list[str]:
    """Remove namespaces, veths and /etc/netns entries left by runs whose pid is gone."""
    names = set(_ip("netns", "list", check=False).stdout.split())
    if os.path.isdir("/etc/netns"):
        names.update(os.listdir("/etc/netns"))
    links = re.findall(rf"^\d+: ({PREFIX}[0-9a-z]+n\d+[cd]r)[@:]", _ip("-o", "link", "show", check=False).stdout, re.M)
    names.update(link[:-1] for link in links)
    stale = []
    for name in sorted(names):
        match = _NAME.match(name)
        if match and not _pid_alive(int(match.group(1), 36)):
            stale.append(Namespace(name=name, address="", peer="", root_ifname=name + "r"))
    _remove(stale)
    return [ns.name for ns in stale]


def _used_indices() -> set[int]:
    used = set()
    output = _ip("-o", "-4", "addr", "show", check=False).stdout
    for prefix in (CLIENT_NET, DESTINATION_NET):
        for third in re.findall(rf"inet {re.escape(prefix)}\.(\d+)\.", output):
            used.add(int(third))
    # Routes too: another run's veth may be set up half-way.
    output = _ip("-4", "route", "show", check=False).stdout
    for prefix in (CLIENT_NET, DESTINATION_NET):
        for third in re.findall(rf"^{re.escape(prefix)}\.(\d+)\.", output, re.M):
            used.add(int(third))
    return used


def _make(name: str, root_address: str, inner_address: str) -> Namespace:
    ns = Namespace(
        name=name,
        address=str(ipaddress.ip_interface(inner_address).ip),
        peer=str(ipaddress.ip_interface(root_address).ip),
        root_ifname=name + "r",
    )
    inner_ifname = name + "i"
    _ip("netns", "add", name)
    _ip("link", "add", ns.root_ifname, "type", "veth", "peer", "name", inner_ifname)
    _ip("link", "set", inner_ifname, "netns", name)
    _ip("addr", "add", root_address, "dev", ns.root_ifname)
    _ip("link", "set", ns.root_ifname, "up")
    _ip("-n", name, "link", "set", "lo", "up")
    _ip("-n", name, "addr", "add", inner_address, "dev", inner_ifname)
    _ip("-n", name, "link", "set", inner_ifname, "up")
    return ns


def create_topology(proxy_name: str = "socks-proxy.test") -> Topology:
    """
    Create a client and a destination namespace (see the module docstring).

    ``proxy_name`` is what the client namespace's /etc/hosts calls
    ``proxy_address``: a GSS-API client of a proxy there asks for
    ``rcmd/<proxy_name>``.  Call `Topology.teardown` when done (addCleanup).
    """
    reason = netns_unavailable_reason()
    if reason is not None:
        raise NetnsUnavailable(reason)
    sweep_stale()
    tag = f"{PREFIX}{_base36(os.getpid())}n{next(_counter)}"
    if len(tag) + 2 > 15:  # interface names: at most 15 characters ("c" + "r")
        raise RuntimeError(f"namespace tag {tag!r} too long for an interface name")
    os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        used = _used_indices()
        free = [x for x in range(1, 255) if x not in used]
        if not free:
            raise RuntimeError(f"no free {CLIENT_NET}.X.0/24 and {DESTINATION_NET}.X.0/24 left")
        x = free[0]
        made: list[Namespace] = []
        try:
            made.append(_make(tag + "c", f"{CLIENT_NET}.{x}.1/24", f"{CLIENT_NET}.{x}.2/24"))
            made.append(_make(tag + "d", f"{DESTINATION_NET}.{x}.1/24", f"{DESTINATION_NET}.{x}.2/24"))
        except BaseException:
            # Include the half-made one: its names are known from the tag.
            names = {ns.name for ns in made}
            for suffix in "cd":
                if tag + suffix not in names:
                    made.append(Namespace(name=tag + suffix, address="", peer="", root_ifname=tag + suffix + "r"))
            _remove(made)
            raise
    topology = Topology(index=x, client=made[0], destination=made[1], proxy_name=proxy_name)
    try:
        topology.client.set_hosts({topology.proxy_address: proxy_name})
        topology.destination.set_hosts({})
    except BaseException:
        topology.teardown()
        raise
    return topology


def krb5_conf_via(source: str, address: str, destination: str) -> str:
    """
    Copy the krb5.conf ``source`` to ``destination`` with every 127.0.0.1
    replaced by ``address`` (for a namespace that reaches the root
    namespace's KDC through its veth).  Returns ``destination``.
    """
    with open(source) as f:
        text = f.read()
    text = re.sub(r"\b127\.0\.0\.1\b", address, text)
    with open(destination, "w") as f:
        f.write(text)
    return destination


# --- long-running programs (Twisted) ----------------------------------------
#
# Servers for a test (Dante's sockd in the root namespace, an HTTP server in
# the destination namespace) run under the test's reactor.  Readiness is a
# line in their output, never a sleep.


class ProcessFailed(AssertionError):
    """A watched program ended, or timed out, before printing what was waited for."""


class WatchedProcess(ProcessProtocol):
    """
    A child process whose stdout and stderr are collected (``text``) and
    watched: `waitFor` fires on the first match of a regular expression,
    `ended` when the process exits (with its exit code, or the negated
    signal number).  `stop` ends it, and any descendants it left, for
    addCleanup.

    Start one with `WatchedProcess.spawn` (which returns at once, so the
    caller can register the cleanup before waiting for anything).
    """

    def __init__(self, label: str, reactor: Any) -> None:
        self.label = label
        self.reactor = reactor
        self.chunks: list[str] = []
        self.ended: Deferred[int] = Deferred()
        self.exit_code: int | None = None
        self._waiters: list[tuple[re.Pattern[str], Deferred[re.Match[str]], Any]] = []

    @classmethod
    def spawn(cls, argv: list[str], label: str, env: dict[str, str] | None = None,
              path: str | None = None, reactor: Any = None) -> "WatchedProcess":
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        proto = cls(label, reactor)
        env = dict(os.environ if env is None else env)
        reactor.spawnProcess(proto, argv[0], argv, env=env, path=path, childFDs={0: "w", 1: "r", 2: "r"})
        return proto

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.chunks.append(data.decode("utf-8", "replace"))
        text = self.text
        for waiter in list(self._waiters):
            pattern, d, timer = waiter
            match = pattern.search(text)
            if match is not None:
                self._waiters.remove(waiter)
                timer.cancel()
                d.callback(match)

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        if isinstance(value, (_error.ProcessDone, _error.ProcessTerminated)):
            code = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        else:
            code = -1
        self.exit_code = code
        waiters, self._waiters = self._waiters, []
        for pattern, d, timer in waiters:
            timer.cancel()
            d.errback(ProcessFailed(
                f"{self.label} ended (exit {code}) before printing /{pattern.pattern}/; its output:\n{self.text}"))
        self.ended.callback(code)

    def waitFor(self, pattern: str | re.Pattern[str], timeout: float = 30.0) -> Deferred[re.Match[str]]:
        """Fires with the first match of ``pattern`` in the output so far or to come."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        match = regex.search(self.text)
        if match is not None:
            return succeed(match)
        d: Deferred[re.Match[str]] = Deferred()
        if self.exit_code is not None:
            d.errback(ProcessFailed(
                f"{self.label} ended (exit {self.exit_code}) without printing /{regex.pattern}/; its output:\n{self.text}"))
            return d

        def expire() -> None:
            for waiter in list(self._waiters):
                if waiter[1] is d:
                    self._waiters.remove(waiter)
            d.errback(ProcessFailed(
                f"{self.label} did not print /{regex.pattern}/ within {timeout}s; its output:\n{self.text}"))

        self._waiters.append((regex, d, self.reactor.callLater(timeout, expire)))
        return d

    def stop(self, grace: float = 10.0) -> Deferred[int]:
        """SIGTERM, then SIGKILL after ``grace`` seconds; then SIGKILL to descendants left behind."""
        if self.exit_code is not None:
            return succeed(self.exit_code)
        assert self.transport is not None
        pid = self.transport.pid
        leftovers = descendants(pid) if pid else []
        try:
            self.transport.signalProcess("TERM")
        except _error.ProcessExitedAlready:
            pass
        killer = self.reactor.callLater(grace, self._kill)

        def done(code: int) -> int:
            if killer.active():
                killer.cancel()
            for child in leftovers:
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass
            return code

        return self.ended.addCallback(done)

    def _kill(self) -> None:
        assert self.transport is not None
        try:
            self.transport.signalProcess("KILL")
        except _error.ProcessExitedAlready:
            pass


# What `python3 -m http.server` prints once it listens (port 0 = any).
HTTP_SERVER_READY = re.compile(r"Serving HTTP on (\S+) port (\d+)")


def serve_http(namespace: Namespace, directory: str, port: int = 0, reactor: Any = None) -> WatchedProcess:
    """
    ``python3 -m http.server`` inside ``namespace`` on its address, serving
    ``directory`` byte for byte.  Wait for ``waitFor(HTTP_SERVER_READY)``;
    the match's group 2 is the port.  Each request is logged on its stderr
    (``"GET /path HTTP/1.1" 200``).  Stop it with ``stop()`` (the namespace's
    teardown would kill it too).
    """
    argv = namespace.argv(sys.executable, "-u", "-m", "http.server",
                          "--bind", namespace.address, "--directory", directory, str(port))
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return WatchedProcess.spawn(argv, f"http.server in {namespace.name}", env=env, reactor=reactor)


# What `serve_echo` prints once it listens: kind (tcp or udp), address, port.
ECHO_SERVER_READY = re.compile(r"Echo listening on (tcp|udp) (\S+) port (\d+)")

_ECHO_SCRIPT = r"""
import socket, socketserver, sys
address, kind = sys.argv[1], sys.argv[2]
if kind == "udp":
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    print(f"Echo listening on udp {address} port {sock.getsockname()[1]}", flush=True)
    while True:
        data, peer = sock.recvfrom(65535)
        print(f"datagram of {len(data)} bytes from {peer[0]}.{peer[1]}", flush=True)
        sock.sendto(b"echo:" + data, peer)
else:
    class Echo(socketserver.BaseRequestHandler):
        def handle(self):
            total = 0
            while True:
                data = self.request.recv(1 << 20)
                if not data:
                    break
                total += len(data)
                self.request.sendall(data)
            print(f"echoed {total} bytes to {self.client_address[0]}.{self.client_address[1]}", flush=True)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server((address, 0), Echo)
    print(f"Echo listening on tcp {address} port {server.server_address[1]}", flush=True)
    server.serve_forever()
"""


def serve_echo(namespace: Namespace, kind: str = "tcp", reactor: Any = None) -> WatchedProcess:
    """
    An echo server inside ``namespace`` on its address: ``tcp`` sends every
    byte back as it arrives (and logs ``echoed N bytes to a.b.c.d.port``
    when the client closes); ``udp`` answers each datagram with ``echo:``
    and the datagram (and logs ``datagram of N bytes from a.b.c.d.port``).
    Wait for ``waitFor(ECHO_SERVER_READY)``; the match's group 3 is the
    port.  Stop it with ``stop()`` (the namespace's teardown would kill it too).
    """
    if kind not in ("tcp", "udp"):
        raise ValueError(f"echo kind {kind!r}: tcp or udp")
    argv = namespace.argv(sys.executable, "-u", "-c", _ECHO_SCRIPT, namespace.address, kind)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return WatchedProcess.spawn(argv, f"{kind} echo in {namespace.name}", env=env, reactor=reactor)
