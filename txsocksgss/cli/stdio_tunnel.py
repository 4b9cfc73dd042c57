"""
The stream mode of ``socksgss connect`` (CONNECT and BIND): `StdioBridge`
joins a `twisted.internet.stdio.StandardIO` to the tunnel, with flow
control both ways (each side is the other's streaming producer) and
half-close: EOF on standard input half-closes the tunnel, and the end of
the remote side ends the run, as ``nc`` does.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.cli.console import StderrConsole
from txsocksgss.cli.status import EXIT_FAILURE, EXIT_OK

__all__ = ["StdioBridge"]


class StdioBridge:
    """
    Joins standard input/output to the tunnel, once the tunnel is up.

    stdin -> tunnel with the tunnel's transport pausing stdin when its send
    buffer is full; tunnel -> stdout likewise.  EOF on stdin half-closes the
    tunnel; the end of the remote side (its half-close or close) ends the
    run: the tunnel closes, stdout is flushed and ``finished`` fires with
    the exit status.

    :param open_stdio: builds the stdio transport for a protocol (StandardIO
        in the program, a fake in tests).
    """

    def __init__(self, open_stdio: Callable[[Protocol], Any], console: StderrConsole) -> None:
        self._open_stdio = open_stdio
        self._console = console
        self.finished: Deferred[int] = Deferred()
        self.tunnel: Any = None
        self.stdio: Any = None
        self._stdout_open = False
        self._tunnel_closed = False
        self._tunnel_reason: Failure | None = None
        self._failed = False

    def factory(self) -> Factory:
        """The factory for the application protocol on the tunnel (one protocol)."""
        bridge = self

        class _Factory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> Protocol:
                return _TunnelSide(bridge)

        return _Factory()

    # tunnel events

    def tunnelMade(self, transport: Any) -> None:
        self.tunnel = transport
        try:
            self.stdio = self._open_stdio(_StdioSide(self))
        except OSError as error:
            self._console.error(f"cannot use standard input and output: {error.strerror or error}")
            self._failed = True
            transport.loseConnection()
            return
        self._stdout_open = True
        transport.registerProducer(self.stdio, True)
        self.stdio.registerProducer(transport, True)

    def tunnelData(self, data: bytes) -> None:
        if self._stdout_open:
            self.stdio.write(data)

    def tunnelReadLost(self) -> None:
        # The remote side is done sending: the run is over (as nc does).
        self.tunnel.loseConnection()

    def tunnelLost(self, reason: Failure) -> None:
        self._tunnel_closed = True
        self._tunnel_reason = reason
        if self._stdout_open:
            self.stdio.loseConnection()  # flushes stdout, then stdioLost ends the run
        else:
            self._finish()

    # stdio events

    def stdinData(self, data: bytes) -> None:
        if not self._tunnel_closed:
            self.tunnel.write(data)

    def stdinEOF(self) -> None:
        if self._tunnel_closed:
            return
        # A paused streaming producer would keep the write side from closing.
        self.tunnel.unregisterProducer()
        self.tunnel.loseWriteConnection()

    def stdoutLost(self) -> None:
        # Nobody reads what the remote side sends any more.
        self._stdout_open = False
        if self._tunnel_closed:
            self._finish()
        else:
            self.tunnel.loseConnection()

    def stdioLost(self, reason: Failure) -> None:
        self._stdout_open = False
        if self._tunnel_closed:
            self._finish()
        elif self.tunnel is not None:
            self.tunnel.loseConnection()

    def _finish(self) -> None:
        if self.finished.called:
            return
        reason = self._tunnel_reason
        if self._failed:
            self.finished.callback(EXIT_FAILURE)
        elif reason is None or reason.check(ConnectionDone):
            self.finished.callback(EXIT_OK)
        else:
            self._console.error(f"connection lost: {reason.getErrorMessage()}")
            self.finished.callback(EXIT_FAILURE)


@implementer(IHalfCloseableProtocol)
class _TunnelSide(Protocol):
    def __init__(self, bridge: StdioBridge) -> None:
        self.bridge = bridge

    def connectionMade(self) -> None:
        self.bridge.tunnelMade(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.bridge.tunnelData(data)

    def readConnectionLost(self) -> None:
        self.bridge.tunnelReadLost()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.bridge.tunnelLost(reason if reason is not None else Failure(ConnectionDone()))


@implementer(IHalfCloseableProtocol)
class _StdioSide(Protocol):
    def __init__(self, bridge: StdioBridge) -> None:
        self.bridge = bridge

    def dataReceived(self, data: bytes) -> None:
        self.bridge.stdinData(data)

    def readConnectionLost(self) -> None:
        self.bridge.stdinEOF()

    def writeConnectionLost(self) -> None:
        self.bridge.stdoutLost()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.bridge.stdioLost(reason if reason is not None else Failure(ConnectionDone()))
