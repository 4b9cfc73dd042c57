"""
The session machine (txsocksgss.server.negotiation) on its own: driven
event by event through the recording fake of ISessionIO
(tests.helpers.session_io), on a task.Clock, with no socket and no reactor.
Every reply code, every method path, BIND and UDP ASSOCIATE through the
command context, the deadline, the admission counts, adoption, early data,
the endings; hostile bytes at every stage (hypothesis), and random orders
of events against the machine's invariants (a hypothesis state machine).
"""

from __future__ import annotations

import errno

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.helpers.fakes import SilentResolver
from tests.helpers.session_io import (
    SCRIPTED_METHOD,
    FakeCommand,
    FakeConnector,
    FakeTunnel,
    FixedIdent,
    LineCounter,
    RecordingSessionIO,
    ScriptedMethod,
    XorProtection,
    machine_on_fakes,
)
from txsocksgss.auth.conversation import AuthResult, AuthStep, Identity
from txsocksgss.auth.ident import IdentOutcome
from txsocksgss.auth.none import NoAuthServerFactory
from txsocksgss.auth.userpass import SOCKSUserRealm, UserPassServerFactory
from txsocksgss.errors import ProtocolError
from txsocksgss.interfaces import (
    ICommand,
    IConnector,
    IIdentChecker,
    IServerAuthenticator,
    IServerAuthenticatorFactory,
    ISessionIO,
    IStreamProtection,
    ITunnel,
)
from txsocksgss.server.guard import DestinationGuard
from txsocksgss.server.limits import LimitSettings
from txsocksgss.server.negotiation import (
    _MOVES,
    CONNECT_TIMEOUT,
    EARLY_DATA_LIMIT,
    NEGOTIATION_BUFFER_LIMIT,
    SessionState,
)
from txsocksgss.server.outcomes import Outcome, OutcomeKind
from txsocksgss.server.rules import rules_from_table
from txsocksgss.wire.socks4 import SOCKS4Command, SOCKS4Reply, SOCKS4ReplyCode, SOCKS4Request
from txsocksgss.wire.socks5 import Address, Command, Greeting, Reply, ReplyCode, Request
from txsocksgss.wire.userpass import UserPassRequest

CLIENT = ("192.0.2.7", 40000)
SERVER = ("198.51.100.1", 1080)
NO_AUTH = Greeting((0x00,)).serialize()
OFFER_USERPASS = Greeting((0x02,)).serialize()
OFFER_SCRIPTED = Greeting((SCRIPTED_METHOD,)).serialize()
BOUND = Address.of("10.0.0.1", 5000)
UNSPECIFIED = Address.of("0.0.0.0", 0)


def request(host: str = "192.0.2.1", port: int = 80, command: Command = Command.CONNECT) -> bytes:
    """A SOCKS 5 request (RFC 1928 s4)."""
    return Request(command, Address.of(host, port)).serialize()


def reply(code: ReplyCode, bound: Address = UNSPECIFIED) -> bytes:
    """A SOCKS 5 reply (RFC 1928 s6)."""
    return Reply(code, bound).serialize()


def socks4(host: str = "192.0.2.1", port: int = 80, userid: bytes = b"alice",
           command: SOCKS4Command = SOCKS4Command.CONNECT) -> bytes:
    """A SOCKS 4 request to an address, or a SOCKS 4a one to a name."""
    if host[0].isdigit():
        return SOCKS4Request(command, port, host, userid).serialize()
    return SOCKS4Request(command, port, "0.0.0.1", userid, host).serialize()


def reply4(code: SOCKS4ReplyCode, port: int = 0, address: str = "0.0.0.0") -> bytes:
    return SOCKS4Reply(code, port, address).serialize()


def userpass_method() -> UserPassServerFactory:
    """Method 02 through twisted.cred: user alice, password secret."""
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
    return UserPassServerFactory(Portal(SOCKSUserRealm(), [checker]))


def xor(data: bytes) -> bytes:
    return XorProtection().protect(data)


def waiting_steps(waiting: list[Deferred], cancelled: list[Deferred]):
    """A `ScriptedMethod` answer: every step waits (a Deferred in ``waiting``; cancelling it notes it in ``cancelled``)."""
    def answer(conversation, data):
        waiting.append(Deferred(cancelled.append))
        return waiting[-1]
    return answer


class FakesTests(SynchronousTestCase):
    """The fakes are faithful to the interfaces they stand for."""

    def test_fakes_provide_their_interfaces(self):
        machine, io, clock = machine_on_fakes()
        verifyObject(ISessionIO, io)
        connector = io.connect(["192.0.2.1"], 80, None, lambda u, b: True, lambda f: None)
        verifyObject(IConnector, connector)
        tunnel, unsent = io.openTunnel("upstream", b"reply", lambda outcome: None)
        verifyObject(ITunnel, tunnel)
        self.assertEqual(unsent, b"r")
        verifyObject(ICommand, io.openBind(machine, UNSPECIFIED))
        verifyObject(ICommand, io.openUDP(machine, UNSPECIFIED))
        method = ScriptedMethod(lambda conversation, data: AuthStep())
        verifyObject(IServerAuthenticatorFactory, method)
        verifyObject(IServerAuthenticator, method.buildAuthenticator(None))
        verifyObject(IStreamProtection, XorProtection())
        verifyObject(IIdentChecker, FixedIdent(IdentOutcome(user=None)))


class _MachineTestCase(SynchronousTestCase):
    def assertEndedWith(self, machine, io, outcome: str, sent: bytes | None = None, abort: bool = False):
        """The session is closed with ``outcome``; ``sent`` (a reply) was the last send; close was the last action."""
        self.assertIs(machine.state, SessionState.CLOSED)
        self.assertEqual(machine.record.outcome, outcome)
        self.assertTrue(machine.record.finished)
        self.assertEqual(io.actions[-1], ("close", abort))
        self.assertEqual(io.names().count("close"), 1)
        sends = [action[1] for action in io.actions if action[0] == "send"]
        if sent is not None:
            self.assertEqual(sends[-1], sent)
            self.assertEqual(io.actions[-2], ("send", sent))

    def connected(self, **kwargs):
        """A session whose CONNECT to 192.0.2.1:80 waits on its connector."""
        machine, io, clock = machine_on_fakes(**kwargs)
        machine.dataReceived(NO_AUTH + request())
        self.assertEqual(len(io.connectors), 1)
        return machine, io, clock, io.connectors[0]


