"""
Memory per idle tunnel: how much the resident memory of all the proxy's
processes grows while ``count`` tunnels are open and idle, divided by
``count``.

It runs first on a freshly started proxy, after a few tunnels opened and
closed (so that code loaded on first use is not counted).  The tunnels
are opened one at a time; each is established (the proxy has connected
to the destination before it replies) and then idle.  After a pause the
tree's memory is read again, and the tunnels are taken down with a
1-byte echo each, which also checks that every one still works.

RSS counts a shared page once per process that maps it, so a proxy that
forks (Dante) pays for each new child's copy of its libraries; PSS
divides shared pages among the processes that share them.  Both are
reported; the table shows both.
"""

from __future__ import annotations

import time

from benchmarks.processes import tree_memory
from benchmarks.socks import echo_and_close, open_tunnel

__all__ = ["measure_idle"]

WARM_UP = 5
SETTLE_SECONDS = 1.0


def measure_idle(proxy_port: int, proxy_pid: int, echo_port: int, count: int) -> dict[str, object]:
    """KiB of RSS and PSS per idle tunnel, with ``count`` tunnels open."""
    for _ in range(WARM_UP):
        echo_and_close(open_tunnel(proxy_port, echo_port))
    time.sleep(SETTLE_SECONDS)
    before = tree_memory(proxy_pid)
    tunnels = []
    try:
        for _ in range(count):
            tunnels.append(open_tunnel(proxy_port, echo_port))
        time.sleep(SETTLE_SECONDS)
        after = tree_memory(proxy_pid)
        for sock in tunnels:
            echo_and_close(sock)
    finally:
        for sock in tunnels:
            sock.close()
    return {
        "idle_tunnel_rss_kib": (after.rss_kib - before.rss_kib) / count,
        "idle_tunnel_pss_kib": (after.pss_kib - before.pss_kib) / count,
        "idle_tunnels": count,
        "idle_processes": after.processes,
    }
