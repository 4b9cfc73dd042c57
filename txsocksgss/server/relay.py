"""
The byte relay between a SOCKS client and the host it reached.

Theory of operation.  Two connections, the client's and the destination's
(upstream), are joined after the success reply.  Each is registered as a
streaming producer on the other's transport, so when one side's write buffer
fills (a slow reader), Twisted pauses reading from the other side: memory
stays bounded by the transports' buffers, whatever the speeds.  End of
stream is propagated as a half-close (shutdown of the write side); the relay
ends when both directions have seen EOF, or at once when either side resets
or closes.  Bytes are passed on as they arrive, with no copy and no
per-byte work, and counted for the session log.

An idle timer closes both sides when no byte has moved either way for
``idle_timeout`` seconds; activity only sets a flag, so the hot path pays
nothing for it.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.interfaces import ITunnel
from txsocksgss.server.idle import IdleTimer
from txsocksgss.server.outcomes import CLIENT_CLOSED, CLOSED, IDLE_TIMEOUT, UPSTREAM_CLOSED, Outcome

__all__ = ["Relay", "UpstreamProtocol"]


@implementer(ITunnel)
class Relay:
    """
    Joins ``client`` and ``upstream`` transports; see the module docstring.

    The owner calls `fromClient`/`fromUpstream` with received bytes,
    `clientEOF`/`upstreamEOF` on half-close and `clientLost`/`upstreamLost`
    when a connection is gone.  ``onEnd`` is called once, with a short
    outcome string, when the relay is over.
    """

    def __init__(
        self,
        client: ITransport,
        upstream: ITransport,
        clock: IReactorTime,
        idle_timeout: float | None,
        onEnd: Callable[[Outcome], None],
        upstreamProtocol: "UpstreamProtocol | None" = None,
    ) -> None:
        self.client = client
        self._upstream_protocol = upstreamProtocol
        self.upstream = upstream
        self.bytes_from_client = 0
        self.bytes_from_upstream = 0
        self._onEnd = onEnd
        self._client_eof = False
        self._upstream_eof = False
        self._ended = False
        self._idle = IdleTimer(clock, idle_timeout, lambda: self.close(IDLE_TIMEOUT))
        #: Always False here: the client's transport closes once it has
        #: written what it holds, which a client that never reads can delay.
        self.closed_at_once = False

    def start(self, toUpstream: bytes = b"", toClient: bytes = b"") -> None:
        """
        Register the flow control both ways and arm the idle timer; then
        ``toClient`` (the rest of the reply, not tunnel bytes) and
        ``toUpstream`` (what the client sent early) go first, and the
        upstream protocol (if given) feeds the relay what it holds.
        """
        self.upstream.registerProducer(self.client, True)  # type: ignore[attr-defined]
        self.client.registerProducer(self.upstream, True)  # type: ignore[attr-defined]
        self._idle.start()
        if toClient:
            self.client.write(toClient)
        if toUpstream:
            self.fromClient(toUpstream)
        if self._upstream_protocol is not None:
            self._upstream_protocol.attach(self)

    def fromClient(self, data: bytes) -> None:
        self._idle.active = True
        self.bytes_from_client += len(data)
        self.upstream.write(data)

    def fromUpstream(self, data: bytes) -> None:
        self._idle.active = True
        self.bytes_from_upstream += len(data)
        self.client.write(data)

    def clientEOF(self) -> None:
        """The client shut down its sending side: pass the EOF upstream."""
        if self._ended:  # the other side already ended it, in the same poll
            return
        self._client_eof = True
        self.upstream.unregisterProducer()  # type: ignore[attr-defined]
        _halfClose(self.upstream)
        self._endIfDone()

    def upstreamEOF(self) -> None:
        """The destination shut down its sending side: pass the EOF to the client."""
        if self._ended:  # the other side already ended it, in the same poll
            return
        self._upstream_eof = True
        self.client.unregisterProducer()  # type: ignore[attr-defined]
        _halfClose(self.client)
        self._endIfDone()

    def clientLost(self, reason: Failure | None = None) -> None:
        self._end(CLIENT_CLOSED, self.upstream)

    def upstreamLost(self, reason: Failure | None = None) -> None:
        self._end(UPSTREAM_CLOSED, self.client)

    def close(self, outcome: Outcome) -> None:
        """End the relay now (shutdown, timeout): close both connections."""
        if self._end(outcome, self.upstream):
            self.client.loseConnection()

    def _endIfDone(self) -> None:
        if self._client_eof and self._upstream_eof:
            if self._end(CLOSED, self.upstream):
                self.client.loseConnection()

    def _end(self, outcome: Outcome, other: ITransport) -> bool:
        if self._ended:
            return False
        self._ended = True
        self._idle.stop()
        other.loseConnection()
        self._onEnd(outcome)
        return True


def _halfClose(transport: ITransport) -> None:
    loseWrite = getattr(transport, "loseWriteConnection", None)
    if loseWrite is None:
        transport.loseConnection()
    else:
        loseWrite()


@implementer(IHalfCloseableProtocol)
class UpstreamProtocol(Protocol):
    """
    The protocol on the connection to the destination (CONNECT) or from the
    remote host (BIND).  It feeds a `Relay` once one is attached and holds
    what arrives before that.  ``onConnected``, if set, is called with the
    protocol when the connection is made.
    """

    onConnected: Callable[["UpstreamProtocol"], None] | None = None

    def __init__(self) -> None:
        self.relay: Relay | None = None
        self._early: list[bytes] = []
        self._early_eof = False
        self._lost: Failure | None = None

    def attach(self, relay: Relay) -> None:
        self.relay = relay
        early, self._early = self._early, []
        for chunk in early:
            relay.fromUpstream(chunk)
        if self._lost is not None:
            relay.upstreamLost(self._lost)
        elif self._early_eof:
            relay.upstreamEOF()

    def connectionMade(self) -> None:
        if self.onConnected is not None:
            self.onConnected(self)

    def hasEarlyData(self) -> bool:
        """Whether anything (bytes, EOF, loss) arrived before a relay was attached."""
        return bool(self._early) or self._early_eof or self._lost is not None

    def dataReceived(self, data: bytes) -> None:
        if self.relay is None:
            self._early.append(data)
        else:
            self.relay.fromUpstream(data)

    def readConnectionLost(self) -> None:
        if self.relay is None:
            self._early_eof = True
        else:
            self.relay.upstreamEOF()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        if self.relay is None:
            self._lost = reason
        else:
            self.relay.upstreamLost(reason)
