"""
Our client endpoints against Dante's ``danted`` 1.4.2 (Debian dante-server)
on 127.0.0.1: SOCKS 5 CONNECT with method none and with username/password
(a system account, see `tests.interop.peers.ensureTestUser`), a bad
password, a ``socks block`` rule, BIND, UDP ASSOCIATE, and SOCKS 4 / 4a
CONNECT.  Bodies fetched through the proxy are compared byte for byte.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from tests.helpers.clients import DatagramCollector, Fetcher, StreamCollector
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.servers import EchoUDP, http_body
from tests.interop.peers import TEST_PASSWORD, TEST_USER, ensureTestUser, startDante, startDanteProcess
from txsocksgss.auth.userpass import UserPassClientFactory
from txsocksgss.client.bind import bindThroughProxy
from txsocksgss.client.endpoints import SOCKS4ClientEndpoint, SOCKS5ClientEndpoint
from txsocksgss.client.udp import associateUDP
from txsocksgss.errors import (
    ClientAuthenticationFailed,
    ConnectionNotAllowed,
    NoAcceptableMethod,
    SOCKS4Rejected,
)
from txsocksgss.wire.socks5 import AuthMethod

pytestmark = pytest.mark.interop


class Greeter(Protocol):
    """The inbound side of a BIND: says hello, then collects what the peer sends."""

    def __init__(self) -> None:
        self.collector = StreamCollector()

    def connectionMade(self) -> None:
        self.transport.write(b"hello from behind the proxy")

    def dataReceived(self, data: bytes) -> None:
        self.collector.dataReceived(data)

    def connectionLost(self, reason=None) -> None:
        self.collector.connectionLost(reason)


def proxy_endpoint(port: int) -> TCP4ClientEndpoint:
    return TCP4ClientEndpoint(reactor, "127.0.0.1", port)


class DanteSOCKS5ConnectTests(IntegrationTestCase):
    @inlineCallbacks
    def test_connect_without_authentication_fetches_exact_bytes(self):
        body = os.urandom(500_000)
        web_port, web = self.byteServer(body)
        dante_port = yield startDante(self, methods=("none",))
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(dante_port), "127.0.0.1", web_port)
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        # external: 127.0.0.1, so Dante connects from there.
        self.assertEqual(connection.bound.host, "127.0.0.1")
        self.assertNotEqual(connection.bound.port, 0)
        self.assertEqual(connection.identity.method, AuthMethod.NONE)
        response = yield connection.protocol.done
        self.assertEqual(http_body(response), body)
        self.assertEqual(web.closed, 1)

    @inlineCallbacks
    def test_connect_by_name_resolved_by_dante(self):
        web_port, _web = self.byteServer(b"resolved by dante")
        dante_port = yield startDante(self)
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(dante_port), "localhost", web_port)
        protocol = yield endpoint.connect(Factory.forProtocol(Fetcher))
        response = yield protocol.done
        self.assertEqual(http_body(response), b"resolved by dante")

    @inlineCallbacks
    def test_connect_with_username_and_password(self):
        yield ensureTestUser()
        body = os.urandom(100_000)
        web_port, _web = self.byteServer(body)
        dante_port = yield startDante(self, methods=("username",))
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(dante_port), "127.0.0.1", web_port,
                                        [UserPassClientFactory(TEST_USER, TEST_PASSWORD)])
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.method, AuthMethod.USERPASS)
        self.assertEqual(connection.identity.user, TEST_USER)
        response = yield connection.protocol.done
        self.assertEqual(http_body(response), body)

    @inlineCallbacks
    def test_bad_password_fails_with_authentication_error(self):
        yield ensureTestUser()
        web_port, web = self.byteServer(b"nothing for you")
        dante_port = yield startDante(self, methods=("username",))
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(dante_port), "127.0.0.1", web_port,
                                        [UserPassClientFactory(TEST_USER, "not-" + TEST_PASSWORD)])
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)
        self.assertEqual(web.closed, 0)

    @inlineCallbacks
    def test_unknown_user_fails_with_authentication_error(self):
        dante_port = yield startDante(self, methods=("username",))
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(dante_port), "127.0.0.1", 9,
                                        [UserPassClientFactory("no-such-user-here", "whatever")])
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)

    @inlineCallbacks
    def test_no_credentials_when_username_required(self):
        dante_port = yield startDante(self, methods=("username",))
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(dante_port), "127.0.0.1", 9)
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), NoAcceptableMethod)

    @inlineCallbacks
    def test_blocked_destination_is_not_allowed(self):
        blocked_port, blocked = self.byteServer(b"forbidden")
        open_port, _open = self.byteServer(b"allowed")
        dante = yield startDanteProcess(self, blocked_ports=[blocked_port])
        dante_port = dante.port
        denied = SOCKS5ClientEndpoint(proxy_endpoint(dante_port), "127.0.0.1", blocked_port)
        error = yield self.assertFailure(denied.connect(Factory.forProtocol(Fetcher)), ConnectionNotAllowed)
        self.assertEqual(error.code, 2)
        # Socks-rule #1 is the block rule for that port.
        yield dante.waitForOutput(rb"block\(1\): tcp/connect .*127\.0\.0\.1\.%d" % blocked_port)
        self.assertEqual(blocked.closed, 0)
        # The block is for that port only: the same proxy still connects elsewhere.
        allowed = SOCKS5ClientEndpoint(proxy_endpoint(dante_port), "127.0.0.1", open_port)
        protocol = yield allowed.connect(Factory.forProtocol(Fetcher))
        response = yield protocol.done
        self.assertEqual(http_body(response), b"allowed")


class DanteBindTests(IntegrationTestCase):
    @inlineCallbacks
    def test_bind_accepts_one_connection_with_data_both_ways(self):
        dante_port = yield startDante(self)
        greeters: list[Greeter] = []

        def greeter() -> Greeter:
            greeters.append(Greeter())
            return greeters[-1]

        factory = Factory.forProtocol(greeter)
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(dante_port), "127.0.0.1", 0)
        pending = yield bindThroughProxy(endpoint, factory)
        # First reply: where Dante listens, on its external address.
        self.assertEqual(pending.address.host, "127.0.0.1")
        self.assertNotEqual(pending.address.port, 0)
        self.assertNotEqual(pending.address.port, dante_port)

        peer = StreamCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", pending.address.port), peer)
        connection = yield pending.accepted
        # Second reply: the address of the host that connected.
        self.assertEqual((connection.bound.host, connection.bound.port),
                         ("127.0.0.1", peer.transport.getHost().port))
        inbound = connection.protocol
        self.assertIs(inbound, greeters[0])

        hello = b"hello from behind the proxy"
        data = yield peer.waitFor(len(hello))
        self.assertEqual(data, hello)
        payload = os.urandom(64_000)
        peer.transport.write(payload)
        received = yield inbound.collector.waitFor(len(payload))
        self.assertEqual(received, payload)

        peer.transport.loseConnection()
        yield inbound.collector.lost
        yield peer.lost


class DanteUDPTests(IntegrationTestCase):
    @inlineCallbacks
    def test_udp_association_echoes_by_address_and_by_name(self):
        echo_port = self.listenUDP(EchoUDP())
        dante = yield startDanteProcess(self)
        collector = DatagramCollector(ignore_unexpected=True)
        association = yield associateUDP(SOCKS5ClientEndpoint(proxy_endpoint(dante.port), "0.0.0.0", 0),
                                         collector)
        self.addCleanup(association.close)
        self.assertEqual(association.relay[0], "127.0.0.1")
        self.assertNotEqual(association.relay[1], dante.port)
        # Dante logs the association with the relay address it answered.
        yield dante.waitForOutput(rb"pass\(\d+\): udp/udpassociate \[: .*127\.0\.0\.1\.%d"
                                  % association.relay[1])

        answer = collector.next()
        association.write(b"hello", ("127.0.0.1", echo_port))
        data, addr = yield answer
        self.assertEqual((data, addr), (b"echo:hello", ("127.0.0.1", echo_port)))

        answer = collector.next()
        association.write(b"by name", ("localhost", echo_port))
        data, addr = yield answer
        self.assertEqual((data, addr), (b"echo:by name", ("127.0.0.1", echo_port)))

        yield association.close()
        self.assertTrue(collector.stopped)
        self.assertEqual(association.dropped, 0)


class DanteSOCKS4Tests(IntegrationTestCase):
    @inlineCallbacks
    def test_socks4_connect_by_address(self):
        body = os.urandom(200_000)
        web_port, _web = self.byteServer(body)
        dante_port = yield startDante(self)
        endpoint = SOCKS4ClientEndpoint(proxy_endpoint(dante_port), "127.0.0.1", web_port, userid="tester")
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.user, "tester")
        response = yield connection.protocol.done
        self.assertEqual(http_body(response), body)

    @inlineCallbacks
    def test_socks4a_by_name_is_rejected_because_dante_has_no_4a(self):
        """
        Dante 1.4.2 does not implement SOCKS 4a: it takes the marker address
        0.0.0.1 of a 4a request literally, its connect(2) to 0.0.0.1 fails
        with EINVAL, and it answers CD 91.  Our 4a request is well formed
        (our own server and curl's --socks4a agree on it); the destination
        never sees a connection.
        """
        web_port, web = self.byteServer(b"never fetched")
        dante = yield startDanteProcess(self)
        endpoint = SOCKS4ClientEndpoint(proxy_endpoint(dante.port), "localhost", web_port, userid="tester")
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), SOCKS4Rejected)
        self.assertEqual(error.code, 91)
        yield dante.waitForOutput(rb"connect\(2\) to 0\.0\.0\.1\.%d .*failed: Invalid argument" % web_port)
        self.assertEqual(web.closed, 0)

    @inlineCallbacks
    def test_socks4_bind_accepts_one_connection(self):
        dante_port = yield startDante(self)
        endpoint = SOCKS4ClientEndpoint(proxy_endpoint(dante_port), "127.0.0.1", 0, userid="tester")
        greeters: list[Greeter] = []

        def greeter() -> Greeter:
            greeters.append(Greeter())
            return greeters[-1]

        pending = yield bindThroughProxy(endpoint, Factory.forProtocol(greeter))
        self.assertEqual(pending.address.host, "127.0.0.1")
        self.assertNotEqual(pending.address.port, 0)
        peer = StreamCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", pending.address.port), peer)
        connection = yield pending.accepted
        self.assertIs(connection.protocol, greeters[0])
        hello = b"hello from behind the proxy"
        data = yield peer.waitFor(len(hello))
        self.assertEqual(data, hello)
        peer.transport.write(b"and back")
        received = yield greeters[0].collector.waitFor(8)
        self.assertEqual(received, b"and back")
        peer.transport.loseConnection()
        yield greeters[0].collector.lost
        yield peer.lost

    @inlineCallbacks
    def test_socks4_blocked_destination_is_rejected(self):
        blocked_port, blocked = self.byteServer(b"forbidden")
        dante_port = yield startDante(self, blocked_ports=[blocked_port])
        endpoint = SOCKS4ClientEndpoint(proxy_endpoint(dante_port), "127.0.0.1", blocked_port, userid="tester")
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), SOCKS4Rejected)
        self.assertEqual(error.code, 91)
        self.assertEqual(blocked.closed, 0)
