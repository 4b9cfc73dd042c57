"""
Shared pieces for integration tests on 127.0.0.1: a SOCKS server on a free
port, a byte server that answers HTTP requests with a known body, an echo
server, a small scripted SOCKS 5 client, and running external programs.

Every helper is driven by Deferreds; nothing waits with sleep.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
from typing import Any

from twisted.internet import reactor, utils
from twisted.internet.defer import Deferred, DeferredList, fail, inlineCallbacks, succeed
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.trial.unittest import TestCase

from txsocksgss.server.config import Config
from txsocksgss.server.service import makeServerFactory
from txsocksgss.wire.reader import MessageBuffer
from txsocksgss.wire.socks5 import Address, Command, Greeting, Reply, Request, parse_reply

__all__ = [
    "IntegrationTestCase",
    "ByteServerFactory",
    "Fetcher",
    "http_body",
    "BannerServerFactory",
    "EchoUDP",
    "ScriptedClient",
    "StreamCollector",
    "require_program",
    "run_program",
    "self_signed_certificate",
]


def require_program(name: str) -> str:
    """
    The path of an external program the tests drive.  In CI a missing
    program is a failure, never a skip: the test that needs it fails here.
    """
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/bin")
    if path is None:
        raise AssertionError(f"{name} is not installed; `make test` installs it (scripts/bootstrap.sh)")
    return path


def run_program(executable: str, args: list[str], env: dict[str, str] | None = None) -> Deferred[tuple[bytes, bytes, int]]:
    """Run a program to completion; fires with (stdout, stderr, exit code)."""
    return utils.getProcessOutputAndValue(executable, args, env=env or dict(os.environ), reactor=reactor)


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
    """An HTTP/1.0 server that answers any request with ``body`` and closes."""

    protocol = _ByteServerProtocol
    noisy = False

    def __init__(self, body: bytes | None) -> None:
        self.body = body
        self.connections: set[Any] = set()
        self.closed = 0
        self.waiters: list[Deferred[None]] = []

    def whenClosed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.connections:
            self.waiters.append(d)
        else:
            d.callback(None)
        return d


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


def http_body(response: bytes) -> bytes:
    """The body of the byte server's HTTP/1.0 answer (checks its Content-Length)."""
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


class EchoUDP(DatagramProtocol):
    """Sends every datagram back where it came from."""

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.transport.write(b"echo:" + data, addr)


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


class StreamCollector(Protocol):
    """Collects bytes; ``waitFor(n)`` fires once n bytes are in, ``lost`` at the close."""

    def __init__(self):
        self.data = b""
        self.lost: Deferred[None] = Deferred()
        self._waiter = None

    def dataReceived(self, data):
        self.data += data
        if self._waiter is not None and len(self.data) >= self._waiter[1]:
            waiter, self._waiter = self._waiter[0], None
            waiter.callback(self.data)

    def waitFor(self, count):
        d = Deferred()
        if len(self.data) >= count:
            d.callback(self.data)
        else:
            self._waiter = (d, count)
        return d

    def connectionLost(self, reason=None):
        self.lost.callback(None)


def self_signed_certificate(hostname: str) -> tuple[bytes, bytes]:
    """A fresh EC key and a self-signed certificate for ``hostname`` and 127.0.0.1, both PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


class IntegrationTestCase(TestCase):
    """Starts servers on 127.0.0.1 and tears them all down, leaving the reactor clean."""

    def captureLogs(self) -> list[str]:
        """Every log event from now to the end of the test, formatted as text."""
        from twisted.logger import formatEvent, globalLogPublisher

        lines: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return lines

    def startSOCKS(self, **config: Any) -> tuple[int, Any]:
        """Listen with a SOCKS server built from ``Config.build(**config)``; returns (port, factory)."""
        config.setdefault("listen", ["tcp:0:interface=127.0.0.1"])
        factory = makeServerFactory(Config.build(**config), reactor)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self._stopSOCKS, port, factory)
        return port.getHost().port, factory

    @inlineCallbacks
    def _stopSOCKS(self, port: Any, factory: Any) -> Any:
        yield port.stopListening()
        factory.context.closeSessions()
        yield factory.context.whenDrained()

    def listen(self, factory: Any, interface: str = "127.0.0.1") -> int:
        port = reactor.listenTCP(0, factory, interface=interface)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def listenUDP(self, protocol: DatagramProtocol, interface: str = "127.0.0.1") -> int:
        port = reactor.listenUDP(0, protocol, interface=interface)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def byteServer(self, body: bytes, interface: str = "127.0.0.1") -> tuple[int, ByteServerFactory]:
        factory = ByteServerFactory(body)
        port = self.listen(factory, interface)
        self.addCleanup(factory.whenClosed)
        return port, factory

    def connectScripted(self, socks_port: int, request: Request) -> Deferred[ScriptedClient]:
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        client = ScriptedClient(request)
        d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port), client)

        def cleanup() -> Deferred[Any]:
            if client.transport is not None and client.transport.connected:
                client.transport.loseConnection()
            return client.lost

        self.addCleanup(cleanup)
        return d


def wait_all(*deferreds: Deferred[Any]) -> Deferred[Any]:
    return DeferredList(list(deferreds), fireOnOneErrback=True, consumeErrors=True)


def destination(host: str, port: int) -> Address:
    return Address.of(host, port)
