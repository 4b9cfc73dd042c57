"""
The client endpoints against this project's own server on 127.0.0.1:
CONNECT (IPv4, IPv6, name), username/password, BIND, UDP ASSOCIATE, a chain
of two proxies, reply codes as exceptions, cancellation.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.error import TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from tests.helpers.clients import DatagramCollector, Fetcher, StreamCollector
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.servers import EchoFactory, EchoUDP
from txsocksgss.auth.passwordfile import set_password
from txsocksgss.auth.userpass import UserPassClientFactory
from txsocksgss.client.bind import bindThroughProxy
from txsocksgss.client.endpoints import SOCKS5ClientEndpoint
from txsocksgss.client.udp import associateUDP
from txsocksgss.errors import ClientAuthenticationFailed, ConnectionNotAllowed, ConnectionRefused, NoAcceptableMethod
from txsocksgss.server.rules import rules_from_table


def proxy_endpoint(port: int) -> TCP4ClientEndpoint:
    return TCP4ClientEndpoint(reactor, "127.0.0.1", port)


class ConnectTests(IntegrationTestCase):
    @inlineCallbacks
    def test_connect_fetches_exact_bytes(self):
        body = os.urandom(100_000)
        web_port, _ = self.byteServer(body)
        socks_port, _ = self.startSOCKS()
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "127.0.0.1", web_port)
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.bound.host, "127.0.0.1")
        self.assertNotEqual(connection.bound.port, 0)
        data = yield connection.protocol.done
        self.assertTrue(data.endswith(body))

    @inlineCallbacks
    def test_connect_by_name_with_password(self):
        path = self.mktemp()
        set_password(path, "bob", b"hunter2", n=2**10)
        web_port, _ = self.byteServer(b"named")
        socks_port, _ = self.startSOCKS(methods=["userpass"], passwd=path)
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "localhost", web_port,
                                        [UserPassClientFactory("bob", "hunter2")])
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.user, "bob")
        data = yield connection.protocol.done
        self.assertTrue(data.endswith(b"named"))

    @inlineCallbacks
    def test_bad_password_fails_with_authentication_error(self):
        path = self.mktemp()
        set_password(path, "bob", b"hunter2", n=2**10)
        socks_port, _ = self.startSOCKS(methods=["userpass"], passwd=path)
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "127.0.0.1", 9,
                                        [UserPassClientFactory("bob", "wrong")])
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)

    @inlineCallbacks
    def test_no_acceptable_method(self):
        path = self.mktemp()
        set_password(path, "bob", b"hunter2", n=2**10)
        socks_port, _ = self.startSOCKS(methods=["userpass"], passwd=path)
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "127.0.0.1", 9)
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), NoAcceptableMethod)

    @inlineCallbacks
    def test_refused_and_denied_raise_their_exceptions(self):
        rules = rules_from_table({"rule": [{"action": "deny", "ports": [7]}], "default": "allow"})
        socks_port, _ = self.startSOCKS(rules=rules)
        denied = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "127.0.0.1", 7)
        error = yield self.assertFailure(denied.connect(Factory.forProtocol(Fetcher)), ConnectionNotAllowed)
        self.assertEqual(error.code, 2)
        refused = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "127.0.0.1", 1)
        error = yield self.assertFailure(refused.connect(Factory.forProtocol(Fetcher)), ConnectionRefused)
        self.assertEqual(error.code, 5)

    @inlineCallbacks
    def test_chain_of_two_proxies(self):
        web_port, _ = self.byteServer(b"twice proxied")
        first_port, first = self.startSOCKS()
        second_port, second = self.startSOCKS()
        to_second = SOCKS5ClientEndpoint(proxy_endpoint(first_port), "127.0.0.1", second_port)
        endpoint = SOCKS5ClientEndpoint(to_second, "127.0.0.1", web_port)
        protocol = yield endpoint.connect(Factory.forProtocol(Fetcher))
        data = yield protocol.done
        self.assertTrue(data.endswith(b"twice proxied"))

    @inlineCallbacks
    def test_cancel_during_handshake_closes_the_connection(self):
        accepted: Deferred = Deferred()
        closed: Deferred = Deferred()

        class SilentProxy(Protocol):
            """Reads the greeting, never answers."""

            def dataReceived(self, data):
                if not accepted.called:
                    accepted.callback(data)

            def connectionLost(self, reason=None):
                closed.callback(None)

        port = self.listen(Factory.forProtocol(SilentProxy))
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(port), "127.0.0.1", 9)
        d = endpoint.connect(Factory.forProtocol(Fetcher))
        yield accepted
        d.cancel()
        yield self.assertFailure(d, CancelledError)
        yield closed  # the proxy saw the connection go away

    @inlineCallbacks
    def test_handshake_timeout(self):
        from twisted.internet.task import Clock

        clock = Clock()
        accepted: Deferred = Deferred()

        class SilentProxy(Protocol):
            def dataReceived(self, data):
                if not accepted.called:
                    accepted.callback(data)

        port = self.listen(Factory.forProtocol(SilentProxy))
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(port), "127.0.0.1", 9, timeout=5, clock=clock)
        d = endpoint.connect(Factory.forProtocol(Fetcher))
        yield accepted
        clock.advance(5)
        error = yield self.assertFailure(d, TimeoutError)
        self.assertIn("method selection", str(error))


class BindTests(IntegrationTestCase):
    @inlineCallbacks
    def test_bind_first_and_second_reply(self):
        socks_port, _ = self.startSOCKS()
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "127.0.0.1", 0)
        pending = yield bindThroughProxy(endpoint, EchoFactory())
        self.assertEqual(pending.address.host, "127.0.0.1")
        peer = StreamCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", pending.address.port), peer)
        connection = yield pending.accepted
        self.assertEqual(connection.bound.port, peer.transport.getHost().port)
        peer.transport.write(b"echo me")
        data = yield peer.waitFor(7)
        self.assertEqual(data, b"echo me")
        peer.transport.loseConnection()
        yield peer.lost


class UDPTests(IntegrationTestCase):
    @inlineCallbacks
    def test_udp_association_echo(self):
        echo_port = self.listenUDP(EchoUDP())
        socks_port, _ = self.startSOCKS()
        collector = DatagramCollector()
        association = yield associateUDP(SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "0.0.0.0", 0),
                                         collector)
        answer = collector.next()
        association.write(b"hello", ("127.0.0.1", echo_port))
        data, addr = yield answer
        self.assertEqual((data, addr), (b"echo:hello", ("127.0.0.1", echo_port)))
        answer = collector.next()
        association.write(b"by name", ("localhost", echo_port))
        data, _ = yield answer
        self.assertEqual(data, b"echo:by name")
        yield association.close()
        self.assertTrue(collector.stopped)
