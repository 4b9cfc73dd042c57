"""
The server protocol on fakes: `ServerHarness` (one session on a
StringTransport with a MemoryReactorClock), the request bytes the unit
tests send, and a UDP association on fakes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from tests.helpers.fakes import FakeResolver, FakeUDPPort, HalfCloseableStringTransport, UDPMemoryReactor
from txsocksgss.auth.none import NoAuthServerFactory
from txsocksgss.server.protocol import ServerContext, SOCKSServerFactory
from txsocksgss.server.rules import ALLOW_ALL
from txsocksgss.wire.reader import MessageBuffer
from txsocksgss.wire.socks4 import SOCKS4Command, SOCKS4Request
from txsocksgss.wire.socks5 import Address, Command, Request, parse_reply

__all__ = ["ServerHarness", "connect_request", "socks4_harness", "socks4_request", "udp_session"]


def connect_request(host: str, port: int = 80) -> bytes:
    """A SOCKS 5 CONNECT request to ``host``:``port`` (RFC 1928 section 4)."""
    return Request(Command.CONNECT, Address.of(host, port)).serialize()


def socks4_request(host: str = "192.0.2.1", port: int = 80, userid: bytes = b"alice",
                   command: SOCKS4Command = SOCKS4Command.CONNECT) -> bytes:
    """A SOCKS 4 request to an address, or a SOCKS 4a one (DSTIP 0.0.0.1 and the name) to a name."""
    if host[0].isdigit():
        return SOCKS4Request(command, port, host, userid).serialize()
    return SOCKS4Request(command, port, "0.0.0.1", userid, host).serialize()


class ServerHarness:
    """A server protocol on a StringTransport, with a MemoryReactorClock and a `FakeResolver`."""

    def __init__(self, authenticators: Any = None, policy: Any = ALLOW_ALL, names: dict[str, list[str]] | None = None,
                 negotiation_timeout: float = 30.0, idle_timeout: float = 3600.0) -> None:
        self.reactor = MemoryReactorClock()
        self.resolver = FakeResolver(names)
        self.context = ServerContext(
            reactor=self.reactor,
            resolver=self.resolver,
            authenticators=tuple(authenticators or (NoAuthServerFactory(),)),
            policy=policy,
            negotiation_timeout=negotiation_timeout,
            idle_timeout=idle_timeout,
        )
        self.protocol = SOCKSServerFactory(self.context).buildProtocol(None)
        self.transport = HalfCloseableStringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 1080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
        )
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def take(self) -> bytes:
        """What the server wrote since the last call."""
        value = self.transport.value()
        self.transport.clear()
        return value

    def replies(self, data: bytes) -> list[Any]:
        """The SOCKS 5 replies in ``data``, in order."""
        buffer = MessageBuffer()
        buffer.feed(data)
        out = []
        while True:
            reply = buffer.next(parse_reply)
            if reply is None:
                return out
            out.append(reply)

    def complete_connect(self, index: int = -1) -> tuple[Any, HalfCloseableStringTransport]:
        """Let the pending outgoing connection succeed; return its protocol and transport."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(None)
        upstream = HalfCloseableStringTransport(
            hostAddress=IPv4Address("TCP", "192.0.2.7", 5555),
            peerAddress=IPv4Address("TCP", host, port),
        )
        protocol.makeConnection(upstream)
        return protocol, upstream

    def fail_connect(self, exception: Exception, index: int = -1) -> None:
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients[index]
        factory.clientConnectionFailed(None, Failure(exception))


def socks4_harness(**kwargs: Any) -> ServerHarness:
    """A `ServerHarness` whose server also accepts SOCKS 4 and 4a."""
    harness = ServerHarness(**kwargs)
    harness.context.socks4 = True
    return harness


def udp_session(resolver: Any = None, guard: Any = None) -> tuple[ServerContext, Any, FakeUDPPort, tuple[str, int]]:
    """A UDP association on fakes: (context, protocol, client port, client address)."""
    reactor_ = UDPMemoryReactor()
    context = ServerContext(reactor=reactor_, resolver=resolver or FakeResolver(), guard=guard,
                            authenticators=(NoAuthServerFactory(),), policy=ALLOW_ALL)
    protocol = SOCKSServerFactory(context).buildProtocol(None)
    transport = HalfCloseableStringTransport(hostAddress=IPv4Address("TCP", "192.0.2.1", 1080),
                                             peerAddress=IPv4Address("TCP", "192.0.2.10", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(b"\x05\x01\x00" + Request(Command.UDP_ASSOCIATE, Address.of("0.0.0.0", 0)).serialize())
    reactor_.advance(0)  # the association opens its sockets on the next reactor turn
    [client_side] = [port for port in reactor_.udpPorts if port.interface == "192.0.2.1"]
    return context, protocol, client_side, ("192.0.2.10", 7000)
