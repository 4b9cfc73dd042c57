"""
BIND through a SOCKS proxy (RFC 1928 s4, SOCKS 4 "BIND"): ask the proxy to
accept one inbound connection for us.

    pending = await bindThroughProxy(SOCKS5ClientEndpoint(proxy, "ftp.example", 0), factory)
    tell_the_peer(pending.address)          # first reply: where the proxy listens
    connection = await pending.accepted     # second reply: who connected

The endpoint's destination names the host expected to connect (0.0.0.0 for
any, where the proxy allows it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory

from txsocksgss.client.endpoints import SOCKS4ClientEndpoint, SOCKS5ClientEndpoint, cancellable, run_handshake
from txsocksgss.client.protocol import SOCKSConnection, _HandshakeProtocol
from txsocksgss.wire.socks4 import SOCKS4Command
from txsocksgss.wire.socks5 import Address, Command

__all__ = ["PendingBind", "bindThroughProxy"]


@dataclass
class PendingBind:
    """
    A BIND the proxy granted (first reply).

    :ivar address: where the proxy listens for the inbound connection.
    :ivar accepted: fires with a `SOCKSConnection` (the application protocol,
        connected, and the connecting host's address as ``bound``) after the
        second reply; cancelling it closes the proxy connection.
    """

    address: Address
    accepted: Deferred[SOCKSConnection]
    handshake: _HandshakeProtocol

    def cancel(self) -> None:
        """Give up waiting: close the connection to the proxy."""
        self.accepted.cancel()


def bindThroughProxy(
    endpoint: SOCKS5ClientEndpoint | SOCKS4ClientEndpoint, factory: IProtocolFactory
) -> Deferred[PendingBind]:
    """
    Send a BIND request through ``endpoint``'s proxy, for an inbound
    connection from ``endpoint``'s destination host.

    Fires with a `PendingBind` after the first reply; fails like
    ``endpoint.connect`` (a `txsocksgss.errors.SOCKSReplyError` subclass for
    a failure reply).  ``factory`` builds the protocol for the inbound
    connection.
    """
    handshake: _HandshakeProtocol
    if isinstance(endpoint, SOCKS5ClientEndpoint):
        handshake = endpoint.handshake(Command.BIND, factory)
    else:
        handshake = endpoint.handshake(SOCKS4Command.BIND, factory)

    def granted(address: Address) -> PendingBind:
        return PendingBind(address, cancellable(handshake.established, handshake), handshake)

    def refused(failure: Any) -> Any:
        # The same error fails `established`, which nobody will wait on now.
        handshake.established.addErrback(lambda _: None)
        return failure

    d: Deferred[Any] = run_handshake(endpoint.proxy, handshake, lambda h: h.firstReply)
    return d.addCallbacks(granted, refused)
