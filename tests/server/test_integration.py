"""
The server on real sockets on 127.0.0.1 (and ::1): BIND round trip, UDP
ASSOCIATE echo, IPv6 destination, flow control with a slow reader, denial.
"""

from __future__ import annotations

import hashlib
import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from zope.interface import implementer

from tests.helpers.clients import StreamCollector
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.ports import free_port
from tests.helpers.servers import EchoUDP
from txsocksgss.server.rules import rules_from_table
from txsocksgss.wire.socks5 import Address, Command, ReplyCode, Request
from txsocksgss.wire.udp import UDPDatagram, parse_udp_datagram


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class ConnectTests(IntegrationTestCase):
    @inlineCallbacks
    def test_connect_relays_bytes_exactly(self):
        body = os.urandom(300_000)
        web_port, _web = self.byteServer(body)
        socks_port, _factory = self.startSOCKS()
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("127.0.0.1", web_port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.SUCCEEDED)
        client.transport.write(b"GET / HTTP/1.0\r\n\r\n")
        yield client.lost
        self.assertTrue(client.data.endswith(body))

    @inlineCallbacks
    def test_ipv6_destination(self):
        if not _ipv6_loopback_available():
            raise AssertionError("::1 is not available on this machine; the IPv6 test needs it")
        body = b"over IPv6"
        web_port, _web = self.byteServer(body, interface="::1")
        socks_port, _factory = self.startSOCKS()
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("::1", web_port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.SUCCEEDED)
        client.transport.write(b"GET / HTTP/1.0\r\n\r\n")
        yield client.lost
        self.assertTrue(client.data.endswith(body))

    @inlineCallbacks
    def test_refused_destination_gets_05(self):
        port = free_port()
        socks_port, _factory = self.startSOCKS()
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("127.0.0.1", port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.CONNECTION_REFUSED)
        yield client.lost

    @inlineCallbacks
    def test_denying_rule_gets_02_and_never_connects(self):
        web_port, web = self.byteServer(b"secret")
        rules = rules_from_table({"rule": [{"action": "deny", "name": "no-local-web",
                                            "ports": [web_port]}], "default": "allow"})
        socks_port, _factory = self.startSOCKS(rules=rules)
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("127.0.0.1", web_port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.NOT_ALLOWED)
        yield client.lost
        self.assertEqual(web.closed, 0)


class BindTests(IntegrationTestCase):
    @inlineCallbacks
    def test_bind_round_trip(self):
        socks_port, _factory = self.startSOCKS()
        client = yield self.connectScripted(socks_port, Request(Command.BIND, Address.of("127.0.0.1", 0)))
        first = yield client.reply(0)
        self.assertEqual(first.code, ReplyCode.SUCCEEDED)
        self.assertEqual(first.bound.host, "127.0.0.1")
        self.assertNotEqual(first.bound.port, 0)

        remote = StreamCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", first.bound.port), remote)
        second = yield client.reply(1)
        self.assertEqual(second.code, ReplyCode.SUCCEEDED)
        self.assertEqual(second.bound.port, remote.transport.getHost().port)

        remote.transport.write(b"from the remote host")
        yield client.waitForData(len(b"from the remote host"))
        self.assertEqual(client.data, b"from the remote host")
        client.transport.write(b"from the client")
        yield remote.waitFor(len(b"from the client"))
        self.assertEqual(remote.data, b"from the client")
        remote.transport.loseConnection()
        yield client.lost
        yield remote.lost

    @inlineCallbacks
    def test_bind_refuses_a_host_other_than_the_named_one(self):
        socks_port, _factory = self.startSOCKS()
        client = yield self.connectScripted(socks_port, Request(Command.BIND, Address.of("127.0.0.2", 0)))
        first = yield client.reply(0)
        self.assertEqual(first.code, ReplyCode.SUCCEEDED)
        intruder = StreamCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", first.bound.port), intruder)
        yield intruder.lost
        self.assertEqual(len(client.replies), 1)


class _UDPClient(DatagramProtocol):
    def __init__(self):
        self.received: list[tuple[bytes, object]] = []
        self.waiter: Deferred | None = None

    def datagramReceived(self, data, addr):
        self.received.append((data, addr))
        if self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            waiter.callback(data)

    def next(self):
        self.waiter = Deferred()
        return self.waiter


