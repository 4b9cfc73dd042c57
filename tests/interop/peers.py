r"""
Third-party SOCKS servers as fixtures for trial TestCases: Dante's
``danted`` (Debian dante-server 1.4.2) and ``microsocks``, each run as a
child process of the reactor (``spawnProcess``) on a free port of 127.0.0.1.

    port = yield startDante(self, methods=("username",))
    port = yield startMicrosocks(self, user="alice", password="secret")
    dante = yield startDanteProcess(self, blocked_ports=[7])
    yield dante.waitForOutput(rb"block\(1\): tcp/connect")

Each ``start*`` function takes the running TestCase, fires with the port the
server listens on once it accepts connections (the ``*Process`` variants
fire with the `PeerProcess`, whose ``output`` holds the log and whose
``waitForOutput`` waits for a log line), and registers a cleanup that stops
it (SIGTERM) and waits until it has exited and closed its output, so the
reactor is left clean.  A missing program is a test failure
(`tests.helpers.processes.require_program`), never a skip.

Readiness.  Dante prints ``info: Dante/server[1/1] v1.4.2 running`` on its
log (``logoutput: stderr``) after it has called listen() on its internal
address (checked with strace), so the fixture waits for that line.
microsocks prints nothing when ready, so its fixture probes the port with a
TCP connect, retrying with a short reactor delay, bounded in total time.
Both programs exit at once when the port is taken (Dante:
``bindinternal(): ... Address already in use``; microsocks:
``server_setup: Address already in use``); the fixture then retries with
another free port, since picking a free port and handing it over is racy.

Dante's process model.  ``danted`` forks a monitor child, a negotiate child,
request children and an io child that all inherit stderr.  On SIGTERM the
mother tells them to exit; Twisted's ``processEnded`` fires only once every
copy of the output pipes is closed, so waiting for it waits for the
children too.

Dante's ``username`` method checks the system password database
(getpwnam/getspnam and crypt, as ``user.privileged: root``).  The tests use
a dedicated system account, `TEST_USER` with `TEST_PASSWORD`:
`ensureTestUser` creates it when missing (``useradd --system
--no-create-home --shell /usr/sbin/nologin``) and sets its password
(``chpasswd``) once per test process.  Both are idempotent; both need root,
which the test run has in CI (a non-root run fails with the reason).  To
remove the account: ``userdel socksgss-test``.

Dante 1.4.2 configuration facts (danted.conf(5), checked with ``danted -V``):

- ``socksmethod:`` is the global list of SOCKS methods in preference order
  (``none``, ``username``, ``gssapi``, ``rfc931``, ``pam.*``); a method not
  listed is never selected.  ``clientmethod:`` is for the TCP-level client
  rules (``none``, ``rfc931``, ``pam.address``, ``pam.any``).
- ``internal: 127.0.0.1 port = N`` needs a real port: ``port = 0`` is
  refused ("does not specify a portnumber to bind").
- In a rule, each keyword must start on its own line: a keyword after a
  multi-valued one on the same line (``command: connect bind protocol: tcp``)
  is a syntax error.
- ``command:`` values are ``bind bindreply connect udpassociate udpreply``;
  ``protocol:`` is ``tcp udp``; ``proxyprotocol:`` is ``socks_v4 socks_v5``.
- With ``none`` before ``username`` in ``socksmethod``, Dante warns that
  ``username`` is never tried; the fixture lists methods as given.
- ``-N 1`` (one mother process) is the default; ``-p FILE`` moves the pid
  file away from /var/run; ``-d N`` adds debug lines to the same log.

microsocks 1.0.3 prints one line per CONNECT on stderr,
``client[N] 127.0.0.1: connected to HOST:PORT``, and nothing when it
starts; ``-p 0`` makes it listen on a kernel-chosen port that it never
prints, so the fixture picks the port itself.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError, ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.helpers.ports import free_port
from tests.helpers.processes import require_program

__all__ = [
    "TEST_USER",
    "TEST_PASSWORD",
    "PeerProcess",
    "PeerStartError",
    "ensureTestUser",
    "startDante",
    "startDanteProcess",
    "startMicrosocks",
    "startMicrosocksProcess",
    "danteConfig",
]

_log = Logger()

TEST_USER = "socksgss-test"
TEST_PASSWORD = "interop-Secret-1"

# How long a peer may take to become ready, and to exit after SIGTERM.
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
# Delay between TCP readiness probes for a daemon that prints nothing.
PROBE_INTERVAL = 0.02
# Attempts with a new port when the one picked was taken meanwhile.
PORT_ATTEMPTS = 3

_DANTE_READY = re.compile(rb"server\[\d+/\d+\] v\S+ running")
_PORT_TAKEN = b"Address already in use"


class PeerStartError(AssertionError):
    """
    A peer exited or stayed silent before it was ready, or did not print
    what a test waits for; the message carries its output.  An
    AssertionError, so trial reports a failure, as for a missing program.
    """

    def __init__(self, message: str, output: bytes = b"", port_taken: bool = False) -> None:
        text = output.decode("utf-8", "replace")[-4000:]
        super().__init__(f"{message}\n--- its output ---\n{text}" if text else message)
        self.port_taken = port_taken


class PeerProcess(ProcessProtocol):
    """
    One third-party server process: collects its output (stdout and stderr
    together) in ``output``, fires ``ready`` when ``ready_pattern`` shows up
    in it (when given), and ``ended`` with the exit status (ProcessDone or
    ProcessTerminated) once the process has exited and every copy of its
    output pipes is closed (children included).  ``port`` is where it listens.
    """

    def __init__(self, name: str, ready_pattern: re.Pattern[bytes] | None = None) -> None:
        self.name = name
        self.output = b""
        self.port = 0
        self.ready_pattern = ready_pattern
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[Exception] = Deferred()
        self.exited = False
        self._watchers: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []

    # -- ProcessProtocol ------------------------------------------------------

    def outReceived(self, data: bytes) -> None:
        self._output(data)

    def errReceived(self, data: bytes) -> None:
        self._output(data)

    def _output(self, data: bytes) -> None:
        self.output += data
        if self.ready_pattern is not None and not self.ready.called and self.ready_pattern.search(self.output):
            self.ready.callback(None)
        for watcher in list(self._watchers):
            match = watcher[0].search(self.output)
            if match is not None:
                self._watchers.remove(watcher)
                watcher[1].callback(match)

    def waitForOutput(self, pattern: bytes, timeout: float = READY_TIMEOUT) -> Deferred[re.Match[bytes]]:
        """
        Fires with the match of the regular expression ``pattern`` in the
        output so far or to come; fails (AssertionError, with the output) if
        it has not shown up within ``timeout`` seconds or when the process ends.
        """
        compiled = re.compile(pattern)
        match = compiled.search(self.output)
        d: Deferred[re.Match[bytes]] = Deferred()
        if match is not None:
            d.callback(match)
            return d
        if self.ended.called:
            d.errback(PeerStartError(f"{self.name} ended without printing {pattern!r}", self.output))
            return d
        watcher = (compiled, d)
        self._watchers.append(watcher)

        def expire() -> None:
            if watcher in self._watchers:
                self._watchers.remove(watcher)
                d.errback(PeerStartError(f"{self.name} did not print {pattern!r} within {timeout} seconds",
                                         self.output))

        timer = reactor.callLater(timeout, expire)
        return d.addBoth(_cancelling(timer))

    def processExited(self, reason: Failure) -> None:
        self.exited = True

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        _log.debug("{name} on port {port} ended ({reason}); output:\n{output}",
                   name=self.name, port=self.port, reason=reason.value,
                   output=self.output.decode("utf-8", "replace"))
        if not self.ready.called:
            self.ready.errback(PeerStartError(
                f"{self.name} exited before it was ready ({reason.value})",
                self.output, port_taken=_PORT_TAKEN in self.output))
        # The exception, not the Failure: a Failure would make `ended` an errback.
        watchers, self._watchers = self._watchers, []
        for pattern, waiter in watchers:
            waiter.errback(PeerStartError(f"{self.name} ended without printing {pattern.pattern!r}", self.output))
        self.ended.callback(reason.value)

    # -- control --------------------------------------------------------------

    def stop(self) -> Deferred[Exception]:
        """SIGTERM, then wait for the end; SIGKILL if it takes over `STOP_TIMEOUT` seconds."""
        if self.ended.called:
            return self.ended
        killer = reactor.callLater(STOP_TIMEOUT, self._signal, "KILL")

        def stopped(reason: Exception) -> Exception:
            if killer.active():
                killer.cancel()
            return reason

        self.ended.addBoth(stopped)
        self._signal("TERM")
        return self.ended

    def _signal(self, name: str) -> None:
        if self.exited or self.transport is None:
            return
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass


def _spawn(case: TestCase, protocol: PeerProcess, executable: str, args: Sequence[str]) -> None:
    transport = reactor.spawnProcess(protocol, executable, [executable, *args], env=dict(os.environ),
                                     childFDs={0: "w", 1: "r", 2: "r"})
    transport.closeStdin()  # an empty stdin: fd 0 stays open, as daemons expect
    case.addCleanup(_stopped, protocol)


@inlineCallbacks
def _stopped(protocol: PeerProcess) -> Any:
    reason = yield protocol.stop()
    # The status after SIGTERM is the program's business (Dante exits 0);
    # what matters is that the process and its children are gone.
    if protocol.ready.called and not isinstance(reason, ProcessDone):
        _log.info("{name} ended with {reason}", name=protocol.name, reason=reason)


def _cancelling(timer: Any) -> Any:
    """A pass-through callback that cancels ``timer`` (an IDelayedCall) if still pending."""
    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    return done


def _bounded(d: Deferred[Any], seconds: float, what: str, protocol: PeerProcess) -> Deferred[Any]:
    """Fail ``d`` with a PeerStartError (and its output) when it has not fired within ``seconds``."""
    def expire() -> None:
        if not d.called:
            d.errback(PeerStartError(f"{what} not ready within {seconds} seconds", protocol.output))

    timer = reactor.callLater(seconds, expire)
    return d.addBoth(_cancelling(timer))


class _Probe(Protocol):
    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


@inlineCallbacks
def _probeUntilListening(protocol: PeerProcess, port: int, deadline: float) -> Any:
    """
    Connect to 127.0.0.1:``port`` until it accepts, a short reactor delay
    apart, for a daemon that prints nothing when ready; fails when the
    process ends first or ``deadline`` (reactor time) passes.
    """
    from twisted.internet.task import deferLater

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2)
    while True:
        if protocol.ready.called:  # it ended: processEnded failed `ready`
            yield protocol.ready
        try:
            probe = yield connectProtocol(endpoint, _Probe())
        except ConnectError:
            if reactor.seconds() > deadline:
                raise PeerStartError(f"{protocol.name} not listening on port {port} "
                                     f"within {READY_TIMEOUT} seconds", protocol.output)
            yield deferLater(reactor, PROBE_INTERVAL, lambda: None)
            continue
        yield probe.lost
        if protocol.exited:  # someone else's listener on the port
            yield protocol.ended
            yield protocol.ready
        protocol.ready.callback(None)
        return


@inlineCallbacks
def _startWithRetries(case: TestCase, start: Any) -> Any:
    """Fire with ``start(port)``'s result for a free port; pick another port if it was taken meanwhile."""
    for attempt in range(PORT_ATTEMPTS):
        try:
            peer = yield start(free_port())
        except PeerStartError as error:
            if error.port_taken and attempt + 1 < PORT_ATTEMPTS:
                continue
            raise
        return peer


