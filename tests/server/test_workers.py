"""
`--workers N`: several processes serve one port (SO_REUSEPORT), the
connections spread over them, and stopping the master stops them all.
"""

from __future__ import annotations

import signal

import pytest
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.clients import Fetcher
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.ports import free_port
from tests.helpers.processes import LISTENING, spawnTwistd
from txsocksgss.client.endpoints import SOCKS5ClientEndpoint
from txsocksgss.errors import ConfigError
from txsocksgss.server.config import Config


class WorkerConfigTests(SynchronousTestCase):
    def test_workers_need_fixed_tcp_ports(self):
        error = self.assertRaises(ConfigError, Config.build, listen=["tcp:0:interface=127.0.0.1"], workers=2)
        self.assertIn("fixed port", str(error))
        error = self.assertRaises(ConfigError, Config.build, listen=["unix:/tmp/x.sock"], workers=2)
        self.assertIn("tcp", str(error))
        Config.build(listen=["tcp:1080:interface=127.0.0.1"], workers=2)


class WorkerProcessTests(IntegrationTestCase):
    @pytest.mark.interop
    @inlineCallbacks
    def test_two_processes_share_the_port_and_stop_together(self):
        port = free_port()
        process = spawnTwistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "2")
        yield process.waitFor(LISTENING)
        # Worker 1 is ready once it, too, says it listens.
        yield process.waitFor(LISTENING, count=2)
        yield process.waitFor(b"worker 1: ")
        web_port, _ = self.byteServer(b"served")
        proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        served = 0
        for _round in range(20):
            # The worker may still be starting: keep going until both answered.
            fetches = [SOCKS5ClientEndpoint(proxy, "127.0.0.1", web_port).connect(Factory.forProtocol(Fetcher))
                       for _ in range(10)]
            protocols = yield gatherResults(fetches)
            bodies = yield gatherResults([p.done for p in protocols])
            served += sum(body.endswith(b"served") for body in bodies)
            sessions = [line for line in process.output.splitlines() if b"session client" in line]
            worker_sessions = [line for line in sessions if b"worker 1:" in line]
            master_sessions = [line for line in sessions if b"worker 1:" not in line]
            if worker_sessions and master_sessions:
                break
        self.assertTrue(worker_sessions, process.output.decode())
        self.assertTrue(master_sessions, process.output.decode())
        self.assertEqual(served % 10, 0)
        process.transport.signalProcess(signal.SIGTERM)
        yield process.ended
        self.assertIn(b"worker 1 ended", process.output)
        self.assertNotIn(b"Traceback", process.output)


class WorkerOutputTests(SynchronousTestCase):
    """The master logs each line a worker writes once, whole, whatever the pipe reads cut."""

    def test_lines_cut_by_pipe_reads_are_joined(self):
        from twisted.logger import capturedLogs

        from txsocksgss.server.workers import _WorkerProcess

        worker = _WorkerProcess(1)
        with capturedLogs() as events:
            worker.childDataReceived(1, b"session client=127.0.0.1:5")
            worker.childDataReceived(1, b"000 outcome=closed\nsecond line\nthi")
            worker.childDataReceived(2, b"on stderr\n")
            worker.childDataReceived(1, b"rd\n")
            worker.childDataReceived(2, b"unfinished")
            worker.childConnectionLost(2)
        lines = [event["line"] for event in events]
        self.assertEqual(lines, ["session client=127.0.0.1:5000 outcome=closed", "second line",
                                 "on stderr", "third", "unfinished"])

    def test_with_a_log_file_whole_lines_are_written_as_they_are(self):
        import io

        from txsocksgss.server.workers import _LogSink, _WorkerProcess

        from twisted.logger import capturedLogs

        out = io.BytesIO()
        worker = _WorkerProcess(1, _LogSink(out, "utf-8"))
        with capturedLogs() as events:
            worker.childDataReceived(1, b"T [s] worker 1: session client=127.0.0.1:5")
            self.assertEqual(out.getvalue(), b"")  # nothing of an unfinished line
            worker.childDataReceived(1, b"000 outcome=closed\nT [s] worker 1: second\nT [s] worker 1: thi")
            worker.childDataReceived(2, b"on stderr\n")
            worker.childDataReceived(1, b"rd\n")
            worker.childDataReceived(2, b"unfinished")
            worker.childConnectionLost(2)
        self.assertEqual(out.getvalue().decode().splitlines(), [
            "T [s] worker 1: session client=127.0.0.1:5000 outcome=closed", "T [s] worker 1: second",
            "T [s] worker 1: third"])
        self.assertEqual([event["line"] for event in events], ["on stderr", "unfinished"])  # named, as events

    def test_a_text_log_file_gets_text(self):
        import io

        from txsocksgss.server.workers import _LogSink, _WorkerProcess

        out = io.StringIO()
        _WorkerProcess(1, _LogSink(out, None)).childDataReceived(1, "T [s] worker 1: caf\u00e9\n".encode())
        self.assertEqual(out.getvalue(), "T [s] worker 1: caf\u00e9\n")

    def test_the_sink_is_the_file_of_the_projects_text_observer_or_none(self):
        import io

        from txsocksgss import logs
        from txsocksgss.server import workers
        from txsocksgss.textlog import TextLogObserver

        out = io.BytesIO()
        self.patch(logs, "_process_text_observer", TextLogObserver(out))  # as fastTextObserver sets it
        sink = workers._log_sink()
        self.assertIsNotNone(sink)
        self.assertEqual((sink.out, sink.encoding), (out, "utf-8"))
        self.patch(logs, "_process_text_observer", None)  # twistd's own observer, syslog: events
        self.assertIsNone(workers._log_sink())

    def test_a_json_log_gets_events_not_text_lines(self):
        import io

        import twisted.logger
        from twisted.logger import LogPublisher

        from txsocksgss.logs import jsonLineObserver
        from txsocksgss.server import workers

        self.patch(twisted.logger, "globalLogPublisher", LogPublisher(jsonLineObserver(io.StringIO())))
        self.assertIsNone(workers._log_sink())

    def test_without_a_sink_a_worker_line_is_not_named_twice(self):
        from twisted.logger import capturedLogs

        from txsocksgss.server.workers import _WorkerProcess

        with capturedLogs() as events:
            _WorkerProcess(1).childDataReceived(1, b"T [txsocksgss.session#info] worker 1: session x\n")
        [event] = events
        self.assertEqual(event["log_format"], "{line}")
        self.assertEqual(event["line"], "T [txsocksgss.session#info] worker 1: session x")

