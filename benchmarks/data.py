"""The bytes bulk transfers carry: a file of random data, sent again and again with sendfile."""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile

__all__ = ["DataFile", "Discard", "send_from_file", "DATA_FILE_SIZE", "CHUNK"]

DATA_FILE_SIZE = 16 << 20
CHUNK = 1 << 20  # what a data mover asks for at a time


class DataFile:
    """
    ``size`` random bytes in a file on tmpfs (/dev/shm when there is one),
    open as ``fd`` for os.sendfile and held as ``content`` for GSS-API
    wrapping.  A context manager that removes the file.
    """

    def __init__(self, size: int = DATA_FILE_SIZE) -> None:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.content = os.urandom(size)
        self.size = size
        handle, self.path = tempfile.mkstemp(prefix="txsocksgss-bench-", dir=directory)
        with os.fdopen(handle, "wb") as f:
            f.write(self.content)
        self.fd = os.open(self.path, os.O_RDONLY)

    def close(self) -> None:
        os.close(self.fd)
        os.unlink(self.path)

    def __enter__(self) -> "DataFile":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def send_from_file(sock: socket.socket, data: DataFile, total: int) -> None:
    """Send ``total`` bytes on a blocking socket with os.sendfile, cycling through ``data``."""
    out = sock.fileno()
    offset = 0
    remaining = total
    while remaining:
        sent = os.sendfile(out, data.fd, offset, min(remaining, data.size - offset))
        if sent == 0:
            raise ConnectionError("the peer stopped reading")
        remaining -= sent
        offset = (offset + sent) % data.size


class Discard:
    """
    Receives and drops bytes without copying them to user space: os.splice
    from the socket into a pipe (1 MiB), then from the pipe to /dev/null.
    About a fifth faster than recv_into, so the receiving end of a bulk
    transfer is never what limits it.  A context manager.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        fcntl.fcntl(self._write, fcntl.F_SETPIPE_SZ, CHUNK)
        self._null = os.open(os.devnull, os.O_WRONLY)

    def receive(self, sock: socket.socket, total: int) -> None:
        """Receive and drop ``total`` bytes from a blocking socket; ConnectionError if they end early."""
        source = sock.fileno()
        remaining = total
        while remaining:
            moved = os.splice(source, self._write, min(remaining, CHUNK), flags=os.SPLICE_F_MOVE)
            if not moved:
                raise ConnectionError(f"end of stream with {remaining} of {total} bytes to come")
            remaining -= moved
            while moved:
                moved -= os.splice(self._read, self._null, moved, flags=os.SPLICE_F_MOVE)

    def close(self) -> None:
        for fd in (self._read, self._write, self._null):
            os.close(fd)

    def __enter__(self) -> "Discard":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
