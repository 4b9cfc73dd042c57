"""
The session line (`txsocksgss.server.session.SessionRecord.finish`): one
twisted.logger event per session, whatever the observers, with the line's
fields; formatted, it is the session line.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.logger import Logger, LogPublisher, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase

from txsocksgss.logs import jsonLineObserver
from txsocksgss.server import session
from txsocksgss.server.session import SessionRecord
from txsocksgss.textlog import TextLogObserver
from txsocksgss.server.outcomes import CLOSED, IDLE_TIMEOUT

LINE = ("session client=192.0.2.7:5000 socks5 user=- method=none protection=- command=connect "
        "destination=example.org:80 up=12 down=345 duration=1.000s outcome=closed")


def _record(destination: str = "example.org:80") -> SessionRecord:
    record = SessionRecord(client="192.0.2.7:5000", started=0.0)
    record.method, record.command, record.destination = "none", "connect", destination
    record.bytes_from_client, record.bytes_to_client = 12, 345
    return record


class SessionEventTests(SynchronousTestCase):
    def publishTo(self, *observers: Any) -> LogPublisher:
        """Session events go to a publisher with these observers (as twistd's go to the global one)."""
        publisher = LogPublisher(*observers)
        self.patch(session, "_log", Logger(namespace="txsocksgss.session", observer=publisher))
        return publisher

    def test_one_event_per_session_with_its_fields(self):
        events: list[Any] = []
        self.publishTo(events.append)
        record = _record()
        self.assertTrue(record.finish(1.0, CLOSED))
        self.assertFalse(record.finish(2.0, IDLE_TIMEOUT))
        [event] = events
        self.assertEqual(
            {key: event[key] for key in ("client", "version", "user", "method", "protection", "command",
                                         "destination", "up", "down", "duration", "outcome")},
            {"client": "192.0.2.7:5000", "version": 5, "user": "-", "method": "none", "protection": "-",
             "command": "connect", "destination": "example.org:80", "up": 12, "down": 345, "duration": 1.0,
             "outcome": "closed"})
        self.assertEqual((event["log_namespace"], event["log_level"].name), ("txsocksgss.session", "info"))
        self.assertEqual((event["log_format"], event["session_line"]), ("{session_line}", LINE))

    def test_twistds_text_observer_and_ours_write_the_same_line(self):
        for destination in ("example.org:80", "a\nname:80"):  # a newline continues with a tab
            theirs, ours = io.StringIO(), io.StringIO()
            self.publishTo(textFileLogObserver(theirs), TextLogObserver(ours))
            _record(destination).finish(1.0, CLOSED)
            self.assertEqual(ours.getvalue(), theirs.getvalue())
            expected = LINE.replace("example.org:80", destination.replace("\n", "\n\t"))
            self.assertEqual(ours.getvalue().split(" ", 1)[1], f"[txsocksgss.session#info] {expected}\n")

    def test_a_json_observer_gets_the_fields(self):
        out = io.StringIO()
        self.publishTo(jsonLineObserver(out))
        _record().finish(1.0, CLOSED)
        self.assertIn(f'"session_line": "{LINE}"', out.getvalue())
        self.assertIn('"outcome": "closed"', out.getvalue())

    def test_a_failing_log_file_never_breaks_the_session(self):
        class Full(io.StringIO):
            def write(self, text: str) -> int:
                raise OSError(28, "No space left on device")

        for observer in (textFileLogObserver(Full()), TextLogObserver(Full())):
            self.publishTo(observer)
            record = _record()
            self.assertTrue(record.finish(1.0, CLOSED))  # the publisher catches it
            self.assertEqual(record.outcome, "closed")