class UDPAssociateTests(IntegrationTestCase):
    @inlineCallbacks
    def test_udp_echo_through_the_relay(self):
        echo_port = self.listenUDP(EchoUDP())
        udp_client = _UDPClient()
        client_udp_port = self.listenUDP(udp_client)
        socks_port, _factory = self.startSOCKS()
        client = yield self.connectScripted(
            socks_port, Request(Command.UDP_ASSOCIATE, Address.of("127.0.0.1", client_udp_port))
        )
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.SUCCEEDED)
        relay = (reply.bound.host, reply.bound.port)

        answer = udp_client.next()
        udp_client.transport.write(UDPDatagram(0, Address.of("127.0.0.1", echo_port), b"ping").serialize(), relay)
        data = yield answer
        datagram = parse_udp_datagram(data)
        self.assertEqual(datagram.data, b"echo:ping")
        self.assertEqual((datagram.destination.host, datagram.destination.port), ("127.0.0.1", echo_port))

        # By name, resolved on the server.
        answer = udp_client.next()
        udp_client.transport.write(UDPDatagram(0, Address.of("localhost", echo_port), b"by name").serialize(), relay)
        data = yield answer
        self.assertEqual(parse_udp_datagram(data).data, b"echo:by name")

    @inlineCallbacks
    def test_association_ends_with_the_tcp_connection(self):
        udp_client = _UDPClient()
        client_udp_port = self.listenUDP(udp_client)
        socks_port, factory = self.startSOCKS()
        client = yield self.connectScripted(
            socks_port, Request(Command.UDP_ASSOCIATE, Address.of("127.0.0.1", client_udp_port))
        )
        yield client.reply(0)
        [session] = factory.context.sessions
        handler = session._command_handler
        client.transport.loseConnection()
        yield client.lost
        yield factory.context.whenDrained()
        self.assertTrue(handler._stopped)
        self.assertIsNone(handler._client_side)

    @inlineCallbacks
    def test_datagrams_from_another_port_are_dropped(self):
        echo = EchoUDP()
        echo_port = self.listenUDP(echo)
        udp_client = _UDPClient()
        client_udp_port = self.listenUDP(udp_client)
        stranger = _UDPClient()
        self.listenUDP(stranger)
        socks_port, factory = self.startSOCKS()
        client = yield self.connectScripted(
            socks_port, Request(Command.UDP_ASSOCIATE, Address.of("127.0.0.1", client_udp_port))
        )
        reply = yield client.reply(0)
        relay = (reply.bound.host, reply.bound.port)
        [session] = factory.context.sessions
        handler = session._command_handler
        stranger.transport.write(UDPDatagram(0, Address.of("127.0.0.1", echo_port), b"x").serialize(), relay)
        # The legitimate datagram that follows proves the stranger's was seen first and dropped.
        answer = udp_client.next()
        udp_client.transport.write(UDPDatagram(0, Address.of("127.0.0.1", echo_port), b"ok").serialize(), relay)
        data = yield answer
        self.assertEqual(parse_udp_datagram(data).data, b"echo:ok")
        self.assertEqual(handler.dropped, 1)
        self.assertEqual(stranger.received, [])


    @inlineCallbacks
    def test_a_bad_datagram_does_not_fix_the_client_port(self):
        """
        Declared port 0: the first datagram that parses (and verifies, under
        GSS-API) fixes the client's port, not junk sent first from the same host.
        """
        echo_port = self.listenUDP(EchoUDP())
        udp_client = _UDPClient()
        self.listenUDP(udp_client)
        stranger = _UDPClient()
        self.listenUDP(stranger)
        socks_port, factory = self.startSOCKS()
        client = yield self.connectScripted(socks_port, Request(Command.UDP_ASSOCIATE, Address.of("0.0.0.0", 0)))
        reply = yield client.reply(0)
        relay = (reply.bound.host, reply.bound.port)
        [session] = factory.context.sessions
        handler = session._command_handler
        stranger.transport.write(b"\x00\x00\x07 not a SOCKS datagram", relay)
        answer = udp_client.next()
        udp_client.transport.write(UDPDatagram(0, Address.of("127.0.0.1", echo_port), b"mine").serialize(), relay)
        data = yield answer
        self.assertEqual(parse_udp_datagram(data).data, b"echo:mine")
        self.assertEqual(handler.dropped, 1)
        self.assertEqual(stranger.received, [])


