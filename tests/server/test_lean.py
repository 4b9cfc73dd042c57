"""
The lean accept path of plain TCP listeners (`txsocksgss.server.lean`), on
real sockets through `LeanTCPServerEndpoint`: every session is driven by a
`BareSocketDriver` (any method, SOCKS 4, every failure reply) and its
CONNECT spliced, with the replies, session lines, timeouts, limits and
observers of the one session machine; a session that needs what a bare
socket cannot do (BIND, UDP ASSOCIATE, a protection) is adopted by the
Twisted driver with the same machine, its admission, record and deadline.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.helpers.clients import ScriptedClient, StreamCollector
from tests.helpers.fakes import FakeResolver
from tests.helpers.faults import FaultTestCase
from tests.helpers.ports import blackhole, free_port
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal

from txsocksgss.auth.conversation import ANONYMOUS, AuthResult, AuthStep
from txsocksgss.auth.userpass import SOCKSUserRealm, UserPassServerFactory
from txsocksgss.interfaces import IServerAuthenticator, IServerAuthenticatorFactory, IStreamProtection
from txsocksgss.wire.userpass import UserPassRequest
from txsocksgss.server.config import Config
from txsocksgss.server.lean import BareSocketDriver, LeanListener, LeanTCPServerEndpoint, lean_available, lean_endpoint
from txsocksgss.server.protocol import SOCKS5ServerProtocol
from txsocksgss.server.relay import Relay
from txsocksgss.server.service import makeServerFactory
from txsocksgss.server.splice import SpliceRelay
from txsocksgss.wire.socks5 import Address, Command, ReplyCode, Request


@implementer(IServerAuthenticator)
class _Later:
    """Method none, but the result comes later (a Deferred): not the lean path's to run."""

    method = 0x00

    def begin(self) -> Deferred[AuthStep]:
        return deferLater(reactor, 0, lambda: AuthStep(result=AuthResult.success(ANONYMOUS)))

    def receive(self, data: bytes) -> AuthStep:  # pragma: no cover
        raise AssertionError("no subnegotiation")

    def abort(self) -> None:
        pass


@implementer(IServerAuthenticatorFactory)
class _LaterFactory:
    method = 0x00
    name = "none"

    def buildAuthenticator(self, session: Any) -> IServerAuthenticator:
        return _Later()


@implementer(IStreamProtection)
class _Reversed:
    """A per-message protection that reverses each chunk: visible on the wire, exact both ways."""

    name = "reversed"

    def protect(self, data: bytes) -> bytes:
        return data[::-1]

    def unprotect(self, data: bytes) -> bytes:
        return data[::-1]

    def protectDatagram(self, data: bytes) -> bytes:  # pragma: no cover - no UDP here
        return data[::-1]

    def unprotectDatagram(self, data: bytes) -> bytes:  # pragma: no cover
        return data[::-1]


@implementer(IServerAuthenticator)
class _Protecting:
    """Method none that ends at once with a protection: a bare socket cannot carry it."""

    method = 0x00

    def begin(self) -> AuthStep:
        return AuthStep(result=AuthResult.success(ANONYMOUS, protection=_Reversed()))

    def receive(self, data: bytes) -> AuthStep:  # pragma: no cover
        raise AssertionError("no subnegotiation")

    def abort(self) -> None:
        pass


@implementer(IServerAuthenticatorFactory)
class _ProtectingFactory:
    method = 0x00
    name = "none"

    def buildAuthenticator(self, session: Any) -> IServerAuthenticator:
        return _Protecting()


class _Observer:
    def __init__(self) -> None:
        self.replied: list[Any] = []
        self.finished: list[Any] = []

    def sessionReplied(self, record: Any) -> None:
        self.replied.append(record)

    def sessionFinished(self, record: Any) -> None:
        self.finished.append(record)


