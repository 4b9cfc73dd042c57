"""
``socksgss connect`` (txsocksgss.cli.connect and the modules it uses:
proxy_url, client_methods, connect_options, destination, failure_messages,
stdio_tunnel, stdio_datagrams): proxy URL parsing, option
validation and method defaults, endpoint construction, error messages and
exit statuses, the stdio bridge's half-close logic with fakes, and the
program end to end, spawned as a child process against our own server on
127.0.0.1 (CONNECT, socks5h, userpass, failures, BIND, UDP).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import socket
import sys
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import CannotListenError, ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.error import TimeoutError as TwistedTimeoutError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

import txsocksgss
from tests.support import ByteServerFactory, EchoUDP, IntegrationTestCase, StreamCollector
from txsocksgss import cli
from txsocksgss.auth.none import NoAuthClientFactory
from txsocksgss.auth.passwordfile import set_password
from txsocksgss.auth.userpass import UserPassClientFactory
from txsocksgss.cli import connect, stdio_datagrams
from txsocksgss.cli.client_methods import Credentials, build_authenticators, default_methods, parse_proxy_user
from txsocksgss.cli.connect_options import ConnectOptions, Mode, options_from_args
from txsocksgss.cli.console import StderrConsole
from txsocksgss.cli.destination import DestinationLookupError, build_endpoint, resolve_destination
from txsocksgss.cli.failure_messages import describe_error
from txsocksgss.cli.proxy_url import ProxyURL, ProxyURLError, parse_proxy_url
from txsocksgss.cli.status import EXIT_AUTHENTICATION, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError
from txsocksgss.cli.stdio_datagrams import DatagramLines
from txsocksgss.cli.stdio_tunnel import StdioBridge
from txsocksgss.client.endpoints import SOCKS4ClientEndpoint, SOCKS5ClientEndpoint
from txsocksgss.errors import (
    ClientAuthenticationFailed,
    ConnectionNotAllowed,
    GeneralFailure,
    NoAcceptableMethod,
    SOCKS4Rejected,
    TruncatedMessage,
)
from txsocksgss.server.rules import rules_from_table
from txsocksgss.wire.socks4 import SOCKS4Command
from txsocksgss.wire.socks5 import AddressType

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(txsocksgss.__file__)))


# --- proxy URLs ----------------------------------------------------------------


class ProxyURLTests(TestCase):
    def test_socks5_defaults_to_port_1080_and_local_resolution(self) -> None:
        self.assertEqual(parse_proxy_url("socks5://proxy.example"),
                         ProxyURL("socks5", "proxy.example", 1080, None, None, False))

    def test_every_scheme_sets_version_and_who_resolves(self) -> None:
        for scheme, version, remote in [("socks5", 5, False), ("socks5h", 5, True),
                                        ("socks4", 4, False), ("socks4a", 4, True)]:
            url = parse_proxy_url(f"{scheme}://p:1")
            self.assertEqual((url.scheme, url.version, url.remote_dns), (scheme, version, remote))

    def test_scheme_is_case_insensitive(self) -> None:
        self.assertEqual(parse_proxy_url("SOCKS5H://p").scheme, "socks5h")

    def test_explicit_port_trailing_slash_and_empty_port(self) -> None:
        self.assertEqual(parse_proxy_url("socks5://p:9050").port, 9050)
        self.assertEqual(parse_proxy_url("socks5://p:9050/").port, 9050)
        self.assertEqual(parse_proxy_url("socks5://p:").port, 1080)
        self.assertEqual(parse_proxy_url("socks5://p/").host, "p")

    def test_bracketed_ipv6_host(self) -> None:
        url = parse_proxy_url("socks5://[::1]:1081")
        self.assertEqual((url.host, url.port), ("::1", 1081))
        self.assertEqual(parse_proxy_url("socks5h://[2001:db8::1]").host, "2001:db8::1")
        self.assertEqual(parse_proxy_url("socks5://[fe80::1%25eth0]:1").host, "fe80::1%eth0")

    def test_ipv4_host(self) -> None:
        self.assertEqual(parse_proxy_url("socks4://192.0.2.1:1080").host, "192.0.2.1")

    def test_user_and_password_are_percent_decoded(self) -> None:
        url = parse_proxy_url("socks5://b%40b:p%3Aw%25d%C3%A9@h")
        self.assertEqual((url.user, url.password, url.host), ("b@b", "p:w%dé", "h"))

    def test_non_utf8_password_bytes_survive(self) -> None:
        url = parse_proxy_url("socks5://u:%FF%00x@h")
        self.assertEqual(url.password.encode("utf-8", "surrogateescape"), b"\xff\x00x")

    def test_userinfo_ends_at_the_last_at_sign(self) -> None:
        url = parse_proxy_url("socks5://bob:p@ss@h:2")
        self.assertEqual((url.user, url.password, url.host, url.port), ("bob", "p@ss", "h", 2))

    def test_user_without_password_and_empty_password(self) -> None:
        self.assertEqual(parse_proxy_url("socks5://bob@h").password, None)
        self.assertEqual(parse_proxy_url("socks5://bob:@h").password, "")
        self.assertEqual(parse_proxy_url("socks5://@h").user, None)

    def test_bad_urls_are_refused(self) -> None:
        for text in ["", "proxy.example:1080", "http://p", "socks6://p", "socks5:/p", "socks5://",
                     "socks5://:1080", "socks5://u:pw@", "socks5://p:0", "socks5://p:65536",
                     "socks5://p:http", "socks5://p:１２", "socks5://::1", "socks5://::1:1080",
                     "socks5://[::1", "socks5://[nothex]:1", "socks5://[::1]x", "socks5://[::1]:x",
                     "socks5://p/path", "socks5://p?q=1", "socks5://p#f", "socks5://p q",
                     "socks5://p%41"]:
            with self.subTest(text=text):
                self.assertRaises(ProxyURLError, parse_proxy_url, text)

    def test_messages_and_repr_never_show_the_password(self) -> None:
        url = parse_proxy_url("socks5://bob:hunter2@[::1]")
        self.assertNotIn("hunter2", repr(url))
        self.assertEqual(url.display(), "socks5://bob@[::1]:1080")
        for text in ["socks5://bob:hunter2@p:port", "socks5://bob:hunter2@", "socks5://bob:hunter2@p/x"]:
            error = self.assertRaises(ProxyURLError, parse_proxy_url, text)
            self.assertNotIn("hunter2", str(error))


# --- options and methods -----------------------------------------------------------


def parse_args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["connect", *argv])


def options(*argv: str) -> ConnectOptions:
    return options_from_args(parse_args(*argv), local_user=lambda: "localuser")


class MethodTests(TestCase):
    def test_default_methods(self) -> None:
        self.assertEqual(default_methods(False), ("none",))
        self.assertEqual(default_methods(True), ("userpass", "none"))

    def test_proxy_user_splits_at_the_first_colon(self) -> None:
        self.assertEqual(parse_proxy_user("bob:a:b"), Credentials("bob", "a:b"))
        self.assertEqual(parse_proxy_user("bob"), Credentials("bob", None))
        self.assertNotIn("a:b", repr(parse_proxy_user("bob:a:b")))

    def test_no_credentials_offers_none(self) -> None:
        self.assertEqual(options("--proxy", "socks5://p", "h", "80").methods, ("none",))

    def test_credentials_in_the_url_offer_userpass_then_none(self) -> None:
        o = options("--proxy", "socks5://bob:pw@p", "h", "80")
        self.assertEqual(o.methods, ("userpass", "none"))
        self.assertEqual(o.credentials, Credentials("bob", "pw"))

    def test_proxy_user_overrides_the_url(self) -> None:
        o = options("--proxy", "socks5://bob:pw@p", "--proxy-user", "al%41ce:x:y", "h", "80")
        self.assertEqual(o.credentials, Credentials("al%41ce", "x:y"))  # no percent-decoding
        self.assertEqual(o.credentials.password, "x:y")
        self.assertEqual(o.methods, ("userpass", "none"))

    def test_explicit_methods_keep_their_order_without_duplicates(self) -> None:
        o = options("--proxy", "socks5://bob:pw@p", "--method", "none", "--method", "userpass",
                    "--method", "none", "h", "80")
        self.assertEqual(o.methods, ("none", "userpass"))
        factories = build_authenticators(o.methods, o.credentials)
        self.assertEqual([type(f) for f in factories], [NoAuthClientFactory, UserPassClientFactory])

    def test_userpass_without_credentials_is_a_usage_error(self) -> None:
        self.assertRaises(UsageError, options, "--proxy", "socks5://p", "--method", "userpass", "h", "80")

    def test_user_without_password_is_a_usage_error_naming_no_secret(self) -> None:
        error = self.assertRaises(UsageError, options, "--proxy", "socks5://p", "--proxy-user", "bob", "h", "80")
        self.assertIn("no password", str(error))

    def test_too_long_password_is_a_usage_error(self) -> None:
        self.assertRaises(UsageError, options, "--proxy", "socks5://p", "--proxy-user", "bob:" + "x" * 256,
                          "h", "80")

    def test_unknown_method_is_refused_by_the_parser(self) -> None:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.assertEqual(cli.main(["connect", "--proxy", "socks5://p", "--method", "kerberos", "h", "1"]),
                         EXIT_USAGE)

    def test_socks4_ignores_methods_and_takes_the_user_id(self) -> None:
        o = options("--proxy", "socks4://p", "--method", "userpass", "h", "80")
        self.assertEqual((o.methods, o.userid), ((), "localuser"))
        self.assertIn("--method is ignored", o.warnings[0])
        self.assertEqual(options("--proxy", "socks4a://bob@p", "h", "80").userid, "bob")
        self.assertEqual(options("--proxy", "socks4a://bob@p", "--userid", "carol", "h", "80").userid, "carol")

    def test_socks4_refuses_udp_and_ipv6(self) -> None:
        self.assertRaises(UsageError, options, "--proxy", "socks4://p", "--udp", "h", "53")
        self.assertRaises(UsageError, options, "--proxy", "socks4a://p", "::1", "80")

    def test_modes_ports_and_timeout(self) -> None:
        self.assertEqual(options("--proxy", "socks5://p", "--bind", "0.0.0.0", "0").mode, Mode.BIND)
        self.assertEqual(options("--proxy", "socks5://p", "--udp", "h", "53").mode, Mode.UDP)
        self.assertEqual(options("--proxy", "socks5://p", "[::1]", "80").host, "::1")
        self.assertEqual(options("--proxy", "socks5://p", "--timeout", "2.5", "h", "80").timeout, 2.5)
        self.assertRaises(UsageError, options, "--proxy", "socks5://p", "h", "0")
        self.assertRaises(UsageError, options, "--proxy", "socks5://p", "h", "70000")
        self.assertRaises(UsageError, options, "--proxy", "socks5://p", "h", "http")
        self.assertRaises(UsageError, options, "--proxy", "socks5://p", "--timeout", "0", "h", "80")

    def test_usage_error_in_process_returns_2_without_the_password(self) -> None:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        status = cli.main(["connect", "--proxy", "socks5://bob:hunter2@p:nope", "h", "80"])
        self.assertEqual(status, EXIT_USAGE)
        self.assertTrue(stderr.getvalue().startswith("socksgss connect: error: "), stderr.getvalue())
        self.assertNotIn("hunter2", stderr.getvalue())


# --- endpoints and resolution --------------------------------------------------------


class FakeResolver:
    """An IHostnameResolver that answers at once with ``answers`` and records the calls."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, list[type]]] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> None:
        self.calls.append((hostName, list(addressTypes)))
        receiver.resolutionBegan(None)
        for address in self.answers:
            if type(address) in addressTypes:
                receiver.addressResolved(address)
        receiver.resolutionComplete()


