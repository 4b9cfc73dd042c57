"""
Unit tests of the SOCKS 5 server protocol with twisted.internet.testing fakes:
every reply code, every method path, bad input at every stage; and the
direct write of replies onto a socket pair.
"""

from __future__ import annotations

import errno
import socket

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import error as ierror
from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Connection
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.harness import ServerHarness, connect_request
from txsocksgss.auth.none import NoAuthServerFactory
from txsocksgss.auth.userpass import SOCKSUserRealm, UserPassServerFactory
from txsocksgss.server.protocol import SessionState, write_now
from txsocksgss.server.rules import rules_from_table
from txsocksgss.wire.socks5 import (
    Address,
    AddressType,
    Greeting,
    ReplyCode,
)
from txsocksgss.wire.userpass import UserPassRequest


class MethodSelectionTests(SynchronousTestCase):
    def test_none_selected(self) -> None:
        harness = ServerHarness()
        harness.send(Greeting((0x00,)).serialize())
        self.assertEqual(harness.take(), b"\x05\x00")
        self.assertIs(harness.protocol.state, SessionState.REQUEST)

    def test_no_acceptable_method_replies_ff_and_closes(self) -> None:
        harness = ServerHarness()
        harness.send(b"\x05\x02\x01\x02")
        self.assertEqual(harness.take(), b"\x05\xff")
        self.assertTrue(harness.transport.disconnecting)

    def test_server_preference_order_wins(self) -> None:
        portal = Portal(SOCKSUserRealm(), [InMemoryUsernamePasswordDatabaseDontUse(alice=b"pw")])
        harness = ServerHarness(authenticators=[UserPassServerFactory(portal), NoAuthServerFactory()])
        harness.send(b"\x05\x02\x00\x02")
        self.assertEqual(harness.take(), b"\x05\x02")

    def test_wrong_version_closes_without_reply(self) -> None:
        harness = ServerHarness()
        harness.send(b"\x06\x01\x00")
        self.assertEqual(harness.take(), b"")
        self.assertTrue(harness.transport.disconnecting)

    def test_zero_methods_closes(self) -> None:
        harness = ServerHarness()
        harness.send(b"\x05\x00")
        self.assertTrue(harness.transport.disconnecting)

    def test_greeting_byte_by_byte(self) -> None:
        harness = ServerHarness()
        for byte in b"\x05\x03\x02\x01\x00":
            harness.send(bytes([byte]))
        self.assertEqual(harness.take(), b"\x05\x00")


class UserPassTests(SynchronousTestCase):
    def harness(self) -> ServerHarness:
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"s3cret")
        portal = Portal(SOCKSUserRealm(), [checker])
        return ServerHarness(authenticators=[UserPassServerFactory(portal)])

    def test_good_password(self) -> None:
        harness = self.harness()
        harness.send(b"\x05\x01\x02")
        harness.send(UserPassRequest(b"alice", b"s3cret").serialize())
        self.assertEqual(harness.take(), b"\x05\x02\x01\x00")
        self.assertEqual(harness.protocol.machine.identity.user, "alice")
        self.assertIs(harness.protocol.state, SessionState.REQUEST)

    def test_bad_password_status_and_close(self) -> None:
        harness = self.harness()
        harness.send(b"\x05\x01\x02")
        harness.send(UserPassRequest(b"alice", b"wrong").serialize())
        self.assertEqual(harness.take(), b"\x05\x02\x01\x01")
        self.assertTrue(harness.transport.disconnecting)
        self.assertIn("authentication failed", harness.protocol.record.outcome)
        self.assertNotIn("wrong", harness.protocol.record.outcome)

    def test_malformed_subnegotiation_fails(self) -> None:
        harness = self.harness()
        harness.send(b"\x05\x01\x02")
        harness.send(b"\x05\x05alice")
        self.assertEqual(harness.take(), b"\x05\x02\x01\x01")
        self.assertTrue(harness.transport.disconnecting)

    def test_everything_pipelined_in_one_chunk(self) -> None:
        harness = self.harness()
        harness.send(
            b"\x05\x01\x02" + UserPassRequest(b"alice", b"s3cret").serialize() + connect_request("192.0.2.1")
        )
        self.assertEqual(harness.take(), b"\x05\x02\x01\x00")
        self.assertEqual(harness.reactor.tcpClients[0][:2], ("192.0.2.1", 80))


