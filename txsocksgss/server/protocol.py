"""
The Twisted driver of the SOCKS session machine: one client connection on
any Twisted transport (``tcp:``, ``ssl:``, ``unix:``, ``haproxy:``,
``systemd:``, or a connection adopted from the bare-socket driver).

Theory of operation.  `SOCKS5ServerProtocol` owns no session logic: the
`txsocksgss.server.negotiation.SessionMachine` decides everything, and
this protocol carries it out as its `txsocksgss.interfaces.ISessionIO`.
It feeds the machine what the transport delivers (unprotected first, once
a GSS-API protection is installed as a `ProtectedTransport` under it),
writes what the machine sends (straight onto the socket when the transport
is a plain connection holding nothing: Twisted's own write would wait for
the next reactor turn), connects with the connector `splice_chosen` picks,
builds the tunnel (the zero-copy `SpliceRelay` when nothing stands in its
way, else the ordinary `Relay`), starts BIND and UDP ASSOCIATE, and closes.

What stays here because it is about the transport: behind a PROXY-protocol
listener (``haproxy:``) the session begins only once the header has named
the real client; and a connection the session has closed, but whose
client never reads the last bytes (so the close cannot complete), is
aborted after another negotiation timeout (another idle timeout after a
tunnel).
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss._twisted_internals import awaiting_proxy_header, has_pending_writes
from txsocksgss.errors import ProtocolError
from txsocksgss.interfaces import ISessionIO, IStreamProtection
from txsocksgss.protection import ProtectedTransport
from txsocksgss.server.bind import BindCommand
from txsocksgss.server.connector import ReactorConnector
from txsocksgss.server.context import ServerContext
from txsocksgss.server.direct import DirectConnector
from txsocksgss.server.negotiation import SessionMachine, SessionState
from txsocksgss.server.outcomes import Outcome
from txsocksgss.server.relay import Relay, UpstreamProtocol
from txsocksgss.server.splice import SpliceRelay, plain_connection, splice_chosen
from txsocksgss.server.udp import UDPAssociateCommand

__all__ = ["ServerContext", "SessionState", "SOCKS5ServerProtocol", "SOCKSServerFactory", "write_now"]

_log = Logger()


@implementer(IHalfCloseableProtocol, ISessionIO)
class SOCKS5ServerProtocol(Protocol):
    """
    One client connection (SOCKS 5, or SOCKS 4/4a); see the module
    docstring.  ``observers`` follow each session's record (metrics).
    ``machine`` is set before the connection is made when the connection
    is adopted with its session under way.
    """

    def __init__(self, context: ServerContext, observers: tuple[Any, ...] | list[Any] = ()) -> None:
        self.context = context
        self.observers = observers
        self.machine: SessionMachine | None = None
        #: The tunnel, once relaying through this transport.
        self.relay: Relay | SpliceRelay | None = None
        self.protection: IStreamProtection | None = None
        self._linger: IDelayedCall | None = None
        self._proxy_header_timer: IDelayedCall | None = None

    # -- what the tests and metrics read ------------------------------------

    @property
    def state(self) -> SessionState:
        return self.machine.state if self.machine is not None else SessionState.GREETING

    @property
    def record(self) -> Any:
        return self.machine.record if self.machine is not None else None

    # -- Twisted protocol -----------------------------------------------------

    def connectionMade(self) -> None:
        if self.machine is not None:
            return  # adopted: the session goes on (`adopt`)
        self.machine = SessionMachine(self.context, self, self.observers)
        if awaiting_proxy_header(self.transport):
            # Behind a PROXY-protocol listener (haproxy:) whose header has not
            # arrived: the peer is still the balancer.  Admission, the record
            # and the logs wait for the client's real address, but a deadline
            # runs already.
            self._proxy_header_timer = self.context.reactor.callLater(
                self.context.negotiation_timeout, self._proxyHeaderTimedOut)
            return
        self._begin()

    def adopt(self, machine: SessionMachine) -> None:
        """Carry on with ``machine``'s session (before the connection is made)."""
        self.machine = machine
        machine.adopt(self)

    def _begin(self) -> None:
        assert self.machine is not None and self.transport is not None
        peer: Any = self.transport.getPeer()
        host: Any = self.transport.getHost()
        client = (peer.host, peer.port) if getattr(peer, "host", None) is not None else None
        server = (host.host, host.port) if getattr(host, "host", None) is not None else None
        self.machine.begin(client, server)

    def _proxyHeaderTimedOut(self) -> None:
        self._proxy_header_timer = None
        _log.info("no PROXY protocol header within the negotiation timeout; connection closed")
        self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        machine = self.machine
        assert machine is not None
        if self._proxy_header_timer is not None:
            timer, self._proxy_header_timer = self._proxy_header_timer, None
            timer.cancel()
            self._begin()
            if machine.state is SessionState.CLOSED:  # refused at admission
                return
        if self.protection is not None:
            try:
                data = self.protection.unprotect(data)
            except ProtocolError as error:
                machine.protectionFailed(error)
                return
        if self.relay is not None:
            self.relay.fromClient(data)
        else:
            machine.dataReceived(data)

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.clientEOF()
        elif self.machine is not None:
            self.machine.eofReceived()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._proxy_header_timer is not None:
            timer, self._proxy_header_timer = self._proxy_header_timer, None
            timer.cancel()
            return  # no session began
        if self.machine is not None:
            self.machine.connectionLost()
        self._cancelLinger()

    # -- ISessionIO -------------------------------------------------------------

    def send(self, data: bytes) -> None:
        write_now(self.transport, data)

    def installProtection(self, protection: IStreamProtection) -> None:
        assert self.machine is not None
        self.protection = protection
        self.transport = ProtectedTransport(self.transport, protection, self.machine.protectionFailed)

    def connect(self, addresses: list[str], port: int, timeout: float | None,
                onConnected: Callable[..., bool], onFailed: Callable[[Failure], None]) -> Any:
        reactor = self.context.reactor
        if splice_chosen(self.context, self.protection, self.transport):
            # The tunnel will be spliced: its upstream needs no Twisted
            # transport at all.
            return DirectConnector(reactor, addresses, port, timeout, onConnected, onFailed)
        return ReactorConnector(reactor, addresses, port, timeout, onConnected, onFailed)

    def openTunnel(self, upstream: Any, reply: bytes, onEnd: Callable[[Outcome], None]) -> tuple[Any, bytes]:
        context = self.context
        if isinstance(upstream, socket.socket):  # from DirectConnector: spliced
            rest = send_now(self.transport, reply)
            self.relay = SpliceRelay(self.transport, upstream, context.reactor, context.idle_timeout, onEnd)
            return self.relay, rest
        assert isinstance(upstream, UpstreamProtocol) and upstream.transport is not None
        splice = (not upstream.hasEarlyData()
                  and splice_chosen(context, self.protection, self.transport, upstream.transport))
        # The splice relay takes the socket over: only if the reply is all on it.
        if write_now(self.transport, reply) and splice:
            self.relay = SpliceRelay(self.transport, upstream.transport, context.reactor, context.idle_timeout,
                                     onEnd, upstreamProtocol=upstream)
        else:
            self.relay = Relay(self.transport, upstream.transport, context.reactor,  # type: ignore[arg-type]
                               context.idle_timeout, onEnd, upstreamProtocol=upstream)
        return self.relay, b""

    def tunnelEnded(self, tunnel: Any) -> None:
        assert self.machine is not None
        if (not self.machine.lost and not tunnel.closed_at_once and self.context.idle_timeout
                and self._linger is None):
            # The client may still be reading the tunnel's last bytes; one
            # that reads nothing for an idle period is not let hold its place.
            self._linger = self.context.reactor.callLater(self.context.idle_timeout, self._lingerTimedOut)

    def openBind(self, context: Any, destination: Any) -> BindCommand:
        return BindCommand(context, destination)

    def openUDP(self, context: Any, declared: Any) -> UDPAssociateCommand:
        return UDPAssociateCommand(context, declared)

    def close(self, abort: bool) -> None:
        transport: Any = self.transport
        if abort:
            transport.abortConnection()
            return
        transport.loseConnection()
        if self._linger is None and not (self.machine is not None and self.machine.lost):
            # loseConnection waits for the reply to be read; a client that
            # never reads would hold its place forever.
            self._linger = self.context.reactor.callLater(self.context.negotiation_timeout, self._lingerTimedOut)

    # -- endings ------------------------------------------------------------------

    def _lingerTimedOut(self) -> None:
        self._linger = None
        _log.info("client {client} did not let go of its closed connection; aborting it",
                  client=self.record.client if self.record else "-")
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _cancelLinger(self) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None