class FakeReactor:
    def __init__(self, answers: list[Any]) -> None:
        self.nameResolver = FakeResolver(answers)


class EndpointTests(TestCase):
    def test_socks5_endpoint_reaches_the_proxy_and_offers_the_methods(self) -> None:
        proxy = parse_proxy_url("socks5://[::1]:1081")
        methods = [UserPassClientFactory("bob", "pw"), NoAuthClientFactory()]
        endpoint = build_endpoint(reactor, proxy, "2001:db8::5", 443, authenticators=methods, timeout=7)
        self.assertIsInstance(endpoint, SOCKS5ClientEndpoint)
        self.assertEqual(repr(endpoint.proxy), "<HostnameEndpoint [::1]:1081>")
        self.assertEqual(endpoint.methods, tuple(methods))
        self.assertEqual((endpoint.destination.type, endpoint.destination.port), (AddressType.IPV6, 443))
        self.assertEqual(endpoint.timeout, 7)

    def test_socks5h_endpoint_sends_the_name(self) -> None:
        endpoint = build_endpoint(reactor, parse_proxy_url("socks5h://p"), "example.com", 80)
        self.assertEqual((endpoint.destination.type, endpoint.destination.host),
                         (AddressType.DOMAIN, "example.com"))
        self.assertEqual(repr(endpoint.proxy), "<HostnameEndpoint p:1080>")

    def test_socks4_endpoint_with_an_address_and_user_id(self) -> None:
        endpoint = build_endpoint(reactor, parse_proxy_url("socks4://192.0.2.1:1080"), "198.51.100.7", 25,
                                  userid="alice")
        self.assertIsInstance(endpoint, SOCKS4ClientEndpoint)
        self.assertEqual(endpoint.userid, b"alice")
        request = endpoint.handshake(SOCKS4Command.CONNECT, None).request
        self.assertEqual((request.address, request.port, request.hostname, request.userid),
                         ("198.51.100.7", 25, None, b"alice"))

    def test_socks4a_endpoint_sends_the_name(self) -> None:
        endpoint = build_endpoint(reactor, parse_proxy_url("socks4a://p"), "example.com", 80, userid="")
        request = endpoint.handshake(SOCKS4Command.CONNECT, None).request
        self.assertEqual((request.address, request.hostname), ("0.0.0.1", "example.com"))
        bind = endpoint.handshake(SOCKS4Command.BIND, None).request
        self.assertEqual(bind.command, SOCKS4Command.BIND)

    def test_socks4_cannot_carry_ipv6(self) -> None:
        self.assertRaises(UsageError, build_endpoint, reactor, parse_proxy_url("socks4://p"), "::1", 80)

    def resolve(self, url: str, host: str, answers: list[Any]) -> tuple[Any, FakeReactor]:
        fake = FakeReactor(answers)
        d = resolve_destination(fake, parse_proxy_url(url), host)
        return d, fake

    def test_socks5_resolves_locally_ipv6_allowed(self) -> None:
        d, fake = self.resolve("socks5://p", "example.com",
                               [IPv6Address("TCP", "2001:db8::1", 0), IPv4Address("TCP", "192.0.2.1", 0)])
        self.assertEqual(self.successResultOf(d), "2001:db8::1")
        self.assertEqual(fake.nameResolver.calls, [("example.com", [IPv4Address, IPv6Address])])

    def test_socks4_resolves_locally_to_ipv4_only(self) -> None:
        d, fake = self.resolve("socks4://p", "example.com",
                               [IPv6Address("TCP", "2001:db8::1", 0), IPv4Address("TCP", "192.0.2.1", 0)])
        self.assertEqual(self.successResultOf(d), "192.0.2.1")
        self.assertEqual(fake.nameResolver.calls, [("example.com", [IPv4Address])])

    def test_remote_dns_schemes_and_literals_are_not_resolved(self) -> None:
        for url, host in [("socks5h://p", "example.com"), ("socks4a://p", "example.com"),
                          ("socks5://p", "192.0.2.1"), ("socks5://p", "::1")]:
            d, fake = self.resolve(url, host, [])
            self.assertEqual(self.successResultOf(d), host)
            self.assertEqual(fake.nameResolver.calls, [])

    def test_a_name_without_addresses_fails(self) -> None:
        d, _ = self.resolve("socks4://p", "v6only.example", [IPv6Address("TCP", "2001:db8::1", 0)])
        failure = self.failureResultOf(d, DestinationLookupError)
        self.assertEqual(str(failure.value), "cannot resolve v6only.example")


