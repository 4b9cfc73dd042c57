"""
The ``socks5:``, ``socks4:`` and ``socks4a:`` endpoint descriptions: found
by ``clientFromString`` through the plugin, every key parsed, every mistake
a ValueError that says what is wrong; then end to end through this
project's own server (CONNECT, username/password, a chain of two proxies).
"""

from __future__ import annotations

import getpass

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, UNIXClientEndpoint, clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamClientEndpointStringParserWithReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.clients import Fetcher
from tests.helpers.integration import IntegrationTestCase
from txsocksgss.auth.none import NoAuthClientFactory
from txsocksgss.auth.passwordfile import set_password
from txsocksgss.auth.userpass import UserPassClientFactory
from txsocksgss.client.endpoints import DEFAULT_TIMEOUT, SOCKS4ClientEndpoint, SOCKS5ClientEndpoint
from txsocksgss.client.endpointstring import (
    DEFAULT_PROXY_PORT,
    SOCKS4aEndpointStringParser,
    SOCKS4EndpointStringParser,
    SOCKS5EndpointStringParser,
)
from txsocksgss.errors import ClientAuthenticationFailed, NoAcceptableMethod
from txsocksgss.wire.socks5 import AddressType


def _hostname_target(endpoint: HostnameEndpoint) -> tuple[str, int]:
    return endpoint._hostText, endpoint._port


class PluginDiscoveryTests(SynchronousTestCase):
    def test_each_prefix_is_found_by_clientFromString(self):
        memory = MemoryReactorClock()
        built = {
            prefix: clientFromString(memory, f"{prefix}:127.0.0.1:1080:host=192.0.2.1:port=80")
            for prefix in ("socks5", "socks4", "socks4a")
        }
        self.assertIsInstance(built["socks5"], SOCKS5ClientEndpoint)
        self.assertIsInstance(built["socks4"], SOCKS4ClientEndpoint)
        self.assertIsInstance(built["socks4a"], SOCKS4ClientEndpoint)

    def test_prefix_is_case_insensitive(self):
        endpoint = clientFromString(MemoryReactorClock(), "SOCKS5:127.0.0.1:1080:host=example.com:port=80")
        self.assertIsInstance(endpoint, SOCKS5ClientEndpoint)

    def test_parsers_provide_the_interface(self):
        for parser in (SOCKS5EndpointStringParser(), SOCKS4EndpointStringParser(), SOCKS4aEndpointStringParser()):
            self.assertTrue(IStreamClientEndpointStringParserWithReactor.providedBy(parser))

    def test_bytes_description(self):
        endpoint = clientFromString(MemoryReactorClock(), b"socks5:127.0.0.1:1080:host=example.com:port=80")
        self.assertEqual((endpoint.destination.host, endpoint.destination.port), ("example.com", 80))


