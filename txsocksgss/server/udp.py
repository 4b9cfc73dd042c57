"""
The SOCKS 5 UDP ASSOCIATE command (RFC 1928 s4, s7).

Theory of operation.  The server opens a client-facing UDP port (on
``ServerContext.external`` or the address the client reached the server on)
and answers with its address.  Each datagram arriving there carries
``RSV FRAG ATYP DST.ADDR DST.PORT DATA``; it is accepted only from the
client's IP address (and the port the request declared, when not zero; else
the first datagram fixes the port).  Datagrams with FRAG != 0 are dropped:
fragmentation is optional in RFC 1928 and nobody implements it.  The
destination is resolved, asked of the access policy (command ``udp``, per
datagram) and the payload is sent from a separate outward socket, one per
address family.  Datagrams coming back to an outward socket are relayed to
the client, with the header naming their source, only from a host and port
the client has sent to.  The association ends with its TCP connection.

Bad datagrams are dropped and counted, never answered: UDP has no error
channel in SOCKS.  With a per-message protection (GSS-API), each datagram
to and from the client is one protected token.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from txsocksgss.errors import ProtocolError
from txsocksgss.interfaces import ICommand
from txsocksgss.server.idle import IdleTimer
from txsocksgss.server.outbound import resolve
from txsocksgss.server.outcomes import IDLE_TIMEOUT, Outcome, OutcomeKind
from txsocksgss.wire.socks5 import Address, ReplyCode
from txsocksgss.wire.udp import UDPDatagram, parse_udp_datagram

__all__ = ["UDPAssociateCommand"]

_log = Logger()

# The largest UDP payload (Twisted's default of 8192 would truncate silently).
_MAX_DATAGRAM = 65535

# Destinations the client may send to within one association; replies are
# accepted only from these.
_MAX_PEERS = 4096
# Datagrams waiting for a DNS answer, per association, and their bytes.
_MAX_PENDING_LOOKUPS = 64
_MAX_PENDING_BYTES = 256 * 1024
# Names resolved once per association.
_MAX_CACHED_NAMES = 256


def _normalize(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class _ClientSide(DatagramProtocol):
    def __init__(self, association: "UDPAssociateCommand") -> None:
        self.association = association

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.association.fromClient(data, addr)


class _RemoteSide(DatagramProtocol):
    def __init__(self, association: "UDPAssociateCommand") -> None:
        self.association = association

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.association.fromRemote(data, addr)


@implementer(ICommand)
class UDPAssociateCommand:
    """
    The UDP relay of one session.  ``session`` is its command context, the
    session machine (`txsocksgss.server.negotiation.SessionMachine`): its
    ``context``, ``client``, ``protection``, ``record``, `listeningInterface`,
    `decide`, `sendReply`, `associationStarted` and `closeWith`.
    """

    def __init__(self, session: Any, declared: Address) -> None:
        self.session = session
        self.declared = declared
        self.protection = getattr(session, "protection", None)
        self.bytes_from_client = 0
        self.bytes_to_client = 0
        self.dropped = 0
        self._client_host = _normalize(session.client[0] if session.client is not None else "")
        self._client_port: int | None = declared.port or None
        self._client_side: Any = None
        self._remote_sides: dict[int, Any] = {}
        self._peers: set[tuple[str, int]] = set()
        self._names: dict[str, list[str]] = {}
        self._lookups = 0
        self._pending_bytes = 0
        self._open_call: Any = None
        self._stopped = False
        self._idle = IdleTimer(session.context.reactor, session.context.idle_timeout,
                               lambda: self.session.closeWith(IDLE_TIMEOUT))

    def start(self) -> None:
        interface = self.session.listeningInterface()
        if interface is None or not self._client_host:
            self.session.closeWith(Outcome(OutcomeKind.COMMAND_ERROR,
                                           "UDP ASSOCIATE needs a TCP listener and, on others, --external ADDRESS"),
                                   ReplyCode.GENERAL_FAILURE)
            return
        # Sockets are opened on the next reactor turn, not while this poll's
        # events are dispatched (see BindCommand: twisted#4759).
        self._open_call = self.session.context.reactor.callLater(0, self._open, interface)

    def _open(self, interface: str) -> None:
        self._open_call = None
        context = self.session.context
        for family, wildcard in ((4, "0.0.0.0"), (6, "::")):
            try:
                self._remote_sides[family] = context.reactor.listenUDP(
                    0, _RemoteSide(self), interface=wildcard, maxPacketSize=_MAX_DATAGRAM)
            except Exception:  # no IPv6 here: datagrams to IPv6 destinations are dropped
                pass
        try:
            self._client_side = context.reactor.listenUDP(0, _ClientSide(self), interface=interface, maxPacketSize=_MAX_DATAGRAM)
        except Exception as error:  # CannotListenError and friends
            self.session.closeWith(Outcome(OutcomeKind.COMMAND_ERROR, f"UDP ASSOCIATE: cannot listen on {interface}: {error}"),
                                   ReplyCode.GENERAL_FAILURE)
            return
        bound = self._client_side.getHost()
        self.session.sendReply(ReplyCode.SUCCEEDED, Address.of(bound.host, bound.port))
        self.session.associationStarted()
        self._idle.start()

    def stop(self) -> None:
        """End the association: close every socket."""
        if self._stopped:
            return
        self._stopped = True
        if self._open_call is not None and self._open_call.active():
            self._open_call.cancel()
        self._open_call = None
        self._idle.stop()
        sides = [self._client_side, *self._remote_sides.values()]
        self._client_side = None
        self._remote_sides.clear()
        for side in sides:
            if side is not None:
                side.stopListening()

    # -- client -> destination ---------------------------------------------

    def fromClient(self, data: bytes, addr: tuple[str, int]) -> None:
        host, port = _normalize(addr[0]), addr[1]
        if host != self._client_host or (self._client_port is not None and port != self._client_port):
            self._drop("from {source}: not the associated client", source=f"{host}:{port}")
            return
        if self.protection is not None:
            try:
                data = self.protection.unprotectDatagram(data)
            except ProtocolError as error:
                self._drop("unprotect failed: {error}", error=error)
                return
        try:
            datagram = parse_udp_datagram(data)
        except ProtocolError as error:
            self._drop("malformed datagram: {error}", error=error)
            return
        # Only a datagram that verified and parsed fixes the client's port:
        # a forged one from the client's host cannot take the association.
        self._client_port = port
        self._idle.active = True
        if datagram.frag != 0:
            self._drop("fragment {frag} (fragmentation is not supported)", frag=datagram.frag)
            return
        self.bytes_from_client += len(datagram.data)
        destination = datagram.destination
        cached = self._names.get(destination.host)
        if cached is not None:
            self._sendAllowed(cached, destination, datagram.data)
            return
        if self._lookups >= _MAX_PENDING_LOOKUPS or self._pending_bytes + len(datagram.data) > _MAX_PENDING_BYTES:
            self._drop("too many datagrams waiting for name resolution")
            return
        self._lookups += 1
        self._pending_bytes += len(datagram.data)
        d: Deferred[list[str]] = resolve(self.session.context.resolver, destination.host, destination.port)

        def resolved(addresses: list[str]) -> None:
            self._lookups -= 1
            self._pending_bytes -= len(datagram.data)
            if len(self._names) < _MAX_CACHED_NAMES:
                self._names[destination.host] = addresses
            self._sendAllowed(addresses, destination, datagram.data)

        def failed(failure: Any) -> None:
            self._lookups -= 1
            self._pending_bytes -= len(datagram.data)
            self._drop("{host} did not resolve: {error}", host=destination.host,
                       error=failure.getErrorMessage())

        d.addCallbacks(resolved, failed)

    def _sendAllowed(self, addresses: list[str], destination: Address, payload: bytes) -> None:
        if self._stopped:
            return
        for address in addresses:
            decision = self.session.decide("udp", destination.host, destination.port, address)
            if decision.allowed:
                self._send(address, destination.port, payload)
                return
        self.dropped += 1

    def _send(self, address: str, port: int, payload: bytes) -> None:
        family = ipaddress.ip_address(address).version
        side = self._remote_sides.get(family)
        if side is None:
            self._drop("no IPv{family} socket for {address}", family=family, address=address)
            return
        if len(self._peers) < _MAX_PEERS:
            self._peers.add((address, port))
        side.write(payload, (address, port))

    # -- destination -> client ---------------------------------------------

    def fromRemote(self, data: bytes, addr: tuple[str, int]) -> None:
        source = (_normalize(addr[0]), addr[1])
        if source not in self._peers:
            self._drop("reply from {source}, which the client never sent to",
                       source=f"{source[0]}:{source[1]}")
            return
        if self._client_port is None or self._client_side is None:
            return
        self._idle.active = True
        packet = UDPDatagram(0, Address.of(source[0], source[1]), data).serialize()
        if self.protection is not None:
            try:
                packet = self.protection.protectDatagram(packet)
            except ProtocolError as error:  # too large to wrap, or the context expired
                self._drop("cannot protect it: {error}", error=error)
                return
        self.bytes_to_client += len(data)
        self._client_side.write(packet, (self._client_host, self._client_port))

    def _drop(self, why: str, **fields: Any) -> None:
        self.dropped += 1
        _log.debug("UDP association of {client}: dropped datagram " + why,
                   client=self.session.record.client if self.session.record else "-", **fields)