# --- error messages ------------------------------------------------------------------------


class DescribeErrorTests(TestCase):
    socks5 = parse_proxy_url("socks5://bob:hunter2@127.0.0.1:1080")
    socks4 = parse_proxy_url("socks4://127.0.0.1:1080")

    def test_socks5_reply_names_the_reply(self) -> None:
        self.assertEqual(describe_error(ConnectionNotAllowed("whatever (CONNECT h:1)"), self.socks5),
                         ("proxy refused: connection not allowed by ruleset (SOCKS 5 reply 02)", EXIT_FAILURE))
        self.assertEqual(describe_error(GeneralFailure(), self.socks5)[0],
                         "proxy refused: general SOCKS server failure (SOCKS 5 reply 01)")

    def test_socks4_reply_names_the_reply(self) -> None:
        self.assertEqual(describe_error(SOCKS4Rejected("x", 91), self.socks4),
                         ("proxy refused: request rejected or failed (SOCKS 4 reply 91)", EXIT_FAILURE))

    def test_authentication_failures_exit_3(self) -> None:
        message, status = describe_error(ClientAuthenticationFailed("proxy rejected the user name or password "
                                                                    "(status 0x01)"), self.socks5)
        self.assertEqual(status, EXIT_AUTHENTICATION)
        self.assertTrue(message.startswith("authentication failed: proxy rejected"))
        self.assertEqual(describe_error(NoAcceptableMethod(), self.socks5)[1], EXIT_AUTHENTICATION)

    def test_connection_failures_exit_1_without_the_password(self) -> None:
        for error in [ConnectionRefusedError("111: Connection refused"), TwistedTimeoutError(),
                      TruncatedMessage("the proxy closed the connection during the reply")]:
            message, status = describe_error(error, self.socks5)
            self.assertEqual(status, EXIT_FAILURE)
            self.assertNotIn("hunter2", message)
        self.assertTrue(describe_error(ConnectionRefusedError(), self.socks5)[0]
                        .startswith("cannot reach the proxy 127.0.0.1:1080: "))

    def test_handshake_timeout(self) -> None:
        error = TwistedTimeoutError("no answer from the SOCKS proxy within 5 seconds (during the reply)")
        self.assertEqual(describe_error(error, self.socks5),
                         ("timed out: no answer from the SOCKS proxy within 5 seconds (during the reply)",
                          EXIT_FAILURE))


