"""
twisted.web's Agent through this project's own SOCKS server: an endpoint
factory written inline, `SOCKSAgentEndpointFactory`, a persistent
connection pool reusing one tunnel, username/password, and HTTPS with a
self-signed certificate made in the test (when pyOpenSSL is installed).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseNeverReceived, readBody
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from tests.helpers.certificates import self_signed_certificate
from tests.helpers.integration import IntegrationTestCase
from txsocksgss.auth.passwordfile import set_password
from txsocksgss.auth.userpass import UserPassClientFactory
from txsocksgss.client import http as socks_http
from txsocksgss.client.endpoints import SOCKS4ClientEndpoint, SOCKS5ClientEndpoint
from txsocksgss.client.http import SOCKSAgentEndpointFactory
from txsocksgss.wire.socks5 import AddressType

try:
    from twisted.internet import ssl

    ssl.CertificateOptions  # noqa: B018 - missing when pyOpenSSL is absent
    import cryptography  # noqa: F401
    from OpenSSL import SSL
except (ImportError, AttributeError):
    _TLS_MISSING = "HTTPS needs pyOpenSSL and cryptography (Twisted's tls extra), which are not installed"
else:
    _TLS_MISSING = ""


class Page(Resource):
    """Answers every GET with the path, the Host header and whether TLS carried it."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        secure = b"tls" if request.isSecure() else b"plain"
        return b"page " + request.path + b" for " + request.getHeader(b"host") + b" over " + secure


