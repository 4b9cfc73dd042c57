"""
Limits and defences: the sans-IO `SessionLimits` on its own, every limit on
the server protocol with MemoryReactorClock and StringTransport (sessions
overall, per client, negotiating, the authentication-failure cool-down, the
buffers), slow clients cut off by the negotiation timeout, the settings
(Config, TOML, twistd options), and real sockets on 127.0.0.1 for a refused
connection and a slowloris client.
"""

from __future__ import annotations


import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import error as ierror
from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.helpers.fakes import FakeResolver, HalfCloseableStringTransport, HangingResolver
from tests.helpers.harness import connect_request, udp_session
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.logs import capture_logs, lines_with
from txsocksgss.auth.conversation import AuthStep
from txsocksgss.auth.none import NoAuthServerFactory
from txsocksgss.auth.userpass import SOCKSUserRealm, UserPassServerFactory
from txsocksgss.errors import ConfigError
from txsocksgss.interfaces import IServerAuthenticator, IServerAuthenticatorFactory
from txsocksgss.server.config import Config
from txsocksgss.server.limits import (
    LimitSettings,
    Refusal,
    RefusalLog,
    RefusalReason,
    SessionLimits,
    SessionTicket,
    client_key,
)
from txsocksgss.server.protocol import ServerContext, SessionState, SOCKSServerFactory
from txsocksgss.server.rules import ALLOW_ALL
from txsocksgss.server.service import makeServerFactory
from txsocksgss.tap import Options
from txsocksgss.wire.socks5 import Address
from txsocksgss.wire.udp import UDPDatagram
from txsocksgss.wire.userpass import UserPassRequest


# --- the sans-IO class -----------------------------------------------------------