class ReplyCodeTests(_MachineTestCase):
    """Every SOCKS 5 reply code (RFC 1928 s6) as the project maps them (docs/protocol.rst)."""

    def test_00_succeeded_with_the_connectors_bound_address(self):
        machine, io, clock, connector = self.connected()
        self.assertEqual(io.actions[:2], [("send", b"\x05\x00"), ("connect", ["192.0.2.1"], 80)])
        self.assertTrue(connector.started)
        self.assertIsNone(connector.timeout)  # the 30 s negotiation timeout bounds it
        connector.succeed("upstream", BOUND)
        self.assertTrue(connector.taken)
        success = reply(ReplyCode.SUCCEEDED, BOUND)
        self.assertEqual(success, b"\x05\x00\x00\x01\x0a\x00\x00\x01\x13\x88")
        self.assertEqual(io.actions[-1], ("tunnel", "upstream", success))
        tunnel = io.tunnels[0]
        self.assertEqual(tunnel.started, (b"", success[:1]))
        self.assertIs(machine.state, SessionState.RELAYING)
        self.assertIs(machine.relay, tunnel)
        self.assertNotIn("close", io.names())
        self.assertEqual((machine.record.command, machine.record.destination), ("connect", "192.0.2.1:80"))

    def test_connector_timeout_only_when_the_negotiation_timeout_is_longer(self):
        machine, io, clock, connector = self.connected(negotiation_timeout=CONNECT_TIMEOUT + 1)
        self.assertEqual(connector.timeout, CONNECT_TIMEOUT)

    def test_01_general_failure_for_a_malformed_request(self):
        machine, io, clock = machine_on_fakes()
        machine.dataReceived(NO_AUTH + b"\x05\x01\x00\x03\x00\x00\x50")  # a domain name of length 0
        self.assertEndedWith(machine, io, "protocol error in request: domain name of length 0",
                             reply(ReplyCode.GENERAL_FAILURE))
        self.assertNotIn("connect", io.names())

    def test_01_general_failure_for_a_request_of_another_version(self):
        machine, io, clock = machine_on_fakes()
        machine.dataReceived(NO_AUTH + b"\x04\x01\x00\x01")
        self.assertEqual(io.sent(), b"\x05\x00" + reply(ReplyCode.GENERAL_FAILURE))
        self.assertTrue(machine.record.outcome.startswith("protocol error in request: "), machine.record.outcome)
        self.assertEqual(io.actions[-1], ("close", False))

    def test_01_general_failure_for_an_error_that_is_no_network_outcome(self):
        machine, io, clock, connector = self.connected()
        connector.fail(ierror.ConnectError("boom"))
        self.assertEndedWith(machine, io, "general failure: An error occurred while connecting: boom.",
                             reply(ReplyCode.GENERAL_FAILURE))

    def test_01_for_a_bug_logs_the_traceback(self):
        machine, io, clock, connector = self.connected()
        connector.fail(ZeroDivisionError("bug"))
        self.assertEndedWith(machine, io, "general failure: bug", reply(ReplyCode.GENERAL_FAILURE))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_02_denied_by_the_policy(self):
        policy = rules_from_table({"rule": [{"action": "deny", "to": ["192.0.2.0/24"]}], "default": "allow"})
        machine, io, clock = machine_on_fakes(policy=policy)
        machine.dataReceived(NO_AUTH + request())
        self.assertEndedWith(machine, io, "denied by rule 1", reply(ReplyCode.NOT_ALLOWED))
        self.assertNotIn("connect", io.names())

    def test_02_the_policy_judges_every_resolved_address(self):
        policy = rules_from_table({"rule": [{"action": "deny", "to": ["192.0.2.1/32"]}], "default": "allow"})
        machine, io, clock = machine_on_fakes(policy=policy, names={"two.example": ["192.0.2.1", "192.0.2.2"]})
        machine.dataReceived(NO_AUTH + request("two.example"))
        self.assertEqual(io.actions[-1], ("connect", ["192.0.2.2"], 80))

    def test_02_denied_by_the_destination_guard(self):
        machine, io, clock = machine_on_fakes(guard=DestinationGuard(frozenset()))
        machine.dataReceived(NO_AUTH + request("127.0.0.1"))
        self.assertEndedWith(machine, io, "denied by destination guard (loopback)", reply(ReplyCode.NOT_ALLOWED))

    def test_02_the_guard_judges_resolved_addresses(self):
        machine, io, clock = machine_on_fakes(guard=DestinationGuard(frozenset()),
                                              names={"metadata.example": ["169.254.169.254"]})
        machine.dataReceived(NO_AUTH + request("metadata.example"))
        self.assertEndedWith(machine, io, "denied by destination guard (cloud metadata)",
                             reply(ReplyCode.NOT_ALLOWED))

    def test_03_network_unreachable(self):
        for error, text in [(ierror.NoRouteError(), "No route to host."),
                            (ierror.ConnectError(osError=errno.ENETUNREACH), "An error occurred while connecting: 101.")]:
            machine, io, clock, connector = self.connected()
            connector.fail(error)
            self.assertEndedWith(machine, io, f"network unreachable: {text}", reply(ReplyCode.NETWORK_UNREACHABLE))

    def test_04_host_unreachable_for_a_name_that_does_not_resolve(self):
        machine, io, clock = machine_on_fakes()
        machine.dataReceived(NO_AUTH + request("nowhere.example"))
        self.assertEndedWith(machine, io, "host unreachable: 'nowhere.example' did not resolve",
                             reply(ReplyCode.HOST_UNREACHABLE))
        self.assertEqual(machine.context.resolver.asked, ["nowhere.example"])

    def test_04_host_unreachable(self):
        machine, io, clock, connector = self.connected()
        connector.fail(ierror.ConnectError(osError=errno.EHOSTUNREACH))
        self.assertEndedWith(machine, io, "host unreachable: An error occurred while connecting: 113.",
                             reply(ReplyCode.HOST_UNREACHABLE))

    def test_05_connection_refused(self):
        machine, io, clock, connector = self.connected()
        connector.fail(ierror.ConnectionRefusedError())
        self.assertEndedWith(machine, io, "connection refused: Connection was refused by other side.",
                             reply(ReplyCode.CONNECTION_REFUSED))

    def test_06_ttl_expired_when_the_connector_times_out(self):
        machine, io, clock, connector = self.connected()
        connector.fail(ierror.TimeoutError())
        self.assertEndedWith(machine, io, "ttl expired: User timeout caused connection failure.",
                             reply(ReplyCode.TTL_EXPIRED))

    def test_06_ttl_expired_when_the_negotiation_times_out_while_connecting(self):
        machine, io, clock, connector = self.connected()
        clock.advance(29.9)
        self.assertIs(machine.state, SessionState.COMMAND)
        clock.advance(0.1)
        self.assertEndedWith(machine, io, "negotiation timeout while connecting to 192.0.2.1:80",
                             reply(ReplyCode.TTL_EXPIRED))
        self.assertTrue(connector.cancelled)
        # A connection that is up all the same is not wanted (the connector closes it).
        connector.succeed()
        self.assertIs(connector.taken, False)
        self.assertEqual(io.tunnels, [])

    def test_07_command_not_supported(self):
        machine, io, clock = machine_on_fakes()
        machine.dataReceived(NO_AUTH + b"\x05\x09\x00\x01\xc0\x00\x02\x01\x00\x50")
        self.assertEndedWith(machine, io, "bad request: command 0x09", reply(ReplyCode.COMMAND_NOT_SUPPORTED))

    def test_08_address_type_not_supported(self):
        machine, io, clock = machine_on_fakes()
        machine.dataReceived(NO_AUTH + b"\x05\x01\x00\x05")
        self.assertEndedWith(machine, io, "bad request: address type 0x05",
                             reply(ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED))