class TrackedSite(WrappingFactory):
    """A Site that counts its connections and tells when all have closed."""

    noisy = False

    def __init__(self, resource: Resource | None = None) -> None:
        super().__init__(Site(resource if resource is not None else Page()))
        self.accepted = 0
        self._waiters: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        self.accepted += 1
        return super().buildProtocol(addr)

    def unregisterProtocol(self, protocol: Any) -> None:
        super().unregisterProtocol(protocol)
        if not self.protocols:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def whenClosed(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self.protocols:
            self._waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter


@implementer(IAgentEndpointFactory)
class InlineEndpointFactory:
    """What a user writes without txsocksgss.client.http: one SOCKS 5 endpoint per URI."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy

    def endpointForURI(self, uri: URI) -> SOCKS5ClientEndpoint:
        return SOCKS5ClientEndpoint(self.proxy, uri.host.decode(), uri.port)


@implementer(IPolicyForHTTPS)
class TrustOnly:
    """An HTTPS policy that trusts one certificate and still checks the host name."""

    def __init__(self, certificate: Any) -> None:
        self.certificate = certificate
        self.asked: list[tuple[bytes, int]] = []

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        self.asked.append((hostname, port))
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.certificate)


class _WebTestCase(IntegrationTestCase):
    """Helpers: a tracked web server and the endpoint that reaches our SOCKS server."""

    def webServer(self, resource: Resource | None = None) -> tuple[int, TrackedSite]:
        site = TrackedSite(resource)
        port = self.listen(site)
        self.addCleanup(site.whenClosed)  # runs before stopListening (cleanups run last first)
        return port, site

    def proxy(self, socks_port: int) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port)


class AgentThroughOwnServerTests(_WebTestCase):
    @inlineCallbacks
    def test_inline_endpoint_factory_fetches_a_page(self):
        web_port, site = self.webServer()
        socks_port, _ = self.startSOCKS()
        agent = Agent.usingEndpointFactory(reactor, InlineEndpointFactory(self.proxy(socks_port)))
        response = yield agent.request(b"GET", f"http://127.0.0.1:{web_port}/inline".encode())
        body = yield readBody(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/plain"])
        self.assertEqual(body, f"page /inline for 127.0.0.1:{web_port} over plain".encode())
        self.assertEqual(site.accepted, 1)

    @inlineCallbacks
    def test_socks_agent_endpoint_factory_fetches_a_page_by_name(self):
        web_port, _ = self.webServer()
        socks_port, _ = self.startSOCKS()
        agent = Agent.usingEndpointFactory(reactor, SOCKSAgentEndpointFactory(self.proxy(socks_port)))
        response = yield agent.request(b"GET", f"http://localhost:{web_port}/named".encode())
        body = yield readBody(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, f"page /named for localhost:{web_port} over plain".encode())

    @inlineCallbacks
    def test_missing_page_is_an_http_status_not_a_socks_error(self):
        web_port, _ = self.webServer(Resource())  # no children: every path is a 404
        socks_port, _ = self.startSOCKS()
        agent = Agent.usingEndpointFactory(reactor, SOCKSAgentEndpointFactory(self.proxy(socks_port)))
        response = yield agent.request(b"GET", f"http://127.0.0.1:{web_port}/nowhere".encode())
        yield readBody(response)
        self.assertEqual(response.code, 404)

    @inlineCallbacks
    def test_persistent_pool_reuses_one_tunnel_for_two_requests(self):
        web_port, site = self.webServer()
        socks_port, _ = self.startSOCKS()
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)  # first cleanup to run
        agent = Agent.usingEndpointFactory(reactor, SOCKSAgentEndpointFactory(self.proxy(socks_port)), pool)
        bodies = []
        for path in (b"/one", b"/two"):
            response = yield agent.request(b"GET", f"http://127.0.0.1:{web_port}".encode() + path)
            self.assertEqual(response.code, 200)
            bodies.append((yield readBody(response)))
        self.assertEqual(bodies, [f"page {p} for 127.0.0.1:{web_port} over plain".encode() for p in ("/one", "/two")])
        self.assertEqual(site.accepted, 1)  # the second request went through the same SOCKS tunnel

    @inlineCallbacks
    def test_username_and_password_through_the_factory(self):
        path = self.mktemp()
        set_password(path, "bob", b"hunter2", n=2**10)
        web_port, _ = self.webServer()
        socks_port, _ = self.startSOCKS(methods=["userpass"], passwd=path)
        factory = SOCKSAgentEndpointFactory(self.proxy(socks_port), [UserPassClientFactory("bob", "hunter2")])
        agent = Agent.usingEndpointFactory(reactor, factory)
        response = yield agent.request(b"GET", f"http://127.0.0.1:{web_port}/login".encode())
        body = yield readBody(response)
        self.assertEqual(body, f"page /login for 127.0.0.1:{web_port} over plain".encode())



class HTTPSThroughOwnServerTests(_WebTestCase):
    skip = _TLS_MISSING or None

    @inlineCallbacks
    def test_https_runs_tls_end_to_end_inside_the_tunnel(self):
        certificate_pem, key_pem = self_signed_certificate("localhost")
        server_options = ssl.PrivateCertificate.loadPEM(certificate_pem + key_pem).options()
        site = TrackedSite()
        listening = reactor.listenSSL(0, site, server_options, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.addCleanup(site.whenClosed)
        web_port = listening.getHost().port
        socks_port, _ = self.startSOCKS()
        policy = TrustOnly(ssl.Certificate.loadPEM(certificate_pem))
        factory = SOCKSAgentEndpointFactory(self.proxy(socks_port), contextFactory=policy)
        agent = Agent.usingEndpointFactory(reactor, factory)
        response = yield agent.request(b"GET", f"https://localhost:{web_port}/secret".encode())
        body = yield readBody(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, f"page /secret for localhost:{web_port} over tls".encode())
        self.assertEqual(policy.asked, [(b"localhost", web_port)])

    @inlineCallbacks
    def test_https_default_policy_rejects_an_untrusted_certificate(self):
        certificate_pem, key_pem = self_signed_certificate("localhost")
        server_options = ssl.PrivateCertificate.loadPEM(certificate_pem + key_pem).options()
        site = TrackedSite()
        listening = reactor.listenSSL(0, site, server_options, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.addCleanup(site.whenClosed)
        socks_port, _ = self.startSOCKS()
        agent = Agent.usingEndpointFactory(reactor, SOCKSAgentEndpointFactory(self.proxy(socks_port)))
        url = f"https://localhost:{listening.getHost().port}/".encode()
        error = yield self.assertFailure(agent.request(b"GET", url), ResponseNeverReceived)
        self.assertTrue(error.reasons[0].check(SSL.Error), error.reasons)
        self.assertEqual(site.accepted, 1)  # the TLS handshake reached the origin server, and failed there


class EndpointForURITests(SynchronousTestCase):
    def setUp(self):
        self.proxy = TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 1080)

    def test_provides_the_interface(self):
        self.assertTrue(IAgentEndpointFactory.providedBy(SOCKSAgentEndpointFactory(self.proxy)))

    def test_http_gives_a_socks5_endpoint_to_the_uri_host(self):
        endpoint = SOCKSAgentEndpointFactory(self.proxy, timeout=7).endpointForURI(
            URI.fromBytes(b"http://example.com:8080/x"))
        self.assertIsInstance(endpoint, SOCKS5ClientEndpoint)
        self.assertIs(endpoint.proxy, self.proxy)
        self.assertEqual((endpoint.destination.host, endpoint.destination.port), ("example.com", 8080))
        self.assertEqual(endpoint.destination.type, AddressType.DOMAIN)
        self.assertEqual(endpoint.timeout, 7)

    def test_default_ports_and_ipv6(self):
        factory = SOCKSAgentEndpointFactory(self.proxy)
        self.assertEqual(factory.endpointForURI(URI.fromBytes(b"http://example.com/")).destination.port, 80)
        v6 = factory.endpointForURI(URI.fromBytes(b"http://[2001:db8::1]:81/")).destination
        self.assertEqual((v6.type, v6.host, v6.port), (AddressType.IPV6, "2001:db8::1", 81))

    def test_methods_are_passed_on(self):
        methods = [UserPassClientFactory("bob", "pw")]
        endpoint = SOCKSAgentEndpointFactory(self.proxy, methods).endpointForURI(URI.fromBytes(b"http://h/"))
        self.assertEqual(list(endpoint.methods), methods)

    def test_version_4_gives_socks4_endpoints(self):
        factory = SOCKSAgentEndpointFactory(self.proxy, version=4, userid="bob")
        endpoint = factory.endpointForURI(URI.fromBytes(b"http://example.com/"))
        self.assertIsInstance(endpoint, SOCKS4ClientEndpoint)
        self.assertEqual(endpoint.userid, b"bob")
        self.assertEqual(endpoint.destination.host, "example.com")  # SOCKS 4a
        self.assertRaises(ValueError, factory.endpointForURI, URI.fromBytes(b"http://[::1]/"))

    def test_https_wraps_the_socks_endpoint_in_tls(self):
        wrapped: list[tuple[Any, Any]] = []
        self.patch(socks_http, "wrapClientTLS", lambda creator, endpoint: wrapped.append((creator, endpoint)) or "tls")

        @implementer(IPolicyForHTTPS)
        class Policy:
            def creatorForNetloc(self, hostname, port):
                return ("creator", hostname, port)

        factory = SOCKSAgentEndpointFactory(self.proxy, contextFactory=Policy())
        self.assertEqual(factory.endpointForURI(URI.fromBytes(b"https://example.com/")), "tls")
        self.assertEqual(factory.endpointForURI(URI.fromBytes(b"wss://example.com:8443/")), "tls")
        (creator, endpoint), (creator2, endpoint2) = wrapped
        self.assertEqual(creator, ("creator", b"example.com", 443))
        self.assertEqual(creator2, ("creator", b"example.com", 8443))
        self.assertIsInstance(endpoint, SOCKS5ClientEndpoint)
        self.assertEqual((endpoint.destination.host, endpoint.destination.port), ("example.com", 443))

    def test_http_is_never_wrapped(self):
        self.patch(socks_http, "wrapClientTLS", lambda *a: self.fail("http must not use TLS"))
        for scheme in (b"http", b"ws"):
            SOCKSAgentEndpointFactory(self.proxy).endpointForURI(URI.fromBytes(scheme + b"://h/"))

    def test_unknown_scheme(self):
        factory = SOCKSAgentEndpointFactory(self.proxy)
        self.assertRaises(SchemeNotSupported, factory.endpointForURI, URI.fromBytes(b"ftp://h/"))

    def test_bad_arguments(self):
        self.assertRaises(ValueError, SOCKSAgentEndpointFactory, self.proxy, version=6)
        self.assertRaises(ValueError, SOCKSAgentEndpointFactory, self.proxy, [UserPassClientFactory("u", "p")], 4)
        self.assertRaises(ValueError, SOCKSAgentEndpointFactory, self.proxy, userid="bob")
