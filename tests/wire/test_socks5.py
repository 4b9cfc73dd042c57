"""Tests for txsocksgss.wire.socks5 (RFC 1928)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.codecs import (
    addresses,
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
from txsocksgss.errors import (
    InvalidField,
    UnsupportedAddressType,
    UnsupportedCommand,
    UnsupportedVersion,
)
from txsocksgss.wire.reader import MessageBuffer, Reader
from txsocksgss.wire.socks5 import (
    Address,
    AddressType,
    AuthMethod,
    Command,
    Greeting,
    MethodSelection,
    Reply,
    ReplyCode,
    Request,
    parse_address,
    parse_greeting,
    parse_method_selection,
    parse_reply,
    parse_request,
    serialize_address,
)

greetings = st.builds(
    Greeting, st.lists(st.integers(0, 255), min_size=1, max_size=255).map(tuple)
)
selections = st.builds(MethodSelection, st.integers(0, 255))
requests = st.builds(Request, st.sampled_from(Command), addresses)
replies = st.builds(
    Reply, st.one_of(st.sampled_from(ReplyCode), st.integers(0x09, 0xFF)), addresses
)

LOCALHOST_80 = Address(AddressType.IPV4, "127.0.0.1", 80)


class AddressTests(SynchronousTestCase):
    @given(addresses, trailing_bytes)
    def test_round_trip(self, address: Address, trailing: bytes) -> None:
        data = serialize_address(address)
        reader = Reader(data + trailing)
        self.assertEqual(parse_address(reader), address)
        self.assertEqual(reader.offset, len(data))

    def test_of_recognises_ip_literals(self) -> None:
        self.assertEqual(Address.of("192.0.2.1", 1), Address(AddressType.IPV4, "192.0.2.1", 1))
        self.assertEqual(Address.of("2001:DB8::1", 1), Address(AddressType.IPV6, "2001:db8::1", 1))
        self.assertEqual(Address.of("example.com", 1), Address(AddressType.DOMAIN, "example.com", 1))

    def test_vectors(self) -> None:
        self.assertEqual(serialize_address(LOCALHOST_80), b"\x01\x7f\x00\x00\x01\x00\x50")
        self.assertEqual(
            serialize_address(Address(AddressType.DOMAIN, "example.com", 443)),
            b"\x03\x0bexample.com\x01\xbb",
        )
        self.assertEqual(
            serialize_address(Address(AddressType.IPV6, "::1", 443)),
            b"\x04" + b"\x00" * 15 + b"\x01\x01\xbb",
        )

    def test_construction_checks_port_and_name_length(self) -> None:
        self.assertRaises(InvalidField, Address, AddressType.IPV4, "127.0.0.1", 65536)
        self.assertRaises(InvalidField, Address, AddressType.IPV4, "127.0.0.1", -1)
        self.assertRaises(InvalidField, Address, AddressType.DOMAIN, "a" * 256, 80)
        self.assertRaises(InvalidField, Address, AddressType.DOMAIN, "", 80)
        self.assertRaises(InvalidField, Address, AddressType.DOMAIN, "a\x00b", 80)
        Address(AddressType.DOMAIN, "a" * 255, 80)

    def test_zero_length_domain_is_invalid(self) -> None:
        self.assertRaises(InvalidField, parse_address, Reader(b"\x03\x00\x00\x50"))

    def test_nul_in_domain_is_invalid(self) -> None:
        self.assertRaises(InvalidField, parse_address, Reader(b"\x03\x03a\x00b\x00\x50"))

    def test_non_ascii_domain_is_invalid(self) -> None:
        self.assertRaises(InvalidField, parse_address, Reader(b"\x03\x02\xc3\xa9\x00\x50"))

    def test_unknown_address_type(self) -> None:
        for atyp in (0x00, 0x02, 0x05, 0xFF):
            self.assertRaises(UnsupportedAddressType, parse_address, Reader(bytes([atyp]) + b"\x00" * 20))


class GreetingTests(SynchronousTestCase):
    @given(greetings)
    def test_round_trip(self, greeting: Greeting) -> None:
        assert_codec(self, parse_greeting, greeting)

    @given(greetings, trailing_bytes)
    def test_trailing_bytes_stay_buffered(self, greeting: Greeting, trailing: bytes) -> None:
        assert_leaves_trailing(self, parse_greeting, greeting.serialize(), greeting, trailing)

    def test_vectors(self) -> None:
        assert_codec(self, parse_greeting, Greeting((AuthMethod.NONE,)), b"\x05\x01\x00")
        assert_codec(
            self,
            parse_greeting,
            Greeting((AuthMethod.NONE, AuthMethod.GSSAPI, AuthMethod.USERPASS, AuthMethod.MAF)),
            b"\x05\x04\x00\x01\x02\x08",
        )

    def test_wrong_version(self) -> None:
        for data in (b"\x04\x01\x00", b"\x00\x01\x00", b"\x01"):
            error = self.assertRaises(UnsupportedVersion, parse_greeting, Reader(data))
            self.assertEqual(error.expected, 5)

    def test_no_methods_is_invalid(self) -> None:
        self.assertRaises(InvalidField, parse_greeting, Reader(b"\x05\x00"))

    def test_construction_limits(self) -> None:
        self.assertRaises(InvalidField, Greeting, ())
        self.assertRaises(InvalidField, Greeting, (0,) * 256)

    def test_maximal_greeting(self) -> None:
        assert_codec(self, parse_greeting, Greeting(tuple(range(255))))

    @given(fuzz_bytes(b"\x05"))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        assert_total(self, parse_greeting, data)


class MethodSelectionTests(SynchronousTestCase):
    @given(selections, trailing_bytes)
    def test_round_trip(self, selection: MethodSelection, trailing: bytes) -> None:
        assert_codec(self, parse_method_selection, selection, trailing=trailing)

    def test_vectors(self) -> None:
        assert_codec(self, parse_method_selection, MethodSelection(AuthMethod.NONE), b"\x05\x00")
        assert_codec(self, parse_method_selection, MethodSelection(AuthMethod.GSSAPI), b"\x05\x01")
        assert_codec(
            self, parse_method_selection, MethodSelection(AuthMethod.NO_ACCEPTABLE), b"\x05\xff"
        )

    def test_wrong_version(self) -> None:
        self.assertRaises(UnsupportedVersion, parse_method_selection, Reader(b"\x04\x00"))

    def test_method_codes_are_iana(self) -> None:
        self.assertEqual(
            [int(m) for m in AuthMethod], [0x00, 0x01, 0x02, 0x08, 0xFF]
        )

    @given(fuzz_bytes(b"\x05"))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        assert_total(self, parse_method_selection, data)


class RequestTests(SynchronousTestCase):
    @given(requests, trailing_bytes)
    def test_round_trip(self, request: Request, trailing: bytes) -> None:
        assert_codec(self, parse_request, request, trailing=trailing)

    @given(st.lists(requests, min_size=1, max_size=4), cut_points)
    def test_back_to_back_in_any_chunks(self, messages, cuts) -> None:
        assert_stream(self, parse_request, messages, cuts)

    def test_connect_ipv4_vector(self) -> None:
        assert_codec(
            self,
            parse_request,
            Request(Command.CONNECT, LOCALHOST_80),
            b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50",
        )

    def test_domain_and_ipv6_vectors(self) -> None:
        assert_codec(
            self,
            parse_request,
            Request(Command.CONNECT, Address(AddressType.DOMAIN, "example.com", 443)),
            b"\x05\x01\x00\x03\x0bexample.com\x01\xbb",
        )
        assert_codec(
            self,
            parse_request,
            Request(Command.BIND, Address(AddressType.IPV6, "2001:db8::1", 21)),
            b"\x05\x02\x00\x04\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01\x00\x15",
        )
        assert_codec(
            self,
            parse_request,
            Request(Command.UDP_ASSOCIATE, Address(AddressType.IPV4, "0.0.0.0", 0)),
            b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00",
        )

    def test_reserved_octet_is_ignored(self) -> None:
        assert_parses_exactly(
            self,
            parse_request,
            b"\x05\x01\xff\x01\x7f\x00\x00\x01\x00\x50",
            Request(Command.CONNECT, LOCALHOST_80),
        )

    def test_wrong_version(self) -> None:
        self.assertRaises(
            UnsupportedVersion, parse_request, Reader(b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50")
        )

    def test_unknown_command(self) -> None:
        for command in (0x00, 0x04, 0xFF):
            self.assertRaises(
                UnsupportedCommand,
                parse_request,
                Reader(bytes([5, command]) + b"\x00\x01\x7f\x00\x00\x01\x00\x50"),
            )

    def test_unknown_address_type_wins_over_unknown_command(self) -> None:
        self.assertRaises(
            UnsupportedAddressType, parse_request, Reader(b"\x05\x09\x00\x02\x7f\x00\x00\x01\x00\x50")
        )

    def test_unknown_address_type_is_reported_before_the_address_arrives(self) -> None:
        buffer = MessageBuffer()
        buffer.feed(b"\x05\x01\x00\x05")
        self.assertRaises(UnsupportedAddressType, buffer.next, parse_request)

    def test_domain_of_maximal_length(self) -> None:
        assert_codec(
            self, parse_request, Request(Command.CONNECT, Address(AddressType.DOMAIN, "a" * 255, 80))
        )

    def test_unknown_commands_are_also_unsupported_command_errors_for_invalid_field(self) -> None:
        # A server that maps errors to replies catches UnsupportedCommand (REP 07)
        # before InvalidField (REP 01); both are InvalidField.
        self.assertTrue(issubclass(UnsupportedCommand, InvalidField))
        self.assertTrue(issubclass(UnsupportedAddressType, InvalidField))

    @given(fuzz_bytes(b"\x05\x01\x00", b"\x05\x02\x00\x03", b"\x05\x03\x00\x04"))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        assert_total(self, parse_request, data)

    @given(mutated(requests))
    def test_mutated_requests(self, data: bytes) -> None:
        assert_total(self, parse_request, data)


class ReplyTests(SynchronousTestCase):
    @given(replies, trailing_bytes)
    def test_round_trip(self, reply: Reply, trailing: bytes) -> None:
        assert_codec(self, parse_reply, reply, trailing=trailing)

    def test_vectors(self) -> None:
        assert_codec(
            self,
            parse_reply,
            Reply(ReplyCode.SUCCEEDED, Address(AddressType.IPV4, "0.0.0.0", 0)),
            b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00",
        )
        assert_codec(
            self,
            parse_reply,
            Reply(ReplyCode.CONNECTION_REFUSED, Address(AddressType.IPV4, "192.0.2.1", 1080)),
            b"\x05\x05\x00\x01\xc0\x00\x02\x01\x04\x38",
        )

    def test_reply_codes_are_rfc_1928(self) -> None:
        self.assertEqual([int(code) for code in ReplyCode], list(range(9)))

    def test_unknown_code_is_kept_as_int(self) -> None:
        reply = parse_reply(Reader(b"\x05\x42\x00\x01\x00\x00\x00\x00\x00\x00"))
        self.assertEqual(reply.code, 0x42)
        self.assertNotIsInstance(reply.code, ReplyCode)
        self.assertIsInstance(parse_reply(Reader(b"\x05\x01\x00\x01\x00\x00\x00\x00\x00\x00")).code, ReplyCode)

    def test_wrong_version(self) -> None:
        self.assertRaises(
            UnsupportedVersion, parse_reply, Reader(b"\x00\x5a\x00\x01\x00\x00\x00\x00\x00\x00")
        )

    def test_unknown_address_type(self) -> None:
        self.assertRaises(
            UnsupportedAddressType, parse_reply, Reader(b"\x05\x00\x00\x07\x00\x00\x00\x00\x00\x00")
        )

    @given(fuzz_bytes(b"\x05\x00\x00"))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        assert_total(self, parse_reply, data)

    @given(mutated(replies))
    def test_mutated_replies(self, data: bytes) -> None:
        assert_total(self, parse_reply, data)
