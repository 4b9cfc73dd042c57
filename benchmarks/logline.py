"""
CPU per session log line: ``python -m benchmarks.logline [--lines N] [--rounds R]``.

Ends ``N`` session records (`txsocksgss.server.session.SessionRecord.finish`:
the line is built, one twisted.logger event goes through the global log
publisher) with each of these as the only log observer, writing to a
`twisted.python.logfile.LogFile` in a temporary directory, as twistd's
``--logfile`` does:

- ``twisted``: Twisted's default, `twisted.logger.textFileLogObserver`
  (twistd without ``--logger``);
- ``txsocksgss``: `txsocksgss.textlog.TextLogObserver`
  (``--logger txsocksgss.logs.fastTextObserver``);
- ``no observer``: an observer that does nothing, what the record and the
  event cost before any formatting.

Prints the median over ``R`` rounds of the process CPU time per line, in
microseconds.  The two observers write the same bytes (checked).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any, Callable

from twisted.logger import globalLogBeginner, globalLogPublisher, textFileLogObserver
from twisted.python.logfile import LogFile

from txsocksgss.server.session import SessionRecord
from txsocksgss.textlog import TextLogObserver
from txsocksgss.server.outcomes import CLOSED

__all__ = ["measure", "main"]


def _sessions(count: int) -> float:
    """End ``count`` sessions; the process CPU seconds it took."""
    records = [SessionRecord(client=f"127.0.0.1:{40000 + i % 20000}", started=0.0, method="none",
                             command="connect", destination="127.0.0.1:8080",
                             bytes_from_client=12, bytes_to_client=12) for i in range(count)]
    started = time.process_time()
    for record in records:
        record.finish(0.0123, CLOSED)
    return time.process_time() - started


def measure(lines: int, rounds: int) -> dict[str, float]:
    """Median CPU microseconds per line for each observer (see the module docstring)."""
    # No buffering of events for a later observer: only the observer measured.
    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)
    factories: dict[str, Callable[[Any], Any]] = {
        "twisted": textFileLogObserver,
        "txsocksgss": TextLogObserver,
        "no observer": lambda logFile: (lambda event: None),
    }
    per_line: dict[str, list[float]] = {name: [] for name in factories}
    written: dict[str, list[bytes]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, "session.log")
        for _round in range(rounds):
            for name, factory in factories.items():  # taking turns: drift hits all alike
                logFile = LogFile.fromFullPath(path, rotateLength=None)
                observer = factory(logFile)
                globalLogPublisher.addObserver(observer)
                try:
                    per_line[name].append(_sessions(lines) / lines * 1e6)
                finally:
                    globalLogPublisher.removeObserver(observer)
                    logFile.close()
                with open(path, "rb") as f:
                    # Each line without its time stamp (the clock moved on).
                    written[name] = [line.split(b" ", 1)[-1] for line in f.read().splitlines()]
                os.remove(path)
    if len(written["twisted"]) != lines or written["twisted"] != written["txsocksgss"]:
        raise AssertionError("the two observers did not write the same session lines")
    return {name: statistics.median(values) for name, values in per_line.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.logline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20000, help="session lines per round (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, taking turns (default 5)")
    options = parser.parse_args(argv)
    results = measure(options.lines, options.rounds)
    for name, microseconds in results.items():
        print(f"{name:12} {microseconds:6.2f} us of CPU per session line")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
