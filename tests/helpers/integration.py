"""
`IntegrationTestCase`: tests on real sockets on 127.0.0.1 -- a SOCKS server
on a free port, destination servers, scripted clients -- all torn down at
the end, leaving the reactor clean.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from tests.helpers.clients import ScriptedClient
from tests.helpers.logs import capture_logs
from tests.helpers.servers import ByteServerFactory
from txsocksgss.server.config import Config
from txsocksgss.server.service import makeServerFactory
from txsocksgss.wire.socks5 import Request

__all__ = ["IntegrationTestCase"]


class IntegrationTestCase(TestCase):
    """Starts servers on 127.0.0.1 and tears them all down, leaving the reactor clean."""

    def captureLogs(self) -> list[str]:
        """Every log event from now to the end of the test, formatted as text."""
        return capture_logs(self)

    def startSOCKS(self, **config: Any) -> tuple[int, Any]:
        """Listen with a SOCKS server built from ``Config.build(**config)``; returns (port, factory)."""
        config.setdefault("listen", ["tcp:0:interface=127.0.0.1"])
        factory = makeServerFactory(Config.build(**config), reactor)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self._stopSOCKS, port, factory)
        return port.getHost().port, factory

    @inlineCallbacks
    def _stopSOCKS(self, port: Any, factory: Any) -> Any:
        yield port.stopListening()
        factory.context.closeSessions()
        yield factory.context.whenDrained()

    def listen(self, factory: Any, interface: str = "127.0.0.1") -> int:
        port = reactor.listenTCP(0, factory, interface=interface)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def listenUDP(self, protocol: DatagramProtocol, interface: str = "127.0.0.1") -> int:
        port = reactor.listenUDP(0, protocol, interface=interface)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def byteServer(self, body: bytes, interface: str = "127.0.0.1") -> tuple[int, ByteServerFactory]:
        factory = ByteServerFactory(body)
        port = self.listen(factory, interface)
        self.addCleanup(factory.whenClosed)
        return port, factory

    def connectScripted(self, socks_port: int, request: Request) -> Deferred[ScriptedClient]:
        client = ScriptedClient(request)
        d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port), client)

        def cleanup() -> Deferred[Any]:
            if client.transport is not None and client.transport.connected:
                client.transport.loseConnection()
            return client.lost

        self.addCleanup(cleanup)
        return d
