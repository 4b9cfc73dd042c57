"""
Our SOCKS5ClientEndpoint against microsocks (Debian's 1.0.3) on 127.0.0.1:
CONNECT to an IPv4 address and to a name microsocks resolves, with no
authentication and with username/password, a bad password, no acceptable
method, the reply codes microsocks sends for a refused connection and for
BIND / UDP ASSOCIATE (it implements CONNECT only), and chains of proxies:
our client through our own server to microsocks, and through microsocks to
our own server.  Bodies are compared byte for byte.

microsocks prints one line per CONNECT on stderr, ``client[N] 127.0.0.1:
connected to HOST:PORT``, which the tests use as evidence that a chain went
through it.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from zope.interface import implementer

from tests.helpers.clients import Fetcher
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.servers import http_body
from tests.interop.peers import startMicrosocks, startMicrosocksProcess
from txsocksgss.auth.passwordfile import set_password
from txsocksgss.auth.userpass import UserPassClientFactory
from txsocksgss.client.bind import bindThroughProxy
from txsocksgss.client.endpoints import SOCKS5ClientEndpoint
from txsocksgss.client.udp import associateUDP
from txsocksgss.errors import (
    ClientAuthenticationFailed,
    CommandNotSupported,
    ConnectionRefused,
    NoAcceptableMethod,
)
from txsocksgss.wire.socks5 import AuthMethod

pytestmark = pytest.mark.interop

USER = "alice"
PASSWORD = "correct horse battery staple"


def proxy_endpoint(port: int) -> TCP4ClientEndpoint:
    return TCP4ClientEndpoint(reactor, "127.0.0.1", port)


class MicrosocksConnectTests(IntegrationTestCase):
    @inlineCallbacks
    def test_connect_to_ipv4_address_without_authentication(self):
        body = os.urandom(1_000_000)
        web_port, web = self.byteServer(body)
        socks_port = yield startMicrosocks(self)
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "127.0.0.1", web_port)
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.method, AuthMethod.NONE)
        # microsocks 1.0.3 always answers BND.ADDR 0.0.0.0, BND.PORT 0.
        self.assertEqual((connection.bound.host, connection.bound.port), ("0.0.0.0", 0))
        response = yield connection.protocol.done
        self.assertEqual(http_body(response), body)
        self.assertEqual(web.closed, 1)

    @inlineCallbacks
    def test_connect_to_name_resolved_by_microsocks(self):
        web_port, _web = self.byteServer(b"resolved by microsocks")
        microsocks = yield startMicrosocksProcess(self)
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(microsocks.port), "localhost", web_port)
        protocol = yield endpoint.connect(Factory.forProtocol(Fetcher))
        response = yield protocol.done
        self.assertEqual(http_body(response), b"resolved by microsocks")
        yield microsocks.waitForOutput(rb"connected to localhost:%d" % web_port)

    @inlineCallbacks
    def test_connect_with_username_and_password(self):
        body = os.urandom(100_000)
        web_port, _web = self.byteServer(body)
        socks_port = yield startMicrosocks(self, user=USER, password=PASSWORD)
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "127.0.0.1", web_port,
                                        [UserPassClientFactory(USER, PASSWORD)])
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.method, AuthMethod.USERPASS)
        self.assertEqual(connection.identity.user, USER)
        response = yield connection.protocol.done
        self.assertEqual(http_body(response), body)

    @inlineCallbacks
    def test_connect_by_name_with_username_and_password(self):
        web_port, _web = self.byteServer(b"named, with a password")
        socks_port = yield startMicrosocks(self, user=USER, password=PASSWORD)
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "localhost", web_port,
                                        [UserPassClientFactory(USER, PASSWORD)])
        protocol = yield endpoint.connect(Factory.forProtocol(Fetcher))
        response = yield protocol.done
        self.assertEqual(http_body(response), b"named, with a password")

    @inlineCallbacks
    def test_bad_password_fails_with_authentication_error(self):
        web_port, web = self.byteServer(b"nothing for you")
        socks_port = yield startMicrosocks(self, user=USER, password=PASSWORD)
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "127.0.0.1", web_port,
                                        [UserPassClientFactory(USER, "wrong")])
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)),
                                         ClientAuthenticationFailed)
        # microsocks answers RFC 1929 STATUS 02 on a bad password.
        self.assertIn("status 0x02", str(error))
        self.assertEqual(web.closed, 0)

    @inlineCallbacks
    def test_no_credentials_when_a_password_is_required(self):
        socks_port = yield startMicrosocks(self, user=USER, password=PASSWORD)
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "127.0.0.1", 9)
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), NoAcceptableMethod)

    @inlineCallbacks
    def test_refused_destination(self):
        # A port of 127.0.0.1 that was just given back: nothing listens there.
        listener = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        closed_port = listener.getHost().port
        yield listener.stopListening()
        socks_port = yield startMicrosocks(self)
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "127.0.0.1", closed_port)
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ConnectionRefused)
        self.assertEqual(error.code, 5)


@implementer(IStreamClientEndpoint)
class RecordingEndpoint:
    """Wraps an endpoint and keeps the protocols it connected (here: the SOCKS handshake)."""

    def __init__(self, wrapped) -> None:
        self.wrapped = wrapped
        self.protocols: list = []

    def connect(self, factory):
        def record(protocol):
            self.protocols.append(protocol)
            return protocol

        return self.wrapped.connect(factory).addCallback(record)


class MicrosocksUnsupportedCommandTests(IntegrationTestCase):
    @inlineCallbacks
    def refusedBind(self):
        """BIND through microsocks; fires with (the error, the handshake protocol) once closed."""
        socks_port = yield startMicrosocks(self)
        proxy = RecordingEndpoint(proxy_endpoint(socks_port))
        endpoint = SOCKS5ClientEndpoint(proxy, "127.0.0.1", 0)
        error = yield self.assertFailure(bindThroughProxy(endpoint, Factory.forProtocol(Protocol)),
                                         CommandNotSupported)
        handshake = proxy.protocols[0]
        yield handshake.controlLost
        return error, handshake

    @inlineCallbacks
    def test_bind_is_not_supported(self):
        error, handshake = yield self.refusedBind()
        self.assertEqual(error.code, 7)
        # Consume what test_refused_bind_leaves_no_unconsumed_failure
        # checks for, so that it cannot surface in another test.
        handshake.established.addErrback(lambda _: None)

    @inlineCallbacks
    def test_refused_bind_leaves_no_unconsumed_failure(self):
        """
        The handshake's `established` must not keep the error of a BIND
        refused in its first reply as an unconsumed failure: Twisted logs it
        as "Unhandled error in Deferred" when it is garbage collected, and
        trial pins that on whichever test runs then.  Adding an errback is
        the public way to look (and consumes it, so nothing leaks).
        """
        _error, handshake = yield self.refusedBind()
        leftover: list = []
        handshake.established.addErrback(leftover.append)
        self.assertEqual(
            [str(failure.value) for failure in leftover], [],
            "a BIND refused in its first reply leaves the error unconsumed in "
            "the handshake's `established` Deferred (txsocksgss/client/bind.py)")

    @inlineCallbacks
    def test_udp_associate_is_not_supported(self):
        socks_port = yield startMicrosocks(self)
        endpoint = SOCKS5ClientEndpoint(proxy_endpoint(socks_port), "0.0.0.0", 0)
        error = yield self.assertFailure(associateUDP(endpoint, DatagramProtocol()), CommandNotSupported)
        self.assertEqual(error.code, 7)


class ChainTests(IntegrationTestCase):
    @inlineCallbacks
    def test_our_server_then_microsocks(self):
        """client -> our server -> microsocks -> byte server."""
        body = os.urandom(300_000)
        web_port, _web = self.byteServer(body)
        microsocks = yield startMicrosocksProcess(self, user=USER, password=PASSWORD)
        ours, factory = self.startSOCKS()
        to_microsocks = SOCKS5ClientEndpoint(proxy_endpoint(ours), "127.0.0.1", microsocks.port)
        endpoint = SOCKS5ClientEndpoint(to_microsocks, "127.0.0.1", web_port,
                                        [UserPassClientFactory(USER, PASSWORD)])
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.user, USER)
        self.assertEqual(len(factory.context.sessions), 1)
        response = yield connection.protocol.done
        self.assertEqual(http_body(response), body)
        yield microsocks.waitForOutput(rb"connected to 127\.0\.0\.1:%d" % web_port)

    @inlineCallbacks
    def test_microsocks_then_our_server(self):
        """client -> microsocks -> our server (username/password) -> byte server, by name."""
        path = self.mktemp()
        set_password(path, "bob", b"hunter2", n=2**10)
        web_port, _web = self.byteServer(b"through microsocks, then us")
        microsocks = yield startMicrosocksProcess(self)
        ours, factory = self.startSOCKS(methods=["userpass"], passwd=path)
        to_ours = SOCKS5ClientEndpoint(proxy_endpoint(microsocks.port), "127.0.0.1", ours)
        endpoint = SOCKS5ClientEndpoint(to_ours, "localhost", web_port, [UserPassClientFactory("bob", "hunter2")])
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.user, "bob")
        self.assertEqual(len(factory.context.sessions), 1)
        response = yield connection.protocol.done
        self.assertEqual(http_body(response), b"through microsocks, then us")
        yield microsocks.waitForOutput(rb"connected to 127\.0\.0\.1:%d" % ours)
