"""
A real RFC 1413 identd for the tests, in its own process: it answers each
query with the owner of the TCP connection, read from the kernel's
/proc/net/tcp, as identd does.  (Twisted's own IdentServer cannot be used:
on Python 3 it splits a bytes line with a str separator and drops every
query.)  Listens on 127.0.0.1 and a free port and prints ``ready PORT``.
Run: ``python -m tests.helpers.identd``; tests start it with `startIdentd`.
"""

from __future__ import annotations

import os
import pwd
import socket
import struct
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests.helpers.processes import spawnWatched

from txsocksgss.errors import ProtocolError
from txsocksgss.wire.ident import IdentError, IdentErrorType, IdentUserId, parse_ident_query
from txsocksgss.wire.reader import MessageBuffer


def _address(packed: str) -> tuple[str, int]:
    host, port = packed.split(":")
    return socket.inet_ntoa(struct.pack("=L", int(host, 16))), int(port, 16)


def connection_owner(local: tuple[str, int], remote: tuple[str, int]) -> str | None:
    """The user owning the IPv4 TCP connection local -> remote, or None."""
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if _address(fields[1]) == local and _address(fields[2]) == remote:
                return pwd.getpwuid(int(fields[7])).pw_name
    return None


class Identd(Protocol):
    def connectionMade(self) -> None:
        self.buffer = MessageBuffer(limit=1000)

    def dataReceived(self, data: bytes) -> None:
        self.buffer.feed(data)
        try:
            query = self.buffer.next(parse_ident_query)
        except ProtocolError:
            self.transport.loseConnection()
            return
        if query is None:
            return
        me = self.transport.getHost().host
        asker = self.transport.getPeer().host
        owner = connection_owner((me, query.server_port), (asker, query.client_port))
        if owner is None:
            answer = IdentError(query.server_port, query.client_port, IdentErrorType.NO_USER)
        else:
            answer = IdentUserId(query.server_port, query.client_port, "UNIX", None, owner)
        self.transport.write(answer.serialize())
        self.transport.loseConnection()


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@inlineCallbacks
def startIdentd(test: TestCase) -> Any:
    """Start this identd in its own process, stopped (SIGTERM) at the end of ``test``; fires with its port."""
    process = spawnWatched(test, "identd", sys.executable, ["-m", "tests.helpers.identd"], path=ROOT, stop_grace=10.0)
    yield process.waitFor(b"ready ")
    return int(process.output.split(b"ready ")[1].split()[0])


def main() -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(Identd), interface="127.0.0.1")
    print(f"ready {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
