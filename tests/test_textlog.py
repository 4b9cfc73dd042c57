"""
`txsocksgss.textlog.TextLogObserver` writes the bytes Twisted's
`twisted.logger.textFileLogObserver` writes, event for event: session
events (the pre-rendered text), other events, failures, time formats,
files that take bytes or text, text a file cannot encode, and its
per-second time cache across second boundaries (event times given, no
clock).
"""

from __future__ import annotations

import io
from typing import Any, Callable

from twisted.logger import Logger, LogLevel, formatTime, textFileLogObserver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txsocksgss.server import session
from txsocksgss.server.session import SessionRecord
from txsocksgss.textlog import TextLogObserver
from txsocksgss.server.outcomes import CLOSED

SECOND = 1_700_000_000.0


def session_event(when: float, destination: str = "example.org:80", user: str | None = None) -> dict[str, Any]:
    """The event `SessionRecord.finish` emits, stamped ``when`` (to this list only, not the global publisher)."""
    events: list[dict[str, Any]] = []
    record = SessionRecord(client="192.0.2.7:5000", started=0.0, method="none", command="connect",
                           destination=destination, user=user, bytes_from_client=12, bytes_to_client=345)
    saved, session._log = session._log, Logger(namespace="txsocksgss.session", observer=events.append)
    try:
        record.finish(1.0, CLOSED)
    finally:
        session._log = saved
    [event] = events
    event["log_time"] = when
    return event


def other_events(when: float) -> list[dict[str, Any]]:
    """Events that are not session lines, in the shapes Twisted formats differently."""
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    return [
        {"log_format": "hello {who}", "who": "world", "log_time": when, "log_namespace": "a.b",
         "log_level": LogLevel.warn},
        {"log_format": "{x}", "x": 42, "log_time": when, "log_namespace": "n", "log_level": LogLevel.info},
        {"log_format": "{x!r}", "x": "q", "log_time": when, "log_level": LogLevel.info},
        {"log_format": "{x}", "x": "from a system", "log_time": when, "log_system": "worker-ish"},
        {"log_format": "{x}", "x": "no time", "log_namespace": "n", "log_level": LogLevel.info},
        {"log_format": "{x}", "x": "no namespace, no level", "log_time": when},
        {"log_format": "{x}", "x": "", "log_time": when},  # no text: nothing
        {"log_time": when, "log_namespace": "n"},  # no format: nothing
        {"log_format": "{missing}", "log_time": when},  # unformattable: Twisted's own message
        {"log_format": "two\nlines {x}", "x": "and\nthree", "log_time": when},
        {"log_format": "{x}", "x": "one field\nwith a newline", "log_time": when, "log_namespace": "n",
         "log_level": LogLevel.info},
        {"log_format": "it failed: {why}", "why": "division", "log_failure": failure, "log_time": when,
         "log_namespace": "n", "log_level": LogLevel.critical},
        {"log_format": "{x}", "x": "failure with a plain field", "log_failure": failure, "log_time": when},
        {"log_format": b"bytes {x}", "x": "format", "log_time": when},
    ]