class LeanTests(FaultTestCase):
    @inlineCallbacks
    def startLean(self, authenticators: Any = None, interface: str = "127.0.0.1", **config: Any) -> Any:
        """A lean listener on ``interface`` with a server built from ``Config.build(**config)``."""
        config.setdefault("listen", ["tcp:0:interface=127.0.0.1"])
        factory = makeServerFactory(Config.build(**config), reactor, authenticators=authenticators)
        self.assertTrue(factory.leanSessions)
        listener = yield LeanTCPServerEndpoint(reactor, 0, interface).listen(factory)
        self.assertIsInstance(listener, LeanListener)
        self.addCleanup(self._stopLean, listener, factory)
        return listener.getHost().port, factory

    @inlineCallbacks
    def _stopLean(self, listener: Any, factory: Any) -> Any:
        yield listener.stopListening()
        factory.context.closeSessions()
        yield factory.context.whenDrained()

    def connect(self, port: int, request: Request) -> Deferred[Any]:
        return self.connectScripted(port, request)

    # -- the lean sessions ------------------------------------------------------

    @inlineCallbacks
    def test_connect_is_served_by_a_lean_session_and_spliced(self):
        port, factory = yield self.startLean()
        observer = _Observer()
        factory.observers.append(observer)
        client = yield self.connect(port, Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)))
        reply = yield client.reply(0)
        self.assertEqual(reply.code, ReplyCode.SUCCEEDED)
        [session] = factory.context.sessions
        self.assertIsInstance(session.io, BareSocketDriver)
        self.assertIsInstance(session.relay, SpliceRelay)
        upstream = session.relay.upstream
        self.assertEqual((reply.bound.host, reply.bound.port), upstream.getsockname())
        yield self.assertAlive(client)
        client.transport.loseConnection()
        yield client.lost
        yield factory.context.whenDrained()
        line = self.sessionLine("closed", "client closed")
        self.assertIn(f"socks5 user=- method=none protection=- command=connect "
                      f"destination=127.0.0.1:{self.echo_port} up=16 down=16", line)
        self.assertEqual([r.outcome for r in observer.finished], [session.record.outcome])
        self.assertEqual(observer.replied, observer.finished)

    @inlineCallbacks
    def test_a_name_is_resolved_and_judged(self):
        port, factory = yield self.startLean()
        factory.context.resolver = FakeResolver({"echo.test": ["127.0.0.1"]})
        client = yield self.connect(port, Request(Command.CONNECT, Address.of("echo.test", self.echo_port)))
        self.assertEqual((yield client.reply(0)).code, ReplyCode.SUCCEEDED)
        yield self.assertAlive(client)
        unknown = yield self.connect(port, Request(Command.CONNECT, Address.of("nowhere.test", 80)))
        self.assertEqual((yield unknown.reply(0)).code, ReplyCode.HOST_UNREACHABLE)
        yield unknown.lost
        self.assertIn("destination=nowhere.test:80", self.sessionLine("host unreachable: "))

    @inlineCallbacks
    def test_refused_is_05(self):
        closed_port = free_port()
        port, _factory = yield self.startLean()
        client = yield self.connect(port, Request(Command.CONNECT, Address.of("127.0.0.1", closed_port)))
        self.assertEqual((yield client.reply(0)).code, ReplyCode.CONNECTION_REFUSED)
        yield client.lost
        self.sessionLine("connection refused: ")

    @inlineCallbacks
    def test_denied_by_the_rules_is_02(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f'default = "allow"\n\n[[rule]]\naction = "deny"\nname = "no-echo"\nports = [{self.echo_port}]\n')
        port, _factory = yield self.startLean(rules_file=path)
        client = yield self.connect(port, Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)))
        self.assertEqual((yield client.reply(0)).code, ReplyCode.NOT_ALLOWED)
        yield client.lost
        self.assertIn("outcome=denied by rule 1 (no-echo)", self.sessionLine("denied by "))
        self.assertTrue([line for line in self.logs if line.startswith("denied connect to 127.0.0.1:")])

    @inlineCallbacks
    def test_the_destination_guard_is_asked_first(self):
        port, factory = yield self.startLean(destination_guard="on")
        factory.context.resolver = FakeResolver({"localhost": ["127.0.0.1"]})
        for host in ("127.0.0.1", "localhost"):
            client = yield self.connect(port, Request(Command.CONNECT, Address.of(host, self.echo_port)))
            self.assertEqual((yield client.reply(0)).code, ReplyCode.NOT_ALLOWED)
            yield client.lost
        self.assertEqual(len([line for line in self.logs
                              if "outcome=denied by destination guard (loopback)" in line]), 2)

    @inlineCallbacks
    def test_negotiation_timeouts(self):
        listener, filler = blackhole()
        self.addCleanup(listener.close)
        self.addCleanup(filler.close)
        port, _factory = yield self.startLean(negotiation_timeout=0.3)
        silent = yield self.connectRaw(port)
        half = yield self.connectRaw(port)
        half.transport.write(b"\x05\x01\x00")
        yield half.waitFor(2)
        stuck = yield self.connect(port, Request(Command.CONNECT, Address.of("127.0.0.1", listener.getsockname()[1])))
        self.assertEqual((yield stuck.reply(0)).code, ReplyCode.TTL_EXPIRED)
        yield silent.lost
        yield half.lost
        self.sessionLine("negotiation timeout in greeting")
        self.sessionLine("negotiation timeout in request")
        self.sessionLine(f"negotiation timeout while connecting to 127.0.0.1:{listener.getsockname()[1]}")

    @inlineCallbacks
    def test_a_client_gone_during_negotiation(self):
        port, factory = yield self.startLean()
        client = yield self.connectRaw(port)
        client.transport.write(b"\x05\x01\x00")
        yield client.waitFor(2)
        client.transport.loseConnection()
        yield client.lost
        yield factory.context.whenDrained()
        self.assertIn("method=none", self.sessionLine("client closed during negotiation"))

    @inlineCallbacks
    def test_pipelined_data_goes_first_through_the_splice(self):
        port, factory = yield self.startLean()
        client = yield self.connectRaw(port)
        request = Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)).serialize()
        client.transport.write(b"\x05\x01\x00" + request + b"pipelined")
        received = yield client.waitFor(12 + len(b"pipelined"))
        self.assertEqual(received[:4], b"\x05\x00\x05\x00")
        self.assertEqual(received[12:], b"pipelined")

    @inlineCallbacks
    def test_too_much_data_before_the_reply_is_a_general_failure(self):
        listener, filler = blackhole()
        self.addCleanup(listener.close)
        self.addCleanup(filler.close)
        port, _factory = yield self.startLean()
        client = yield self.connectRaw(port)
        request = Request(Command.CONNECT, Address.of("127.0.0.1", listener.getsockname()[1])).serialize()
        client.transport.write(b"\x05\x01\x00" + request)
        yield client.waitFor(2)
        client.transport.write(b"x" * (300 * 1024))
        received = yield client.lost
        self.assertEqual(received[2:4], b"\x05\x01")
        self.sessionLine("client sent too much data before the reply")

    @inlineCallbacks
    def test_admission_refusal_resets_at_once(self):
        port, factory = yield self.startLean(max_sessions=1)
        first = yield self.connect(port, Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)))
        yield first.reply(0)
        from twisted.internet.error import ConnectError

        second = StreamCollector()
        try:
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), second)
        except ConnectError:
            pass  # reset before the connect was even reported
        else:
            yield second.lost
        self.assertEqual(second.received, b"")
        self.assertEqual(len(factory.context.sessions), 1)
        self.assertTrue([line for line in self.logs if "refused connection from 127.0.0.1:" in line
                         and "--max-sessions" in line], self.logs)

    @inlineCallbacks
    def test_server_shutdown_closes_negotiating_and_relaying_sessions(self):
        port, factory = yield self.startLean()
        relaying = yield self.connect(port, Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)))
        yield relaying.reply(0)
        negotiating = yield self.connectRaw(port)
        negotiating.transport.write(b"\x05\x01\x00")
        yield negotiating.waitFor(2)  # the method is chosen: the session waits for the request
        self.assertEqual(len(factory.context.sessions), 2)
        reasons: list[Any] = []
        negotiating.connectionLost = lambda reason=None: (reasons.append(reason),  # type: ignore[method-assign]
                                                          negotiating.lost.callback(negotiating.received))
        factory.context.closeSessions()
        yield factory.context.whenDrained()
        yield relaying.lost
        yield negotiating.lost
        self.assertEqual(len([line for line in self.logs if "outcome=server shutdown" in line]), 2)
        from twisted.internet.error import ConnectionLost

        self.assertTrue(reasons[0].check(ConnectionLost), reasons)  # reset, as the protocol aborts

    @inlineCallbacks
    def test_an_ipv6_listener_and_client(self):
        port, factory = yield self.startLean(interface="::1")
        from twisted.internet.endpoints import TCP6ClientEndpoint

        client = ScriptedClient(Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)))
        yield connectProtocol(TCP6ClientEndpoint(reactor, "::1", port), client)
        self.assertEqual((yield client.reply(0)).code, ReplyCode.SUCCEEDED)
        yield self.assertAlive(client)
        client.transport.loseConnection()
        yield client.lost
        yield factory.context.whenDrained()
        self.assertIn("session client=[::1]:", self.sessionLine("closed", "client closed"))

    # -- served on the bare socket ---------------------------------------------

    @inlineCallbacks
    def servedBare(self, port: int, factory: Any, sent: bytes, expected: int) -> Any:
        """Send ``sent``; the ``expected`` bytes of answer come from a session on the bare driver."""
        client = yield self.connectRaw(port)
        client.transport.write(sent)
        received = yield client.waitFor(expected)
        sessions = list(factory.context.sessions)
        self.assertTrue(all(isinstance(s.io, BareSocketDriver) for s in sessions), sessions)
        return client, received, sessions

    @inlineCallbacks
    def test_no_acceptable_method_is_answered_on_the_bare_socket(self):
        port, factory = yield self.startLean()
        client = yield self.connectRaw(port)
        client.transport.write(b"\x05\x01\x02")
        received = yield client.lost
        self.assertEqual(received, b"\x05\xff")
        self.sessionLine("no acceptable method (client offered 0x02)")

    @inlineCallbacks
    def test_a_malformed_greeting_ends_on_the_bare_socket(self):
        port, factory = yield self.startLean()
        client = yield self.connectRaw(port)
        client.transport.write(b"\x07\x01\x00")
        yield client.lost
        self.sessionLine("protocol error in greeting: ")

    @inlineCallbacks
    def test_socks4_is_served_and_spliced_on_the_bare_socket(self):
        port, factory = yield self.startLean(methods=["none", "socks4"])
        request = struct.pack("!BBH4s", 4, 1, self.echo_port, socket.inet_aton("127.0.0.1")) + b"me\x00"
        client, received, [session] = yield self.servedBare(port, factory, request, 8)
        self.assertEqual(received[:2], b"\x00\x5a")
        self.assertIsInstance(session.relay, SpliceRelay)
        client.transport.write(b"ping")
        received = yield client.waitFor(12)
        self.assertEqual(received[8:], b"ping")

    @inlineCallbacks
    def test_a_method_that_ends_later_is_run_on_the_bare_socket(self):
        port, factory = yield self.startLean(authenticators=[_LaterFactory()])
        request = Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)).serialize()
        client, received, sessions = yield self.servedBare(port, factory, b"\x05\x01\x00" + request, 12)
        self.assertEqual(received[:4], b"\x05\x00\x05\x00")
        self.assertEqual(len(sessions), 1)
        self.assertIsInstance(sessions[0].relay, SpliceRelay)

    @inlineCallbacks
    def test_username_and_password_sessions_are_spliced_on_the_bare_socket(self):
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"s3cret")
        port, factory = yield self.startLean(
            authenticators=[UserPassServerFactory(Portal(SOCKSUserRealm(), [checker]))])
        request = Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)).serialize()
        sent = b"\x05\x01\x02" + UserPassRequest(b"alice", b"s3cret").serialize() + request
        client, received, [session] = yield self.servedBare(port, factory, sent, 14)
        self.assertEqual(received[:6], b"\x05\x02\x01\x00\x05\x00")
        self.assertIsInstance(session.relay, SpliceRelay)
        self.assertEqual(session.record.user, "alice")
        client.transport.write(b"ping")
        received = yield client.waitFor(18)
        self.assertEqual(received[14:], b"ping")

    @inlineCallbacks
    def test_an_unsupported_command_gets_07_on_the_bare_socket(self):
        port, factory = yield self.startLean()
        client, received, _ = yield self.servedBare(
            port, factory, b"\x05\x01\x00" + b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50", 12)
        self.assertEqual(received[:4], b"\x05\x00\x05\x07")
        yield client.lost
        self.assertIn("method=none", self.sessionLine("bad request: "))

    # -- adopted by the Twisted driver ------------------------------------------

    @inlineCallbacks
    def test_bind_is_adopted_by_the_twisted_driver(self):
        port, factory = yield self.startLean()
        client = yield self.connect(port, Request(Command.BIND, Address.of("127.0.0.1", 0)))
        first = yield client.reply(0)
        self.assertEqual(first.code, ReplyCode.SUCCEEDED)
        [session] = factory.context.sessions
        self.assertIsInstance(session.io, SOCKS5ServerProtocol)
        self.assertIs(session.io.machine, session)
        self.assertEqual(session.record.method, "none")
        self.assertEqual(session.record.command, "bind")
        inbound = socket.create_connection((first.bound.host, first.bound.port))
        self.addCleanup(inbound.close)
        second = yield client.reply(1)
        self.assertEqual(second.code, ReplyCode.SUCCEEDED)

    @inlineCallbacks
    def test_udp_associate_is_adopted_by_the_twisted_driver(self):
        port, factory = yield self.startLean()
        client = yield self.connect(port, Request(Command.UDP_ASSOCIATE, Address.of("0.0.0.0", 0)))
        self.assertEqual((yield client.reply(0)).code, ReplyCode.SUCCEEDED)
        [session] = factory.context.sessions
        self.assertEqual(session.record.command, "udp")
        self.assertIsInstance(session.io, SOCKS5ServerProtocol)

    @inlineCallbacks
    def test_an_adoption_keeps_the_session_open_for_the_drain(self):
        port, factory = yield self.startLean()
        client = yield self.connectRaw(port)
        self.assertEqual(len(factory.context.sessions), 1)  # accepted: the bare driver's
        drained = factory.context.whenDrained()
        client.transport.write(b"\x05\x01\x00" + Request(Command.BIND, Address.of("127.0.0.1", 0)).serialize())
        yield client.waitFor(12)
        self.assertFalse(drained.called)  # the session went from one driver to the other without a gap
        [session] = factory.context.sessions
        self.assertIsInstance(session.io, SOCKS5ServerProtocol)
        client.transport.loseConnection()
        yield drained

    @inlineCallbacks
    def test_an_adoption_keeps_the_admission_the_record_and_the_deadline(self):
        port, factory = yield self.startLean(authenticators=[_ProtectingFactory()], max_sessions=1,
                                             negotiation_timeout=5)
        started: list[Any] = []
        start = factory.context.sessionStarted

        def sessionStarted(session: Any) -> None:
            start(session)
            started.append(session)

        factory.context.sessionStarted = sessionStarted  # type: ignore[method-assign]
        client = yield self.connectRaw(port)
        client.transport.write(b"\x05\x01\x00")  # a method with a protection: adopted
        self.assertEqual((yield client.waitFor(2)), b"\x05\x00")
        [session] = started  # started once, at accept
        self.assertIsInstance(session.io, SOCKS5ServerProtocol)
        self.assertEqual(session.record.protection, "reversed")
        self.assertEqual(factory.context.limits.sessions, 1)  # admitted once
        self.assertEqual(factory.context.limits.negotiating, 1)
        deadline = session._negotiation_timer.getTime()
        self.assertLess(abs(deadline - (session.record.started + 5)), 0.01)
        # The Twisted driver carries on: the request and the tunnel go through the protection.
        request = Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)).serialize()
        client.transport.write(request[::-1])
        received = yield client.waitFor(12)
        self.assertEqual(received[2:12][::-1][:2], b"\x05\x00")
        self.assertIsInstance(session.relay, Relay)
        self.assertEqual(factory.context.limits.negotiating, 0)

    @inlineCallbacks
    def test_an_adoption_that_fails_still_logs_the_session(self):
        def refuse(*args: Any) -> None:
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))

        port, factory = yield self.startLean()
        self.patch(reactor, "adoptStreamConnection", refuse)
        client = yield self.connectRaw(port)
        client.transport.write(b"\x05\x01\x00" + Request(Command.BIND, Address.of("127.0.0.1", 0)).serialize())
        yield client.lost
        yield factory.context.whenDrained()
        self.assertIn("command=bind", self.sessionLine("client closed during negotiation"))
        self.assertEqual(factory.context.limits.sessions, 0)
        self.assertTrue([line for line in self.logs if "could not hand a connection from" in line])


