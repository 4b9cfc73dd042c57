"""
External programs in tests: finding them (a missing one fails the test),
running one to completion, and watching a long-running one -- `twistd
socksgss` above all -- whose output the test waits on.

Readiness is always a text in the process's output, never a sleep.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any, Sequence

from twisted.internet import reactor, utils
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

__all__ = [
    "LISTENING",
    "TWISTD",
    "WatchedProcess",
    "require_program",
    "run_program",
    "spawnTwistd",
    "spawnWatched",
]

#: The twistd of the Python running the tests.
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

#: What the service logs once a listener is up (once per listener, per process).
LISTENING = b"txsocksgss listening on"


def require_program(name: str) -> str:
    """
    The path of an external program the tests drive.  In CI a missing
    program is a failure, never a skip: the test that needs it fails here.
    """
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/bin")
    if path is None:
        raise AssertionError(f"{name} is not installed; `make test` installs it (scripts/bootstrap.sh)")
    return path


def run_program(executable: str, args: list[str], env: dict[str, str] | None = None) -> Deferred[tuple[bytes, bytes, int]]:
    """Run a program to completion; fires with (stdout, stderr, exit code)."""
    return utils.getProcessOutputAndValue(executable, args, env=env or dict(os.environ), reactor=reactor)


class WatchedProcess(ProcessProtocol):
    """
    Collects a process's stdout (``out``) and stderr (``err``); `waitFor`
    fires once a text has appeared in them (so many times), `ended` with
    (exit code, signal).  A waiter still pending when the process ends
    fails with the whole output.
    """

    def __init__(self, name: str = "the process") -> None:
        self.name = name
        self.out = b""
        self.err = b""
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()
        self._waiters: list[tuple[bytes, int, Deferred[None]]] = []

    @property
    def output(self) -> bytes:
        return self.out + self.err

    def _missing(self, text: bytes) -> AssertionError:
        return AssertionError(f"{self.name} ended without {text!r}:\n{self.output.decode(errors='replace')}")

    def waitFor(self, text: bytes, count: int = 1) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.output.count(text) >= count:
            d.callback(None)
        elif self.ended.called:
            d.errback(self._missing(text))
        else:
            self._waiters.append((text, count, d))
        return d

    def sessionLines(self, needle: str = "") -> list[str]:
        """The session log lines of the output that contain ``needle``."""
        return [line for line in self.output.decode(errors="replace").splitlines()
                if "session client=" in line and needle in line]

    def _check(self) -> None:
        output = self.output
        pending = []
        for text, count, d in self._waiters:
            if output.count(text) >= count:
                d.callback(None)
            else:
                pending.append((text, count, d))
        self._waiters = pending

    def outReceived(self, data: bytes) -> None:
        self.out += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.err += data
        self._check()

    def processEnded(self, reason: Any) -> None:
        waiters, self._waiters = self._waiters, []
        for text, _count, d in waiters:
            d.errback(self._missing(text))
        self.ended.callback((reason.value.exitCode, getattr(reason.value, "signal", None)))


def spawnWatched(test: TestCase, name: str, executable: str, args: Sequence[str],
                 env: dict[str, str] | None = None, path: str | None = None,
                 stop_grace: float | None = None) -> WatchedProcess:
    """
    ``executable ARGS`` as a `WatchedProcess`, ended at the end of ``test``
    if still running: killed at once, or with ``stop_grace``, sent SIGTERM
    and killed only if still running that many seconds later.
    """
    process = WatchedProcess(name)
    transport = reactor.spawnProcess(process, executable, [executable, *args],
                                     env=env if env is not None else dict(os.environ), path=path)
    process.transport = transport

    def stop() -> Any:
        if process.ended.called:
            return None
        if stop_grace is None:
            transport.signalProcess("KILL")
            return process.ended
        transport.signalProcess("TERM")
        kill = reactor.callLater(stop_grace, lambda: process.ended.called or transport.signalProcess("KILL"))
        return process.ended.addBoth(lambda _: kill.cancel() if kill.active() else None)

    test.addCleanup(stop)
    return process


def spawnTwistd(test: TestCase, *args: str, twistd_args: tuple[str, ...] = ("--logfile=-",),
                env: dict[str, str] | None = None) -> WatchedProcess:
    """``twistd -n --pidfile= TWISTD_ARGS socksgss ARGS``, killed at the end of ``test`` if still running."""
    return spawnWatched(test, "twistd", TWISTD, ["-n", "--pidfile=", *twistd_args, "socksgss", *args], env=env)
