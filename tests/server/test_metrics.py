"""
Prometheus metrics: the classes of outcomes and failures, the counts kept
from session events, and the HTTP endpoint scraped with Agent after real
traffic through the proxy (in-process and under twistd --metrics).
"""

from __future__ import annotations

import signal
import struct
from typing import Any

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent

from tests.helpers.clients import StreamCollector, openTunnel
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.ports import free_port
from tests.helpers.processes import spawnTwistd
from tests.helpers.servers import EchoFactory
from txsocksgss.auth.passwordfile import set_password
from txsocksgss.errors import ConfigError
from txsocksgss.server.config import Config
from txsocksgss.server.metrics import (
    AUTH_FAILURE_REASONS,
    OUTCOME_CLASSES,
    ServerMetrics,
)
from txsocksgss.server.service import makeService
from txsocksgss.server.session import SessionRecord
from txsocksgss.wire.socks5 import ReplyCode
from txsocksgss.server.outcomes import (
    CLIENT_CLOSED,
    CLOSED,
    IDLE_TIMEOUT,
    UPSTREAM_CLOSED,
    Outcome,
    OutcomeClass,
    OutcomeKind,
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from the Prometheus text format."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class ClassificationTests(SynchronousTestCase):
    """Each outcome renders its session-line text and carries its labels (never read back from the text)."""

    def test_outcome_classes(self) -> None:
        cases = [
            (CLOSED, "closed", "closed"),
            (CLIENT_CLOSED, "client closed", "closed"),
            (UPSTREAM_CLOSED, "upstream closed", "closed"),
            (Outcome(OutcomeKind.CONTROL_CLOSED), "client closed the control connection", "closed"),
            (Outcome(OutcomeKind.CLIENT_GONE), "client closed during negotiation", "client_aborted"),
            (IDLE_TIMEOUT, "idle timeout", "idle_timeout"),
            (Outcome(OutcomeKind.SHUTDOWN), "server shutdown", "shutdown"),
            (Outcome(OutcomeKind.RESET, "ECONNRESET"), "reset (ECONNRESET)", "reset"),
            (Outcome.auth_failed("bad user name or password for 'bob'"),
             "authentication failed: bad user name or password for 'bob'", "auth_failed"),
            (Outcome(OutcomeKind.NO_ACCEPTABLE_METHOD, "0x02"), "no acceptable method (client offered 0x02)",
             "auth_failed"),
            (Outcome(OutcomeKind.IDENT_REFUSED, "identd: timeout"), "ident: identd: timeout", "auth_failed"),
            (Outcome(OutcomeKind.DENIED, "rule 1 (lan)"), "denied by rule 1 (lan)", "denied"),
            (Outcome.negotiation_timeout("request"), "negotiation timeout in request", "timeout"),
            (Outcome(OutcomeKind.BIND_TIMEOUT), "BIND: nobody connected in time", "timeout"),
            (Outcome(OutcomeKind.BAD_REQUEST, "unknown command 9"), "bad request: unknown command 9", "protocol_error"),
            (Outcome.protocol_error("greeting", "version 6"), "protocol error in greeting: version 6",
             "protocol_error"),
            (Outcome(OutcomeKind.PROTECTION_FAILURE, "bad token"), "protection failure: bad token", "protocol_error"),
            (Outcome.destination_failed(ReplyCode.CONNECTION_REFUSED, "Connection was refused by other side"),
             "connection refused: Connection was refused by other side", "destination_error"),
            (Outcome.destination_failed(ReplyCode.HOST_UNREACHABLE, "no route"), "host unreachable: no route",
             "destination_error"),
            (Outcome.destination_failed(ReplyCode.GENERAL_FAILURE, "something"), "general failure: something",
             "destination_error"),
            (Outcome(OutcomeKind.COMMAND_ERROR, "something new"), "something new", "error"),
        ]
        for outcome, text, expected in cases:
            self.assertEqual(str(outcome), text)
            self.assertEqual(outcome.outcome_class.value, expected, text)
            self.assertIn(expected, OUTCOME_CLASSES)

    def test_auth_failure_reasons(self) -> None:
        cases = [
            (Outcome(OutcomeKind.NO_ACCEPTABLE_METHOD, "0x02"), "no_acceptable_method"),
            (Outcome.auth_failed("bad user name or password for 'bob'"), "bad_credentials"),
            (Outcome.auth_failed("malformed RFC 1929 request: short"), "malformed"),
            (Outcome.auth_failed("user name is not UTF-8"), "malformed"),
            (Outcome.auth_failed("password check for 'bob' failed"), "error"),
            (Outcome.auth_failed("GSS-API error during context: expired"), "mechanism"),
            (Outcome.auth_failed("MAF: no chain left"), "mechanism"),
            (Outcome.auth_failed("something else"), "other"),
            (Outcome(OutcomeKind.AUTH_ERROR), "error"),
            (Outcome.negotiation_timeout("authenticating"), "timeout"),
            (Outcome(OutcomeKind.AUTH_TOO_MUCH_DATA), "malformed"),
            (Outcome(OutcomeKind.IDENT_REFUSED, "USERID 'a' but identd says 'b'"), "ident"),
        ]
        for outcome, expected in cases:
            self.assertIsNotNone(outcome.auth_failure_reason, str(outcome))
            self.assertEqual(outcome.auth_failure_reason.value, expected, str(outcome))
            self.assertEqual(outcome.outcome_class, OutcomeClass.AUTH_FAILED)
            self.assertIn(expected, AUTH_FAILURE_REASONS)
        self.assertEqual(str(Outcome.negotiation_timeout("authenticating")), "negotiation timeout in authenticating")
        for outcome in (CLOSED, Outcome(OutcomeKind.DENIED, "default deny"), Outcome.negotiation_timeout("request")):
            self.assertIsNone(outcome.auth_failure_reason)

    def test_every_kind_has_a_class_and_renders(self) -> None:
        for kind in OutcomeKind:
            self.assertIn(kind.outcome_class.value, OUTCOME_CLASSES)
            self.assertTrue(str(Outcome(kind, "detail")), kind)


class _Relay:
    def __init__(self, up: int, down: int) -> None:
        self.bytes_from_client = up
        self.bytes_from_upstream = down


class _Session:
    def __init__(self, method: str, relay: _Relay | None = None) -> None:
        self.record = SessionRecord(client="127.0.0.1:1", started=0.0, method=method)
        self.relay = relay


class _Context:
    def __init__(self) -> None:
        self.sessions: set[Any] = set()


class ServerMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.context = _Context()
        self.metrics = ServerMetrics(self.context)

    def scrape(self) -> dict[Any, float]:
        return samples(generate_latest(self.metrics.registry).decode())

    def test_ended_sessions_are_counted_by_method_and_outcome_class(self) -> None:
        for method, outcome, up, down in [("none", CLOSED, 10, 20), ("none", UPSTREAM_CLOSED, 1, 2),
                                          ("userpass", Outcome.auth_failed("bad user name or password"), 0, 0)]:
            record = SessionRecord(client="c", started=0.0, method=method, bytes_from_client=up,
                                   bytes_to_client=down, observers=[self.metrics])
            record.finish(1.0, outcome)
        found = self.scrape()
        self.assertEqual(found[("socksgss_sessions_total", (("method", "none"), ("outcome", "closed")))], 2)
        self.assertEqual(found[("socksgss_sessions_total", (("method", "userpass"), ("outcome", "auth_failed")))], 1)
        self.assertEqual(
            found[("socksgss_auth_failures_total", (("method", "userpass"), ("reason", "bad_credentials")))], 1)
        self.assertEqual(found[("socksgss_relayed_bytes_total", (("direction", "up"),))], 11)
        self.assertEqual(found[("socksgss_relayed_bytes_total", (("direction", "down"),))], 22)

    def test_handshake_latency_is_accept_to_first_reply(self) -> None:
        record = SessionRecord(client="c", started=100.0, method="none", observers=[self.metrics])
        record.markReplied(100.2)
        record.markReplied(105.0)  # only the first reply counts
        found = self.scrape()
        self.assertEqual(found[("socksgss_handshake_seconds_count", (("method", "none"),))], 1)
        self.assertAlmostEqual(found[("socksgss_handshake_seconds_sum", (("method", "none"),))], 0.2)
        self.assertEqual(found[("socksgss_handshake_seconds_bucket", (("le", "0.1"), ("method", "none")))], 0)
        self.assertEqual(found[("socksgss_handshake_seconds_bucket", (("le", "0.25"), ("method", "none")))], 1)

    def test_open_sessions_and_live_bytes_are_read_at_scrape_time(self) -> None:
        open_tunnel = _Session("none", _Relay(5, 7))
        negotiating = _Session("-")
        self.context.sessions.update({open_tunnel, negotiating})
        found = self.scrape()
        self.assertEqual(found[("socksgss_sessions_open", (("method", "none"),))], 1)
        self.assertEqual(found[("socksgss_sessions_open", (("method", "unselected"),))], 1)
        self.assertEqual(found[("socksgss_relayed_bytes_total", (("direction", "up"),))], 5)
        # When the tunnel ends its bytes move to the totals; the counter never goes back.
        open_tunnel.record.bytes_from_client, open_tunnel.record.bytes_to_client = 6, 7
        open_tunnel.relay = _Relay(6, 7)
        open_tunnel.record.observers.append(self.metrics)
        open_tunnel.record.finish(1.0, CLOSED)
        self.assertEqual(self.scrape()[("socksgss_relayed_bytes_total", (("direction", "up"),))], 6)
        self.context.sessions.discard(open_tunnel)
        found = self.scrape()
        self.assertEqual(found[("socksgss_relayed_bytes_total", (("direction", "up"),))], 6)
        self.assertNotIn(("socksgss_sessions_open", (("method", "none"),)), found)

    def test_each_server_has_its_own_registry(self) -> None:
        other = ServerMetrics(_Context())
        SessionRecord(client="c", started=0.0, method="none", observers=[self.metrics]).finish(1.0, CLOSED)
        self.assertNotIn(("socksgss_sessions_total", (("method", "none"), ("outcome", "closed"))),
                         samples(generate_latest(other.registry).decode()))
        self.assertIsNone(REGISTRY.get_sample_value("socksgss_sessions_total", {"method": "none", "outcome": "closed"}))

    def test_a_failing_observer_does_not_break_the_session(self) -> None:
        class Broken:
            def sessionReplied(self, record: SessionRecord) -> None:
                raise RuntimeError("replied")

            def sessionFinished(self, record: SessionRecord) -> None:
                raise RuntimeError("finished")

        record = SessionRecord(client="c", started=0.0, observers=[Broken(), self.metrics])
        record.markReplied(0.1)
        self.assertTrue(record.finish(1.0, CLOSED))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(self.scrape()[("socksgss_sessions_total", (("method", "unselected"), ("outcome", "closed")))], 1)


class MetricsConfigTests(SynchronousTestCase):
    def test_off_by_default(self) -> None:
        self.assertIsNone(Config().metrics)
        service = makeService(Config.build(listen=["tcp:1080:interface=127.0.0.1"]), MemoryReactorClock())
        self.assertIsNone(service.metrics)
        self.assertEqual([s.name for s in service], ["tcp:1080:interface=127.0.0.1"])

    def test_a_bad_endpoint_string_is_a_config_error(self) -> None:
        error = self.assertRaises(ConfigError, Config.build, metrics="nonsense:9180")
        self.assertIn("--metrics", str(error))

    def test_not_with_workers(self) -> None:
        error = self.assertRaises(ConfigError, Config.build, listen=["tcp:1080:interface=127.0.0.1"], workers=2,
                                  metrics="tcp:9180:interface=127.0.0.1")
        self.assertIn("--workers", str(error))


def _userpass(user: bytes, password: bytes) -> bytes:
    return b"\x05\x01\x02" + b"\x01" + struct.pack("!B", len(user)) + user + struct.pack("!B", len(password)) + password


class _Body(Protocol):
    def __init__(self) -> None:
        self.body = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.body += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.body)


