"""
GSS-API (RFC 1961) end to end on 127.0.0.1 with a real MIT KDC (k5test):
our client through our server at every level, Kerberos and SPNEGO, CONNECT,
BIND and UDP under protection, a large transfer at level 2, and failures.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from tests.client.test_against_own_server import Collector, Fetcher
from tests.kerberos import SERVICE_HOST, test_realm
from tests.support import EchoUDP, IntegrationTestCase, StreamCollector
from txsocksgss.auth.gssapi import GSSAPIClientFactory
from txsocksgss.client.bind import bindThroughProxy
from txsocksgss.client.endpoints import SOCKS5ClientEndpoint
from txsocksgss.client.udp import associateUDP
from txsocksgss.errors import ClientAuthenticationFailed
from txsocksgss.wire.gssapi import ProtectionLevel

pytestmark = pytest.mark.kerberos

LEVELS = {
    "clear": ProtectionLevel.CLEAR,
    "integrity": ProtectionLevel.INTEGRITY,
    "confidentiality": ProtectionLevel.CONFIDENTIALITY,
}


class GSSAPITestCase(IntegrationTestCase):
    def setUp(self):
        self.realm = test_realm()

    def startGSSAPI(self, protection=("confidentiality", "integrity", "clear"), **config):
        config.setdefault("methods", ["gssapi"])
        return self.startSOCKS(gssapi_keytab=self.realm.service_keytab, gssapi_protection=list(protection),
                               **config)

    def endpoint(self, socks_port, dest_host, dest_port, **client):
        client.setdefault("host", SERVICE_HOST)
        proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port)
        return SOCKS5ClientEndpoint(proxy, dest_host, dest_port, [GSSAPIClientFactory(**client)])


class LevelTests(GSSAPITestCase):
    @inlineCallbacks
    def fetch(self, level: str, mechanism: str = "krb5"):
        body = os.urandom(200_000)
        web_port, _ = self.byteServer(body)
        socks_port, factory = self.startGSSAPI()
        endpoint = self.endpoint(socks_port, "127.0.0.1", web_port, level=LEVELS[level], mechanism=mechanism)
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.user, self.realm.user_principal)
        self.assertEqual(connection.identity.attributes["protection"], level)
        [session] = factory.context.sessions
        self.assertEqual(session.identity.user, self.realm.user_principal)
        self.assertEqual(session.identity.attributes["mechanism"], mechanism)
        self.assertEqual(session.identity.attributes["protection"], level)
        self.assertEqual(session.protection is None, level == "clear")
        data = yield connection.protocol.done
        self.assertTrue(data.endswith(body))

    def test_krb5_confidentiality(self):
        return self.fetch("confidentiality")

    def test_krb5_integrity(self):
        return self.fetch("integrity")

    def test_krb5_clear(self):
        return self.fetch("clear")

    def test_spnego_confidentiality(self):
        return self.fetch("confidentiality", "spnego")

    def test_spnego_integrity(self):
        return self.fetch("integrity", "spnego")

    @inlineCallbacks
    def test_bind_under_protection(self):
        socks_port, _ = self.startGSSAPI()
        endpoint = self.endpoint(socks_port, "127.0.0.1", 0)

        class Echo(Protocol):
            def dataReceived(self, data):
                self.transport.write(data)

        pending = yield bindThroughProxy(endpoint, Factory.forProtocol(Echo))
        peer = StreamCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", pending.address.port), peer)
        yield pending.accepted
        peer.transport.write(b"wrapped both ways")
        data = yield peer.waitFor(17)
        self.assertEqual(data, b"wrapped both ways")
        peer.transport.loseConnection()
        yield peer.lost

    @inlineCallbacks
    def test_udp_under_protection(self):
        echo_port = self.listenUDP(EchoUDP())
        socks_port, _ = self.startGSSAPI()
        collector = Collector()
        association = yield associateUDP(self.endpoint(socks_port, "0.0.0.0", 0), collector)
        self.assertIsNotNone(association.handshake.protection)
        answer = collector.next()
        association.write(b"sealed", ("127.0.0.1", echo_port))
        data, addr = yield answer
        self.assertEqual((data, addr), (b"echo:sealed", ("127.0.0.1", echo_port)))
        yield association.close()


class FailureTests(GSSAPITestCase):
    @inlineCallbacks
    def test_server_requires_confidentiality_client_accepts_only_integrity(self):
        socks_port, _ = self.startGSSAPI(protection=("confidentiality",))
        endpoint = self.endpoint(socks_port, "127.0.0.1", 9, level=ProtectionLevel.INTEGRITY)
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)
        self.assertIn("confidentiality", str(error))

    @inlineCallbacks
    def test_wrong_service_is_refused(self):
        self.realm.addService("other/localhost", self.mktemp())
        socks_port, factory = self.startGSSAPI()
        endpoint = self.endpoint(socks_port, "127.0.0.1", 9, service="other")
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)
        self.assertIn("refused", str(error))

    @inlineCallbacks
    def test_unknown_service_principal_fails_on_the_client(self):
        socks_port, _ = self.startGSSAPI()
        endpoint = self.endpoint(socks_port, "127.0.0.1", 9, host="no-such-host.test")
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)
        self.assertIn("not found", str(error))

    @inlineCallbacks
    def test_no_ticket(self):
        socks_port, _ = self.startGSSAPI()
        empty = os.path.abspath(self.mktemp())
        endpoint = self.endpoint(socks_port, "127.0.0.1", 9, ccache=empty)
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)
