"""
The SOCKS 5 UDP relay header (RFC 1928 s7).

    datagram   RSV(2)=0000 FRAG(1) ATYP DST.ADDR DST.PORT DATA

Each datagram stands alone, so `parse_udp_datagram` takes one whole
datagram rather than a `Reader`: a datagram that ends inside the header is
`TruncatedMessage`, not "need more".  FRAG 0 is a standalone datagram;
other values are fragments (RFC 1928 s7), which an implementation may
drop.  DATA is everything after the header, possibly nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from txsocksgss.errors import InvalidField, TruncatedMessage
from txsocksgss.wire.reader import NeedMore, Reader
from txsocksgss.wire.socks5 import Address, parse_address, serialize_address

__all__ = [
    "UDPHeader",
    "UDPDatagram",
    "parse_udp_datagram",
]

_RSV_FRAG = struct.Struct("!HB")


def _check_frag(frag: int) -> None:
    if not 0 <= frag <= 0xFF:
        raise InvalidField(f"FRAG {frag} is not an octet")


@dataclass(frozen=True)
class UDPHeader:
    """
    The header alone: FRAG and the destination (client to relay) or the
    source (relay to client) of the datagram (RFC 1928 s7).  Serializing it
    and appending the payload builds a datagram without a `UDPDatagram`.

    :raises InvalidField: ``frag`` is not an octet.
    """

    frag: int
    destination: Address

    def __post_init__(self) -> None:
        _check_frag(self.frag)

    def serialize(self) -> bytes:
        return _RSV_FRAG.pack(0, self.frag) + serialize_address(self.destination)


@dataclass(frozen=True)
class UDPDatagram:
    """
    One relayed datagram: FRAG, the address in its header, and the payload.

    :raises InvalidField: ``frag`` is not an octet.
    """

    frag: int
    destination: Address
    data: bytes

    def __post_init__(self) -> None:
        _check_frag(self.frag)

    @property
    def header(self) -> UDPHeader:
        """The datagram's header without the payload."""
        return UDPHeader(self.frag, self.destination)

    def serialize(self) -> bytes:
        return _RSV_FRAG.pack(0, self.frag) + serialize_address(self.destination) + self.data


def parse_udp_datagram(data: bytes | bytearray | memoryview) -> UDPDatagram:
    """
    Parse one whole datagram: RSV FRAG ATYP DST.ADDR DST.PORT DATA (RFC 1928 s7).

    :raises TruncatedMessage: the datagram ends inside the header.
    :raises InvalidField: RSV is not 0000, or the domain name is malformed.
    :raises UnsupportedAddressType: ATYP is not 01, 03 or 04.
    """
    reader = Reader(data)
    try:
        reserved = reader.u16()
        if reserved != 0:
            raise InvalidField(f"UDP header RSV {reserved:#06x}, expected 0000")
        frag = reader.u8()
        destination = parse_address(reader)
    except NeedMore:
        raise TruncatedMessage(f"UDP datagram of {len(data)} bytes ends inside its header") from None
    return UDPDatagram(frag, destination, bytes(data[reader.offset:]))
