"""
The zero-copy relay: bytes move socket -> pipe -> socket with os.splice,
never through Python (after the first few).

Theory of operation.  When a tunnel carries no per-message protection and
nothing is buffered on either side, the two TCP connections are taken away
from their Twisted transports (which stop reading and writing; with the
epoll reactor the client's registration is handed over as it is) and given
to one `_SpliceSocket` each, registered with the reactor for the same file
descriptor.  The upstream end of a CONNECT has no transport at all: its
socket comes straight from `txsocksgss.server.direct.DirectConnector`.  Each direction moves bytes in one of two ways:

- copying, for its first ``COPY_LIMIT`` bytes: recv from the source, send
  to the destination as far as it takes, keep the rest (at most one recv's
  worth) and stop reading the source until the destination is writable and
  has taken it.  Most tunnels are short (a request, an answer, the close);
  for them a pipe would cost more system calls (pipe2, two splices, two
  closes) than the bytes themselves.
- splicing, from then on: a pipe (the default 64 KiB; it grows to
  ``PIPE_SIZE`` once a read fills it) between the sockets; the source is
  readable: splice(source -> pipe), then at once splice(pipe ->
  destination) as far as the destination takes; if the pipe still holds
  bytes, the destination is full: stop reading the source and wait until
  the destination is writable, drain the pipe, then read again.

That is producer/consumer flow control: at most one recv (copying) or one
pipe (``PIPE_SIZE``, in the kernel) is in flight per direction, whatever
the speeds.  End of stream (a read of 0 bytes) is passed on as
shutdown(SHUT_WR) once nothing is in flight; the relay ends when both
directions have ended, or at once on an error (reset) on either side.  Then,
on the reactor's next turn, the sockets are handed back to their
transports, which close them and report connectionLost as usual (a bare
socket is closed by the relay).

`splice_available` says whether this platform and reactor can do it; the
ordinary `txsocksgss.server.relay.Relay` is the fallback.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
from typing import Any, Callable

from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.tcp import Connection
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss._twisted_internals import (
    EPollReactor,
    close_without_shutdown,
    has_pending_writes,
    take_over_reader,
    unwrap_proxy_protocol,
)
from txsocksgss.interfaces import ITunnel
from txsocksgss.server.idle import IdleTimer
from txsocksgss.server.outcomes import CLIENT_CLOSED, CLOSED, IDLE_TIMEOUT, UPSTREAM_CLOSED, Outcome, OutcomeKind

__all__ = ["SpliceRelay", "splice_available", "splice_chosen", "plain_connection", "reset_on_close", "PIPE_SIZE",
           "COPY_LIMIT", "EPollReactor"]

PIPE_SIZE = 1024 * 1024
#: Bytes each direction copies through Python before it switches to a pipe.
COPY_LIMIT = 64 * 1024
_CHUNK = PIPE_SIZE
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_DEFAULT_PIPE = 64 * 1024
# One shared reason, as the reactor itself does for every orderly close.
_CONNECTION_DONE = Failure(ConnectionDone())
# SO_LINGER on, zero seconds: close() sends a reset (what abortConnection does).
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def reset_on_close(sock: socket.socket) -> None:
    """Make close() send a reset (SO_LINGER on, zero seconds), as abortConnection does; a dead socket is left as it is."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    except OSError:
        pass


def plain_connection(transport: Any) -> Connection | None:
    """
    The socket connection (twisted.internet.tcp.Connection) that carries
    ``transport``'s bytes unchanged, or None if something transforms them
    on the way: TLS (an ``ssl:`` listener), or anything else that wraps the
    connection.  A PROXY-protocol wrapper (``haproxy:``) only reads a header
    before the session starts, so the connection under it counts.
    """
    transport = unwrap_proxy_protocol(transport)
    if isinstance(transport, Connection) and not getattr(transport, "TLS", False):
        return transport
    return None


def splice_available(reactor: Any, *transports: Any) -> bool:
    """
    True if os.splice exists, ``reactor`` can watch raw descriptors, and each
    transport is a plain TCP socket (`plain_connection`: not TLS, not a
    UNIX socket) with an empty write buffer.
    """
    if not hasattr(os, "splice") or not hasattr(reactor, "addReader"):
        return False
    for transport in transports:
        connection = plain_connection(transport)
        if connection is None or connection.socket.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        if has_pending_writes(connection):
            return False
        if connection.producer is not None or connection.disconnecting:
            return False
    return True


