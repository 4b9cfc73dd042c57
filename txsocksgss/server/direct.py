"""
The lean outgoing connection of a CONNECT that will be spliced: a
non-blocking connect the session makes itself, handing the bare connected
socket to `txsocksgss.server.splice.SpliceRelay`.

Theory of operation.  A spliced tunnel never lets Twisted read or write its
upstream socket, yet reactor.connectTCP builds a connector and a client
transport for it, waits a turn of the reactor before connecting, and
registers the descriptor with the reactor four times (read and write while
connecting, read again once connected, then away for the splice): about a
fifth of the CPU of a short session.  `DirectConnector` does only what a
connect needs: socket(), connect() (which answers EINPROGRESS), and at once
a second connect(), which on loopback and other fast paths already finds
the handshake done.  Only when it is not does the connector register for
writing, and then every event is checked again with SO_ERROR and connect(),
as Twisted's own client does, so an event meant for an earlier socket with
the same descriptor number (one closed and reused within a batch of events)
is never taken for the outcome of this connect.

Failures carry the same exceptions as connectTCP's
(twisted.internet.error.getConnectError), so they map to the same replies.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable

from twisted.internet import error as ierror
from twisted.internet.interfaces import IDelayedCall, IReadWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.interfaces import IConnector
from txsocksgss.wire.socks5 import Address

__all__ = ["DirectConnector"]

# EAGAIN from a TCP connect means no local port is free (Linux), not "in progress".
_IN_PROGRESS = frozenset((errno.EINPROGRESS, errno.EALREADY))


def _connect_error(number: int) -> Failure:
    return Failure(ierror.getConnectError((number, os.strerror(number))))


@implementer(IReadWriteDescriptor, IConnector)
class DirectConnector:
    """
    Connects to ``addresses`` (IP address strings) in order on ``port``,
    each with a non-blocking connect watched by ``reactor`` (an
    IReactorFDSet) when it does not finish at once, for at most ``timeout``
    seconds each if given.  Calls ``onConnected(socket, bound)`` (``bound``:
    the socket's local `Address`) on the first success: the caller owns the
    socket from then on, unless it returns False (then the socket is
    closed); else
    ``onFailed(failure)`` with the last failure (a ConnectError, as
    connectTCP's).  `cancel` stops the attempt under way; nothing is
    reported after it.
    """

    def __init__(self, reactor: Any, addresses: list[str], port: int, timeout: float | None,
                 onConnected: Callable[[socket.socket, Address], bool], onFailed: Callable[[Failure], None]) -> None:
        self._reactor = reactor
        self._remaining = addresses
        self._port = port
        self._timeout = timeout
        self._onConnected = onConnected
        self._onFailed = onFailed
        self.address = ""
        self._target: Any = None
        self._socket: socket.socket | None = None
        self._fd = -1
        self._timer: IDelayedCall | None = None
        self._watching = False
        self._finished = False

    # -- IReadWriteDescriptor (while a connect is in progress) ----------------

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "DirectConnector"

    def doRead(self) -> None:  # pragma: no cover - registered for writing only
        self._check()

    def doWrite(self) -> None:
        self._check()

    def connectionLost(self, reason: Failure) -> None:
        # epoll reports a failed connect as an error or hang-up, and the
        # reactor then unregisters us and calls this instead of doWrite.
        self._watching = False
        self._check()

    # -- the attempts --------------------------------------------------------

    def describe(self) -> str:
        """What the session waits for, for the negotiation timeout's log line."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"connecting to {host}:{self._port}"

    def start(self) -> None:
        """Try the first address (the outcome may be reported before this returns)."""
        self._tryNext()

    def _tryNext(self) -> None:
        self.address = self._remaining.pop(0)
        try:
            if ":" in self.address:
                family = socket.AF_INET6
                # Through getaddrinfo, like Twisted, for a scope (fe80::1%eth0).
                self._target = socket.getaddrinfo(self.address, self._port, family, socket.SOCK_STREAM,
                                                  0, socket.AI_NUMERICHOST)[0][4]
            else:
                family = socket.AF_INET
                self._target = (self.address, self._port)
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except socket.gaierror as error:  # a bad scope in fe80::1%nosuchif; its errno is getaddrinfo's
            self._failed(Failure(ierror.UnknownHostError(f"{self.address}: {error.strerror}")))
            return
        except OSError as error:
            self._failed(_connect_error(error.errno or errno.EINVAL))
            return
        self._socket = sock
        self._fd = sock.fileno()
        result = sock.connect_ex(self._target)
        if result in _IN_PROGRESS:
            # On loopback the handshake is usually over by now.
            result = sock.connect_ex(self._target)
        if result in (0, errno.EISCONN):
            self._succeeded()
        elif result in _IN_PROGRESS:
            self._watching = True
            self._reactor.addWriter(self)
            if self._timeout is not None:
                self._timer = self._reactor.callLater(self._timeout, self._timedOut)
        else:
            self._failed(_connect_error(result))

    def _check(self) -> None:
        """An event for our descriptor: find out from the socket itself whether the connect is over."""
        sock = self._socket
        if self._finished or sock is None:
            return
        result = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not result:
            result = sock.connect_ex(self._target)
        if result in _IN_PROGRESS:
            # Not ours (an event for a closed socket that had this number):
            # keep waiting.
            if not self._watching:
                self._watching = True
                self._reactor.addWriter(self)
            return
        self._unwatch()
        if result in (0, errno.EISCONN):
            self._succeeded()
        else:
            self._failed(_connect_error(result))

    def _timedOut(self) -> None:
        self._timer = None
        self._unwatch()
        self._failed(Failure(ierror.TimeoutError(f"connection to {self.address} timed out")))

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._reactor.removeWriter(self)
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _succeeded(self) -> None:
        sock, self._socket = self._socket, None
        assert sock is not None
        self._fd = -1
        self._finished = True
        try:
            host, port = sock.getsockname()[:2]
        except OSError:  # reset already: the tunnel meets the error
            host, port = "0.0.0.0", 0
        if not self._onConnected(sock, Address.of(host, port)):
            self._reactor.callLater(0, sock.close)

    def _failed(self, reason: Failure) -> None:
        self._discard()
        if self._remaining:
            self._tryNext()
            return
        self._finished = True
        self._onFailed(reason)

    def cancel(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._unwatch()
        self._discard()

    def _discard(self) -> None:
        """
        Close the attempt's socket on the reactor's next turn, not now: the
        reactor may still hold events of this batch for its descriptor
        number, and a socket made later in the batch could take that number
        (the next address's, or another session's upstream, which the
        splice relay registers at once) and receive them.
        """
        sock, self._socket = self._socket, None
        self._fd = -1
        if sock is not None:
            self._reactor.callLater(0, sock.close)
