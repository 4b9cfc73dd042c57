"""
The zero-copy splice relay on real sockets: byte-exact both ways at once,
half-close, a slow reader, a peer reset, the idle timeout, and the fallback
to the ordinary relay.
"""

from __future__ import annotations

import hashlib
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from tests.support import IntegrationTestCase
from txsocksgss.server.relay import Relay
from txsocksgss.server.splice import SpliceRelay
from txsocksgss.wire.socks5 import Address, Command, Request

TOTAL = 32 * 1024 * 1024


@implementer(IPushProducer, IHalfCloseableProtocol)
class Pump(Protocol):
    """Sends ``total`` pseudo-random bytes (honouring flow control), half-closes, and digests what it receives."""

    def __init__(self, total: int, seed: bytes):
        self.total = total
        self.chunk = hashlib.sha256(seed).digest() * 2048  # 64 KiB
        self.sent = 0
        self.sent_digest = hashlib.sha256()
        self.received = 0
        self.received_digest = hashlib.sha256()
        self.paused = False
        self.first_pause: Deferred = Deferred()
        self.read_eof: Deferred = Deferred()
        self.lost: Deferred = Deferred()
        self.start_when_connected = True

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        if self.start_when_connected:
            self.resumeProducing()

    def pauseProducing(self):
        self.paused = True
        if not self.first_pause.called:
            self.first_pause.callback(self.sent)

    def stopProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.sent < self.total:
            chunk = self.chunk[: self.total - self.sent]
            self.transport.write(chunk)
            self.sent_digest.update(chunk)
            self.sent += len(chunk)
        if self.sent >= self.total and self.transport.producer is not None:
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received += len(data)
        self.received_digest.update(data)

    def readConnectionLost(self):
        self.read_eof.callback(self.received)
        if self.sent >= self.total:
            # Both halves are done; a half-closeable protocol closes itself.
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason=None):
        if not self.read_eof.called:
            self.read_eof.callback(self.received)
        self.lost.callback(None)


class _SOCKSPump(Pump):
    """A Pump that first does a SOCKS 5 CONNECT (method 00) and starts pumping after the reply."""

    def __init__(self, total, seed, destination_port):
        super().__init__(total, seed)
        self.start_when_connected = False
        self.destination_port = destination_port
        self.handshake = b""
        self.replied: Deferred = Deferred()

    def connectionMade(self):
        self.transport.write(b"\x05\x01\x00" + Request(Command.CONNECT, Address.of("127.0.0.1", self.destination_port)).serialize())

    def dataReceived(self, data):
        if self.replied.called:
            return super().dataReceived(data)
        self.handshake += data
        if len(self.handshake) >= 12:
            rest = self.handshake[12:]
            self.replied.callback(self.handshake[2:12])
            if rest:
                super().dataReceived(rest)

    def go(self):
        self.transport.registerProducer(self, True)
        self.resumeProducing()