class MethodTests(_MachineTestCase):
    """Every way through method selection and subnegotiation (RFC 1928 s3, RFC 1929), and SOCKS 4."""

    def test_none_builds_no_conversation(self):
        factory = NoAuthServerFactory()
        factory.buildAuthenticator = lambda session: self.fail("a conversation was built for method none")
        machine, io, clock = machine_on_fakes(authenticators=[factory])
        machine.dataReceived(NO_AUTH)
        self.assertEqual(io.actions, [("send", b"\x05\x00")])
        self.assertIs(machine.state, SessionState.REQUEST)
        self.assertEqual((machine.record.method, machine.record.user), ("none", None))

    def test_the_servers_preference_decides(self):
        machine, io, clock = machine_on_fakes(authenticators=[userpass_method(), NoAuthServerFactory()])
        machine.dataReceived(Greeting((0x00, 0x02)).serialize())
        self.assertEqual(io.sent(), b"\x05\x02")
        self.assertIs(machine.state, SessionState.AUTHENTICATING)

    def test_byte_by_byte(self):
        machine, io, clock = machine_on_fakes(authenticators=[userpass_method()])
        for byte in OFFER_USERPASS + UserPassRequest(b"alice", b"secret").serialize() + request():
            machine.dataReceived(bytes([byte]))
        self.assertEqual(io.actions, [("send", b"\x05\x02"), ("send", b"\x01\x00"), ("connect", ["192.0.2.1"], 80)])
        self.assertEqual((machine.record.method, machine.record.user), ("userpass", "alice"))
        self.assertEqual(machine.identity.user, "alice")

    def test_pipelined_past_the_negotiation_buffer_limit(self):
        machine, io, clock = machine_on_fakes(authenticators=[userpass_method()])
        early = b"x" * 2000
        machine.dataReceived(OFFER_USERPASS + UserPassRequest(b"alice", b"secret").serialize() + request() + early)
        io.connectors[0].succeed()
        self.assertEqual(io.tunnels[0].started[0], early)

    def test_userpass_wrong_password(self):
        machine, io, clock = machine_on_fakes(authenticators=[userpass_method()])
        machine.dataReceived(OFFER_USERPASS + UserPassRequest(b"alice", b"guess").serialize() + request())
        self.assertEndedWith(machine, io, "authentication failed: bad user name or password for 'alice'",
                             b"\x01\x01")
        self.assertEqual(io.sent(), b"\x05\x02\x01\x01")
        self.assertNotIn("connect", io.names())

    def test_userpass_failures_start_the_cool_down(self):
        first, io, clock = machine_on_fakes(authenticators=[userpass_method()],
                                            limits=LimitSettings(auth_fail_limit=2, auth_fail_window=60))
        context, limits = first.context, first.context.limits
        first.dataReceived(OFFER_USERPASS + UserPassRequest(b"alice", b"guess").serialize())
        first.connectionLost()
        self.assertIsNone(limits.blockedUntil(CLIENT[0], clock.seconds()))
        second, io2, _ = machine_on_fakes(context=context, clock=clock)
        second.dataReceived(OFFER_USERPASS + UserPassRequest(b"mallory", b"guess").serialize())
        second.connectionLost()
        self.assertEqual(limits.blockedUntil(CLIENT[0], clock.seconds()), 60.0)
        third, io3, _ = machine_on_fakes(context=context, clock=clock, begin=False)
        self.assertFalse(third.begin(CLIENT, SERVER))
        self.assertEqual(io3.actions, [("close", True)])
        self.assertEqual((limits.sessions, limits.negotiating), (0, 0))

    def test_a_step_that_waits_buffers_what_arrives_meanwhile(self):
        waiting = []

        def answer(conversation, data):
            if len(conversation.received) == 1:
                waiting.append(Deferred())
                return waiting[-1]
            self.assertEqual(data, b"world" + request())
            return AuthStep(b"done", AuthResult.success(Identity(SCRIPTED_METHOD, "bob")), data[5:])

        method = ScriptedMethod(answer)
        machine, io, clock = machine_on_fakes(authenticators=[method])
        machine.dataReceived(OFFER_SCRIPTED + b"hello")
        machine.dataReceived(b"wor")
        machine.dataReceived(b"ld" + request())
        conversation = method.conversations[0]
        self.assertEqual(conversation.received, [b"hello"])
        self.assertEqual(conversation.session.client, CLIENT)
        waiting[0].callback(AuthStep(b"more"))
        self.assertEqual(conversation.received, [b"hello", b"world" + request()])
        self.assertEqual(io.actions, [("send", bytes([5, SCRIPTED_METHOD])), ("send", b"more"), ("send", b"done"),
                                      ("connect", ["192.0.2.1"], 80)])
        self.assertEqual((machine.record.method, machine.record.user), ("scripted", "bob"))
        self.assertFalse(conversation.aborted)

    def test_a_waiting_step_that_ends_feeds_the_buffered_bytes_to_the_request(self):
        waiting, cancelled = [], []
        method = ScriptedMethod(waiting_steps(waiting, cancelled))
        machine, io, clock = machine_on_fakes(authenticators=[method])
        machine.dataReceived(OFFER_SCRIPTED + b"token")
        machine.dataReceived(request())
        waiting[0].callback(AuthStep(b"", AuthResult.success(Identity(SCRIPTED_METHOD, "bob")), b""))
        self.assertEqual(io.actions[-1], ("connect", ["192.0.2.1"], 80))
        self.assertEqual(method.conversations[0].received, [b"token"])

    def test_too_much_data_while_a_step_waits(self):
        waiting, cancelled = [], []
        method = ScriptedMethod(waiting_steps(waiting, cancelled))
        machine, io, clock = machine_on_fakes(authenticators=[method])
        machine.dataReceived(OFFER_SCRIPTED + b"token")
        machine.dataReceived(b"x" * EARLY_DATA_LIMIT)
        self.assertIs(machine.state, SessionState.AUTHENTICATING)
        machine.dataReceived(b"x")
        self.assertEndedWith(machine, io, "client sent too much data during authentication")
        self.assertTrue(method.conversations[0].aborted)
        self.assertEqual(cancelled, waiting)

    def test_a_method_that_raises(self):
        def answer(conversation, data):
            raise ValueError("broken method")

        method = ScriptedMethod(answer)
        machine, io, clock = machine_on_fakes(authenticators=[method])
        machine.dataReceived(OFFER_SCRIPTED + b"token")
        self.assertEndedWith(machine, io, "authentication error")
        self.assertEqual(io.sent(), bytes([5, SCRIPTED_METHOD]))
        self.assertTrue(method.conversations[0].aborted)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_a_method_whose_waiting_step_fails(self):
        waiting, cancelled = [], []
        method = ScriptedMethod(waiting_steps(waiting, cancelled))
        machine, io, clock = machine_on_fakes(authenticators=[method])
        machine.dataReceived(OFFER_SCRIPTED + b"token")
        waiting[0].errback(ValueError("checker crashed"))
        self.assertEndedWith(machine, io, "authentication error")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_failed_attempts_of_a_conversation_cut_short_count(self):
        waiting = []

        def answer(conversation, data):
            conversation.failedAttempts = 1  # a MAF sub-method the server refused
            waiting.append(Deferred())
            return waiting[-1]

        machine, io, clock = machine_on_fakes(authenticators=[ScriptedMethod(answer)],
                                              limits=LimitSettings(auth_fail_limit=1))
        machine.dataReceived(OFFER_SCRIPTED + b"token")
        machine.eofReceived()
        self.assertEqual(machine.context.limits.blockedUntil(CLIENT[0], clock.seconds()), 60.0)

    def test_a_protection_is_installed_and_the_bytes_after_it_unprotected(self):
        protection = XorProtection()
        method = ScriptedMethod(lambda conversation, data: AuthStep(
            b"final token", AuthResult.success(Identity(SCRIPTED_METHOD, "carol"), protection), data[5:]))
        machine, io, clock = machine_on_fakes(authenticators=[method])
        machine.dataReceived(OFFER_SCRIPTED + b"token" + xor(request()))
        self.assertEqual(io.actions, [("send", bytes([5, SCRIPTED_METHOD])), ("send", b"final token"),
                                      ("protect", protection), ("connect", ["192.0.2.1"], 80)])
        self.assertIs(machine.protection, protection)
        self.assertEqual((machine.record.protection, machine.record.user), ("xor", "carol"))

    def test_after_the_protection_the_driver_unprotects(self):
        protection = XorProtection()
        method = ScriptedMethod(lambda conversation, data: AuthStep(
            b"", AuthResult.success(Identity(SCRIPTED_METHOD, "carol"), protection)))
        machine, io, clock = machine_on_fakes(authenticators=[method])
        machine.dataReceived(OFFER_SCRIPTED + b"token")
        self.assertEqual(io.names()[-1], "protect")
        machine.dataReceived(request())  # as the driver hands it over: unprotected already
        self.assertEqual(io.actions[-1], ("connect", ["192.0.2.1"], 80))

    def test_bytes_after_the_protection_that_fail_to_verify(self):
        method = ScriptedMethod(lambda conversation, data: AuthStep(
            b"", AuthResult.success(Identity(SCRIPTED_METHOD, "carol"), XorProtection()), b"\xff"))
        machine, io, clock = machine_on_fakes(authenticators=[method])
        machine.dataReceived(OFFER_SCRIPTED + b"token")
        self.assertEndedWith(machine, io, "protection failure: token failed to verify", abort=True)
        self.assertNotIn("connect", io.names())

    def test_a_driver_that_cannot_install_the_protection(self):
        class FailingIO(RecordingSessionIO):
            def installProtection(self, protection):
                super().installProtection(protection)
                self.machine.close("could not hand the connection over")

        machine, _, clock = machine_on_fakes(authenticators=[ScriptedMethod(lambda conversation, data: AuthStep(
            b"", AuthResult.success(Identity(SCRIPTED_METHOD, "carol"), XorProtection()), xor(request())))])
        io = FailingIO()
        io.machine = machine
        machine.adopt(io)
        machine.dataReceived(OFFER_SCRIPTED + b"token")
        self.assertEndedWith(machine, io, "could not hand the connection over")
        self.assertNotIn("connect", io.names())

    def test_the_identitys_protection_level_is_recorded(self):
        method = ScriptedMethod(lambda conversation, data: AuthStep(
            b"", AuthResult.success(Identity(SCRIPTED_METHOD, "dave", {"protection": "integrity"}))))
        machine, io, clock = machine_on_fakes(authenticators=[method])
        machine.dataReceived(OFFER_SCRIPTED + b"token")
        self.assertEqual(machine.record.protection, "integrity")

    def test_no_acceptable_method(self):
        machine, io, clock = machine_on_fakes()
        machine.dataReceived(Greeting((0x02, 0x01)).serialize())
        self.assertEndedWith(machine, io, "no acceptable method (client offered 0x02,0x01)", b"\x05\xff")
        self.assertEqual(io.sent(), b"\x05\xff")

    def test_socks4_disabled(self):
        machine, io, clock = machine_on_fakes()
        machine.dataReceived(socks4())
        self.assertEndedWith(machine, io, "SOCKS 4 request, but SOCKS 4 is not enabled (--method socks4)",
                             reply4(SOCKS4ReplyCode.REJECTED))
        self.assertEqual(io.sent(), b"\x00\x5b\x00\x00\x00\x00\x00\x00")

    def test_socks4_connect_without_an_ident_checker(self):
        machine, io, clock = machine_on_fakes(socks4=True)
        machine.dataReceived(socks4())
        self.assertEqual(io.actions, [("connect", ["192.0.2.1"], 80)])
        io.connectors[0].succeed("upstream", BOUND)
        self.assertEqual(io.actions[-1], ("tunnel", "upstream", reply4(SOCKS4ReplyCode.GRANTED, 5000, "10.0.0.1")))
        record = machine.record
        self.assertEqual((record.version, record.method, record.user, record.command),
                         (4, "socks4", "alice", "connect"))

    def test_socks4_connect_judged_by_the_ident_checker(self):
        ident = FixedIdent(IdentOutcome(user="alice", ident_answer="alice"))
        machine, io, clock = machine_on_fakes(socks4=True, ident=ident)
        machine.dataReceived(socks4())
        self.assertEqual(ident.asked, [(CLIENT, SERVER, "alice")])
        self.assertEqual(io.actions, [("connect", ["192.0.2.1"], 80)])
        self.assertEqual(machine.identity.attributes, {"ident": "alice"})

    def test_socks4_bind_after_a_waiting_ident_check(self):
        ident = FixedIdent(wait=True)
        machine, io, clock = machine_on_fakes(socks4=True, ident=ident)
        machine.dataReceived(socks4("192.0.2.9", 0, command=SOCKS4Command.BIND))
        self.assertEqual(io.actions, [])
        ident.pending[0].callback(IdentOutcome(user="erin", ident_answer="erin"))
        self.assertEqual(io.actions, [("bind", Address.of("192.0.2.9", 0))])
        self.assertTrue(io.commands[0].started)
        self.assertEqual((machine.record.command, machine.record.user), ("bind", "erin"))
        self.assertEqual(machine.accessRequest("bind", "192.0.2.9", 0, None).method, "socks4")

    def test_socks4_ident_refusals(self):
        for code in (SOCKS4ReplyCode.IDENT_UNREACHABLE, SOCKS4ReplyCode.IDENT_MISMATCH):
            ident = FixedIdent(IdentOutcome(user=None, refusal=code, reason="identd says no"))
            machine, io, clock = machine_on_fakes(socks4=True, ident=ident)
            machine.dataReceived(socks4())
            self.assertEndedWith(machine, io, "ident: identd says no", reply4(code))
            self.assertNotIn("connect", io.names())

    def test_socks4_failures_reply_91(self):
        machine, io, clock = machine_on_fakes(socks4=True)
        machine.dataReceived(socks4())
        io.connectors[0].fail(ierror.ConnectionRefusedError())
        self.assertEndedWith(machine, io, "connection refused: Connection was refused by other side.",
                             reply4(SOCKS4ReplyCode.REJECTED))

    def test_socks4_denied_by_the_policy(self):
        policy = rules_from_table({"rule": [{"action": "deny", "versions": [4]}], "default": "allow"})
        machine, io, clock = machine_on_fakes(socks4=True, policy=policy)
        machine.dataReceived(socks4())
        self.assertEndedWith(machine, io, "denied by rule 1", reply4(SOCKS4ReplyCode.REJECTED))

    def test_socks4a_names(self):
        machine, io, clock = machine_on_fakes(socks4=True, names={"www.example": ["192.0.2.80"]})
        machine.dataReceived(socks4("www.example", 8080))
        self.assertEqual(io.actions, [("connect", ["192.0.2.80"], 8080)])
        self.assertEqual(machine.record.destination, "www.example:8080")

    def test_socks4a_name_that_does_not_resolve(self):
        machine, io, clock = machine_on_fakes(socks4=True)
        machine.dataReceived(socks4("nowhere.example"))
        self.assertEndedWith(machine, io, "host unreachable: 'nowhere.example' did not resolve",
                             reply4(SOCKS4ReplyCode.REJECTED))

    def test_socks4_userid_over_its_cap(self):
        machine, io, clock = machine_on_fakes(socks4=True)
        machine.dataReceived(socks4()[:8] + b"u" * 256)
        self.assertEndedWith(machine, io, "protocol error in request: user id longer than 255 bytes",
                             reply4(SOCKS4ReplyCode.REJECTED))

    def test_socks4a_hostname_over_its_cap(self):
        machine, io, clock = machine_on_fakes(socks4=True)
        machine.dataReceived(socks4("www.example")[:14])
        machine.dataReceived(b"h" * 256)
        self.assertEndedWith(machine, io, "protocol error in request: host name longer than 255 bytes",
                             reply4(SOCKS4ReplyCode.REJECTED))

    def test_the_negotiation_buffer_holds_the_longest_messages(self):
        # The cap is a backstop: every legal message is shorter, so each
        # parser's own limits (above) answer first and no legal message is cut.
        name = ".".join(["a" * 63] * 4)[:255]  # the longest name: 255 bytes, labels of 63
        longest = SOCKS4Request(SOCKS4Command.CONNECT, 80, "0.0.0.1", b"u" * 255, name).serialize()
        self.assertEqual(len(longest), 8 + 256 + 256)
        self.assertGreaterEqual(NEGOTIATION_BUFFER_LIMIT,
                                max(len(longest), len(Greeting(tuple(range(255))).serialize()), len(request(name))))
        machine, io, clock = machine_on_fakes(socks4=True, names={name: ["192.0.2.80"]})
        machine.dataReceived(longest)
        self.assertEqual(io.actions, [("connect", ["192.0.2.80"], 80)])

    def test_socks4_unsupported_command(self):
        machine, io, clock = machine_on_fakes(socks4=True)
        machine.dataReceived(b"\x04\x03")
        self.assertEndedWith(machine, io, "bad request: SOCKS 4 command 0x03", reply4(SOCKS4ReplyCode.REJECTED))


