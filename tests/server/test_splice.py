"""
The zero-copy splice relay on real sockets: byte-exact both ways at once,
half-close, a slow reader, a peer reset, the idle timeout, the copying of
the first bytes (no pipe for a short exchange), and the fallback to the
ordinary relay (a TLS listener never splices).
"""

from __future__ import annotations

import hashlib
import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from tests.helpers.certificates import self_signed_certificate
from tests.helpers.clients import ScriptedClient
from tests.helpers.integration import IntegrationTestCase
from txsocksgss.server.relay import Relay
from txsocksgss.server.splice import COPY_LIMIT, SpliceRelay
from txsocksgss.wire.socks5 import Address, Command, ReplyCode, Request

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


class _Pumps(list):
    def __init__(self) -> None:
        super().__init__()
        self.first: Deferred = Deferred()


class SpliceTests(IntegrationTestCase):
    def upstreamFactory(self, total: int, seed: bytes):
        """A factory of `Pump` destinations, and the list they go in; its ``first`` fires with the first."""
        pumps = _Pumps()

        def build(addr):
            pump = Pump(total, seed)
            pumps.append(pump)
            if len(pumps) == 1:
                pumps.first.callback(pump)
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
        # The reply can come before the destination has run its accept (the
        # proxy's connect to loopback completes at once).
        pump = yield pumps.first
        sent_when_paused = yield pump.first_pause
        self.assertLess(sent_when_paused, TOTAL * 2)
        relay = session.relay
        self.assertEqual(len(relay.client.dataBuffer) + relay.client._tempDataLen, 0)
        self.assertIsInstance(relay.upstream, socket.socket)  # a bare socket: no buffer at all
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


@implementer(IHalfCloseableProtocol)
class _EchoUntilEOF(Protocol):
    """Echoes what arrives; closes when the client half-closes."""

    def dataReceived(self, data):
        self.transport.write(data)

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


def _is_open(end) -> bool:
    """Whether a relay's end (a transport, or a bare socket) is still open."""
    if isinstance(end, socket.socket):
        return end.fileno() != -1
    return bool(end.connected)


class CopyPhaseTests(IntegrationTestCase):
    @inlineCallbacks
    def tunnel(self, **config):
        destination_port = self.listen(Factory.forProtocol(_EchoUntilEOF))
        socks_port, socks = self.startSOCKS(**config)
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        client = ScriptedClient(Request(Command.CONNECT, Address.of("127.0.0.1", destination_port)))
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port), client)
        self.assertEqual((yield client.reply(0)).code, ReplyCode.SUCCEEDED)
        [session] = socks.context.sessions
        return client, session, socks

    @inlineCallbacks
    def test_a_short_exchange_is_copied_without_a_pipe_and_closed_at_once(self):
        client, session, socks = yield self.tunnel()
        relay = session.relay
        self.assertIsInstance(relay, SpliceRelay)
        # The sockets close on the reactor's next turn, not while it may still
        # hold events of the same batch for one of them (see SpliceRelay._end).
        still_open = []
        ended = relay._onEnd

        def onEnd(outcome):
            still_open.append((_is_open(relay.client), _is_open(relay.upstream)))
            ended(outcome)

        relay._onEnd = onEnd
        client.transport.write(b"ping")
        yield client.waitForData(4)
        self.assertEqual(client.data, b"ping")
        self.assertEqual((relay._up.pipe, relay._down.pipe), (None, None))
        client.transport.loseWriteConnection()
        yield client.lost
        yield socks.context.whenDrained()
        self.assertEqual(still_open, [(True, True)])
        self.assertEqual((_is_open(relay.client), _is_open(relay.upstream)), (False, False))
        self.assertEqual(session.record.outcome, "closed")
        self.assertEqual((session.record.bytes_from_client, session.record.bytes_to_client), (4, 4))
        self.assertTrue(relay.closed_at_once)
        self.assertIsNone(session.io._linger)

    @inlineCallbacks
    def test_past_the_copy_limit_bytes_go_through_a_pipe(self):
        client, session, socks = yield self.tunnel()
        relay = session.relay
        body = os.urandom(COPY_LIMIT * 3)
        client.transport.write(body)
        yield client.waitForData(len(body))
        self.assertEqual(client.data, body)
        self.assertIsNotNone(relay._up.pipe)
        self.assertIsNotNone(relay._down.pipe)
        client.transport.loseConnection()
        yield client.lost
        yield socks.context.whenDrained()
        self.assertEqual((relay._up.pipe, relay._down.pipe), (None, None))
        self.assertEqual((session.record.bytes_from_client, session.record.bytes_to_client),
                         (len(body), len(body)))


class TLSListenerTests(IntegrationTestCase):
    @inlineCallbacks
    def test_a_tls_listener_never_splices_and_keeps_the_tunnel_inside_tls(self):
        # twisted[tls] (pyOpenSSL, cryptography) is a dependency: a missing one fails here.
        from twisted.internet import ssl

        certificate_pem, key_pem = self_signed_certificate("localhost")
        from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol

        from txsocksgss.server.config import Config
        from txsocksgss.server.service import makeServerFactory

        destination_port = self.listen(Factory.forProtocol(_EchoUntilEOF))
        factory = makeServerFactory(Config.build(listen=["tcp:0:interface=127.0.0.1"]), reactor)
        server_options = ssl.PrivateCertificate.loadPEM(certificate_pem + key_pem).options()
        port = reactor.listenSSL(0, factory, server_options, interface="127.0.0.1")
        self.addCleanup(self._stopSOCKS, port, factory)
        client = ScriptedClient(Request(Command.CONNECT, Address.of("127.0.0.1", destination_port)))
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port,
                                      ssl.CertificateOptions(verify=False))
        yield connectProtocol(endpoint, client)
        self.assertEqual((yield client.reply(0)).code, ReplyCode.SUCCEEDED)
        [session] = factory.context.sessions
        self.assertIsInstance(session.relay, Relay)
        client.transport.write(b"through TLS")
        self.assertEqual((yield client.waitForData(11)), b"through TLS")
        client.transport.loseConnection()
        yield client.lost