class PrintableHostTests(TestCase):
    def test_an_unspecified_bound_address_means_the_proxy_address(self) -> None:
        self.assertEqual(connect._printable_host("0.0.0.0", lambda: "192.0.2.9"), "192.0.2.9")
        self.assertEqual(connect._printable_host("::", lambda: "2001:db8::9"), "2001:db8::9")
        self.assertEqual(connect._printable_host("192.0.2.1", lambda: "x"), "192.0.2.1")
        self.assertEqual(connect._printable_host("proxy.example", lambda: "x"), "proxy.example")


# --- the stdio bridge, with fakes ------------------------------------------------------------


class FakeTransport:
    """Records what the bridge asks of a transport."""

    def __init__(self) -> None:
        self.written = b""
        self.calls: list[str] = []
        self.producer: Any = None

    def write(self, data: bytes) -> None:
        self.written += data

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.calls.append("registerProducer")

    def unregisterProducer(self) -> None:
        self.producer = None
        self.calls.append("unregisterProducer")

    def loseWriteConnection(self) -> None:
        self.calls.append("loseWriteConnection")

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")


class BridgeTests(TestCase):
    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.stdio = FakeTransport()
        self.stdio_protocol: Any = None

        def open_stdio(protocol: Protocol) -> FakeTransport:
            self.stdio_protocol = protocol
            return self.stdio

        self.bridge = StdioBridge(open_stdio, StderrConsole(False, self.stderr))
        self.tunnel = FakeTransport()
        self.tunnel_protocol = self.bridge.factory().buildProtocol(None)
        self.tunnel_protocol.makeConnection(self.tunnel)

    def test_bytes_flow_both_ways_with_flow_control(self) -> None:
        self.assertIs(self.tunnel.producer, self.stdio)
        self.assertIs(self.stdio.producer, self.tunnel)
        self.stdio_protocol.dataReceived(b"up")
        self.tunnel_protocol.dataReceived(b"down")
        self.assertEqual((self.tunnel.written, self.stdio.written), (b"up", b"down"))

    def test_stdin_eof_half_closes_the_tunnel(self) -> None:
        self.stdio_protocol.readConnectionLost()
        self.assertEqual(self.tunnel.calls[-2:], ["unregisterProducer", "loseWriteConnection"])
        self.assertNoResult(self.bridge.finished)

    def test_remote_close_flushes_stdout_then_exits_0(self) -> None:
        self.tunnel_protocol.readConnectionLost()
        self.assertEqual(self.tunnel.calls[-1], "loseConnection")
        self.tunnel_protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.stdio.calls[-1], "loseConnection")
        self.assertNoResult(self.bridge.finished)
        self.stdio_protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(self.bridge.finished), EXIT_OK)

    def test_lost_connection_exits_1_with_a_message(self) -> None:
        self.tunnel_protocol.connectionLost(Failure(ConnectionLost("reset")))
        self.stdio_protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(self.bridge.finished), EXIT_FAILURE)
        self.assertTrue(self.stderr.getvalue().startswith("socksgss: connection lost: "))

    def test_closed_stdout_closes_the_tunnel(self) -> None:
        self.stdio_protocol.writeConnectionLost()
        self.assertEqual(self.tunnel.calls[-1], "loseConnection")
        self.tunnel_protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(self.bridge.finished), EXIT_OK)