def send_now(transport: Any, data: bytes) -> bytes:
    """
    Send ``data`` straight onto the socket of ``transport`` (a plain
    connection with nothing buffered: a tunnel about to be spliced); what
    the socket does not take now is returned (all of it if the send failed:
    the relay, sending it again, meets the error and ends the tunnel).
    """
    connection = plain_connection(transport)
    assert connection is not None
    try:
        sent = connection.socket.send(data)
    except OSError:
        sent = 0
    return data[sent:]


def write_now(transport: Any, data: bytes) -> bool:
    """
    Write ``data`` on ``transport``, straight onto the socket when the
    transport is a plain connection (`plain_connection`) with nothing in its
    buffer: Twisted's own write would wait for the next turn of the reactor,
    a registration and a wake-up more per message.  What the socket does
    not take goes through the transport, in order.  True if all of it is on
    the socket (a splice relay may then take the socket over).
    """
    connection = plain_connection(transport)
    if connection is None or connection.disconnecting or has_pending_writes(connection):
        transport.write(data)
        return False
    try:
        sent = connection.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        transport.write(data)  # the transport meets the error itself and reports the loss
        return False
    if sent < len(data):
        transport.write(data[sent:])
        return False
    return True


class SOCKSServerFactory(Factory):
    """
    Builds a `SOCKS5ServerProtocol` per connection, all sharing one
    `ServerContext`.  ``protocolFor`` may be replaced.
    """

    def __init__(self, context: ServerContext,
                 protocolFor: Callable[[ServerContext], Protocol] | None = None) -> None:
        self.context = context
        self._protocolFor = protocolFor or SOCKS5ServerProtocol

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = self._protocolFor(self.context)
        protocol.factory = self
        return protocol