class ConnectTests(SynchronousTestCase):
    def connected_harness(self, **kwargs) -> ServerHarness:
        harness = ServerHarness(**kwargs)
        harness.send(b"\x05\x01\x00")
        harness.take()
        return harness

    def test_connect_ipv4_success_and_relay(self) -> None:
        harness = self.connected_harness()
        harness.send(connect_request("192.0.2.1", 8080))
        self.assertEqual(harness.reactor.tcpClients[0][:2], ("192.0.2.1", 8080))
        upstream_protocol, upstream = harness.complete_connect()
        [reply] = harness.replies(harness.take())
        self.assertEqual(reply.code, ReplyCode.SUCCEEDED)
        self.assertEqual(reply.bound, Address(AddressType.IPV4, "192.0.2.7", 5555))
        harness.send(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(upstream.value(), b"GET / HTTP/1.0\r\n\r\n")
        upstream_protocol.dataReceived(b"HTTP/1.0 200 OK\r\n")
        self.assertEqual(harness.take(), b"HTTP/1.0 200 OK\r\n")

    def test_connect_ipv6(self) -> None:
        harness = self.connected_harness()
        harness.send(connect_request("2001:db8::1", 443))
        self.assertEqual(harness.reactor.tcpClients[0][:2], ("2001:db8::1", 443))

    def test_connect_domain_resolves_on_server(self) -> None:
        harness = self.connected_harness(names={"example.test": ["192.0.2.9"]})
        harness.send(connect_request("example.test", 80))
        self.assertEqual(harness.resolver.asked, ["example.test"])
        self.assertEqual(harness.reactor.tcpClients[0][:2], ("192.0.2.9", 80))

    def test_unresolvable_domain_is_host_unreachable(self) -> None:
        harness = self.connected_harness()
        harness.send(connect_request("nowhere.test", 80))
        [reply] = harness.replies(harness.take())
        self.assertEqual(reply.code, ReplyCode.HOST_UNREACHABLE)
        self.assertTrue(harness.transport.disconnecting)

    def assertReplyFor(self, exception: Exception, code: ReplyCode) -> None:
        harness = self.connected_harness()
        harness.send(connect_request("192.0.2.1", 80))
        harness.fail_connect(exception)
        [reply] = harness.replies(harness.take())
        self.assertEqual(reply.code, code)
        self.assertTrue(harness.transport.disconnecting)

    def test_refused_is_05(self) -> None:
        self.assertReplyFor(ierror.ConnectionRefusedError(), ReplyCode.CONNECTION_REFUSED)

    def test_network_unreachable_is_03(self) -> None:
        self.assertReplyFor(ierror.NoRouteError(), ReplyCode.NETWORK_UNREACHABLE)

    def test_host_unreachable_is_04(self) -> None:
        self.assertReplyFor(ierror.ConnectError(osError=errno.EHOSTUNREACH), ReplyCode.HOST_UNREACHABLE)

    def test_timeout_is_06(self) -> None:
        self.assertReplyFor(ierror.TCPTimedOutError(), ReplyCode.TTL_EXPIRED)

    def test_other_failure_is_01(self) -> None:
        self.assertReplyFor(ierror.ConnectError(osError=errno.EACCES), ReplyCode.GENERAL_FAILURE)

    def test_second_address_tried_after_first_fails(self) -> None:
        harness = self.connected_harness(names={"dual.test": ["2001:db8::5", "192.0.2.5"]})
        harness.send(connect_request("dual.test", 80))
        harness.fail_connect(ierror.ConnectionRefusedError(), index=0)
        self.assertEqual(harness.reactor.tcpClients[1][:2], ("192.0.2.5", 80))
        harness.complete_connect(index=1)
        [reply] = harness.replies(harness.take())
        self.assertEqual(reply.code, ReplyCode.SUCCEEDED)

    def test_rule_denial_is_02(self) -> None:
        policy = rules_from_table({"rule": [{"action": "deny", "name": "no-docs", "to": ["192.0.2.0/24"]}],
                                   "default": "allow"})
        harness = self.connected_harness(policy=policy)
        harness.send(connect_request("192.0.2.1", 80))
        [reply] = harness.replies(harness.take())
        self.assertEqual(reply.code, ReplyCode.NOT_ALLOWED)
        self.assertEqual(harness.reactor.tcpClients, [])
        self.assertIn("no-docs", harness.protocol.record.outcome)

    def test_rule_denies_a_name_that_resolves_into_a_denied_network(self) -> None:
        policy = rules_from_table({"rule": [{"action": "deny", "to": ["10.0.0.0/8"]}], "default": "allow"})
        harness = self.connected_harness(policy=policy, names={"intranet.test": ["10.1.2.3"]})
        harness.send(connect_request("intranet.test", 80))
        [reply] = harness.replies(harness.take())
        self.assertEqual(reply.code, ReplyCode.NOT_ALLOWED)

    def test_unknown_command_is_07(self) -> None:
        harness = self.connected_harness()
        harness.send(b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50")
        [reply] = harness.replies(harness.take())
        self.assertEqual(reply.code, ReplyCode.COMMAND_NOT_SUPPORTED)
        self.assertTrue(harness.transport.disconnecting)

    def test_unknown_address_type_is_08(self) -> None:
        harness = self.connected_harness()
        harness.send(b"\x05\x01\x00\x05\x7f\x00\x00\x01\x00\x50")
        [reply] = harness.replies(harness.take())
        self.assertEqual(reply.code, ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED)

    def test_malformed_request_is_01(self) -> None:
        harness = self.connected_harness()
        harness.send(b"\x05\x01\x00\x03\x00\x00\x50")  # empty domain name
        [reply] = harness.replies(harness.take())
        self.assertEqual(reply.code, ReplyCode.GENERAL_FAILURE)
        self.assertTrue(harness.transport.disconnecting)

    def test_data_pipelined_after_request_reaches_upstream(self) -> None:
        harness = self.connected_harness()
        harness.send(connect_request("192.0.2.1", 80) + b"early bytes")
        harness.send(b" and more")
        _protocol, upstream = harness.complete_connect()
        self.assertEqual(upstream.value(), b"early bytes and more")

    def test_upstream_banner_before_relay_is_kept(self) -> None:
        harness = self.connected_harness()
        harness.send(connect_request("192.0.2.1", 25))
        protocol, upstream = harness.complete_connect()
        harness.take()
        protocol.dataReceived(b"220 ready\r\n")
        self.assertEqual(harness.take(), b"220 ready\r\n")

    def test_half_close_propagates_both_ways(self) -> None:
        harness = self.connected_harness()
        harness.send(connect_request("192.0.2.1", 80))
        protocol, upstream = harness.complete_connect()
        harness.protocol.readConnectionLost()
        self.assertTrue(getattr(upstream, "writeClosed", False))
        self.assertFalse(harness.transport.disconnecting)
        protocol.dataReceived(b"late answer")
        self.assertIn(b"late answer", harness.transport.value())
        protocol.readConnectionLost()
        self.assertTrue(harness.transport.disconnecting)
        self.assertTrue(upstream.disconnecting)
        self.assertEqual(harness.protocol.record.outcome, "closed")

    def test_upstream_reset_closes_client(self) -> None:
        harness = self.connected_harness()
        harness.send(connect_request("192.0.2.1", 80))
        protocol, _upstream = harness.complete_connect()
        protocol.connectionLost(Failure(ierror.ConnectionLost()))
        self.assertTrue(harness.transport.disconnecting)

    def test_client_gone_while_connecting_cancels(self) -> None:
        harness = self.connected_harness()
        harness.send(connect_request("192.0.2.1", 80))
        harness.protocol.connectionLost(Failure(ierror.ConnectionDone()))
        connector = harness.reactor.connectors[0]
        self.assertTrue(connector.stoppedConnecting)
        self.assertIs(harness.protocol.state, SessionState.CLOSED)

    def test_bytes_counted_in_session_record(self) -> None:
        harness = self.connected_harness()
        harness.send(connect_request("192.0.2.1", 80))
        protocol, _upstream = harness.complete_connect()
        harness.send(b"12345")
        protocol.dataReceived(b"abc")
        protocol.connectionLost(Failure(ierror.ConnectionDone()))
        self.assertEqual(harness.protocol.record.bytes_from_client, 5)
        self.assertEqual(harness.protocol.record.bytes_to_client, 3)


class TimeoutTests(SynchronousTestCase):
    def test_negotiation_timeout_in_greeting(self) -> None:
        harness = ServerHarness(negotiation_timeout=5)
        harness.send(b"\x05")
        harness.reactor.advance(4.9)
        self.assertFalse(harness.transport.disconnecting)
        harness.reactor.advance(0.2)
        self.assertTrue(harness.transport.disconnecting)
        self.assertIn("negotiation timeout", harness.protocol.record.outcome)

    def test_negotiation_timeout_while_connecting_is_06(self) -> None:
        harness = ServerHarness(negotiation_timeout=5)
        harness.send(b"\x05\x01\x00" + connect_request("192.0.2.1"))
        harness.take()
        harness.reactor.advance(6)
        [reply] = harness.replies(harness.take())
        self.assertEqual(reply.code, ReplyCode.TTL_EXPIRED)
        self.assertTrue(harness.reactor.connectors[0].stoppedConnecting)

    def test_the_negotiation_timeout_bounds_the_connect_unless_longer_than_30s(self) -> None:
        for negotiation_timeout, connect_timeout in ((30, None), (60, 30.0)):
            harness = ServerHarness(negotiation_timeout=negotiation_timeout)
            harness.send(b"\x05\x01\x00" + connect_request("192.0.2.1"))
            self.assertEqual(harness.reactor.tcpClients[0][3], connect_timeout)

    def test_slow_client_cut_off_even_if_it_keeps_sending(self) -> None:
        harness = ServerHarness(negotiation_timeout=5)
        harness.send(b"\x05\x01")
        for _ in range(10):
            harness.reactor.advance(1)
        self.assertTrue(harness.transport.disconnecting)

    def test_no_timeout_after_reply(self) -> None:
        harness = ServerHarness(negotiation_timeout=5, idle_timeout=None)
        harness.send(b"\x05\x01\x00" + connect_request("192.0.2.1"))
        harness.complete_connect()
        harness.reactor.advance(100)
        self.assertFalse(harness.transport.disconnecting)

    def test_idle_timeout_closes_quiet_tunnel(self) -> None:
        harness = ServerHarness(idle_timeout=60)
        harness.send(b"\x05\x01\x00" + connect_request("192.0.2.1"))
        _protocol, upstream = harness.complete_connect()
        harness.reactor.advance(50)
        harness.send(b"still here")
        harness.reactor.advance(50)
        self.assertFalse(harness.transport.disconnecting)
        harness.reactor.advance(80)
        self.assertTrue(harness.transport.disconnecting)
        self.assertTrue(upstream.disconnecting)
        self.assertEqual(harness.protocol.record.outcome, "idle timeout")


class HostileInputTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600))
    def test_arbitrary_bytes_never_raise(self, data: bytes) -> None:
        harness = ServerHarness()
        harness.send(data)
        # Either still negotiating, waiting for an outgoing connection, or closed.
        self.assertIn(
            harness.protocol.state,
            {SessionState.GREETING, SessionState.REQUEST, SessionState.COMMAND, SessionState.CLOSED,
             SessionState.RELAYING},
        )

    def test_request_cut_at_every_byte_then_eof(self) -> None:
        request = b"\x05\x01\x00" + connect_request("example.test", 443)
        for cut in range(len(request)):
            harness = ServerHarness()
            harness.send(request[:cut])
            self.assertEqual(harness.reactor.tcpClients, [])
            harness.protocol.connectionLost(Failure(ierror.ConnectionDone()))
            self.assertIs(harness.protocol.state, SessionState.CLOSED)

    def test_oversized_garbage_in_request_state_closes(self) -> None:
        harness = ServerHarness()
        harness.send(b"\x05\x01\x00")
        longest = ".".join(["a" * 63] * 4)  # 255 characters in labels of at most 63
        harness.send(b"\x05\x01\x00\x03\xff" + longest.encode() + b"\x00\x50")  # longest valid request
        self.assertEqual(harness.resolver.asked, [longest])




