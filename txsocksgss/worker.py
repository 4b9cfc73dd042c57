"""
The entry point of a worker process of ``--workers N``
(`txsocksgss.server.workers.WorkerPool` starts ``python -m txsocksgss.worker``
with the master's twistd options): the same options turned into the same
service, one reactor, logging to standard output (a pipe to the master) in
the master's format with the worker named, until the master goes away.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from twisted.application.service import IService
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO
from twisted.logger import globalLogBeginner

from txsocksgss.server.workers import WORKER_NUMBER
from txsocksgss.tap import Options, makeService
from txsocksgss.textlog import TextLogObserver

__all__ = ["worker_main"]


class _MasterWatch(Protocol):
    """On a worker's standard input: the master closing the pipe stops the worker."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Any = None) -> None:
        if self.reactor.running:
            self.reactor.stop()


def worker_main(argv: Sequence[str]) -> int:
    """A worker process: the master's twistd options, one reactor, until the master goes."""
    from twisted.internet import reactor  # the process's reactor: installed by now

    options = Options()
    options.worker = True
    options.parseOptions(list(argv))
    service = makeService(options)
    # The master's own format, with the worker named after the system.
    observer = TextLogObserver(sys.stdout, label=f"worker {os.environ.get(WORKER_NUMBER, '?')}: ")
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    StandardIO(_MasterWatch(reactor), stdout=os.open(os.devnull, os.O_WRONLY))  # type: ignore[call-arg]
    IService(service).startService()
    reactor.addSystemEventTrigger("before", "shutdown", IService(service).stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