class SpliceTests(IntegrationTestCase):
    def upstreamFactory(self, total: int, seed: bytes):
        pumps = []

        def build(addr):
            pump = Pump(total, seed)
            pumps.append(pump)
            return pump

        factory = Factory()
        factory.buildProtocol = build
        factory.noisy = False
        return factory, pumps

    @inlineCallbacks
    def connect(self, socks_port: int, destination_port: int, total: int, seed: bytes):
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        client = _SOCKSPump(total, seed, destination_port)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port), client)
        reply = yield client.replied
        self.assertEqual(reply[:2], b"\x05\x00")  # VER REP of the CONNECT reply
        return client

    @inlineCallbacks
    def test_both_directions_at_once_byte_exact(self):
        factory, pumps = self.upstreamFactory(TOTAL, b"down")
        destination_port = self.listen(factory)
        socks_port, socks = self.startSOCKS()
        client = yield self.connect(socks_port, destination_port, TOTAL, b"up")
        [session] = socks.context.sessions
        self.assertIsInstance(session.relay, SpliceRelay)
        client.go()
        yield client.read_eof
        yield pumps[0].read_eof
        self.assertEqual(client.received, TOTAL)
        self.assertEqual(client.received_digest.hexdigest(), pumps[0].sent_digest.hexdigest())
        self.assertEqual(pumps[0].received, TOTAL)
        self.assertEqual(pumps[0].received_digest.hexdigest(), client.sent_digest.hexdigest())
        yield client.lost
        yield socks.context.whenDrained()
        self.assertEqual(session.record.outcome, "closed")
        self.assertEqual((session.record.bytes_from_client, session.record.bytes_to_client), (TOTAL, TOTAL))

    @inlineCallbacks
    def test_half_close_then_answer(self):
        @implementer(IHalfCloseableProtocol)
        class AnswerAfterEOF(Protocol):
            def connectionMade(self):
                self.got = b""

            def dataReceived(self, data):
                self.got += data

            def readConnectionLost(self):
                self.transport.write(b"you said " + self.got)
                self.transport.loseConnection()

            def writeConnectionLost(self):
                pass

        destination_port = self.listen(Factory.forProtocol(AnswerAfterEOF))
        socks_port, socks = self.startSOCKS()
        client = yield self.connect(socks_port, destination_port, 5, b"")
        client.chunk = b"hello"
        client.go()
        yield client.lost
        self.assertEqual(client.received, len(b"you said hello"))

    @inlineCallbacks
    def test_slow_reader_pauses_the_source_with_nothing_buffered_in_python(self):
        factory, pumps = self.upstreamFactory(TOTAL * 2, b"flood")
        destination_port = self.listen(factory)
        socks_port, socks = self.startSOCKS()
        client = yield self.connect(socks_port, destination_port, 0, b"")
        [session] = socks.context.sessions
        self.assertIsInstance(session.relay, SpliceRelay)
        client.transport.pauseProducing()  # read nothing
        sent_when_paused = yield pumps[0].first_pause
        self.assertLess(sent_when_paused, TOTAL * 2)
        relay = session.relay
        for transport in (relay.client, relay.upstream):
            self.assertEqual(len(transport.dataBuffer) + transport._tempDataLen, 0)
        client.transport.resumeProducing()
        yield client.read_eof
        self.assertEqual(client.received, TOTAL * 2)
        self.assertEqual(client.received_digest.hexdigest(), pumps[0].sent_digest.hexdigest())
        client.transport.loseConnection()
        yield client.lost

    @inlineCallbacks
    def test_upstream_reset_mid_stream_closes_the_client(self):
        resets: Deferred = Deferred()

        class ResetAfterSome(Protocol):
            def connectionMade(self):
                self.transport.write(os.urandom(100_000))
                reactor.callLater(0, self.reset)

            def reset(self):
                self.transport.abortConnection()
                resets.callback(None)

        destination_port = self.listen(Factory.forProtocol(ResetAfterSome))
        socks_port, socks = self.startSOCKS()
        client = yield self.connect(socks_port, destination_port, 0, b"")
        yield resets
        yield client.lost
        yield socks.context.whenDrained()
        self.assertLessEqual(client.received, 100_000)

    @inlineCallbacks
    def test_no_splice_setting_uses_the_ordinary_relay(self):
        factory, _pumps = self.upstreamFactory(10, b"x")
        destination_port = self.listen(factory)
        socks_port, socks = self.startSOCKS(splice=False)
        client = yield self.connect(socks_port, destination_port, 0, b"")
        [session] = socks.context.sessions
        self.assertIsInstance(session.relay, Relay)
        yield client.read_eof
        client.transport.loseConnection()
        yield client.lost


class SpliceIdleTests(IntegrationTestCase):
    @inlineCallbacks
    def test_idle_timeout_ends_a_quiet_spliced_tunnel(self):
        class Quiet(Protocol):
            pass

        destination_port = self.listen(Factory.forProtocol(Quiet))
        socks_port, socks = self.startSOCKS(idle_timeout=0.2)
        client = _SOCKSPump(0, b"", destination_port)
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port), client)
        yield client.replied
        [session] = socks.context.sessions
        self.assertIsInstance(session.relay, SpliceRelay)
        yield client.lost
        self.assertEqual(session.record.outcome, "idle timeout")
