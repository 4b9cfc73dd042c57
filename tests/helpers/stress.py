"""
Helpers for the soak, hostile-input and HAProxy tests: resource accounting
of this process (open file descriptors, resident memory, the descriptor
limit), seeded payload pumps with flow control, a rendezvous between the
two ends of a tunnel, and a bounded wait for a condition the reactor brings
about.  (The hostile client is `tests.helpers.clients.HostileClient`, the
resolver that never leaves the machine `tests.helpers.fakes.FakeResolver`.)

Nothing here sleeps: every wait is a Deferred that a network event fires,
or a condition re-checked on later reactor turns with a deadline.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import resource
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from zope.interface import implementer

__all__ = [
    "CHUNK",
    "Pump",
    "Rendezvous",
    "SOCKSPump",
    "UpstreamPumpFactory",
    "open_fds",
    "payload_prefix_digest",
    "raise_fd_limit",
    "rss_bytes",
    "settle_memory",
    "waitUntil",
]

CHUNK = 16 * 1024


def open_fds() -> int:
    """How many file descriptors this process has open now."""
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    """This process's resident set size now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def settle_memory() -> int:
    """
    Collect garbage and give free heap pages back to the kernel, then return
    the RSS.  glibc keeps freed memory for reuse; that is not a leak, and
    ``malloc_trim`` makes the number say what is really still allocated.
    """
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return rss_bytes()


def raise_fd_limit(test: Any, needed: int) -> int:
    """
    Make sure this process may open ``needed`` descriptors: raise the soft
    limit (and the hard one too when allowed, as root), restored at the
    test's cleanup.  Fails the test when the limit cannot be raised enough.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    target_hard = hard if hard == resource.RLIM_INFINITY or hard >= needed else needed
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, target_hard))
    except (ValueError, PermissionError, OSError):
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise AssertionError(
                f"this test needs {needed} file descriptors; RLIMIT_NOFILE is {soft}/{hard} "
                "and cannot be raised (run as root or raise the hard limit)"
            ) from None
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    test.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
    return needed


@inlineCallbacks
def waitUntil(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.01) -> Any:
    """
    Fire once ``condition()`` is true, re-checking it every ``step`` seconds
    of reactor time; fail with ``what`` after ``timeout`` seconds.  For
    things no event announces (a descriptor closed after the peer saw the
    close), never as a stand-in for an event that can be waited on.
    """
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        yield deferLater(reactor, step, lambda: None)


def _chunks(seed: int, size: int):
    """The payload of (seed, size) as the pumps send it: CHUNK-sized pieces of a seeded stream."""
    rng = random.Random(seed)
    left = size
    while left:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def payload_prefix_digest(seed: int, size: int, length: int) -> str:
    """sha256 of the first ``length`` bytes of the payload (seed, size)."""
    digest = hashlib.sha256()
    for chunk in _chunks(seed, size):
        if length <= 0:
            break
        digest.update(chunk[:length])
        length -= len(chunk)
    return digest.hexdigest()


@implementer(IPullProducer, IHalfCloseableProtocol)
class Pump(Protocol):
    """
    One end of a tunnel under test.  `start` makes it send ``size`` seeded
    bytes as a pull producer (a chunk each time the transport's buffer is
    empty, so at most one chunk per connection waits in Python), then
    half-close; it digests whatever it receives.  With ``abort_after`` it
    aborts the connection (RST) once it has received that many bytes.

    ``lost`` fires with the connection's end; ``outcome`` says how it went.
    """

    def __init__(self) -> None:
        self.seed = 0
        self.size = 0
        self.sent = 0
        self.sent_digest = hashlib.sha256()
        self.received = 0
        self.received_digest = hashlib.sha256()
        self.abort_after: int | None = None
        self.aborted = False
        self.write_done = False
        self.read_eof = False
        self.started = False
        self.lost: Deferred[None] = Deferred()
        self.lost_reason: Any = None
        self._chunks: Any = iter(())

    def start(self, seed: int, size: int, abort_after: int | None = None) -> None:
        self.seed, self.size, self.abort_after = seed, size, abort_after
        self.started = True
        self._chunks = _chunks(seed, size)
        if self.transport is not None and self.transport.connected and not self.lost.called:
            self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        chunk = next(self._chunks, None)
        if chunk is not None:
            self.sent += len(chunk)
            self.sent_digest.update(chunk)
            self.transport.write(chunk)
        if self.sent >= self.size and not self.write_done:
            self.write_done = True
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()
            if self.read_eof:
                self.transport.loseConnection()

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.received_digest.update(data)
        if self.abort_after is not None and not self.aborted and self.received >= self.abort_after:
            self.aborted = True
            self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        self.read_eof = True
        if self.write_done or not self.started:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.lost_reason = reason
        if not self.lost.called:
            self.lost.callback(None)


class Rendezvous:
    """Meets the two ends of a tunnel by the proxy's outgoing port: `expect(port)` fires with the upstream end."""

    def __init__(self) -> None:
        self._arrived: dict[int, Any] = {}
        self._waiting: dict[int, Deferred[Any]] = {}

    def arrived(self, port: int, protocol: Any) -> None:
        waiter = self._waiting.pop(port, None)
        if waiter is not None:
            waiter.callback(protocol)
        else:
            self._arrived[port] = protocol

    def expect(self, port: int) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if port in self._arrived:
            d.callback(self._arrived.pop(port))
        else:
            self._waiting[port] = d
        return d


class _UpstreamPump(Pump):
    def connectionMade(self) -> None:
        self.factory.all.append(self)
        self.factory.rendezvous.arrived(self.transport.getPeer().port, self)


class UpstreamPumpFactory(Factory):
    """The destination server: each connection is a `Pump` handed to the `Rendezvous` by the peer's port."""

    protocol = _UpstreamPump
    noisy = False

    def __init__(self) -> None:
        self.rendezvous = Rendezvous()
        self.all: list[Pump] = []


class SOCKSPump(Pump):
    """
    A `Pump` that first does a SOCKS 5 CONNECT (method 00) to 127.0.0.1:``port``;
    ``replied`` fires with the reply's (REP, BND.PORT).
    """

    def __init__(self, destination_port: int) -> None:
        super().__init__()
        self.destination_port = destination_port
        self.handshake = b""
        self.replied: Deferred[tuple[int, int]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(
            b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01" + self.destination_port.to_bytes(2, "big"))

    def dataReceived(self, data: bytes) -> None:
        if self.replied.called:
            super().dataReceived(data)
            return
        self.handshake += data
        if len(self.handshake) < 12:
            return
        if self.handshake[:3] != b"\x05\x00\x05" or self.handshake[5] != 0x01:
            self.replied.errback(AssertionError(f"unexpected handshake answer {self.handshake[:12].hex()}"))
            return
        rest = self.handshake[12:]
        self.replied.callback((self.handshake[3], int.from_bytes(self.handshake[10:12], "big")))
        if rest:
            super().dataReceived(rest)

    def readConnectionLost(self) -> None:
        if not self.replied.called:
            self.transport.loseConnection()
            return
        super().readConnectionLost()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.replied.called:
            self.replied.errback(AssertionError(f"closed before the reply: {reason!r}"))
        super().connectionLost(reason)
