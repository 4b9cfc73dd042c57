"""
twistd's text log format, written by an observer of our own that formats
less per line.

Theory of operation.  `TextLogObserver` writes exactly the bytes
`twisted.logger.textFileLogObserver` would write for the same event and
the same file: ``<time> [<system>] <text>\\n``, the time formatted with
``timeFormat`` in the local time zone (``-`` without a time or a format),
the system being the event's ``log_system`` or ``<namespace>#<level>``, a
newline in the text followed by a tab, a traceback after the text of an
event with a ``log_failure``, UTF-8 for a file that takes bytes.  It is
faster in two ways:

- **Per-second time cache.**  Formatting a time stamp (a time zone, a
  datetime, strftime) is most of what a text line costs.  Unless the time
  format has a field finer than the second (``%f``), every event of the
  same second has the same stamp, so it is formatted once per second and
  the ``<time> [<system>] `` prefix once per second and system.
- **Pre-rendered text.**  An event whose ``log_format`` is one plain field,
  ``"{name}"``, with a ``str`` value (the session line: its text is built
  once by `txsocksgss.server.session.SessionRecord.finish`) needs no
  `string.Formatter`: its text is that value.  Every other event is
  formatted by `twisted.logger.formatEventAsClassicLogText` itself (with
  the cached time stamps).

Like Twisted's observer, it lets a write error (a full disk, text the file
cannot encode) propagate to the log publisher, which reports it to the
other observers; nothing has been written when encoding fails.
"""

from __future__ import annotations

import math
import re
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEventAsClassicLogText, formatTime, timeFormatRFC3339
from twisted.python.compat import ioType
from zope.interface import implementer

__all__ = ["TextLogObserver"]

# A log_format that is a single plain field: "{session_line}".
_ONE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# datetime.fromtimestamp rounds to the microsecond: a time this close to the
# next second may be stamped with the next second, so it is never cached.
_LAST_SAFE_FRACTION = 0.999999


@implementer(ILogObserver)
class TextLogObserver:
    """
    An `ILogObserver` writing each event to ``outFile`` in twistd's text
    format, byte for byte what ``textFileLogObserver(outFile, timeFormat)``
    writes, flushed per event (see the module docstring).

    :param outFile: a file taking text, or else bytes (then UTF-8 is
        written), as for `twisted.logger.FileLogObserver`.
    :param timeFormat: a `datetime.datetime.strftime` format, or ``None``
        for ``-``.
    :param label: text inserted after ``[<system>] `` of every line (a
        worker process's ``worker 1: ``; empty by default).

    :ivar outFile: the file written to.
    :ivar encoding: ``"utf-8"`` if ``outFile`` takes bytes, else ``None``.
    """

    def __init__(self, outFile: IO[Any], timeFormat: str | None = timeFormatRFC3339, label: str = "") -> None:
        self.outFile = outFile
        self.encoding: str | None = None if ioType(outFile) is str else "utf-8"
        self.timeFormat = timeFormat
        self.label = label
        # Sub-second fields change within a second: no cache then.
        self._cacheable = timeFormat is not None and "%f" not in timeFormat
        self._second: float | None = None
        self._stamp = ""
        self._prefixes: dict[str, str] = {}  # system -> "<time> [<system>] <label>" of self._second

    def __call__(self, event: LogEvent) -> None:
        """Write ``event`` as one text line (nothing for an event without text)."""
        text = self._fastLine(event)
        if text is None:
            text = formatEventAsClassicLogText(event, formatTime=self._formatTime)
            if text and self.label:
                text = text.replace("] ", "] " + self.label, 1)
        if text:
            self.outFile.write(text if self.encoding is None else text.encode(self.encoding))
            self.outFile.flush()

    def _fastLine(self, event: LogEvent) -> str | None:
        """The line of an event whose text is one string field, else None (the general path)."""
        format = event.get("log_format")
        if type(format) is not str or "log_system" in event or "log_failure" in event or "log_flattened" in event:
            return None
        match = _ONE_FIELD.fullmatch(format)
        if match is None:
            return None
        text = event.get(match.group(1))
        if type(text) is not str:
            return None
        if not text:
            return ""
        level = event.get("log_level")
        # As _formatSystem in twisted.logger: "<namespace>#<level name>", "-" for what is missing.
        system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
        line = self._prefix(event.get("log_time"), system) + text
        return line.replace("\n", "\n\t") + "\n"

    def _prefix(self, when: float | None, system: str) -> str:
        """``<time> [<system>] <label>``, from the cache when ``when`` is in the cached second."""
        if self._cached(when):
            prefix = self._prefixes.get(system)
            if prefix is None:
                prefix = self._prefixes[system] = self._labelled(f"{self._stamp} [{system}] ")
            return prefix
        return self._labelled(f"{self._formatTime(when)} [{system}] ")

    def _labelled(self, prefix: str) -> str:
        return prefix.replace("] ", "] " + self.label, 1) if self.label else prefix

    def _cached(self, when: float | None) -> bool:
        """Whether ``when``'s stamp is the cached one (caching its second if it can)."""
        if when is None or not self._cacheable:
            return False
        try:
            second = math.floor(when)
        except (TypeError, ValueError, OverflowError):
            return False  # not a usable time: formatTime says what Twisted would
        if second == self._second:
            return when - second < _LAST_SAFE_FRACTION
        if when - second >= _LAST_SAFE_FRACTION:
            return False
        self._second, self._stamp, self._prefixes = second, formatTime(when, self.timeFormat), {}
        return True

    def _formatTime(self, when: float | None) -> str:
        """`twisted.logger.formatTime` with ``timeFormat``, once per second where it can."""
        if self._cached(when):
            return self._stamp
        return formatTime(when, self.timeFormat)