@implementer(IPushProducer)
class _FastSender(Protocol):
    """Writes ``total`` bytes as fast as its transport lets it, honouring pauses."""

    def __init__(self, total: int, chunk: bytes):
        self.total = total
        self.chunk = chunk
        self.sent = 0
        self.paused = False
        self.first_pause: Deferred = Deferred()
        self.digest = hashlib.sha256()

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self):
        self.paused = True
        if not self.first_pause.called:
            self.first_pause.callback(self.sent)

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.sent < self.total:
            self.transport.write(self.chunk)
            self.digest.update(self.chunk)
            self.sent += len(self.chunk)
        if self.sent >= self.total:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def stopProducing(self):
        self.paused = True


class _SenderFactory(Factory):
    noisy = False

    def __init__(self, total, chunk):
        self.total, self.chunk = total, chunk
        self.instance = None
        self.built: Deferred = Deferred()

    def buildProtocol(self, addr):
        self.instance = _FastSender(self.total, self.chunk)
        self.built.callback(self.instance)
        return self.instance


class FlowControlTests(IntegrationTestCase):
    @inlineCallbacks
    def test_slow_reader_keeps_proxy_memory_bounded(self):
        total = 48 * 1024 * 1024
        sender_factory = _SenderFactory(total, os.urandom(64 * 1024))
        source_port = self.listen(sender_factory)
        socks_port, factory = self.startSOCKS()
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("127.0.0.1", source_port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.SUCCEEDED)
        client.transport.pauseProducing()  # the slow reader: reads nothing for now

        # The proxy's connect to loopback completes at once: the reply can
        # come before the source has run its accept.
        sender = yield sender_factory.built
        sent_when_paused = yield sender.first_pause
        [session] = factory.context.sessions
        buffered = _buffered(session.io.transport) + _buffered(session.relay.upstream)
        self.assertLess(sent_when_paused, total)  # the source was made to wait...
        self.assertLess(buffered, 1024 * 1024)  # ...while the proxy held under 1 MiB

        digest = hashlib.sha256()
        client.dataReceived = lambda data: digest.update(data) or _count(client, data)
        client.received_bytes = 0
        client.transport.resumeProducing()
        yield client.lost
        self.assertEqual(client.received_bytes, total)
        self.assertEqual(digest.hexdigest(), sender_factory.instance.digest.hexdigest())


def _count(client, data):
    client.received_bytes += len(data)


def _buffered(transport) -> int:
    if isinstance(transport, socket.socket):  # a spliced upstream: a bare socket buffers nothing
        return 0
    return len(transport.dataBuffer) + transport._tempDataLen


class UDPNameFailureTests(IntegrationTestCase):
    @inlineCallbacks
    def test_unresolvable_name_is_dropped_and_the_association_goes_on(self):
        echo_port = self.listenUDP(EchoUDP())
        udp_client = _UDPClient()
        client_udp_port = self.listenUDP(udp_client)
        socks_port, factory = self.startSOCKS()
        from tests.helpers.fakes import FakeResolver

        factory.context.resolver = FakeResolver({})  # every name fails, at once
        client = yield self.connectScripted(
            socks_port, Request(Command.UDP_ASSOCIATE, Address.of("127.0.0.1", client_udp_port))
        )
        reply = yield client.reply(0)
        relay = (reply.bound.host, reply.bound.port)
        [session] = factory.context.sessions
        udp_client.transport.write(UDPDatagram(0, Address.of("no-such-name.invalid", 9), b"lost").serialize(), relay)
        answer = udp_client.next()
        udp_client.transport.write(UDPDatagram(0, Address.of("127.0.0.1", echo_port), b"next").serialize(), relay)
        data = yield answer
        self.assertEqual(parse_udp_datagram(data).data, b"echo:next")
        self.assertEqual(session._command_handler.dropped, 1)