class UnusableStdioTests(TestCase):
    def test_stdio_that_cannot_be_opened_closes_the_tunnel_and_exits_1(self) -> None:
        stderr = io.StringIO()

        def open_stdio(protocol: Protocol) -> Any:
            raise OSError(22, "Invalid argument")

        bridge = StdioBridge(open_stdio, StderrConsole(False, stderr))
        tunnel = FakeTransport()
        protocol = bridge.factory().buildProtocol(None)
        protocol.makeConnection(tunnel)
        self.assertEqual(tunnel.calls, ["loseConnection"])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(bridge.finished), EXIT_FAILURE)
        self.assertEqual(stderr.getvalue(), "socksgss: cannot use standard input and output: Invalid argument\n")


class FakeAssociation:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.closed: Deferred[None] = Deferred()

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > 10:
            raise OSError("message too long")
        self.sent.append((data, addr))

    def close(self) -> Deferred[None]:
        if not self.closed.called:
            self.closed.callback(None)
        return self.closed


class DatagramLinesTests(TestCase):
    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.stdio = FakeTransport()
        self.association = FakeAssociation()
        self.lines = DatagramLines(("192.0.2.1", 53), StderrConsole(False, self.stderr))
        self.stdio_protocol: Any = None

        def open_stdio(protocol: Protocol) -> FakeTransport:
            self.stdio_protocol = protocol
            return self.stdio

        self.lines.attach(self.association, open_stdio)

    def test_each_line_is_one_datagram_and_eof_sends_the_rest(self) -> None:
        self.stdio_protocol.dataReceived(b"one\ntw")
        self.stdio_protocol.dataReceived(b"o\r\n\nthree")
        self.assertEqual([d for d, _ in self.association.sent], [b"one", b"two", b""])
        self.stdio_protocol.readConnectionLost()
        self.assertEqual(self.association.sent[-1], (b"three", ("192.0.2.1", 53)))
        self.assertEqual(self.stdio.calls[-1], "loseConnection")
        self.stdio_protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(self.lines.finished), EXIT_OK)

    def test_received_datagrams_are_lines_on_stdout(self) -> None:
        self.lines.datagramReceived(b"answer", ("192.0.2.1", 53))
        self.assertEqual(self.stdio.written, b"answer\n")

    def test_a_datagram_that_cannot_be_sent_is_reported(self) -> None:
        self.stdio_protocol.dataReceived(b"much too long for the fake\nok\n")
        self.assertEqual([d for d, _ in self.association.sent], [b"ok"])
        self.assertIn("datagram of 26 bytes not sent", self.stderr.getvalue())

    def test_a_line_too_long_for_udp_is_dropped_whole(self) -> None:
        self.patch(stdio_datagrams, "MAX_LINE", 8)
        self.stdio_protocol.dataReceived(b"123456789")
        self.stdio_protocol.dataReceived(b"abc\nok\n")
        self.stdio_protocol.dataReceived(b"0123456789")
        self.stdio_protocol.readConnectionLost()
        self.assertEqual([d for d, _ in self.association.sent], [b"ok"])
        self.assertEqual(self.stderr.getvalue().count("longer than 8 bytes"), 2)

    def test_the_proxy_ending_the_association_exits_1(self) -> None:
        self.association.closed.callback(None)
        self.stdio_protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(self.lines.finished), EXIT_FAILURE)
        self.assertIn("the proxy ended the UDP association", self.stderr.getvalue())