class SessionLimitsTests(SynchronousTestCase):
    def test_unlimited_by_default(self):
        limits = SessionLimits()
        tickets = [limits.admit("192.0.2.1", 0.0) for _ in range(5000)]
        self.assertTrue(all(isinstance(t, SessionTicket) for t in tickets))
        self.assertEqual((limits.sessions, limits.negotiating, limits.sessionsOf("192.0.2.1")), (5000, 5000, 5000))

    def test_max_sessions_refuses_then_admits_after_a_release(self):
        limits = SessionLimits(LimitSettings(max_sessions=2))
        first = limits.admit("192.0.2.1", 0.0)
        limits.admit("192.0.2.2", 0.0)
        refusal = limits.admit("192.0.2.3", 0.0)
        self.assertIsInstance(refusal, Refusal)
        self.assertIs(refusal.reason, RefusalReason.SESSIONS)
        self.assertEqual(limits.sessions, 2)  # a refusal takes no place
        first.release()
        self.assertIsInstance(limits.admit("192.0.2.3", 0.0), SessionTicket)

    def test_per_client_limit_leaves_other_clients_alone(self):
        limits = SessionLimits(LimitSettings(max_sessions_per_client=2))
        limits.admit("192.0.2.1", 0.0)
        limits.admit("192.0.2.1", 0.0)
        refusal = limits.admit("192.0.2.1", 0.0)
        self.assertIs(refusal.reason, RefusalReason.PER_CLIENT)
        self.assertIsInstance(limits.admit("192.0.2.2", 0.0), SessionTicket)

    def test_ipv4_mapped_address_counts_as_the_ipv4_address(self):
        limits = SessionLimits(LimitSettings(max_sessions_per_client=1))
        limits.admit("192.0.2.1", 0.0)
        self.assertIs(limits.admit("::ffff:192.0.2.1", 0.0).reason, RefusalReason.PER_CLIENT)
        self.assertEqual(client_key("::FFFF:192.0.2.1"), "192.0.2.1")
        self.assertEqual(client_key("2001:DB8::1"), "2001:db8::1")
        self.assertIsNone(client_key(None))
        self.assertIsNone(client_key("/tmp/socket"))

    def test_clients_without_an_address_only_meet_the_overall_limits(self):
        limits = SessionLimits(LimitSettings(max_sessions=3, max_sessions_per_client=1, auth_fail_limit=1))
        for _ in range(3):
            self.assertIsInstance(limits.admit(None, 0.0), SessionTicket)
        self.assertIs(limits.admit(None, 0.0).reason, RefusalReason.SESSIONS)
        self.assertFalse(limits.authenticationFailed(None, 0.0))

    def test_negotiating_limit_counts_until_negotiated(self):
        limits = SessionLimits(LimitSettings(max_negotiating=1))
        ticket = limits.admit("192.0.2.1", 0.0)
        self.assertIs(limits.admit("192.0.2.2", 0.0).reason, RefusalReason.NEGOTIATING)
        ticket.negotiated()
        self.assertIsInstance(limits.admit("192.0.2.2", 0.0), SessionTicket)
        self.assertEqual((limits.sessions, limits.negotiating), (2, 1))

    def test_ticket_calls_are_idempotent(self):
        limits = SessionLimits()
        ticket = limits.admit("192.0.2.1", 0.0)
        ticket.negotiated()
        ticket.negotiated()
        ticket.release()
        ticket.release()
        self.assertEqual((limits.sessions, limits.negotiating, limits.sessionsOf("192.0.2.1")), (0, 0, 0))

    def test_release_while_negotiating_leaves_the_negotiating_count(self):
        limits = SessionLimits()
        limits.admit("192.0.2.1", 0.0).release()
        self.assertEqual((limits.sessions, limits.negotiating), (0, 0))

    def test_auth_failures_within_the_window_start_a_cool_down(self):
        limits = SessionLimits(LimitSettings(auth_fail_limit=3, auth_fail_window=60))
        self.assertFalse(limits.authenticationFailed("192.0.2.1", 0.0))
        self.assertFalse(limits.authenticationFailed("192.0.2.1", 10.0))
        self.assertIsInstance(limits.admit("192.0.2.1", 10.0), SessionTicket)
        self.assertTrue(limits.authenticationFailed("192.0.2.1", 20.0))
        refusal = limits.admit("192.0.2.1", 21.0)
        self.assertIs(refusal.reason, RefusalReason.AUTH_FAILURES)
        self.assertIn("3 authentication failures", refusal.detail)
        self.assertIsInstance(limits.admit("192.0.2.2", 21.0), SessionTicket)
        self.assertEqual(limits.blockedUntil("192.0.2.1", 79.9), 80.0)
        self.assertIsInstance(limits.admit("192.0.2.1", 80.0), SessionTicket)

    def test_failures_spread_wider_than_the_window_never_block(self):
        limits = SessionLimits(LimitSettings(auth_fail_limit=3, auth_fail_window=60))
        for minute in range(10):
            self.assertFalse(limits.authenticationFailed("192.0.2.1", minute * 31.0))
        self.assertIsNone(limits.blockedUntil("192.0.2.1", 400.0))

    def test_the_history_starts_again_after_a_cool_down(self):
        limits = SessionLimits(LimitSettings(auth_fail_limit=2, auth_fail_window=10))
        limits.authenticationFailed("192.0.2.1", 0.0)
        self.assertTrue(limits.authenticationFailed("192.0.2.1", 1.0))
        self.assertFalse(limits.authenticationFailed("192.0.2.1", 12.0))
        self.assertIsNone(limits.blockedUntil("192.0.2.1", 12.0))

    def test_zero_disables_the_cool_down(self):
        limits = SessionLimits(LimitSettings(auth_fail_limit=0))
        for second in range(100):
            self.assertFalse(limits.authenticationFailed("192.0.2.1", float(second)))
        self.assertEqual(limits.trackedClients, 0)

    def test_failure_history_memory_is_bounded(self):
        limits = SessionLimits(LimitSettings(auth_fail_limit=3, auth_fail_window=60, max_tracked_clients=100))
        for index in range(5000):
            limits.authenticationFailed(f"10.0.{index // 256}.{index % 256}", 0.0)
        self.assertLessEqual(limits.trackedClients, 100)
        for index in range(5000):
            host = f"10.1.{index // 256}.{index % 256}"
            limits.authenticationFailed(host, 0.0)
            limits.authenticationFailed(host, 0.0)
            limits.authenticationFailed(host, 0.0)
        self.assertLessEqual(limits.trackedClients, 200)
        self.assertIsNotNone(limits.blockedUntil("10.1.19.135", 1.0))  # the newest block is kept

    def test_settings_are_checked(self):
        self.assertRaises(ValueError, LimitSettings, max_sessions=-1)
        self.assertRaises(ValueError, LimitSettings, auth_fail_window=0)


