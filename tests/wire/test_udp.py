"""Tests for txsocksgss.wire.udp (RFC 1928 s7)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.codecs import addresses
from txsocksgss.errors import (
    InvalidField,
    ProtocolError,
    TruncatedMessage,
    UnsupportedAddressType,
)
from txsocksgss.wire.socks5 import Address, AddressType
from txsocksgss.wire.udp import UDPDatagram, UDPHeader, parse_udp_datagram

datagrams = st.builds(UDPDatagram, st.integers(0, 255), addresses, st.binary(max_size=200))

DNS_QUERY = Address(AddressType.IPV4, "127.0.0.1", 53)


class UDPDatagramTests(SynchronousTestCase):
    @given(datagrams)
    def test_round_trip(self, datagram: UDPDatagram) -> None:
        data = datagram.serialize()
        self.assertEqual(parse_udp_datagram(data), datagram)
        self.assertEqual(parse_udp_datagram(bytearray(data)), datagram)
        self.assertEqual(parse_udp_datagram(memoryview(data)), datagram)

    @given(datagrams)
    def test_header_then_payload_is_the_datagram(self, datagram: UDPDatagram) -> None:
        self.assertEqual(datagram.header.serialize() + datagram.data, datagram.serialize())
        self.assertEqual(datagram.header, UDPHeader(datagram.frag, datagram.destination))

    @given(datagrams)
    def test_every_cut_inside_the_header_is_truncated(self, datagram: UDPDatagram) -> None:
        data = datagram.serialize()
        header_length = len(data) - len(datagram.data)
        for end in range(header_length):
            self.assertRaises(TruncatedMessage, parse_udp_datagram, data[:end])
        # Cut inside the payload: a shorter datagram, not an error.
        for end in range(header_length, len(data) + 1):
            self.assertEqual(parse_udp_datagram(data[:end]).data, datagram.data[: end - header_length])

    def test_vectors(self) -> None:
        datagram = UDPDatagram(0, DNS_QUERY, b"query")
        wire = b"\x00\x00\x00\x01\x7f\x00\x00\x01\x00\x35query"
        self.assertEqual(datagram.serialize(), wire)
        self.assertEqual(parse_udp_datagram(wire), datagram)
        wire = b"\x00\x00\x02\x03\x0bexample.com\x01\xbb"
        self.assertEqual(
            parse_udp_datagram(wire),
            UDPDatagram(2, Address(AddressType.DOMAIN, "example.com", 443), b""),
        )
        wire = b"\x00\x00\x00\x04" + b"\x00" * 15 + b"\x01\x00\x07ping"
        self.assertEqual(
            parse_udp_datagram(wire), UDPDatagram(0, Address(AddressType.IPV6, "::1", 7), b"ping")
        )

    def test_empty_payload(self) -> None:
        datagram = UDPDatagram(0, DNS_QUERY, b"")
        self.assertEqual(parse_udp_datagram(datagram.serialize()), datagram)

    def test_reserved_must_be_zero(self) -> None:
        for rsv in (b"\x00\x01", b"\x01\x00", b"\xff\xff"):
            self.assertRaises(
                InvalidField, parse_udp_datagram, rsv + b"\x00\x01\x7f\x00\x00\x01\x00\x35"
            )

    def test_unknown_address_type(self) -> None:
        self.assertRaises(
            UnsupportedAddressType, parse_udp_datagram, b"\x00\x00\x00\x02\x7f\x00\x00\x01\x00\x35"
        )

    def test_empty_domain_is_invalid(self) -> None:
        self.assertRaises(InvalidField, parse_udp_datagram, b"\x00\x00\x00\x03\x00\x00\x35")

    def test_empty_datagram_is_truncated(self) -> None:
        self.assertRaises(TruncatedMessage, parse_udp_datagram, b"")

    def test_frag_must_be_an_octet(self) -> None:
        self.assertRaises(InvalidField, UDPDatagram, 256, DNS_QUERY, b"")
        self.assertRaises(InvalidField, UDPHeader, -1, DNS_QUERY)

    @given(st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"\x00\x00" + b)))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        try:
            datagram = parse_udp_datagram(data)
        except ProtocolError:
            return
        self.assertEqual(parse_udp_datagram(datagram.serialize()), datagram)