# --- end to end: the program as a child process -------------------------------------------------


class Child(ProcessProtocol):
    """A spawned ``socksgss connect``: collects its output and waits for conditions on it."""

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.status: int | None = None
        self._waiters: list[tuple[Callable[["Child"], Any], str, Deferred[Any]]] = []
        self._exit_waiters: list[Deferred[int]] = []

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        self._poll()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        self._poll()

    def processEnded(self, reason: Failure) -> None:
        self.status = reason.value.exitCode
        self._poll()
        waiters, self._exit_waiters = self._exit_waiters, []
        for waiter in waiters:
            waiter.callback(self.status)

    def when(self, predicate: Callable[["Child"], Any], what: str) -> Deferred[Any]:
        """Fires with ``predicate(self)`` once true; fails if the child ends first."""
        d: Deferred[Any] = Deferred()
        self._waiters.append((predicate, what, d))
        self._poll()
        return d

    def stderrLine(self, pattern: str) -> Deferred[re.Match[bytes]]:
        regex = re.compile(pattern.encode(), re.MULTILINE)
        return self.when(lambda child: regex.search(child.stderr), f"a stderr line matching {pattern!r}")

    def stdoutOf(self, count: int) -> Deferred[bytes]:
        return self.when(lambda child: child.stdout if len(child.stdout) >= count else None,
                         f"{count} bytes on stdout")

    def exited(self) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        if self.status is not None:
            d.callback(self.status)
        else:
            self._exit_waiters.append(d)
        return d

    def _poll(self) -> None:
        for item in list(self._waiters):
            predicate, what, d = item
            value = predicate(self)
            if value:
                self._waiters.remove(item)
                d.callback(value)
            elif self.status is not None:
                self._waiters.remove(item)
                d.errback(AssertionError(
                    f"socksgss connect exited with {self.status} before {what}; "
                    f"stdout {self.stdout[:200]!r}, stderr {self.stderr!r}"))


@implementer(IHalfCloseableProtocol)
class AnswerAtEOF(Protocol):
    """Reads until the client half-closes, then answers with what it got, and closes."""

    def connectionMade(self) -> None:
        self.received = b""
        self.factory.open += 1

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.transport.write(b"got %d bytes: %s" % (len(self.received), self.received[::-1]))
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open -= 1
        if not self.factory.open:
            waiters, self.factory.waiters = self.factory.waiters, []
            for waiter in waiters:
                waiter.callback(None)


class AnswerAtEOFFactory(Factory):
    protocol = AnswerAtEOF
    noisy = False

    def __init__(self) -> None:
        self.open = 0
        self.waiters: list[Deferred[None]] = []

    def whenClosed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.open:
            self.waiters.append(d)
        else:
            d.callback(None)
        return d


def http_response(body: bytes) -> bytes:
    """What tests.support's byte server sends for ``body``."""
    return (b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)


REQUEST = b"GET / HTTP/1.0\r\n\r\n"


