"""
The session line (`txsocksgss.server.session.SessionRecord.finish`): an
event for every observer, except that when the only observer is twistd's
text log file the line is written there directly, byte for byte what that
observer would have written (`_PlainTextLog`).
"""

from __future__ import annotations

import io
from typing import Any

import twisted.logger
from twisted.logger import Logger, LogPublisher, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase

from txsocksgss.logs import jsonLineObserver
from txsocksgss.server import session
from txsocksgss.server.session import SessionRecord


def _record(destination: str = "example.org:80") -> SessionRecord:
    record = SessionRecord(client="192.0.2.7:5000", started=0.0)
    record.method, record.command, record.destination = "none", "connect", destination
    record.bytes_from_client, record.bytes_to_client = 12, 345
    return record


class PlainTextLogTests(SynchronousTestCase):
    def publishTo(self, *observers: Any) -> LogPublisher:
        """Session events go to a publisher with these observers (as twistd's go to the global one)."""
        publisher = LogPublisher(*observers)
        self.patch(session, "_log", Logger(namespace="txsocksgss.session", observer=publisher))
        self.patch(session, "_plain_text_log", session._PlainTextLog())
        return publisher

    def eventText(self, record: SessionRecord, outcome: str, when: float) -> str:
        """What twistd's text observer writes for the session's event."""
        out = io.StringIO()
        self.publishTo(textFileLogObserver(out), lambda event: None)  # two observers: an event
        record.finish(1.0, outcome)
        return out.getvalue()

    def test_written_as_twistds_text_observer_would(self):
        for destination in ("example.org:80", "a\nname:80"):  # a newline continues with a tab
            expected = self.eventText(_record(destination), "closed", 1_700_000_000.5)
            out = io.StringIO()
            self.publishTo(textFileLogObserver(out))
            self.patch(session.time, "time", lambda: 1_700_000_000.5)
            _record(destination).finish(1.0, "closed")
            stamp, rest = out.getvalue().split(" ", 1)
            self.assertEqual(rest, expected.split(" ", 1)[1])  # the event's time is the clock's own
            self.assertEqual(stamp, twisted.logger.formatTime(1_700_000_000.5))
            self.assertIn(f"destination={destination.replace(chr(10), chr(10) + chr(9))} up=12 down=345",
                          out.getvalue())

    def test_the_time_prefix_follows_the_clock(self):
        out = io.StringIO()
        self.publishTo(textFileLogObserver(out))
        times = iter([1_700_000_000.2, 1_700_000_000.9, 1_700_000_061.0])
        self.patch(session.time, "time", lambda: next(times))
        for _ in range(3):
            _record().finish(1.0, "closed")
        stamps = [line.split(" ", 1)[0] for line in out.getvalue().splitlines()]
        self.assertEqual(stamps[0], stamps[1])
        self.assertNotEqual(stamps[1], stamps[2])
        self.assertEqual(stamps[2], twisted.logger.formatTime(1_700_000_061.0))

    def test_a_binary_log_file_gets_utf8(self):
        out = io.BytesIO()
        self.publishTo(textFileLogObserver(out))
        _record("caf\u00e9.example:80").finish(1.0, "closed")
        self.assertIn("destination=caf\u00e9.example:80".encode(), out.getvalue())

    def test_any_other_observer_gets_the_event(self):
        out = io.StringIO()
        self.publishTo(jsonLineObserver(out))
        _record().finish(1.0, "closed")
        self.assertIn('"session_line": "session client=192.0.2.7:5000', out.getvalue())
        self.assertIn('"outcome": "closed"', out.getvalue())
        events: list[Any] = []
        text = io.StringIO()
        self.publishTo(textFileLogObserver(text), events.append)
        _record().finish(1.0, "closed")
        [event] = events
        self.assertEqual(event["outcome"], "closed")
        self.assertIn("session client=192.0.2.7:5000", text.getvalue())

    def test_a_workers_classic_text_observer_is_written_through_directly(self):
        from twisted.logger import FileLogObserver, formatEventAsClassicLogText

        def formatEvent(event: Any) -> Any:
            text = formatEventAsClassicLogText(event)
            return text.replace("] ", "] worker 3: ", 1) if text else text

        setattr(formatEvent, session.CLASSIC_TEXT, True)
        out = io.StringIO()
        events: list[Any] = []
        self.publishTo(FileLogObserver(out, formatEvent))
        self.patch(session._log, "emit", lambda *args, **kwargs: events.append(kwargs))
        _record().finish(1.0, "closed")
        self.assertEqual(events, [])  # no event: written directly
        self.assertIn("[txsocksgss.session#info] worker 3: session client=192.0.2.7:5000", out.getvalue())
        unmarked = io.StringIO()
        self.publishTo(FileLogObserver(unmarked, lambda event: "?\n"))  # not known to be classic text
        _record().finish(1.0, "closed")
        self.assertEqual(unmarked.getvalue(), "?\n")  # through the event

    def test_a_failing_log_file_never_breaks_the_session(self):
        class Full(io.StringIO):
            def write(self, text: str) -> int:
                raise OSError(28, "No space left on device")

        self.publishTo(textFileLogObserver(Full()))
        record = _record()
        self.assertTrue(record.finish(1.0, "closed"))  # no exception reaches the session
        self.assertEqual(record.outcome, "closed")

    def test_a_line_the_file_cannot_encode_goes_through_the_event(self):
        raw = io.BytesIO()
        text = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # a text file: it encodes itself
        for out, written in ((raw, raw.getvalue), (text, lambda: text.buffer.getvalue())):
            events: list[Any] = []
            self.publishTo(textFileLogObserver(out))
            self.patch(session._log, "emit", lambda *args, **kwargs: events.append(kwargs))
            record = _record()
            record.user = "bad\udce9"  # an ident answer decoded with surrogateescape
            record.finish(1.0, "closed")
            self.assertEqual(written(), b"")
            self.assertEqual([e["user"] for e in events], ["bad\udce9"])

    def test_a_time_format_finer_than_seconds_keeps_the_event(self):
        out = io.StringIO()
        events: list[Any] = []
        self.publishTo(textFileLogObserver(out, timeFormat="%H:%M:%S.%f"))
        self.patch(session._log, "emit", lambda *args, **kwargs: events.append(kwargs))
        _record().finish(1.0, "closed")
        self.assertEqual(len(events), 1)
        self.assertEqual(out.getvalue(), "")

