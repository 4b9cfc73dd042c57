"""
Username/password subnegotiation messages (RFC 1929), SOCKS 5 method 0x02.

    request   client -> VER=01 ULEN(1) UNAME(1..255) PLEN(1) PASSWD(1..255)  (RFC 1929 s2)
    response  server -> VER=01 STATUS(1)                                    (RFC 1929 s2)

STATUS 00 is success; any other value is failure, after which the server
closes the connection.  The password never appears in a ``repr``, so a
request can be logged without leaking it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from txsocksgss.errors import InvalidField, UnsupportedVersion
from txsocksgss.wire.reader import Reader

__all__ = [
    "USERPASS_VERSION",
    "UserPassRequest",
    "UserPassResponse",
    "parse_userpass_request",
    "parse_userpass_response",
]

USERPASS_VERSION = 0x01


def _check_length(name: str, value: bytes) -> None:
    if not 1 <= len(value) <= 255:
        raise InvalidField(f"{name} of {len(value)} bytes (1 to 255)")


@dataclass(frozen=True)
class UserPassRequest:
    """
    The client's credentials (RFC 1929 s2): ``username`` and ``password``,
    each 1 to 255 bytes, sent as given (no encoding is implied).

    :raises InvalidField: a field is empty or longer than 255 bytes.
    """

    username: bytes
    password: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_length("user name", self.username)
        _check_length("password", self.password)

    def serialize(self) -> bytes:
        return (
            bytes([USERPASS_VERSION, len(self.username)])
            + self.username
            + bytes([len(self.password)])
            + self.password
        )


def parse_userpass_request(reader: Reader) -> UserPassRequest:
    """
    Parse VER ULEN UNAME PLEN PASSWD (RFC 1929 s2).

    :raises UnsupportedVersion: VER is not 01.
    :raises InvalidField: ULEN or PLEN is 0.
    """
    version = reader.u8()
    if version != USERPASS_VERSION:
        raise UnsupportedVersion("username/password request", version, USERPASS_VERSION)
    username_length = reader.u8()
    if username_length == 0:
        raise InvalidField("user name of 0 bytes (1 to 255)")
    username = reader.take(username_length)
    password_length = reader.u8()
    if password_length == 0:
        raise InvalidField("password of 0 bytes (1 to 255)")
    return UserPassRequest(username, reader.take(password_length))


@dataclass(frozen=True)
class UserPassResponse:
    """
    The server's verdict (RFC 1929 s2): ``status`` 0 is success, 1-255 failure.

    :raises InvalidField: ``status`` is not an octet.
    """

    status: int

    def __post_init__(self) -> None:
        if not 0 <= self.status <= 0xFF:
            raise InvalidField(f"status {self.status} is not an octet")

    @property
    def succeeded(self) -> bool:
        """Whether the server accepted the credentials (STATUS 00)."""
        return self.status == 0

    def serialize(self) -> bytes:
        return bytes([USERPASS_VERSION, self.status])


def parse_userpass_response(reader: Reader) -> UserPassResponse:
    """
    Parse VER STATUS (RFC 1929 s2); every STATUS value is valid.

    :raises UnsupportedVersion: VER is not 01.
    """
    version = reader.u8()
    if version != USERPASS_VERSION:
        raise UnsupportedVersion("username/password response", version, USERPASS_VERSION)
    return UserPassResponse(reader.u8())
