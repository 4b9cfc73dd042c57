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

Who computes the tokens is a `TokenCodec`, chosen in one place,
`token_codec`: for a Kerberos context with an AES-SHA1 key (MIT's default)
it is the pure RFC 4121 codec (`txsocksgss.wire.rfc4121.KerberosWrapCodec`,
fed by `txsocksgss.auth.krb5_lucid`), which makes the same tokens with
OpenSSL three to six times faster than the Kerberos library; for anything
else, with ``engine="library"``, or when nobody knows the peer's next
sequence number (`UNCOUNTED`), it is the GSS-API library's own gss_wrap
and gss_unwrap (`LibraryTokenCodec`).  Either way no Python loop touches
the bytes of a token.
"""
from __future__ import annotations

import enum
from typing import Any, Literal, Protocol

from gssapi.exceptions import GSSError
from zope.interface import implementer

from txsocksgss.auth.krb5_lucid import codec_from_context
from txsocksgss.errors import InvalidField, ProtocolError
from txsocksgss.interfaces import IStreamProtection
from txsocksgss.wire.gssapi import MAX_TOKEN_LENGTH, GSSAPIFrame, MessageType, ProtectionLevel, parse_gssapi_frame
from txsocksgss.wire.reader import MessageBuffer, parse_exactly
from txsocksgss.wire.rfc4121 import TokenRejected

__all__ = [
    "GSSAPIStreamProtection",
    "ProtectionFailed",
    "TokenCodec",
    "LibraryTokenCodec",
    "token_codec",
    "UNCOUNTED",
    "WRAP_ENGINES",
    "gss_text",
]

_HEADER = b"\x01\x03"

#: ``auto``: OpenSSL for Kerberos AES-SHA1 contexts, the library otherwise;
#: ``library``: always the GSS-API library.
WRAP_ENGINES = ("auto", "library")


class _Uncounted(enum.Enum):
    UNCOUNTED = "the peer may have used sequence numbers nobody counted"


#: A ``next_peer_sequence`` nobody knows: the peer may have used numbers
#: (SPNEGO's mechListMIC) that no token told, so only the library, which
#: kept its own count, can check the next one.
UNCOUNTED = _Uncounted.UNCOUNTED
PeerSequence = int | None | Literal[_Uncounted.UNCOUNTED]


def _frame_header(token: bytes) -> bytes:
    """VER MTYP LEN of the MTYP 03 frame carrying ``token``."""
    return _HEADER + len(token).to_bytes(2, "big")


class ProtectionFailed(ProtocolError):
    """A protected token failed to verify, or broke the agreed protection level."""


class TokenCodec(Protocol):
    """Makes and checks the per-message tokens of one security context."""

    #: Who computes the tokens: ``openssl`` (the pure RFC 4121 codec) or ``library``.
    engine: str

    def wrap_size_limit(self, max_token: int, conf: bool) -> int: ...

    def wrap(self, data: bytes | memoryview, conf: bool) -> bytes: ...

    def unwrap(self, token: bytes, *, stream: bool = True) -> tuple[bytes, bool]:
        """(plaintext, whether it was encrypted); `TokenRejected` when it does not verify."""


class LibraryTokenCodec:
    """gss_wrap and gss_unwrap of the GSS-API library, which checks sequence numbers as the context's flags say."""

    engine = "library"

    def __init__(self, context: Any) -> None:
        self.context = context

    def wrap_size_limit(self, max_token: int, conf: bool) -> int:
        return int(self.context.get_wrap_size_limit(max_token, conf))

    def wrap(self, data: bytes | memoryview, conf: bool) -> bytes:
        try:
            return bytes(self.context.wrap(bytes(data), conf).message)
        except GSSError as error:  # the context expired
            raise TokenRejected(gss_text(error)) from None

    def unwrap(self, token: bytes, *, stream: bool = True) -> tuple[bytes, bool]:
        try:
            result = self.context.unwrap(token)
        except GSSError as error:
            raise TokenRejected(gss_text(error)) from None
        return bytes(result.message), bool(result.encrypted)


def token_codec(context: Any, next_peer_sequence: PeerSequence, engine: str = "auto") -> TokenCodec:
    """
    The one place that chooses who computes a session's tokens: the pure
    RFC 4121 codec when ``engine`` is ``auto``, the peer's next sequence
    number is known and the context is Kerberos with an AES-SHA1 key
    (`txsocksgss.auth.krb5_lucid.codec_from_context`, which then has the
    library delete the context); else the library (`LibraryTokenCodec`).

    :param next_peer_sequence: the sequence number the peer's next token
        must carry; None when the library unwrapped no token of the peer
        (the first it uses, which the exported context tells); `UNCOUNTED`
        when nobody knows.
    :param engine: one of `WRAP_ENGINES`.
    :raise ValueError: an unknown ``engine``.
    :raise ProtectionFailed: the context was exported but cannot be used.
    """
    if engine not in WRAP_ENGINES:
        raise ValueError(f"unknown wrap engine {engine!r}; known: {', '.join(WRAP_ENGINES)}")
    if engine == "library" or next_peer_sequence is UNCOUNTED:
        return LibraryTokenCodec(context)
    try:
        codec = codec_from_context(context, next_peer_sequence)
    except TokenRejected as error:
        raise ProtectionFailed(str(error)) from None
    return codec if codec is not None else LibraryTokenCodec(context)


@implementer(IStreamProtection)
class GSSAPIStreamProtection:
    """
    `IStreamProtection` over an established GSS-API security context.

    :param context: a complete ``gssapi.SecurityContext``.  With the
        OpenSSL codec the library deletes it here: read what you need from
        it (names, mechanism) before.
    :param level: `ProtectionLevel.INTEGRITY` or `ProtectionLevel.CONFIDENTIALITY`.
    :param next_peer_sequence: the sequence number of the peer's next
        token: one more than that of the protection-level message the
        library unwrapped (`txsocksgss.wire.rfc4121.wrap_token_sequence`),
        None when the library unwrapped none (NEC), or `UNCOUNTED`
        (`token_codec`).
    :param engine: one of `WRAP_ENGINES`.
    :ivar engine: who computes the tokens: ``openssl`` or ``library``.
    :ivar codec: the `TokenCodec` itself.
    """

    def __init__(self, context: Any, level: ProtectionLevel, next_peer_sequence: PeerSequence,
                 engine: str = "auto") -> None:
        if level not in (ProtectionLevel.INTEGRITY, ProtectionLevel.CONFIDENTIALITY):
            raise ValueError(f"no per-message protection at level {level!r}")
        self.level = level
        self.name = "confidentiality" if level == ProtectionLevel.CONFIDENTIALITY else "integrity"
        self._encrypt = level == ProtectionLevel.CONFIDENTIALITY
        self.codec: TokenCodec = token_codec(context, next_peer_sequence, engine)
        self.engine: str = self.codec.engine
        self.max_chunk = self.codec.wrap_size_limit(MAX_TOKEN_LENGTH, self._encrypt)
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
        pieces: list[bytes] = []
        for start in range(0, len(data), limit):
            token = self._wrap(view[start:start + limit])
            pieces += (_frame_header(token), token)  # one copy of each token: the join
        return b"".join(pieces)

    def unprotect(self, data: bytes) -> bytes:
        """Unwrap every whole frame received so far; keep the rest for later."""
        if self._failed:
            raise ProtectionFailed("the protected stream has already failed")
        self._incoming.feed(data)
        pieces: list[bytes] = []
        try:
            while True:
                frame = self._incoming.next(parse_gssapi_frame)
                if frame is None:
                    break
                pieces.append(self._unwrap(frame, stream=True))
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
        return self._unwrap(parse_exactly(parse_gssapi_frame, data), stream=False)

    # -- one token --------------------------------------------------------------

    def _wrap(self, data: bytes | memoryview) -> bytes:
        try:
            return self.codec.wrap(data, self._encrypt)
        except TokenRejected as error:  # the context expired
            raise ProtectionFailed(f"cannot protect more data: {error}") from None

    @staticmethod
    def _frame(token: bytes) -> bytes:
        return _frame_header(token) + token

    def _unwrap(self, frame: GSSAPIFrame, stream: bool) -> bytes:
        if frame.type == MessageType.ABORT:
            raise ProtectionFailed("the peer aborted the GSS-API session")
        if frame.type != MessageType.ENCAPSULATION:
            raise ProtectionFailed(f"GSS-API frame of type {int(frame.type):#04x} where only 0x03 may come")
        try:
            message, encrypted = self.codec.unwrap(frame.token, stream=stream)
        except TokenRejected as error:
            raise ProtectionFailed(f"a protected token failed to verify: {error}") from None
        if self._encrypt and not encrypted:
            raise ProtectionFailed("a token without confidentiality arrived at level 2")
        return message


def gss_text(error: BaseException) -> str:
    """A GSS-API error's text on one line, for log lines and failure reasons."""
    return " ".join(str(error).split())
