"""
SOCKS 4 and SOCKS 4a messages.

    request  client -> VN=04 CD(1) DSTPORT(2) DSTIP(4) USERID NUL         (SOCKS 4)
    4a       client -> VN=04 CD(1) DSTPORT(2) 0.0.0.x USERID NUL HOSTNAME NUL
    reply    server -> VN=00 CD(1) DSTPORT(2) DSTIP(4)

Sources: "SOCKS: A protocol for TCP proxy across firewalls" (Ying-Da Lee,
SOCKS 4) and "SOCKS 4A: A Simple Extension to SOCKS 4 Protocol".  A DSTIP
of 0.0.0.x with x != 0 is not a destination but the 4a marker: the
destination name follows the user id.  USERID and HOSTNAME are capped at
255 bytes each (docs/protocol.rst, SOCKS 4 and 4a); a field that passes
the cap without its NUL is refused at once, before the rest arrives.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

from txsocksgss.errors import (
    InvalidField,
    MessageTooLong,
    UnsupportedCommand,
    UnsupportedVersion,
)
from txsocksgss.wire.reader import Reader

__all__ = [
    "SOCKS4_VERSION",
    "SOCKS4_REPLY_VERSION",
    "MAX_USERID_LENGTH",
    "MAX_HOSTNAME_LENGTH",
    "SOCKS4Command",
    "SOCKS4ReplyCode",
    "SOCKS4Request",
    "SOCKS4Reply",
    "parse_socks4_request",
    "parse_socks4_reply",
]

SOCKS4_VERSION = 0x04
SOCKS4_REPLY_VERSION = 0x00
MAX_USERID_LENGTH = 255
MAX_HOSTNAME_LENGTH = 255

# The DSTIP a 4a client sends when the caller gave no 0.0.0.x of its own.
_SOCKS4A_MARKER = "0.0.0.1"
_HEADER = struct.Struct("!BBH4s")


class SOCKS4Command(IntEnum):
    """CD in a request (SOCKS 4)."""

    CONNECT = 0x01
    BIND = 0x02


class SOCKS4ReplyCode(IntEnum):
    """CD in a reply (SOCKS 4)."""

    GRANTED = 90
    REJECTED = 91
    IDENT_UNREACHABLE = 92
    IDENT_MISMATCH = 93


def _is_socks4a_marker(address: ipaddress.IPv4Address) -> bool:
    """0.0.0.x with x != 0 (SOCKS 4A): "the IP address is inadmissible"."""
    packed = address.packed
    return packed[:3] == b"\x00\x00\x00" and packed[3] != 0


def _ipv4(field_name: str, text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise InvalidField(f"{field_name} {text!r} is not an IPv4 address") from None


def _encode_hostname(hostname: str) -> bytes:
    try:
        return hostname.encode("ascii" if hostname.isascii() else "idna")
    except UnicodeError:
        raise InvalidField(f"host name {hostname!r} cannot be encoded") from None


@dataclass(frozen=True)
class SOCKS4Request:
    """
    A SOCKS 4 request, or a 4a one when ``hostname`` is set.

    ``address`` is the IPv4 destination as text; for 4a it is only the
    marker 0.0.0.x (x != 0), and any other value given with a ``hostname``
    is replaced by 0.0.0.1, so the object always equals what goes on the
    wire.  ``userid`` is 0 to 255 bytes without NUL, ``hostname`` 1 to 255
    bytes without NUL (non-ASCII names are IDNA-encoded).

    :raises InvalidField: a field is out of range, or ``address`` is a 4a
        marker without a ``hostname``.
    :raises MessageTooLong: ``userid`` or ``hostname`` is over 255 bytes.
    """

    command: SOCKS4Command
    port: int
    address: str
    userid: bytes = b""
    hostname: str | None = None

    def __post_init__(self) -> None:
        if self.command not in SOCKS4Command.__members__.values():
            raise UnsupportedCommand(f"SOCKS 4 command {self.command!r}")
        if not 0 <= self.port <= 0xFFFF:
            raise InvalidField(f"port {self.port} out of range")
        address = _ipv4("destination", self.address)
        if len(self.userid) > MAX_USERID_LENGTH:
            raise MessageTooLong(f"user id of {len(self.userid)} bytes (at most {MAX_USERID_LENGTH})")
        if b"\x00" in self.userid:
            raise InvalidField("NUL in user id")
        if self.hostname is None:
            if _is_socks4a_marker(address):
                raise InvalidField(f"{address} marks a SOCKS 4a request but no host name is given")
        else:
            name = _encode_hostname(self.hostname)
            if not name:
                raise InvalidField("empty host name")
            if len(name) > MAX_HOSTNAME_LENGTH:
                raise MessageTooLong(f"host name of {len(name)} bytes (at most {MAX_HOSTNAME_LENGTH})")
            if b"\x00" in name:
                raise InvalidField("NUL in host name")
            if not _is_socks4a_marker(address):
                address = ipaddress.IPv4Address(_SOCKS4A_MARKER)
        # Canonical text, so that equality matches the wire form.
        object.__setattr__(self, "address", str(address))

    @property
    def is_socks4a(self) -> bool:
        """Whether the destination is a host name for the server to resolve (SOCKS 4A)."""
        return self.hostname is not None

    def serialize(self) -> bytes:
        message = _HEADER.pack(
            SOCKS4_VERSION, self.command, self.port, ipaddress.IPv4Address(self.address).packed
        ) + self.userid + b"\x00"
        if self.hostname is not None:
            message += _encode_hostname(self.hostname) + b"\x00"
        return message


def parse_socks4_request(reader: Reader) -> SOCKS4Request:
    """
    Parse VN CD DSTPORT DSTIP USERID NUL [HOSTNAME NUL] (SOCKS 4, SOCKS 4A).

    HOSTNAME is read only when DSTIP is 0.0.0.x, x != 0.

    :raises UnsupportedVersion: VN is not 04.
    :raises UnsupportedCommand: CD is not CONNECT or BIND (checked as soon
        as it arrives; the server answers 91).
    :raises MessageTooLong: USERID or HOSTNAME runs past 255 bytes without
        its NUL (raised as soon as the 256th byte is here).
    :raises InvalidField: HOSTNAME is empty or not ASCII.
    """
    version = reader.u8()
    if version != SOCKS4_VERSION:
        raise UnsupportedVersion("SOCKS 4 request", version, SOCKS4_VERSION)
    command = reader.u8()
    if command not in SOCKS4Command.__members__.values():
        raise UnsupportedCommand(f"SOCKS 4 command {command:#04x}")
    port = reader.u16()
    address = ipaddress.IPv4Address(reader.take(4))
    userid = reader.until(b"\x00", MAX_USERID_LENGTH)
    if userid is None:
        raise MessageTooLong(f"user id longer than {MAX_USERID_LENGTH} bytes")
    hostname: str | None = None
    if _is_socks4a_marker(address):
        raw = reader.until(b"\x00", MAX_HOSTNAME_LENGTH)
        if raw is None:
            raise MessageTooLong(f"host name longer than {MAX_HOSTNAME_LENGTH} bytes")
        if not raw:
            raise InvalidField("empty host name in a SOCKS 4a request")
        try:
            hostname = raw.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidField("host name is not ASCII") from None
    return SOCKS4Request(SOCKS4Command(command), port, str(address), userid, hostname)


@dataclass(frozen=True)
class SOCKS4Reply:
    """
    A SOCKS 4 reply: the code, and DSTPORT/DSTIP (meaningful for BIND only,
    where they carry the address the server listens on; ignored for
    CONNECT).  ``code`` is kept as an int when it is not a known
    `SOCKS4ReplyCode`; anything but 90 is a refusal.

    :raises InvalidField: a field is out of range.
    """

    code: SOCKS4ReplyCode | int
    port: int = 0
    address: str = "0.0.0.0"

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 0xFF:
            raise InvalidField(f"reply code {self.code} is not an octet")
        if not 0 <= self.port <= 0xFFFF:
            raise InvalidField(f"port {self.port} out of range")
        object.__setattr__(self, "address", str(_ipv4("bound address", self.address)))

    @property
    def granted(self) -> bool:
        """Whether the request was granted (CD 90)."""
        return self.code == SOCKS4ReplyCode.GRANTED

    def serialize(self) -> bytes:
        return _HEADER.pack(
            SOCKS4_REPLY_VERSION, self.code, self.port, ipaddress.IPv4Address(self.address).packed
        )


def parse_socks4_reply(reader: Reader) -> SOCKS4Reply:
    """
    Parse VN CD DSTPORT DSTIP (SOCKS 4); an unknown CD is kept as an int.

    :raises UnsupportedVersion: VN is not 00 (the reply version).
    """
    version = reader.u8()
    if version != SOCKS4_REPLY_VERSION:
        raise UnsupportedVersion("SOCKS 4 reply", version, SOCKS4_REPLY_VERSION)
    code: SOCKS4ReplyCode | int = reader.u8()
    port = reader.u16()
    address = str(ipaddress.IPv4Address(reader.take(4)))
    try:
        code = SOCKS4ReplyCode(code)
    except ValueError:
        pass
    return SOCKS4Reply(code, port, address)
