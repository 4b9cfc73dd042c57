"""
The Multi-Authentication Framework (method 0x08): hand-written byte
vectors, the conversations driven against each other, the policy's
choices, hostile input at every stage, and chains end to end (password,
then GSS-API with a real KDC) with grades enforced by the rules.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.helpers.clients import Fetcher
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.maf import SESSION, converse, settle, userpass_server
from txsocksgss.auth.conversation import AuthResult, AuthStep, Identity
from txsocksgss.auth.maf import (
    SUBMETHOD_IDS,
    AskForMore,
    Chain,
    ChainPolicy,
    DoSubMethod,
    MAFClientFactory,
    MAFServerFactory,
    Succeed,
    TestSubMethodClientFactory,
    TestSubMethodServerFactory,
)
from txsocksgss.auth.passwordfile import set_password
from txsocksgss.auth.userpass import UserPassClientFactory
from txsocksgss.client.endpoints import SOCKS5ClientEndpoint
from txsocksgss.errors import ClientAuthenticationFailed, ConnectionNotAllowed
from txsocksgss.interfaces import IMAFPolicy
from txsocksgss.server.rules import rules_from_table

TEST = SUBMETHOD_IDS["test"]
USERPASS = SUBMETHOD_IDS["userpass"]
GSSAPI = SUBMETHOD_IDS["gssapi"]

# Hand-written from the draft (INSTR VER FLAGS ...), with NMETHODS one octet.
OFFER_TEST = bytes.fromhex("01 00 0000 01 00000001")
OFFER_TEST_MORE = bytes.fromhex("01 00 0000 02 00000001 00000002")
DO_TEST = bytes.fromhex("03 00 0000 00000001 00000000")
PROCESS_TEST = bytes.fromhex("05 00 0000 00000001 00000004") + b"TEST"
WHAT_NEXT = bytes.fromhex("04 00 0000")
SUCCESS_GRADE_1 = bytes.fromhex("00 00 0000 00000000 00000007") + b"grade=1"
REQUEST_MORE_RELATIVE = bytes.fromhex("02 00 0000")
REQUEST_MORE_ABSOLUTE = bytes.fromhex("02 00 0001")


def server(chains, submethods=None, policy=None, **kwargs):
    submethods = submethods or {TEST: TestSubMethodServerFactory(), USERPASS: userpass_server()}
    return MAFServerFactory(policy or ChainPolicy(chains, **kwargs), submethods).buildAuthenticator(SESSION)


class VectorTests(SynchronousTestCase):
    def test_single_test_submethod_bytes(self):
        client = MAFClientFactory([(TEST, TestSubMethodClientFactory())]).buildAuthenticator(SESSION)
        server_side = server([Chain((TEST,), 1)])
        self.assertEqual(client.begin().send, OFFER_TEST)
        step = server_side.receive(OFFER_TEST)
        self.assertEqual(step.send, DO_TEST)
        step = client.receive(DO_TEST)
        self.assertEqual(step.send, PROCESS_TEST)
        step = server_side.receive(PROCESS_TEST)
        self.assertEqual(step.send, PROCESS_TEST)  # the server's TEST answer
        step = client.receive(PROCESS_TEST)
        self.assertEqual(step.send, WHAT_NEXT)
        step = server_side.receive(WHAT_NEXT)
        self.assertEqual(step.send, SUCCESS_GRADE_1)
        self.assertTrue(step.result.succeeded)
        self.assertEqual(step.result.identity.attributes["grade"], 1)
        final = client.receive(SUCCESS_GRADE_1)
        self.assertTrue(final.result.succeeded)
        self.assertEqual(final.result.identity.attributes["grade"], 1)

    def test_more_methods_available_is_last_in_the_block(self):
        client = MAFClientFactory([(TEST, TestSubMethodClientFactory()), (USERPASS, UserPassClientFactory("a", "b"))],
                                  block_size=1).buildAuthenticator(SESSION)
        self.assertEqual(client.begin().send, OFFER_TEST_MORE)
        self.assertEqual(client.receive(REQUEST_MORE_RELATIVE).send, bytes.fromhex("01 00 0000 01 00000003"))
        self.assertEqual(client.receive(REQUEST_MORE_ABSOLUTE).send, OFFER_TEST_MORE)


class ConversationTests(SynchronousTestCase):
    def test_password_then_test_chain(self):
        client = MAFClientFactory([(USERPASS, UserPassClientFactory("alice", "secret")),
                                   (TEST, TestSubMethodClientFactory())]).buildAuthenticator(SESSION)
        client_result, server_result, _ = converse(client, server([Chain((USERPASS, TEST), 2)]))
        self.assertTrue(server_result.succeeded)
        self.assertEqual(server_result.identity.user, "alice")
        self.assertEqual(server_result.identity.attributes["submethods"], ("userpass", "test"))
        self.assertEqual(server_result.identity.attributes["grade"], 2)
        self.assertTrue(client_result.succeeded)

    def test_chain_the_client_cannot_satisfy(self):
        client = MAFClientFactory([(TEST, TestSubMethodClientFactory())]).buildAuthenticator(SESSION)
        client_result, server_result, transcript = converse(client, server([Chain((USERPASS,), 1)]))
        self.assertFalse(server_result.succeeded)
        self.assertIn("no acceptable chain", server_result.reason)
        self.assertFalse(client_result.succeeded)
        self.assertEqual(transcript[-1][1][:1], b"\xff")  # the FAILURE message

    def test_failed_submethod_fails_the_chain(self):
        client = MAFClientFactory([(USERPASS, UserPassClientFactory("alice", "wrong"))],
                                  continue_on_failure=True).buildAuthenticator(SESSION)
        client_result, server_result, _ = converse(client, server([Chain((USERPASS,), 1)]))
        self.assertFalse(server_result.succeeded)
        self.assertIn("userpass failed", server_result.reason)
        self.assertIn("userpass failed", client_result.reason)

    def test_client_gives_up_after_its_own_submethod_fails(self):
        client = MAFClientFactory([(USERPASS, UserPassClientFactory("alice", "wrong"))]).buildAuthenticator(SESSION)
        client_result, _server_result, transcript = converse(client, server([Chain((USERPASS,), 1)]))
        self.assertFalse(client_result.succeeded)
        self.assertIn("failed here", client_result.reason)
        self.assertNotIn(("c", WHAT_NEXT), transcript)  # no WHAT NEXT? after its own failure

    def test_user_and_realm_come_from_one_submethod(self):
        from txsocksgss.auth.conversation import AuthResult, Identity
        from txsocksgss.auth.maf import SubMethodOutcome, _combined

        result = _combined([
            SubMethodOutcome(GSSAPI, True, Identity(1, "bob@REALM", {"realm": "REALM", "mechanism": "krb5"})),
            SubMethodOutcome(USERPASS, True, Identity(2, "alice")),
        ], 2)
        self.assertEqual(result.identity.user, "alice")
        self.assertNotIn("realm", result.identity.attributes)
        del AuthResult

    def test_continue_on_failure_tries_the_next_chain(self):
        client = MAFClientFactory([(USERPASS, UserPassClientFactory("alice", "wrong")),
                                   (TEST, TestSubMethodClientFactory())],
                                  continue_on_failure=True).buildAuthenticator(SESSION)
        policy = ChainPolicy([Chain((USERPASS,), 2), Chain((TEST,), 1)], continue_on_failure=True)
        _client_result, server_result, _ = converse(client, server(None, policy=policy))
        self.assertTrue(server_result.succeeded)
        self.assertEqual(server_result.identity.attributes["grade"], 1)

    def test_server_asks_for_more_relative(self):
        client = MAFClientFactory([(TEST, TestSubMethodClientFactory()),
                                   (USERPASS, UserPassClientFactory("alice", "secret"))],
                                  block_size=1).buildAuthenticator(SESSION)
        _, server_result, transcript = converse(client, server([Chain((USERPASS,), 3)]))
        self.assertTrue(server_result.succeeded)
        self.assertIn(("s", REQUEST_MORE_RELATIVE), transcript)

    def test_server_asks_for_more_absolute(self):
        @implementer(IMAFPolicy)
        class AbsoluteOnce:
            def decide(self, state):
                if state.requests_for_more == 0:
                    return AskForMore(absolute=True)
                if not state.outcomes:
                    return DoSubMethod(TEST)
                return Succeed(5)

        client = MAFClientFactory([(TEST, TestSubMethodClientFactory())]).buildAuthenticator(SESSION)
        server_side = MAFServerFactory(AbsoluteOnce(), {TEST: TestSubMethodServerFactory()}).buildAuthenticator(
            SESSION)
        # Absolute is honoured even when the client said it had no more.
        _, server_result, transcript = converse(client, server_side)
        self.assertFalse(server_result.succeeded)
        self.assertIn("no more sub-methods", server_result.reason)
        client = MAFClientFactory([(TEST, TestSubMethodClientFactory()), (USERPASS, UserPassClientFactory("a", "b"))],
                                  block_size=1).buildAuthenticator(SESSION)
        server_side = MAFServerFactory(AbsoluteOnce(), {TEST: TestSubMethodServerFactory()}).buildAuthenticator(
            SESSION)
        _, server_result, transcript = converse(client, server_side)
        self.assertIn(("s", REQUEST_MORE_ABSOLUTE), transcript)
        self.assertEqual(transcript[2], ("c", OFFER_TEST_MORE))  # the whole list again
        self.assertTrue(server_result.succeeded)
        self.assertEqual(server_result.identity.attributes["grade"], 5)

    def test_client_lying_about_more_methods(self):
        server_side = server([Chain((USERPASS,), 1)])
        step = server_side.receive(OFFER_TEST_MORE)
        self.assertEqual(step.send, REQUEST_MORE_RELATIVE)
        step = server_side.receive(OFFER_TEST_MORE)  # "more" again, but nothing new
        self.assertFalse(step.result.succeeded)
        self.assertEqual(step.send[:1], b"\xff")

    def test_requests_for_more_are_capped(self):
        server_side = server([Chain((USERPASS,), 1)])
        asked = 0
        for round_number in range(10):
            # Each block brings one new (useless) id and claims more again.
            offer = bytes.fromhex("01 00 0000 02") + (0x1000 + round_number).to_bytes(4, "big") + b"\x00\x00\x00\x02"
            step = server_side.receive(offer)
            if step.result is not None:
                break
            asked += 1
        self.assertFalse(step.result.succeeded)
        self.assertEqual(asked, 4)  # MAFLimits.max_requests_for_more


class HostileInputTests(SynchronousTestCase):
    def assertFailsWithFailureMessage(self, *messages):
        server_side = server([Chain((TEST, USERPASS), 1)])
        step = None
        for message in messages:
            step = settle(server_side.receive(message))
            if step.result is not None:
                break
        self.assertIsNotNone(step.result)
        self.assertFalse(step.result.succeeded)
        self.assertIn(bytes.fromhex("ff 00 0000 ffffffff"), step.send)  # FAILURE, then the reason

    def test_bad_version(self):
        self.assertFailsWithFailureMessage(bytes.fromhex("01 01 0000 01 00000001"))

    def test_unknown_instruction(self):
        self.assertFailsWithFailureMessage(bytes.fromhex("07 00 0000"))

    def test_process_before_do(self):
        self.assertFailsWithFailureMessage(PROCESS_TEST)

    def test_process_for_another_submethod(self):
        self.assertFailsWithFailureMessage(bytes.fromhex("01 00 0000 02 00000001 00000003"),
                                           bytes.fromhex("05 00 0000 00000003 00000000"))

    def test_oversized_data_length(self):
        self.assertFailsWithFailureMessage(bytes.fromhex("01 00 0000 02 00000001 00000003"),
                                           bytes.fromhex("05 00 0000 00000001 7fffffff"))

    def test_acknowledge_is_refused(self):
        self.assertFailsWithFailureMessage(bytes.fromhex("06 00 0000"))

    def test_every_truncation_waits(self):
        for cut in range(len(OFFER_TEST)):
            server_side = server([Chain((TEST,), 1)])
            step = server_side.receive(OFFER_TEST[:cut])
            self.assertIsNone(step.result)
            self.assertEqual(step.send, b"")


class MAFEndToEndTests(IntegrationTestCase):
    def passwd(self):
        path = self.mktemp()
        set_password(path, "alice", b"secret", n=2**10)
        return path

    @inlineCallbacks
    def test_single_submethod_over_sockets(self):
        web_port, _ = self.byteServer(b"via MAF")
        socks_port, _ = self.startSOCKS(methods=["maf"], maf_chains=["test=1"])
        endpoint = SOCKS5ClientEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port), "127.0.0.1",
                                        web_port, [MAFClientFactory([(TEST, TestSubMethodClientFactory())])])
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.attributes["grade"], 1)
        data = yield connection.protocol.done
        self.assertTrue(data.endswith(b"via MAF"))

    @inlineCallbacks
    def test_grades_enforced_by_rules(self):
        web_port, _ = self.byteServer(b"graded")
        rules = rules_from_table({"rule": [
            {"action": "allow", "ports": [web_port], "min_grade": 2},
            {"action": "deny", "ports": [web_port]},
            {"action": "allow"},
        ]})
        socks_port, _ = self.startSOCKS(methods=["maf"], passwd=self.passwd(), rules=rules,
                                        maf_chains=["userpass+test=2", "test=1"])
        proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port)
        weak = SOCKS5ClientEndpoint(proxy, "127.0.0.1", web_port, [MAFClientFactory([(TEST, TestSubMethodClientFactory())])])
        yield self.assertFailure(weak.connect(Factory.forProtocol(Fetcher)), ConnectionNotAllowed)
        strong = SOCKS5ClientEndpoint(proxy, "127.0.0.1", web_port, [MAFClientFactory([
            (USERPASS, UserPassClientFactory("alice", "secret")), (TEST, TestSubMethodClientFactory())])])
        protocol = yield strong.connect(Factory.forProtocol(Fetcher))
        data = yield protocol.done
        self.assertTrue(data.endswith(b"graded"))

    @inlineCallbacks
    def test_unsatisfiable_chain_fails_the_deferred_with_the_reason(self):
        socks_port, _ = self.startSOCKS(methods=["maf"], passwd=self.passwd(), maf_chains=["userpass=1"])
        endpoint = SOCKS5ClientEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port), "127.0.0.1", 9,
                                        [MAFClientFactory([(TEST, TestSubMethodClientFactory())])])
        error = yield self.assertFailure(endpoint.connect(Factory.forProtocol(Fetcher)), ClientAuthenticationFailed)
        self.assertIn("no acceptable chain", str(error))


@pytest.mark.kerberos
class MAFKerberosTests(IntegrationTestCase):
    @inlineCallbacks
    def test_password_then_gssapi_chain_protects_the_session(self):
        from tests.helpers.kerberos import SERVICE_HOST, test_realm
        from txsocksgss.auth.gssapi import GSSAPIClientFactory

        realm = test_realm()
        passwd = self.mktemp()
        set_password(passwd, "alice", b"secret", n=2**10)
        body = os.urandom(100_000)
        web_port, _ = self.byteServer(body)
        socks_port, factory = self.startSOCKS(methods=["maf"], passwd=passwd, gssapi_keytab=realm.service_keytab,
                                              maf_chains=["userpass+gssapi=3"])
        client = MAFClientFactory([(USERPASS, UserPassClientFactory("alice", "secret")),
                                   (GSSAPI, GSSAPIClientFactory(host=SERVICE_HOST))])
        endpoint = SOCKS5ClientEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", socks_port), "127.0.0.1",
                                        web_port, [client])
        connection = yield endpoint.establish(Factory.forProtocol(Fetcher))
        self.assertEqual(connection.identity.attributes["grade"], 3)
        self.assertIsNotNone(connection.handshake.protection)
        [session] = factory.context.sessions
        self.assertEqual(session.identity.user, realm.user_principal)
        self.assertEqual(session.identity.attributes["users"], ("alice", realm.user_principal))
        self.assertEqual(session.protection.name, "confidentiality")
        data = yield connection.protocol.done
        self.assertTrue(data.endswith(body))




class MAFClientSettingsTests(IntegrationTestCase):
    @inlineCallbacks
    def test_endpoint_string_and_command_line(self):
        import sys

        from twisted.internet.endpoints import clientFromString

        from tests.helpers.processes import run_program

        path = self.mktemp()
        set_password(path, "alice", b"secret", n=2**10)
        web_port, _ = self.byteServer(b"strung")
        socks_port, _ = self.startSOCKS(methods=["maf"], passwd=path, maf_chains=["userpass+test=2"])
        endpoint = clientFromString(
            reactor, f"socks5:127.0.0.1:{socks_port}:host=127.0.0.1:port={web_port}:user=alice:password=secret"
                     ":methods=maf:maf_submethods=userpass+test")
        protocol = yield endpoint.connect(Factory.forProtocol(Fetcher))
        self.assertTrue((yield protocol.done).endswith(b"strung"))
        from tests.helpers.servers import BannerServerFactory

        banner_port = self.listen(BannerServerFactory(b"hello from the banner"))
        out, err, code = yield run_program(sys.executable, [
            "-m", "txsocksgss.cli", "connect", "--proxy", f"socks5://alice:secret@127.0.0.1:{socks_port}",
            "--method", "maf", "--maf-submethod", "userpass", "--maf-submethod", "test",
            "127.0.0.1", str(banner_port)])
        self.assertEqual((code, out), (0, b"hello from the banner"), err)


class MAFCoolDownTests(SynchronousTestCase):
    def test_a_refused_submethod_counts_even_when_the_client_hangs_up(self):
        from twisted.internet.testing import StringTransport

        from tests.helpers.harness import ServerHarness
        from txsocksgss.server.limits import LimitSettings, SessionLimits

        factory = MAFServerFactory(ChainPolicy([Chain((USERPASS,), 1)]), {USERPASS: userpass_server()})
        harness = ServerHarness(authenticators=[factory])
        harness.context.limits = SessionLimits(LimitSettings(auth_fail_limit=1, auth_fail_window=60))
        client = MAFClientFactory([(USERPASS, UserPassClientFactory("alice", "wrong"))]).buildAuthenticator(SESSION)
        harness.send(b"\x05\x01\x08" + client.begin().send)
        harness.take()  # selection + DO
        harness.send(settle(client.receive(DO_USERPASS)).send)
        harness.protocol.connectionLost(None)
        self.assertIsNotNone(harness.context.limits.blockedUntil("127.0.0.1", harness.reactor.seconds()))
        del StringTransport


DO_USERPASS = bytes.fromhex("03 00 0000 00000003 00000000")


class _Waiting:
    """A sub-method factory whose conversation answers each call with the next of ``steps`` (step or Deferred)."""

    def __init__(self, method, *steps):
        self.method = method
        self.steps = list(steps)
        self.received = []

    def buildAuthenticator(self, session):
        return self

    def begin(self):
        return self._next()

    def receive(self, data):
        self.received.append(data)
        return self._next()

    def _next(self):
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def abort(self):
        pass


class DriverInMAFTests(SynchronousTestCase):
    """MAF runs its sub-methods through txsocksgss.auth.driver: waits, crashes."""

    def test_a_server_submethod_that_raises_is_a_failed_submethod(self):
        broken = _Waiting(TEST, AuthStep(), ZeroDivisionError("bug"))
        server_side = server([Chain((TEST,), 1)], submethods={TEST: broken})
        client = MAFClientFactory([(TEST, TestSubMethodClientFactory())]).buildAuthenticator(SESSION)
        client_result, server_result, transcript = converse(client, server_side)
        self.assertFalse(server_result.succeeded)
        self.assertIn("sub-method test failed: authentication error", server_result.reason)
        self.assertFalse(client_result.succeeded)  # told with FAILURE, not a dropped connection
        self.assertEqual(transcript[-1][1][:1], b"\xff")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_a_client_submethod_that_raises_ends_the_client_side(self):
        broken = _Waiting(TEST, ValueError("bug"))
        client = MAFClientFactory([(TEST, broken)]).buildAuthenticator(SESSION)
        client.begin()
        step = client.receive(DO_TEST)
        self.assertFalse(step.result.succeeded)
        self.assertIn("sub-method test failed here: authentication error", step.result.reason)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_a_server_submethod_that_waits_before_speaking_sends_do_when_ready(self):
        first = Deferred()
        waiting = _Waiting(TEST, first, AuthStep(b"TEST", AuthResult.success(Identity(TEST))))
        server_side = server([Chain((TEST,), 1)], submethods={TEST: waiting})
        pending = server_side.receive(OFFER_TEST)
        self.assertIsInstance(pending, Deferred)
        self.assertFalse(pending.called)
        first.callback(AuthStep(b"HI"))
        step = settle(pending)
        self.assertEqual(step.send, bytes.fromhex("03 00 0000 00000001 00000002") + b"HI")
        self.assertEqual(server_side.receive(PROCESS_TEST).send, PROCESS_TEST)

    def test_do_data_waits_for_a_client_submethod_first_step(self):
        first = Deferred()
        waiting = _Waiting(TEST, first, AuthStep(result=AuthResult.success(Identity(TEST))))
        client = MAFClientFactory([(TEST, waiting)]).buildAuthenticator(SESSION)
        client.begin()
        pending = client.receive(bytes.fromhex("03 00 0000 00000001 00000002") + b"HI")
        self.assertEqual(waiting.received, [])  # kept until the first step is out
        first.callback(AuthStep(b"TEST"))
        step = settle(pending)
        self.assertEqual(waiting.received, [b"HI"])
        self.assertEqual(step.send, PROCESS_TEST + WHAT_NEXT)
