"""
The lean outgoing connect of a CONNECT that will be spliced
(`txsocksgss.server.direct`), on real sockets: success hands a bare socket
to the splice relay (on loopback without waiting for an event); a refusal
gives REP 05; the next address is tried after a refused one; the connect
timeout and the negotiation timeout give REP 06; an event that is not the
connect's own (a stale one for a reused descriptor number) is never taken
for its outcome; a client gone while connecting leaves no socket or
registration behind; data the client sent before the reply goes first
through the splice; IPv6.  The connectTCP path (no splice) is what the
other tests with a memory reactor drive.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError, UnknownHostError
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.helpers.fakes import FakeResolver
from tests.helpers.faults import FaultTestCase, whenLeft, whenSessionEnds
from tests.helpers.ports import blackhole, free_port
from txsocksgss.server.direct import DirectConnector
from txsocksgss.server.outbound import reply_code_for
from txsocksgss.server.protocol import SessionState
from txsocksgss.server.splice import SpliceRelay
from txsocksgss.wire.socks5 import Address, AddressType, Command, ReplyCode, Request



def _taken(outcomes: list[Any]) -> Any:
    """An onConnected that keeps the socket (in ``outcomes``) and checks the bound address it is given."""

    def connected(sock: socket.socket, bound: Any) -> bool:
        assert (bound.host, bound.port) == sock.getsockname()[:2], (bound, sock)
        outcomes.append(sock)
        return True

    return connected

class _TimersFrom(Clock):
    """The real reactor's descriptors with a Clock's timers (for the connect timeout)."""

    def addWriter(self, writer: Any) -> None:
        reactor.addWriter(writer)

    def removeWriter(self, writer: Any) -> None:
        reactor.removeWriter(writer)


def _nextTurn() -> Deferred[None]:
    """Fires on the reactor's next turn (the relay closes its sockets then)."""
    return deferLater(reactor, 0, lambda: None)


