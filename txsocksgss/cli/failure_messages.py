"""
What ``socksgss connect`` says when a run fails: `describe_error` turns a
failure into one line for standard error (never a traceback, never a
password) and the exit status (`EXIT_AUTHENTICATION` for a refused login,
`EXIT_FAILURE` for the rest).
"""

from __future__ import annotations

from typing import Mapping

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.error import TimeoutError as TwistedTimeoutError

from txsocksgss.cli.destination import DestinationLookupError
from txsocksgss.cli.proxy_url import ProxyURL
from txsocksgss.cli.status import EXIT_AUTHENTICATION, EXIT_FAILURE
from txsocksgss.errors import (
    ClientAuthenticationFailed,
    NoAcceptableMethod,
    ProtocolError,
    SOCKSError,
    SOCKSReplyError,
    TruncatedMessage,
)

__all__ = ["describe_error"]


# RFC 1928 s6 (REP) and the SOCKS 4 protocol document (CD).
_SOCKS5_REPLIES: Mapping[int, str] = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}
_SOCKS4_REPLIES: Mapping[int, str] = {
    91: "request rejected or failed",
    92: "request rejected: the proxy cannot reach the client's identd",
    93: "request rejected: identd reports a different user id",
}


def describe_error(error: BaseException, proxy: ProxyURL) -> tuple[str, int]:
    """
    The one-line message (without the ``socksgss: `` prefix) and the exit
    status for a failure of a run through ``proxy``.
    """
    if isinstance(error, SOCKSReplyError):
        code = error.code if error.code is not None else 0
        if proxy.version == 5:
            text = _SOCKS5_REPLIES.get(code, "unknown failure reply")
            return f"proxy refused: {text} (SOCKS 5 reply {code:02x})", EXIT_FAILURE
        text = _SOCKS4_REPLIES.get(code, "unknown failure reply")
        return f"proxy refused: {text} (SOCKS 4 reply {code})", EXIT_FAILURE
    if isinstance(error, NoAcceptableMethod):
        return f"authentication failed: {error}", EXIT_AUTHENTICATION
    if isinstance(error, ClientAuthenticationFailed):
        return f"authentication failed: {error}", EXIT_AUTHENTICATION
    if isinstance(error, TwistedTimeoutError) and isinstance(error.osError, str):
        return f"timed out: {error.osError}", EXIT_FAILURE  # the handshake's own timer
    if isinstance(error, (ConnectError, DNSLookupError)):
        reason = str(error).rstrip(".")
        return f"cannot reach the proxy {proxy.host}:{proxy.port}: {reason}", EXIT_FAILURE
    if isinstance(error, DestinationLookupError):
        return str(error), EXIT_FAILURE
    if isinstance(error, TruncatedMessage):
        return str(error), EXIT_FAILURE
    if isinstance(error, ProtocolError):
        return f"proxy protocol error: {error}", EXIT_FAILURE
    if isinstance(error, CancelledError):
        return "cancelled", EXIT_FAILURE
    if isinstance(error, SOCKSError):
        return str(error), EXIT_FAILURE
    return f"internal error: {error.__class__.__name__}: {error}", EXIT_FAILURE
