"""
Clients for tests on 127.0.0.1: an HTTP/1.0 fetcher, a minimal scripted
SOCKS 5 client, a byte collector (that may speak first), a datagram
collector, a tunnel to an echo server through the proxy, and a client
that sends whatever a hostile-input test tells it to.

Every wait is a Deferred a network event fires; nothing sleeps.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from txsocksgss.client.endpoints import SOCKS5ClientEndpoint
from txsocksgss.wire.reader import MessageBuffer
from txsocksgss.wire.socks5 import Command, Greeting, Reply, Request, parse_reply

__all__ = [
    "DatagramCollector",
    "Fetcher",
    "HostileClient",
    "ScriptedClient",
    "StreamCollector",
    "Tunnel",
    "openTunnel",
]


class Fetcher(Protocol):
    """Sends an HTTP/1.0 request and collects the answer until the close; ``done`` fires with it."""

    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data)


class StreamCollector(Protocol):
    """
    Collects the bytes it receives in ``received`` (also ``data``); with
    ``greeting`` it first sends those bytes at connect.  ``waitFor(n)``
    fires with what was received once n bytes are in; ``lost`` fires with
    everything received when the connection ends.
    """

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.received = b""
        self.lost: Deferred[bytes] = Deferred()
        self._waiter: tuple[Deferred[bytes], int] | None = None

    @property
    def data(self) -> bytes:
        return self.received

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._waiter is not None and len(self.received) >= self._waiter[1]:
            waiter, self._waiter = self._waiter[0], None
            waiter.callback(self.received)

    def waitFor(self, count: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        if len(self.received) >= count:
            d.callback(self.received)
        else:
            self._waiter = (d, count)
        return d

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(self.received)


class DatagramCollector(DatagramProtocol):
    """
    `next` fires with the next datagram (data, address).  A datagram that
    arrives when nobody waits is an error (``datagramReceived`` raises, and
    Twisted's logged error fails the test), unless ``ignore_unexpected``.
    ``stopped`` says whether the port was closed.
    """

    def __init__(self, ignore_unexpected: bool = False) -> None:
        self.ignore_unexpected = ignore_unexpected
        self.waiter: Deferred[tuple[bytes, Any]] | None = None
        self.stopped = False

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is None:
            if self.ignore_unexpected:
                return
            raise AssertionError(f"unexpected datagram from {addr}: {data[:40]!r}")
        waiter.callback((data, addr))

    def stopProtocol(self) -> None:
        self.stopped = True

    def next(self) -> Deferred[tuple[bytes, Any]]:
        self.waiter = Deferred()
        return self.waiter


class Tunnel(Protocol):
    """The client end of a tunnel to an echo server: `roundTrip` sends bytes and waits for them back."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        self._waiter: tuple[int, Deferred[bytes]] | None = None

    def roundTrip(self, data: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self._waiter = (len(self.received) + len(data), d)
        self.transport.write(data)
        return d

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._waiter is not None and len(self.received) >= self._waiter[0]:
            (_n, d), self._waiter = self._waiter, None
            d.callback(self.received)

    def connectionLost(self, reason: Any = None) -> None:
        if self._waiter is not None:
            (_n, d), self._waiter = self._waiter, None
            d.errback(reason)
        self.lost.callback(None)


@inlineCallbacks
def openTunnel(test: TestCase, proxy_port: int, destination_port: int) -> Any:
    """A `Tunnel` through the SOCKS proxy on 127.0.0.1:``proxy_port`` to 127.0.0.1:``destination_port``."""
    endpoint = SOCKS5ClientEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy_port), "127.0.0.1",
                                    destination_port)
    tunnel = yield endpoint.connect(Factory.forProtocol(Tunnel))

    def close() -> Any:
        if tunnel.lost.called:
            return None
        tunnel.transport.loseConnection()
        return tunnel.lost

    test.addCleanup(close)
    return tunnel