class SOCKS5ParsingTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()

    def parse(self, description: str):
        return clientFromString(self.reactor, description)

    def assertRejected(self, description: str, *fragments: str) -> str:
        with self.assertRaises(ValueError) as caught:
            self.parse(description)
        message = str(caught.exception)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_positional_proxy_and_destination(self):
        endpoint = self.parse("socks5:proxy.example:1081:host=example.com:port=80")
        self.assertIsInstance(endpoint.proxy, HostnameEndpoint)
        self.assertEqual(_hostname_target(endpoint.proxy), ("proxy.example", 1081))
        self.assertEqual(endpoint.destination.type, AddressType.DOMAIN)
        self.assertEqual((endpoint.destination.host, endpoint.destination.port), ("example.com", 80))
        self.assertEqual(endpoint.timeout, DEFAULT_TIMEOUT)
        self.assertIs(endpoint._clock, self.reactor)

    def test_proxy_port_defaults_to_1080(self):
        endpoint = self.parse("socks5:proxy.example:host=example.com:port=80")
        self.assertEqual(_hostname_target(endpoint.proxy), ("proxy.example", DEFAULT_PROXY_PORT))
        self.assertEqual(DEFAULT_PROXY_PORT, 1080)

    def test_proxyhost_and_proxyport_keywords(self):
        endpoint = self.parse("socks5:host=example.com:port=80:proxyport=9050:proxyhost=127.0.0.1")
        self.assertEqual(_hostname_target(endpoint.proxy), ("127.0.0.1", 9050))
        endpoint = self.parse("socks5:proxy.example:proxyport=9050:host=example.com:port=80")
        self.assertEqual(_hostname_target(endpoint.proxy), ("proxy.example", 9050))

    def test_ipv6_proxy_escaped_or_bracketed(self):
        escaped = self.parse(r"socks5:\:\:1:1080:host=example.com:port=80")
        self.assertEqual(_hostname_target(escaped.proxy), ("::1", 1080))
        bracketed = self.parse(r"socks5:[\:\:1]:1080:host=example.com:port=80")
        self.assertEqual(_hostname_target(bracketed.proxy), ("::1", 1080))

    def test_destination_address_types(self):
        v4 = self.parse("socks5:p:host=192.0.2.7:port=443")
        self.assertEqual((v4.destination.type, v4.destination.host), (AddressType.IPV4, "192.0.2.7"))
        v6 = self.parse(r"socks5:p:host=2001\:db8\:\:1:port=443")
        self.assertEqual((v6.destination.type, v6.destination.host), (AddressType.IPV6, "2001:db8::1"))
        bracketed = self.parse(r"socks5:p:host=[2001\:db8\:\:1]:port=443")
        self.assertEqual(bracketed.destination.host, "2001:db8::1")

    def test_no_credentials_offers_no_authentication_only(self):
        endpoint = self.parse("socks5:p:host=example.com:port=80")
        self.assertEqual([type(m) for m in endpoint.methods], [NoAuthClientFactory])

    def test_credentials_offer_userpass_then_none(self):
        endpoint = self.parse("socks5:p:host=example.com:port=80:user=bob:password=hunter2")
        self.assertEqual([type(m) for m in endpoint.methods], [UserPassClientFactory, NoAuthClientFactory])
        self.assertEqual(endpoint.methods[0]._username, b"bob")
        self.assertEqual(endpoint.methods[0]._password, b"hunter2")

    def test_password_may_hold_escaped_colons_and_equals_signs(self):
        endpoint = self.parse(r"socks5:p:host=example.com:port=80:user=bob:password=a\:b=c\\d")
        self.assertEqual(endpoint.methods[0]._password, b"a:b=c\\d")

    def test_methods_key_sets_offer_and_order(self):
        only = self.parse("socks5:p:host=h:port=1:user=bob:password=pw:methods=userpass")
        self.assertEqual([type(m) for m in only.methods], [UserPassClientFactory])
        reordered = self.parse("socks5:p:host=h:port=1:user=bob:password=pw:methods=none, USERPASS")
        self.assertEqual([type(m) for m in reordered.methods], [NoAuthClientFactory, UserPassClientFactory])
        anonymous = self.parse("socks5:p:host=h:port=1:methods=none")
        self.assertEqual([type(m) for m in anonymous.methods], [NoAuthClientFactory])

    def test_timeout(self):
        self.assertEqual(self.parse("socks5:p:host=h:port=1:timeout=2.5").timeout, 2.5)
        self.assertEqual(self.parse("socks5:p:host=h:port=1:timeout=10").timeout, 10.0)
        self.assertIsNone(self.parse("socks5:p:host=h:port=1:timeout=none").timeout)
        self.assertIsNone(self.parse("socks5:p:host=h:port=1:timeout=None").timeout)

    def test_inner_proxy_endpoint_with_escaped_colons(self):
        endpoint = self.parse(r"socks5:host=example.com:port=80:proxy=tcp\:proxy.example\:1080\:timeout=3")
        self.assertIsInstance(endpoint.proxy, TCP4ClientEndpoint)
        self.assertEqual((endpoint.proxy._host, endpoint.proxy._port, endpoint.proxy._timeout),
                         ("proxy.example", 1080, 3))

    def test_inner_tls_proxy_from_the_docstring_example(self):
        description = r"socks5:host=example.com:port=80:proxy=tls\:proxy.example\:1080"
        try:
            import OpenSSL  # noqa: F401
        except ImportError:
            # Twisted's tls: parser needs pyOpenSSL; without it the
            # description fails cleanly instead of with Twisted's NameError.
            self.assertRejected(description, "proxy='tls:proxy.example:1080'", "not a usable")
            return
        endpoint = self.parse(description)
        self.assertEqual(_hostname_target(endpoint.proxy._wrappedEndpoint), ("proxy.example", 1080))

    def test_inner_unix_proxy(self):
        endpoint = self.parse(r"socks5:host=example.com:port=80:proxy=unix\:/run/socks.sock")
        self.assertIsInstance(endpoint.proxy, UNIXClientEndpoint)
        self.assertEqual(endpoint.proxy._path, "/run/socks.sock")

    def test_inner_proxy_chains_socks5_through_socks5(self):
        endpoint = self.parse(
            r"socks5:host=example.com:port=80:"
            r"proxy=socks5\:first.example\:1080\:host=second.example\:port=1081\:user=bob\:password=pw"
        )
        inner = endpoint.proxy
        self.assertIsInstance(inner, SOCKS5ClientEndpoint)
        self.assertEqual(_hostname_target(inner.proxy), ("first.example", 1080))
        self.assertEqual((inner.destination.host, inner.destination.port), ("second.example", 1081))
        self.assertEqual(inner.methods[0]._username, b"bob")
        self.assertEqual([type(m) for m in endpoint.methods], [NoAuthClientFactory])

    def test_three_levels_need_double_escaping(self):
        endpoint = self.parse(
            r"socks5:host=dest:port=80:proxy=socks5\:host=third\:port=3\:"
            r"proxy=socks5\\\:first\\\:1\\\:host=second\\\:port=2"
        )
        middle = endpoint.proxy
        innermost = middle.proxy
        self.assertEqual(middle.destination.host, "third")
        self.assertEqual(innermost.destination.host, "second")
        self.assertEqual(_hostname_target(innermost.proxy), ("first", 1))

    # --- mistakes -----------------------------------------------------------

    def test_missing_host_or_port(self):
        self.assertRejected("socks5:p:1080:port=80", "socks5", "missing host=")
        self.assertRejected("socks5:p:1080:host=example.com", "missing port=")

    def test_bad_destination_ports(self):
        for bad in ("0", "65536", "80a", "-1", " 80", "", "123456"):
            self.assertRejected(f"socks5:p:1080:host=h:port={bad}", "port", "1 to 65535")

    def test_bad_proxy_ports(self):
        self.assertRejected("socks5:p:0:host=h:port=80", "proxy port '0'")
        self.assertRejected("socks5:p:http:host=h:port=80", "proxy port 'http'")
        self.assertRejected("socks5:host=h:port=80:proxyhost=p:proxyport=70000", "proxy port '70000'")

    def test_empty_hosts(self):
        self.assertRejected("socks5:p:1080:host=:port=80", "host= is empty")
        self.assertRejected("socks5::1080:host=h:port=80", "proxy host is empty")

    def test_overlong_destination_name(self):
        self.assertRejected(f"socks5:p:host={'a' * 256}:port=80", "host 'aaa", "1 to 255")

    def test_unknown_keys_are_named(self):
        message = self.assertRejected("socks5:p:1080:host=h:port=80:usr=bob:pasword=x", "unknown keys", "pasword, usr")
        self.assertIn("host, maf_submethods, methods, password, port", message)

    def test_userid_is_not_a_socks5_key(self):
        self.assertRejected("socks5:p:1080:host=h:port=80:userid=bob", "unknown key userid")

    def test_no_proxy_at_all(self):
        self.assertRejected("socks5:host=h:port=80", "no proxy")
        self.assertRejected("socks5:host=h:port=80:proxyport=1080", "proxyport= without a proxy host")

    def test_proxy_given_twice(self):
        self.assertRejected(r"socks5:p:1080:host=h:port=80:proxy=tcp\:q\:1", "not both")
        self.assertRejected(r"socks5:host=h:port=80:proxyhost=p:proxy=tcp\:q\:1", "not both")
        self.assertRejected("socks5:p:host=h:port=80:proxyhost=q", "proxy host is given both")
        self.assertRejected("socks5:p:1:host=h:port=80:proxyport=2", "proxy port is given both")

    def test_too_many_positional_fields_hints_at_escaping(self):
        self.assertRejected("socks5:::1:1080:host=h:port=80", "positional fields", "escape")

    def test_unescaped_inner_endpoint_is_caught(self):
        # Without escaping, "proxy=tcp" ends at the first colon and the rest
        # becomes positional fields of the outer description.
        self.assertRejected("socks5:host=h:port=80:proxy=tcp:q:1", "not both")

    def test_bad_inner_endpoints(self):
        self.assertRejected("socks5:host=h:port=80:proxy=", "proxy= is empty")
        self.assertRejected(r"socks5:host=h:port=80:proxy=nosuchtype\:x", "proxy='nosuchtype:x'", "not a usable")
        self.assertRejected(r"socks5:host=h:port=80:proxy=tcp\:onlyhost", "proxy='tcp:onlyhost'")
        self.assertRejected(r"socks5:host=h:port=80:proxy=socks5\:p\:host=h", "missing port=")

    def test_bad_timeouts(self):
        for bad in ("0", "-1", "abc", "nan", "inf", ""):
            self.assertRejected(f"socks5:p:host=h:port=80:timeout={bad}", "timeout", "positive number")

    def test_credentials_come_in_pairs(self):
        self.assertRejected("socks5:p:host=h:port=80:user=bob", "together")
        self.assertRejected("socks5:p:host=h:port=80:password=hunter2", "together")

    def test_bad_credentials_never_show_the_password(self):
        message = self.assertRejected("socks5:p:host=h:port=80:user=:password=hunter2", "bad credentials")
        self.assertNotIn("hunter2", message)
        message = self.assertRejected(f"socks5:p:host=h:port=80:user=bob:password={'s' * 256}", "256 bytes")
        self.assertNotIn("s" * 256, message)

    def test_bad_methods(self):
        self.assertRejected("socks5:p:host=h:port=80:methods=kerberos", "unknown method 'kerberos'")
        self.assertRejected("socks5:p:host=h:port=80:methods=userpass", "user= and password= are missing")
        self.assertRejected("socks5:p:host=h:port=80:user=u:password=p:methods=none",
                            "methods= does not offer userpass")
        self.assertRejected("socks5:p:host=h:port=80:methods=none,none", "twice")
        self.assertRejected("socks5:p:host=h:port=80:methods=", "unknown method ''")