class CommandTests(_MachineTestCase):
    """BIND and UDP ASSOCIATE through the command context (the machine itself)."""

    def command(self, kind: Command, destination: str = "192.0.2.9", port: int = 0, **kwargs):
        machine, io, clock = machine_on_fakes(**kwargs)
        machine.dataReceived(NO_AUTH + request(destination, port, kind))
        self.assertEqual(len(io.commands), 1)
        return machine, io, clock, io.commands[0]

    def test_bind_is_opened_and_started(self):
        machine, io, clock, command = self.command(Command.BIND)
        self.assertEqual(io.actions[-1], ("bind", Address.of("192.0.2.9", 0)))
        self.assertEqual(command.kind, "bind")
        self.assertIs(command.context, machine)
        self.assertTrue(command.started)
        self.assertEqual(machine.record.command, "bind")
        self.assertEqual(machine.listeningInterface(), SERVER[0])

    def test_bind_replies_twice_and_relays(self):
        machine, io, clock, command = self.command(Command.BIND)
        limits = machine.context.limits
        self.assertEqual(limits.negotiating, 1)
        listening = Address.of(SERVER[0], 6000)
        machine.sendReply(ReplyCode.SUCCEEDED, listening)
        self.assertEqual(io.actions[-1], ("send", reply(ReplyCode.SUCCEEDED, listening)))
        self.assertEqual((limits.sessions, limits.negotiating), (1, 0))
        self.assertEqual(clock.getDelayedCalls(), [])  # the negotiation deadline is over
        self.assertIs(machine.state, SessionState.COMMAND)
        peer = Address.of("192.0.2.9", 4321)
        machine.startRelay("peer", ReplyCode.SUCCEEDED, peer)
        self.assertEqual(io.actions[-1], ("tunnel", "peer", reply(ReplyCode.SUCCEEDED, peer)))
        self.assertIs(machine.state, SessionState.RELAYING)
        self.assertEqual(limits.negotiating, 0)

    def test_udp_associate(self):
        machine, io, clock, command = self.command(Command.UDP_ASSOCIATE, "0.0.0.0", 0)
        self.assertEqual(io.actions[-1], ("udp", UNSPECIFIED))
        self.assertTrue(command.started)
        relay = Address.of(SERVER[0], 6001)
        machine.sendReply(ReplyCode.SUCCEEDED, relay)
        machine.associationStarted()
        self.assertIs(machine.state, SessionState.RELAYING)
        actions = list(io.actions)
        machine.dataReceived(b"nothing to say")  # RFC 1928 s7: the control connection carries nothing
        self.assertEqual(io.actions, actions)
        machine.eofReceived()
        self.assertEndedWith(machine, io, "client closed the control connection", reply(ReplyCode.SUCCEEDED, relay))
        self.assertTrue(command.stopped)

    def test_the_command_bytes_go_to_the_record(self):
        machine, io, clock, command = self.command(Command.UDP_ASSOCIATE, "0.0.0.0", 0)
        machine.sendReply(ReplyCode.SUCCEEDED)
        machine.associationStarted()
        command.bytes_from_client, command.bytes_to_client = 300, 700
        machine.closeWith("udp association idle")
        self.assertEqual((machine.record.bytes_from_client, machine.record.bytes_to_client), (300, 700))

    def test_udp_ends_with_its_control_connection(self):
        machine, io, clock, command = self.command(Command.UDP_ASSOCIATE, "0.0.0.0", 0)
        machine.sendReply(ReplyCode.SUCCEEDED)
        machine.associationStarted()
        machine.connectionLost()
        self.assertEqual(machine.record.outcome, "client closed")
        self.assertTrue(command.stopped)
        self.assertNotIn("close", io.names())  # the connection is gone already

    def test_close_with_a_reply(self):
        machine, io, clock, command = self.command(Command.BIND)
        machine.sendReply(ReplyCode.SUCCEEDED, Address.of(SERVER[0], 6000))
        machine.closeWith("bind: no connection within the timeout", ReplyCode.TTL_EXPIRED)
        self.assertEndedWith(machine, io, "bind: no connection within the timeout", reply(ReplyCode.TTL_EXPIRED))
        self.assertTrue(command.stopped)

    def test_command_failed_maps_the_failure(self):
        machine, io, clock, command = self.command(Command.BIND)
        machine.commandFailed(Failure(CancelledError()))
        self.assertIs(machine.state, SessionState.COMMAND)  # cancelled work says nothing
        machine.commandFailed(Failure(ierror.ConnectionRefusedError()))
        self.assertEndedWith(machine, io, "connection refused: Connection was refused by other side.",
                             reply(ReplyCode.CONNECTION_REFUSED))
        self.assertTrue(command.stopped)

    def test_pending_work_of_a_command_is_cancelled_at_the_end(self):
        machine, io, clock, command = self.command(Command.BIND)
        work = Deferred()
        machine.trackPending(work)
        clock.advance(30)
        self.assertEqual(machine.record.outcome, "negotiation timeout while serving the request")
        self.failureResultOf(work, CancelledError)

    def test_resolve_allowed(self):
        policy = rules_from_table({"rule": [{"action": "deny", "to": ["192.0.2.1/32"]}], "default": "allow"})
        machine, io, clock, command = self.command(Command.BIND, policy=policy,
                                                   names={"peer.example": ["192.0.2.1", "192.0.2.2"]})
        found = []
        machine.resolveAllowed("bind", Address.of("peer.example", 0)).addCallback(found.append)
        self.assertEqual(found, [["192.0.2.2"]])

    def test_external_address(self):
        machine, io, clock, command = self.command(Command.BIND)
        machine.context.external = "203.0.113.5"
        self.assertEqual(machine.listeningInterface(), "203.0.113.5")


