"""
RFC 1961 s5 encapsulation: the per-message protection of a GSS-API session.

After the protection-level subnegotiation at level 1 (integrity) or 2
(integrity and confidentiality), every byte each way travels in MTYP 03
frames ``01 03 LEN TOKEN`` whose token is ``gss_wrap(conf_req = level 2)``
of a piece of the stream.  A stream is cut so that each token fits in 65535
bytes (the mechanism tells how much plaintext that is: wrap_size_limit).
Each received token is unwrapped and checked before any of its plaintext is
delivered; a token that fails to unwrap, a level-2 token that arrives
without confidentiality, or any frame other than MTYP 03 ends the
connection.  A UDP datagram is exactly one frame.

The wrap and unwrap calls are the C library's; no Python loop touches the
bytes of a token.
"""

from __future__ import annotations

from typing import Any

from gssapi.exceptions import GSSError
from zope.interface import implementer

from txsocksgss.errors import InvalidField, ProtocolError
from txsocksgss.interfaces import IStreamProtection
from txsocksgss.wire.gssapi import MAX_TOKEN_LENGTH, GSSAPIFrame, MessageType, ProtectionLevel, parse_gssapi_frame
from txsocksgss.wire.reader import MessageBuffer, parse_exactly

__all__ = ["GSSAPIStreamProtection", "ProtectionFailed"]

_HEADER = b"\x01\x03"


class ProtectionFailed(ProtocolError):
    """A protected token failed to verify, or broke the agreed protection level."""


@implementer(IStreamProtection)
class GSSAPIStreamProtection:
    """
    `IStreamProtection` over an established GSS-API security context.

    :param context: a complete ``gssapi.SecurityContext``.
    :param level: `ProtectionLevel.INTEGRITY` or `ProtectionLevel.CONFIDENTIALITY`.
    """

    def __init__(self, context: Any, level: ProtectionLevel) -> None:
        if level not in (ProtectionLevel.INTEGRITY, ProtectionLevel.CONFIDENTIALITY):
            raise ValueError(f"no per-message protection at level {level!r}")
        self.context = context
        self.level = level
        self.name = "confidentiality" if level == ProtectionLevel.CONFIDENTIALITY else "integrity"
        self._encrypt = level == ProtectionLevel.CONFIDENTIALITY
        self.max_chunk = int(context.get_wrap_size_limit(MAX_TOKEN_LENGTH, self._encrypt))
        if self.max_chunk <= 0:
            raise ValueError("the GSS-API mechanism cannot wrap any data in a 65535-byte token")
        # One whole frame (4 + 65535 bytes) may wait for its last byte.
        self._incoming = MessageBuffer(limit=4 + MAX_TOKEN_LENGTH)
        self._failed = False

    # -- stream ---------------------------------------------------------------

    def protect(self, data: bytes) -> bytes:
        """Wrap ``data`` into as many MTYP 03 frames as it takes."""
        limit = self.max_chunk
        if len(data) <= limit:
            return self._frame(self._wrap(data))
        view = memoryview(data)
        return b"".join(
            self._frame(self._wrap(view[start:start + limit])) for start in range(0, len(data), limit)
        )

    def unprotect(self, data: bytes) -> bytes:
        """Unwrap every whole frame received so far; keep the rest for later."""
        if self._failed:
            raise ProtectionFailed("the protected stream has already failed")
        self._incoming.feed(data)
        pieces = []
        try:
            while True:
                frame = self._incoming.next(parse_gssapi_frame)
                if frame is None:
                    break
                pieces.append(self._unwrap(frame))
        except ProtocolError:
            self._failed = True
            raise
        return b"".join(pieces)

    # -- datagrams ------------------------------------------------------------

    def protectDatagram(self, data: bytes) -> bytes:
        """One datagram is one MTYP 03 frame (RFC 1961 s5)."""
        if len(data) > self.max_chunk:
            raise InvalidField(f"datagram of {len(data)} bytes is over the wrap limit {self.max_chunk}")
        return self._frame(self._wrap(data))

    def unprotectDatagram(self, data: bytes) -> bytes:
        return self._unwrap(parse_exactly(parse_gssapi_frame, data))

    # -- one token --------------------------------------------------------------

    def _wrap(self, data: bytes | memoryview) -> bytes:
        return bytes(self.context.wrap(bytes(data), self._encrypt).message)

    @staticmethod
    def _frame(token: bytes) -> bytes:
        return _HEADER + len(token).to_bytes(2, "big") + token

    def _unwrap(self, frame: GSSAPIFrame) -> bytes:
        if frame.type == MessageType.ABORT:
            raise ProtectionFailed("the peer aborted the GSS-API session")
        if frame.type != MessageType.ENCAPSULATION:
            raise ProtectionFailed(f"GSS-API frame of type {int(frame.type):#04x} where only 0x03 may come")
        try:
            result = self.context.unwrap(frame.token)
        except GSSError as error:
            raise ProtectionFailed(f"a protected token failed to verify: {_gss_text(error)}") from None
        if self._encrypt and not result.encrypted:
            raise ProtectionFailed("a token without confidentiality arrived at level 2")
        return bytes(result.message)


def _gss_text(error: GSSError) -> str:
    text = str(error)
    return text.replace("\n", " ")