def splice_chosen(context: Any, protection: Any, client: Any, upstream: Any = None) -> bool:
    """
    The one decision, for both session drivers, whether a tunnel is spliced:
    splicing on (``context.splice``), no per-message ``protection``, and
    the client (a Twisted transport, or a bare socket of the lean listener)
    and, if known already, the ``upstream`` transport, plain TCP sockets
    with nothing buffered (`splice_available`).  A bare socket is always
    plain TCP.
    """
    if not context.splice or protection is not None or not isinstance(context.reactor, PosixReactorBase):
        return False
    transports = [end for end in (client, upstream) if end is not None and not isinstance(end, socket.socket)]
    return splice_available(context.reactor, *transports) if transports else hasattr(os, "splice")


class _Direction:
    """One way of the tunnel: ``source`` -> (copy, or pipe) -> ``target``."""

    __slots__ = ("relay", "name", "source", "target", "held", "uncounted", "pipe", "in_pipe", "moved", "eof",
                 "done", "grown")

    def __init__(self, relay: "SpliceRelay", name: str) -> None:
        self.relay = relay
        self.name = name
        self.source: _SpliceSocket = None  # type: ignore[assignment]
        self.target: _SpliceSocket = None  # type: ignore[assignment]
        self.held = b""  # copied bytes the target has not taken yet
        self.uncounted = 0  # leading bytes of ``held`` that are not tunnel bytes (the rest of a reply)
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0
        self.moved = 0
        self.eof = False
        self.done = False
        self.grown = False

    def _ensurePipe(self) -> tuple[int, int] | None:
        """The direction's pipe, created on first use; None (and the relay reset) if there are no descriptors left."""
        if self.pipe is None:
            try:
                self.pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as error:
                self.relay.failed(f"{self.name}: pipe: {os.strerror(error.errno or 0)}")
                return None
        return self.pipe

    def _grow(self) -> None:
        """A full default pipe (64 KiB) means bulk traffic: give it ``PIPE_SIZE``."""
        self.grown = True
        assert self.pipe is not None
        try:
            fcntl.fcntl(self.pipe[1], _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the default size still works, more slowly

    def readable(self) -> None:
        """The source has bytes (or EOF): move them on, copying or through the pipe."""
        if self.moved < COPY_LIMIT:
            self._copy()
        else:
            self._splice()

    def _copy(self) -> None:
        try:
            data = self.source.sock.recv(COPY_LIMIT)
        except BlockingIOError:
            return
        except OSError as error:
            self.relay.failed(f"{self.name}: read: {os.strerror(error.errno or 0)}")
            return
        if not data:
            self._sourceEnded()
            return
        self.held = data
        self.relay.idle.active = True
        self.writable()

    def _splice(self) -> None:
        pipe = self._ensurePipe()
        if pipe is None:
            return
        write_end = pipe[1]
        try:
            count = os.splice(self.source.fd, write_end, _CHUNK, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError as error:
            self.relay.failed(f"{self.name}: read: {os.strerror(error.errno or 0)}")
            return
        if count == 0:
            self._sourceEnded()
            return
        self.in_pipe += count
        self.relay.idle.active = True
        if count >= _DEFAULT_PIPE and not self.grown:
            self._grow()
        self.writable()

    def _sourceEnded(self) -> None:
        self.eof = True
        self.source.stopReadingFor(self)
        if not self.held and self.in_pipe == 0:
            self._finish()

    def writable(self) -> None:
        """Pass on what is in flight; pause the source while the target is full."""
        if self.held:
            try:
                count = self.target.sock.send(self.held)
            except BlockingIOError:
                count = 0
            except OSError as error:
                self.relay.failed(f"{self.name}: write: {os.strerror(error.errno or 0)}")
                return
            self.held = self.held[count:] if count < len(self.held) else b""
            if self.uncounted:
                skipped = min(count, self.uncounted)
                self.uncounted -= skipped
                count -= skipped
            self.moved += count
        while self.in_pipe:
            assert self.pipe is not None
            try:
                count = os.splice(self.pipe[0], self.target.fd, self.in_pipe, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                break
            except OSError as error:
                self.relay.failed(f"{self.name}: write: {os.strerror(error.errno or 0)}")
                return
            self.in_pipe -= count
            self.moved += count
        if self.held or self.in_pipe:
            self.source.stopReadingFor(self)
            self.target.startWritingFor(self)
            return
        self.target.stopWritingFor(self)
        if self.eof:
            self._finish()
        else:
            self.source.startReadingFor(self)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        # The last direction to end needs no shutdown when the relay closes
        # both sockets at once right after: with both ends read to EOF,
        # close() itself sends the FIN (and saves a system call per tunnel).
        if not (self.relay.closes_at_once and self.relay.otherDirection(self).done):
            try:
                self.target.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.relay.directionDone()

    def close(self) -> None:
        self.held = b""
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None


def _really_lost(fd: int) -> bool:
    """Whether the socket ``fd`` has an error or has hung up (a poll that does not wait)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLOUT)
    for _fd, events in poller.poll(0):
        if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
            return True
    return False


@implementer(IReadWriteDescriptor)
class _SpliceSocket:
    """
    One TCP socket of the tunnel, as the reactor sees it while splicing:
    ``end`` is either a Twisted transport (the client's connection, or a
    BIND's inbound one), which gets its socket back at the end and closes
    it, or a bare connected socket (`txsocksgss.server.direct`), which this
    object closes itself.
    """

    __slots__ = ("relay", "transport", "sock", "fd", "outgoing", "incoming", "reading", "writing")

    def __init__(self, relay: "SpliceRelay", end: Any) -> None:
        self.relay = relay
        if isinstance(end, socket.socket):
            self.transport: Any = None
            self.sock = end
        else:
            self.transport = end
            self.sock = end.socket
        self.fd = self.sock.fileno()
        self.outgoing: _Direction = None  # type: ignore[assignment]  # reads feed this
        self.incoming: _Direction = None  # type: ignore[assignment]  # writes drain this
        self.reading = False
        self.writing = False

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "SpliceRelay"

    def doRead(self) -> None:
        self.outgoing.readable()

    def doWrite(self) -> None:
        self.incoming.writable()

    def connectionLost(self, reason: Failure) -> None:
        # The reactor calls this for an error or hang-up event, after taking
        # the descriptor out of its sets.  The event may not be this
        # socket's: one closed in the middle of the same batch of events
        # (by Twisted, or by anyone) can have left it for its number, which
        # this socket then took.  Ask the socket itself.
        if _really_lost(self.fd):
            self.relay.failed(f"socket lost: {reason.getErrorMessage()}")
            return
        reading, writing = self.reading, self.writing
        self.reading = self.writing = False
        if reading:
            self.startReadingFor(self.outgoing)
        if writing:
            self.startWritingFor(self.incoming)

    def takeOver(self, reader: Any = None) -> None:
        """
        Take the socket from its transport (which stops reading and
        writing), or from ``reader``, the descriptor reading a bare socket
        until now, and start reading it.  With Twisted's epoll reactor, a
        socket registered for reading only is handed over as it is, without
        the two epoll_ctl calls of a removeReader and an addReader.
        """
        transport = self.transport
        if reader is None and transport is not None:
            reader = plain_connection(transport)
        reactor = self.relay.reactor
        if reader is not None and take_over_reader(reactor, self.fd, reader, self):
            self.reading = True
            return
        if transport is not None:
            transport.stopReading()
            transport.stopWriting()
        elif reader is not None:
            reactor.removeReader(reader)
        self.startReadingFor(self.outgoing)

    def startReadingFor(self, direction: _Direction) -> None:
        if not self.reading and not direction.eof and not self.relay.ended:
            self.reading = True
            self.relay.reactor.addReader(self)

    def stopReadingFor(self, direction: _Direction) -> None:
        if self.reading:
            self.reading = False
            self.relay.reactor.removeReader(self)

    def startWritingFor(self, direction: _Direction) -> None:
        if not self.writing and not self.relay.ended:
            self.writing = True
            self.relay.reactor.addWriter(self)

    def stopWritingFor(self, direction: _Direction) -> None:
        if self.writing:
            self.writing = False
            self.relay.reactor.removeWriter(self)

    def release(self) -> None:
        self.stopReadingFor(self.outgoing)
        self.stopWritingFor(self.incoming)

    def close(self, abort: bool, at_once: bool) -> None:
        """
        Close the socket, after `release`: a bare socket at once (with a
        reset if ``abort``), a transport through its own ways of closing
        (``at_once``: both ways ended and the transport holds nothing, so
        it can be closed now, without the shutdown(2) that Twisted's own
        comment calls unnecessary).
        """
        transport = self.transport
        if transport is None:
            if abort:
                reset_on_close(self.sock)
            self.sock.close()
        elif at_once and close_without_shutdown(transport, _CONNECTION_DONE):
            pass
        elif abort:
            transport.abortConnection()
        else:
            transport.loseConnection()


@implementer(ITunnel)
class SpliceRelay:
    """
    The splice tunnel between ``client`` (a transport) and ``upstream`` (a
    transport, or a bare connected socket from
    `txsocksgss.server.direct.DirectConnector`); see the module docstring.
    Same surface as `txsocksgss.server.relay.Relay` for the session:
    counters, `close`, and ``onEnd(outcome)`` called once.
    """

    def __init__(self, client: Any, upstream: Any, reactor: Any, idle_timeout: float | None,
                 onEnd: Callable[[Outcome], None], reader: Any = None, upstreamProtocol: Any = None) -> None:
        self.client = client
        #: The `UpstreamProtocol` of a transport ``upstream``, told of the
        #: relay once it has started (it reports the connection's loss).
        self._upstream_protocol = upstreamProtocol
        #: The descriptor that reads a bare ``client`` socket until the relay
        #: takes it over (`txsocksgss.server.lean.BareSocketDriver`).
        self._reader = reader
        self.upstream = upstream
        self.reactor = reactor
        self.ended = False
        #: True once the relay has ended by closing both connections itself
        #: (see `_end`): the client cannot hold on to its connection after it.
        self.closed_at_once = False
        self._onEnd = onEnd
        self.idle = IdleTimer(reactor, idle_timeout, lambda: self._end(IDLE_TIMEOUT))
        self._up = _Direction(self, "client->upstream")
        self._down = _Direction(self, "upstream->client")
        #: Whether the relay can close both connections itself when both
        #: ways have ended (see `_end`).
        self.closes_at_once = (isinstance(client, (socket.socket, FileDescriptor))
                               and isinstance(upstream, (socket.socket, FileDescriptor)))
        self._client_socket = _SpliceSocket(self, client)
        self._upstream_socket = _SpliceSocket(self, upstream)
        self._up.source, self._up.target = self._client_socket, self._upstream_socket
        self._down.source, self._down.target = self._upstream_socket, self._client_socket
        self._client_socket.outgoing, self._client_socket.incoming = self._up, self._down
        self._upstream_socket.outgoing, self._upstream_socket.incoming = self._down, self._up

    @property
    def bytes_from_client(self) -> int:
        return self._up.moved

    @property
    def bytes_from_upstream(self) -> int:
        return self._down.moved

    def start(self, toUpstream: bytes = b"", toClient: bytes = b"") -> None:
        """
        Take both sockets from their transports and start moving bytes.
        ``toUpstream`` (bytes the client sent early) and ``toClient`` (the
        part of the reply the client's socket did not take at once, not
        counted as tunnel bytes) go first, before anything read later.
        """
        self._client_socket.takeOver(self._reader)
        self._upstream_socket.takeOver()
        self.idle.start()
        if toUpstream:
            self._up.held = toUpstream
            self._up.writable()
        if toClient and not self.ended:
            self._down.held = toClient
            self._down.uncounted = len(toClient)
            self._down.writable()
        if self._upstream_protocol is not None:
            self._upstream_protocol.attach(self)

    # The session passes these on; in splice mode the transports do not read,
    # so only connectionLost (from close) can arrive.
    def fromClient(self, data: bytes) -> None:  # pragma: no cover - transports do not read
        raise RuntimeError("data through a spliced transport")

    def clientEOF(self) -> None:  # pragma: no cover
        pass

    def clientLost(self, reason: Failure | None = None) -> None:
        self._end(CLIENT_CLOSED)

    def upstreamLost(self, reason: Failure | None = None) -> None:
        self._end(UPSTREAM_CLOSED)

    def close(self, outcome: Outcome) -> None:
        self._end(outcome)

    def otherDirection(self, direction: _Direction) -> _Direction:
        return self._down if direction is self._up else self._up

    def directionDone(self) -> None:
        if self._up.done and self._down.done:
            self._end(CLOSED, at_once=True)

    def failed(self, why: str) -> None:
        self._end(Outcome(OutcomeKind.RESET, why), abort=True)

    def _end(self, outcome: Outcome, abort: bool = False, at_once: bool = False) -> None:
        if self.ended:
            return
        self.ended = True
        self.idle.stop()
        self._client_socket.release()
        self._upstream_socket.release()
        for direction in (self._up, self._down):
            direction.close()
        # Both ways ended (``at_once``): each socket has sent its FIN and
        # read the peer's, and the transports hold nothing, so there is
        # nothing for loseConnection to wait for (a shut-down socket is
        # always writable): close them directly instead of registering each
        # for writing again.  (Transports that are not file descriptors of
        # the reactor's, such as a PROXY-protocol wrapper, are closed the
        # ordinary way.)  Every close waits for the next turn of the
        # reactor: it may still hold an event of this batch for the other
        # socket, and a descriptor number freed in the middle of a batch can
        # be taken by a socket accepted later in it, which would then
        # receive that stale event.
        at_once = at_once and self.closes_at_once
        self.closed_at_once = at_once
        self.reactor.callLater(0, self._closeBoth, abort, at_once)
        self._onEnd(outcome)

    def _closeBoth(self, abort: bool, at_once: bool) -> None:
        self._client_socket.close(abort, at_once)
        self._upstream_socket.close(abort, at_once)