class DeadlineTests(_MachineTestCase):
    """The negotiation timeout: from accept to the first reply, on the injected clock."""

    def test_in_greeting(self):
        machine, io, clock = machine_on_fakes()
        machine.dataReceived(b"\x05")
        clock.advance(30)
        self.assertEndedWith(machine, io, "negotiation timeout in greeting")
        self.assertEqual(io.sent(), b"")

    def test_in_authenticating(self):
        waiting, cancelled = [], []
        method = ScriptedMethod(waiting_steps(waiting, cancelled))
        machine, io, clock = machine_on_fakes(authenticators=[method])
        machine.dataReceived(OFFER_SCRIPTED + b"token")
        clock.advance(30)
        self.assertEndedWith(machine, io, "negotiation timeout in authenticating")
        self.assertTrue(method.conversations[0].aborted)
        self.assertEqual(cancelled, waiting)

    def test_in_request(self):
        machine, io, clock = machine_on_fakes()
        machine.dataReceived(NO_AUTH + request()[:5])
        clock.advance(30)
        self.assertEndedWith(machine, io, "negotiation timeout in request")
        self.assertEqual(io.sent(), b"\x05\x00")  # no reply: there is no request to answer

    def test_while_resolving(self):
        resolver = SilentResolver()
        machine, io, clock = machine_on_fakes(resolver=resolver)
        machine.dataReceived(NO_AUTH + request("slow.example"))
        clock.advance(30)
        self.assertEndedWith(machine, io, "negotiation timeout while resolving slow.example",
                             reply(ReplyCode.TTL_EXPIRED))
        self.assertTrue(resolver.resolutions[0].cancelled)

    def test_while_resolving_a_socks4a_name(self):
        resolver = SilentResolver()
        machine, io, clock = machine_on_fakes(socks4=True, resolver=resolver)
        machine.dataReceived(socks4("slow.example"))
        clock.advance(30)
        self.assertEndedWith(machine, io, "negotiation timeout while resolving slow.example",
                             reply4(SOCKS4ReplyCode.REJECTED))
        self.assertTrue(resolver.resolutions[0].cancelled)

    def test_while_waiting_for_ident(self):
        ident = FixedIdent(wait=True)
        machine, io, clock = machine_on_fakes(socks4=True, ident=ident)
        machine.dataReceived(socks4())
        clock.advance(30)
        self.assertEndedWith(machine, io, "negotiation timeout while serving the request",
                             reply4(SOCKS4ReplyCode.REJECTED))
        self.assertEqual(ident.cancelled, ident.pending)

    def test_the_timer_ends_at_the_first_reply(self):
        machine, io, clock, connector = self.connected()
        clock.advance(10)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        connector.succeed()
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(1000)
        self.assertIs(machine.state, SessionState.RELAYING)
        self.assertEqual((machine.record.started, machine.record.replied), (0.0, 10.0))

    def test_the_timer_ends_with_the_session(self):
        machine, io, clock = machine_on_fakes()
        machine.eofReceived()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEndedWith(machine, io, "client closed during negotiation")