class LeanEndpointTests(SynchronousTestCase):
    def test_only_plain_tcp_descriptions(self):
        endpoint = lean_endpoint(reactor, "tcp:1080:interface=127.0.0.1:backlog=7", reuse_port=False)
        self.assertEqual((endpoint.port, endpoint.interface, endpoint.backlog), (1080, "127.0.0.1", 7))
        six = lean_endpoint(reactor, "tcp6:port=1080:interface=\\:\\:1", reuse_port=True)
        self.assertEqual((six.port, six.interface, six.backlog, six.reuse_port), (1080, "::1", 1024, True))
        self.assertEqual(lean_endpoint(reactor, "tcp6:1080", reuse_port=False).interface, "::")
        self.assertEqual(lean_endpoint(reactor, "tcp:1080:interface=\\:\\:1", reuse_port=False).interface, "::1")
        for other in ("ssl:1080:privateKey=k.pem", "haproxy:tcp:1080", "unix:/tmp/s", "tcp:1080:reuse=1",
                      "tcp:http"):
            self.assertIsNone(lean_endpoint(reactor, other, reuse_port=False), other)

    def test_available_with_splice_and_epoll_only(self):
        from twisted.internet.testing import MemoryReactorClock

        self.assertEqual(lean_available(reactor, True), type(reactor).__name__ == "EPollReactor")
        self.assertFalse(lean_available(reactor, False))
        self.assertFalse(lean_available(MemoryReactorClock(), True))


