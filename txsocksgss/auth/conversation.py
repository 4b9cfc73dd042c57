"""
The values an authentication conversation produces.

An authenticator (server or client side, see `txsocksgss.interfaces`) is fed
the bytes its peer sends and answers with an `AuthStep`: bytes to send back
and, on its last step, an `AuthResult`.  The driver that owns the socket (the
SOCKS protocol, or MAF running a sub-method inside its own framing) carries
the bytes; the authenticator never touches a transport.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Identity", "AuthResult", "AuthStep", "SessionInfo", "ANONYMOUS"]


@dataclass(frozen=True)
class Identity:
    """
    Who the peer proved to be.

    ``method`` is the SOCKS method code that proved it, ``user`` the user
    name (a Kerberos principal for GSS-API, the ident reply for SOCKS 4) or
    ``None`` for anonymous; ``attributes`` holds method-specific facts the
    rules and logs may use (``realm``, ``mechanism``, ``grade``, ...).
    """

    method: int
    user: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)


ANONYMOUS = Identity(method=0x00)


@dataclass(frozen=True)
class AuthResult:
    """
    How a conversation ended.

    On success, ``identity`` is set and ``protection`` is the
    `txsocksgss.interfaces.IStreamProtection` to apply to every later byte
    of the connection, or ``None`` for none.  On failure, ``reason`` says
    why, for the log (never a secret).
    """

    succeeded: bool
    identity: Identity | None = None
    protection: Any = None
    reason: str = ""

    @classmethod
    def success(cls, identity: Identity, protection: Any = None) -> "AuthResult":
        return cls(True, identity, protection, "")

    @classmethod
    def failure(cls, reason: str) -> "AuthResult":
        return cls(False, None, None, reason)


@dataclass(frozen=True)
class AuthStep:
    """
    One move of a conversation.

    ``send``: bytes for the peer (possibly empty).  ``result``: set on the
    last step only.  ``unused``: bytes received after the end of the
    subnegotiation (a client that pipelines its request), which the driver
    hands to the next stage.
    """

    send: bytes = b""
    result: AuthResult | None = None
    unused: bytes = b""

    @property
    def finished(self) -> bool:
        return self.result is not None


@dataclass(frozen=True)
class SessionInfo:
    """
    What an authenticator may know about the connection it runs on.

    ``client`` and ``server`` are (host, port) pairs as seen by the server
    (on the client side: ``server`` is the proxy as dialled, ``client`` may be
    ``None``).  ``server_name`` is the host name the client used for the
    proxy, when known (GSS-API builds the service principal from it).
    """

    client: tuple[str, int] | None
    server: tuple[str, int] | None
    server_name: str | None = None