class RefusalLogTests(SynchronousTestCase):
    def test_one_line_per_reason_per_second_counting_the_rest(self):
        log = RefusalLog(interval=1.0)
        self.assertEqual(log.shouldLog(RefusalReason.SESSIONS, 0.0), 0)
        self.assertIsNone(log.shouldLog(RefusalReason.SESSIONS, 0.1))
        self.assertIsNone(log.shouldLog(RefusalReason.SESSIONS, 0.5))
        self.assertEqual(log.shouldLog(RefusalReason.PER_CLIENT, 0.5), 0)
        self.assertEqual(log.shouldLog(RefusalReason.SESSIONS, 1.2), 2)
        self.assertIsNone(log.shouldLog(RefusalReason.SESSIONS, 1.3))


# --- the protocol, with fakes ------------------------------------------------------


class Harness:
    """A server context and any number of client connections on StringTransports."""

    def __init__(self, settings: LimitSettings = LimitSettings(), authenticators=None, names=None,
                 negotiation_timeout: float = 30.0) -> None:
        self.reactor = MemoryReactorClock()
        self.resolver = FakeResolver(names)
        self.context = ServerContext(
            reactor=self.reactor,
            resolver=self.resolver,
            authenticators=tuple(authenticators or (NoAuthServerFactory(),)),
            policy=ALLOW_ALL,
            negotiation_timeout=negotiation_timeout,
            limits=SessionLimits(settings),
        )
        self.factory = SOCKSServerFactory(self.context)

    def connect(self, host: str = "192.0.2.10", port: int = 40000):
        address = IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)
        protocol = self.factory.buildProtocol(address)
        transport = HalfCloseableStringTransport(hostAddress=IPv4Address("TCP", "192.0.2.1", 1080),
                                                 peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def lose(self, protocol) -> None:
        protocol.connectionLost(Failure(ierror.ConnectionDone()))

    def complete_connect(self, index: int = -1):
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[index]
        upstream_protocol = factory.buildProtocol(None)
        upstream = HalfCloseableStringTransport(hostAddress=IPv4Address("TCP", "192.0.2.7", 5555),
                                                peerAddress=IPv4Address("TCP", host, port))
        upstream_protocol.makeConnection(upstream)
        return upstream_protocol, upstream


def refused(transport: StringTransport) -> bool:
    """Aborted at accept: nothing written, closed at once (abortConnection)."""
    return transport.value() == b"" and transport.disconnecting and transport.disconnected


class SessionLimitProtocolTests(SynchronousTestCase):
    def test_connection_over_max_sessions_is_aborted_at_once_and_logged(self):
        logs = capture_logs(self)
        harness = Harness(LimitSettings(max_sessions=2))
        harness.connect("192.0.2.10")
        second, _ = harness.connect("192.0.2.11")
        third, transport = harness.connect("192.0.2.12")
        self.assertTrue(refused(transport))
        self.assertIs(third.state, SessionState.CLOSED)
        self.assertIsNone(third.record)
        self.assertNotIn(third, harness.context.sessions)
        self.assertEqual(len(harness.context.sessions), 2)
        [line] = lines_with(logs, "refused connection from 192.0.2.12:40000")
        self.assertIn("--max-sessions", line)
        # The refused connection's end changes nothing; a real one frees a place.
        harness.lose(third)
        self.assertEqual(harness.context.limits.sessions, 2)
        harness.lose(second)
        self.assertEqual(harness.context.limits.sessions, 1)
        fourth, transport = harness.connect("192.0.2.12")
        self.assertFalse(transport.disconnecting)
        self.assertIs(fourth.state, SessionState.GREETING)

    def test_refused_connection_leaves_no_timer(self):
        harness = Harness(LimitSettings(max_sessions=1))
        first, _ = harness.connect()
        timers = list(harness.reactor.getDelayedCalls())
        harness.connect()
        self.assertEqual(harness.reactor.getDelayedCalls(), timers)

    def test_per_client_limit(self):
        logs = capture_logs(self)
        harness = Harness(LimitSettings(max_sessions_per_client=2))
        harness.connect("192.0.2.10", 1)
        harness.connect("192.0.2.10", 2)
        _, transport = harness.connect("192.0.2.10", 3)
        self.assertTrue(refused(transport))
        _, other = harness.connect("192.0.2.11", 1)
        self.assertFalse(other.disconnecting)
        self.assertTrue(lines_with(logs, "--max-sessions-per-client: 2 sessions open from this address"))

    def test_per_client_limit_counts_relaying_sessions_too(self):
        harness = Harness(LimitSettings(max_sessions_per_client=1))
        protocol, transport = harness.connect("192.0.2.10", 1)
        protocol.dataReceived(b"\x05\x01\x00" + connect_request("198.51.100.1"))
        harness.complete_connect()
        self.assertIs(protocol.state, SessionState.RELAYING)
        _, second = harness.connect("192.0.2.10", 2)
        self.assertTrue(refused(second))
        harness.lose(protocol)
        _, third = harness.connect("192.0.2.10", 3)
        self.assertFalse(third.disconnecting)

    def test_max_negotiating_counts_only_sessions_before_their_first_reply(self):
        logs = capture_logs(self)
        harness = Harness(LimitSettings(max_negotiating=1))
        protocol, _ = harness.connect("192.0.2.10")
        _, transport = harness.connect("192.0.2.11")
        self.assertTrue(refused(transport))
        self.assertTrue(lines_with(logs, "--max-negotiating"))
        protocol.dataReceived(b"\x05\x01\x00" + connect_request("198.51.100.1"))
        self.assertEqual(harness.context.limits.negotiating, 1)  # still waiting for the destination
        harness.complete_connect()
        self.assertEqual(harness.context.limits.negotiating, 0)
        _, transport = harness.connect("192.0.2.11")
        self.assertFalse(transport.disconnecting)

    def test_negotiation_timeout_gives_the_negotiating_place_back(self):
        harness = Harness(LimitSettings(max_negotiating=1), negotiation_timeout=5)
        protocol, _ = harness.connect("192.0.2.10")
        harness.reactor.advance(5)
        self.assertIs(protocol.state, SessionState.CLOSED)
        self.assertEqual(harness.context.limits.negotiating, 0)
        self.assertEqual(harness.context.limits.sessions, 1)  # until the connection is really gone
        harness.lose(protocol)
        self.assertEqual(harness.context.limits.sessions, 0)

    def test_a_failure_reply_ends_negotiation(self):
        harness = Harness(LimitSettings(max_negotiating=1))
        protocol, transport = harness.connect()
        protocol.dataReceived(b"\x05\x01\x00" + connect_request("nowhere.test"))
        self.assertEqual(transport.value()[2:4], b"\x05\x04")
        self.assertEqual(harness.context.limits.negotiating, 0)

    def test_refused_log_lines_are_throttled(self):
        logs = capture_logs(self)
        harness = Harness(LimitSettings(max_sessions=1))
        harness.connect()
        for _ in range(50):
            harness.connect()
        self.assertEqual(len(lines_with(logs, "refused connection")), 1)
        harness.reactor.advance(1.5)
        harness.connect()
        [_, line] = lines_with(logs, "refused connection")
        self.assertIn("49 more refused", line)

    def test_closed_session_whose_client_never_reads_is_aborted_later(self):
        harness = Harness(negotiation_timeout=5)
        protocol, transport = harness.connect()
        protocol.dataReceived(b"\x05\x01\x00" + connect_request("nowhere.test"))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)  # waiting for the reply to be read
        harness.reactor.advance(5)
        self.assertTrue(transport.disconnected)

    def test_closed_tunnel_whose_client_never_reads_is_aborted_after_an_idle_period(self):
        harness = Harness()
        harness.context.idle_timeout = 60
        protocol, transport = harness.connect()
        protocol.dataReceived(b"\x05\x01\x00" + connect_request("198.51.100.1"))
        upstream_protocol, _upstream = harness.complete_connect()
        upstream_protocol.dataReceived(b"last bytes")
        upstream_protocol.connectionLost(Failure(ierror.ConnectionDone()))
        self.assertTrue(transport.disconnecting)
        harness.reactor.advance(59)
        self.assertFalse(transport.disconnected)
        harness.reactor.advance(1)
        self.assertTrue(transport.disconnected)

    def test_client_gone_mid_handshake_leaves_nothing_behind(self):
        harness = Harness(LimitSettings(max_sessions=10, max_negotiating=10))
        protocol, _ = harness.connect()
        protocol.dataReceived(b"\x05\x01")
        harness.lose(protocol)
        self.assertEqual(harness.reactor.getDelayedCalls(), [])
        self.assertEqual(harness.context.sessions, set())
        self.assertEqual((harness.context.limits.sessions, harness.context.limits.negotiating), (0, 0))
        self.assertTrue(protocol.record.finished)


