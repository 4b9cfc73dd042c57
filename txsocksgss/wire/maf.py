"""
Multi-Authentication Framework messages (draft-ietf-aft-socks-maf), SOCKS 5 method 0x08.

Every message opens with INSTR(1) VER(1)=00 FLAGS(2) ("Subnegotiation"):

    sub-methods supported  (client, 01)   INSTR VER FLAGS NMETHODS(1) METHODS(4 * NMETHODS)
    request more           (server, 02)   INSTR VER FLAGS      FLAGS 0 relative, 1 absolute
    do / process           (03, 05)       INSTR VER FLAGS METHOD(4) LEN(4) DATA(LEN)
    success / failure      (00, FF)       INSTR VER FLAGS METHOD(4) LEN(4) DATA(LEN)
    what next? / acknowledge (04, 06)     INSTR VER FLAGS

Decisions where the draft is unclear (docs/protocol.rst, MAF): NMETHODS is
one octet (1..255 ids; the draft's table says 4 bytes, its text one octet); a SUCCESS
message names sub-method SUCCESS (0) and a FAILURE message sub-method
FAILURE (0xFFFFFFFF), as the draft's last section says; LEN is capped by the
parser's ``max_data`` and refused before the data arrives.  FLAGS is kept as
received ("future tunability"), except for "request more", whose two values
are defined.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Union

from txsocksgss.errors import InvalidField, MessageTooLong, UnsupportedVersion
from txsocksgss.wire.reader import Reader

__all__ = [
    "MAF_VERSION",
    "PROPRIETARY_FIRST",
    "PROPRIETARY_LAST",
    "GENERAL_FIRST",
    "DEFAULT_MAX_DATA",
    "Instruction",
    "SubMethod",
    "RequestMoreFlags",
    "SubMethodsSupported",
    "RequestMore",
    "MethodMessage",
    "WhatNext",
    "Acknowledge",
    "MAFMessage",
    "parse_maf_message",
]

MAF_VERSION = 0x00
PROPRIETARY_FIRST = 0x00000003
"""First sub-method id reserved for proprietary methods."""
PROPRIETARY_LAST = 0x0000FFFF
"""Last sub-method id reserved for proprietary methods."""
GENERAL_FIRST = 0x00010000
"""First id of the MAF general authentication methods."""
DEFAULT_MAX_DATA = 65536
"""The default cap on a DO/PROCESS/SUCCESS/FAILURE message's LEN."""

_HEADER = struct.Struct("!BBH")
_METHOD_DATA = struct.Struct("!II")
_ID = struct.Struct("!I")
_U32_MAX = 0xFFFFFFFF


class Instruction(IntEnum):
    """INSTR values ("Subnegotiation")."""

    SUCCESS = 0x00
    SUBMETHODS_SUPPORTED = 0x01
    REQUEST_MORE = 0x02
    DO = 0x03
    WHAT_NEXT = 0x04
    PROCESS = 0x05
    ACKNOWLEDGE = 0x06
    FAILURE = 0xFF


class SubMethod(IntEnum):
    """
    The reserved sub-method ids ("Current MAF Sub-Methods"), and this
    project's ids for its own methods, from the draft's proprietary range
    0x00000003-0x0000FFFF (docs/maf.rst).  A member named after a method of
    `txsocksgss.auth.registry` is that method's id; the registry checks it.
    """

    SUCCESS = 0x00000000
    TEST = 0x00000001
    MORE_METHODS_AVAILABLE = 0x00000002
    USERPASS = 0x00000003
    GSSAPI = 0x00000004
    FAILURE = 0xFFFFFFFF


class RequestMoreFlags(IntEnum):
    """FLAGS of a "request additional sub-methods" message."""

    RELATIVE = 0x0000  # only the ids not sent yet
    ABSOLUTE = 0x0001  # the whole list again


def _check_flags(flags: int) -> None:
    if not 0 <= flags <= 0xFFFF:
        raise InvalidField(f"MAF FLAGS {flags} out of range")


def _header(instruction: Instruction, flags: int) -> bytes:
    return _HEADER.pack(instruction, MAF_VERSION, flags)


@dataclass(frozen=True)
class SubMethodsSupported:
    """
    The client's list of sub-methods, in its order (INSTR 01).

    ``methods`` holds 1 to 255 32-bit ids; a client with more puts
    `SubMethod.MORE_METHODS_AVAILABLE` last.

    :raises InvalidField: no id, more than 255, or an id out of range.
    """

    methods: tuple[int, ...]
    flags: int = 0

    def __post_init__(self) -> None:
        if not 1 <= len(self.methods) <= 255:
            raise InvalidField(f"{len(self.methods)} MAF sub-methods listed (1 to 255)")
        for method in self.methods:
            if not 0 <= method <= _U32_MAX:
                raise InvalidField(f"MAF sub-method id {method} out of range")
        _check_flags(self.flags)

    @property
    def more_available(self) -> bool:
        """Whether the client says it has more ids to send if asked."""
        return self.methods[-1] == SubMethod.MORE_METHODS_AVAILABLE

    def serialize(self) -> bytes:
        return (
            _header(Instruction.SUBMETHODS_SUPPORTED, self.flags)
            + bytes([len(self.methods)])
            + b"".join(_ID.pack(method) for method in self.methods)
        )


