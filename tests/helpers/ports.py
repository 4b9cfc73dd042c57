"""
Ports on the loopback interface for tests: one that was free a moment ago,
ten consecutive ones for the test KDC, and one whose connections are never
answered.
"""

from __future__ import annotations

import random
import socket

__all__ = ["blackhole", "free_port", "free_portbase"]


def free_port(host: str = "127.0.0.1") -> int:
    """
    A TCP port of ``host`` (IPv4 or IPv6) on which nothing listens: it was
    bound and freed just now.  The caller binds it soon (or connects to it
    to be refused); another process could take it meanwhile.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def free_portbase(count: int = 10) -> int:
    """
    The first of ``count`` consecutive ports free for both TCP and UDP on
    127.0.0.1 (k5test's KDC uses portbase .. portbase+9), chosen below the
    kernel's ephemeral range so that busy tests (thousands of outgoing
    connections) cannot take them between this check and the KDC.
    """
    low, high = 20000, 32000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
        high = min(high, ephemeral_low - count)
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high)
        sockets = []
        try:
            for offset in range(count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(socket.AF_INET, kind)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sockets.append(s)
                    s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports for the test KDC")


def blackhole() -> tuple[socket.socket, socket.socket]:
    """
    A listening socket on 127.0.0.1 whose accept queue is full, and the
    connection filling it: the kernel drops further SYNs, so a connection
    attempt there is never answered.  The caller closes both.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=5)  # completes: the queue's one place
    return listener, filler
