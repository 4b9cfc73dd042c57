"""
The demo's live lines: `SessionReporter`, a twisted.logger observer,
turns the proxy's own log events (the GSS-API login line and the session
line) into one friendly line per session: method, user or principal,
mechanism, protection level.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

__all__ = ["SessionReporter"]

# The log namespaces of the two server events the reporter reads
# (txsocksgss.auth.gssapi's module logger and txsocksgss.server.session's).
_GSSAPI_NAMESPACE = "txsocksgss.auth.gssapi"
_SESSION_NAMESPACE = "txsocksgss.session"

# RFC 1961 s4.3 numbers the levels; CLEAR (0) is the Dante/curl extension.
_LEVEL_NUMBERS = {"clear": 0, "integrity": 1, "confidentiality": 2}
_METHOD_TITLES = {"gssapi": "GSS-API", "userpass": "username/password", "none": "no authentication"}


@dataclass
class _GSSAPILogin:
    principal: str
    mechanism: str
    requested: str
    agreed: str


def _level(name: str) -> str:
    number = _LEVEL_NUMBERS.get(name)
    return f"level {number} ({name})" if number is not None else name


def _bytes(count: Any) -> str:
    return f"{count} B" if isinstance(count, int) else "?"


@implementer(ILogObserver)
class SessionReporter:
    """
    A twisted.logger observer that writes one line per proxy session, from
    the server's own events: the GSS-API login line (principal, mechanism,
    requested and agreed level) and the session line written when a session
    ends (method, user, protection, destination, bytes, outcome).

    The login event carries no client address, so a GSS-API session is
    matched to the oldest login of its principal not yet reported.

    :param write: takes each session line.
    :param error: takes warnings and errors of the proxy's log, and every
        event when ``verbose``.
    """

    _KEPT_LOGINS = 256

    def __init__(self, write: Callable[[str], None], error: Callable[[str], None], verbose: bool = False) -> None:
        self._write = write
        self._error = error
        self._verbose = verbose
        self._logins: list[_GSSAPILogin] = []
        self.sessions = 0

    def __call__(self, event: Mapping[str, Any]) -> None:
        namespace = event.get("log_namespace", "")
        if namespace == _GSSAPI_NAMESPACE and "principal" in event and "agreed" in event:
            self._logins.append(_GSSAPILogin(str(event["principal"]), str(event.get("mechanism", "?")),
                                             str(event.get("requested", "?")), str(event["agreed"])))
            del self._logins[:-self._KEPT_LOGINS]
        elif namespace == _SESSION_NAMESPACE and "method" in event and "outcome" in event:
            self.sessions += 1
            self._write(self.describe(event))
        level = event.get("log_level")
        if self._verbose or "log_failure" in event or (level is not None and level >= LogLevel.warn):
            text = formatEvent(dict(event))
            failure = event.get("log_failure")
            if failure is not None and not self._verbose:
                text = f"{text}: {failure.getErrorMessage()}"
            elif failure is not None:
                text = f"{text}\n{failure.getTraceback()}"
            self._error(f"[{namespace or '-'}] {text}")

    def _login_of(self, principal: str) -> _GSSAPILogin | None:
        for index, login in enumerate(self._logins):
            if login.principal == principal:
                return self._logins.pop(index)
        return None

    def describe(self, event: Mapping[str, Any]) -> str:
        """The line for one session event."""
        stamp = time.strftime("%H:%M:%S", time.localtime(event.get("log_time", time.time())))
        method = str(event.get("method", "-"))
        user = event.get("user", "-")
        user = None if user in (None, "-") else str(user)
        title = _METHOD_TITLES.get(method, method)
        if method == "gssapi" and user is not None:
            login = self._login_of(user)
            if login is not None:
                asked = "" if login.requested == login.agreed else f", asked for {_level(login.requested)}"
                how = f"{title} as {user}, mechanism {login.mechanism}, protection {_level(login.agreed)}{asked}"
            else:
                how = f"{title} as {user}, protection {_level(str(event.get('protection', '-')))}"
        elif user is not None:
            how = f"{title} as {user}"
        elif method in ("-", "socks4"):
            how = "SOCKS 4" if method == "socks4" else "no method agreed"
        else:
            how = f"{title}" + ("" if method == "none" else ", not authenticated")
        parts = [how]
        command = event.get("command", "-")
        if command != "-":  # the session got as far as a request
            parts.append(f"{command} {event.get('destination', '-')}")
            parts.append(f"{_bytes(event.get('up'))} up, {_bytes(event.get('down'))} down")
        parts.append(str(event.get("outcome", "")))
        return f"[{stamp}] session {self.sessions}: " + "; ".join(parts)
