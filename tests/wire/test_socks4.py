"""Tests for txsocksgss.wire.socks4 (SOCKS 4 and SOCKS 4a)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.codecs import (
    assert_codec,
    assert_stream,
    assert_total,
    cut_points,
    fuzz_bytes,
    mutated,
    trailing_bytes,
)
from txsocksgss.errors import (
    InvalidField,
    MessageTooLong,
    UnsupportedCommand,
    UnsupportedVersion,
)
from txsocksgss.wire.reader import MessageBuffer, Reader
from txsocksgss.wire.socks4 import (
    SOCKS4Command,
    SOCKS4Reply,
    SOCKS4ReplyCode,
    SOCKS4Request,
    parse_socks4_reply,
    parse_socks4_request,
)

ports = st.integers(min_value=0, max_value=0xFFFF)
ipv4 = st.ip_addresses(v=4).map(str)
plain_ipv4 = ipv4.filter(lambda a: not (a.startswith("0.0.0.") and a != "0.0.0.0"))
markers = st.integers(1, 255).map(lambda x: f"0.0.0.{x}")
userids = st.lists(st.integers(1, 255), max_size=255).map(bytes)
hostnames = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=255)
commands = st.sampled_from(SOCKS4Command)

socks4_requests = st.builds(SOCKS4Request, commands, ports, plain_ipv4, userids)
socks4a_requests = st.builds(SOCKS4Request, commands, ports, st.one_of(markers, ipv4), userids, hostnames)
requests = st.one_of(socks4_requests, socks4a_requests)
replies = st.builds(
    SOCKS4Reply, st.one_of(st.sampled_from(SOCKS4ReplyCode), st.integers(0, 255)), ports, ipv4
)

# CONNECT 1.2.3.4:80 as user "fred" (the SOCKS 4 paper's layout).
FRED_CONNECT = b"\x04\x01\x00\x50\x01\x02\x03\x04fred\x00"


class SOCKS4RequestTests(SynchronousTestCase):
    @given(requests, trailing_bytes)
    def test_round_trip(self, request: SOCKS4Request, trailing: bytes) -> None:
        assert_codec(self, parse_socks4_request, request, trailing=trailing)

    @given(st.lists(requests, min_size=1, max_size=3), cut_points)
    def test_back_to_back_in_any_chunks(self, messages, cuts) -> None:
        assert_stream(self, parse_socks4_request, messages, cuts)

    def test_socks4_vectors(self) -> None:
        request = SOCKS4Request(SOCKS4Command.CONNECT, 80, "1.2.3.4", b"fred")
        assert_codec(self, parse_socks4_request, request, FRED_CONNECT)
        self.assertFalse(request.is_socks4a)
        assert_codec(
            self,
            parse_socks4_request,
            SOCKS4Request(SOCKS4Command.BIND, 21, "192.0.2.7"),
            b"\x04\x02\x00\x15\xc0\x00\x02\x07\x00",
        )

    def test_socks4a_vector(self) -> None:
        request = SOCKS4Request(SOCKS4Command.CONNECT, 80, "0.0.0.1", b"fred", "example.com")
        assert_codec(
            self,
            parse_socks4_request,
            request,
            b"\x04\x01\x00\x50\x00\x00\x00\x01fred\x00example.com\x00",
        )
        self.assertTrue(request.is_socks4a)

    def test_socks4a_keeps_a_given_marker(self) -> None:
        request = SOCKS4Request(SOCKS4Command.CONNECT, 80, "0.0.0.255", b"", "h")
        self.assertEqual(request.serialize(), b"\x04\x01\x00\x50\x00\x00\x00\xff\x00h\x00")

    def test_socks4a_replaces_a_real_address_with_the_marker(self) -> None:
        for address in ("1.2.3.4", "0.0.0.0"):
            request = SOCKS4Request(SOCKS4Command.CONNECT, 80, address, b"", "example.com")
            self.assertEqual(request.address, "0.0.0.1")
            self.assertEqual(request.serialize()[4:8], b"\x00\x00\x00\x01")

    def test_zero_address_is_plain_socks4(self) -> None:
        # 0.0.0.0 has x == 0: not the 4a marker, so no HOSTNAME is read.
        data = b"\x04\x01\x00\x50\x00\x00\x00\x00\x00"
        self.assertEqual(
            parse_socks4_request(Reader(data)),
            SOCKS4Request(SOCKS4Command.CONNECT, 80, "0.0.0.0"),
        )

    def test_marker_without_hostname_is_invalid(self) -> None:
        self.assertRaises(InvalidField, SOCKS4Request, SOCKS4Command.CONNECT, 80, "0.0.0.5")

    def test_wrong_version(self) -> None:
        for version in (0x00, 0x05):
            error = self.assertRaises(
                UnsupportedVersion, parse_socks4_request, Reader(bytes([version]) + FRED_CONNECT[1:])
            )
            self.assertEqual(error.expected, 4)

    def test_unknown_command_is_refused_as_soon_as_it_arrives(self) -> None:
        for command in (0x00, 0x03, 0xFF):
            buffer = MessageBuffer()
            buffer.feed(bytes([4, command]))
            self.assertRaises(UnsupportedCommand, buffer.next, parse_socks4_request)

    def test_userid_of_255_bytes_is_accepted(self) -> None:
        request = SOCKS4Request(SOCKS4Command.CONNECT, 80, "1.2.3.4", b"u" * 255)
        assert_codec(self, parse_socks4_request, request)

    def test_userid_past_255_bytes_is_too_long_before_its_nul_arrives(self) -> None:
        buffer = MessageBuffer()
        buffer.feed(FRED_CONNECT[:8] + b"u" * 255)
        self.assertIsNone(buffer.next(parse_socks4_request))
        buffer.feed(b"u")
        self.assertRaises(MessageTooLong, buffer.next, parse_socks4_request)
        buffer.feed(b"\x00")
        self.assertRaises(MessageTooLong, buffer.next, parse_socks4_request)

    def test_hostname_of_255_bytes_is_accepted(self) -> None:
        request = SOCKS4Request(SOCKS4Command.CONNECT, 80, "0.0.0.1", b"", "h" * 255)
        assert_codec(self, parse_socks4_request, request)

    def test_hostname_past_255_bytes_is_too_long_before_its_nul_arrives(self) -> None:
        buffer = MessageBuffer()
        buffer.feed(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + b"h" * 255)
        self.assertIsNone(buffer.next(parse_socks4_request))
        buffer.feed(b"h")
        self.assertRaises(MessageTooLong, buffer.next, parse_socks4_request)

    def test_empty_hostname_is_invalid(self) -> None:
        self.assertRaises(
            InvalidField, parse_socks4_request, Reader(b"\x04\x01\x00\x50\x00\x00\x00\x01fred\x00\x00")
        )

    def test_non_ascii_hostname_is_invalid(self) -> None:
        self.assertRaises(
            InvalidField, parse_socks4_request, Reader(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\xc3\xa9\x00")
        )

    def test_construction_limits(self) -> None:
        connect = SOCKS4Command.CONNECT
        self.assertRaises(MessageTooLong, SOCKS4Request, connect, 80, "1.2.3.4", b"u" * 256)
        self.assertRaises(InvalidField, SOCKS4Request, connect, 80, "1.2.3.4", b"a\x00b")
        self.assertRaises(MessageTooLong, SOCKS4Request, connect, 80, "0.0.0.1", b"", "h" * 256)
        self.assertRaises(InvalidField, SOCKS4Request, connect, 80, "0.0.0.1", b"", "")
        self.assertRaises(InvalidField, SOCKS4Request, connect, 80, "0.0.0.1", b"", "a\x00b")
        self.assertRaises(InvalidField, SOCKS4Request, connect, 65536, "1.2.3.4")
        self.assertRaises(InvalidField, SOCKS4Request, connect, 80, "::1")
        self.assertRaises(InvalidField, SOCKS4Request, connect, 80, "example.com")
        self.assertRaises(UnsupportedCommand, SOCKS4Request, 3, 80, "1.2.3.4")

    @given(fuzz_bytes(b"\x04\x01", b"\x04\x02\x00\x50\x00\x00\x00\x01"))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        assert_total(self, parse_socks4_request, data)

    @given(mutated(requests))
    def test_mutated_requests(self, data: bytes) -> None:
        assert_total(self, parse_socks4_request, data)


class SOCKS4ReplyTests(SynchronousTestCase):
    @given(replies, trailing_bytes)
    def test_round_trip(self, reply: SOCKS4Reply, trailing: bytes) -> None:
        assert_codec(self, parse_socks4_reply, reply, trailing=trailing)

    def test_vectors(self) -> None:
        granted = SOCKS4Reply(SOCKS4ReplyCode.GRANTED)
        assert_codec(self, parse_socks4_reply, granted, b"\x00\x5a\x00\x00\x00\x00\x00\x00")
        self.assertTrue(granted.granted)
        assert_codec(
            self,
            parse_socks4_reply,
            SOCKS4Reply(SOCKS4ReplyCode.REJECTED, 1080, "192.0.2.1"),
            b"\x00\x5b\x04\x38\xc0\x00\x02\x01",
        )
        for code in (SOCKS4ReplyCode.IDENT_UNREACHABLE, SOCKS4ReplyCode.IDENT_MISMATCH):
            reply = parse_socks4_reply(Reader(bytes([0, code]) + b"\x00" * 6))
            self.assertEqual(reply.code, code)
            self.assertFalse(reply.granted)

    def test_code_values(self) -> None:
        self.assertEqual([int(c) for c in SOCKS4ReplyCode], [90, 91, 92, 93])
        self.assertEqual([int(c) for c in SOCKS4Command], [1, 2])

    def test_unknown_code_is_kept_and_not_granted(self) -> None:
        reply = parse_socks4_reply(Reader(b"\x00\x00\x00\x00\x00\x00\x00\x00"))
        self.assertEqual(reply.code, 0)
        self.assertNotIsInstance(reply.code, SOCKS4ReplyCode)
        self.assertFalse(reply.granted)

    def test_wrong_version(self) -> None:
        # Some servers put 04 in the reply; the SOCKS 4 paper says VN is 0.
        self.assertRaises(UnsupportedVersion, parse_socks4_reply, Reader(b"\x04\x5a\x00\x00\x00\x00\x00\x00"))

    def test_construction_limits(self) -> None:
        self.assertRaises(InvalidField, SOCKS4Reply, 256)
        self.assertRaises(InvalidField, SOCKS4Reply, 90, 65536)
        self.assertRaises(InvalidField, SOCKS4Reply, 90, 0, "1.2.3")

    @given(fuzz_bytes(b"\x00", b"\x00\x5a"))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        assert_total(self, parse_socks4_reply, data)

    @given(mutated(replies))
    def test_mutated_replies(self, data: bytes) -> None:
        assert_total(self, parse_socks4_reply, data)