class LimitsTests(_MachineTestCase):
    """Each admission is counted in, out of negotiation and released exactly once."""

    def test_a_session_through_its_tunnel(self):
        machine, io, clock = machine_on_fakes(begin=False)
        limits, context = machine.context.limits, machine.context
        self.assertEqual((limits.sessions, limits.negotiating), (0, 0))
        self.assertTrue(machine.begin(CLIENT, SERVER))
        self.assertEqual((limits.sessions, limits.negotiating, limits.sessionsOf(CLIENT[0])), (1, 1, 1))
        self.assertEqual(context.sessions, {machine})
        machine.dataReceived(NO_AUTH + request())
        io.connectors[0].succeed()
        self.assertEqual((limits.sessions, limits.negotiating), (1, 0))
        self.assertEqual(context.sessions, {machine})
        io.tunnels[0].end("upstream closed")  # the fake driver reports the connection gone
        self.assertEqual((limits.sessions, limits.negotiating, limits.sessionsOf(CLIENT[0])), (0, 0, 0))
        self.assertEqual(context.sessions, set())
        machine.connectionLost()
        self.assertEqual((limits.sessions, limits.negotiating), (0, 0))

    def test_a_session_closed_in_negotiation(self):
        machine, io, clock = machine_on_fakes()
        limits, context = machine.context.limits, machine.context
        clock.advance(30)
        self.assertEqual((limits.sessions, limits.negotiating), (1, 0))
        self.assertEqual(context.sessions, {machine})  # until the connection is gone
        machine.connectionLost()
        machine.connectionLost()
        self.assertEqual((limits.sessions, limits.negotiating), (0, 0))
        self.assertEqual(context.sessions, set())

    def test_a_refused_admission(self):
        first, io, clock = machine_on_fakes(limits=LimitSettings(max_sessions=1))
        second, io2, _ = machine_on_fakes(context=first.context, clock=clock, begin=False)
        self.assertFalse(second.begin(CLIENT, SERVER))
        self.assertEqual(io2.actions, [("close", True)])
        self.assertIsNone(second.record)
        self.assertIs(second.state, SessionState.CLOSED)
        self.assertEqual(first.context.sessions, {first})
        self.assertEqual(first.context.limits.sessions, 1)
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # the first one's deadline only
        second.dataReceived(NO_AUTH)
        second.connectionLost()
        self.assertEqual(io2.actions, [("close", True)])
        self.assertEqual(first.context.limits.sessions, 1)

    def test_a_unix_socket_client(self):
        machine, io, clock = machine_on_fakes(begin=False)
        self.assertTrue(machine.begin(None, None))
        self.assertEqual(machine.record.client, "unix")
        self.assertIsNone(machine.listeningInterface())


class AdoptionTests(_MachineTestCase):
    def test_later_actions_go_to_the_new_driver(self):
        machine, first, clock = machine_on_fakes()
        machine.dataReceived(NO_AUTH)
        second = RecordingSessionIO()
        second.machine = machine
        machine.adopt(second)
        machine.dataReceived(request())
        second.connectors[0].succeed()
        self.assertEqual(first.actions, [("send", b"\x05\x00")])
        self.assertEqual(second.names(), ["connect", "tunnel"])
        self.assertEqual(machine.context.limits.negotiating, 0)

    def test_adopted_mid_connect(self):
        machine, first, clock, connector = self.connected()
        second = RecordingSessionIO()
        second.machine = machine
        machine.adopt(second)
        clock.advance(30)
        self.assertEqual(second.actions, [("send", reply(ReplyCode.TTL_EXPIRED)), ("close", False)])
        self.assertEqual(first.names(), ["send", "connect"])


class EarlyDataTests(_MachineTestCase):
    def test_early_bytes_and_the_unsent_reply_go_to_the_tunnel(self):
        machine, io, clock, connector = self.connected()
        machine.dataReceived(b"GET / HTTP/1.0\r\n")
        machine.dataReceived(b"\r\n")
        connector.succeed("upstream", BOUND)
        self.assertEqual(io.tunnels[0].started, (b"GET / HTTP/1.0\r\n\r\n", reply(ReplyCode.SUCCEEDED, BOUND)[:1]))

    def test_too_much_early_data(self):
        machine, io, clock, connector = self.connected()
        machine.dataReceived(b"x" * EARLY_DATA_LIMIT)
        self.assertIs(machine.state, SessionState.COMMAND)
        machine.dataReceived(b"x")
        self.assertEndedWith(machine, io, "client sent too much data before the reply",
                             reply(ReplyCode.GENERAL_FAILURE))
        self.assertTrue(connector.cancelled)

    def test_bytes_after_the_request_in_one_chunk_are_early_data(self):
        machine, io, clock = machine_on_fakes()
        machine.dataReceived(NO_AUTH + request() + b"early")
        io.connectors[0].succeed()
        self.assertEqual(io.tunnels[0].started[0], b"early")