class ScriptedClient(Protocol):
    """
    A minimal SOCKS 5 client for tests: method 00, one request, then it
    collects replies and data.  ``replies`` fires Deferreds in order.
    """

    def __init__(self, request: Request, methods: tuple[int, ...] = (0,)) -> None:
        self.request = request
        self.methods = methods
        self.buffer = MessageBuffer()
        self.state = "selection"
        self._reply_waiters: dict[int, list[Deferred[Reply]]] = {}
        self._lost_reason: Any = None
        self.replies: list[Reply] = []
        self.data = b""
        self.data_waiter: Deferred[bytes] | None = None
        self.data_expected = 0
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(Greeting(self.methods).serialize())

    def dataReceived(self, data: bytes) -> None:
        if self.state == "data":
            self._data(data)
            return
        self.buffer.feed(data)
        if self.state == "selection":
            if len(self.buffer) < 2:
                return
            selection = self.buffer.next(lambda r: r.take(2))
            assert selection == b"\x05\x00", selection
            self.transport.write(self.request.serialize())
            self.state = "reply"
        while self.state == "reply":
            reply = self.buffer.next(parse_reply)
            if reply is None:
                return
            self.replies.append(reply)
            done = self.request.command != Command.BIND or len(self.replies) == 2 or reply.code != 0
            if done:
                self.state = "data"
            for waiter in self._reply_waiters.pop(len(self.replies) - 1, []):
                waiter.callback(reply)
        rest = self.buffer.take_all()
        if rest:
            self._data(rest)

    def _data(self, data: bytes) -> None:
        self.data += data
        if self.data_waiter is not None and len(self.data) >= self.data_expected:
            waiter, self.data_waiter = self.data_waiter, None
            waiter.callback(self.data)

    def reply(self, index: int) -> Deferred[Reply]:
        """Fires with the reply number ``index`` (0 or 1), or fails if the connection ends first."""
        if index < len(self.replies):
            return succeed(self.replies[index])
        if self._lost_reason is not None:
            return fail(self._lost_reason)
        d: Deferred[Reply] = Deferred()
        self._reply_waiters.setdefault(index, []).append(d)
        return d

    def waitForData(self, count: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        if len(self.data) >= count:
            d.callback(self.data)
        else:
            self.data_waiter, self.data_expected = d, count
        return d

    def connectionLost(self, reason: Any = None) -> None:
        self._lost_reason = reason
        waiters, self._reply_waiters = self._reply_waiters, {}
        for pending in waiters.values():
            for waiter in pending:
                waiter.errback(reason)
        self.lost.callback(None)



@implementer(IHalfCloseableProtocol)
class HostileClient(Protocol):
    """Sends what it is told; ``until(predicate)`` waits on what the server has sent."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        self.ended = False
        self._waiters: list[tuple[Callable[[bytes], bool], Deferred[bool]]] = []

    def until(self, predicate: Callable[[bytes], bool]) -> Deferred[bool]:
        """Fires True once ``predicate(received)`` holds, False if the server ends the stream first."""
        d: Deferred[bool] = Deferred()
        if predicate(self.received):
            d.callback(True)
        elif self.ended:
            d.callback(False)
        else:
            self._waiters.append((predicate, d))
        return d

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        waiting, self._waiters = self._waiters, []
        for predicate, d in waiting:
            if predicate(self.received):
                d.callback(True)
            else:
                self._waiters.append((predicate, d))

    def _end(self) -> None:
        self.ended = True
        waiting, self._waiters = self._waiters, []
        for _predicate, d in waiting:
            d.callback(False)

    def readConnectionLost(self) -> None:
        self._end()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self._end()
        self.lost.callback(None)

    def send(self, data: bytes) -> None:
        """Put ``data`` on the socket now (one segment each call), in order with anything buffered."""
        transport = self.transport
        if self.ended or not transport.connected or transport.disconnecting:
            return
        if transport.dataBuffer or transport._tempDataLen:
            transport.write(data)
            return
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the server has already reset the connection; connectionLost follows
        if sent < len(data):
            transport.write(data[sent:])
