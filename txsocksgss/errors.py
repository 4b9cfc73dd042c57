"""
The project's exception hierarchy.

Everything raised on purpose by txsocksgss derives from `SOCKSError`.  Wire
errors (`ProtocolError` and below) carry no Twisted types, so the sans-IO
codecs in `txsocksgss.wire` can raise them; client errors carry the SOCKS
reply code the proxy sent.
"""

from __future__ import annotations

__all__ = [
    "SOCKSError",
    "ProtocolError",
    "MessageTooLong",
    "UnsupportedVersion",
    "InvalidField",
    "UnsupportedCommand",
    "UnsupportedAddressType",
    "TruncatedMessage",
    "AuthenticationFailed",
    "ConfigError",
    "SOCKSClientError",
    "NoAcceptableMethod",
    "ClientAuthenticationFailed",
    "SOCKSReplyError",
    "GeneralFailure",
    "ConnectionNotAllowed",
    "NetworkUnreachable",
    "HostUnreachable",
    "ConnectionRefused",
    "TTLExpired",
    "CommandNotSupported",
    "AddressTypeNotSupported",
    "SOCKS4Rejected",
    "SOCKS4IdentUnreachable",
    "SOCKS4IdentMismatch",
    "socks5_reply_error",
    "socks4_reply_error",
]


class SOCKSError(Exception):
    """Base class of every error txsocksgss raises on purpose."""


class ProtocolError(SOCKSError):
    """
    The peer sent bytes that do not form a valid message.

    Subclasses say which kind of malformation; the message text names the
    field, for the log.  Never raised for mere lack of data: parsers return
    ``None`` for that.  ``reply_code`` is the SOCKS 5 reply code (RFC 1928
    s6) the error calls for where a request is being answered: 01 general
    failure unless a subclass says otherwise.
    """

    reply_code = 0x01


class MessageTooLong(ProtocolError):
    """A message (or the bytes buffered while waiting for one) exceeds its cap."""


class UnsupportedVersion(ProtocolError):
    """A version octet other than the one the protocol defines."""

    def __init__(self, field: str, value: int, expected: int) -> None:
        super().__init__(f"{field}: version {value:#04x}, expected {expected:#04x}")
        self.value = value
        self.expected = expected


class InvalidField(ProtocolError):
    """A field holds a value the protocol does not allow (length 0, bad code, NUL in a name, ...)."""


class UnsupportedCommand(InvalidField):
    """A SOCKS request with a command code the protocol does not define (SOCKS 5 REP 07)."""

    reply_code = 0x07


class UnsupportedAddressType(InvalidField):
    """A SOCKS 5 address type other than 01, 03, 04 (SOCKS 5 REP 08)."""

    reply_code = 0x08


class TruncatedMessage(ProtocolError):
    """The connection ended in the middle of a message."""


class AuthenticationFailed(SOCKSError):
    """An authentication subnegotiation ended in failure."""


class ConfigError(SOCKSError):
    """A configuration value is invalid; the text says which and how to fix it."""


class SOCKSClientError(SOCKSError):
    """
    A SOCKS client could not get what it asked for.  ``code`` is the reply
    code the proxy sent (SOCKS 5 REP, SOCKS 4 CD), or ``None`` when the
    failure was not a reply (no acceptable method, authentication).
    """

    code: int | None = None

    def __init__(self, message: str = "", code: int | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(message or (self.__class__.__doc__ or self.__class__.__name__).strip().splitlines()[0])


class NoAcceptableMethod(SOCKSClientError):
    """The proxy accepts none of the authentication methods offered (METHOD FF)."""


class ClientAuthenticationFailed(SOCKSClientError, AuthenticationFailed):
    """The authentication subnegotiation with the proxy failed."""


class SOCKSReplyError(SOCKSClientError):
    """The proxy answered the request with a failure reply."""


class GeneralFailure(SOCKSReplyError):
    """General SOCKS server failure (REP 01)."""

    code = 0x01


class ConnectionNotAllowed(SOCKSReplyError):
    """Connection not allowed by ruleset (REP 02)."""

    code = 0x02


class NetworkUnreachable(SOCKSReplyError):
    """Network unreachable (REP 03)."""

    code = 0x03


class HostUnreachable(SOCKSReplyError):
    """Host unreachable (REP 04)."""

    code = 0x04


class ConnectionRefused(SOCKSReplyError):
    """Connection refused by the destination (REP 05)."""

    code = 0x05


class TTLExpired(SOCKSReplyError):
    """TTL expired (REP 06)."""

    code = 0x06


class CommandNotSupported(SOCKSReplyError):
    """Command not supported (REP 07)."""

    code = 0x07


class AddressTypeNotSupported(SOCKSReplyError):
    """Address type not supported (REP 08)."""

    code = 0x08


class SOCKS4Rejected(SOCKSReplyError):
    """SOCKS 4 request rejected or failed (CD 91)."""

    code = 91


class SOCKS4IdentUnreachable(SOCKSReplyError):
    """SOCKS 4 request rejected: the proxy cannot reach the client's identd (CD 92)."""

    code = 92


class SOCKS4IdentMismatch(SOCKSReplyError):
    """SOCKS 4 request rejected: identd and the client report different user ids (CD 93)."""

    code = 93


_REPLY_ERRORS: dict[int, type[SOCKSReplyError]] = {
    cls.code: cls  # type: ignore[misc]
    for cls in (
        GeneralFailure,
        ConnectionNotAllowed,
        NetworkUnreachable,
        HostUnreachable,
        ConnectionRefused,
        TTLExpired,
        CommandNotSupported,
        AddressTypeNotSupported,
    )
}
_SOCKS4_REPLY_ERRORS: dict[int, type[SOCKSReplyError]] = {
    cls.code: cls  # type: ignore[misc]
    for cls in (SOCKS4Rejected, SOCKS4IdentUnreachable, SOCKS4IdentMismatch)
}


def socks5_reply_error(code: int, context: str = "") -> SOCKSReplyError:
    """The exception for a SOCKS 5 failure reply code (unknown codes give a `SOCKSReplyError`)."""
    cls = _REPLY_ERRORS.get(code)
    if cls is None:
        return SOCKSReplyError(f"proxy failure reply {code:#04x}{context}", code)
    return cls(f"{(cls.__doc__ or cls.__name__).rstrip('.')}{context}")


def socks4_reply_error(code: int, context: str = "") -> SOCKSReplyError:
    """The exception for a SOCKS 4 reply code other than 90 (unknown codes are 91's)."""
    cls = _SOCKS4_REPLY_ERRORS.get(code, SOCKS4Rejected)
    return cls(f"{(cls.__doc__ or cls.__name__).rstrip('.')}{context}", code)
