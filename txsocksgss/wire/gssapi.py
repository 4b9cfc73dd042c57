"""
GSS-API subnegotiation framing (RFC 1961), SOCKS 5 method 0x01.

    frame   VER=01 MTYP(1) LEN(2) TOKEN(LEN)     (RFC 1961 s3.3, s4.3, s5)
    abort   VER=01 MTYP=FF                        (RFC 1961 s3.3; two bytes, no LEN)

MTYP 01 carries context establishment tokens (s3.3), 02 the protection
level negotiation (s4.3), 03 encapsulated user data (s5).  This module only
frames tokens; it never calls GSS-API.  The protection level travels as one
octet *inside* a gss_wrap token (RFC 1961 s4.3); `encode_protection_level`
and `decode_protection_level` handle that octet before wrapping and after
unwrapping.  Level 0 ("clear") is the Dante extension described in
docs/protocol.rst, GSS-API: authentication only, nothing framed afterwards.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from txsocksgss.errors import InvalidField, MessageTooLong, UnsupportedVersion
from txsocksgss.wire.reader import Reader

__all__ = [
    "GSSAPI_VERSION",
    "MAX_TOKEN_LENGTH",
    "MessageType",
    "ProtectionLevel",
    "GSSAPIFrame",
    "ABORT_FRAME",
    "parse_gssapi_frame",
    "encode_protection_level",
    "decode_protection_level",
]

GSSAPI_VERSION = 0x01
MAX_TOKEN_LENGTH = 0xFFFF

_HEADER = struct.Struct("!BBH")


class MessageType(IntEnum):
    """MTYP values (RFC 1961 s3.3, s4.3, s5)."""

    AUTHENTICATION = 0x01
    PROTECTION = 0x02
    ENCAPSULATION = 0x03
    ABORT = 0xFF


class ProtectionLevel(IntEnum):
    """
    Per-message protection levels (RFC 1961 s4.3), plus CLEAR.

    CLEAR (0) is not in the RFC: it is the Dante/curl extension meaning
    "authenticate only; send everything after the negotiation unframed".
    """

    CLEAR = 0x00
    INTEGRITY = 0x01
    CONFIDENTIALITY = 0x02
    SELECTIVE = 0x03


@dataclass(frozen=True)
class GSSAPIFrame:
    """
    One RFC 1961 frame: a message type and its (opaque) token.

    ``token`` is at most 65535 bytes; an `MessageType.ABORT` frame has no
    token and serializes to exactly ``b"\\x01\\xff"``.

    :raises InvalidField: ``type`` is not a `MessageType`, or an abort frame
        carries a token.
    :raises MessageTooLong: ``token`` is over 65535 bytes.
    """

    type: MessageType
    token: bytes = b""

    def __post_init__(self) -> None:
        if self.type not in MessageType.__members__.values():
            raise InvalidField(f"GSS-API message type {self.type!r}")
        if self.type == MessageType.ABORT:
            if self.token:
                raise InvalidField("a GSS-API abort message carries no token")
        elif len(self.token) > MAX_TOKEN_LENGTH:
            raise MessageTooLong(f"GSS-API token of {len(self.token)} bytes (at most {MAX_TOKEN_LENGTH})")

    def serialize(self) -> bytes:
        if self.type == MessageType.ABORT:
            return bytes([GSSAPI_VERSION, MessageType.ABORT])
        return _HEADER.pack(GSSAPI_VERSION, self.type, len(self.token)) + self.token


ABORT_FRAME = GSSAPIFrame(MessageType.ABORT)
"""The abort message a server sends before closing on any failure (RFC 1961 s3.3)."""


def parse_gssapi_frame(reader: Reader) -> GSSAPIFrame:
    """
    Parse VER MTYP [LEN TOKEN] (RFC 1961 s3.3); an abort is just VER MTYP.

    Which MTYP is acceptable at which point of the negotiation is the
    caller's business; this accepts any defined one.

    :raises UnsupportedVersion: VER is not 01.
    :raises InvalidField: MTYP is not 01, 02, 03 or FF.
    """
    version = reader.u8()
    if version != GSSAPI_VERSION:
        raise UnsupportedVersion("GSS-API message", version, GSSAPI_VERSION)
    kind = reader.u8()
    if kind not in MessageType.__members__.values():
        raise InvalidField(f"GSS-API message type {kind:#04x}")
    if kind == MessageType.ABORT:
        return ABORT_FRAME
    length = reader.u16()
    return GSSAPIFrame(MessageType(kind), reader.take(length))


def encode_protection_level(level: ProtectionLevel | int) -> bytes:
    """
    The one-octet protection level payload (RFC 1961 s4.3), before gss_wrap.

    :raises InvalidField: ``level`` is not a `ProtectionLevel`.
    """
    if level not in ProtectionLevel.__members__.values():
        raise InvalidField(f"protection level {level!r}")
    return bytes([level])


def decode_protection_level(token: bytes) -> ProtectionLevel:
    """
    Read the protection level octet (RFC 1961 s4.3) from an unwrapped token.

    :raises InvalidField: the payload is not exactly one octet, or the
        octet is not a defined level.
    """
    if len(token) != 1:
        raise InvalidField(f"protection level payload of {len(token)} bytes (exactly 1)")
    try:
        return ProtectionLevel(token[0])
    except ValueError:
        raise InvalidField(f"protection level {token[0]:#04x}") from None
