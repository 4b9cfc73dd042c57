"""
Faults, on real sockets on 127.0.0.1: each ends only the session it hits,
with the right reply or close and a log line, while a bystander session
through the same server keeps working.

- the destination refuses (REP 05), resets mid-stream (the client is
  closed), or never answers (REP 06 at the negotiation timeout);
- DNS fails (REP 04) or hangs (REP 06 at the negotiation timeout, the lookup
  cancelled);
- the client vanishes mid-handshake, while its destination is being
  reached, or mid-stream: no leak (the sessions drain, no DelayedCall is left);
- the KDC is down while a GSS-API context is accepted: the acceptor needs
  only its keytab, so the session works.

A corrupted wrapped token (GSS-API per-message protection) is covered by
``tests/auth/test_gssapi_integration.py``, ``TamperTests``: it ends only
that session, delivers nothing of the token and logs "protection failure".
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory

from tests.helpers.clients import StreamCollector
from tests.helpers.fakes import FakeResolver, SilentResolver
from tests.helpers.faults import FaultTestCase, whenLeft, whenSessionEnds
from tests.helpers.logs import lines_with
from tests.helpers.ports import blackhole, free_port, free_portbase
from txsocksgss.server.protocol import SOCKS5ServerProtocol, SessionState
from txsocksgss.wire.socks5 import Address, Command, ReplyCode, Request


class DestinationFaultTests(FaultTestCase):
    @inlineCallbacks
    def test_refused_is_05_and_only_that_session_ends(self):
        port = free_port()
        socks_port, _factory = self.startSOCKS()
        bystander = yield self.bystander(socks_port)
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("127.0.0.1", port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.CONNECTION_REFUSED)
        yield client.lost
        self.assertIn(f"destination=127.0.0.1:{port}", self.sessionLine("connection refused: "))
        yield self.assertAlive(bystander)

    @inlineCallbacks
    def test_reset_mid_stream_closes_the_client_only(self):
        socks_port, factory = self.startSOCKS()
        bystander = yield self.bystander(socks_port)
        client = yield self.connectScripted(socks_port,
                                            Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)))
        self.assertEqual((yield client.reply(0)).code, ReplyCode.SUCCEEDED)
        yield self.assertAlive(client)
        client.transport.write(b"RESET")
        yield client.lost
        # The ordinary relay and the splice relay word it differently.
        self.sessionLine("upstream closed", "reset (upstream->client")
        yield self.assertAlive(bystander)
        self.assertEqual(len(factory.context.sessions), 1)

    @inlineCallbacks
    def test_never_answering_destination_is_06_at_the_negotiation_timeout(self):
        listener, filler = blackhole()
        self.addCleanup(listener.close)
        self.addCleanup(filler.close)
        port = listener.getsockname()[1]
        socks_port, _factory = self.startSOCKS(negotiation_timeout=1.0)
        bystander = yield self.bystander(socks_port)
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("127.0.0.1", port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.TTL_EXPIRED)
        yield client.lost
        self.sessionLine(f"negotiation timeout while connecting to 127.0.0.1:{port}")
        yield self.assertAlive(bystander)


class DNSFaultTests(FaultTestCase):
    @inlineCallbacks
    def test_failed_lookup_is_04(self):
        socks_port, factory = self.startSOCKS()
        bystander = yield self.bystander(socks_port)
        factory.context.resolver = FakeResolver({})
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("nowhere.test", 80)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.HOST_UNREACHABLE)
        yield client.lost
        self.sessionLine("host unreachable: 'nowhere.test' did not resolve")
        yield self.assertAlive(bystander)

    @inlineCallbacks
    def test_hanging_lookup_is_06_at_the_negotiation_timeout(self):
        socks_port, factory = self.startSOCKS(negotiation_timeout=0.5)
        bystander = yield self.bystander(socks_port)
        resolver = SilentResolver()
        factory.context.resolver = resolver
        client = yield self.connectScripted(socks_port, Request(Command.CONNECT, Address.of("slow.test", 80)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.TTL_EXPIRED)
        yield client.lost
        self.sessionLine("negotiation timeout while resolving slow.test")
        [resolution] = resolver.resolutions
        self.assertTrue(resolution.cancelled)
        yield self.assertAlive(bystander)


class VanishingClientTests(FaultTestCase):
    @inlineCallbacks
    def handshakeThenVanish(self, socks_port: int, factory: Any, request_part: bytes) -> Any:
        client = yield self.connectRaw(socks_port)
        client.transport.write(b"\x05\x01\x00")
        yield client.waitFor(2)
        [session] = [s for s in factory.context.sessions if s.state is SessionState.REQUEST]
        client.transport.write(request_part)
        return client, session

    @inlineCallbacks
    def assertDrainedWithoutLeaks(self, factory: Any, session: SOCKS5ServerProtocol) -> Any:
        yield whenSessionEnds(factory, session)
        self.assertIs(session.state, SessionState.CLOSED)
        self.assertNoTimersOf(session)
        self.assertIsNone(session._pending)
        self.assertIsNone(session._outgoing)

    @inlineCallbacks
    def test_vanishing_mid_handshake_leaks_nothing(self):
        socks_port, factory = self.startSOCKS()
        bystander = yield self.bystander(socks_port)
        client, session = yield self.handshakeThenVanish(socks_port, factory, b"\x05\x01\x00\x03\x10partial")
        client.transport.abortConnection()
        yield client.lost
        yield self.assertDrainedWithoutLeaks(factory, session)
        self.sessionLine("client closed during negotiation")
        self.assertEqual((factory.context.limits.sessions, factory.context.limits.negotiating), (1, 0))
        yield self.assertAlive(bystander)

    @inlineCallbacks
    def test_vanishing_while_the_destination_is_reached_cancels_the_attempt(self):
        listener, filler = blackhole()
        self.addCleanup(listener.close)
        self.addCleanup(filler.close)
        socks_port, factory = self.startSOCKS()
        bystander = yield self.bystander(socks_port)
        request = Request(Command.CONNECT, Address.of("127.0.0.1", listener.getsockname()[1])).serialize()
        client = yield self.connectRaw(socks_port)
        client.transport.write(b"\x05\x01\x00")
        yield client.waitFor(2)
        [session] = [s for s in factory.context.sessions if s.state is SessionState.REQUEST]
        handled = whenLeft(session, SessionState.REQUEST)
        client.transport.write(request)
        yield handled
        self.assertIsNotNone(session._outgoing)  # the connection attempt
        client.transport.abortConnection()
        yield client.lost
        yield self.assertDrainedWithoutLeaks(factory, session)
        self.sessionLine("client closed during negotiation")
        yield self.assertAlive(bystander)

    @inlineCallbacks
    def test_vanishing_mid_stream_closes_the_destination(self):
        socks_port, factory = self.startSOCKS()
        bystander = yield self.bystander(socks_port)
        client = yield self.connectScripted(socks_port,
                                            Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)))
        self.assertEqual((yield client.reply(0)).code, ReplyCode.SUCCEEDED)
        yield self.assertAlive(client)
        self.assertEqual(len(self.echo.connections), 2)
        [session] = [s for s in factory.context.sessions if s.relay is not None
                     and s.record.destination == f"127.0.0.1:{self.echo_port}"
                     and s.record.client.endswith(f":{client.transport.getHost().port}")]
        ended = whenSessionEnds(factory, session)
        client.transport.abortConnection()
        yield client.lost
        yield ended
        while len(self.echo.connections) > 1:
            waiter: Deferred[None] = Deferred()
            self.echo.waiters.append(waiter)
            yield waiter
        self.sessionLine("client closed", "reset (client->upstream")
        self.assertEqual(factory.context.limits.sessions, 1)
        yield self.assertAlive(bystander)


class DestinationFaultOrdinaryRelayTests(DestinationFaultTests):
    splice = False


class VanishingClientOrdinaryRelayTests(VanishingClientTests):
    splice = False


@pytest.mark.kerberos
class KDCDownTests(FaultTestCase):
    """
    The KDC is unreachable while the server accepts a GSS-API context.  The
    test has its own realm (the process-wide one in tests/helpers/kerberos.py serves
    the other tests, so its KDC stays up); nothing in the process environment
    points at this realm: the client names its credential cache and the
    full service principal, the server its keytab.
    """

    def startRealm(self) -> Any:
        from k5test import K5Realm


        portbase = free_portbase()
        realm = K5Realm(
            realm="KDCDOWN.TEST",
            portbase=portbase,
            krb5_conf={
                "libdefaults": {"rdns": "false", "dns_canonicalize_hostname": "false",
                                "ignore_acceptor_hostname": "true", "udp_preference_limit": "1"},
                "realms": {"$realm": {"kdc": f"127.0.0.1:{portbase}"}},
            },
            kdc_conf={"realms": {"$realm": {"kdc_listen": f"{portbase}", "kdc_tcp_listen": f"{portbase}"}}},
        )
        self.addCleanup(realm.stop)
        return realm

    @inlineCallbacks
    def test_gssapi_session_works_with_the_kdc_stopped(self):
        from txsocksgss.auth.gssapi import GSSAPIClientFactory
        from txsocksgss.client.endpoints import SOCKS5ClientEndpoint
        from txsocksgss.wire.gssapi import ProtectionLevel

        realm = self.startRealm()
        service = f"rcmd/localhost@{realm.realm}"
        keytab = os.path.join(realm.tmpdir, "rcmd.keytab")
        realm.addprinc(service)
        realm.extract_keytab(service, keytab)
        # The user got the service ticket earlier, while the KDC was up.
        realm.run([shutil.which("kvno") or "/usr/bin/kvno", service])
        realm.stop_kdc()
        # Nobody can get a ticket now...
        realm.kinit(realm.user_princ, realm.password("user"),
                    flags=["-c", os.path.abspath(self.mktemp())], expected_code=1)

        # ...yet the acceptor, which needs only its keytab, accepts the context.
        socks_port, _factory = self.startSOCKS(methods=["gssapi"], gssapi_keytab=keytab,
                                               gssapi_protection=["confidentiality"])
        proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port)
        endpoint = SOCKS5ClientEndpoint(proxy, "127.0.0.1", self.echo_port, [GSSAPIClientFactory(
            principal=service, ccache=realm.ccache, level=ProtectionLevel.CONFIDENTIALITY)])
        collector = StreamCollector()
        connection = yield endpoint.establish(Factory.forProtocol(lambda: collector))
        self.assertEqual(connection.identity.user, realm.user_princ)
        self.assertEqual(connection.identity.attributes["protection"], "confidentiality")
        collector.transport.write(b"sealed, without a KDC")
        data = yield collector.waitFor(21)
        self.assertEqual(data, b"sealed, without a KDC")
        collector.transport.loseConnection()
        yield collector.lost
        self.assertTrue(lines_with(self.logs, f"{realm.user_princ} authenticated with krb5"), "\n".join(self.logs))
