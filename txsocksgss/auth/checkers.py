"""
A twisted.cred checker that asks several checkers in turn.

A `Portal` keeps one checker per credentials interface, so a password file
and a program's own checker cannot both be registered for
IUsernamePassword.  `FirstMatchChecker` holds them all: the first that
accepts the credentials wins; the login fails only when every one refuses.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["FirstMatchChecker"]


@implementer(ICredentialsChecker)
class FirstMatchChecker:
    """Ask ``checkers`` in order; the first avatar id wins."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, checkers: Sequence[ICredentialsChecker]) -> None:
        if not checkers:
            raise ValueError("FirstMatchChecker needs at least one checker")
        self.checkers = tuple(checkers)

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        remaining = list(self.checkers)

        def next_checker(failure: Failure | None = None) -> Deferred[Any]:
            if failure is not None:
                failure.trap(UnauthorizedLogin)
            if not remaining:
                return fail(UnauthorizedLogin("bad user name or password"))
            d = maybeDeferred(remaining.pop(0).requestAvatarId, credentials)
            d.addErrback(next_checker)
            return d

        return next_checker()
