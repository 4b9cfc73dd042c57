"""
JSON logs: `txsocksgss.logs.jsonObserver` writes one JSON object per line,
works as twistd's ``--logger``, and a session line keeps its fields.
"""

from __future__ import annotations

import io
import json
import os
import signal

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger, LogPublisher, eventsFromJSONLogFile
from twisted.trial.unittest import SynchronousTestCase

from tests.ops_support import EchoFactory, openTunnel, spawnTwistd
from tests.support import IntegrationTestCase
from tests.helpers.ports import free_port
from txsocksgss import logs
from txsocksgss.server import session
from txsocksgss.server.session import SessionRecord

SESSION_FIELDS = ("client", "user", "method", "command", "destination", "up", "down", "duration", "outcome")


class JSONObserverTests(SynchronousTestCase):
    def logSession(self, out: io.StringIO) -> None:
        publisher = LogPublisher(logs.jsonLineObserver(out))
        self.patch(session, "_log", Logger(namespace="txsocksgss.session", observer=publisher))
        record = SessionRecord(client="127.0.0.1:4000", started=10.0, user="alice", method="userpass",
                               command="connect", destination="example.com:443",
                               bytes_from_client=12, bytes_to_client=34)
        record.finish(12.5, "closed")

    def test_one_json_object_per_line_with_the_session_fields(self) -> None:
        out = io.StringIO()
        self.logSession(out)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        event = json.loads(lines[0])
        self.assertEqual(
            {key: event[key] for key in SESSION_FIELDS},
            {"client": "127.0.0.1:4000", "user": "alice", "method": "userpass", "command": "connect",
             "destination": "example.com:443", "up": 12, "down": 34, "duration": 2.5, "outcome": "closed"},
        )
        self.assertEqual(event["log_namespace"], "txsocksgss.session")
        self.assertEqual(event["log_level"]["name"], "info")
        self.assertTrue(event["text"].startswith("session client=127.0.0.1:4000 socks5 user=alice"))

    def test_twisted_reads_the_lines_back(self) -> None:
        out = io.StringIO()
        self.logSession(out)
        events = list(eventsFromJSONLogFile(io.StringIO(out.getvalue()), recordSeparator=""))
        self.assertEqual([e["outcome"] for e in events], ["closed"])

    def test_the_environment_variable_names_a_file(self) -> None:
        path = self.mktemp()
        self.patch(os, "environ", {**os.environ, logs.LOG_FILE_VARIABLE: path})
        observer = logs.jsonObserver()
        self.addCleanup(lambda: observer._outFile.close())  # type: ignore[attr-defined]
        Logger(observer=observer).info("hello {who}", who="world")
        with open(path) as f:
            event = json.loads(f.read())
        self.assertEqual((event["who"], event["text"]), ("world", "hello world"))


class TwistdLoggerTests(IntegrationTestCase):
    @inlineCallbacks
    def test_twistd_logger_option_writes_json_lines(self) -> None:
        port = free_port()
        process = spawnTwistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1",
                              twistd_args=("--logger", "txsocksgss.logs.jsonObserver"))
        yield process.waitFor(b"txsocksgss listening on")
        echo_port = self.listen(EchoFactory())
        tunnel = yield openTunnel(self, port, echo_port)
        yield tunnel.roundTrip(b"through json")
        tunnel.transport.loseConnection()
        yield tunnel.lost
        yield process.waitFor(b'"outcome":')
        process.transport.signalProcess(signal.SIGTERM)
        yield process.ended
        events = [json.loads(line) for line in process.out.decode().splitlines()]  # every line is JSON
        sessions = [e for e in events if e.get("log_namespace") == "txsocksgss.session"]
        self.assertEqual(len(sessions), 1, process.output.decode())
        fields = {key: sessions[0][key] for key in SESSION_FIELDS}
        self.assertEqual(fields["destination"], f"127.0.0.1:{echo_port}")
        self.assertEqual((fields["method"], fields["command"], fields["user"]), ("none", "connect", "-"))
        self.assertEqual((fields["up"], fields["down"]), (12, 12))
        self.assertIsInstance(fields["duration"], float)
        self.assertIn(fields["outcome"], ("closed", "client closed"))
        self.assertTrue(fields["client"].startswith("127.0.0.1:"))
        self.assertIn("Server Shut Down.", [e.get("text") for e in events])