class LeanFallbackTests(FaultTestCase):
    @inlineCallbacks
    def test_a_factory_that_is_not_lean_gets_twisteds_port(self):
        factory = makeServerFactory(Config.build(listen=["tcp:0:interface=127.0.0.1"], splice=False), reactor)
        self.assertFalse(factory.leanSessions)
        port = yield LeanTCPServerEndpoint(reactor, 0, "127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        self.assertNotIsInstance(port, LeanListener)
        client = yield self.connectScripted(port.getHost().port,
                                            Request(Command.CONNECT, Address.of("127.0.0.1", self.echo_port)))
        self.assertEqual((yield client.reply(0)).code, ReplyCode.SUCCEEDED)
        yield self.assertAlive(client)

    @inlineCallbacks
    def test_reuse_port_lets_two_listeners_share_a_port(self):
        factory = makeServerFactory(Config.build(listen=["tcp:0:interface=127.0.0.1"]), reactor)
        number = free_port()
        first = yield LeanTCPServerEndpoint(reactor, number, "127.0.0.1", reuse_port=True).listen(factory)
        second = yield LeanTCPServerEndpoint(reactor, number, "127.0.0.1", reuse_port=True).listen(factory)
        self.addCleanup(first.stopListening)
        self.addCleanup(second.stopListening)
        self.assertEqual(first.getHost().port, second.getHost().port)

    def test_a_port_in_use_fails_with_cannot_listen(self):
        from twisted.internet.error import CannotListenError

        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        factory = makeServerFactory(Config.build(listen=["tcp:0:interface=127.0.0.1"]), reactor)
        d = LeanTCPServerEndpoint(reactor, taken.getsockname()[1], "127.0.0.1").listen(factory)
        return self.assertFailure(d, CannotListenError)

    def test_a_port_out_of_range_fails_with_cannot_listen(self):
        from twisted.internet.error import CannotListenError

        factory = makeServerFactory(Config.build(listen=["tcp:0:interface=127.0.0.1"]), reactor)
        return self.assertFailure(LeanTCPServerEndpoint(reactor, 70000, "127.0.0.1").listen(factory),
                                  CannotListenError)

    @inlineCallbacks
    def test_stop_listening_fires_once_the_port_is_free_again(self):
        factory = makeServerFactory(Config.build(listen=["tcp:0:interface=127.0.0.1"]), reactor)
        listener = yield LeanTCPServerEndpoint(reactor, 0, "127.0.0.1").listen(factory)
        number = listener.getHost().port
        yield listener.stopListening()
        again = yield LeanTCPServerEndpoint(reactor, number, "127.0.0.1").listen(factory)
        yield again.stopListening()


class _FailingAccepts:
    """A listening socket whose accept() raises the errors given, then has nothing (EAGAIN)."""

    family = socket.AF_INET

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.accepts = 0

    def fileno(self) -> int:
        return 99

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 1080)

    def accept(self) -> Any:
        self.accepts += 1
        if self.errors:
            number = self.errors.pop(0)
            raise OSError(number, os.strerror(number))
        raise BlockingIOError()


