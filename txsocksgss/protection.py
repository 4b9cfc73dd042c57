"""
The transport wrapper that applies per-message protection.

Theory of operation.  When a subnegotiation ends with an
`txsocksgss.interfaces.IStreamProtection` (GSS-API at integrity or
confidentiality), every later byte of the connection is protected.  The
protocol that owns the connection (the server's SOCKS protocol, or the
client's handshake protocol) then replaces its ``transport`` attribute with a
`ProtectedTransport` and passes what it receives through
``protection.unprotect`` before using it.  Everything above (the SOCKS
request code, the relay, the application's protocol) writes plaintext to a
transport and receives plaintext, as with Twisted's TLS wrapper.

Producer/consumer calls pass straight through to the real transport, so
flow control keeps working: a paused reader pauses the wire, and the real
transport's write buffer (holding protected bytes) is what fills up.

When protecting fails (the security context expired), nothing of the
write is sent: ``failed`` is told (the owner records why and closes), or,
without one, the connection is aborted.  The writer never sees an exception.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from zope.interface import implementer

from txsocksgss.errors import ProtocolError
from txsocksgss.interfaces import IStreamProtection

__all__ = ["ProtectedTransport"]


@implementer(ITransport, IConsumer, IPushProducer)
class ProtectedTransport:
    """
    A transport that protects everything written to it before it reaches
    ``transport``.  Every other call goes to ``transport`` unchanged.

    :param failed: called with the `ProtocolError` when data cannot be
        protected; it should close the connection.  Default: abort it.
    """

    def __init__(self, transport: Any, protection: IStreamProtection,
                 failed: Callable[[ProtocolError], None] | None = None) -> None:
        self.transport = transport
        self.protection = protection
        self.failed = failed

    def write(self, data: bytes) -> None:
        if not data:
            return
        try:
            protected = self.protection.protect(data)
        except ProtocolError as error:
            if self.failed is not None:
                self.failed(error)
            else:
                self.transport.abortConnection()
            return
        self.transport.write(protected)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        self.transport.abortConnection()

    def loseWriteConnection(self) -> None:
        self.transport.loseWriteConnection()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def __getattr__(self, name: str) -> Any:
        # connected, disconnecting, setTcpNoDelay, ...: the real transport's.
        return getattr(self.transport, name)

    def __repr__(self) -> str:
        return f"<ProtectedTransport {self.protection.name} over {self.transport!r}>"
