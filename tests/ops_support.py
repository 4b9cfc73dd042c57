"""
Helpers for the operations tests (shutdown, reload, metrics, logs): a
twistd process whose output the test waits on, a TCP echo server, and a
tunnel through the proxy that echoes.

Readiness is always a line in the process's output, never a sleep.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.trial.unittest import TestCase

from txsocksgss.client.endpoints import SOCKS5ClientEndpoint

__all__ = ["TWISTD", "WatchedTwistd", "EchoFactory", "Tunnel", "openTunnel", "spawnTwistd"]

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class WatchedTwistd(ProcessProtocol):
    """
    Collects a process's output; `waitFor` fires once a text has appeared
    (so many times), `ended` with (exit code, signal).  A waiter still
    pending when the process ends fails with the whole output.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()
        self._waiters: list[tuple[bytes, int, Deferred[None]]] = []

    @property
    def output(self) -> bytes:
        return self.out + self.err

    def waitFor(self, text: bytes, count: int = 1) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.output.count(text) >= count:
            d.callback(None)
        elif self.ended.called:
            d.errback(AssertionError(f"process ended without {text!r}:\n{self.output.decode()}"))
        else:
            self._waiters.append((text, count, d))
        return d

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
            d.errback(AssertionError(f"process ended without {text!r}:\n{self.output.decode()}"))
        self.ended.callback((reason.value.exitCode, getattr(reason.value, "signal", None)))


def spawnTwistd(test: TestCase, *args: str, twistd_args: tuple[str, ...] = ("--logfile=-",),
                env: dict[str, str] | None = None) -> WatchedTwistd:
    """``twistd -n --pidfile= TWISTD_ARGS socksgss ARGS``, killed at the end of ``test`` if still running."""
    process = WatchedTwistd()
    transport = reactor.spawnProcess(
        process, TWISTD, [TWISTD, "-n", "--pidfile=", *twistd_args, "socksgss", *args],
        env=env if env is not None else dict(os.environ),
    )
    process.transport = transport

    def kill() -> Any:
        if process.ended.called:
            return None
        transport.signalProcess("KILL")
        return process.ended

    test.addCleanup(kill)
    return process


class _Echo(Protocol):
    def connectionMade(self) -> None:
        self.factory.connections.add(self)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections.discard(self)


class EchoFactory(Factory):
    """A TCP server that sends every byte back."""

    protocol = _Echo
    noisy = False

    def __init__(self) -> None:
        self.connections: set[Any] = set()


class Tunnel(Protocol):
    """The client end of a tunnel to an echo server: `roundTrip` sends bytes and waits for them back."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        self._waiter: tuple[int, Deferred[bytes]] | None = None

    def roundTrip(self, data: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self._waiter = (len(self.received) + len(data), d)
        self.transport.write(data)
        return d

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._waiter is not None and len(self.received) >= self._waiter[0]:
            (_n, d), self._waiter = self._waiter, None
            d.callback(self.received)

    def connectionLost(self, reason: Any = None) -> None:
        if self._waiter is not None:
            (_n, d), self._waiter = self._waiter, None
            d.errback(reason)
        self.lost.callback(None)


@inlineCallbacks
def openTunnel(test: TestCase, proxy_port: int, destination_port: int) -> Any:
    """A `Tunnel` through the SOCKS proxy on 127.0.0.1:``proxy_port`` to 127.0.0.1:``destination_port``."""
    endpoint = SOCKS5ClientEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy_port), "127.0.0.1",
                                    destination_port)
    tunnel = yield endpoint.connect(Factory.forProtocol(Tunnel))

    def close() -> Any:
        if tunnel.lost.called:
            return None
        tunnel.transport.loseConnection()
        return tunnel.lost

    test.addCleanup(close)
    return tunnel