class AuthFailureLimitTests(SynchronousTestCase):
    def harness(self) -> Harness:
        portal = Portal(SOCKSUserRealm(), [InMemoryUsernamePasswordDatabaseDontUse(alice=b"right")])
        return Harness(LimitSettings(auth_fail_limit=5, auth_fail_window=60),
                       authenticators=[UserPassServerFactory(portal)])

    def attempt(self, harness: Harness, password: bytes, host: str = "192.0.2.10"):
        protocol, transport = harness.connect(host)
        if transport.disconnecting:
            return protocol, transport
        protocol.dataReceived(b"\x05\x01\x02" + UserPassRequest(b"alice", password).serialize())
        harness.lose(protocol)
        return protocol, transport

    def test_five_failures_in_a_minute_refuse_the_address_for_a_minute(self):
        logs = capture_logs(self)
        harness = self.harness()
        for _ in range(5):
            harness.reactor.advance(5)
            _, transport = self.attempt(harness, b"wrong")
            self.assertEqual(transport.value(), b"\x05\x02\x01\x01")
        [line] = lines_with(logs, "5 authentication failures within 60s")
        self.assertIn("192.0.2.10", line)
        # Even the right password is refused now, before a byte is read.
        _, transport = self.attempt(harness, b"right")
        self.assertTrue(refused(transport))
        self.assertTrue(lines_with(logs, "refused connection from 192.0.2.10:40000 by --auth-fail-limit"))
        # Other addresses are not affected.
        protocol, transport = self.attempt(harness, b"right", host="192.0.2.11")
        self.assertEqual(transport.value(), b"\x05\x02\x01\x00")
        # The cool-down runs on the injected clock.
        harness.reactor.advance(59)
        self.assertTrue(refused(self.attempt(harness, b"right")[1]))
        harness.reactor.advance(1)
        protocol, transport = self.attempt(harness, b"right")
        self.assertEqual(transport.value(), b"\x05\x02\x01\x00")

    def test_four_failures_do_not(self):
        harness = self.harness()
        for _ in range(4):
            self.attempt(harness, b"wrong")
        _, transport = self.attempt(harness, b"right")
        self.assertEqual(transport.value(), b"\x05\x02\x01\x00")

    def test_successes_and_other_endings_are_not_failures(self):
        harness = self.harness()
        for _ in range(10):
            self.attempt(harness, b"right")
            protocol, _ = harness.connect()
            protocol.dataReceived(b"\x05\x01\x02\x01\x05al")  # gone mid-subnegotiation
            harness.lose(protocol)
        self.assertIsNone(harness.context.limits.blockedUntil("192.0.2.10", harness.reactor.seconds()))


