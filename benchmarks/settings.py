"""What one benchmark run does: sizes, durations, concurrency and the proxy's extra arguments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["Settings", "PROXIES", "SMOKE", "SIZE_OPTIONS"]

# Every proxy the harness knows, in table order.
PROXIES = ("txsocksgss", "dante", "microsocks")


@dataclass(frozen=True)
class Settings:
    """
    One run's settings; the defaults are the full run.  ``proxy_args`` are
    appended to txsocksgss's command line (``twistd -n socksgss --listen ...
    --method none PROXY_ARGS``), so a new option (``--workers 2``) is
    measured without changing the harness.
    """

    proxy_args: tuple[str, ...] = ()
    proxies: tuple[str, ...] = PROXIES
    # Bulk: one CONNECT tunnel per run, each direction; the median counts.
    bulk_runs: int = 5
    bulk_mb: int = 300
    # Connection rate: handshake + 1-byte echo + close, this many at a time.
    rate_concurrency: int = 50
    rate_processes: int = 2
    rate_seconds: float = 10.0
    # Rounds of the rate test per proxy, the proxies taking turns; the median counts.
    rate_rounds: int = 1
    # Handshake latency: one at a time.
    latency_count: int = 1000
    # Memory: this many idle tunnels open at once.
    idle_tunnels: int = 2000
    # GSS-API (Kerberos from a throwaway realm).
    gss: bool = True
    gss_runs: int = 5
    gss_mb: int = 100
    gss_rate_concurrency: int = 16
    gss_rate_processes: int = 2
    gss_rate_seconds: float = 10.0
    smoke: bool = False

    def replace(self, **changes: object) -> "Settings":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


# --smoke: every measurement once, tiny (a few seconds each).
SMOKE = dict(
    bulk_runs=2,
    bulk_mb=16,
    rate_concurrency=10,
    rate_seconds=0.5,
    rate_rounds=2,
    latency_count=50,
    idle_tunnels=50,
    gss_runs=1,
    gss_mb=2,
    gss_rate_concurrency=4,
    gss_rate_seconds=0.5,
    smoke=True,
)

# The settings a command line may change, each with what it means (``--bulk-runs N``...).
SIZE_OPTIONS = (
    ("bulk_runs", "bulk runs each way"),
    ("bulk_mb", "megabytes per bulk run"),
    ("rate_concurrency", "connections in flight in the rate test"),
    ("rate_processes", "load-generator processes"),
    ("rate_seconds", "duration of the rate test"),
    ("rate_rounds", "rate-test rounds per proxy, the proxies taking turns (the median is reported)"),
    ("latency_count", "handshakes for the latency percentiles"),
    ("idle_tunnels", "idle tunnels for the memory measurement"),
    ("gss_runs", "GSS-API bulk runs per level and direction"),
    ("gss_mb", "megabytes per GSS-API bulk run"),
    ("gss_rate_concurrency", "GSS-API handshakes in flight"),
    ("gss_rate_processes", "GSS-API client processes"),
    ("gss_rate_seconds", "duration of the GSS-API handshake test"),
)
