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

from tests.helpers.clients import DatagramCollector, Fetcher, StreamCollector
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.kerberos import SERVICE_HOST, test_realm
from tests.helpers.servers import BannerServerFactory, EchoUDP
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
    def fetch(self, level: str, mechanism: str = "krb5", server_wrap: str = "auto", client_wrap: str = "auto"):
        body = os.urandom(200_000)
        web_port, _ = self.byteServer(body)
        socks_port, factory = self.startGSSAPI(gssapi_wrap=server_wrap)
        endpoint = self.endpoint(socks_port, "127.0.0.1", web_port, level=LEVELS[level], mechanism=mechanism,
                                 wrap=client_wrap)
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.user, self.realm.user_principal)
        self.assertEqual(connection.identity.attributes["protection"], level)
        [session] = factory.context.sessions
        self.assertEqual(session.identity.user, self.realm.user_principal)
        self.assertEqual(session.identity.attributes["mechanism"], mechanism)
        self.assertEqual(session.identity.attributes["protection"], level)
        self.assertEqual(session.protection is None, level == "clear")
        expected_engine = None if level == "clear" else "openssl" if server_wrap == "auto" else "library"
        self.assertEqual(session.identity.attributes["wrap_engine"], expected_engine)
        data = yield connection.protocol.done
        self.assertTrue(data.endswith(body))

    def test_openssl_server_with_library_client(self):
        """Our OpenSSL tokens against MIT's gss_wrap/gss_unwrap through the running proxy, both ways."""
        return self.fetch("confidentiality", server_wrap="auto", client_wrap="library")

    def test_library_server_with_openssl_client(self):
        return self.fetch("integrity", server_wrap="library", client_wrap="auto")

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
        collector = DatagramCollector()
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


class _Source(Protocol):
    """Sends ``total`` pseudo-random bytes as fast as flow control allows, then closes."""

    def __init__(self, total: int):
        self.total = total
        self.sent = 0
        self.digest = hashlib.sha256()
        self.paused = False
        self.chunk = os.urandom(256 * 1024)

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.sent < self.total:
            chunk = self.chunk[: self.total - self.sent]
            self.transport.write(chunk)
            self.digest.update(chunk)
            self.sent += len(chunk)
        if self.sent >= self.total:
            self.transport.unregisterProducer()
            self.transport.loseConnection()


class _Sink(Protocol):
    def __init__(self, watch):
        self.digest = hashlib.sha256()
        self.received = 0
        self.done: Deferred = Deferred()
        self.watch = watch

    def dataReceived(self, data):
        self.digest.update(data)
        self.received += len(data)
        self.watch()

    def connectionLost(self, reason=None):
        self.done.callback(None)


def _buffered(transport) -> int:
    real = getattr(transport, "transport", transport)  # under a ProtectedTransport
    return len(real.dataBuffer) + real._tempDataLen


class BulkTests(GSSAPITestCase):
    @inlineCallbacks
    def test_200_mb_at_level_2_byte_exact_with_bounded_proxy_buffers(self):
        total = 200 * 1024 * 1024
        sources = []

        def build(addr):
            source = _Source(total)
            sources.append(source)
            return source

        source_factory = Factory()
        source_factory.buildProtocol = build
        source_port = self.listen(source_factory)
        socks_port, factory = self.startGSSAPI(protection=("confidentiality",))
        peak = [0]

        def watch():
            for session in factory.context.sessions:
                relay = session.relay
                if relay is not None:
                    peak[0] = max(peak[0], _buffered(relay.client) + _buffered(relay.upstream))

        sink = _Sink(watch)
        endpoint = self.endpoint(socks_port, "127.0.0.1", source_port)
        connection = yield endpoint.establish(Factory.forProtocol(lambda: sink))
        self.assertEqual(connection.identity.attributes["protection"], "confidentiality")
        yield sink.done
        self.assertEqual(sink.received, total)
        self.assertEqual(sink.digest.hexdigest(), sources[0].digest.hexdigest())
        self.assertLess(peak[0], 4 * 1024 * 1024)


class _Tamperer(Protocol):
    """A man in the middle between client and proxy that flips one bit on request."""

    def __init__(self, proxy_port, armed):
        self.proxy_port = proxy_port
        self.armed = armed
        self.upstream = None
        self.pending = []

    def connectionMade(self):
        forward = _Forward(self)
        connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy_port), forward)

    def dataReceived(self, data):
        if self.armed[0]:
            self.armed[0] = False
            data = data[:-1] + bytes([data[-1] ^ 0x01])
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.transport.write(data)

    def connectionLost(self, reason=None):
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class _Forward(Protocol):
    def __init__(self, client_side):
        self.client_side = client_side

    def connectionMade(self):
        self.client_side.upstream = self
        for data in self.client_side.pending:
            self.transport.write(data)

    def dataReceived(self, data):
        self.client_side.transport.write(data)

    def connectionLost(self, reason=None):
        self.client_side.transport.loseConnection()


