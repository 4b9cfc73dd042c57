"""
The loopback destination every tunnel leads to, in a process of its own.

Two listening ports on 127.0.0.1:

- ``echo_port``: an epoll loop that sends back the first bytes that arrive
  and closes.  The connection rate and the latency use it (one byte each
  way, then the client waits for the end of stream and closes); idle
  tunnels are connected to it and send nothing until they are taken down.
  It must take thousands of connections at once and accept them fast.
  Closing first puts the TIME_WAIT state on this side, under the fixed
  listening port (and on the proxy's listening port, as the proxy passes
  the close on), never on ephemeral ports: tens of thousands of short
  connections would otherwise leave the ephemeral range too crowded for a
  minute to bind ten consecutive ports (tests/helpers/kerberos.py's KDC needs them).
- ``bulk_port``: a thread per connection (bulk runs one at a time).  The
  client sends a 9-byte header, a mode octet and a 64-bit size: ``U``
  (upload) makes it receive ``size`` bytes (spliced to /dev/null) and
  answer ``K``; ``D`` (download) makes it send ``size`` bytes with
  os.sendfile, shut down its sending side and wait for the client to close.
"""

from __future__ import annotations

import multiprocessing
import select
import socket
import struct
import threading

from benchmarks.data import CHUNK, DataFile, Discard, send_from_file
from benchmarks.processes import die_with_parent
from benchmarks.socks import LOOPBACK, recv_exact

__all__ = ["Destination", "upload_header", "download_header", "UPLOAD_DONE"]

UPLOAD_DONE = b"K"
_HEADER = struct.Struct("!cQ")


def upload_header(size: int) -> bytes:
    return _HEADER.pack(b"U", size)


def download_header(size: int) -> bytes:
    return _HEADER.pack(b"D", size)


class Destination:
    """The destination process; a context manager (``with Destination(data) as destination:``)."""

    def __init__(self, data: DataFile) -> None:
        self._echo = _listener()
        self._bulk = _listener()
        self.echo_port = self._echo.getsockname()[1]
        self.bulk_port = self._bulk.getsockname()[1]
        # fork: the child gets the listening sockets and the data file as they are.
        context = multiprocessing.get_context("fork")
        self._process = context.Process(target=_serve, args=(self._echo, self._bulk, data),
                                        name="benchmark destination", daemon=True)

    def __enter__(self) -> "Destination":
        self._process.start()
        self._echo.close()
        self._bulk.close()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._process.terminate()
        self._process.join(10)

    @property
    def pid(self) -> int | None:
        return self._process.pid


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(socket.SOMAXCONN)
    return sock


def _serve(echo: socket.socket, bulk: socket.socket, data: DataFile) -> None:
    die_with_parent()
    threading.Thread(target=_bulk_accept, args=(bulk, data), daemon=True).start()
    _echo_loop(echo)


def _echo_loop(listener: socket.socket) -> None:
    listener.setblocking(False)
    poller = select.epoll()
    listening = listener.fileno()
    poller.register(listening, select.EPOLLIN)
    connections: dict[int, socket.socket] = {}
    while True:
        for fd, _events in poller.poll():
            if fd == listening:
                while True:
                    try:
                        connection, _ = listener.accept()
                    except BlockingIOError:
                        break
                    connection.setblocking(False)
                    connections[connection.fileno()] = connection
                    poller.register(connection.fileno(), select.EPOLLIN)
                continue
            connection = connections[fd]
            try:
                data = connection.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                try:
                    connection.send(data)  # a few bytes: the send buffer takes them
                except OSError:
                    pass
            poller.unregister(fd)
            del connections[fd]
            connection.close()


def _bulk_accept(listener: socket.socket, data: DataFile) -> None:
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=_bulk_connection, args=(connection, data), daemon=True).start()


def _bulk_connection(connection: socket.socket, data: DataFile) -> None:
    try:
        mode, size = _HEADER.unpack(recv_exact(connection, _HEADER.size))
        if mode == b"U":
            with Discard() as discard:
                discard.receive(connection, size)
            connection.sendall(UPLOAD_DONE)
        elif mode == b"D":
            send_from_file(connection, data, size)
            connection.shutdown(socket.SHUT_WR)
        while connection.recv(CHUNK):  # until the client closes
            pass
    except OSError:
        pass  # the client went away: its measurement reports it
    finally:
        connection.close()
