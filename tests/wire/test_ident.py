"""Tests for txsocksgss.wire.ident (RFC 1413)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.codecs import (
    assert_codec,
    assert_parses_exactly,
    assert_stream,
    assert_total,
    cut_points,
    fuzz_bytes,
    mutated,
    trailing_bytes,
)
from txsocksgss.errors import InvalidField, MessageTooLong
from txsocksgss.wire.ident import (
    MAX_LINE_LENGTH,
    MAX_USER_ID_LENGTH,
    IdentError,
    IdentErrorType,
    IdentQuery,
    IdentUserId,
    parse_ident_query,
    parse_ident_response,
)
from txsocksgss.wire.reader import MessageBuffer, Reader

ports = st.integers(min_value=1, max_value=0xFFFF)
tokens = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=":,"),
    min_size=1,
    max_size=64,
)
user_ids = st.text(
    alphabet=st.characters(blacklist_characters="\x00\r\n", blacklist_categories=["Cs"]),
    min_size=1,
    max_size=120,
).filter(lambda s: s.strip(" \t") == s and len(s.encode("utf-8")) <= MAX_USER_ID_LENGTH)
queries = st.builds(IdentQuery, ports, ports)
responses = st.one_of(
    st.builds(IdentUserId, ports, ports, tokens, st.none() | tokens, user_ids),
    st.builds(IdentError, ports, ports, st.sampled_from(IdentErrorType) | tokens),
)

TEXT_TOKENS = (
    b"6193", b"23", b"0", b"65536", b"99999999", b",", b":", b" ", b"\t", b"USERID", b"userid",
    b"ERROR", b"NO-USER", b"UNIX", b"OTHER", b"UTF-8", b"\r\n", b"\n", b"\r", b"\x00", b"\xff",
    b"\xc3\xa9", b"x" * 70,
)


class IdentQueryTests(SynchronousTestCase):
    @given(queries, trailing_bytes)
    def test_round_trip(self, query: IdentQuery, trailing: bytes) -> None:
        assert_codec(self, parse_ident_query, query, trailing=trailing)

    @given(st.lists(queries, min_size=1, max_size=4), cut_points)
    def test_back_to_back_in_any_chunks(self, messages, cuts) -> None:
        assert_stream(self, parse_ident_query, messages, cuts)

    def test_vector(self) -> None:
        assert_codec(self, parse_ident_query, IdentQuery(6193, 23), b"6193, 23\r\n")

    def test_white_space_and_bare_lf_are_accepted(self) -> None:
        for line in (b"6193,23\r\n", b"  6193 ,\t23  \r\n", b"6193, 23\n", b"06193 , 00023\r\n"):
            assert_parses_exactly(self, parse_ident_query, line, IdentQuery(6193, 23))

    def test_ports_must_be_1_to_65535(self) -> None:
        for line in (b"0, 23\r\n", b"6193, 0\r\n", b"65536, 23\r\n", b"6193, 123456\r\n"):
            self.assertRaises(InvalidField, parse_ident_query, Reader(line))
        self.assertRaises(InvalidField, IdentQuery, 0, 23)
        self.assertRaises(InvalidField, IdentQuery, 23, 65536)

    def test_malformed_queries(self) -> None:
        for line in (b"\r\n", b"6193\r\n", b"6193 23\r\n", b"a, 23\r\n", b"6193, 23, 5\r\n",
                     b"+6193, 23\r\n", b"6193, 2 3\r\n", b"\xd9\xa1, 23\r\n"):
            self.assertRaises(InvalidField, parse_ident_query, Reader(line))

    def test_line_past_1000_octets_is_too_long_before_its_end(self) -> None:
        buffer = MessageBuffer()
        buffer.feed(b" " * MAX_LINE_LENGTH)
        self.assertIsNone(buffer.next(parse_ident_query))
        buffer.feed(b" ")
        self.assertRaises(MessageTooLong, buffer.next, parse_ident_query)

    def test_line_of_1000_octets_is_accepted(self) -> None:
        line = b"6193, 23" + b" " * (MAX_LINE_LENGTH - 9) + b"\r\n"
        assert_parses_exactly(self, parse_ident_query, line, IdentQuery(6193, 23))

    @given(fuzz_bytes(b"6193, ", tokens=TEXT_TOKENS))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        assert_total(self, parse_ident_query, data)


class IdentResponseTests(SynchronousTestCase):
    @given(responses, trailing_bytes)
    def test_round_trip(self, response, trailing: bytes) -> None:
        assert_codec(self, parse_ident_response, response, trailing=trailing)

    @given(st.lists(responses, min_size=1, max_size=3), cut_points)
    def test_back_to_back_in_any_chunks(self, messages, cuts) -> None:
        assert_stream(self, parse_ident_response, messages, cuts)

    def test_rfc_examples(self) -> None:
        # RFC 1413 s6 examples.
        assert_codec(
            self,
            parse_ident_response,
            IdentUserId(6193, 23, "UNIX", None, "stjohns"),
            b"6193, 23 : USERID : UNIX : stjohns\r\n",
        )
        assert_codec(
            self,
            parse_ident_response,
            IdentError(6195, 23, IdentErrorType.NO_USER),
            b"6195, 23 : ERROR : NO-USER\r\n",
        )

    def test_charset(self) -> None:
        response = IdentUserId(113, 1080, "UNIX", "UTF-8", "j\u00f6rg")
        assert_codec(self, parse_ident_response, response, b"113, 1080 : USERID : UNIX,UTF-8 : j\xc3\xb6rg\r\n")
        assert_parses_exactly(
            self, parse_ident_response, b"113,1080:USERID: UNIX , UTF-8 :j\xc3\xb6rg\r\n", response
        )

    def test_every_error_type(self) -> None:
        for error in IdentErrorType:
            line = f"1, 2 : ERROR : {error.value}\r\n".encode()
            parsed = parse_ident_response(Reader(line))
            assert isinstance(parsed, IdentError)
            self.assertIs(parsed.error, error)
            self.assertEqual(parsed.serialize(), line)

    def test_nonstandard_error_is_kept_as_text(self) -> None:
        parsed = parse_ident_response(Reader(b"1, 2 : ERROR : X-NO-IDENT-HERE\r\n"))
        self.assertEqual(parsed, IdentError(1, 2, "X-NO-IDENT-HERE"))
        assert isinstance(parsed, IdentError)
        self.assertNotIsInstance(parsed.error, IdentErrorType)

    def test_user_id_keeps_its_colons_and_inner_white_space(self) -> None:
        parsed = parse_ident_response(Reader(b"6193, 23 : USERID : OTHER : a:b : c\td \r\n"))
        self.assertEqual(parsed, IdentUserId(6193, 23, "OTHER", None, "a:b : c\td"))

    def test_user_id_octets_survive_whatever_their_encoding(self) -> None:
        line = b"6193, 23 : USERID : UNIX , ISO-8859-1 : \xe9t\xe9\r\n"
        parsed = parse_ident_response(Reader(line))
        assert isinstance(parsed, IdentUserId)
        self.assertEqual(parsed.charset, "ISO-8859-1")
        self.assertEqual(parsed.user_id.encode("utf-8", "surrogateescape"), b"\xe9t\xe9")
        self.assertEqual(parsed.serialize(), b"6193, 23 : USERID : UNIX,ISO-8859-1 : \xe9t\xe9\r\n")

    def test_keywords_are_case_insensitive_and_lf_alone_ends_a_line(self) -> None:
        assert_parses_exactly(
            self,
            parse_ident_response,
            b"6193 , 23 : userid : UNIX : bob\n",
            IdentUserId(6193, 23, "UNIX", None, "bob"),
        )
        assert_parses_exactly(
            self, parse_ident_response, b"6193,23:error:HIDDEN-USER\n",
            IdentError(6193, 23, IdentErrorType.HIDDEN_USER),
        )

    def test_user_id_of_512_octets_is_accepted(self) -> None:
        response = IdentUserId(6193, 23, "UNIX", None, "u" * MAX_USER_ID_LENGTH)
        assert_codec(self, parse_ident_response, response)

    def test_user_id_of_513_octets_is_too_long(self) -> None:
        line = b"6193, 23 : USERID : UNIX : " + b"u" * (MAX_USER_ID_LENGTH + 1) + b"\r\n"
        self.assertRaises(MessageTooLong, parse_ident_response, Reader(line))
        self.assertRaises(MessageTooLong, IdentUserId, 1, 2, "UNIX", None, "u" * 513)
        # Octets, not characters, are counted.
        self.assertRaises(MessageTooLong, IdentUserId, 1, 2, "UNIX", None, "\u00e9" * 257)

    def test_line_past_1000_octets_is_too_long_before_its_end(self) -> None:
        buffer = MessageBuffer()
        buffer.feed(b"6193, 23 : USERID : UNIX : " + b" " * MAX_LINE_LENGTH)
        self.assertRaises(MessageTooLong, buffer.next, parse_ident_response)

    def test_malformed_responses(self) -> None:
        for line in (
            b"\r\n",
            b"6193, 23\r\n",
            b"6193, 23 : USERID\r\n",
            b"6193, 23 : USERID : UNIX\r\n",
            b"6193, 23 : USERID : UNIX :\r\n",
            b"6193, 23 : USERID : UNIX :   \r\n",
            b"6193, 23 : USERID : : bob\r\n",
            b"6193, 23 : USERID : UN IX : bob\r\n",
            b"6193, 23 : USERID : UNIX, : bob\r\n",
            b"6193, 23 : USERID : UNIX : bo\x00b\r\n",
            b"6193, 23 : USERID : UNIX : bo\rb\r\n",
            b"6193, 23 : USERID : \xc3\xa9 : bob\r\n",
            b"6193, 23 : USER-ID : UNIX : bob\r\n",
            b"6193, 23 : ERROR\r\n",
            b"6193, 23 : ERROR : \r\n",
            b"6193, 23 : ERROR : NO-USER : extra\r\n",
            b"6193, 23 : ERROR : NO USER\r\n",
            b"6193, 23 : ERROR : " + b"X" * 65 + b"\r\n",
            b"0, 23 : ERROR : NO-USER\r\n",
            b"6193 : ERROR : NO-USER\r\n",
        ):
            self.assertRaises(InvalidField, parse_ident_response, Reader(line))

    def test_construction_checks(self) -> None:
        self.assertRaises(InvalidField, IdentUserId, 1, 2, "UNIX", None, "")
        self.assertRaises(InvalidField, IdentUserId, 1, 2, "UNIX", None, " bob")
        self.assertRaises(InvalidField, IdentUserId, 1, 2, "UNIX", None, "bob\t")
        self.assertRaises(InvalidField, IdentUserId, 1, 2, "UNIX", None, "b\nob")
        self.assertRaises(InvalidField, IdentUserId, 1, 2, "UNIX", None, "\ud800")
        self.assertRaises(InvalidField, IdentUserId, 1, 2, "UN:IX", None, "bob")
        self.assertRaises(InvalidField, IdentUserId, 1, 2, "UNIX", "", "bob")
        self.assertRaises(InvalidField, IdentUserId, 0, 2, "UNIX", None, "bob")
        self.assertRaises(InvalidField, IdentError, 1, 2, "")
        self.assertRaises(InvalidField, IdentError, 1, 2, "NO,USER")

    @given(fuzz_bytes(b"6193, 23 : USERID : ", b"6193, 23 : ERROR : ", tokens=TEXT_TOKENS))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        assert_total(self, parse_ident_response, data)

    @given(mutated(responses))
    def test_mutated_responses(self, data: bytes) -> None:
        assert_total(self, parse_ident_response, data)
