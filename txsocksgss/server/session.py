"""
The record of one SOCKS session, written to the log once when it ends.

Observers (`SessionObserver`: metrics, for one) may follow a record: the
protocol, or whoever owns the record, adds them when the session starts;
the record tells them when the first reply goes out and when the session
ends.  An observer that raises is logged and never breaks the session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from twisted.logger import Logger, LogLevel

from txsocksgss.server.outcomes import Outcome

__all__ = ["SessionObserver", "SessionRecord"]

_log = Logger(namespace="txsocksgss.session")


class SessionObserver(Protocol):
    """What follows `SessionRecord` events; each method is called once per record at most."""

    def sessionReplied(self, record: "SessionRecord") -> None:
        """The first reply (success or failure) went out; ``record.replied`` is its time."""

    def sessionFinished(self, record: "SessionRecord") -> None:
        """The session ended and its line was logged; ``record.outcome`` says how."""


@dataclass
class SessionRecord:
    """
    What the session log line says: who, how, where to, how much, how long,
    and how it ended.  Mutable: the protocol fills it in as the session
    advances, calls `markReplied` with the first reply and `finish` once.

    :ivar started: the reactor time of accept.
    :ivar replied: the reactor time of the first reply, ``None`` before it
        (and for sessions that end without one).
    :ivar observers: told of the reply and of the end (see `SessionObserver`).
    """

    client: str
    started: float
    version: int = 5
    user: str | None = None
    method: str = "-"
    protection: str = "-"
    command: str = "-"
    destination: str = "-"
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    outcome: str = ""
    result: Outcome | None = None
    finished: bool = False
    replied: float | None = None
    observers: list[SessionObserver] = field(default_factory=list, repr=False, compare=False)

    def markReplied(self, now: float) -> None:
        """Note the time of the first reply (later calls are ignored) and tell the observers."""
        if self.replied is not None or self.finished:
            return
        self.replied = now
        for observer in tuple(self.observers):
            try:
                observer.sessionReplied(self)
            except Exception:
                _log.failure("session observer {observer!r} failed on the reply", observer=observer)

    def finish(self, now: float, outcome: Outcome) -> bool:
        """
        Log the session line (one event) once and tell the observers; return
        False if it was already logged.  ``outcome`` becomes ``result``, and
        its text ``outcome``.
        """
        if self.finished:
            return False
        self.finished = True
        self.result = outcome
        self.outcome = outcome = str(outcome)  # type: ignore[assignment]
        user = self.user if self.user is not None else "-"
        duration = max(0.0, now - self.started)
        # The line is built once here: string.Formatter on a dozen fields
        # costs more than the rest of a short session.  The event's format
        # is that one field, so an observer may take it as the text as it is
        # (txsocksgss.textlog); the fields are there for structured (JSON)
        # observers.
        line = (
            f"session client={self.client} socks{self.version} user={user} method={self.method} "
            f"protection={self.protection} command={self.command} destination={self.destination} "
            f"up={self.bytes_from_client} down={self.bytes_to_client} duration={duration:.3f}s "
            f"outcome={outcome}"
        )
        # One event, built here as Logger.emit would build it (the same
        # keys), and given to the logger's observer: Logger.emit checks the
        # level against a list it sorts anew each time, a few microseconds
        # per short session.
        _log.observer({
            "session_line": line,
            "client": self.client,
            "version": self.version,
            "user": user,
            "method": self.method,
            "protection": self.protection,
            "command": self.command,
            "destination": self.destination,
            "up": self.bytes_from_client,
            "down": self.bytes_to_client,
            "duration": duration,
            "outcome": outcome,
            "log_logger": _log,
            "log_level": LogLevel.info,
            "log_namespace": _log.namespace,
            "log_source": None,
            "log_format": "{session_line}",
            "log_time": time.time(),
        })
        for observer in tuple(self.observers):
            try:
                observer.sessionFinished(self)
            except Exception:
                _log.failure("session observer {observer!r} failed at the end", observer=observer)
        return True