class LeanAcceptErrorTests(SynchronousTestCase):
    def listener(self, *errors: int) -> tuple[LeanListener, Any, _FailingAccepts]:
        from twisted.internet.testing import MemoryReactorClock

        clock = MemoryReactorClock()
        factory = makeServerFactory(Config.build(listen=["tcp:0:interface=127.0.0.1"]), clock)
        sock = _FailingAccepts(*errors)
        listener = LeanListener(clock, sock, factory)  # type: ignore[arg-type]
        listener.startListening()
        return listener, clock, sock

    def test_out_of_descriptors_pauses_accepting_instead_of_spinning(self):
        listener, clock, sock = self.listener(errno.EMFILE)
        listener.doRead()
        self.assertEqual(sock.accepts, 1)
        self.assertNotIn(listener, clock.getReaders())  # the backlog waits; no busy loop
        clock.advance(0.1)
        self.assertIn(listener, clock.getReaders())

    def test_one_failed_connection_does_not_stop_the_others(self):
        listener, clock, sock = self.listener(errno.ECONNABORTED, errno.EPERM, errno.EPROTO)
        listener.doRead()
        self.assertEqual(sock.accepts, 4)  # three failures, then nothing more waiting
        self.assertIn(listener, clock.getReaders())

    def test_an_unexpected_error_is_logged_and_the_listener_goes_on(self):
        from twisted.logger import capturedLogs

        listener, clock, sock = self.listener(errno.EINVAL)
        with capturedLogs() as events:
            listener.doRead()
        self.assertIn(listener, clock.getReaders())
        self.assertTrue([e for e in events if e.get("log_format") == "accept failed"])
        self.flushLoggedErrors(OSError)