class EndingTests(_MachineTestCase):
    def relaying(self):
        counter = LineCounter()
        machine, io, clock = machine_on_fakes(observers=(counter,))
        machine.dataReceived(NO_AUTH + request())
        io.connectors[0].succeed()
        return machine, io, clock, io.tunnels[0], counter

    def test_the_tunnels_end_writes_the_line_once(self):
        machine, io, clock, tunnel, counter = self.relaying()
        clock.advance(5)
        tunnel.end("upstream closed", up=123, down=4567)
        self.assertEqual(counter.finished, ["upstream closed"])
        self.assertEqual(counter.replied, 1)
        record = machine.record
        self.assertEqual((record.bytes_from_client, record.bytes_to_client), (123, 4567))
        self.assertIs(machine.state, SessionState.CLOSED)
        self.assertEqual(io.actions[-1], ("tunnel ended", "upstream closed"))
        machine.connectionLost()
        machine.shutdown()
        self.assertEqual(counter.finished, ["upstream closed"])
        self.assertEqual(io.actions[-1], ("tunnel ended", "upstream closed"))

    def test_shutdown_closes_the_tunnel(self):
        machine, io, clock, tunnel, counter = self.relaying()
        machine.shutdown()
        self.assertEqual(tunnel.ended, "server shutdown")
        self.assertEqual(counter.finished, ["server shutdown"])
        self.assertNotIn("close", io.names())

    def test_shutdown_aborts_a_negotiating_session(self):
        machine, io, clock, connector = self.connected()
        machine.shutdown()
        self.assertEndedWith(machine, io, "server shutdown", abort=True)
        self.assertTrue(connector.cancelled)
        self.assertEqual(io.sent(), b"\x05\x00")

    def test_close_sessions_of_the_context(self):
        machine, io, clock = machine_on_fakes()
        machine.context.closeSessions()
        self.assertEndedWith(machine, io, "server shutdown", abort=True)

    def test_protection_failed_in_negotiation(self):
        machine, io, clock = machine_on_fakes()
        machine.protectionFailed(ProtocolError("bad token"))
        self.assertEndedWith(machine, io, "protection failure: bad token", abort=True)

    def test_protection_failed_in_the_tunnel(self):
        machine, io, clock, tunnel, counter = self.relaying()
        machine.protectionFailed(ProtocolError("bad token"))
        self.assertEqual(tunnel.ended, "protection failure: bad token")
        self.assertEqual(counter.finished, ["protection failure: bad token"])
        self.assertEqual(io.actions[-1], ("close", True))

    def test_the_client_gone_in_the_tunnel(self):
        machine, io, clock, tunnel, counter = self.relaying()
        machine.connectionLost()
        self.assertEqual(tunnel.ended, "client closed")
        self.assertEqual(counter.finished, ["client closed"])
        self.assertEqual(machine.context.limits.sessions, 0)

    def test_the_client_gone_in_negotiation(self):
        machine, io, clock, connector = self.connected()
        machine.connectionLost()
        self.assertEqual(machine.record.outcome, "client closed during negotiation")
        self.assertEqual(io.names(), ["send", "connect"])  # no reply, no close: nobody to send it to
        self.assertTrue(connector.cancelled)
        self.assertTrue(machine.lost)

    def test_a_machine_closed_twice_ends_once(self):
        counter = LineCounter()
        machine, io, clock = machine_on_fakes(observers=(counter,))
        machine.close("first")
        machine.close("second", ReplyCode.GENERAL_FAILURE)
        machine.eofReceived()
        self.assertEqual(counter.finished, ["first"])
        self.assertEqual(io.actions, [("close", False)])


# -- hostile input at every stage ---------------------------------------------

_CHUNKS = st.lists(st.binary(max_size=48), max_size=8)
_PREFIXES = {
    "greeting": (dict(), b""),
    "after none": (dict(), NO_AUTH),
    "after userpass": (dict(authenticators=[userpass_method()]),
                       OFFER_USERPASS + UserPassRequest(b"alice", b"secret").serialize()),
    "userpass": (dict(authenticators=[userpass_method()]), OFFER_USERPASS),
    "socks 4": (dict(socks4=True, names={"www.example": ["192.0.2.80"]}), b""),
}


class HostileInputTests(SynchronousTestCase):
    """Arbitrary bytes, arbitrarily split: the machine never raises; it waits or it ends cleanly."""

    def check(self, stage: str, chunks: list[bytes], first: bytes = b"") -> None:
        kwargs, prefix = _PREFIXES[stage]
        counter = LineCounter()
        machine, io, clock = machine_on_fakes(observers=(counter,), **kwargs)
        replies = []
        make_reply = machine._reply
        machine._reply = lambda code, bound: replies.append(code) or make_reply(code, bound)
        machine.dataReceived(prefix)
        for chunk in [first, *chunks]:
            machine.dataReceived(chunk)
        self.assertLessEqual(len(replies), 1)
        if machine.state is SessionState.CLOSED:
            self.assertEqual(len(counter.finished), 1)
            self.assertEqual(io.names().count("close"), 1)
            self.assertEqual(io.names()[-1], "close")
        else:
            self.assertNotIn("close", io.names())
            self.assertEqual(counter.finished, [])
            self.assertEqual(replies, [])
        self.assertEqual(machine.context.limits.sessions, 1)
        machine.connectionLost()
        self.assertEqual(len(counter.finished), 1)
        self.assertEqual((machine.context.limits.sessions, machine.context.limits.negotiating), (0, 0))

    @settings(max_examples=150, deadline=None)
    @given(st.sampled_from([b"", b"\x05", b"\x04", b"\x05\x01\x00"]), _CHUNKS)
    def test_at_the_greeting(self, first, chunks):
        self.check("greeting", chunks, first)

    @settings(max_examples=150, deadline=None)
    @given(st.sampled_from([b"", b"\x05\x01\x00", b"\x05\x01\x00\x03", b"\x05\x02\x00\x01"]), _CHUNKS)
    def test_after_method_none(self, first, chunks):
        self.check("after none", chunks, first)

    @settings(max_examples=100, deadline=None)
    @given(_CHUNKS)
    def test_in_the_userpass_subnegotiation(self, chunks):
        self.check("userpass", chunks, b"\x01")

    @settings(max_examples=100, deadline=None)
    @given(st.sampled_from([b"", b"\x05\x01\x00", b"\x05\x03\x00\x01"]), _CHUNKS)
    def test_after_userpass(self, first, chunks):
        self.check("after userpass", chunks, first)

    @settings(max_examples=150, deadline=None)
    @given(st.sampled_from([b"\x04", b"\x04\x01\x00\x50\x00\x00\x00\x01", b"\x04\x02"]), _CHUNKS)
    def test_in_socks4(self, first, chunks):
        self.check("socks 4", chunks, first)


# -- random orders of events ----------------------------------------------------

_VALID_CHUNKS = [
    NO_AUTH,
    OFFER_USERPASS,
    UserPassRequest(b"alice", b"secret").serialize(),
    request(),
    request("www.example"),
    request("nowhere.example"),
    request("0.0.0.0", 0, Command.BIND),
    request("0.0.0.0", 0, Command.UDP_ASSOCIATE),
    socks4(),
]
# Whole conversations of a client, message by message: the state machine's
# client follows one (with random events between the messages), so that its
# sessions get past the greeting.
_SCRIPTS = [
    [NO_AUTH, request()],
    [NO_AUTH + request("www.example") + b"early"],
    [OFFER_USERPASS, UserPassRequest(b"alice", b"secret").serialize(), request()],
    [NO_AUTH, request("0.0.0.0", 0, Command.BIND)],
    [NO_AUTH, request("0.0.0.0", 0, Command.UDP_ASSOCIATE)],
    [socks4()],
    [socks4("www.example"), b"early"],
]
# The events that end a session (and stray bytes, which mostly do) happen
# only one time in four they are drawn: sessions then live long enough to
# meet the others.
_ONE_IN_FOUR = st.integers(0, 3)
_CONNECT_ERRORS = [ierror.ConnectionRefusedError(), ierror.TimeoutError(), ierror.NoRouteError()]
_COMMAND_ERRORS = [*_CONNECT_ERRORS, CancelledError()]