class SOCKS4ParsingTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()

    def parse(self, description: str):
        return clientFromString(self.reactor, description)

    def test_socks4_ipv4_destination(self):
        endpoint = self.parse("socks4:proxy.example:1080:host=192.0.2.1:port=80:userid=bob:timeout=4")
        self.assertIsInstance(endpoint, SOCKS4ClientEndpoint)
        self.assertEqual(_hostname_target(endpoint.proxy), ("proxy.example", 1080))
        self.assertEqual((endpoint.destination.host, endpoint.destination.port), ("192.0.2.1", 80))
        self.assertEqual(endpoint.userid, b"bob")
        self.assertEqual(endpoint.timeout, 4.0)
        self.assertIs(endpoint._clock, self.reactor)

    def test_userid_defaults_to_local_user_and_may_be_empty(self):
        default = self.parse("socks4:p:host=192.0.2.1:port=80")
        self.assertEqual(default.userid, getpass.getuser().encode("utf-8"))
        empty = self.parse("socks4:p:host=192.0.2.1:port=80:userid=")
        self.assertEqual(empty.userid, b"")

    def test_socks4_rejects_a_name_and_points_to_socks4a(self):
        with self.assertRaises(ValueError) as caught:
            self.parse("socks4:p:host=example.com:port=80")
        self.assertIn("socks4a", str(caught.exception))
        self.assertIn("'example.com'", str(caught.exception))

    def test_socks4a_sends_names_to_the_proxy(self):
        endpoint = self.parse("socks4a:p:1080:host=example.com:port=80:userid=bob")
        self.assertIsInstance(endpoint, SOCKS4ClientEndpoint)
        self.assertEqual(endpoint.destination.type, AddressType.DOMAIN)
        self.assertEqual(endpoint.destination.host, "example.com")

    def test_socks4a_accepts_ipv4_too(self):
        endpoint = self.parse("socks4a:p:host=192.0.2.1:port=80")
        self.assertEqual(endpoint.destination.type, AddressType.IPV4)

    def test_ipv6_is_rejected_by_both(self):
        for prefix in ("socks4", "socks4a"):
            with self.assertRaises(ValueError) as caught:
                self.parse(rf"{prefix}:p:host=2001\:db8\:\:1:port=80")
            self.assertIn("use socks5", str(caught.exception))

    def test_socks5_keys_are_unknown_to_socks4(self):
        with self.assertRaises(ValueError) as caught:
            self.parse("socks4:p:host=192.0.2.1:port=80:user=bob:password=pw")
        self.assertIn("unknown keys password, user", str(caught.exception))

    def test_userid_with_nul_is_rejected(self):
        with self.assertRaises(ValueError):
            self.parse("socks4a:p:host=example.com:port=80:userid=a\x00b")

    def test_shared_validation(self):
        for description, fragment in [
            ("socks4a:p:host=h:port=0", "1 to 65535"),
            ("socks4:host=192.0.2.1:port=80", "no proxy"),
            ("socks4a:p:port=80", "missing host="),
            ("socks4a:p:host=h:port=80:timeout=-3", "timeout"),
        ]:
            with self.assertRaises(ValueError) as caught:
                self.parse(description)
            self.assertIn(fragment, str(caught.exception))
            self.assertTrue(str(caught.exception).startswith(description.split(":")[0] + " endpoint description"))

    def test_socks4_through_an_inner_endpoint(self):
        endpoint = self.parse(r"socks4a:host=example.com:port=80:proxy=tcp\:10.0.0.1\:1080")
        self.assertIsInstance(endpoint.proxy, TCP4ClientEndpoint)
        self.assertTrue(IStreamClientEndpoint.providedBy(endpoint))