class TamperTests(GSSAPITestCase):
    @inlineCallbacks
    def test_flipped_bit_in_a_wrapped_token_ends_only_that_session(self):
        web = StreamCollector()
        web_factory = Factory.forProtocol(lambda: web)
        web_port = self.listen(web_factory)
        logs = self.captureLogs()
        socks_port, factory = self.startGSSAPI(protection=("integrity",))
        armed = [False]
        tamper_port = self.listen(Factory.forProtocol(lambda: _Tamperer(socks_port, armed)))

        bystander_body = os.urandom(50_000)
        bystander_web, _ = self.byteServer(bystander_body)
        bystander = self.endpoint(socks_port, "127.0.0.1", bystander_web, level=ProtectionLevel.INTEGRITY)
        bystander_connection = yield bystander.establish(Factory.forProtocol(Protocol))

        victim = self.endpoint(tamper_port, "127.0.0.1", web_port, level=ProtectionLevel.INTEGRITY)
        connection = yield victim.establish(Factory.forProtocol(StreamCollector))
        connection.protocol.transport.write(b"intact")
        yield web.waitFor(6)
        armed[0] = True
        connection.protocol.transport.write(b"this token gets one bit flipped")
        yield connection.protocol.lost
        self.assertEqual(web.data, b"intact")  # nothing of the tampered token was delivered
        yield web.lost
        self.assertTrue([line for line in logs if "protection failure: a protected token failed to verify" in line],
                        "\n".join(logs))

        fetch = Fetcher()
        fetch.makeConnection(bystander_connection.protocol.transport)
        bystander_connection.handshake.application = fetch
        data = yield fetch.done
        self.assertTrue(data.endswith(bystander_body))


class ExpiryTests(GSSAPITestCase):
    @inlineCallbacks
    def test_a_context_that_expires_mid_tunnel_ends_the_session_cleanly(self):
        """Once the context has expired nothing more is wrapped: the session ends with the reason, no traceback."""
        web = StreamCollector()
        web_port = self.listen(Factory.forProtocol(lambda: web))
        logs = self.captureLogs()
        socks_port, factory = self.startGSSAPI(protection=("confidentiality",))
        endpoint = self.endpoint(socks_port, "127.0.0.1", web_port)
        connection = yield endpoint.establish(Factory.forProtocol(StreamCollector))
        connection.protocol.transport.write(b"before")
        yield web.waitFor(6)
        web.transport.write(b"reply")
        yield connection.protocol.waitFor(5)
        [session] = factory.context.sessions
        self.assertEqual(session.protection.engine, "openssl")
        session.protection.codec.endtime = 0  # as if the ticket's lifetime had passed
        web.transport.write(b"never wrapped")
        yield connection.protocol.lost
        self.assertEqual(connection.protocol.data, b"reply")
        yield web.lost
        [line] = [line for line in logs if "outcome=protection failure" in line]
        self.assertIn("cannot protect more data: the security context has expired", line)
        self.assertFalse([line for line in logs if "Traceback" in line or "Unhandled" in line], "\n".join(logs))


NTLM_OID = "1.3.6.1.4.1.311.2.2.10"


class MultiRoundTests(GSSAPITestCase):
    """SPNEGO over NTLM (Debian's gss-ntlmssp): three client messages, two server tokens."""

    @inlineCallbacks
    def test_spnego_ntlm_takes_more_than_two_legs(self):
        import gssapi

        users = os.path.abspath(self.mktemp())
        with open(users, "w") as f:
            f.write("TESTDOM:alice:ntlm password\n")
        previous = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = users
        self.addCleanup(
            lambda: os.environ.pop("NTLM_USER_FILE") if previous is None
            else os.environ.__setitem__("NTLM_USER_FILE", previous)
        )
        try:
            ntlm = gssapi.OID.from_int_seq(NTLM_OID)
        except Exception as error:  # pragma: no cover - the package is installed by bootstrap
            raise AssertionError(f"gss-ntlmssp is not usable: {error}")
        spnego = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
        credentials = gssapi.Credentials(
            name=gssapi.Name("TESTDOM\\alice", gssapi.NameType.user), usage="initiate", mechs=[spnego]
        )
        # SPNEGO would otherwise also offer Kerberos (the realm's ticket is in the cache).
        gssapi.raw.set_neg_mechs(credentials, [ntlm])
        logs = self.captureLogs()
        # The acceptor takes the library's default credentials (keytab and NTLM users).
        socks_port, factory = self.startSOCKS(methods=["gssapi"], gssapi_mech="spnego",
                                              gssapi_protection=["integrity", "confidentiality"])
        web_port, _ = self.byteServer(b"over NTLM")
        endpoint = self.endpoint(socks_port, "127.0.0.1", web_port, mechanism="spnego", credentials=credentials,
                                 level=ProtectionLevel.INTEGRITY)
        try:
            connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        except Exception:
            print("\n".join(logs))
            raise
        self.assertEqual(connection.identity.user, "TESTDOM\\alice")
        data = yield connection.protocol.done
        self.assertTrue(data.endswith(b"over NTLM"))
        [line] = [line for line in logs if "TESTDOM\\alice authenticated with spnego" in line]
        # NTLM: NEGOTIATE, AUTHENTICATE from the client (the server answers CHALLENGE, then completes).
        self.assertIn("after 2 client tokens", line)
        [session] = factory.context.sessions
        self.assertEqual(session.identity.attributes["wrap_engine"], "library")  # NTLM: not Kerberos


