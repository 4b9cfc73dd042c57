"""
Connection rate: complete SOCKS 5 handshakes (method none, CONNECT to the
echo port), a 1-byte echo and the close (the destination closes first,
the proxy passes it on, the client closes when it sees the end of
stream), with a fixed number in flight, for a fixed time; "direct" does
the TCP connect, the echo and the close only.  With ``credentials`` the
client offers method 02 instead and sends the username/password request
(RFC 1929) before the CONNECT, each step waiting for its answer as before.

The load generator is ``processes`` forked processes, each running a tight
epoll loop over non-blocking sockets that keeps its share of
``concurrency`` connections in flight: when one finishes (or fails) the
next starts.  Every step waits for its answer and checks it.  The
processes start together (`benchmarks.workers`) and each counts what completed
within ``seconds``; each also reports the CPU time it used, so the report
can say how busy the generator was.
"""

from __future__ import annotations

import errno
import resource
import select
import socket
import time
from typing import Any, Callable

from benchmarks.processes import tree_cpu_seconds
from benchmarks.socks import (GREETING, GREETING_USERPASS, LOOPBACK, METHOD_NONE, METHOD_USERPASS, USERPASS_SUCCESS,
                              connect_request, reply_length, userpass_request)
from benchmarks.workers import run_together, shares

__all__ = ["measure_connection_rate"]

ECHO = b"x"
_REPLY = -1  # expected length of a step: a SOCKS reply, whose length its head tells


def measure_connection_rate(proxy_port: int | None, echo_port: int, concurrency: int, processes: int,
                            seconds: float, proxy_pid: int | None = None,
                            credentials: tuple[bytes, bytes] | None = None) -> dict[str, object]:
    """
    Completed connections per second, errors, generator and proxy CPU use
    (in cores); with ``credentials`` (user, password) each session
    authenticates with method 02 (RFC 1929).
    """
    cpu = {"before": 0.0}

    def started() -> None:
        if proxy_pid:
            cpu["before"] = tree_cpu_seconds(proxy_pid)

    reports = run_together("fork", _run, [(proxy_port, echo_port, share, seconds, credentials)
                                          for share in shares(concurrency, processes)], seconds, started)
    completed = sum(report["completed"] for report in reports)
    result: dict[str, object] = {
        "connection_rate_per_s": completed / seconds,
        "connections": completed,
        "connection_errors": sum(report["errors"] for report in reports),
        "connection_error_examples": sorted({e for report in reports for e in report["error_examples"]})[:5],
        "generator_cpu_cores": sum(report["cpu"] for report in reports) / seconds,
    }
    if proxy_pid:
        result["connection_rate_proxy_cpu_cores"] = (tree_cpu_seconds(proxy_pid) - cpu["before"]) / seconds
    return result


class _Connection:
    __slots__ = ("sock", "step", "received")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.step = -1  # connecting
        self.received = b""


def _run(proxy_port: int | None, echo_port: int, concurrency: int, seconds: float,
         credentials: tuple[bytes, bytes] | None, ready: Callable[[], None]) -> dict[str, Any]:
    # The steps of one connection: what to send, then what must come back.
    if proxy_port is None:
        address = (LOOPBACK, echo_port)
        steps: list[tuple[bytes, int, bytes | None]] = [(ECHO, 1, ECHO)]
    elif credentials is None:
        address = (LOOPBACK, proxy_port)
        steps = [(GREETING, 2, METHOD_NONE), (connect_request(LOOPBACK, echo_port), _REPLY, None), (ECHO, 1, ECHO)]
    else:
        address = (LOOPBACK, proxy_port)
        steps = [(GREETING_USERPASS, 2, METHOD_USERPASS), (userpass_request(*credentials), 2, USERPASS_SUCCESS),
                 (connect_request(LOOPBACK, echo_port), _REPLY, None), (ECHO, 1, ECHO)]
    draining = len(steps)  # the step after the last: waiting for the end of stream
    poller = select.epoll()
    connections: dict[int, _Connection] = {}
    errors = 0
    error_examples: set[str] = set()
    completed = 0

    def open_one() -> None:
        nonlocal errors
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            errors += 1
            error_examples.add(f"connect: {errno.errorcode.get(code, code)}")
            sock.close()
            return
        connection = _Connection(sock)
        connections[sock.fileno()] = connection
        poller.register(sock.fileno(), select.EPOLLOUT)

    def close(fd: int, connection: _Connection) -> None:
        poller.unregister(fd)
        del connections[fd]
        connection.sock.close()

    def fail(fd: int, connection: _Connection, why: str) -> None:
        nonlocal errors
        errors += 1
        error_examples.add(why)
        close(fd, connection)
        open_one()

    def send_step(fd: int, connection: _Connection) -> None:
        try:
            connection.sock.send(steps[connection.step][0])  # a few bytes: the send buffer takes them
        except OSError as error:
            fail(fd, connection, f"step {connection.step}: {error.strerror}")

    ready()
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    deadline = time.monotonic() + seconds
    for _ in range(concurrency):
        open_one()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for fd, _events in poller.poll(remaining):
            connection = connections.get(fd)
            if connection is None:
                continue
            sock = connection.sock
            if connection.step < 0:  # the connect finished (or failed)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    fail(fd, connection, f"connect: {errno.errorcode.get(code, code)}")
                    continue
                connection.step = 0
                poller.modify(fd, select.EPOLLIN)
                send_step(fd, connection)
                continue
            try:
                data = sock.recv(256)
            except BlockingIOError:
                continue
            except OSError as error:
                fail(fd, connection, f"step {connection.step}: {error.strerror}")
                continue
            if connection.step == draining:  # the echo is back: the destination closes first
                if data:
                    fail(fd, connection, "more than the echo came back")
                    continue
                close(fd, connection)
                completed += 1
                open_one()
                continue
            if not data:
                fail(fd, connection, f"step {connection.step}: closed by the peer")
                continue
            received = connection.received + data
            _, length, expected = steps[connection.step]
            if length == _REPLY:
                if len(received) < 5:
                    connection.received = received
                    continue
                length = reply_length(received)
                if received[1] != 0:
                    fail(fd, connection, f"CONNECT refused: {received[:2].hex()}")
                    continue
            if len(received) < length:
                connection.received = received
                continue
            if expected is not None and received != expected:
                fail(fd, connection, f"step {connection.step}: unexpected {received[:8].hex()}")
                continue
            connection.step += 1
            connection.received = b""
            if connection.step < draining:
                send_step(fd, connection)
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    for fd, connection in list(connections.items()):
        close(fd, connection)
    cpu = (cpu_end.ru_utime - cpu_start.ru_utime) + (cpu_end.ru_stime - cpu_start.ru_stime)
    return {"completed": completed, "errors": errors, "error_examples": sorted(error_examples), "cpu": cpu}
