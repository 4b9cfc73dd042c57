"""
The zero-copy relay: bytes move socket -> pipe -> socket with os.splice,
never through Python.

Theory of operation.  When a tunnel carries no per-message protection and
nothing is buffered on either side, the two TCP connections are taken away
from their Twisted transports (which stop reading and writing) and given to
one `_SpliceSocket` each, registered with the reactor for the same file
descriptor.  Each direction has a pipe (created on its first byte, so an
idle tunnel costs no pipe; it grows from the default 64 KiB to ``PIPE_SIZE``
once a read fills it, so short connections pay no resize) and moves bytes
in two steps:

- the source is readable: splice(source -> pipe), then at once
  splice(pipe -> destination) as far as the destination takes;
- if the pipe still holds bytes, the destination is full: stop reading the
  source and wait until the destination is writable, drain the pipe, then
  read again.

That is producer/consumer flow control in the kernel: at most one pipe
(``PIPE_SIZE``) is in flight per direction, whatever the speeds.  End of
stream (splice returns 0) is passed on as shutdown(SHUT_WR) once the pipe is
empty; the relay ends when both directions have ended, or at once on an
error (reset) on either side.  Then the sockets are handed back to their
transports, which close them and report connectionLost as usual.

`splice_available` says whether this platform and reactor can do it; the
ordinary `txsocksgss.server.relay.Relay` is the fallback.
"""

from __future__ import annotations

import fcntl
import os
import socket
from typing import Any, Callable

from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.server.idle import IdleTimer

__all__ = ["SpliceRelay", "splice_available", "PIPE_SIZE"]

PIPE_SIZE = 1024 * 1024
_CHUNK = PIPE_SIZE
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_DEFAULT_PIPE = 64 * 1024


def splice_available(reactor: Any, *transports: Any) -> bool:
    """
    True if os.splice exists, ``reactor`` can watch raw descriptors, and each
    transport is a plain TCP socket (not TLS, not a UNIX socket) with an
    empty write buffer.
    """
    if not hasattr(os, "splice") or not hasattr(reactor, "addReader"):
        return False
    for transport in transports:
        sock = getattr(transport, "socket", None)
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        if getattr(transport, "dataBuffer", b"") or getattr(transport, "_tempDataLen", 0):
            return False
        if getattr(transport, "producer", None) is not None or getattr(transport, "disconnecting", False):
            return False
    return True


class _Direction:
    """One way of the tunnel: ``source`` -> pipe -> ``target``."""

    def __init__(self, relay: "SpliceRelay", name: str) -> None:
        self.relay = relay
        self.name = name
        self.source: _SpliceSocket = None  # type: ignore[assignment]
        self.target: _SpliceSocket = None  # type: ignore[assignment]
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0
        self.moved = 0
        self.eof = False
        self.done = False
        self.grown = False

    def _ensurePipe(self) -> tuple[int, int]:
        if self.pipe is None:
            self.pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
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
        """The source has bytes (or EOF): move them into the pipe, then on."""
        read_end, write_end = self._ensurePipe()
        try:
            count = os.splice(self.source.fd, write_end, _CHUNK, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError as error:
            self.relay.failed(f"{self.name}: read: {os.strerror(error.errno or 0)}")
            return
        if count == 0:
            self.eof = True
            self.source.stopReadingFor(self)
            if self.in_pipe == 0:
                self._finish()
            return
        self.in_pipe += count
        self.relay.idle.active = True
        if count >= _DEFAULT_PIPE and not self.grown:
            self._grow()
        self.writable()

    def writable(self) -> None:
        """Drain the pipe into the target; pause the source while it is full."""
        assert self.pipe is not None
        while self.in_pipe:
            try:
                count = os.splice(self.pipe[0], self.target.fd, self.in_pipe, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                break
            except OSError as error:
                self.relay.failed(f"{self.name}: write: {os.strerror(error.errno or 0)}")
                return
            self.in_pipe -= count
            self.moved += count
        if self.in_pipe:
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
        try:
            self.target.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.relay.directionDone()

    def close(self) -> None:
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None


@implementer(IReadWriteDescriptor)
class _SpliceSocket:
    """One TCP socket of the tunnel, as the reactor sees it while splicing."""

    def __init__(self, relay: "SpliceRelay", transport: Any) -> None:
        self.relay = relay
        self.transport = transport
        self.sock: socket.socket = transport.socket
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
        self.relay.failed(f"socket lost: {reason.getErrorMessage()}")

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


class SpliceRelay:
    """
    The splice tunnel between the ``client`` and ``upstream`` transports (see
    the module docstring).  Same surface as `txsocksgss.server.relay.Relay`
    for the session: counters, `close`, and ``onEnd(outcome)`` called once.
    """

    def __init__(self, client: Any, upstream: Any, reactor: Any, idle_timeout: float | None,
                 onEnd: Callable[[str], None]) -> None:
        self.client = client
        self.upstream = upstream
        self.reactor = reactor
        self.ended = False
        self._onEnd = onEnd
        self.idle = IdleTimer(reactor, idle_timeout, lambda: self._end("idle timeout"))
        self._up = _Direction(self, "client->upstream")
        self._down = _Direction(self, "upstream->client")
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

    def start(self) -> None:
        """Take both sockets from their transports and start moving bytes."""
        for transport in (self.client, self.upstream):
            transport.stopReading()
            transport.stopWriting()
        self._client_socket.startReadingFor(self._up)
        self._upstream_socket.startReadingFor(self._down)
        self.idle.start()

    # The session passes these on; in splice mode the transports do not read,
    # so only connectionLost (from close) can arrive.
    def fromClient(self, data: bytes) -> None:  # pragma: no cover - transports do not read
        raise RuntimeError("data through a spliced transport")

    def clientEOF(self) -> None:  # pragma: no cover
        pass

    def clientLost(self, reason: Failure | None = None) -> None:
        self._end("client closed")

    def upstreamLost(self, reason: Failure | None = None) -> None:
        self._end("upstream closed")

    def close(self, outcome: str) -> None:
        self._end(outcome)

    def directionDone(self) -> None:
        if self._up.done and self._down.done:
            self._end("closed")

    def failed(self, why: str) -> None:
        self._end(f"reset ({why})", abort=True)

    def _end(self, outcome: str, abort: bool = False) -> None:
        if self.ended:
            return
        self.ended = True
        self.idle.stop()
        self._client_socket.release()
        self._upstream_socket.release()
        for direction in (self._up, self._down):
            direction.close()
        self._onEnd(outcome)
        # Hand the sockets back: the transports close them and report it.
        for transport in (self.client, self.upstream):
            if abort:
                transport.abortConnection()
            else:
                transport.loseConnection()
