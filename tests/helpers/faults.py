"""
The rig of the fault tests: `FaultTestCase` runs a server on 127.0.0.1 with
an echo destination (that resets on ``RESET``) and a bystander session that
must outlive each fault; `whenSessionEnds` and `whenLeft` wait on a
server session without a timer.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from tests.helpers.clients import ScriptedClient, StreamCollector
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.logs import lines_with
from tests.helpers.servers import EchoFactory
from txsocksgss.server.negotiation import SessionMachine, SessionState
from txsocksgss.wire.socks5 import Address, Command, ReplyCode, Request

__all__ = ["FaultTestCase", "whenLeft", "whenSessionEnds"]


class FaultTestCase(IntegrationTestCase):
    #: The zero-copy relay where the platform has it; subclasses also run the ordinary one.
    splice = True

    def startSOCKS(self, **config: Any) -> tuple[int, Any]:
        config.setdefault("splice", self.splice)
        return super().startSOCKS(**config)

    def setUp(self) -> None:
        self.logs = self.captureLogs()
        self.echo = EchoFactory(reset_on=b"RESET")
        self.echo_port = self.listen(self.echo)
        self.addCleanup(self.echo.whenAllClosed)

    @inlineCallbacks
    def bystander(self, socks_port: int) -> Any:
        """A session relaying to the echo server, to prove it outlives the fault."""
        client = yield self.connectScripted(socks_port,
                                            Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.SUCCEEDED)
        yield self.assertAlive(client)
        return client

    @inlineCallbacks
    def assertAlive(self, client: ScriptedClient) -> Any:
        token = os.urandom(8).hex().encode()
        before = len(client.data)
        client.transport.write(token)
        data = yield client.waitForData(before + len(token))
        self.assertEqual(data[before:], token)

    def connectRaw(self, socks_port: int) -> Deferred[StreamCollector]:
        client = StreamCollector()
        d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port), client)

        def cleanup() -> Any:
            if client.transport is not None and client.transport.connected:
                client.transport.abortConnection()
            return client.lost

        self.addCleanup(cleanup)
        return d

    def sessionLine(self, *outcomes: str) -> str:
        """The one session log line whose outcome starts with one of ``outcomes``."""
        lines = [line for outcome in outcomes for line in lines_with(self.logs, f"outcome={outcome}")]
        self.assertEqual(len(lines), 1, "\n".join(self.logs))
        return lines[0]

    def assertNoTimersOf(self, session: SessionMachine) -> None:
        """Neither the session machine nor its driver has a timer left."""
        owners = [getattr(call.func, "__self__", None) for call in reactor.getDelayedCalls()]
        self.assertNotIn(session, owners)
        self.assertNotIn(session.io, owners)
        self.assertIsNone(session._negotiation_timer)
        self.assertIsNone(getattr(session.io, "_linger", None))


def whenSessionEnds(factory: Any, session: SessionMachine) -> Deferred[None]:
    """Fires once ``session``'s connection is gone and the machine has been told (its connectionLost has run)."""
    done: Deferred[None] = Deferred()
    if session not in factory.context.sessions:
        done.callback(None)
        return done
    original = session.connectionLost

    def connectionLost() -> None:
        original()
        if not done.called:
            done.callback(None)

    session.connectionLost = connectionLost  # type: ignore[method-assign]
    return done


def whenLeft(session: SessionMachine, state: SessionState) -> Deferred[None]:
    """Fires once ``session`` has handled received bytes that took it out of ``state``."""
    done: Deferred[None] = Deferred()
    original = session.dataReceived

    def dataReceived(data: bytes) -> None:
        original(data)
        if session.state is not state and not done.called:
            del session.dataReceived
            done.callback(None)

    session.dataReceived = dataReceived  # type: ignore[method-assign]
    return done
