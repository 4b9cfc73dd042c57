"""Tests for txsocksgss.wire.gssapi (RFC 1961 framing)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.codecs import (
    assert_codec,
    assert_leaves_trailing,
    assert_parses_exactly,
    assert_stream,
    assert_total,
    cut_points,
    fuzz_bytes,
    mutated,
    trailing_bytes,
)
from txsocksgss.errors import InvalidField, MessageTooLong, UnsupportedVersion
from txsocksgss.wire.gssapi import (
    ABORT_FRAME,
    GSSAPI_VERSION,
    GSSAPIFrame,
    MessageType,
    ProtectionLevel,
    decode_protection_level,
    encode_protection_level,
    parse_gssapi_frame,
)
from txsocksgss.wire.reader import MessageBuffer, Reader

token_types = st.sampled_from(
    [MessageType.AUTHENTICATION, MessageType.PROTECTION, MessageType.ENCAPSULATION]
)
frames = st.one_of(
    st.builds(GSSAPIFrame, token_types, st.binary(max_size=300)),
    st.just(GSSAPIFrame(MessageType.ABORT)),
)


class GSSAPIFrameTests(SynchronousTestCase):
    @given(frames, trailing_bytes)
    def test_round_trip(self, frame: GSSAPIFrame, trailing: bytes) -> None:
        assert_codec(self, parse_gssapi_frame, frame, trailing=trailing)

    @given(st.lists(frames, min_size=1, max_size=5), cut_points)
    def test_back_to_back_in_any_chunks(self, messages, cuts) -> None:
        assert_stream(self, parse_gssapi_frame, messages, cuts)

    def test_vectors(self) -> None:
        assert_codec(
            self,
            parse_gssapi_frame,
            GSSAPIFrame(MessageType.AUTHENTICATION, b"\x60\x82"),
            b"\x01\x01\x00\x02\x60\x82",
        )
        assert_codec(
            self,
            parse_gssapi_frame,
            GSSAPIFrame(MessageType.PROTECTION, b"wrapped"),
            b"\x01\x02\x00\x07wrapped",
        )
        assert_codec(
            self,
            parse_gssapi_frame,
            GSSAPIFrame(MessageType.ENCAPSULATION, b"x" * 0x0102),
            b"\x01\x03\x01\x02" + b"x" * 0x0102,
        )

    def test_empty_context_token_means_acceptor_done(self) -> None:
        # RFC 1961 s3.3: an acceptor with no output token sends LEN 0.
        assert_codec(
            self, parse_gssapi_frame, GSSAPIFrame(MessageType.AUTHENTICATION), b"\x01\x01\x00\x00"
        )

    def test_abort_is_two_bytes_without_length(self) -> None:
        self.assertEqual(GSSAPIFrame(MessageType.ABORT).serialize(), b"\x01\xff")
        self.assertEqual(ABORT_FRAME.serialize(), b"\x01\xff")
        assert_codec(self, parse_gssapi_frame, ABORT_FRAME, b"\x01\xff")
        # Whatever follows an abort is not its length.
        assert_leaves_trailing(self, parse_gssapi_frame, b"\x01\xff", ABORT_FRAME, b"\x00\x05hello")

    def test_abort_with_a_token_is_invalid(self) -> None:
        self.assertRaises(InvalidField, GSSAPIFrame, MessageType.ABORT, b"x")

    def test_maximal_token(self) -> None:
        frame = GSSAPIFrame(MessageType.ENCAPSULATION, bytes(65535))
        data = frame.serialize()
        self.assertEqual(data[:4], b"\x01\x03\xff\xff")
        assert_parses_exactly(self, parse_gssapi_frame, data, frame)
        assert_leaves_trailing(self, parse_gssapi_frame, data, frame, b"\x01")
        buffer = MessageBuffer()  # the default limit holds a maximal frame
        buffer.feed(data[:-1])
        self.assertIsNone(buffer.next(parse_gssapi_frame))
        buffer.feed(data[-1:])
        self.assertEqual(buffer.next(parse_gssapi_frame), frame)

    def test_over_length_token(self) -> None:
        self.assertRaises(MessageTooLong, GSSAPIFrame, MessageType.ENCAPSULATION, bytes(65536))

    def test_wrong_version(self) -> None:
        for version in (0x00, 0x02, 0x05):
            error = self.assertRaises(
                UnsupportedVersion, parse_gssapi_frame, Reader(bytes([version]) + b"\x01\x00\x00")
            )
            self.assertEqual(error.expected, GSSAPI_VERSION)

    def test_unknown_message_type(self) -> None:
        for mtyp in (0x00, 0x04, 0xFE):
            buffer = MessageBuffer()
            buffer.feed(bytes([1, mtyp]))
            self.assertRaises(InvalidField, buffer.next, parse_gssapi_frame)
        self.assertRaises(InvalidField, GSSAPIFrame, 0x04, b"")

    def test_message_type_values(self) -> None:
        self.assertEqual([int(t) for t in MessageType], [0x01, 0x02, 0x03, 0xFF])

    @given(fuzz_bytes(b"\x01", b"\x01\x01", b"\x01\x03"))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        assert_total(self, parse_gssapi_frame, data)

    @given(mutated(frames))
    def test_mutated_frames(self, data: bytes) -> None:
        assert_total(self, parse_gssapi_frame, data)


class ProtectionLevelTests(SynchronousTestCase):
    def test_vectors(self) -> None:
        self.assertEqual(encode_protection_level(ProtectionLevel.CLEAR), b"\x00")
        self.assertEqual(encode_protection_level(ProtectionLevel.INTEGRITY), b"\x01")
        self.assertEqual(encode_protection_level(ProtectionLevel.CONFIDENTIALITY), b"\x02")
        self.assertEqual(encode_protection_level(ProtectionLevel.SELECTIVE), b"\x03")
        self.assertIs(decode_protection_level(b"\x02"), ProtectionLevel.CONFIDENTIALITY)

    @given(st.sampled_from(ProtectionLevel))
    def test_round_trip(self, level: ProtectionLevel) -> None:
        self.assertIs(decode_protection_level(encode_protection_level(level)), level)
        self.assertIs(decode_protection_level(encode_protection_level(int(level))), level)

    def test_undefined_level(self) -> None:
        for value in (4, 0xFF):
            self.assertRaises(InvalidField, decode_protection_level, bytes([value]))
        self.assertRaises(InvalidField, encode_protection_level, 4)
        self.assertRaises(InvalidField, encode_protection_level, -1)

    def test_payload_must_be_one_octet(self) -> None:
        self.assertRaises(InvalidField, decode_protection_level, b"")
        self.assertRaises(InvalidField, decode_protection_level, b"\x01\x02")

    @given(st.binary(max_size=4))
    def test_arbitrary_payloads(self, token: bytes) -> None:
        try:
            level = decode_protection_level(token)
        except InvalidField:
            self.assertFalse(len(token) == 1 and token[0] <= 3)
        else:
            self.assertEqual(encode_protection_level(level), token)
