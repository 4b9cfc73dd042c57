"""
UDP ASSOCIATE through a SOCKS 5 proxy (RFC 1928 s4, s7).

`associateUDP` opens the TCP control connection, asks for an association,
binds a local UDP socket and gives the caller's DatagramProtocol a
transport-like `UDPAssociation`: ``write(data, (host, port))`` sends through
the relay (host may be a name the proxy resolves), and ``datagramReceived``
gets the payload with the address of the host that sent it.  The
association lives as long as the TCP connection: when either side closes it,
the UDP socket closes and the protocol is stopped.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from txsocksgss.client.endpoints import SOCKS5ClientEndpoint, run_handshake
from txsocksgss.client.protocol import SOCKSConnection, _HandshakeProtocol
from txsocksgss.errors import ProtocolError
from txsocksgss.wire.socks5 import Address, Command
from txsocksgss.wire.udp import UDPDatagram, parse_udp_datagram

__all__ = ["UDPAssociation", "associateUDP"]

_log = Logger()

# The largest UDP payload (Twisted's default of 8192 would truncate silently).
_MAX_DATAGRAM = 65535


class UDPAssociation:
    """
    The transport a DatagramProtocol gets for a UDP association.

    :ivar relay: (host, port) of the proxy's UDP relay.
    :ivar closed: fires when the association has ended.
    """

    def __init__(self, handshake: _HandshakeProtocol, relay: tuple[str, int], protocol: DatagramProtocol) -> None:
        self.handshake = handshake
        self.relay = relay
        self.protocol = protocol
        self.closed: Deferred[None] = Deferred()
        self.dropped = 0
        self._port: Any = None

    def _start(self, reactor: Any, interface: str) -> None:
        self._port = reactor.listenUDP(0, _RelaySide(self), interface=interface, maxPacketSize=_MAX_DATAGRAM)
        self.protocol.makeConnection(self)  # type: ignore[arg-type]
        self.handshake.controlLost.addCallback(lambda _: self._ended())

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send ``data`` to ``addr`` (host or IP, port) through the relay."""
        if self._port is None:
            raise RuntimeError("the UDP association is closed")
        packet = UDPDatagram(0, Address.of(addr[0], addr[1]), data).serialize()
        protection = getattr(self.handshake, "protection", None)
        if protection is not None:
            packet = protection.protectDatagram(packet)
        self._port.write(packet, self.relay)

    def getHost(self) -> Any:
        """The local UDP address datagrams are sent from."""
        return self._port.getHost() if self._port is not None else None

    def close(self) -> Deferred[None]:
        """End the association (closes the TCP connection); fires when done."""
        if self.handshake.transport is not None:
            self.handshake.transport.loseConnection()
        return self.closed

    stopListening = loseConnection = close

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr != self.relay:
            self.dropped += 1
            return
        protection = getattr(self.handshake, "protection", None)
        try:
            if protection is not None:
                data = protection.unprotectDatagram(data)
            datagram = parse_udp_datagram(data)
        except ProtocolError as error:
            self.dropped += 1
            _log.debug("dropped a malformed datagram from the relay: {error}", error=error)
            return
        if datagram.frag != 0:
            self.dropped += 1
            return
        self.protocol.datagramReceived(datagram.data, (datagram.destination.host, datagram.destination.port))

    def _ended(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            port.stopListening()
            self.protocol.doStop()
        if not self.closed.called:
            self.closed.callback(None)


class _RelaySide(DatagramProtocol):
    noisy = False

    def __init__(self, association: UDPAssociation) -> None:
        self.association = association

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.association._received(data, (addr[0], addr[1]))


def associateUDP(
    endpoint: SOCKS5ClientEndpoint, protocol: DatagramProtocol, reactor: Any = None
) -> Deferred[UDPAssociation]:
    """
    Ask ``endpoint``'s proxy for a UDP association and connect ``protocol`` to it.

    ``endpoint``'s destination is the address the client declares it will
    send from (RFC 1928 s4; 0.0.0.0 port 0 when unknown, which is usual).
    Fires with the `UDPAssociation`; fails like ``endpoint.connect``.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    handshake = endpoint.handshake(Command.UDP_ASSOCIATE, None)

    def granted(connection: SOCKSConnection) -> UDPAssociation:
        transport = handshake.transport
        assert transport is not None
        bound = connection.bound
        relay_host = bound.host
        try:
            usable = not ipaddress.ip_address(relay_host).is_unspecified
        except ValueError:  # a host name: send to the address we reached the proxy on
            usable = False
        if not usable:
            relay_host = transport.getPeer().host  # type: ignore[attr-defined]
        local = transport.getHost().host  # type: ignore[attr-defined]
        association = UDPAssociation(handshake, (relay_host, bound.port), protocol)
        try:
            association._start(reactor, local)
        except Exception:
            transport.loseConnection()
            raise
        return association

    d: Deferred[Any] = run_handshake(endpoint.proxy, handshake, lambda h: h.established)
    return d.addCallback(granted)
