"""
SOCKS 4 and 4a on the same listener as SOCKS 5: the version is the first
byte.  Unit tests with fakes (replies 90/91/92/93, 4a resolution, rules,
malformed input at every byte) and integration with a real identd.
"""

from __future__ import annotations

import os
import pwd

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error as ierror
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.helpers.clients import Fetcher, StreamCollector
from tests.helpers.harness import ServerHarness, socks4_harness, socks4_request
from tests.helpers.identd import startIdentd
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.ports import free_port
from tests.helpers.servers import EchoFactory
from txsocksgss.auth.ident import IdentOutcome
from txsocksgss.client.endpoints import SOCKS4ClientEndpoint
from txsocksgss.errors import SOCKS4IdentMismatch, SOCKS4IdentUnreachable, SOCKS4Rejected
from txsocksgss.interfaces import IIdentChecker
from txsocksgss.server.protocol import SessionState
from txsocksgss.server.rules import rules_from_table
from txsocksgss.wire.socks4 import SOCKS4Command, SOCKS4ReplyCode


@implementer(IIdentChecker)
class FixedIdent:
    def __init__(self, outcome: IdentOutcome):
        self.outcome = outcome
        self.asked = []

    def check(self, client, server, userid):
        self.asked.append((client, server, userid))
        return succeed(self.outcome)


class SOCKS4UnitTests(SynchronousTestCase):
    def test_refused_with_91_unless_enabled(self):
        harness = ServerHarness()
        harness.send(socks4_request())
        self.assertEqual(harness.take()[:2], b"\x00\x5b")
        self.assertTrue(harness.transport.disconnecting)
        self.assertEqual(harness.reactor.tcpClients, [])
        self.assertIn("--method socks4", harness.protocol.record.outcome)

    def test_connect_granted_with_bound_address(self):
        harness = socks4_harness()
        harness.send(socks4_request())
        self.assertEqual(harness.reactor.tcpClients[0][:2], ("192.0.2.1", 80))
        harness.complete_connect()
        self.assertEqual(harness.take(), b"\x00\x5a\x15\xb3\xc0\x00\x02\x07")  # 192.0.2.7:5555
        self.assertEqual(harness.protocol.record.version, 4)
        self.assertEqual(harness.protocol.machine.identity.user, "alice")

    def test_socks4a_name_resolved_by_the_server(self):
        harness = socks4_harness(names={"example.test": ["192.0.2.9"]})
        harness.send(socks4_request("example.test"))
        self.assertEqual(harness.reactor.tcpClients[0][:2], ("192.0.2.9", 80))

    def test_failures_are_91(self):
        harness = socks4_harness()
        harness.send(socks4_request())
        harness.fail_connect(ierror.ConnectionRefusedError())
        self.assertEqual(harness.take()[:2], b"\x00\x5b")
        self.assertTrue(harness.transport.disconnecting)

    def test_unresolvable_name_is_91(self):
        harness = socks4_harness()
        harness.send(socks4_request("nowhere.test"))
        self.assertEqual(harness.take()[:2], b"\x00\x5b")

    def test_rules_can_forbid_socks4(self):
        policy = rules_from_table({"rule": [{"action": "deny", "versions": [4]}], "default": "allow"})
        harness = socks4_harness(policy=policy)
        harness.send(socks4_request())
        self.assertEqual(harness.take()[:2], b"\x00\x5b")
        self.assertEqual(harness.reactor.tcpClients, [])

    def test_rules_see_the_userid_as_user(self):
        policy = rules_from_table({"rule": [{"action": "allow", "users": ["alice"]}]})
        harness = socks4_harness(policy=policy)
        harness.send(socks4_request(userid=b"mallory"))
        self.assertEqual(harness.take()[:2], b"\x00\x5b")
        harness = socks4_harness(policy=policy)
        harness.send(socks4_request(userid=b"alice"))
        self.assertEqual(len(harness.reactor.tcpClients), 1)

    def test_ident_refusals_send_their_codes(self):
        for code in (SOCKS4ReplyCode.IDENT_UNREACHABLE, SOCKS4ReplyCode.IDENT_MISMATCH):
            harness = socks4_harness()
            harness.context.ident = FixedIdent(IdentOutcome(user=None, refusal=code, reason="test"))
            harness.send(socks4_request())
            self.assertEqual(harness.take()[:2], bytes([0, code]))
            self.assertTrue(harness.transport.disconnecting)

    def test_ident_answer_becomes_the_user(self):
        harness = socks4_harness()
        checker = FixedIdent(IdentOutcome(user="alice-from-identd", ident_answer="alice-from-identd"))
        harness.context.ident = checker
        harness.send(socks4_request(userid=b"alice"))
        self.assertEqual(checker.asked, [(("127.0.0.1", 40000), ("127.0.0.1", 1080), "alice")])
        self.assertEqual(harness.protocol.machine.identity.user, "alice-from-identd")

    def test_bind(self):
        harness = socks4_harness()
        harness.send(socks4_request(command=SOCKS4Command.BIND))
        harness.reactor.advance(0)  # BIND listens on the next reactor turn
        [(port, _factory, _backlog, interface)] = harness.reactor.tcpServers
        self.assertEqual(interface, "127.0.0.1")
        first = harness.take()
        self.assertEqual(first[:2], b"\x00\x5a")

    def test_too_long_userid_is_refused(self):
        harness = socks4_harness()
        harness.send(b"\x04\x01\x00\x50\xc0\x00\x02\x01" + b"u" * 300)
        self.assertEqual(harness.take()[:2], b"\x00\x5b")
        self.assertTrue(harness.transport.disconnecting)

    def test_unknown_command_is_91(self):
        harness = socks4_harness()
        harness.send(b"\x04\x07\x00\x50\xc0\x00\x02\x01\x00")
        self.assertEqual(harness.take()[:2], b"\x00\x5b")

    def test_cut_at_every_byte_then_close(self):
        whole = socks4_request("example.test")
        for cut in range(1, len(whole)):
            harness = socks4_harness()
            harness.send(whole[:cut])
            self.assertEqual(harness.take(), b"")
            harness.protocol.connectionLost(Failure(ierror.ConnectionDone()))
            self.assertIs(harness.protocol.state, SessionState.CLOSED)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600))
    def test_arbitrary_socks4_bytes(self, data):
        harness = socks4_harness()
        harness.send(b"\x04" + data)
        out = harness.take()
        self.assertIn(out[:2], (b"", b"\x00\x5b"))