class DirectWriteTests(SynchronousTestCase):
    """`write_now`: replies go onto the socket at once, the rest through the transport, in order."""

    def connection(self) -> tuple[Connection, socket.socket]:
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        transport = Connection(ours, Protocol(), MemoryReactorClock())
        transport.connected = True
        return transport, peer

    def test_a_reply_is_on_the_socket_at_once(self) -> None:
        transport, peer = self.connection()
        self.assertTrue(write_now(transport, b"\x05\x00"))
        self.assertEqual(peer.recv(16), b"\x05\x00")
        self.assertEqual(transport._tempDataLen, 0)

    def test_what_the_socket_does_not_take_waits_in_the_transport_in_order(self) -> None:
        transport, peer = self.connection()
        body = bytes(range(256)) * 32 * 1024  # 8 MiB: more than a socket buffer holds
        self.assertFalse(write_now(transport, body))
        self.assertFalse(write_now(transport, b"after"))  # behind the buffered rest, not on the socket
        peer.setblocking(False)
        received = bytearray()
        while len(received) < len(body) + 5:
            transport.doWrite()
            try:
                received += peer.recv(1 << 20)
            except BlockingIOError:
                pass
        self.assertEqual(bytes(received), body + b"after")

    def test_a_string_transport_is_written_the_ordinary_way(self) -> None:
        transport = StringTransport()
        self.assertFalse(write_now(transport, b"\x05\x00"))
        self.assertEqual(transport.value(), b"\x05\x00")


class ResolveTests(SynchronousTestCase):
    def test_a_name_no_resolver_can_look_up_fails_at_once(self):
        from txsocksgss.server.outbound import DestinationUnresolved, resolve

        class Untouched:
            def resolveHostName(self, *args: Any, **kwargs: Any) -> None:
                raise AssertionError("not for a resolver")

        d = resolve(Untouched(), "a" * 64 + ".test", 80)
        failure = self.failureResultOf(d, DestinationUnresolved)
        self.assertIn("is not a host name", failure.getErrorMessage())

