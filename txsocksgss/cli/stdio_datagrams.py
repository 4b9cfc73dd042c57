"""
The UDP mode of ``socksgss connect``: `DatagramLines` turns each line of
standard input into one datagram through a UDP association, and each
datagram received into a line of standard output.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, MessageLengthError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.cli.console import StderrConsole
from txsocksgss.cli.status import EXIT_FAILURE, EXIT_OK

__all__ = ["MAX_LINE", "DatagramLines"]

#: The longest line that can be a datagram (no UDP payload is longer); a
#: longer line is dropped whole, not split.
MAX_LINE = 0xFFFF


class DatagramLines(DatagramProtocol):
    """
    The UDP mode: a line of stdin (without ``\\n`` or ``\\r\\n``) is one
    datagram to ``target``; a datagram received is written to stdout with a
    newline.  EOF on stdin sends the last unterminated line, if any, and
    closes the association; ``finished`` fires with the exit status when it
    has ended and stdout is flushed.
    """

    noisy = False

    def __init__(self, target: tuple[str, int], console: StderrConsole) -> None:
        self.target = target
        self.console = console
        self.association: Any = None
        self.stdio: Any = None
        self.finished: Deferred[int] = Deferred()
        self._pending = b""
        self._discarding = False
        self._closing = False
        self._failed = False
        self._stdout_open = False

    def attach(self, association: Any, open_stdio: Callable[[Protocol], Any]) -> None:
        self.association = association
        association.closed.addCallback(lambda _: self._associationEnded())
        try:
            self.stdio = open_stdio(_LineSide(self))
        except OSError as error:
            self.console.error(f"cannot use standard input and output: {error.strerror or error}")
            self._failed = True
            self._closing = True
            association.close()
            return
        self._stdout_open = True

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self._stdout_open:
            self.stdio.write(data + b"\n")

    def lineData(self, data: bytes) -> None:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            if self._discarding:
                self._discarding = False  # the end of a line too long to send
                continue
            self._send(line[:-1] if line.endswith(b"\r") else line)
        if len(self._pending) > MAX_LINE:
            self._pending = b""
            if not self._discarding:
                self._discarding = True
                self.console.error(f"a line longer than {MAX_LINE} bytes cannot be a datagram; dropped")

    def lineEOF(self) -> None:
        if self._pending and not self._discarding:
            line, self._pending = self._pending, b""
            self._send(line)
        self._closing = True
        self.association.close()

    def stdoutLost(self) -> None:
        self._stdout_open = False
        self._closing = True
        self.association.close()

    def stdioLost(self, reason: Failure) -> None:
        self._stdout_open = False
        if self.association.closed.called:
            self._done()
        else:
            self._closing = True
            self.association.close()

    def _send(self, line: bytes) -> None:
        if self._closing:
            return
        try:
            self.association.write(line, self.target)
        except (OSError, MessageLengthError) as error:  # too long for UDP, unreachable relay, ...
            reason = str(error).rstrip(".")
            self.console.error(f"datagram of {len(line)} bytes not sent: {reason}")

    def _associationEnded(self) -> None:
        if not self._closing:
            self.console.error("the proxy ended the UDP association")
        if self._stdout_open:
            self.stdio.loseConnection()  # flushes stdout; stdioLost finishes
        else:
            self._done()

    def _done(self) -> None:
        if not self.finished.called:
            self.finished.callback(EXIT_OK if self._closing and not self._failed else EXIT_FAILURE)


@implementer(IHalfCloseableProtocol)
class _LineSide(Protocol):
    def __init__(self, lines: DatagramLines) -> None:
        self.lines = lines

    def dataReceived(self, data: bytes) -> None:
        self.lines.lineData(data)

    def readConnectionLost(self) -> None:
        self.lines.lineEOF()

    def writeConnectionLost(self) -> None:
        self.lines.stdoutLost()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lines.stdioLost(reason if reason is not None else Failure(ConnectionDone()))