class SilentServer(Protocol):
    """Accepts and never answers (an identd that hangs)."""


class IdentIntegrationTests(IntegrationTestCase):
    def connect(self, socks_port, web_port, userid):
        proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port)
        return SOCKS4ClientEndpoint(proxy, "127.0.0.1", web_port, userid).connect(Factory.forProtocol(Fetcher))

    @inlineCallbacks
    def test_matching_ident_is_granted(self):
        ident_port = yield startIdentd(self)
        web_port, _ = self.byteServer(b"identified")
        socks_port, _ = self.startSOCKS(methods=["none", "socks4"], ident="require", ident_port=ident_port)
        me = pwd.getpwuid(os.getuid()).pw_name
        protocol = yield self.connect(socks_port, web_port, me)
        data = yield protocol.done
        self.assertTrue(data.endswith(b"identified"))

    @inlineCallbacks
    def test_mismatching_ident_is_93(self):
        ident_port = yield startIdentd(self)
        socks_port, _ = self.startSOCKS(methods=["none", "socks4"], ident="require", ident_port=ident_port)
        error = yield self.assertFailure(self.connect(socks_port, 9, "mallory"), SOCKS4IdentMismatch)
        self.assertEqual(error.code, 93)

    @inlineCallbacks
    def test_log_mode_lets_a_mismatch_through(self):
        ident_port = yield startIdentd(self)
        web_port, _ = self.byteServer(b"logged")
        logs = self.captureLogs()
        socks_port, _ = self.startSOCKS(methods=["none", "socks4"], ident="log", ident_port=ident_port)
        protocol = yield self.connect(socks_port, web_port, "mallory")
        data = yield protocol.done
        self.assertTrue(data.endswith(b"logged"))
        self.assertTrue([line for line in logs if "client says 'mallory', identd says" in line])

    @inlineCallbacks
    def test_no_identd_is_92(self):
        closed = free_port()  # a port nothing listens on
        socks_port, _ = self.startSOCKS(methods=["none", "socks4"], ident="require", ident_port=closed)
        error = yield self.assertFailure(self.connect(socks_port, 9, "root"), SOCKS4IdentUnreachable)
        self.assertEqual(error.code, 92)

    @inlineCallbacks
    def test_identd_that_never_answers_is_92_after_the_timeout(self):
        silent_port = self.listen(Factory.forProtocol(SilentServer))
        socks_port, _ = self.startSOCKS(methods=["none", "socks4"], ident="require", ident_port=silent_port, ident_timeout=0.5)
        start = reactor.seconds()
        yield self.assertFailure(self.connect(socks_port, 9, "root"), SOCKS4IdentUnreachable)
        self.assertGreaterEqual(reactor.seconds() - start, 0.5)

    @inlineCallbacks
    def test_socks4_refused_by_rule(self):
        rules = rules_from_table({"rule": [{"action": "deny", "versions": [4]}], "default": "allow"})
        socks_port, _ = self.startSOCKS(methods=["none", "socks4"], rules=rules)
        yield self.assertFailure(self.connect(socks_port, 9, "root"), SOCKS4Rejected)


class OwnClientTests(IntegrationTestCase):
    @inlineCallbacks
    def test_socks4a_and_bind_with_our_client(self):
        from twisted.internet.endpoints import connectProtocol

        from txsocksgss.client.bind import bindThroughProxy

        web_port, _ = self.byteServer(b"by name")
        socks_port, _ = self.startSOCKS(methods=["none", "socks4"], )
        proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port)
        protocol = yield SOCKS4ClientEndpoint(proxy, "localhost", web_port, "bob").connect(Factory.forProtocol(Fetcher))
        data = yield protocol.done
        self.assertTrue(data.endswith(b"by name"))

        pending = yield bindThroughProxy(SOCKS4ClientEndpoint(proxy, "127.0.0.1", 0, "bob"), EchoFactory())
        peer = StreamCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", pending.address.port), peer)
        connection = yield pending.accepted
        self.assertEqual(connection.bound.port, peer.transport.getHost().port)
        peer.transport.write(b"v4 bind")
        self.assertEqual((yield peer.waitFor(7)), b"v4 bind")
        peer.transport.loseConnection()
        yield peer.lost
