"""
Handshake latency at low load: one client, one handshake at a time.

Each sample is the time from connect() to the CONNECT reply: the TCP
handshake, the method negotiation and the request, each step waiting for
its answer, and the proxy's own connection to the destination (which it
makes before it replies).  A 1-byte echo then checks the tunnel, outside
the clock, and the destination closes.
"""

from __future__ import annotations

import time

from benchmarks.socks import echo_and_close, open_tunnel
from benchmarks.stats import percentile

__all__ = ["measure_latency"]


def measure_latency(proxy_port: int, echo_port: int, count: int) -> dict[str, object]:
    """p50 and p99 (milliseconds) of ``count`` handshakes through 127.0.0.1:``proxy_port``."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        sock = open_tunnel(proxy_port, echo_port)
        samples.append(time.perf_counter() - start)
        echo_and_close(sock)
    return {
        "handshake_p50_ms": percentile(samples, 50) * 1000,
        "handshake_p99_ms": percentile(samples, 99) * 1000,
        "handshakes": count,
    }