@dataclass(frozen=True)
class RequestMore:
    """
    The server asks for more sub-method ids (INSTR 02): only the ones not
    sent yet (`RequestMoreFlags.RELATIVE`) or the whole list again
    (`RequestMoreFlags.ABSOLUTE`).

    :raises InvalidField: ``flags`` is neither.
    """

    flags: RequestMoreFlags

    def __post_init__(self) -> None:
        if self.flags not in RequestMoreFlags.__members__.values():
            raise InvalidField(f"request-more FLAGS {self.flags!r} (0 relative, 1 absolute)")

    def serialize(self) -> bytes:
        return _header(Instruction.REQUEST_MORE, self.flags)


_METHOD_INSTRUCTIONS = frozenset(
    {Instruction.DO, Instruction.PROCESS, Instruction.SUCCESS, Instruction.FAILURE}
)


@dataclass(frozen=True)
class MethodMessage:
    """
    A message naming a sub-method and carrying data: DO (server starts a
    sub-method), PROCESS (either side, that sub-method's own exchange),
    SUCCESS / FAILURE (server, the final verdict; DATA may carry session
    parameters).

    :raises InvalidField: ``instruction`` is not one of those four, the id
        is out of range, or a SUCCESS (FAILURE) message names another
        sub-method than `SubMethod.SUCCESS` (`SubMethod.FAILURE`).
    :raises MessageTooLong: ``data`` does not fit LEN's 32 bits.
    """

    instruction: Instruction
    method: int
    data: bytes = b""
    flags: int = 0

    def __post_init__(self) -> None:
        if self.instruction not in _METHOD_INSTRUCTIONS:
            raise InvalidField(f"MAF instruction {self.instruction!r} carries no sub-method")
        if not 0 <= self.method <= _U32_MAX:
            raise InvalidField(f"MAF sub-method id {self.method} out of range")
        if self.instruction == Instruction.SUCCESS and self.method != SubMethod.SUCCESS:
            raise InvalidField(f"MAF SUCCESS names sub-method {self.method:#010x}, not SUCCESS")
        if self.instruction == Instruction.FAILURE and self.method != SubMethod.FAILURE:
            raise InvalidField(f"MAF FAILURE names sub-method {self.method:#010x}, not FAILURE")
        if len(self.data) > _U32_MAX:
            raise MessageTooLong(f"MAF data of {len(self.data)} bytes")
        _check_flags(self.flags)

    def serialize(self) -> bytes:
        return (
            _header(self.instruction, self.flags)
            + _METHOD_DATA.pack(self.method, len(self.data))
            + self.data
        )


@dataclass(frozen=True)
class WhatNext:
    """The client's "what next?" after a sub-method ends, whatever its outcome (INSTR 04)."""

    flags: int = 0

    def __post_init__(self) -> None:
        _check_flags(self.flags)

    def serialize(self) -> bytes:
        return _header(Instruction.WHAT_NEXT, self.flags)


@dataclass(frozen=True)
class Acknowledge:
    """An acknowledgement (INSTR 06); the draft defines no use, the project's docs do."""

    flags: int = 0

    def __post_init__(self) -> None:
        _check_flags(self.flags)

    def serialize(self) -> bytes:
        return _header(Instruction.ACKNOWLEDGE, self.flags)


MAFMessage = Union[SubMethodsSupported, RequestMore, MethodMessage, WhatNext, Acknowledge]
"""Any MAF message `parse_maf_message` returns."""


def parse_maf_message(reader: Reader, max_data: int = DEFAULT_MAX_DATA) -> MAFMessage:
    """
    Parse one MAF message of any kind, dispatching on INSTR.

    Which message is acceptable from which side, and when, is the caller's
    business.  Use ``functools.partial`` to pass another ``max_data`` to
    `txsocksgss.wire.reader.MessageBuffer.next`.

    :raises UnsupportedVersion: VER is not 00.
    :raises InvalidField: INSTR is undefined, NMETHODS is 0, a request-more
        FLAGS is neither 0 nor 1, or a SUCCESS/FAILURE names the wrong id.
    :raises MessageTooLong: LEN is over ``max_data`` (raised as soon as LEN
        is here, without waiting for the data).
    """
    instruction = reader.u8()
    version = reader.u8()
    if version != MAF_VERSION:
        raise UnsupportedVersion("MAF message", version, MAF_VERSION)
    if instruction not in Instruction.__members__.values():
        raise InvalidField(f"MAF instruction {instruction:#04x}")
    flags = reader.u16()
    if instruction == Instruction.SUBMETHODS_SUPPORTED:
        count = reader.u8()
        if count == 0:
            raise InvalidField("MAF sub-methods message lists no sub-method")
        raw = reader.take(4 * count)
        methods = tuple(method for (method,) in _ID.iter_unpack(raw))
        return SubMethodsSupported(methods, flags)
    if instruction == Instruction.REQUEST_MORE:
        if flags not in RequestMoreFlags.__members__.values():
            raise InvalidField(f"request-more FLAGS {flags:#06x} (0 relative, 1 absolute)")
        return RequestMore(RequestMoreFlags(flags))
    if instruction == Instruction.WHAT_NEXT:
        return WhatNext(flags)
    if instruction == Instruction.ACKNOWLEDGE:
        return Acknowledge(flags)
    method = reader.u32()
    length = reader.u32()
    if length > max_data:
        raise MessageTooLong(f"MAF data of {length} bytes (at most {max_data})")
    data = reader.take(length)
    return MethodMessage(Instruction(instruction), method, data, flags)
