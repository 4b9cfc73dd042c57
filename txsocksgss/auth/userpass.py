"""
Method 0x02, username/password (RFC 1929), server and client side.

The server side logs in through a twisted.cred `Portal`: any checker a
program registers for `IUsernamePassword` works (the project ships
`txsocksgss.auth.passwordfile.PasswordFileChecker`), and the realm's avatar
(an `ISOCKSUser`) names the session's user.  RFC 1929 s2: a STATUS of 00 is
success; anything else is failure and the server closes the connection.
Passwords never reach a log line.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from txsocksgss.auth.conversation import AuthResult, AuthStep, Identity, SessionInfo
from txsocksgss.errors import ProtocolError
from txsocksgss.interfaces import (
    IClientAuthenticator,
    IClientAuthenticatorFactory,
    IServerAuthenticator,
    IServerAuthenticatorFactory,
    ISOCKSUser,
)
from txsocksgss.wire.reader import MessageBuffer
from txsocksgss.wire.socks5 import AuthMethod
from txsocksgss.wire.userpass import (
    UserPassRequest,
    UserPassResponse,
    parse_userpass_request,
    parse_userpass_response,
)

__all__ = [
    "SOCKSUser",
    "SOCKSUserRealm",
    "UserPassServerFactory",
    "UserPassClientFactory",
]

_log = Logger()

_SUCCESS = UserPassResponse(0x00).serialize()
_FAILURE = UserPassResponse(0x01).serialize()
# VER + ULEN + 255 + PLEN + 255
_REQUEST_LIMIT = 513


@implementer(ISOCKSUser)
class SOCKSUser:
    """The default avatar: just a name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"SOCKSUser({self.name!r})"


@implementer(IRealm)
class SOCKSUserRealm:
    """A realm that gives every authenticated avatar id a `SOCKSUser` of that name."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if ISOCKSUser not in interfaces:
            raise NotImplementedError("SOCKSUserRealm only provides ISOCKSUser")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
        return ISOCKSUser, SOCKSUser(name), lambda: None


@implementer(IServerAuthenticator)
class _UserPassServerConversation:
    method = AuthMethod.USERPASS

    def __init__(self, portal: Portal) -> None:
        self._portal = portal
        self._buffer = MessageBuffer(limit=_REQUEST_LIMIT)
        self._pending: Deferred[AuthStep] | None = None

    def begin(self) -> AuthStep:
        return AuthStep()

    def receive(self, data: bytes) -> AuthStep | Deferred[AuthStep]:
        self._buffer.feed(data)
        try:
            request = self._buffer.next(parse_userpass_request)
        except ProtocolError as error:
            return AuthStep(_FAILURE, AuthResult.failure(f"malformed RFC 1929 request: {error}"))
        if request is None:
            return AuthStep()
        unused = self._buffer.take_all()
        try:
            username = request.username.decode("utf-8")
        except UnicodeDecodeError:
            return AuthStep(_FAILURE, AuthResult.failure("user name is not UTF-8"))
        credentials = UsernamePassword(request.username, request.password)
        login = self._portal.login(credentials, None, ISOCKSUser)

        def succeeded(result: tuple[Any, Any, Any]) -> AuthStep:
            _interface, avatar, logout = result
            logout()
            identity = Identity(AuthMethod.USERPASS, avatar.name)
            return AuthStep(_SUCCESS, AuthResult.success(identity), unused)

        def failed(failure: Any) -> AuthStep:
            if failure.check(UnauthorizedLogin, UnhandledCredentials):
                reason = f"bad user name or password for {username!r}"
            else:
                _log.failure("password check for {user!r} raised", failure, user=username)
                reason = f"password check for {username!r} failed"
            return AuthStep(_FAILURE, AuthResult.failure(reason))

        step: Deferred[AuthStep] = login.addCallbacks(succeeded, failed)  # type: ignore[arg-type]
        self._pending = step
        return step

    def abort(self) -> None:
        if self._pending is not None and not self._pending.called:
            self._pending.cancel()
        self._pending = None


@implementer(IServerAuthenticatorFactory)
class UserPassServerFactory:
    """
    Server side of method 0x02; configuration name ``userpass``.

    :param portal: logs users in; it must have a checker for
        `twisted.cred.credentials.IUsernamePassword` and a realm that
        provides `ISOCKSUser` (see `SOCKSUserRealm`).
    """

    method = AuthMethod.USERPASS
    name = "userpass"

    def __init__(self, portal: Portal) -> None:
        self.portal = portal

    def buildAuthenticator(self, session: SessionInfo) -> IServerAuthenticator:
        return _UserPassServerConversation(self.portal)


@implementer(IClientAuthenticator)
class _UserPassClientConversation:
    method = AuthMethod.USERPASS

    def __init__(self, username: bytes, password: bytes) -> None:
        self._request = UserPassRequest(username, password)
        self._buffer = MessageBuffer(limit=2)

    def begin(self) -> AuthStep:
        return AuthStep(self._request.serialize())

    def receive(self, data: bytes) -> AuthStep:
        self._buffer.feed(data)
        try:
            response = self._buffer.next(parse_userpass_response)
        except ProtocolError as error:
            return AuthStep(result=AuthResult.failure(f"malformed RFC 1929 response: {error}"))
        if response is None:
            return AuthStep()
        if not response.succeeded:
            return AuthStep(
                result=AuthResult.failure(f"proxy rejected the user name or password (status {response.status:#04x})")
            )
        user = self._request.username.decode("utf-8", "replace")
        return AuthStep(
            result=AuthResult.success(Identity(AuthMethod.USERPASS, user)),
            unused=self._buffer.take_all(),
        )

    def abort(self) -> None:
        pass


@implementer(IClientAuthenticatorFactory)
class UserPassClientFactory:
    """
    Client side of method 0x02.

    :param username: 1 to 255 bytes (str is encoded as UTF-8).
    :param password: 1 to 255 bytes (str is encoded as UTF-8).
    """

    method = AuthMethod.USERPASS

    def __init__(self, username: str | bytes, password: str | bytes) -> None:
        self._username = username.encode("utf-8") if isinstance(username, str) else username
        self._password = password.encode("utf-8") if isinstance(password, str) else password
        UserPassRequest(self._username, self._password)  # validate lengths now

    def __repr__(self) -> str:
        return f"UserPassClientFactory(username={self._username!r})"

    def buildAuthenticator(self, session: SessionInfo) -> IClientAuthenticator:
        return _UserPassClientConversation(self._username, self._password)
