"""
Destination servers for tests on 127.0.0.1: a TCP echo server (one that can
also reset on request), a UDP echo, an HTTP/1.0 server of a known body, and
a banner server that speaks first.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

__all__ = ["BannerServerFactory", "ByteServerFactory", "EchoFactory", "EchoUDP", "http_body"]


class _Echo(Protocol):
    def connectionMade(self) -> None:
        self.factory.connections.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self.factory.reset_on is not None and data == self.factory.reset_on:
            self.transport.abortConnection()  # SO_LINGER 0: the peer gets an RST
            return
        self.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections.discard(self)
        waiters, self.factory.waiters = self.factory.waiters, []
        for waiter in waiters:
            waiter.callback(None)


class EchoFactory(Factory):
    """
    A TCP server that sends every byte back.  With ``reset_on``, a read of
    exactly those bytes resets the connection instead (the client gets an
    RST).  ``connections`` are the open ones.
    """

    protocol = _Echo
    noisy = False

    def __init__(self, reset_on: bytes | None = None) -> None:
        self.reset_on = reset_on
        self.connections: set[Any] = set()
        self.waiters: list[Deferred[None]] = []

    def whenAllClosed(self) -> Deferred[None]:
        """Fires once no connection is open (at once if none is)."""
        d: Deferred[None] = Deferred()
        if self.connections:
            self.waiters.append(d)
            d.addCallback(lambda _: self.whenAllClosed())
        else:
            d.callback(None)
        return d


class EchoUDP(DatagramProtocol):
    """Sends every datagram back where it came from, prefixed with ``echo:``."""

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.transport.write(b"echo:" + data, addr)


class _ByteServerProtocol(Protocol):
    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and self.factory.body is not None:
            body = self.factory.body
            self.transport.write(
                b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections.discard(self)
        self.factory.closed += 1
        if not self.factory.connections:
            waiters, self.factory.waiters = self.factory.waiters, []
            for waiter in waiters:
                waiter.callback(None)


class ByteServerFactory(Factory):
    """An HTTP/1.0 server that answers any request with ``body`` and closes (``None``: never answers)."""

    protocol = _ByteServerProtocol
    noisy = False

    def __init__(self, body: bytes | None) -> None:
        self.body = body
        self.connections: set[Any] = set()
        self.closed = 0
        self.waiters: list[Deferred[None]] = []

    def whenClosed(self) -> Deferred[None]:
        """Fires once no connection is open (at once if none is)."""
        d: Deferred[None] = Deferred()
        if self.connections:
            self.waiters.append(d)
        else:
            d.callback(None)
        return d


def http_body(response: bytes) -> bytes:
    """The body of the byte server's HTTP/1.0 answer (checks its status and Content-Length)."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK"), head[:80]
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert length == len(body), (length, len(body))
    return body


class _BannerProtocol(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(self.factory.body)
        self.transport.loseConnection()


class BannerServerFactory(Factory):
    """Sends ``body`` as soon as a client connects, then closes (no request needed)."""

    protocol = _BannerProtocol
    noisy = False

    def __init__(self, body: bytes) -> None:
        self.body = body