# -- Dante ---------------------------------------------------------------------


def danteConfig(
    port: int,
    methods: Iterable[str] = ("none",),
    blocked_ports: Iterable[int] = (),
) -> str:
    """
    A danted.conf (Dante 1.4.2 syntax) for 127.0.0.1:``port``: SOCKS
    ``methods`` in preference order, every command (connect, bind, bindreply,
    udpassociate, udpreply) over SOCKS 4 and 5 for clients and destinations
    in 127.0.0.0/8, except destinations on ``blocked_ports``, which a
    ``socks block`` rule refuses.  Logs go to stderr.
    """
    lines = [
        "logoutput: stderr",
        f"internal: 127.0.0.1 port = {port}",
        "external: 127.0.0.1",
        f"socksmethod: {' '.join(methods)}",
        "clientmethod: none",
        "user.privileged: root",
        "user.unprivileged: nobody",
        "",
        "client pass {",
        "  from: 127.0.0.0/8 to: 0.0.0.0/0",
        "  log: error",
        "}",
    ]
    for blocked in blocked_ports:
        lines += [
            "socks block {",
            f"  from: 127.0.0.0/8 to: 0.0.0.0/0 port = {blocked}",
            "  log: connect error",
            "}",
        ]
    lines += [
        "socks pass {",
        "  from: 127.0.0.0/8 to: 0.0.0.0/0",
        "  command: connect bind bindreply udpassociate udpreply",
        "  protocol: tcp udp",
        "  proxyprotocol: socks_v4 socks_v5",
        "  log: connect disconnect error",
        "}",
        "",
    ]
    return "\n".join(lines)