class DirectConnectTests(FaultTestCase):
    def unansweredPort(self) -> int:
        """A port on 127.0.0.1 where a connect stays in progress (`blackhole`) until the test ends."""
        listener, filler = blackhole()
        self.addCleanup(listener.close)
        self.addCleanup(filler.close)
        port: int = listener.getsockname()[1]
        return port

    @inlineCallbacks
    def test_success_splices_a_bare_socket(self):
        socks_port, factory = self.startSOCKS()
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.SUCCEEDED)
        [session] = factory.context.sessions
        self.assertIsInstance(session.relay, SpliceRelay)
        upstream = session.relay.upstream
        self.assertIsInstance(upstream, socket.socket)
        # The bound address of the reply is the proxy's end of the outgoing connection.
        self.assertEqual((reply.bound.host, reply.bound.port), upstream.getsockname())
        self.assertEqual(upstream.getpeername()[1], self.echo_port)
        yield self.assertAlive(client)
        client.transport.loseConnection()
        yield client.lost
        yield factory.context.whenDrained()
        yield _nextTurn()
        self.assertEqual(upstream.fileno(), -1)
        self.assertIn("outcome=closed", self.sessionLine("closed", "client closed"))

    def test_a_loopback_connect_finishes_without_an_event(self):
        outcomes: list[Any] = []
        connector = DirectConnector(reactor, ["127.0.0.1"], self.echo_port, None, _taken(outcomes), outcomes.append)
        connector.start()
        # Reported before start() returned: no registration, no reactor turn.
        [sock] = outcomes
        self.addCleanup(sock.close)
        self.assertIsInstance(sock, socket.socket)
        self.assertEqual(sock.getpeername()[1], self.echo_port)
        self.assertNotIn(connector, reactor.getWriters())
        self.assertEqual(connector.fileno(), -1)

    @inlineCallbacks
    def test_refused_is_05(self):
        port = free_port()
        socks_port, _factory = self.startSOCKS()
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("127.0.0.1", port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.CONNECTION_REFUSED)
        yield client.lost
        self.assertIn(f"destination=127.0.0.1:{port}", self.sessionLine("connection refused: "))

    @inlineCallbacks
    def test_the_next_address_is_tried_after_a_refused_one(self):
        # Listening on 127.0.0.2 only: the same port on 127.0.0.1 refuses.
        port = self.listen(self.echo, interface="127.0.0.2")
        socks_port, factory = self.startSOCKS()
        factory.context.resolver = FakeResolver({"two.test": ["127.0.0.1", "127.0.0.2"]})
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("two.test", port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.SUCCEEDED)
        [session] = factory.context.sessions
        self.assertEqual(session.relay.upstream.getpeername()[0], "127.0.0.2")
        yield self.assertAlive(client)

    @inlineCallbacks
    def test_negotiation_timeout_while_connecting_is_06(self):
        port = self.unansweredPort()
        socks_port, factory = self.startSOCKS(negotiation_timeout=0.5)
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("127.0.0.1", port)))
        [session] = factory.context.sessions
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.TTL_EXPIRED)
        yield client.lost
        self.sessionLine(f"negotiation timeout while connecting to 127.0.0.1:{port}")
        self.assertIsNone(session._outgoing)
        self.assertFalse([w for w in reactor.getWriters() if isinstance(w, DirectConnector)])

    def test_connect_timeout_fails_with_a_timeout_and_unregisters(self):
        port = self.unansweredPort()
        clock = _TimersFrom()
        outcomes: list[Any] = []
        connector = DirectConnector(clock, ["127.0.0.1"], port, 30.0, _taken(outcomes), outcomes.append)
        connector.start()
        self.assertIn(connector, reactor.getWriters())
        clock.advance(30)
        clock.advance(0)  # the socket is closed on the next turn
        [failure] = outcomes
        self.assertTrue(failure.check(TimeoutError))
        self.assertEqual(reply_code_for(failure), ReplyCode.TTL_EXPIRED)
        self.assertNotIn(connector, reactor.getWriters())
        self.assertEqual(connector.fileno(), -1)  # the socket is closed and forgotten

    def test_an_event_that_is_not_the_connects_own_is_ignored(self):
        # A descriptor number closed and reused within one batch of events
        # can receive an event meant for the closed socket: writable, or a
        # hang-up (which the reactor reports through connectionLost after
        # unregistering).  The connect is still in progress: neither may be
        # taken for its outcome.
        port = self.unansweredPort()
        outcomes: list[Any] = []
        connector = DirectConnector(reactor, ["127.0.0.1"], port, None, _taken(outcomes), outcomes.append)
        connector.start()
        self.addCleanup(connector.cancel)
        connector.doWrite()
        self.assertEqual(outcomes, [])
        self.assertIn(connector, reactor.getWriters())
        reactor.removeWriter(connector)
        connector.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(outcomes, [])
        self.assertIn(connector, reactor.getWriters())  # watching again

    @inlineCallbacks
    def test_a_cancelled_attempt_closes_its_socket_on_the_next_turn(self):
        # Not at once: the reactor may still hold events of this batch for
        # the descriptor number, which a socket made later in the batch
        # could take.
        port = self.unansweredPort()
        connector = DirectConnector(reactor, ["127.0.0.1"], port, None, self.fail, self.fail)
        connector.start()
        sock = connector._socket
        connector.cancel()
        self.assertNotIn(connector, reactor.getWriters())
        self.assertEqual(connector.fileno(), -1)
        self.assertNotEqual(sock.fileno(), -1)
        yield _nextTurn()
        self.assertEqual(sock.fileno(), -1)

    def test_eagain_is_a_failure_not_a_connect_in_progress(self):
        # EAGAIN from a TCP connect means no local port is free.
        import txsocksgss.server.direct as direct

        class NoPortLeft(socket.socket):
            def connect_ex(self, address):
                return errno.EAGAIN

        self.patch(direct.socket, "socket", NoPortLeft)
        outcomes: list[Any] = []
        connector = DirectConnector(reactor, ["127.0.0.1"], self.echo_port, None, _taken(outcomes), outcomes.append)
        connector.start()
        [failure] = outcomes
        self.assertIsInstance(failure, Failure)
        self.assertIn("Resource temporarily unavailable", failure.getErrorMessage())
        self.assertNotIn(connector, reactor.getWriters())

    def test_an_unknown_ipv6_scope_fails_with_its_reason(self):
        outcomes: list[Any] = []
        connector = DirectConnector(reactor, ["fe80::1%nosuchif0"], 80, None, _taken(outcomes), outcomes.append)
        connector.start()
        [failure] = outcomes
        self.assertTrue(failure.check(UnknownHostError))
        self.assertIn("fe80::1%nosuchif0", failure.getErrorMessage())
        self.assertEqual(reply_code_for(failure), ReplyCode.GENERAL_FAILURE)

    @inlineCallbacks
    def test_refused_failure_is_connectTCPs(self):
        outcomes: list[Any] = []
        connector = DirectConnector(reactor, ["127.0.0.1"], free_port(), None, _taken(outcomes), outcomes.append)
        connector.start()
        if not outcomes:  # not refused at once: the refusal comes as an event
            yield deferLater(reactor, 0.05, lambda: None)
        [failure] = outcomes
        self.assertTrue(failure.check(ConnectionRefusedError))
        self.assertEqual(connector.describe(), f"connecting to 127.0.0.1:{connector._port}")
        self.assertNotIn(connector, reactor.getWriters())

    @inlineCallbacks
    def test_client_gone_while_connecting_closes_the_socket(self):
        port = self.unansweredPort()
        socks_port, factory = self.startSOCKS()
        request = Request(Command.CONNECT, Address.of("127.0.0.1", port)).serialize()
        client = yield self.connectRaw(socks_port)
        client.transport.write(b"\x05\x01\x00")
        yield client.waitFor(2)
        [session] = factory.context.sessions
        handled = whenLeft(session, SessionState.REQUEST)
        client.transport.write(request)
        yield handled
        connector = session._outgoing
        self.assertIsInstance(connector, DirectConnector)
        self.assertIn(connector, reactor.getWriters())
        client.transport.abortConnection()
        yield client.lost
        yield whenSessionEnds(factory, session)
        self.assertIsNone(session._outgoing)
        self.assertNotIn(connector, reactor.getWriters())
        self.assertEqual(connector.fileno(), -1)
        self.sessionLine("client closed during negotiation")

    @inlineCallbacks
    def test_data_sent_before_the_reply_goes_first_through_the_splice(self):
        socks_port, factory = self.startSOCKS()
        client = yield self.connectRaw(socks_port)
        request = Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)).serialize()
        # Greeting, request and data in one segment: the data is there before the reply.
        client.transport.write(b"\x05\x01\x00" + request + b"pipelined")
        received = yield client.waitFor(2 + 10 + len(b"pipelined"))
        self.assertEqual(received[:3], b"\x05\x00\x05")
        self.assertEqual(received[3], ReplyCode.SUCCEEDED)
        self.assertEqual(received[12:], b"pipelined")
        [session] = factory.context.sessions
        self.assertIsInstance(session.relay, SpliceRelay)
        client.transport.write(b" and more")
        received = yield client.waitFor(12 + len(b"pipelined and more"))
        self.assertEqual(received[12:], b"pipelined and more")
        self.assertEqual(session.relay.bytes_from_client, len(b"pipelined and more"))

    @inlineCallbacks
    def test_ipv6(self):
        port = self.listen(self.echo, interface="::1")
        socks_port, factory = self.startSOCKS()
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("::1", port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.SUCCEEDED)
        self.assertEqual(reply.bound.type, AddressType.IPV6)
        self.assertEqual(reply.bound.host, "::1")
        [session] = factory.context.sessions
        self.assertIsInstance(session.relay.upstream, socket.socket)
        yield self.assertAlive(client)
        refused = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("::1", free_port("::1"))))
        self.assertEqual((yield refused.reply(0)).code, ReplyCode.CONNECTION_REFUSED)


