"""
Method 0x00, no authentication (RFC 1928 s3): no subnegotiation at all.

Both sides end at once with an anonymous identity; bytes already received
(a client that pipelined its request) are handed back as ``unused``.
"""

from __future__ import annotations

from zope.interface import implementer

from txsocksgss.auth.conversation import ANONYMOUS, AuthResult, AuthStep, SessionInfo
from txsocksgss.interfaces import (
    IClientAuthenticator,
    IClientAuthenticatorFactory,
    IServerAuthenticator,
    IServerAuthenticatorFactory,
)
from txsocksgss.wire.socks5 import AuthMethod

__all__ = ["NoAuthServerFactory", "NoAuthClientFactory"]


@implementer(IServerAuthenticator, IClientAuthenticator)
class _NoAuthConversation:
    method = AuthMethod.NONE

    def begin(self) -> AuthStep:
        return AuthStep(result=AuthResult.success(ANONYMOUS))

    def receive(self, data: bytes) -> AuthStep:  # pragma: no cover - never called after a result
        return AuthStep(result=AuthResult.success(ANONYMOUS), unused=data)

    def abort(self) -> None:
        pass


@implementer(IServerAuthenticatorFactory)
class NoAuthServerFactory:
    """Server side of method 0x00; configuration name ``none``."""

    method = AuthMethod.NONE
    name = "none"

    def buildAuthenticator(self, session: SessionInfo) -> IServerAuthenticator:
        return _NoAuthConversation()


@implementer(IClientAuthenticatorFactory)
class NoAuthClientFactory:
    """Client side of method 0x00."""

    method = AuthMethod.NONE

    def buildAuthenticator(self, session: SessionInfo) -> IClientAuthenticator:
        return _NoAuthConversation()
