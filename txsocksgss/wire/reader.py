"""
The incremental byte reader every parser uses.

Theory of operation: bytes arrive in arbitrary chunks.  A driver keeps them
in a `MessageBuffer` and asks it for the next message with a parse function.
A parse function reads fields from a `Reader` (a cursor over the buffered
bytes); when a field is not all there yet the reader raises `NeedMore`, which
the buffer turns into "no message yet" and the bytes stay buffered.  When the
parse function returns, the bytes it read are consumed and the rest stays for
the next call.  Malformed input raises a `txsocksgss.errors.ProtocolError`
subclass, and the buffer's ``limit`` turns a peer that never completes a
message into `MessageTooLong` instead of unbounded memory.

Every length is checked against what is present before anything is read.
"""

from __future__ import annotations

import struct
from typing import Callable, TypeVar

from txsocksgss.errors import InvalidField, MessageTooLong, TruncatedMessage

__all__ = ["NeedMore", "Reader", "MessageBuffer", "parse_exactly"]

T = TypeVar("T")

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class NeedMore(Exception):
    """Raised by `Reader` when the message is not complete yet (internal to parsing)."""


class Reader:
    """
    A read cursor over a bytes-like buffer.

    Every method raises `NeedMore` when the buffer ends before the field
    does, and never reads past the end.
    """

    __slots__ = ("_data", "offset")

    def __init__(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        self._data = data
        self.offset = offset

    @property
    def remaining(self) -> int:
        """How many bytes are left after the cursor."""
        return len(self._data) - self.offset

    def take(self, count: int) -> bytes:
        """Return the next ``count`` bytes and move past them."""
        end = self.offset + count
        if end > len(self._data):
            raise NeedMore()
        with memoryview(self._data) as view:  # one copy, not a slice and then a copy of it
            chunk = bytes(view[self.offset:end])
        self.offset = end
        return chunk

    def u8(self) -> int:
        """Read one unsigned octet."""
        if self.offset >= len(self._data):
            raise NeedMore()
        value = self._data[self.offset]
        self.offset += 1
        return value

    def u16(self) -> int:
        """Read an unsigned 16-bit integer in network byte order."""
        return int(_U16.unpack(self.take(2))[0])

    def u32(self) -> int:
        """Read an unsigned 32-bit integer in network byte order."""
        return int(_U32.unpack(self.take(4))[0])

    def until(self, terminator: bytes, limit: int) -> bytes | None:
        """
        Read up to (not including) ``terminator`` and move past it.

        Returns ``None`` when more than ``limit`` bytes come before the
        terminator (the caller raises its own error); raises `NeedMore` when
        the terminator has not arrived and ``limit`` is not yet exceeded.
        """
        index = self._find(terminator, limit + len(terminator))
        if index < 0:
            # Only once a whole terminator's worth of bytes past ``limit``
            # is here can a multi-byte terminator no longer fit.
            if self.remaining >= limit + len(terminator):
                return None
            raise NeedMore()
        value = bytes(self._data[self.offset:index])
        self.offset = index + len(terminator)
        return value

    def _find(self, terminator: bytes, span: int) -> int:
        data = self._data
        if isinstance(data, memoryview):
            data = data.tobytes()
        return data.find(terminator, self.offset, self.offset + span)


class MessageBuffer:
    """
    Bytes received so far, and the parsing of whole messages out of them.

    ``limit`` caps how many bytes may wait for one message; past it,
    `next` raises `MessageTooLong`.
    """

    def __init__(self, limit: int = 65536 + 16) -> None:
        self._buffer = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        self._buffer += data

    def __len__(self) -> int:
        return len(self._buffer)

    def next(self, parse: Callable[[Reader], T]) -> T | None:
        """
        Parse one message with ``parse``; ``None`` if it is not all here yet.

        On success the message's bytes are removed from the buffer.  Errors
        raised by ``parse`` propagate and leave the buffer as it was.
        """
        if not self._buffer:  # no message is empty
            return None
        reader = Reader(self._buffer)
        try:
            message = parse(reader)
        except NeedMore:
            if len(self._buffer) > self.limit:
                raise MessageTooLong(
                    f"{len(self._buffer)} bytes buffered without a complete message "
                    f"(limit {self.limit})"
                ) from None
            return None
        del self._buffer[: reader.offset]
        return message

    def peek(self) -> int:
        """The first buffered byte (the buffer must not be empty)."""
        return self._buffer[0]

    def contents(self) -> bytes:
        """Every buffered byte, left in the buffer."""
        return bytes(self._buffer)

    def take_all(self) -> bytes:
        """Remove and return every buffered byte (for the stage after negotiation)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def parse_exactly(parse: Callable[[Reader], T], data: bytes) -> T:
    """
    Parse ``data`` as exactly one message.

    Raises `TruncatedMessage` if it is incomplete and
    `txsocksgss.errors.InvalidField` if bytes are left over; used for
    datagrams and for tokens that arrive whole.
    """
    reader = Reader(data)
    try:
        message = parse(reader)
    except NeedMore:
        raise TruncatedMessage(f"message truncated after {len(data)} bytes") from None
    if reader.remaining:
        raise InvalidField(f"{reader.remaining} unexpected bytes after the message")
    return message
