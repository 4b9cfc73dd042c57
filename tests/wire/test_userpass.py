"""Tests for txsocksgss.wire.userpass (RFC 1929)."""

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
from txsocksgss.errors import InvalidField, UnsupportedVersion
from txsocksgss.wire.reader import Reader
from txsocksgss.wire.userpass import (
    USERPASS_VERSION,
    UserPassRequest,
    UserPassResponse,
    parse_userpass_request,
    parse_userpass_response,
)

fields = st.binary(min_size=1, max_size=255)
requests = st.builds(UserPassRequest, fields, fields)
responses = st.builds(UserPassResponse, st.integers(0, 255))


class UserPassRequestTests(SynchronousTestCase):
    @given(requests, trailing_bytes)
    def test_round_trip(self, request: UserPassRequest, trailing: bytes) -> None:
        assert_codec(self, parse_userpass_request, request, trailing=trailing)

    @given(st.lists(requests, min_size=1, max_size=3), cut_points)
    def test_back_to_back_in_any_chunks(self, messages, cuts) -> None:
        assert_stream(self, parse_userpass_request, messages, cuts)

    def test_vector(self) -> None:
        assert_codec(
            self,
            parse_userpass_request,
            UserPassRequest(b"alice", b"secret"),
            b"\x01\x05alice\x06secret",
        )

    def test_maximal_fields(self) -> None:
        request = UserPassRequest(b"u" * 255, b"p" * 255)
        assert_codec(self, parse_userpass_request, request, b"\x01\xff" + b"u" * 255 + b"\xff" + b"p" * 255)

    def test_repr_hides_the_password(self) -> None:
        request = UserPassRequest(b"alice", b"s3cr3t-value")
        self.assertIn("alice", repr(request))
        self.assertNotIn("s3cr3t", repr(request))
        self.assertNotIn("s3cr3t", str(request))

    def test_equality_still_compares_the_password(self) -> None:
        self.assertNotEqual(UserPassRequest(b"a", b"x"), UserPassRequest(b"a", b"y"))

    def test_wrong_version(self) -> None:
        for version in (0x00, 0x02, 0x05):
            error = self.assertRaises(
                UnsupportedVersion,
                parse_userpass_request,
                Reader(bytes([version]) + b"\x01a\x01b"),
            )
            self.assertEqual(error.expected, USERPASS_VERSION)

    def test_empty_user_name_is_invalid(self) -> None:
        self.assertRaises(InvalidField, parse_userpass_request, Reader(b"\x01\x00\x01b"))

    def test_empty_password_is_invalid(self) -> None:
        self.assertRaises(InvalidField, parse_userpass_request, Reader(b"\x01\x01a\x00"))

    def test_construction_limits(self) -> None:
        self.assertRaises(InvalidField, UserPassRequest, b"", b"p")
        self.assertRaises(InvalidField, UserPassRequest, b"u", b"")
        self.assertRaises(InvalidField, UserPassRequest, b"u" * 256, b"p")
        self.assertRaises(InvalidField, UserPassRequest, b"u", b"p" * 256)

    @given(fuzz_bytes(b"\x01", b"\x01\x05alice"))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        assert_total(self, parse_userpass_request, data)

    @given(mutated(requests))
    def test_mutated_requests(self, data: bytes) -> None:
        assert_total(self, parse_userpass_request, data)


class UserPassResponseTests(SynchronousTestCase):
    @given(responses, trailing_bytes)
    def test_round_trip(self, response: UserPassResponse, trailing: bytes) -> None:
        assert_codec(self, parse_userpass_response, response, trailing=trailing)

    def test_vectors(self) -> None:
        success = UserPassResponse(0x00)
        assert_codec(self, parse_userpass_response, success, b"\x01\x00")
        self.assertTrue(success.succeeded)
        failure = UserPassResponse(0x01)
        assert_codec(self, parse_userpass_response, failure, b"\x01\x01")
        self.assertFalse(failure.succeeded)

    @given(st.integers(1, 255))
    def test_every_nonzero_status_is_failure(self, status: int) -> None:
        self.assertFalse(parse_userpass_response(Reader(bytes([1, status]))).succeeded)

    def test_wrong_version(self) -> None:
        # A server answering with the SOCKS version instead of 01 is refused.
        self.assertRaises(UnsupportedVersion, parse_userpass_response, Reader(b"\x05\x00"))

    def test_status_must_be_an_octet(self) -> None:
        self.assertRaises(InvalidField, UserPassResponse, 256)
        self.assertRaises(InvalidField, UserPassResponse, -1)

    @given(fuzz_bytes(b"\x01"))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        assert_total(self, parse_userpass_response, data)