# --- buffers -----------------------------------------------------------------------


@implementer(IServerAuthenticator)
class _WaitingAuthenticator:
    """Its first step never finishes (an authentication backend that hangs)."""

    method = 0x80

    def __init__(self) -> None:
        self.step: Deferred[AuthStep] = Deferred()

    def begin(self):
        return self.step

    def receive(self, data):
        raise AssertionError("receive while a step is pending")

    def abort(self):
        pass


@implementer(IServerAuthenticatorFactory)
class _WaitingFactory:
    method = 0x80
    name = "waiting"

    def buildAuthenticator(self, session):
        return _WaitingAuthenticator()


class BufferCapTests(SynchronousTestCase):
    def test_greeting_and_request_cannot_grow_past_their_longest_form(self):
        harness = Harness()
        protocol, transport = harness.connect()
        # The longest greeting (257 bytes), then the longest request (262 bytes),
        # byte by byte: whole messages, handled as they complete.
        for byte in b"\x05\xff" + bytes(range(255)):
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(transport.value(), b"\x05\x00")
        longest = ".".join(["a" * 63] * 4)  # 255 characters in labels of at most 63
        for byte in b"\x05\x01\x00\x03\xff" + longest.encode() + b"\x00\x50":
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(harness.resolver.asked, [longest])

    def test_bytes_sent_while_authentication_waits_are_capped(self):
        harness = Harness(authenticators=[_WaitingFactory()])
        protocol, transport = harness.connect()
        protocol.dataReceived(b"\x05\x01\x80")
        chunk = b"x" * 65536
        for _ in range(4):
            protocol.dataReceived(chunk)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"one byte too many")
        self.assertTrue(transport.disconnecting)
        self.assertIn("too much data during authentication", protocol.record.outcome)

    def test_bytes_sent_before_the_reply_are_capped(self):
        harness = Harness()
        protocol, transport = harness.connect()
        protocol.dataReceived(b"\x05\x01\x00" + connect_request("198.51.100.1"))
        for _ in range(4):
            protocol.dataReceived(b"x" * 65536)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"x")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value()[-10:-8], b"\x05\x01")
        self.assertTrue(harness.reactor.connectors[0].stoppedConnecting)