def _bare_pairs() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """A client and its proxy end, an upstream and its proxy end: two non-blocking socket pairs."""
    client, client_end = socket.socketpair()
    upstream, upstream_end = socket.socketpair()
    for sock in (client, client_end, upstream, upstream_end):
        sock.setblocking(False)
    return client, client_end, upstream, upstream_end


class SpliceStartTests(TestCase):
    """What `SpliceRelay.start` sends before anything it reads, over two bare socket pairs."""

    @inlineCallbacks
    def test_early_bytes_and_the_rest_of_the_reply_go_first_and_only_early_bytes_count(self):
        client, client_end, upstream, upstream_end = _bare_pairs()
        ended: Deferred[str] = Deferred()
        relay = SpliceRelay(client_end, upstream_end, reactor, None, lambda outcome: ended.callback(str(outcome)))
        relay.start(toUpstream=b"early", toClient=b"reply rest")
        self.assertEqual(client.recv(100), b"reply rest")
        self.assertEqual(upstream.recv(100), b"early")
        self.assertEqual((relay.bytes_from_client, relay.bytes_from_upstream), (5, 0))
        upstream.send(b"answer")
        upstream.shutdown(socket.SHUT_WR)
        client.shutdown(socket.SHUT_WR)
        outcome = yield ended
        self.assertEqual(outcome, "closed")
        self.assertEqual((relay.bytes_from_client, relay.bytes_from_upstream), (5, 6))
        self.assertEqual(client.recv(100), b"answer")
        yield _nextTurn()
        self.assertEqual((client_end.fileno(), upstream_end.fileno()), (-1, -1))
        client.close()
        upstream.close()

    @inlineCallbacks
    def test_a_reply_never_sent_counts_nothing(self):
        client, client_end, upstream, upstream_end = _bare_pairs()
        client.close()  # the client is gone before the reply could go out
        ended: Deferred[str] = Deferred()
        relay = SpliceRelay(client_end, upstream_end, reactor, None, lambda outcome: ended.callback(str(outcome)))
        relay.start(toClient=b"reply rest")
        outcome = yield ended
        self.assertTrue(outcome.startswith("reset (upstream->client: write:"), outcome)
        self.assertEqual((relay.bytes_from_client, relay.bytes_from_upstream), (0, 0))
        upstream.close()
        yield _nextTurn()


