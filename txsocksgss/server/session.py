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
from typing import Any, Protocol

from twisted.logger import Logger, LogLevel

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

    def finish(self, now: float, outcome: str) -> bool:
        """Log the session line once and tell the observers; return False if it was already logged."""
        if self.finished:
            return False
        self.finished = True
        self.outcome = outcome
        user = self.user if self.user is not None else "-"
        duration = max(0.0, now - self.started)
        # The line is built once here: string.Formatter on a dozen fields
        # costs more than the rest of a short session.  The fields are still
        # in the event for structured (JSON) observers.
        line = (
            f"session client={self.client} socks{self.version} user={user} method={self.method} "
            f"protection={self.protection} command={self.command} destination={self.destination} "
            f"up={self.bytes_from_client} down={self.bytes_to_client} duration={duration:.3f}s "
            f"outcome={outcome}"
        )
        # With twistd's text log file as the only observer, written there as
        # it would have written it (`_PlainTextLog`); else an event.
        if not _plain_text_log.write(line):
            _log.info(
                "{session_line}",
                session_line=line,
                client=self.client,
                version=self.version,
                user=user,
                method=self.method,
                protection=self.protection,
                command=self.command,
                destination=self.destination,
                up=self.bytes_from_client,
                down=self.bytes_to_client,
                duration=duration,
                outcome=outcome,
            )
        for observer in tuple(self.observers):
            try:
                observer.sessionFinished(self)
            except Exception:
                _log.failure("session observer {observer!r} failed at the end", observer=observer)
        return True


#: Set to True on a FileLogObserver's formatEvent function that writes
#: Twisted's classic text lines (a prefix, then the event's text), like a
#: worker process's (txsocksgss.server.workers): `_PlainTextLog` may then
#: write session lines through it directly.
CLASSIC_TEXT = "txsocksgssClassicText"


class _PlainTextLog:
    """
    The session line straight into the log file, when the only log observer
    is twistd's own text file (`twisted.logger.textFileLogObserver`, or a
    worker's, marked `CLASSIC_TEXT`): the
    same text it would write, with its time and system prefix formatted by
    that observer once per second, instead of an event through the
    publisher and a format per line (a tenth of a short session's CPU).
    With any other observer (JSON, syslog, a program's own, a test's, a
    time format finer than the second), or a line the file could not
    encode, the line is an event as usual; a file that fails to write is
    ignored, as the publisher would.
    """

    def __init__(self) -> None:
        self._observer: object = None
        self._second = -1
        self._prefix = ""

    def write(self, line: str) -> bool:
        # The publisher the session logger sends its events to (twisted.logger's global one).
        observer = only_text_observer(_log.observer)
        if observer is None:
            return False
        if observer is not self._observer:
            if not _whole_seconds(observer):
                return False
            self._observer, self._second = observer, -1
        now = time.time()
        if int(now) != self._second:
            prefix = _prefix(observer, float(int(now)))
            if prefix is None:
                return False
            self._prefix, self._second = prefix, int(now)
        text = f"{self._prefix}{line.replace(chr(10), chr(10) + chr(9))}\n"
        encoding = observer._encoding  # type: ignore[attr-defined]
        out = observer._outFile  # type: ignore[attr-defined]
        try:
            out.write(text if encoding is None else text.encode(encoding))
            out.flush()
        except UnicodeError:
            # Text that cannot be encoded (lone surrogates): a text file or
            # twistd's LogFile encodes before it writes a byte, so nothing
            # was written; the event path, where the publisher handles it.
            return False
        except Exception:
            # A full disk, a closed file: as the publisher does with a
            # failing observer, the session never sees it (and the line is
            # not written a second time).
            pass
        return True


def _prefix(observer: Any, when: float) -> str | None:
    """What ``observer`` writes before an event's text at time ``when`` (time, system)."""
    text = observer.formatEvent({"log_time": when, "log_namespace": _log.namespace, "log_level": LogLevel.info,
                                 "log_format": "{x}", "x": "x"})
    if not text or not text.endswith("x\n"):
        return None
    return str(text[:-2])


def _whole_seconds(observer: Any) -> bool:
    """Whether ``observer``'s time stamps change only with the second (so one prefix serves a second)."""
    return _prefix(observer, 1_700_000_000.0) == _prefix(observer, 1_700_000_000.75)


def only_text_observer(publisher: Any) -> Any:
    """
    The one observer of ``publisher`` (a twisted.logger LogPublisher) if it
    writes classic text lines to a file: twistd's own
    (`twisted.logger.textFileLogObserver`) or one whose formatEvent is
    marked `CLASSIC_TEXT`; else None (no observer, several, JSON, syslog...).
    """
    from twisted.logger import FileLogObserver

    observers = getattr(publisher, "_observers", None)
    if not observers or len(observers) != 1:
        return None
    observer = observers[0]
    formatEvent = getattr(observer, "formatEvent", None)
    classic = (getattr(formatEvent, "__qualname__", "").startswith("textFileLogObserver.")
               or getattr(formatEvent, CLASSIC_TEXT, False))
    if (isinstance(observer, FileLogObserver) and classic
            and hasattr(observer, "_outFile") and hasattr(observer, "_encoding")):
        return observer
    return None


_plain_text_log = _PlainTextLog()