def startDante(
    case: TestCase,
    methods: Sequence[str] = ("none",),
    blocked_ports: Sequence[int] = (),
    debug: int = 0,
) -> Deferred[int]:
    """
    Run ``danted`` on 127.0.0.1 with `danteConfig`; fires with its port once
    it logged that it is running.  A ``username`` method needs the test
    account: call `ensureTestUser` first.  ``debug`` is danted's ``-d``
    level (its output lands in the test log when the process ends).
    """
    return startDanteProcess(case, methods, blocked_ports, debug).addCallback(lambda peer: peer.port)


def startDanteProcess(
    case: TestCase,
    methods: Sequence[str] = ("none",),
    blocked_ports: Sequence[int] = (),
    debug: int = 0,
) -> Deferred[PeerProcess]:
    """`startDante`, firing with the `PeerProcess` (``port``, ``output``, ``waitForOutput``)."""
    executable = require_program("danted")
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    os.chmod(directory, 0o755)

    def start(port: int) -> Deferred[PeerProcess]:
        config = os.path.join(directory, f"danted-{port}.conf")
        with open(config, "w") as handle:
            handle.write(danteConfig(port, methods, blocked_ports))
        protocol = PeerProcess("danted", _DANTE_READY)
        protocol.port = port
        args = ["-f", config, "-p", os.path.join(directory, f"danted-{port}.pid"), "-N", "1"]
        if debug:
            args += ["-d", str(debug)]
        _spawn(case, protocol, executable, args)
        ready = _bounded(protocol.ready, READY_TIMEOUT, "danted", protocol)
        return ready.addCallback(lambda _: protocol)

    return _startWithRetries(case, start)


