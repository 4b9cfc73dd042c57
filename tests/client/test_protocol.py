"""
Unit tests of the client handshake protocols with StringTransport: every
reply code raises its exception, malformed and truncated replies fail the
Deferred (never a hang), cancellation and timeout close the transport.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, TimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txsocksgss.auth.conversation import AuthStep
from txsocksgss.auth.none import NoAuthClientFactory
from txsocksgss.auth.userpass import UserPassClientFactory
from txsocksgss.client.protocol import HandshakeState, SOCKS4ClientProtocol, SOCKS5ClientProtocol
from txsocksgss.errors import (
    AddressTypeNotSupported,
    ClientAuthenticationFailed,
    CommandNotSupported,
    ConnectionNotAllowed,
    ConnectionRefused,
    GeneralFailure,
    HostUnreachable,
    NetworkUnreachable,
    NoAcceptableMethod,
    ProtocolError,
    SOCKS4IdentMismatch,
    SOCKS4IdentUnreachable,
    SOCKS4Rejected,
    SOCKSError,
    SOCKSReplyError,
    TTLExpired,
    TruncatedMessage,
)
from txsocksgss.wire.socks4 import SOCKS4Command
from txsocksgss.wire.socks5 import Address, Command, Reply, ReplyCode, Request


class Recorder(Protocol):
    def __init__(self):
        self.data = b""
        self.lost = None

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason=None):
        self.lost = reason


def socks5(command=Command.CONNECT, methods=None, clock=None, timeout=None):
    recorder_factory = Factory.forProtocol(Recorder)
    protocol = SOCKS5ClientProtocol(
        Request(command, Address.of("example.test", 443)),
        methods or [NoAuthClientFactory()],
        recorder_factory,
        clock=clock,
        timeout=timeout,
    )
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def success(host="192.0.2.1", port=4000) -> bytes:
    return Reply(ReplyCode.SUCCEEDED, Address.of(host, port)).serialize()


REPLY_EXCEPTIONS = {
    0x01: GeneralFailure,
    0x02: ConnectionNotAllowed,
    0x03: NetworkUnreachable,
    0x04: HostUnreachable,
    0x05: ConnectionRefused,
    0x06: TTLExpired,
    0x07: CommandNotSupported,
    0x08: AddressTypeNotSupported,
}


class SOCKS5ClientTests(SynchronousTestCase):
    def test_greeting_then_request_then_application(self):
        protocol, transport = socks5()
        self.assertEqual(transport.value(), b"\x05\x01\x00")
        transport.clear()
        protocol.dataReceived(b"\x05\x00")
        self.assertEqual(transport.value(), Request(Command.CONNECT, Address.of("example.test", 443)).serialize())
        protocol.dataReceived(success() + b"first bytes")
        connection = self.successResultOf(protocol.established)
        self.assertEqual(connection.bound, Address.of("192.0.2.1", 4000))
        self.assertEqual(connection.protocol.data, b"first bytes")
        protocol.dataReceived(b" more")
        self.assertEqual(connection.protocol.data, b"first bytes more")
        self.assertIs(connection.protocol.transport, transport)

    def test_every_failure_reply_raises_its_exception(self):
        for code, exception in REPLY_EXCEPTIONS.items():
            protocol, transport = socks5()
            protocol.dataReceived(b"\x05\x00" + Reply(code, Address.of("0.0.0.0", 0)).serialize())
            failure = self.failureResultOf(protocol.established, exception)
            self.assertEqual(failure.value.code, code)
            self.assertIsInstance(failure.value, SOCKSReplyError)
            self.assertTrue(transport.disconnecting)

    def test_unknown_reply_code_is_a_reply_error_with_the_code(self):
        protocol, _ = socks5()
        protocol.dataReceived(b"\x05\x00" + Reply(0x42, Address.of("0.0.0.0", 0)).serialize())
        failure = self.failureResultOf(protocol.established, SOCKSReplyError)
        self.assertEqual(failure.value.code, 0x42)

    def test_no_acceptable_method(self):
        protocol, transport = socks5()
        protocol.dataReceived(b"\x05\xff")
        self.failureResultOf(protocol.established, NoAcceptableMethod)
        self.assertTrue(transport.disconnecting)

    def test_server_choosing_an_unoffered_method_is_a_protocol_error(self):
        protocol, transport = socks5()
        protocol.dataReceived(b"\x05\x02")
        self.failureResultOf(protocol.established, ProtocolError)
        self.assertTrue(transport.disconnecting)

    def test_userpass_success_and_failure(self):
        protocol, transport = socks5(methods=[UserPassClientFactory("u", "p"), NoAuthClientFactory()])
        self.assertEqual(transport.value(), b"\x05\x02\x02\x00")
        transport.clear()
        protocol.dataReceived(b"\x05\x02")
        self.assertEqual(transport.value(), b"\x01\x01u\x01p")
        protocol.dataReceived(b"\x01\x00" + success())
        self.assertEqual(self.successResultOf(protocol.established).identity.user, "u")

        protocol, transport = socks5(methods=[UserPassClientFactory("u", "p")])
        protocol.dataReceived(b"\x05\x02\x01\x01")
        self.failureResultOf(protocol.established, ClientAuthenticationFailed)
        self.assertTrue(transport.disconnecting)

    def test_a_crashing_authenticator_fails_the_handshake(self):
        class Crashing:
            method = 0x80

            def buildAuthenticator(self, session):
                return self

            def begin(self):
                return AuthStep(b"hi")

            def receive(self, data):
                raise ZeroDivisionError("bug")

            def abort(self):
                pass

        protocol, transport = socks5(methods=[Crashing()])
        protocol.dataReceived(b"\x05\x80" + b"answer")
        failure = self.failureResultOf(protocol.established, ClientAuthenticationFailed)
        self.assertEqual(str(failure.value), "authentication error: bug")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(transport.disconnecting)

    def test_a_timeout_during_a_pending_step_aborts_the_conversation(self):
        cancelled = []

        class Waiting:
            method = 0x80
            aborted = False

            def buildAuthenticator(self, session):
                return self

            def begin(self):
                return Deferred(lambda d: cancelled.append(True))

            def receive(self, data):  # pragma: no cover - never reached
                raise AssertionError("fed while a step is pending")

            def abort(self):
                self.aborted = True

        clock = Clock()
        waiting = Waiting()
        protocol, transport = socks5(methods=[waiting], clock=clock, timeout=10)
        protocol.dataReceived(b"\x05\x80" + b"early")
        clock.advance(10)
        self.failureResultOf(protocol.established, TimeoutError)
        self.assertTrue(waiting.aborted)
        self.assertEqual(cancelled, [True])

    def test_wrong_version_in_selection(self):
        protocol, transport = socks5()
        protocol.dataReceived(b"\x04\x00")
        self.failureResultOf(protocol.established, ProtocolError)
        self.assertTrue(transport.disconnecting)

    def test_truncated_reply_then_close_fails_not_hangs(self):
        whole = b"\x05\x00" + success()
        for cut in range(len(whole)):
            protocol, _ = socks5()
            protocol.dataReceived(whole[:cut])
            protocol.connectionLost(Failure(ConnectionDone()))
            self.failureResultOf(protocol.established, TruncatedMessage)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_arbitrary_server_bytes_never_raise(self, data):
        protocol, _ = socks5()
        protocol.dataReceived(data)
        protocol.connectionLost(Failure(ConnectionDone()))
        if protocol.established.called:
            result = []
            protocol.established.addBoth(result.append)
            if isinstance(result[0], Failure):
                self.assertTrue(result[0].check(SOCKSError))

    def test_byte_by_byte(self):
        protocol, _ = socks5()
        for byte in b"\x05\x00" + success() + b"x":
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(self.successResultOf(protocol.established).protocol.data, b"x")

    def test_cancel_aborts_the_transport(self):
        protocol, transport = socks5()
        protocol.abort()
        self.failureResultOf(protocol.established, CancelledError)
        self.assertTrue(transport.disconnected)

    def test_timeout(self):
        clock = Clock()
        protocol, transport = socks5(clock=clock, timeout=10)
        protocol.dataReceived(b"\x05\x00")
        clock.advance(10)
        failure = self.failureResultOf(protocol.established, TimeoutError)
        self.assertIn("reply", str(failure.value))
        self.assertTrue(transport.disconnecting)

    def test_timer_cancelled_on_success(self):
        clock = Clock()
        protocol, _ = socks5(clock=clock, timeout=10)
        protocol.dataReceived(b"\x05\x00" + success())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_bind_two_replies(self):
        protocol, _ = socks5(command=Command.BIND)
        protocol.dataReceived(b"\x05\x00" + success("192.0.2.1", 5000))
        self.assertEqual(self.successResultOf(protocol.firstReply), Address.of("192.0.2.1", 5000))
        self.assertNoResult(protocol.established)
        self.assertIs(protocol.state, HandshakeState.SECOND_REPLY)
        protocol.dataReceived(success("198.51.100.3", 6000))
        connection = self.successResultOf(protocol.established)
        self.assertEqual(connection.bound, Address.of("198.51.100.3", 6000))

    def test_bind_second_reply_failure(self):
        protocol, _ = socks5(command=Command.BIND)
        protocol.dataReceived(b"\x05\x00" + success())
        protocol.dataReceived(Reply(0x06, Address.of("0.0.0.0", 0)).serialize())
        self.failureResultOf(protocol.established, TTLExpired)

    def test_application_gets_connection_lost(self):
        protocol, _ = socks5()
        protocol.dataReceived(b"\x05\x00" + success())
        application = self.successResultOf(protocol.established).protocol
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(application.lost)


class SOCKS4ClientTests(SynchronousTestCase):
    def build(self, host="192.0.2.9", command=SOCKS4Command.CONNECT):
        protocol = SOCKS4ClientProtocol(command, Address.of(host, 80), b"alice", Factory.forProtocol(Recorder))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_socks4_request_and_grant(self):
        protocol, transport = self.build()
        self.assertEqual(transport.value(), b"\x04\x01\x00\x50\xc0\x00\x02\x09alice\x00")
        protocol.dataReceived(b"\x00\x5a\x00\x00\x00\x00\x00\x00tail")
        self.assertEqual(self.successResultOf(protocol.established).protocol.data, b"tail")

    def test_socks4a_sends_the_name(self):
        _protocol, transport = self.build(host="example.test")
        self.assertEqual(transport.value(), b"\x04\x01\x00\x50\x00\x00\x00\x01alice\x00example.test\x00")

    def test_reply_codes(self):
        for code, exception in ((91, SOCKS4Rejected), (92, SOCKS4IdentUnreachable), (93, SOCKS4IdentMismatch)):
            protocol, transport = self.build()
            protocol.dataReceived(bytes([0, code]) + b"\x00" * 6)
            failure = self.failureResultOf(protocol.established, exception)
            self.assertEqual(failure.value.code, code)
            self.assertTrue(transport.disconnecting)

    def test_ipv6_destination_is_refused_up_front(self):
        self.assertRaises(ValueError, SOCKS4ClientProtocol, SOCKS4Command.CONNECT, Address.of("::1", 80),
                          b"", None)

    def test_bind_two_replies(self):
        protocol, _ = self.build(command=SOCKS4Command.BIND)
        protocol.dataReceived(b"\x00\x5a\x13\x88\xc0\x00\x02\x01")
        self.assertEqual(self.successResultOf(protocol.firstReply), Address.of("192.0.2.1", 5000))
        protocol.dataReceived(b"\x00\x5a\x17\x70\xc6\x33\x64\x03")
        self.assertEqual(self.successResultOf(protocol.established).bound, Address.of("198.51.100.3", 6000))
