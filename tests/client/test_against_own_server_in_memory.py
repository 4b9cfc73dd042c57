"""
The client handshake against this project's own server, in memory: both
protocols joined by `twisted.test.iosim` (no sockets, no reactor turns), the
server's outgoing connection completed by hand on a MemoryReactorClock.
What is checked is the conversation between the two sides: methods,
credentials, reply codes as the client's exceptions, the tunnel's bytes.
The same behaviours over real sockets are in test_against_own_server.py.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError as TwistedConnectionRefused
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.fakes import FakeResolver
from txsocksgss.auth.none import NoAuthClientFactory, NoAuthServerFactory
from txsocksgss.auth.userpass import SOCKSUserRealm, UserPassClientFactory, UserPassServerFactory
from txsocksgss.client.protocol import SOCKS5ClientProtocol
from txsocksgss.errors import ClientAuthenticationFailed, ConnectionNotAllowed, ConnectionRefused, NoAcceptableMethod
from txsocksgss.server.context import ServerContext
from txsocksgss.server.protocol import SOCKSServerFactory
from txsocksgss.server.rules import ALLOW_ALL, rules_from_table
from txsocksgss.wire.socks5 import Address, Command, Request


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class _Application(Protocol):
    """The caller's protocol once the tunnel is up: keeps what it receives."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def _users() -> Portal:
    return Portal(SOCKSUserRealm(), [InMemoryUsernamePasswordDatabaseDontUse(alice=b"s3cret")])


class InMemoryPair:
    """A client handshake protocol and a server protocol joined in memory."""

    def __init__(self, server_methods: Any, client_methods: Any, destination: Address = Address.of("192.0.2.1", 80),
                 policy: Any = ALLOW_ALL) -> None:
        self.reactor = MemoryReactorClock()
        self.context = ServerContext(reactor=self.reactor, resolver=FakeResolver({}),
                                     authenticators=tuple(server_methods), policy=policy)
        self.server = SOCKSServerFactory(self.context).buildProtocol(None)
        self.client = SOCKS5ClientProtocol(Request(Command.CONNECT, destination), client_methods,
                                           Factory.forProtocol(_Application))
        self.established: list[Any] = []
        self.client.established.addBoth(self.established.append)
        self.pump = iosim.connect(
            self.server, iosim.FakeTransport(self.server, True, IPv4Address("TCP", "127.0.0.1", 1080),
                                             IPv4Address("TCP", "127.0.0.1", 40000)),
            self.client, iosim.FakeTransport(self.client, False, IPv4Address("TCP", "127.0.0.1", 40000),
                                             IPv4Address("TCP", "127.0.0.1", 1080)))
        self.upstream_pump: iosim.IOPump | None = None

    def outgoing(self) -> tuple[str, int, Any]:
        """The server's one outgoing connection attempt: (host, port, factory)."""
        [(host, port, factory, _timeout, _bind)] = self.reactor.tcpClients
        return host, port, factory

    def acceptUpstream(self) -> None:
        """Complete the outgoing connection to an echo server, in memory too."""
        _host, _port, factory = self.outgoing()
        upstream = factory.buildProtocol(None)
        echo = _Echo()
        self.upstream_pump = iosim.connect(
            echo, iosim.FakeTransport(echo, True, IPv4Address("TCP", "192.0.2.1", 80),
                                      IPv4Address("TCP", "198.51.100.1", 5000)),
            upstream, iosim.FakeTransport(upstream, False, IPv4Address("TCP", "198.51.100.1", 5000),
                                          IPv4Address("TCP", "192.0.2.1", 80)))
        self.flush()

    def flush(self) -> None:
        for _ in range(10):
            moved = self.pump.pump()
            if self.upstream_pump is not None:
                moved = self.upstream_pump.pump() or moved
            if not moved:
                return

    def failure(self) -> Failure:
        [result] = self.established
        assert isinstance(result, Failure), result
        return result


class InMemoryHandshakeTests(SynchronousTestCase):
    def test_username_and_password_then_a_tunnel_both_ways(self) -> None:
        pair = InMemoryPair([UserPassServerFactory(_users())], [UserPassClientFactory("alice", "s3cret")])
        pair.flush()
        self.assertEqual(pair.outgoing()[:2], ("192.0.2.1", 80))
        pair.acceptUpstream()
        [connection] = pair.established
        self.assertEqual(connection.identity.user, "alice")
        self.assertEqual((connection.bound.host, connection.bound.port), ("198.51.100.1", 5000))
        connection.protocol.transport.write(b"hello through the tunnel")
        pair.flush()
        self.assertEqual(connection.protocol.received, b"hello through the tunnel")
        self.assertEqual(pair.server.record.user, "alice")
        self.assertEqual(pair.server.record.method, "userpass")

    def test_a_wrong_password_is_the_clients_authentication_error(self) -> None:
        pair = InMemoryPair([UserPassServerFactory(_users())], [UserPassClientFactory("alice", "wrong")])
        pair.flush()
        pair.failure().trap(ClientAuthenticationFailed)
        self.assertEqual(pair.reactor.tcpClients, [])
        self.assertTrue(pair.server.record.outcome.startswith("authentication failed: "), pair.server.record.outcome)

    def test_no_common_method(self) -> None:
        pair = InMemoryPair([UserPassServerFactory(_users())], [NoAuthClientFactory()])
        pair.flush()
        pair.failure().trap(NoAcceptableMethod)
        self.assertEqual(pair.server.record.outcome, "no acceptable method (client offered 0x00)")

    def test_a_refused_destination_is_the_clients_connection_refused(self) -> None:
        pair = InMemoryPair([NoAuthServerFactory()], [NoAuthClientFactory()])
        pair.flush()
        _host, _port, factory = pair.outgoing()
        factory.clientConnectionFailed(None, Failure(TwistedConnectionRefused()))
        pair.flush()
        pair.failure().trap(ConnectionRefused)
        self.assertTrue(pair.server.record.outcome.startswith("connection refused: "), pair.server.record.outcome)

    def test_a_rule_denial_is_the_clients_not_allowed(self) -> None:
        rules = rules_from_table({"default": "allow", "rule": [{"action": "deny", "name": "no-docs",
                                                                "to": ["192.0.2.0/24"]}]})
        pair = InMemoryPair([NoAuthServerFactory()], [NoAuthClientFactory()], policy=rules)
        pair.flush()
        pair.failure().trap(ConnectionNotAllowed)
        self.assertEqual(pair.reactor.tcpClients, [])
        self.assertIn("no-docs", pair.server.record.outcome)
