"""
Identification Protocol messages (RFC 1413), used to check SOCKS 4 user ids.

    query     <port-on-server> , <port-on-client> CRLF                      (RFC 1413 s3, s6)
    userid    <ports> : USERID : <opsys>[,<charset>] : <user-id> CRLF       (RFC 1413 s5, s6)
    error     <ports> : ERROR : <error-type> CRLF                           (RFC 1413 s5, s6)

Theory of operation: each message is one line.  A line ends at LF (a CR
before it is dropped: RFC 1413 asks for CRLF, lenient peers send LF alone)
and may hold at most 1000 octets before it (RFC 1413 s6, note 2: a client
may give up after 1000 characters without an end of line); past that the
parser raises `MessageTooLong` without waiting for the rest.  White space
(space, tab) around the ports, the keywords and the tokens is ignored (s6,
note 1).  Everything after the third colon of a USERID reply is the user id,
colons included (s6, note 1); it keeps its inner bytes verbatim but loses
the white space around it: every server puts a space after the colon, and
a user id that begins or ends with white space cannot be told from that.
A user id is 1 to 512 octets (s6, note 3), without NUL, CR or LF.

Octets of a user id are decoded as UTF-8 with ``surrogateescape`` whatever
the charset says (US-ASCII, the default, is a subset): any octet string
survives a parse and a serialize unchanged, and the charset is reported
for whoever wants to reinterpret the id.  Every other field is US-ASCII
(s6, note 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Union

from txsocksgss.errors import InvalidField, MessageTooLong
from txsocksgss.wire.reader import Reader

__all__ = [
    "IDENT_PORT",
    "MAX_LINE_LENGTH",
    "MAX_USER_ID_LENGTH",
    "MAX_TOKEN_LENGTH",
    "IdentErrorType",
    "IdentQuery",
    "IdentUserId",
    "IdentError",
    "IdentResponse",
    "parse_ident_query",
    "parse_ident_response",
]

IDENT_PORT = 113
"""The well-known port of the ident service (RFC 1413 s2)."""
MAX_LINE_LENGTH = 1000
"""Octets allowed before the LF that ends a line (RFC 1413 s6, note 2)."""
MAX_USER_ID_LENGTH = 512
"""Octets allowed in a user id (RFC 1413 s6, note 3)."""
MAX_TOKEN_LENGTH = 64
"""Characters allowed in an opsys, charset or error-type token (RFC 1413 s6, note 3)."""

_WHITESPACE = b" \t"
_FORBIDDEN_IN_USER_ID = frozenset(b"\x00\r\n")
_USERID = "USERID"
_ERROR = "ERROR"


class IdentErrorType(str, Enum):
    """The error types RFC 1413 s5 defines; others (``X...`` and unknown ones) stay plain strings."""

    INVALID_PORT = "INVALID-PORT"
    NO_USER = "NO-USER"
    HIDDEN_USER = "HIDDEN-USER"
    UNKNOWN_ERROR = "UNKNOWN-ERROR"

    def __str__(self) -> str:
        return self.value


def _check_port(name: str, port: int) -> None:
    if not 1 <= port <= 0xFFFF:
        raise InvalidField(f"ident {name} {port} out of range (1 to 65535)")


def _check_token(name: str, token: str) -> None:
    """A token (RFC 1413 s6): 1 to 64 printable US-ASCII characters, no white space, ':' or ','."""
    if not 1 <= len(token) <= MAX_TOKEN_LENGTH:
        raise InvalidField(f"ident {name} of {len(token)} characters (1 to {MAX_TOKEN_LENGTH})")
    for character in token:
        if not "!" <= character <= "~" or character in ":,":
            raise InvalidField(f"ident {name} {token!r} holds {character!r}")


def _encode_user_id(user_id: str) -> bytes:
    try:
        return user_id.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidField("ident user id cannot be encoded") from None


def _ports(server_port: int, client_port: int) -> bytes:
    return f"{server_port}, {client_port}".encode("ascii")


def _read_line(reader: Reader, what: str) -> bytes:
    line = reader.until(b"\n", MAX_LINE_LENGTH)
    if line is None:
        raise MessageTooLong(f"ident {what} longer than {MAX_LINE_LENGTH} octets without an end of line")
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def _ascii(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidField(f"ident {what} is not US-ASCII") from None


def _parse_port(raw: bytes, name: str) -> int:
    digits = raw.strip(_WHITESPACE)
    # bytes.isdigit() is ASCII-only; RFC 1413 s6: <port> ::= 1*5<digit>.
    if not 1 <= len(digits) <= 5 or not digits.isdigit():
        raise InvalidField(f"ident {name} {raw!r} is not a port number")
    port = int(digits)
    _check_port(name, port)
    return port


def _parse_port_pair(raw: bytes) -> tuple[int, int]:
    server, comma, client = raw.partition(b",")
    if not comma:
        raise InvalidField(f"ident port pair {raw!r} has no ','")
    return _parse_port(server, "port-on-server"), _parse_port(client, "port-on-client")


@dataclass(frozen=True)
class IdentQuery:
    """
    The question asked of the client host's identd (RFC 1413 s3): who owns
    the connection from ``server_port`` (on the queried host, i.e. the SOCKS
    client's source port) to ``client_port`` (on the asking host, the SOCKS
    server's port)?

    :raises InvalidField: a port is not 1 to 65535.
    """

    server_port: int
    client_port: int

    def __post_init__(self) -> None:
        _check_port("port-on-server", self.server_port)
        _check_port("port-on-client", self.client_port)

    def serialize(self) -> bytes:
        return _ports(self.server_port, self.client_port) + b"\r\n"


def parse_ident_query(reader: Reader) -> IdentQuery:
    """
    Parse ``<port> , <port> EOL`` (RFC 1413 s6), white space allowed around each port.

    :raises MessageTooLong: 1000 octets arrive without an LF.
    :raises InvalidField: the line is not two ports 1 to 65535 and a comma.
    """
    line = _read_line(reader, "query")
    server_port, client_port = _parse_port_pair(line)
    return IdentQuery(server_port, client_port)


@dataclass(frozen=True)
class IdentUserId:
    """
    A USERID reply (RFC 1413 s5): the owner of the connection.

    ``opsys`` is the operating system token (``"UNIX"``, ``"OTHER"``, ...;
    with ``"OTHER"`` the id is not a user name), ``charset`` the optional
    character set token (``None``: US-ASCII), ``user_id`` the id itself,
    1 to 512 octets in UTF-8 (see the module docstring), without NUL, CR,
    LF or white space at either end.

    :raises InvalidField: a port, token or the user id is malformed.
    :raises MessageTooLong: the user id is over 512 octets.
    """

    server_port: int
    client_port: int
    opsys: str
    charset: str | None
    user_id: str

    def __post_init__(self) -> None:
        _check_port("port-on-server", self.server_port)
        _check_port("port-on-client", self.client_port)
        _check_token("operating system", self.opsys)
        if self.charset is not None:
            _check_token("charset", self.charset)
        raw = _encode_user_id(self.user_id)
        if not raw:
            raise InvalidField("empty ident user id")
        if len(raw) > MAX_USER_ID_LENGTH:
            raise MessageTooLong(f"ident user id of {len(raw)} octets (at most {MAX_USER_ID_LENGTH})")
        if not _FORBIDDEN_IN_USER_ID.isdisjoint(raw):
            raise InvalidField("NUL, CR or LF in ident user id")
        if raw.strip(_WHITESPACE) != raw:
            raise InvalidField("ident user id begins or ends with white space")

    def serialize(self) -> bytes:
        opsys = self.opsys if self.charset is None else f"{self.opsys},{self.charset}"
        return (
            _ports(self.server_port, self.client_port)
            + f" : {_USERID} : {opsys} : ".encode("ascii")
            + _encode_user_id(self.user_id)
            + b"\r\n"
        )


@dataclass(frozen=True)
class IdentError:
    """
    An ERROR reply (RFC 1413 s5).  ``error`` is an `IdentErrorType` when it
    is one of the four RFC 1413 defines, else the token as received
    (nonstandard ones start with ``X``).

    :raises InvalidField: a port or the error token is malformed.
    """

    server_port: int
    client_port: int
    error: IdentErrorType | str

    def __post_init__(self) -> None:
        _check_port("port-on-server", self.server_port)
        _check_port("port-on-client", self.client_port)
        _check_token("error type", self.error)

    def serialize(self) -> bytes:
        return (
            _ports(self.server_port, self.client_port)
            + f" : {_ERROR} : {str(self.error)}\r\n".encode("ascii")
        )


IdentResponse = Union[IdentUserId, IdentError]
"""Either reply `parse_ident_response` returns."""


def parse_ident_response(reader: Reader) -> IdentResponse:
    """
    Parse one reply line (RFC 1413 s5-6).  The keywords USERID and ERROR
    are matched without regard to case.  Whether the ports echo the query
    is for the caller to check.

    :raises MessageTooLong: 1000 octets arrive without an LF, or the user
        id is over 512 octets.
    :raises InvalidField: anything else malformed: ports, keyword, tokens,
        an empty user id, a NUL or CR inside the line, non-ASCII outside
        the user id.
    """
    line = _read_line(reader, "response")
    ports, colon, rest = line.partition(b":")
    if not colon:
        raise InvalidField("ident response has no ':'")
    server_port, client_port = _parse_port_pair(ports)
    kind_raw, colon, rest = rest.partition(b":")
    if not colon:
        raise InvalidField("ident response has no response type")
    kind = _ascii(kind_raw.strip(_WHITESPACE), "response type").upper()
    if kind == _ERROR:
        error: IdentErrorType | str = _ascii(rest.strip(_WHITESPACE), "error type")
        try:
            error = IdentErrorType(error)
        except ValueError:
            pass
        return IdentError(server_port, client_port, error)
    if kind != _USERID:
        raise InvalidField(f"ident response type {kind!r}")
    opsys_field, colon, user_raw = rest.partition(b":")
    if not colon:
        raise InvalidField("ident USERID response has no user id field")
    opsys_raw, comma, charset_raw = opsys_field.partition(b",")
    opsys = _ascii(opsys_raw.strip(_WHITESPACE), "operating system")
    charset = _ascii(charset_raw.strip(_WHITESPACE), "charset") if comma else None
    user_raw = user_raw.strip(_WHITESPACE)
    if len(user_raw) > MAX_USER_ID_LENGTH:
        raise MessageTooLong(f"ident user id of {len(user_raw)} octets (at most {MAX_USER_ID_LENGTH})")
    user_id = user_raw.decode("utf-8", "surrogateescape")
    return IdentUserId(server_port, client_port, opsys, charset, user_id)
