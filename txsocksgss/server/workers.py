"""
Several processes serving the same listening ports, one reactor each.

Theory of operation.  CPython runs one thread of Python at a time, so one
process uses one core.  With ``--workers N`` the twistd process (the
master) starts N-1 worker processes running the same options; every process
opens its own listening socket on each TCP address with SO_REUSEPORT, and
the kernel spreads new connections over them.  A worker watches a pipe from
the master on its standard input: when the master goes away (stopped,
killed), the pipe closes and the worker stops too.  The master passes
SIGHUP (reload) on to its workers, stops them with SIGTERM when it stops
(each drains its own sessions), and restarts none (a crashed worker's
share of new connections simply goes to the others: SO_REUSEPORT only
spreads over sockets that exist).

A worker's log goes to its standard output, a pipe to the master, in
twistd's text format (`txsocksgss.textlog.TextLogObserver`) with
``worker N:`` after the system.  When the master logs through
``--logger txsocksgss.logs.fastTextObserver`` (`txsocksgss.logs`), it
writes those lines to that observer's file as they are, whole lines only
and many per write: a log line costs the master almost nothing.  With any
other log set-up (twistd's own text observer, syslog, the JSON logs) each
line is logged again as an event of the master's, and so is whatever a
worker writes on its standard error (a traceback at start-up), named
``worker N:``.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from txsocksgss.logs import processTextObserver
from txsocksgss.server.config import reuse_port_listener
from txsocksgss.server.lean import LeanTCPServerEndpoint

__all__ = ["WORKER_NUMBER", "reuse_port_endpoint", "WorkerPool"]

_log = Logger()
# The environment variable that tells a worker its number (for its log lines).
WORKER_NUMBER = "TXSOCKSGSS_WORKER"


def reuse_port_endpoint(reactor: Any, description: str) -> LeanTCPServerEndpoint:
    """
    The listener of a ``tcp:PORT:interface=...`` or ``tcp6:`` description
    for ``--workers``: its socket has SO_REUSEPORT, so every process can
    listen on the port (`txsocksgss.server.lean.LeanTCPServerEndpoint`,
    which serves through Twisted's own port where the lean path is off).
    """
    _kind, port, interface, backlog = reuse_port_listener(description)
    return LeanTCPServerEndpoint(reactor, port, interface, backlog, reuse_port=True)


class _LogSink:
    """
    The file the master's log observer writes to, for a worker's lines that
    are already formatted: written as they are, several at a time.

    :param out: the file.
    :param encoding: the encoding of a file taking bytes (the lines are
        UTF-8, written as they are), ``None`` for a text file.
    """

    def __init__(self, out: Any, encoding: str | None) -> None:
        self.out = out
        self.encoding = encoding

    def write(self, lines: bytes) -> None:
        self.out.write(lines if self.encoding is not None else lines.decode("utf-8", "replace"))
        self.out.flush()


def _log_sink() -> _LogSink | None:
    """
    The master's log file, if the master logs through
    `txsocksgss.logs.fastTextObserver` (twistd's ``--logger``; then it is
    twistd's only observer): the lines a worker formats itself in the same
    format can be written there unchanged.  None for any other set-up
    (twistd's own observer, syslog, the JSON logs): then each worker line
    is logged again as an event of the master's.
    """
    observer = processTextObserver()
    return None if observer is None else _LogSink(observer.outFile, observer.encoding)


# What a worker puts after the system in its lines (see txsocksgss.worker).
_WORKER_MARKER = re.compile(rb"^\S+ \[[^\]]*\] worker \d+: ")


class _WorkerProcess(ProcessProtocol):
    def __init__(self, number: int, sink: _LogSink | None = None) -> None:
        self.number = number
        self.sink = sink
        self.ended: Deferred[None] = Deferred()
        self._partial = {1: b"", 2: b""}  # per pipe: a line not finished yet

    def childDataReceived(self, fd: int, data: bytes) -> None:
        # A pipe read may end in the middle of a line: keep that part.
        buffered = self._partial.get(fd, b"") + data
        end = buffered.rfind(b"\n") + 1
        self._partial[fd] = buffered[end:]
        if end:
            self._emit(fd, buffered[:end])

    def childConnectionLost(self, fd: int) -> None:
        rest = self._partial.pop(fd, b"")
        if rest:
            self._emit(fd, rest + b"\n")

    def _emit(self, fd: int, lines: bytes) -> None:
        """Whole lines (each ending in a newline) a worker wrote on ``fd``."""
        if self.sink is not None and fd == 1:
            # Formatted by the worker (time, system, "worker N:"): one
            # write for all of them, instead of an event and a format each.
            self.sink.write(lines)
            return
        for line in lines[:-1].split(b"\n"):
            text = line.decode("utf-8", "replace")
            if _WORKER_MARKER.match(line):
                _log.info("{line}", line=text)  # it names its worker already
            else:  # standard error: a traceback, a warning
                _log.info("worker {number}: {line}", number=self.number, line=text)

    def processEnded(self, reason: Any) -> None:
        _log.info("worker {number} ended: {why}", number=self.number, why=reason.getErrorMessage())
        self.ended.callback(None)


class WorkerPool(Service):
    """
    Starts ``count - 1`` worker processes running ``argv`` (the master is the
    first worker) and stops them with SIGTERM when the service stops.
    """

    def __init__(self, reactor: Any, count: int, argv: Sequence[str]) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.processes: list[tuple[Any, _WorkerProcess]] = []

    def startService(self) -> None:
        super().startService()
        command = [sys.executable, "-m", "txsocksgss.worker", *self.argv]
        sink = _log_sink()
        for number in range(1, self.count):
            protocol = _WorkerProcess(number, sink)
            env = dict(os.environ, **{WORKER_NUMBER: str(number)})
            transport = self.reactor.spawnProcess(protocol, sys.executable, command, env=env,
                                                  childFDs={0: "w", 1: "r", 2: "r"})
            self.processes.append((transport, protocol))
        _log.info("started {n} worker processes", n=self.count - 1)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        waits = []
        for transport, protocol in self.processes:
            if not protocol.ended.called:
                try:
                    transport.signalProcess(signal.SIGTERM)
                except Exception:  # already gone
                    pass
                waits.append(protocol.ended)
        self.processes = []
        return DeferredList(waits)

    def signalWorkers(self, signum: int) -> None:
        """Send ``signum`` to every running worker (SIGHUP: reload the rules and password file)."""
        for transport, protocol in self.processes:
            if not protocol.ended.called:
                try:
                    transport.signalProcess(signum)
                except ProcessExitedAlready:
                    pass
