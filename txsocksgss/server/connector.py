"""
The outgoing connection of a CONNECT through the reactor's ``connectTCP``:
the connector of tunnels that are not spliced (the other connector,
`txsocksgss.server.direct.DirectConnector`, connects bare sockets for the
splice tunnel).  Both are `txsocksgss.interfaces.IConnector` and report the
same way: ``onConnected(upstream, bound)`` or ``onFailed(failure)``.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.interfaces import IConnector
from txsocksgss.server.negotiation import format_endpoint
from txsocksgss.server.relay import UpstreamProtocol
from txsocksgss.wire.socks5 import Address

__all__ = ["ReactorConnector"]


@implementer(IConnector)
class ReactorConnector(ClientFactory):
    """
    Tries ``addresses`` in order on ``port`` with ``reactor.connectTCP``
    (each for at most ``timeout`` seconds if given; the last failure wins).
    ``onConnected(upstream, bound)`` gets the `UpstreamProtocol` of the
    connection and its local address; if it returns False the connection
    is closed.  `cancel` stops the attempt under way; nothing is reported
    after it.
    """

    noisy = False

    def __init__(self, reactor: Any, addresses: list[str], port: int, timeout: float | None,
                 onConnected: Callable[[UpstreamProtocol, Address], bool],
                 onFailed: Callable[[Failure], None]) -> None:
        self._reactor = reactor
        self._remaining = list(addresses)
        self._port = port
        self._timeout = timeout
        self._onConnected = onConnected
        self._onFailed = onFailed
        self._address = ""
        self._connector: Any = None
        self._finished = False

    def start(self) -> None:
        self._address = self._remaining.pop(0)
        self._connector = self._reactor.connectTCP(self._address, self._port, self, timeout=self._timeout)

    def describe(self) -> str:
        return f"connecting to {format_endpoint(self._address, self._port)}"

    def buildProtocol(self, addr: Any) -> UpstreamProtocol:
        upstream = UpstreamProtocol()
        upstream.onConnected = self._connected
        return upstream

    def _connected(self, upstream: UpstreamProtocol) -> None:
        self._finished = True
        assert upstream.transport is not None
        bound: Any = upstream.transport.getHost()
        if not self._onConnected(upstream, Address.of(bound.host, bound.port)):
            upstream.transport.loseConnection()

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if self._finished:
            return
        if self._remaining:
            self.start()
            return
        self._finished = True
        self._onFailed(reason)

    def cancel(self) -> None:
        if not self._finished:
            self._finished = True
            self._connector.stopConnecting()