@pytest.mark.kerberos
class GSSAPITokenCapTests(SynchronousTestCase):
    def test_a_context_token_is_capped_by_its_16_bit_length(self):
        from tests.helpers.kerberos import test_realm
        from txsocksgss.auth.gssapi import GSSAPIServerFactory

        realm = test_realm()
        harness = Harness(authenticators=[GSSAPIServerFactory(keytab=realm.service_keytab)])
        protocol, transport = harness.connect()
        protocol.dataReceived(b"\x05\x01\x01")
        self.assertEqual(transport.value(), b"\x05\x01")
        transport.clear()
        # The largest frame RFC 1961 allows: 65535 bytes of token (junk here).
        protocol.dataReceived(b"\x01\x01\xff\xff")
        for _ in range(15):
            protocol.dataReceived(b"\x60" * 4096)
        self.assertFalse(transport.disconnecting)  # 61440 of 65535 bytes: still one frame
        protocol.dataReceived(b"\x60" * 4095)
        self.assertEqual(transport.value(), b"\x01\xff")  # read whole, refused, aborted
        self.assertTrue(transport.disconnecting)
        self.assertIn("authentication failed", protocol.record.outcome)


class UDPQueueTests(SynchronousTestCase):
    def test_datagrams_waiting_for_dns_are_capped(self):
        resolver = HangingResolver()
        _context, protocol, client_side, client = udp_session(resolver)
        for index in range(100):
            datagram = UDPDatagram(0, Address.of(f"host{index}.test", 53), b"q" * 1000).serialize()
            client_side.protocol.datagramReceived(datagram, client)
        association = protocol.machine._command_handler
        self.assertEqual(len(resolver.asked), 64)
        self.assertEqual(association.dropped, 36)
        protocol.connectionLost(Failure(ierror.ConnectionDone()))
        self.assertFalse(client_side.listening)