class StaleEventTests(TestCase):
    """
    An error or hang-up event the reactor delivers for a spliced socket's
    descriptor number may belong to a socket closed earlier in the same
    batch: the relay asks the socket before it gives up the tunnel.
    """

    def tunnel(self) -> tuple[SpliceRelay, socket.socket, socket.socket, Deferred[str]]:
        client, client_end, upstream, upstream_end = _bare_pairs()
        ended: Deferred[str] = Deferred()
        relay = SpliceRelay(client_end, upstream_end, reactor, None, lambda outcome: ended.callback(str(outcome)))
        relay.start()
        self.addCleanup(client.close)
        self.addCleanup(upstream.close)
        self.addCleanup(relay.close, "test over")
        return relay, client, upstream, ended

    def deliverHangUp(self, spliced) -> None:
        """What the reactor does with an error or hang-up event for a descriptor it reads."""
        reactor.removeReader(spliced)
        reactor.removeWriter(spliced)
        spliced.connectionLost(Failure(ConnectionDone()))

    @inlineCallbacks
    def test_a_hang_up_that_is_not_the_sockets_own_leaves_the_tunnel_alone(self):
        relay, client, upstream, ended = self.tunnel()
        spliced = relay._upstream_socket
        self.deliverHangUp(spliced)
        self.assertFalse(ended.called)
        self.assertIn(spliced, reactor.getReaders())  # reading again
        upstream.send(b"still here")
        yield _nextTurn()
        yield _nextTurn()
        self.assertEqual(client.recv(100), b"still here")

    def test_a_real_hang_up_ends_the_tunnel(self):
        relay, client, upstream, ended = self.tunnel()
        upstream.shutdown(socket.SHUT_RDWR)
        self.deliverHangUp(relay._upstream_socket)
        self.assertTrue(ended.called)
        self.assertTrue(ended.result.startswith("reset (socket lost"), ended.result)
        ended.addErrback(lambda _: None)