class SameBytesTests(SynchronousTestCase):
    def assertSameBytes(self, events: list[dict[str, Any]], makeFile: Callable[[], Any] = io.StringIO,
                        timeFormat: Any = "default") -> bytes | str:
        """Both observers, one fresh file each, the same events: the same content; returns it."""
        kwargs = {} if timeFormat == "default" else {"timeFormat": timeFormat}
        theirs, ours = makeFile(), makeFile()
        twisted_observer, our_observer = textFileLogObserver(theirs, **kwargs), TextLogObserver(ours, **kwargs)
        for event in events:
            twisted_observer(dict(event))
            our_observer(dict(event))
        self.assertEqual(ours.getvalue(), theirs.getvalue())
        return ours.getvalue()

    def test_session_events(self):
        written = self.assertSameBytes([session_event(SECOND + 0.5), session_event(SECOND + 0.7, "a\nname:80")])
        self.assertEqual(written.splitlines()[0].split(" ", 1)[1],
                         "[txsocksgss.session#info] session client=192.0.2.7:5000 socks5 user=- method=none "
                         "protection=- command=connect destination=example.org:80 up=12 down=345 "
                         "duration=1.000s outcome=closed")
        self.assertIn("destination=a\n\tname:80 up=12", written)  # a newline continues with a tab

    def test_other_events_and_failures(self):
        written = self.assertSameBytes(other_events(SECOND + 0.25))
        self.assertIn("ZeroDivisionError", written)
        self.assertIn("[worker-ish] from a system", written)
        self.assertIn("- [n#info] no time", written)

    def test_a_file_taking_bytes_gets_utf8(self):
        events = [session_event(SECOND, "caf\u00e9.example:80"), *other_events(SECOND)]
        written = self.assertSameBytes(events, io.BytesIO)
        self.assertIn("destination=caf\u00e9.example:80".encode(), written)

    def test_time_formats(self):
        events = [session_event(SECOND + 0.1), session_event(SECOND + 0.6), *other_events(SECOND + 0.7)]
        fine = self.assertSameBytes(events, timeFormat="%H:%M:%S.%f")  # sub-second: a stamp per event
        stamps = [line.split(" ", 1)[0] for line in fine.splitlines()[:2]]
        self.assertNotEqual(stamps[0], stamps[1])
        self.assertEqual(stamps[1], formatTime(SECOND + 0.6, "%H:%M:%S.%f"))
        self.assertSameBytes(events, timeFormat="%Y %j %H%M%S %z")
        written = self.assertSameBytes(events, timeFormat=None)
        self.assertTrue(written.startswith("- [txsocksgss.session#info] session "))

    def test_the_time_cache_across_second_boundaries(self):
        times = [SECOND + 0.2, SECOND + 0.9, SECOND + 1.0, SECOND + 1.5, SECOND + 0.4,  # back in time
                 SECOND + 0.9999995,  # datetime rounds it up to the next second
                 SECOND + 61.0, SECOND + 61.9999993, SECOND + 3600 * 24 * 182.5, 0.5, -0.5, 1]
        events = [event for when in times for event in (session_event(when), other_events(when)[0])]
        written = self.assertSameBytes(events)
        stamps = [line.split(" ", 1)[0] for line in written.splitlines()]
        self.assertEqual(stamps[0], stamps[2])  # one second, one stamp
        self.assertNotEqual(stamps[2], stamps[4])
        self.assertEqual(stamps[10], formatTime(SECOND + 1))
        self.assertEqual(stamps[14], formatTime(SECOND + 61))

    def test_text_the_file_cannot_encode(self):
        unencodable = session_event(SECOND, user="bad\udce9")  # an ident answer with surrogateescape
        for makeFile in (io.BytesIO, lambda: io.TextIOWrapper(io.BytesIO(), encoding="ascii")):
            theirs, ours = makeFile(), makeFile()
            for observer in (textFileLogObserver(theirs), TextLogObserver(ours)):
                self.assertRaises(UnicodeEncodeError, observer, dict(unencodable))
            # (the wrappers stay referenced: dropping one closes its buffer)
            our_bytes, their_bytes = (f.buffer if isinstance(f, io.TextIOWrapper) else f for f in (ours, theirs))
            self.assertEqual(our_bytes.getvalue(), their_bytes.getvalue())
            self.assertEqual(our_bytes.getvalue(), b"")  # nothing of the line
        ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
        self.assertRaises(UnicodeEncodeError, TextLogObserver(ascii_out), session_event(SECOND, "caf\u00e9:80"))

    def test_a_label_after_the_system(self):
        events = [session_event(SECOND + 0.5), *other_events(SECOND + 0.5), session_event(SECOND + 2.5)]
        theirs, ours = io.StringIO(), io.StringIO()
        twisted_observer, our_observer = textFileLogObserver(theirs), TextLogObserver(ours, label="worker 3: ")
        for event in events:
            twisted_observer(dict(event))
            our_observer(dict(event))
        expected = "".join(line.replace("] ", "] worker 3: ", 1) if not line.startswith("\t") else line
                           for line in theirs.getvalue().splitlines(keepends=True))
        self.assertEqual(ours.getvalue(), expected)
        self.assertIn("[txsocksgss.session#info] worker 3: session client=", ours.getvalue())

    def test_each_event_is_flushed(self):
        class Recording(io.StringIO):
            flushes = 0

            def flush(self) -> None:
                self.flushes += 1

        out = Recording()
        observer = TextLogObserver(out)
        observer(session_event(SECOND))
        observer(other_events(SECOND)[0])
        self.assertEqual(out.flushes, 2)
        self.assertEqual(out.getvalue().count("\n"), 2)