# --- slow clients ---------------------------------------------------------------------


class SlowClientTests(SynchronousTestCase):
    def test_one_byte_a_second_is_cut_off_at_the_negotiation_timeout(self):
        portal = Portal(SOCKSUserRealm(), [InMemoryUsernamePasswordDatabaseDontUse(alice=b"right")])
        harness = Harness(LimitSettings(max_negotiating=5), authenticators=[UserPassServerFactory(portal)],
                          negotiation_timeout=10)
        protocol, transport = harness.connect()
        message = (b"\x05\x01\x02" + UserPassRequest(b"alice", b"right").serialize()
                   + connect_request("198.51.100.1"))
        sent = 0
        while not transport.disconnecting and sent < len(message):
            protocol.dataReceived(message[sent:sent + 1])
            sent += 1
            harness.reactor.advance(1)
        self.assertEqual(sent, 10)
        self.assertIn("negotiation timeout in authenticating", protocol.record.outcome)
        self.assertEqual(harness.reactor.tcpClients, [])
        self.assertEqual(harness.context.limits.negotiating, 0)


# --- settings -----------------------------------------------------------------------


class SettingsTests(SynchronousTestCase):
    def test_defaults(self):
        config = Config.build()
        self.assertEqual(
            (config.max_sessions, config.max_sessions_per_client, config.max_negotiating,
             config.auth_fail_limit, config.auth_fail_window, config.destination_guard),
            (10000, 256, 1000, 5, 60.0, "auto"),
        )
        limits = makeServerFactory(config, MemoryReactorClock()).context.limits
        self.assertEqual(limits.settings, LimitSettings(10000, 256, 1000, 5, 60.0))

    def test_toml_keys(self):
        config = Config.from_table({"max_sessions": 0, "max_sessions_per_client": 3, "max_negotiating": 4,
                                    "auth_fail_limit": 0, "auth_fail_window": 5, "destination_guard": "on"})
        self.assertEqual(
            (config.max_sessions, config.max_sessions_per_client, config.max_negotiating,
             config.auth_fail_limit, config.auth_fail_window, config.destination_guard),
            (0, 3, 4, 0, 5.0, "on"),
        )

    def test_bad_values_name_the_setting(self):
        for values, text in [
            ({"max_sessions": -1}, "--max-sessions"),
            ({"max_sessions_per_client": "many"}, "max_sessions_per_client"),
            ({"max_negotiating": True}, "max_negotiating"),
            ({"auth_fail_window": 0}, "--auth-fail-window"),
            ({"destination_guard": "maybe"}, "--destination-guard"),
        ]:
            error = self.assertRaises(ConfigError, Config.build, **values)
            self.assertIn(text, str(error))

    def test_twistd_options(self):
        options = Options()
        options.parseOptions(["--max-sessions", "7", "--max-sessions-per-client", "2", "--max-negotiating", "3",
                              "--auth-fail-limit", "4", "--auth-fail-window", "9", "--destination-guard", "on"])
        config = options.config
        self.assertEqual(
            (config.max_sessions, config.max_sessions_per_client, config.max_negotiating,
             config.auth_fail_limit, config.auth_fail_window, config.destination_guard),
            (7, 2, 3, 4, 9.0, "on"),
        )
        self.assertEqual(options.factory.context.limits.settings.max_sessions, 7)
        self.assertIsNotNone(options.factory.context.guard)


