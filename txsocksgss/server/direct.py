"""
The lean outgoing connection of a CONNECT that will be spliced: a
non-blocking connect the session does itself, and the transport-less
upstream end it hands to `txsocksgss.server.splice.SpliceRelay`.

Theory of operation.  A spliced tunnel never lets Twisted read or write its
upstream socket, yet reactor.connectTCP builds a connector and a client
transport for it, waits a turn of the reactor before connecting, resolves
even an IP address through a Deferred and registers the descriptor with the
reactor several times: about a fifth of the CPU of a short session.
`DirectConnector` does only what a connect needs: socket(), connect (which
answers EINPROGRESS), one writer registration, SO_ERROR when writable.  On
success the socket goes into a `DirectUpstream`, which has what the splice
relay uses of a transport (the socket, getHost/getPeer, the three ways of
closing); if the session cannot be spliced after all, `DirectUpstream.adopt`
gives the socket to Twisted and the ordinary relay goes on with it.
Failures carry the same exceptions as connectTCP's
(twisted.internet.error.getConnectError), so they map to the same replies.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any, Callable

from twisted.internet import error as ierror
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IWriteDescriptor
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["DirectConnector", "DirectUpstream"]

_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN)
# SO_LINGER on, zero seconds: close() sends a reset (what abortConnection does).
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def _address(family: int, pair: tuple[Any, ...]) -> IPv4Address | IPv6Address:
    if family == socket.AF_INET6:
        return IPv6Address("TCP", pair[0], pair[1])
    return IPv4Address("TCP", pair[0], pair[1])


def _connect_error(number: int) -> Failure:
    return Failure(ierror.getConnectError((number, os.strerror(number))))


class DirectUpstream:
    """
    A connected upstream socket with no Twisted transport: what
    `SpliceRelay` needs of one (``socket``, getHost/getPeer, stopReading and
    stopWriting, which have nothing to stop, abortConnection, loseConnection,
    connectionLost); each way of closing closes the socket once.
    """

    #: Set by SpliceRelay like on a Twisted transport; a close here never shuts down first.
    _shouldShutdown = True

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.closed = False

    def fileno(self) -> int:
        return self.socket.fileno()

    def getHost(self) -> IPv4Address | IPv6Address:
        return _address(self.socket.family, self.socket.getsockname())

    def getPeer(self) -> IPv4Address | IPv6Address:
        return _address(self.socket.family, self.socket.getpeername())

    def stopReading(self) -> None:
        pass

    def stopWriting(self) -> None:
        pass

    def loseConnection(self) -> None:
        """Orderly close (FIN), as a Twisted transport with nothing buffered does."""
        if not self.closed:
            try:
                self.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._close()

    def abortConnection(self) -> None:
        """Close with a reset."""
        if not self.closed:
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            except OSError:
                pass
            self._close()

    def connectionLost(self, reason: Any = None) -> None:
        """Close now: the relay has seen both ways end, so close() itself sends the FIN."""
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.socket.close()

    def adopt(self, reactor: Any, protocol: Protocol) -> Any:
        """
        Give the socket to Twisted, connected to ``protocol`` (its
        connectionMade runs now); returns the new transport.  This object
        is done with afterwards.
        """
        factory = Factory.forProtocol(lambda: protocol)
        factory.noisy = False
        try:
            transport = reactor.adoptStreamConnection(self.socket.fileno(), self.socket.family, factory)
        finally:
            self._close()  # adoptStreamConnection works on a duplicate of the descriptor
        return transport


@implementer(IWriteDescriptor)
class DirectConnector:
    """
    Connects to ``addresses`` (IP address strings) in order on ``port``:
    each one with a non-blocking connect watched by ``reactor`` (an
    IReactorFDSet), for at most ``timeout`` seconds each if given.  Calls
    ``onConnected(DirectUpstream)`` on the first success, else
    ``onFailed(failure)`` with the last failure (a ConnectError, as
    connectTCP's).  `cancel` stops the attempt under way; nothing is
    reported after it.
    """

    def __init__(self, reactor: Any, addresses: list[str], port: int, timeout: float | None,
                 onConnected: Callable[[DirectUpstream], None], onFailed: Callable[[Failure], None]) -> None:
        self._reactor = reactor
        self._remaining = addresses
        self._port = port
        self._timeout = timeout
        self._onConnected = onConnected
        self._onFailed = onFailed
        self.address = ""
        self._socket: socket.socket | None = None
        self._timer: IDelayedCall | None = None
        self._watching = False
        self._finished = False

    # -- IWriteDescriptor (while a connect is in progress) --------------------

    def fileno(self) -> int:
        return self._socket.fileno() if self._socket is not None else -1

    def logPrefix(self) -> str:
        return "DirectConnector"

    def doWrite(self) -> None:
        self._settled(None)

    def connectionLost(self, reason: Failure) -> None:
        # epoll reports a failed connect as an error/hang-up, and the reactor
        # then calls this instead of doWrite (it has unregistered us).
        self._watching = False
        self._settled(reason)

    # -- the attempts --------------------------------------------------------

    def describe(self) -> str:
        """What the session waits for, for the negotiation timeout's log line."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"connecting to {host}:{self._port}"

    def start(self) -> None:
        """Try the first address (the outcome may be reported before this returns)."""
        self.tryNext()

    def tryNext(self) -> None:
        self.address = self._remaining.pop(0)
        try:
            if ":" in self.address:
                family = socket.AF_INET6
                # Through getaddrinfo, like Twisted, for a scope (fe80::1%eth0).
                target: Any = socket.getaddrinfo(self.address, self._port, family, socket.SOCK_STREAM,
                                                 0, socket.AI_NUMERICHOST)[0][4]
            else:
                family = socket.AF_INET
                target = (self.address, self._port)
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as error:
            self._failed(_connect_error(error.errno or errno.EINVAL))
            return
        sock.setblocking(False)
        self._socket = sock
        result = sock.connect_ex(target)
        if result == 0:
            self._succeeded()
        elif result in _IN_PROGRESS:
            self._watching = True
            self._reactor.addWriter(self)
            if self._timeout is not None:
                self._timer = self._reactor.callLater(self._timeout, self._timedOut)
        else:
            self._failed(_connect_error(result))

    def _settled(self, reason: Failure | None) -> None:
        if self._finished or self._socket is None:
            return
        self._unwatch()
        result = self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if result:
            self._failed(_connect_error(result))
        elif reason is not None:
            self._failed(reason)
        else:
            self._succeeded()

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
        self._finished = True
        self._onConnected(DirectUpstream(sock))

    def _failed(self, reason: Failure) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
        if self._remaining:
            self.tryNext()
            return
        self._finished = True
        self._onFailed(reason)

    def cancel(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._unwatch()
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