# --- end to end ---------------------------------------------------------------


class EndToEndTests(IntegrationTestCase):
    def passwordFile(self) -> str:
        path = self.mktemp()
        set_password(path, "bob", b"hunter2", n=2**10)
        return path

    @inlineCallbacks
    def test_socks5_string_fetches_through_our_server(self):
        web_port, _ = self.byteServer(b"through a description")
        socks_port, _ = self.startSOCKS()
        endpoint = clientFromString(reactor, f"socks5:127.0.0.1:{socks_port}:host=127.0.0.1:port={web_port}")
        protocol = yield endpoint.connect(Factory.forProtocol(Fetcher))
        data = yield protocol.done
        self.assertTrue(data.startswith(b"HTTP/1.0 200 OK"))
        self.assertTrue(data.endswith(b"through a description"))

    @inlineCallbacks
    def test_socks5_string_with_a_name_and_keyword_proxy(self):
        web_port, _ = self.byteServer(b"by name")
        socks_port, _ = self.startSOCKS()
        endpoint = clientFromString(
            reactor, f"socks5:host=localhost:port={web_port}:proxyhost=127.0.0.1:proxyport={socks_port}:timeout=20"
        )
        protocol = yield endpoint.connect(Factory.forProtocol(Fetcher))
        data = yield protocol.done
        self.assertTrue(data.endswith(b"by name"))

    @inlineCallbacks
    def test_user_and_password_log_in(self):
        web_port, _ = self.byteServer(b"logged in")
        socks_port, _ = self.startSOCKS(methods=["userpass"], passwd=self.passwordFile())
        endpoint = clientFromString(
            reactor, f"socks5:127.0.0.1:{socks_port}:host=127.0.0.1:port={web_port}:user=bob:password=hunter2"
        )
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.user, "bob")
        data = yield connection.protocol.done
        self.assertTrue(data.endswith(b"logged in"))

    @inlineCallbacks
    def test_credentials_also_offer_none_and_the_proxy_picks(self):
        web_port, _ = self.byteServer(b"anonymous")
        socks_port, _ = self.startSOCKS(methods=["none", "userpass"], passwd=self.passwordFile())
        endpoint = clientFromString(
            reactor, f"socks5:127.0.0.1:{socks_port}:host=127.0.0.1:port={web_port}:user=bob:password=hunter2"
        )
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertIsNone(connection.identity.user)  # the server preferred method 0x00
        data = yield connection.protocol.done
        self.assertTrue(data.endswith(b"anonymous"))

    @inlineCallbacks
    def test_methods_userpass_refuses_an_anonymous_only_proxy(self):
        socks_port, _ = self.startSOCKS()
        endpoint = clientFromString(
            reactor, f"socks5:127.0.0.1:{socks_port}:host=127.0.0.1:port=9:user=bob:password=pw:methods=userpass"
        )
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), NoAcceptableMethod)

    @inlineCallbacks
    def test_wrong_password_fails(self):
        socks_port, _ = self.startSOCKS(methods=["userpass"], passwd=self.passwordFile())
        endpoint = clientFromString(
            reactor, f"socks5:127.0.0.1:{socks_port}:host=127.0.0.1:port=9:user=bob:password=wrong"
        )
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)

    @inlineCallbacks
    def test_proxy_key_chains_two_of_our_servers(self):
        web_port, _ = self.byteServer(b"twice proxied")
        first_port, _ = self.startSOCKS()
        second_port, _ = self.startSOCKS(methods=["userpass"], passwd=self.passwordFile())
        description = (
            f"socks5:host=127.0.0.1:port={web_port}:user=bob:password=hunter2:"
            rf"proxy=socks5\:127.0.0.1\:{first_port}\:host=127.0.0.1\:port={second_port}"
        )
        endpoint = clientFromString(reactor, description)
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.user, "bob")  # the second, outer hop logged in
        data = yield connection.protocol.done
        self.assertTrue(data.endswith(b"twice proxied"))

    @inlineCallbacks
    def test_inner_tcp_endpoint_reaches_the_proxy(self):
        web_port, _ = self.byteServer(b"inner tcp")
        socks_port, _ = self.startSOCKS()
        endpoint = clientFromString(
            reactor, rf"socks5:host=127.0.0.1:port={web_port}:proxy=tcp\:127.0.0.1\:{socks_port}"
        )
        protocol = yield endpoint.connect(Factory.forProtocol(Fetcher))
        data = yield protocol.done
        self.assertTrue(data.endswith(b"inner tcp"))