class CredentialFailureTests(GSSAPITestCase):
    @inlineCallbacks
    def test_expired_ticket(self):
        from twisted.internet.task import deferLater

        principal = self.realm.addUser("shortlived", "short-password")
        ccache = os.path.abspath(self.mktemp())
        self.realm.kinit(principal, "short-password", ccache, flags=["-l", "1s"])
        # Expiry is about real time passing, so the test waits for it; nothing else is timed.
        yield deferLater(reactor, 2.5, lambda: None)
        socks_port, _ = self.startGSSAPI()
        endpoint = self.endpoint(socks_port, "127.0.0.1", 9, ccache=ccache)
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)
        self.assertIn("expired", str(error).lower())

    @inlineCallbacks
    def test_unknown_full_principal(self):
        socks_port, _ = self.startGSSAPI()
        endpoint = self.endpoint(socks_port, "127.0.0.1", 9, principal=f"rcmd/ghost@{self.realm.name}")
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)
        self.assertIn("not found", str(error).lower())


class RuleTests(GSSAPITestCase):
    @inlineCallbacks
    def test_rules_match_principals_and_realms(self):
        from txsocksgss.errors import ConnectionNotAllowed
        from txsocksgss.server.rules import rules_from_table

        web_port, _ = self.byteServer(b"for the realm")
        rules = rules_from_table({
            "rule": [
                {"action": "deny", "users": [self.realm.user_principal], "ports": [9]},
                {"action": "allow", "users": [f"@{self.realm.name}"]},
            ],
        })
        socks_port, _ = self.startGSSAPI(rules=rules)
        allowed = self.endpoint(socks_port, "127.0.0.1", web_port)
        protocol = yield allowed.connect(Factory.forProtocol(Fetcher))
        data = yield protocol.done
        self.assertTrue(data.endswith(b"for the realm"))
        denied = self.endpoint(socks_port, "127.0.0.1", 9)
        yield self.assertFailure(denied.connect(Factory.forProtocol(Fetcher)), ConnectionNotAllowed)


class EndpointStringTests(GSSAPITestCase):
    @inlineCallbacks
    def test_socks5_string_with_gssapi_end_to_end(self):
        from twisted.internet.endpoints import clientFromString

        web_port, _ = self.byteServer(b"described")
        socks_port, factory = self.startGSSAPI()
        endpoint = clientFromString(
            reactor,
            f"socks5:{SERVICE_HOST}:{socks_port}:host=127.0.0.1:port={web_port}"
            ":methods=gssapi:gssapi_protection=integrity",
        )
        protocol = yield endpoint.connect(Factory.forProtocol(Fetcher))
        data = yield protocol.done
        self.assertTrue(data.endswith(b"described"))


class CommandLineTests(GSSAPITestCase):
    @inlineCallbacks
    def test_socksgss_connect_over_gssapi_level_2(self):
        import sys

        from tests.helpers.processes import run_program

        body = os.urandom(100_000)
        web_port = self.listen(BannerServerFactory(body))
        logs = self.captureLogs()
        socks_port, _ = self.startGSSAPI()
        out, err, code = yield run_program(sys.executable, [
            "-m", "txsocksgss.cli", "connect", "--proxy", f"socks5h://{SERVICE_HOST}:{socks_port}",
            "--gssapi-protection", "confidentiality", "--method", "gssapi", "127.0.0.1", str(web_port),
        ], env=self.realm.env())
        self.assertEqual(code, 0, err)
        self.assertEqual(out, body)
        self.assertTrue([line for line in logs if "protection=confidentiality" in line and "session" in line])
