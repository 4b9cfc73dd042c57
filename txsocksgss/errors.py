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
]


class SOCKSError(Exception):
    """Base class of every error txsocksgss raises on purpose."""


class ProtocolError(SOCKSError):
    """
    The peer sent bytes that do not form a valid message.

    Subclasses say which kind of malformation; the message text names the
    field, for the log.  Never raised for mere lack of data: parsers return
    ``None`` for that.
    """


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


class UnsupportedAddressType(InvalidField):
    """A SOCKS 5 address type other than 01, 03, 04 (SOCKS 5 REP 08)."""


class TruncatedMessage(ProtocolError):
    """The connection ended in the middle of a message."""


class AuthenticationFailed(SOCKSError):
    """An authentication subnegotiation ended in failure."""


class ConfigError(SOCKSError):
    """A configuration value is invalid; the text says which and how to fix it."""