@inlineCallbacks
def scrape(port: int) -> Any:
    """GET /metrics with twisted.web's Agent: (response, body)."""
    response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())
    collector = _Body()
    response.deliverBody(collector)
    body = yield collector.done
    return response, body


class MetricsEndpointTests(IntegrationTestCase):
    @inlineCallbacks
    def test_scrape_after_traffic(self) -> None:
        passwd = self.mktemp()
        set_password(passwd, "alice", b"secret", n=2**4)
        config = Config.build(listen=["tcp:0:interface=127.0.0.1"], methods=["none", "userpass"], passwd=passwd,
                              metrics="tcp:0:interface=127.0.0.1")
        service = makeService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        ports = yield service.whenListening()
        proxy_port = ports["tcp:0:interface=127.0.0.1"].getHost().port
        metrics_port = ports["metrics"].getHost().port

        echo_port = self.listen(EchoFactory())
        tunnel = yield openTunnel(self, proxy_port, echo_port)
        yield tunnel.roundTrip(b"x" * 1000)
        # While the tunnel is open: one session, and its bytes so far.
        response, body = yield scrape(metrics_port)
        self.assertEqual(response.code, 200)
        self.assertIn(b"text/plain", response.headers.getRawHeaders(b"content-type")[0])
        found = samples(body.decode())
        self.assertEqual(found[("socksgss_sessions_open", (("method", "none"),))], 1)
        self.assertEqual(found[("socksgss_relayed_bytes_total", (("direction", "up"),))], 1000)
        self.assertEqual(found[("socksgss_relayed_bytes_total", (("direction", "down"),))], 1000)
        self.assertEqual(found[("socksgss_handshake_seconds_count", (("method", "none"),))], 1)

        tunnel.transport.loseConnection()
        yield tunnel.lost
        bad_login = StreamCollector(_userpass(b"alice", b"wrong"))
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy_port), bad_login)
        yield bad_login.lost
        yield service.factory.context.whenDrained()

        response, body = yield scrape(metrics_port)
        found = samples(body.decode())
        self.assertNotIn(("socksgss_sessions_open", (("method", "none"),)), found)
        self.assertEqual(found[("socksgss_relayed_bytes_total", (("direction", "up"),))], 1000)
        self.assertEqual(found[("socksgss_relayed_bytes_total", (("direction", "down"),))], 1000)
        self.assertEqual(found[("socksgss_sessions_total", (("method", "none"), ("outcome", "closed")))], 1)
        self.assertEqual(found[("socksgss_sessions_total", (("method", "userpass"), ("outcome", "auth_failed")))], 1)
        self.assertEqual(
            found[("socksgss_auth_failures_total", (("method", "userpass"), ("reason", "bad_credentials")))], 1)


class TwistdMetricsTests(IntegrationTestCase):
    @inlineCallbacks
    def test_twistd_serves_metrics(self) -> None:
        port, metrics_port = free_port(), free_port()
        process = spawnTwistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1",
                              "--metrics", f"tcp:{metrics_port}:interface=127.0.0.1")
        yield process.waitFor(b"metrics on tcp:")
        echo_port = self.listen(EchoFactory())
        tunnel = yield openTunnel(self, port, echo_port)
        yield tunnel.roundTrip(b"hello")
        tunnel.transport.loseConnection()
        yield tunnel.lost
        yield process.waitFor(b"outcome=")
        _response, body = yield scrape(metrics_port)
        found = samples(body.decode())
        self.assertEqual(found[("socksgss_relayed_bytes_total", (("direction", "up"),))], 5)
        self.assertEqual(sum(v for (name, _labels), v in found.items() if name == "socksgss_sessions_total"), 1)
        process.transport.signalProcess(signal.SIGTERM)
        yield process.ended
        self.assertNotIn(b"Traceback", process.output)