class EndToEndTests(IntegrationTestCase):
    timeout = 60

    def spawn(self, *args: str) -> Child:
        child = Child()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "txsocksgss.cli", "connect", *args]
        reactor.spawnProcess(child, sys.executable, argv, env=env)

        def stop() -> Deferred[int]:
            if child.status is None:
                child.transport.signalProcess("KILL")
            return child.exited()

        self.addCleanup(stop)
        return child

    def passwordFile(self, user: str = "bob", password: bytes = b"hunter2") -> str:
        path = self.mktemp()
        set_password(path, user, password, n=2**10)
        return path

    def byteServerOnLocalhost(self, body: bytes) -> int:
        """A byte server on 127.0.0.1 and, when it can, on ::1 with the same port."""
        factory = ByteServerFactory(body)
        port = self.listen(factory)
        self.addCleanup(factory.whenClosed)
        try:
            v6 = reactor.listenTCP(port, factory, interface="::1")
        except CannotListenError:
            return port
        self.addCleanup(v6.stopListening)
        return port

    @inlineCallbacks
    def test_connect_fetches_exact_bytes(self) -> Any:
        body = os.urandom(1_000_000)
        web_port, _ = self.byteServer(body)
        socks_port, _ = self.startSOCKS()
        child = self.spawn("--proxy", f"socks5://127.0.0.1:{socks_port}", "127.0.0.1", str(web_port))
        child.transport.write(REQUEST)
        status = yield child.exited()
        self.assertEqual((status, child.stderr), (EXIT_OK, b""))
        self.assertEqual(child.stdout, http_response(body))

    @inlineCallbacks
    def test_stdin_eof_half_closes_and_the_answer_still_arrives(self) -> Any:
        server = AnswerAtEOFFactory()
        port = self.listen(server)
        self.addCleanup(server.whenClosed)
        socks_port, _ = self.startSOCKS()
        child = self.spawn("--proxy", f"socks5h://127.0.0.1:{socks_port}", "127.0.0.1", str(port))
        child.transport.write(b"hello, ")
        child.transport.write(b"world")
        child.transport.closeStdin()
        status = yield child.exited()
        self.assertEqual((status, child.stderr), (EXIT_OK, b""))
        self.assertEqual(child.stdout, b"got 12 bytes: dlrow ,olleh")

    @inlineCallbacks
    def test_socks5h_sends_the_name_and_socks5_resolves_it(self) -> Any:
        web_port = self.byteServerOnLocalhost(b"resolved here")
        rules = rules_from_table({"rule": [{"action": "deny", "to": ["localhost"]}], "default": "allow"})
        socks_port, _ = self.startSOCKS(rules=rules)
        by_name = self.spawn("--proxy", f"socks5h://127.0.0.1:{socks_port}", "localhost", str(web_port))
        status = yield by_name.exited()
        self.assertEqual(status, EXIT_FAILURE)
        self.assertEqual(by_name.stderr,
                         b"socksgss: proxy refused: connection not allowed by ruleset (SOCKS 5 reply 02)\n")
        local = self.spawn("-v", "--proxy", f"socks5://127.0.0.1:{socks_port}", "localhost", str(web_port))
        local.transport.write(REQUEST)
        status = yield local.exited()
        self.assertEqual(status, EXIT_OK, local.stderr)
        self.assertEqual(local.stdout, http_response(b"resolved here"))
        self.assertRegex(local.stderr, rb"(?m)^socksgss: resolved localhost to (127\.0\.0\.1|::1)$")

    @inlineCallbacks
    def test_socks5h_name_resolved_by_the_proxy(self) -> Any:
        web_port = self.byteServerOnLocalhost(b"by name")
        socks_port, _ = self.startSOCKS()
        child = self.spawn("-v", "--proxy", f"socks5h://127.0.0.1:{socks_port}", "localhost", str(web_port))
        child.transport.write(REQUEST)
        status = yield child.exited()
        self.assertEqual(status, EXIT_OK, child.stderr)
        self.assertEqual(child.stdout, http_response(b"by name"))
        self.assertNotIn(b"resolved", child.stderr)

    @inlineCallbacks
    def test_userpass_with_proxy_user(self) -> Any:
        web_port, _ = self.byteServer(b"authenticated")
        socks_port, _ = self.startSOCKS(methods=["userpass"], passwd=self.passwordFile())
        child = self.spawn("-v", "--proxy", f"socks5://127.0.0.1:{socks_port}", "--proxy-user", "bob:hunter2",
                           "127.0.0.1", str(web_port))
        child.transport.write(REQUEST)
        status = yield child.exited()
        self.assertEqual(status, EXIT_OK, child.stderr)
        self.assertEqual(child.stdout, http_response(b"authenticated"))
        self.assertRegex(child.stderr, rb"(?m)^socksgss: method userpass as bob$")
        self.assertRegex(child.stderr, rb"(?m)^socksgss: connected to 127\.0\.0\.1 port \d+; "
                                       rb"the proxy bound 127\.0\.0\.1 \d+$")
        self.assertNotIn(b"hunter2", child.stderr)

    @inlineCallbacks
    def test_userpass_in_the_url_is_percent_decoded(self) -> Any:
        web_port, _ = self.byteServer(b"decoded")
        path = self.passwordFile("bob", b"p@ss:w%rd")
        socks_port, _ = self.startSOCKS(methods=["userpass"], passwd=path)
        child = self.spawn("--proxy", f"socks5://bob:p%40ss%3Aw%25rd@127.0.0.1:{socks_port}",
                           "127.0.0.1", str(web_port))
        child.transport.write(REQUEST)
        status = yield child.exited()
        self.assertEqual((status, child.stderr), (EXIT_OK, b""))
        self.assertEqual(child.stdout, http_response(b"decoded"))

    @inlineCallbacks
    def test_bad_password_exits_3(self) -> Any:
        socks_port, _ = self.startSOCKS(methods=["userpass"], passwd=self.passwordFile())
        child = self.spawn("--proxy", f"socks5://bob:wrongpass@127.0.0.1:{socks_port}", "127.0.0.1", "9")
        status = yield child.exited()
        self.assertEqual(status, EXIT_AUTHENTICATION)
        self.assertEqual(child.stderr, b"socksgss: authentication failed: proxy rejected the user name "
                                       b"or password (status 0x01)\n")
        self.assertNotIn(b"wrongpass", child.stderr)

    @inlineCallbacks
    def test_no_acceptable_method_exits_3(self) -> Any:
        socks_port, _ = self.startSOCKS(methods=["userpass"], passwd=self.passwordFile())
        child = self.spawn("--proxy", f"socks5://127.0.0.1:{socks_port}", "127.0.0.1", "9")
        status = yield child.exited()
        self.assertEqual(status, EXIT_AUTHENTICATION)
        self.assertTrue(child.stderr.startswith(b"socksgss: authentication failed: the proxy accepts none"),
                        child.stderr)

    @inlineCallbacks
    def test_denied_exits_1_naming_the_reply(self) -> Any:
        rules = rules_from_table({"rule": [{"action": "deny", "ports": [7]}], "default": "allow"})
        socks_port, _ = self.startSOCKS(rules=rules)
        child = self.spawn("--proxy", f"socks5://127.0.0.1:{socks_port}", "127.0.0.1", "7")
        status = yield child.exited()
        self.assertEqual((status, child.stdout), (EXIT_FAILURE, b""))
        self.assertEqual(child.stderr,
                         b"socksgss: proxy refused: connection not allowed by ruleset (SOCKS 5 reply 02)\n")

    @inlineCallbacks
    def test_unreachable_proxy_exits_1(self) -> Any:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        child = self.spawn("--proxy", f"socks5://127.0.0.1:{port}", "127.0.0.1", "80")
        status = yield child.exited()
        self.assertEqual(status, EXIT_FAILURE)
        self.assertTrue(child.stderr.startswith(f"socksgss: cannot reach the proxy 127.0.0.1:{port}: ".encode()),
                        child.stderr)
        self.assertEqual(child.stderr.count(b"\n"), 1)

    @inlineCallbacks
    def test_silent_proxy_times_out(self) -> Any:
        closed: Deferred[None] = Deferred()

        class SilentProxy(Protocol):
            def connectionLost(self, reason: Any = None) -> None:
                closed.callback(None)

        port = self.listen(Factory.forProtocol(SilentProxy))
        child = self.spawn("--timeout", "0.5", "--proxy", f"socks5://127.0.0.1:{port}", "127.0.0.1", "80")
        status = yield child.exited()
        yield closed
        self.assertEqual(status, EXIT_FAILURE)
        self.assertEqual(child.stderr, b"socksgss: timed out: no answer from the SOCKS proxy within 0.5 "
                                       b"seconds (during the method selection)\n")

    @inlineCallbacks
    def test_a_proxy_that_is_not_socks_exits_1(self) -> Any:
        closed: Deferred[None] = Deferred()

        class HTTPProxy(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")

            def connectionLost(self, reason: Any = None) -> None:
                closed.callback(None)

        port = self.listen(Factory.forProtocol(HTTPProxy))
        child = self.spawn("--proxy", f"socks5://127.0.0.1:{port}", "127.0.0.1", "80")
        status = yield child.exited()
        yield closed
        self.assertEqual(status, EXIT_FAILURE)
        self.assertTrue(child.stderr.startswith(b"socksgss: proxy protocol error: "), child.stderr)
        self.assertEqual(child.stderr.count(b"\n"), 1, child.stderr)

    @inlineCallbacks
    def test_usage_error_exits_2(self) -> Any:
        child = self.spawn("--proxy", "socks5://bob:hunter2@[::1", "127.0.0.1", "80")
        status = yield child.exited()
        self.assertEqual(status, EXIT_USAGE)
        self.assertEqual(child.stderr, b"socksgss connect: error: an IPv6 address opened with '[' has no ']'\n")

    @inlineCallbacks
    def test_bind_end_to_end(self) -> Any:
        socks_port, _ = self.startSOCKS()
        child = self.spawn("--bind", "--proxy", f"socks5://127.0.0.1:{socks_port}", "0.0.0.0", "0")
        bound = yield child.stderrLine(r"^bound (\S+) (\d+)\n")
        host, port = bound.group(1).decode(), int(bound.group(2))
        self.assertEqual(host, "127.0.0.1")
        peer = StreamCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, host, port), peer)
        accepted = yield child.stderrLine(r"^accepted (\S+) (\d+)\n")
        self.assertEqual((accepted.group(1), int(accepted.group(2))),
                         (b"127.0.0.1", peer.transport.getHost().port))
        peer.transport.write(b"from the peer\n")
        data = yield child.stdoutOf(14)
        self.assertEqual(data, b"from the peer\n")
        child.transport.write(b"to the peer\n")
        data = yield peer.waitFor(12)
        self.assertEqual(data, b"to the peer\n")
        child.transport.closeStdin()  # half-closes toward the peer, which then closes
        yield peer.lost
        status = yield child.exited()
        self.assertEqual(status, EXIT_OK)
        self.assertEqual(child.stderr, f"bound {host} {port}\n{accepted.group(0).decode()}".encode())

    @inlineCallbacks
    def test_udp_end_to_end(self) -> Any:
        echo_port = self.listenUDP(EchoUDP())
        socks_port, _ = self.startSOCKS()
        child = self.spawn("--udp", "--proxy", f"socks5://127.0.0.1:{socks_port}", "127.0.0.1", str(echo_port))
        child.transport.write(b"hello\n")
        data = yield child.stdoutOf(len(b"echo:hello\n"))
        self.assertEqual(data, b"echo:hello\n")
        child.transport.write(b"second line\r\n")
        data = yield child.stdoutOf(len(b"echo:hello\necho:second line\n"))
        self.assertEqual(data, b"echo:hello\necho:second line\n")
        child.transport.closeStdin()
        status = yield child.exited()
        self.assertEqual((status, child.stderr), (EXIT_OK, b""))
