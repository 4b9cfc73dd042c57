"""
SOCKS 5 messages (RFC 1928).

    greeting   client -> VER=05 NMETHODS(1) METHODS(NMETHODS)      (RFC 1928 s3)
    selection  server -> VER=05 METHOD(1)                          (RFC 1928 s3)
    request    client -> VER=05 CMD RSV=00 ATYP DST.ADDR DST.PORT  (RFC 1928 s4)
    reply      server -> VER=05 REP RSV=00 ATYP BND.ADDR BND.PORT  (RFC 1928 s6)

Addresses (RFC 1928 s5) are shared with the UDP header, so `Address`,
`parse_address` and `serialize_address` are public.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from functools import lru_cache
from enum import IntEnum

from txsocksgss.errors import (
    InvalidField,
    UnsupportedAddressType,
    UnsupportedCommand,
    UnsupportedVersion,
)
from txsocksgss.wire.reader import Reader

__all__ = [
    "SOCKS5_VERSION",
    "AuthMethod",
    "Command",
    "AddressType",
    "ReplyCode",
    "Address",
    "Greeting",
    "MethodSelection",
    "Request",
    "Reply",
    "parse_address",
    "serialize_address",
    "parse_greeting",
    "parse_method_selection",
    "parse_request",
    "parse_reply",
]

SOCKS5_VERSION = 0x05
_PORT = struct.Struct("!H")


class AuthMethod(IntEnum):
    """Authentication method codes (IANA registry, RFC 1928 s3)."""

    NONE = 0x00
    GSSAPI = 0x01
    USERPASS = 0x02
    MAF = 0x08
    NO_ACCEPTABLE = 0xFF


class Command(IntEnum):
    """SOCKS 5 request commands (RFC 1928 s4)."""

    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(IntEnum):
    """Address types (RFC 1928 s5)."""

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class ReplyCode(IntEnum):
    """Reply codes (RFC 1928 s6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


@dataclass(frozen=True)
class Address:
    """
    A SOCKS address: an IPv4 or IPv6 address in text form, or a domain name.

    ``host`` is the address as text (``"192.0.2.1"``, ``"2001:db8::1"``) or
    the domain name, ``port`` is 0-65535.  ``type`` is derived by
    `Address.of` for callers holding a host string.
    """

    type: AddressType
    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise InvalidField(f"port {self.port} out of range")
        if self.type == AddressType.DOMAIN:
            encoded = self.host.encode("idna" if not self.host.isascii() else "ascii")
            if not 1 <= len(encoded) <= 255 or b"\x00" in encoded:
                raise InvalidField(f"domain name of {len(encoded)} bytes (1 to 255, no NUL)")
        elif self.type == AddressType.IPV4:
            _ipv4(self.host)
        elif self.type == AddressType.IPV6:
            _ipv6(self.host)

    @classmethod
    def of(cls, host: str, port: int) -> "Address":
        """Build the address for ``host``: an IP literal if it parses as one, else a domain."""
        kind, text = _classify(host)
        return cls(kind, text, port)


@lru_cache(maxsize=4096)
def _ipv4(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


@lru_cache(maxsize=4096)
def _ipv6(text: str) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(text)


@lru_cache(maxsize=4096)
def _classify(host: str) -> "tuple[AddressType, str]":
    """(type, canonical text) of a host string; cached, since every session parses a few."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return AddressType.DOMAIN, host
    return (AddressType.IPV4 if ip.version == 4 else AddressType.IPV6), str(ip)


def parse_address(reader: Reader) -> Address:
    """Read ATYP DST.ADDR DST.PORT (RFC 1928 s4-5)."""
    atyp = reader.u8()
    if atyp == AddressType.IPV4:
        host = socket.inet_ntoa(reader.take(4))  # the same dotted quad as ipaddress, in C
        kind = AddressType.IPV4
    elif atyp == AddressType.IPV6:
        host = str(ipaddress.IPv6Address(reader.take(16)))
        kind = AddressType.IPV6
    elif atyp == AddressType.DOMAIN:
        length = reader.u8()
        if length == 0:
            raise InvalidField("domain name of length 0")
        raw = reader.take(length)
        if b"\x00" in raw:
            raise InvalidField("NUL in domain name")
        try:
            host = raw.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidField("domain name is not ASCII") from None
        kind = AddressType.DOMAIN
    else:
        raise UnsupportedAddressType(f"address type {atyp:#04x}")
    port = reader.u16()
    return Address(kind, host, port)


def serialize_address(address: Address) -> bytes:
    """Write ATYP ADDR PORT (RFC 1928 s5)."""
    if address.type == AddressType.IPV4:
        body = socket.inet_aton(address.host)  # validated as an IPv4 address by Address
    elif address.type == AddressType.IPV6:
        body = _ipv6(address.host).packed
    else:
        name = address.host.encode("idna" if not address.host.isascii() else "ascii")
        body = bytes([len(name)]) + name
    return bytes([address.type]) + body + _PORT.pack(address.port)


@dataclass(frozen=True)
class Greeting:
    """Client's version identifier/method selection message: the methods it offers, in its order."""

    methods: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.methods) <= 255:
            raise InvalidField(f"{len(self.methods)} methods offered (1 to 255)")

    def serialize(self) -> bytes:
        return bytes([SOCKS5_VERSION, len(self.methods), *self.methods])


def parse_greeting(reader: Reader) -> Greeting:
    """Parse VER NMETHODS METHODS (RFC 1928 s3); NMETHODS must be at least 1."""
    version = reader.u8()
    if version != SOCKS5_VERSION:
        raise UnsupportedVersion("SOCKS greeting", version, SOCKS5_VERSION)
    count = reader.u8()
    if count == 0:
        raise InvalidField("greeting offers no method")
    return Greeting(tuple(reader.take(count)))


@dataclass(frozen=True)
class MethodSelection:
    """Server's choice of method; `AuthMethod.NO_ACCEPTABLE` means none fits."""

    method: int

    def serialize(self) -> bytes:
        return bytes([SOCKS5_VERSION, self.method])


def parse_method_selection(reader: Reader) -> MethodSelection:
    """Parse VER METHOD (RFC 1928 s3)."""
    version = reader.u8()
    if version != SOCKS5_VERSION:
        raise UnsupportedVersion("SOCKS method selection", version, SOCKS5_VERSION)
    return MethodSelection(reader.u8())


@dataclass(frozen=True)
class Request:
    """A SOCKS 5 request: command and destination."""

    command: Command
    destination: Address

    def serialize(self) -> bytes:
        return bytes([SOCKS5_VERSION, self.command, 0]) + serialize_address(self.destination)


def parse_request(reader: Reader) -> Request:
    """
    Parse VER CMD RSV ATYP DST.ADDR DST.PORT (RFC 1928 s4).

    An unknown command raises `UnsupportedCommand` (a server answers REP 07)
    and an unknown address type `UnsupportedAddressType` (REP 08); the
    address type is checked first.  RSV is ignored (RFC 1928 reserves it).
    """
    version = reader.u8()
    if version != SOCKS5_VERSION:
        raise UnsupportedVersion("SOCKS request", version, SOCKS5_VERSION)
    command = reader.u8()
    reader.u8()  # RSV
    atyp_offset = reader.offset
    atyp = reader.u8()
    if atyp not in AddressType.__members__.values():
        raise UnsupportedAddressType(f"address type {atyp:#04x}")
    reader.offset = atyp_offset
    destination = parse_address(reader)
    if command not in Command.__members__.values():
        raise UnsupportedCommand(f"command {command:#04x}")
    return Request(Command(command), destination)


@dataclass(frozen=True)
class Reply:
    """A SOCKS 5 reply: the code and the bound address (BND.ADDR, BND.PORT)."""

    code: ReplyCode | int
    bound: Address

    def serialize(self) -> bytes:
        return bytes([SOCKS5_VERSION, self.code, 0]) + serialize_address(self.bound)


def parse_reply(reader: Reader) -> Reply:
    """Parse VER REP RSV ATYP BND.ADDR BND.PORT (RFC 1928 s6); an unknown REP is kept as an int."""
    version = reader.u8()
    if version != SOCKS5_VERSION:
        raise UnsupportedVersion("SOCKS reply", version, SOCKS5_VERSION)
    code = reader.u8()
    reader.u8()  # RSV
    bound = parse_address(reader)
    try:
        code = ReplyCode(code)
    except ValueError:
        pass
    return Reply(code, bound)