# -- microsocks ----------------------------------------------------------------


def startMicrosocks(case: TestCase, user: str | None = None, password: str | None = None) -> Deferred[int]:
    """
    Run ``microsocks -i 127.0.0.1 -p PORT [-u USER -P PASS]`` (SOCKS 5
    CONNECT only); fires with its port once it accepts TCP connections.
    """
    return startMicrosocksProcess(case, user, password).addCallback(lambda peer: peer.port)


def startMicrosocksProcess(case: TestCase, user: str | None = None,
                           password: str | None = None) -> Deferred[PeerProcess]:
    """`startMicrosocks`, firing with the `PeerProcess`."""
    executable = require_program("microsocks")

    def start(port: int) -> Deferred[PeerProcess]:
        protocol = PeerProcess("microsocks")
        protocol.port = port
        args = ["-i", "127.0.0.1", "-p", str(port)]
        if user is not None:
            args += ["-u", user, "-P", password or ""]
        _spawn(case, protocol, executable, args)
        ready = _probeUntilListening(protocol, port, reactor.seconds() + READY_TIMEOUT)
        return ready.addCallback(lambda _: protocol)

    return _startWithRetries(case, start)


# -- the system account Dante's "username" method checks ---------------------------


class _InputProcess(ProcessProtocol):
    """Feeds ``stdin`` to a program and collects its output and exit code."""

    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.output = b""
        self.done: Deferred[tuple[bytes, int]] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.done.callback((self.output, getattr(reason.value, "exitCode", None) or 0))


def _run(executable: str, args: Sequence[str], stdin: bytes = b"") -> Deferred[tuple[bytes, int]]:
    protocol = _InputProcess(stdin)
    reactor.spawnProcess(protocol, executable, [executable, *args], env=dict(os.environ))
    return protocol.done


_test_user_ready = False


@inlineCallbacks
def ensureTestUser() -> Any:
    """
    Make sure the system account `TEST_USER` exists with `TEST_PASSWORD`
    (created with useradd when missing; password set with chpasswd), once per
    process.  Fails (AssertionError) when that is impossible, e.g. not root.
    """
    global _test_user_ready
    if _test_user_ready:
        return
    import pwd

    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        output, code = yield _run(require_program("useradd"),
                                  ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER])
        if code != 0:
            try:
                pwd.getpwnam(TEST_USER)  # created meanwhile by a concurrent run
            except KeyError:
                raise AssertionError(f"cannot create the test account {TEST_USER} "
                                     f"(tests need root): {output.decode('utf-8', 'replace')}") from None
    output, code = yield _run(require_program("chpasswd"), [], f"{TEST_USER}:{TEST_PASSWORD}\n".encode())
    if code != 0:
        raise AssertionError(f"cannot set the password of {TEST_USER} (tests need root): "
                             f"{output.decode('utf-8', 'replace')}")
    _test_user_ready = True