class SessionEvents(RuleBasedStateMachine):
    """
    One session under events in any order, each delivered the way the
    drivers deliver them (nothing from the client once its connection is
    gone; nothing from a connector after it is cancelled; nothing from a
    command after it is stopped), checked against the machine's invariants.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counter = LineCounter()
        self.machine, self.io, self.clock = machine_on_fakes(
            authenticators=[NoAuthServerFactory(), userpass_method()], socks4=True,
            names={"www.example": ["192.0.2.80"]}, observers=(self.counter,))
        self.limits = self.machine.context.limits
        self.seen = [self.machine.state]
        move = self.machine._moveTo

        def recordingMove(state: SessionState) -> None:
            move(state)
            self.seen.append(state)

        self.machine._moveTo = recordingMove
        self.actions_when_closed: int | None = None
        self.negotiated = False

    # what the client does

    @initialize(script=st.sampled_from(_SCRIPTS), at_once=st.integers(0, 3))
    def choose_a_conversation(self, script, at_once):
        """The client's conversation, ``at_once`` of its messages sent before any other event."""
        self.script = list(script)
        for message in self.script[:at_once]:
            self.machine.io.clientSends(message)
        del self.script[:at_once]

    @precondition(lambda self: not self.machine.lost and self.script)
    @rule(split=st.integers(0, 8))
    def client_follows_its_conversation(self, split):
        message = self.script.pop(0)
        if 0 < split < len(message):
            self.script.insert(0, message[split:])
            message = message[:split]
        self.machine.io.clientSends(message)

    @precondition(lambda self: not self.machine.lost)
    @rule(data=st.one_of(st.sampled_from(_VALID_CHUNKS), st.binary(max_size=24)), odds=_ONE_IN_FOUR)
    def client_sends(self, data, odds):
        if odds == 0:
            self.machine.io.clientSends(data)

    @precondition(lambda self: not self.machine.lost)
    @rule(odds=_ONE_IN_FOUR)
    def client_shuts_down(self, odds):
        if odds == 0:
            self.machine.io.clientShutsDown()

    @precondition(lambda self: not self.machine.lost)
    @rule(odds=_ONE_IN_FOUR)
    def client_gone(self, odds):
        if odds == 0:
            self.machine.connectionLost()

    @precondition(lambda self: not self.machine.lost)
    @rule(odds=_ONE_IN_FOUR)
    def protection_fails(self, odds):
        if odds == 0:
            self.machine.protectionFailed(ProtocolError("bad token"))

    # time and the server

    @rule(seconds=st.sampled_from([0.5, 2.0, 5.0, 31.0]))
    def time_passes(self, seconds):
        self.clock.advance(seconds)

    @precondition(lambda self: self.machine in self.machine.context.sessions)
    @rule(odds=_ONE_IN_FOUR)
    def server_shuts_down(self, odds):
        if odds == 0:
            self.machine.shutdown()

    @rule()
    def another_driver_adopts(self):
        current: RecordingSessionIO = self.machine.io
        successor = RecordingSessionIO()
        # One log across drivers, so that the order of actions is kept.
        successor.actions, successor.connectors = current.actions, current.connectors
        successor.tunnels, successor.commands = current.tunnels, current.commands
        successor.machine = self.machine
        self.machine.adopt(successor)

    # the work the machine started

    def _connectors(self) -> list[FakeConnector]:
        return [c for c in self.io.connectors if c.started and not c.cancelled and c.taken is None
                and not getattr(c, "failed", False)]

    @precondition(lambda self: self._connectors())
    @rule(bound=st.sampled_from([BOUND, Address.of("2001:db8::1", 443)]))
    def connector_succeeds(self, bound):
        connector = self._connectors()[0]
        connector.succeed("upstream", bound)
        if self.machine.state is SessionState.CLOSED and self.machine.relay is None:
            assert connector.taken is False

    @precondition(lambda self: self._connectors())
    @rule(error=st.sampled_from(_CONNECT_ERRORS))
    def connector_fails(self, error):
        connector = self._connectors()[0]
        connector.failed = True
        connector.fail(error)

    def _tunnels(self) -> list[FakeTunnel]:
        return [t for t in self.io.tunnels if t.ended is None]

    @precondition(lambda self: self._tunnels())
    @rule(up=st.integers(0, 10), down=st.integers(0, 10))
    def tunnel_ends(self, up, down):
        tunnel = self._tunnels()[0]
        tunnel.end("upstream closed", up, down)
        assert (self.machine.record.bytes_from_client, self.machine.record.bytes_to_client) == (up, down)

    def _commands(self) -> list[FakeCommand]:
        # A BIND command says nothing once its relay started (it handed the connection over).
        if self.machine.relay is not None:
            return []
        return [c for c in self.io.commands if c.started and not c.stopped]

    @precondition(lambda self: self._commands() and self.machine.state is SessionState.COMMAND)
    @rule()
    def command_replies(self):
        self.machine.sendReply(ReplyCode.SUCCEEDED, Address.of(SERVER[0], 6000))
        assert self.limits.negotiating == 0

    @precondition(lambda self: self._commands() and self.machine.state is SessionState.COMMAND)
    @rule()
    def command_goes_on(self):
        command = self._commands()[0]
        if command.kind == "udp":
            self.machine.sendReply(ReplyCode.SUCCEEDED)
            self.machine.associationStarted()
        else:
            self.machine.startRelay("peer", ReplyCode.SUCCEEDED, Address.of("192.0.2.9", 4321))

    @precondition(lambda self: self._commands())
    @rule(reply_code=st.sampled_from([None, ReplyCode.TTL_EXPIRED]))
    def command_closes(self, reply_code):
        self.machine.closeWith("command over", reply_code)

    @precondition(lambda self: self._commands())
    @rule(error=st.sampled_from(_COMMAND_ERRORS))
    def command_fails(self, error):
        self.machine.commandFailed(Failure(error))

    # invariants

    @invariant()
    def moves_follow_the_table(self):
        for before, after in zip(self.seen, self.seen[1:]):
            assert after in _MOVES[before], (before, after)
        assert self.machine.state is self.seen[-1]

    @invariant()
    def nothing_after_the_end(self):
        actions = self.io.actions
        names = [action[0] for action in actions]
        assert names.count("close") <= 1
        if "close" in names:
            assert names[-1] == "close", names
        if self.machine.state is SessionState.CLOSED:
            if self.actions_when_closed is None:
                self.actions_when_closed = len(actions)
            assert len(actions) == self.actions_when_closed, names[self.actions_when_closed:]
            assert len(self.counter.finished) == 1
        else:
            assert self.counter.finished == []

    @invariant()
    def the_line_is_written_once(self):
        assert len(self.counter.finished) <= 1
        assert self.counter.replied <= 1

    @invariant()
    def admission_counted_once(self):
        assert 0 <= self.limits.negotiating <= 1 and 0 <= self.limits.sessions <= 1
        if self.limits.negotiating == 0:
            self.negotiated = True
        assert self.limits.negotiating == (0 if self.negotiated else 1)
        if self.counter.replied or self.machine.state in (SessionState.RELAYING, SessionState.CLOSED):
            assert self.limits.negotiating == 0  # the negotiation is over
        if self.machine.lost:
            assert (self.limits.sessions, self.limits.negotiating) == (0, 0)
            assert self.machine not in self.machine.context.sessions
        else:
            assert self.limits.sessions == 1

    def teardown(self):
        if not self.machine.lost:
            self.machine.connectionLost()
        assert (self.limits.sessions, self.limits.negotiating) == (0, 0)
        assert self.machine.state is SessionState.CLOSED
        assert len(self.counter.finished) == 1
        if self.machine.relay is None:  # a BIND that relays is over at its accept (no stop owed)
            assert all(c.stopped for c in self.io.commands if c.started)
        assert all(t.ended is not None for t in self.io.tunnels)
        assert not [c for c in self.io.connectors if c.taken is None and not c.cancelled
                    and not getattr(c, "failed", False)]
        assert self.clock.getDelayedCalls() == []


SessionEvents.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


class SessionEventsTests(SessionEvents.TestCase):
    """
    `SessionEvents` run as a TestCase.  Its ``runTest`` alone is collected
    by pytest but not by trial, whose loader takes only ``test*`` methods:
    this one serves both (pytest, finding it, no longer takes ``runTest``).
    """

    def test_random_orders_of_events(self):
        self.runTest()


class CloseDuringTunnelTests(SynchronousTestCase):
    def test_closing_a_relaying_session_closes_its_tunnel_and_logs_once(self) -> None:
        machine, io, _clock = machine_on_fakes()
        machine.dataReceived(b"\x05\x01\x00" + request("192.0.2.1"))
        [connector] = io.connectors
        connector.succeed()
        [tunnel] = io.tunnels
        machine.closeWith(Outcome(OutcomeKind.COMMAND_ERROR, "late"))
        self.assertEqual(str(tunnel.ended), "late")
        self.assertIs(machine.state, SessionState.CLOSED)
        self.assertEqual(machine.record.outcome, "late")