class SOCKS5GSSAPIParsingTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()

    def parse(self, description: str):
        return clientFromString(self.reactor, description)

    def test_gssapi_offer_and_options(self):
        from txsocksgss.auth.gssapi import GSSAPIClientFactory
        from txsocksgss.wire.gssapi import ProtectionLevel

        endpoint = self.parse(
            "socks5:proxy.example:1080:host=h:port=80:gssapi_protection=integrity:gssapi_accept=integrity,confidentiality"
            ":gssapi_mech=spnego:gssapi_service=socks:gssapi_ccache=/tmp/cc:gssapi_nec=true"
        )
        [gssapi, none] = endpoint.methods
        self.assertIsInstance(gssapi, GSSAPIClientFactory)
        self.assertEqual(gssapi.host, "proxy.example")
        self.assertEqual(gssapi.service, "socks")
        self.assertEqual(gssapi.mechanism, "spnego")
        self.assertEqual(gssapi.ccache, "/tmp/cc")
        self.assertEqual(gssapi.level, ProtectionLevel.INTEGRITY)
        self.assertEqual(gssapi.accept, (ProtectionLevel.INTEGRITY, ProtectionLevel.CONFIDENTIALITY))
        self.assertTrue(gssapi.nec)
        self.assertEqual(none.method, 0)

    def test_methods_gssapi_only(self):
        endpoint = self.parse("socks5:proxy.example:host=h:port=80:methods=gssapi")
        self.assertEqual([m.method for m in endpoint.methods], [1])
        self.assertEqual(endpoint.methods[0].level, 2)

    def test_gssapi_needs_a_host_with_proxy_endpoint(self):
        with self.assertRaises(ValueError) as caught:
            self.parse("socks5:host=h:port=80:methods=gssapi:proxy=tcp\\:127.0.0.1\\:1080")
        self.assertIn("gssapi_host", str(caught.exception))

    def test_bad_gssapi_values(self):
        for description, text in [
            ("socks5:p:host=h:port=80:gssapi_protection=secret", "unknown GSS-API protection level"),
            ("socks5:p:host=h:port=80:gssapi_mech=ntlm", "unknown GSS-API mechanism"),
            ("socks5:p:host=h:port=80:gssapi_nec=maybe", "not true or false"),
        ]:
            with self.assertRaises(ValueError) as caught:
                self.parse(description)
            self.assertIn(text, str(caught.exception))