# --- real sockets ------------------------------------------------------------------


class _Greeter(Protocol):
    """Sends a SOCKS 5 greeting; ``selected`` fires with the server's answer, ``lost`` at the close."""

    def __init__(self):
        self.received = b""
        self.selected: Deferred[bytes] = Deferred()
        self.lost: Deferred[bytes] = Deferred()

    def connectionMade(self):
        self.transport.write(b"\x05\x01\x00")

    def dataReceived(self, data):
        self.received += data
        if len(self.received) >= 2 and not self.selected.called:
            self.selected.callback(self.received[:2])

    def connectionLost(self, reason=None):
        self.lost.callback(self.received)


class _Trickle(Protocol):
    """Sends ``message`` one byte every ``interval`` seconds (driven by the reactor's clock)."""

    def __init__(self, message: bytes, interval: float):
        self.message = message
        self.interval = interval
        self.sent = 0
        self.lost: Deferred[None] = Deferred()
        self._loop: task.LoopingCall | None = None

    def connectionMade(self):
        self._loop = task.LoopingCall(self._sendOne)
        self._loop.start(self.interval)

    def _sendOne(self):
        if self.sent < len(self.message):
            self.transport.write(self.message[self.sent:self.sent + 1])
            self.sent += 1

    def connectionLost(self, reason=None):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.lost.callback(None)


class RealSocketTests(IntegrationTestCase):
    def connectGreeter(self, port: int) -> Deferred[_Greeter]:
        greeter = _Greeter()
        self.addCleanup(lambda: greeter.lost if greeter.lost.called else
                        (greeter.transport.loseConnection(), greeter.lost)[1])
        return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), greeter)

    @inlineCallbacks
    def test_connection_over_the_per_client_limit_is_closed_at_once(self):
        logs = self.captureLogs()
        port, factory = self.startSOCKS(max_sessions_per_client=2)
        first = yield self.connectGreeter(port)
        second = yield self.connectGreeter(port)
        self.assertEqual((yield first.selected), b"\x05\x00")
        self.assertEqual((yield second.selected), b"\x05\x00")
        third = yield self.connectGreeter(port)
        received = yield third.lost
        self.assertEqual(received, b"")
        self.assertTrue(lines_with(logs, "by --max-sessions-per-client"))
        self.assertEqual(factory.context.limits.sessionsOf("127.0.0.1"), 2)
        # The server ends the first session (an unknown command): its place
        # is free by the time the client sees the close.
        first.transport.write(b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50")
        received = yield first.lost
        self.assertEqual(received[2:4], b"\x05\x07")
        fourth = yield self.connectGreeter(port)
        self.assertEqual((yield fourth.selected), b"\x05\x00")

    @inlineCallbacks
    def test_slowloris_client_is_cut_off_by_the_negotiation_timeout(self):
        logs = self.captureLogs()
        port, factory = self.startSOCKS(negotiation_timeout=0.5)
        message = b"\x05\xff" + bytes(range(255))
        trickle = _Trickle(message, interval=0.05)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), trickle)
        yield trickle.lost
        yield factory.context.whenDrained()
        self.assertLess(trickle.sent, len(message))
        self.assertTrue(lines_with(logs, "outcome=negotiation timeout in greeting"), "\n".join(logs))
        self.assertEqual((factory.context.limits.sessions, factory.context.limits.negotiating), (0, 0))
