"""
Prometheus metrics of one SOCKS server, served over HTTP in the text format.

Theory of operation.  `ServerMetrics` keeps its metrics in a private
`prometheus_client.CollectorRegistry` (never the process-wide default, so
two servers in one process, or two tests, do not share counts).  It follows
the sessions as a `txsocksgss.server.session.SessionObserver`: the first
reply of a session feeds the handshake-latency histogram, and the end of a
session counts it by method and outcome class, adds its relayed bytes and,
when authentication failed, counts the failure by reason class.  What
changes all the time is read only when Prometheus scrapes: the open
sessions come from ``ServerContext.sessions`` and the bytes of tunnels still
open from their relays, so a long tunnel shows its traffic before it ends.

Outcome and reason *classes* are a handful of fixed label values that come
from the session's `txsocksgss.server.outcomes.Outcome` (its kind's
`OutcomeClass` and `AuthFailureReason`), never from its text: the number
of time series stays bounded, and rewording a log line moves no session to
another label.

`MetricsResource` renders the registry in the reactor thread (the
prometheus_client Twisted helper would read the sessions from a thread
pool), and `metricsService` listens on a Twisted endpoint string with it.

Metric names (all prefixed ``socksgss_``):

- ``sessions_open{method}``, gauge: client connections open now.
- ``sessions_total{method,outcome}``, counter: sessions ended.
- ``relayed_bytes_total{direction}``, counter: bytes carried, ``up`` (from
  clients) and ``down`` (to clients).
- ``auth_failures_total{method,reason}``, counter.
- ``handshake_seconds{method}``, histogram: accept to the first reply.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from txsocksgss._twisted_internals import raise_listen_errors
from txsocksgss.server.outcomes import AuthFailureReason, OutcomeClass
from txsocksgss.server.session import SessionRecord

__all__ = [
    "OUTCOME_CLASSES",
    "AUTH_FAILURE_REASONS",
    "ServerMetrics",
    "MetricsResource",
    "metricsService",
]

#: The values of the ``outcome`` label of ``socksgss_sessions_total`` (`OutcomeClass`).
OUTCOME_CLASSES = tuple(c.value for c in OutcomeClass)

#: The values of the ``reason`` label of ``socksgss_auth_failures_total`` (`AuthFailureReason`).
AUTH_FAILURE_REASONS = tuple(r.value for r in AuthFailureReason)

_HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_UNSELECTED = "unselected"  # the method label before a method is chosen
def _method_label(method: str) -> str:
    return _UNSELECTED if method == "-" else method


class ServerMetrics:
    """
    The metrics of the server whose shared state is ``context`` (a
    `txsocksgss.server.protocol.ServerContext`).  Add it to every session's
    `SessionRecord.observers`; scrape ``registry``.

    :ivar registry: the private `CollectorRegistry` holding every metric.
    """

    def __init__(self, context: Any, registry: CollectorRegistry | None = None) -> None:
        self.context = context
        self.registry = registry if registry is not None else CollectorRegistry()
        self._bytes_up = 0
        self._bytes_down = 0
        self.sessions = Counter(
            "socksgss_sessions", "SOCKS sessions ended, by method and outcome class.",
            ["method", "outcome"], registry=self.registry,
        )
        self.auth_failures = Counter(
            "socksgss_auth_failures", "Failed authentications, by method and reason class.",
            ["method", "reason"], registry=self.registry,
        )
        self.handshake = Histogram(
            "socksgss_handshake_seconds", "Seconds from accepting a connection to its first SOCKS reply.",
            ["method"], buckets=_HANDSHAKE_BUCKETS, registry=self.registry,
        )
        self.registry.register(_LiveCollector(self))

    # -- SessionObserver -------------------------------------------------------

    def sessionReplied(self, record: SessionRecord) -> None:
        """Observe the handshake latency (accept to first reply)."""
        if record.replied is not None:
            self.handshake.labels(_method_label(record.method)).observe(max(0.0, record.replied - record.started))

    def sessionFinished(self, record: SessionRecord) -> None:
        """Count the ended session, its bytes and its authentication failure, if any."""
        method = _method_label(record.method)
        result = record.result
        self.sessions.labels(method, result.outcome_class.value if result is not None else "error").inc()
        self._bytes_up += record.bytes_from_client
        self._bytes_down += record.bytes_to_client
        reason = result.auth_failure_reason if result is not None else None
        if reason is not None:
            self.auth_failures.labels(method, reason.value).inc()

    # -- read at scrape time ---------------------------------------------------

    def openSessions(self) -> dict[str, int]:
        """Method label -> client connections open now."""
        counts: dict[str, int] = {}
        for session in tuple(self.context.sessions):
            record = getattr(session, "record", None)
            method = _method_label(record.method) if record is not None else _UNSELECTED
            counts[method] = counts.get(method, 0) + 1
        return counts

    def relayedBytes(self) -> tuple[int, int]:
        """(up, down): bytes of ended sessions plus what open tunnels have carried so far."""
        up, down = self._bytes_up, self._bytes_down
        for session in tuple(self.context.sessions):
            record = getattr(session, "record", None)
            relay = getattr(session, "relay", None)
            # A finished record's bytes are already in the totals.
            if relay is None or record is None or record.finished:
                continue
            up += relay.bytes_from_client
            down += relay.bytes_from_upstream
        return up, down


class _LiveCollector:
    """The metrics computed at scrape time: open sessions and relayed bytes."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return [
            GaugeMetricFamily("socksgss_sessions_open", "Client connections open now, by method.",
                              labels=["method"]),
            CounterMetricFamily("socksgss_relayed_bytes", "Bytes relayed, up (from clients) and down (to clients).",
                                labels=["direction"]),
        ]

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("socksgss_sessions_open", "Client connections open now, by method.",
                                  labels=["method"])
        for method, count in sorted(self._metrics.openSessions().items()):
            gauge.add_metric([method], count)
        yield gauge
        up, down = self._metrics.relayedBytes()
        counter = CounterMetricFamily("socksgss_relayed_bytes",
                                      "Bytes relayed, up (from clients) and down (to clients).",
                                      labels=["direction"])
        counter.add_metric(["up"], up)
        counter.add_metric(["down"], down)
        yield counter


class MetricsResource(Resource):
    """Any GET renders ``registry`` in the Prometheus text format (or OpenMetrics, if asked for)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader("accept")
        encoder, content_type = choose_encoder(accept or "")
        request.setHeader(b"content-type", content_type.encode("ascii"))
        body: bytes = encoder(self.registry)
        return body


class _QuietSite(Site):
    """A Site that writes no access-log line per request (a scrape every few seconds is noise)."""

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


def metricsService(reactor: Any, description: str, registry: CollectorRegistry) -> StreamServerEndpointService:
    """
    A service listening on the server endpoint string ``description``
    (e.g. ``tcp:9180:interface=127.0.0.1``) with a `MetricsResource` for
    ``registry``; a listen error raises from ``startService``.
    """
    service = StreamServerEndpointService(serverFromString(reactor, description),
                                          _QuietSite(MetricsResource(registry)))
    raise_listen_errors(service)
    return service
