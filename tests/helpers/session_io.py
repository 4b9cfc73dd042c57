"""
A recording fake of `txsocksgss.interfaces.ISessionIO`, the driver side of
the session machine, for unit tests of `txsocksgss.server.negotiation`
without sockets or a reactor: every action the machine takes is recorded in
order, and the work it starts (connects, tunnels, commands) is completed by
the test.  Beside it, the other seams the machine meets, faked: a method
whose conversation the test scripts (`ScriptedMethod`), a protection
(`XorProtection`), an ident checker (`FixedIdent`) and a record observer
that counts session lines (`LineCounter`).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.helpers.fakes import FakeResolver
from txsocksgss.auth.conversation import AuthStep, SessionInfo
from txsocksgss.auth.ident import IdentOutcome
from txsocksgss.auth.none import NoAuthServerFactory
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
from txsocksgss.server.context import ServerContext
from txsocksgss.server.limits import LimitSettings, SessionLimits
from txsocksgss.server.negotiation import SessionMachine
from txsocksgss.server.outcomes import CLIENT_CLOSED, CLOSED, IDLE_TIMEOUT, UPSTREAM_CLOSED, Outcome
from txsocksgss.server.rules import ALLOW_ALL
from txsocksgss.wire.socks5 import Address

__all__ = [
    "FakeCommand",
    "FakeConnector",
    "FakeTunnel",
    "FixedIdent",
    "LineCounter",
    "RecordingSessionIO",
    "SCRIPTED_METHOD",
    "ScriptedConversation",
    "ScriptedMethod",
    "XorProtection",
    "machine_on_fakes",
]


@implementer(IConnector)
class FakeConnector:
    """A connect the test completes with `succeed` or `fail`."""

    def __init__(self, addresses: list[str], port: int, timeout: float | None,
                 onConnected: Callable[..., bool], onFailed: Callable[[Failure], None]) -> None:
        self.addresses, self.port, self.timeout = addresses, port, timeout
        self._onConnected, self._onFailed = onConnected, onFailed
        self.started = self.cancelled = False
        self.taken: bool | None = None

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True

    def describe(self) -> str:
        return f"connecting to {self.addresses[0]}:{self.port}"

    def succeed(self, upstream: Any = "upstream", bound: Address = Address.of("10.0.0.1", 5000)) -> None:
        self.taken = self._onConnected(upstream, bound)

    def fail(self, error: BaseException) -> None:
        self._onFailed(Failure(error))


_TUNNEL_ENDINGS = {str(o): o for o in (CLOSED, CLIENT_CLOSED, UPSTREAM_CLOSED, IDLE_TIMEOUT)}


@implementer(ITunnel)
class FakeTunnel:
    """A tunnel the test ends with `end`."""

    closed_at_once = False

    def __init__(self, upstream: Any, onEnd: Callable[[str], None]) -> None:
        self.upstream = upstream
        self._onEnd = onEnd
        self.bytes_from_client = 0
        self.bytes_from_upstream = 0
        self.started: tuple[bytes, bytes] | None = None
        self.ended: str | None = None
        self.received: list[bytes] = []

    def start(self, toUpstream: bytes = b"", toClient: bytes = b"") -> None:
        self.started = (toUpstream, toClient)

    def fromClient(self, data: bytes) -> None:
        self.received.append(data)

    def clientEOF(self) -> None:
        pass

    def clientLost(self, reason: Any) -> None:
        self.end(CLIENT_CLOSED)

    def close(self, outcome: Outcome) -> None:
        self.end(outcome)

    def end(self, outcome: Outcome | str, up: int = 0, down: int = 0) -> None:
        """End with ``outcome`` (a tunnel's own endings may be named by their text: "upstream closed")."""
        if self.ended is None:
            if isinstance(outcome, str):
                outcome = _TUNNEL_ENDINGS[outcome]
            self.ended = str(outcome)
            self.bytes_from_client, self.bytes_from_upstream = up, down
            self._onEnd(outcome)


@implementer(ICommand)
class FakeCommand:
    """A BIND or UDP command: records start and stop; the test drives its context."""

    def __init__(self, kind: str, context: Any, destination: Address) -> None:
        self.kind, self.context, self.destination = kind, context, destination
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True


@implementer(ISessionIO)
class RecordingSessionIO:
    """Every action of the machine, in ``actions`` (name, details...)."""

    def __init__(self) -> None:
        self.actions: list[tuple[Any, ...]] = []
        self.connectors: list[FakeConnector] = []
        self.tunnels: list[FakeTunnel] = []
        self.commands: list[FakeCommand] = []
        self.machine: SessionMachine | None = None

    def sent(self) -> bytes:
        """All the bytes sent so far, in order."""
        return b"".join(action[1] for action in self.actions if action[0] == "send")

    def names(self) -> list[str]:
        return [action[0] for action in self.actions]

    # -- what the client does, delivered as both drivers deliver it --------

    def clientSends(self, data: bytes) -> None:
        """Bytes from the client: to the tunnel once there is one, else to the machine."""
        assert self.machine is not None
        if self.machine.relay is not None:
            self.machine.relay.fromClient(data)
        else:
            self.machine.dataReceived(data)

    def clientShutsDown(self) -> None:
        """The client's EOF: to the tunnel once there is one, else to the machine."""
        assert self.machine is not None
        if self.machine.relay is not None:
            self.machine.relay.clientEOF()
        else:
            self.machine.eofReceived()

    def send(self, data: bytes) -> None:
        self.actions.append(("send", data))

    def installProtection(self, protection: Any) -> None:
        self.actions.append(("protect", protection))

    def connect(self, addresses: list[str], port: int, timeout: float | None,
                onConnected: Callable[..., bool], onFailed: Callable[[Failure], None]) -> FakeConnector:
        connector = FakeConnector(addresses, port, timeout, onConnected, onFailed)
        self.connectors.append(connector)
        self.actions.append(("connect", list(addresses), port))
        return connector

    def openTunnel(self, upstream: Any, reply: bytes, onEnd: Callable[[str], None]) -> tuple[FakeTunnel, bytes]:
        tunnel = FakeTunnel(upstream, onEnd)
        self.tunnels.append(tunnel)
        self.actions.append(("tunnel", upstream, reply))
        return tunnel, reply[:1]  # one byte "not taken": start() must get it

    def tunnelEnded(self, tunnel: Any) -> None:
        self.actions.append(("tunnel ended", tunnel.ended))
        # As the bare driver: the tunnel closed the connection itself.
        if self.machine is not None:
            self.machine.connectionLost()

    def openBind(self, context: Any, destination: Address) -> FakeCommand:
        command = FakeCommand("bind", context, destination)
        self.commands.append(command)
        self.actions.append(("bind", destination))
        return command

    def openUDP(self, context: Any, declared: Address) -> FakeCommand:
        command = FakeCommand("udp", context, declared)
        self.commands.append(command)
        self.actions.append(("udp", declared))
        return command

    def close(self, abort: bool) -> None:
        self.actions.append(("close", abort))


def machine_on_fakes(authenticators: Any = None, names: dict[str, list[str]] | None = None, policy: Any = ALLOW_ALL,
                     socks4: bool = False, negotiation_timeout: float = 30.0, limits: LimitSettings | None = None,
                     ident: Any = None, begin: bool = True, resolver: Any = None, guard: Any = None,
                     observers: tuple[Any, ...] = (), context: ServerContext | None = None,
                     clock: Clock | None = None) -> tuple[SessionMachine, RecordingSessionIO, Clock]:
    """
    A session machine on a `RecordingSessionIO` and a Clock, begun for
    client 192.0.2.7:40000 at server 198.51.100.1:1080.  ``resolver``
    replaces the `FakeResolver` of ``names``; ``context`` (with its
    ``clock``), when given, is shared instead of built: several sessions of
    one server.
    """
    if context is None:
        clock = Clock()
        context = ServerContext(
            reactor=clock,
            resolver=resolver if resolver is not None else FakeResolver(names),
            authenticators=tuple(authenticators or (NoAuthServerFactory(),)),
            policy=policy,
            negotiation_timeout=negotiation_timeout,
            socks4=socks4,
            ident=ident,
            limits=SessionLimits(limits or LimitSettings()),
            guard=guard,
        )
    assert clock is not None and context.reactor is clock
    io = RecordingSessionIO()
    machine = SessionMachine(context, io, observers)
    io.machine = machine
    if begin:
        machine.begin(("192.0.2.7", 40000), ("198.51.100.1", 1080))
    return machine, io, clock


#: The method code of `ScriptedMethod`: one of the private methods (RFC 1928 s3: X'80' to X'FE').
SCRIPTED_METHOD = 0x80


@implementer(IServerAuthenticator)
class ScriptedConversation:
    """
    One conversation of `ScriptedMethod`: ``receive`` hands each chunk to
    the method's ``answer(conversation, data)``, which returns the step (an
    `AuthStep` or a Deferred of one) or raises.  Records what it received
    and whether it was aborted.
    """

    method = SCRIPTED_METHOD

    def __init__(self, answer: Callable[["ScriptedConversation", bytes], Any], session: SessionInfo) -> None:
        self._answer = answer
        self.session = session
        self.received: list[bytes] = []
        self.aborted = False
        self.failedAttempts = 0

    def begin(self) -> AuthStep:
        return AuthStep()

    def receive(self, data: bytes) -> Any:
        self.received.append(data)
        return self._answer(self, data)

    def abort(self) -> None:
        self.aborted = True


@implementer(IServerAuthenticatorFactory)
class ScriptedMethod:
    """A method (code `SCRIPTED_METHOD`, name ``scripted``) whose every step the test decides; see `ScriptedConversation`."""

    method = SCRIPTED_METHOD
    name = "scripted"

    def __init__(self, answer: Callable[[ScriptedConversation, bytes], Any]) -> None:
        self.answer = answer
        self.conversations: list[ScriptedConversation] = []

    def buildAuthenticator(self, session: SessionInfo) -> ScriptedConversation:
        conversation = ScriptedConversation(self.answer, session)
        self.conversations.append(conversation)
        return conversation


_BROKEN = 0xFF


@implementer(IStreamProtection)
class XorProtection:
    """
    A protection that XORs every byte with 0x5A (chunking does not matter);
    a byte 0xFF on the wire (0xA5 in clear) is a token that fails to verify.
    """

    name = "xor"

    def protect(self, data: bytes) -> bytes:
        return bytes(b ^ 0x5A for b in data)

    def unprotect(self, data: bytes) -> bytes:
        if _BROKEN in data:
            raise ProtocolError("token failed to verify")
        return bytes(b ^ 0x5A for b in data)

    def protectDatagram(self, data: bytes) -> bytes:
        return self.protect(data)

    def unprotectDatagram(self, data: bytes) -> bytes:
        return self.unprotect(data)


@implementer(IIdentChecker)
class FixedIdent:
    """
    Answers every check with ``outcome`` (at once), or, with ``wait``, with
    a Deferred the test fires (``pending``; those cancelled are also in
    ``cancelled``).  ``asked`` lists (client, server, userid).
    """

    def __init__(self, outcome: IdentOutcome | None = None, wait: bool = False) -> None:
        self.outcome = outcome
        self.wait = wait
        self.asked: list[tuple[Any, Any, str]] = []
        self.pending: list[Deferred[IdentOutcome]] = []
        self.cancelled: list[Deferred[IdentOutcome]] = []

    def check(self, client: tuple[str, int], server: tuple[str, int], userid: str) -> Deferred[IdentOutcome]:
        self.asked.append((client, server, userid))
        if self.wait:
            d: Deferred[IdentOutcome] = Deferred(self.cancelled.append)
            self.pending.append(d)
            return d
        assert self.outcome is not None
        return succeed(self.outcome)


class LineCounter:
    """A `txsocksgss.server.session.SessionObserver` counting replies and session lines (with their outcomes)."""

    def __init__(self) -> None:
        self.replied = 0
        self.finished: list[str] = []

    def sessionReplied(self, record: Any) -> None:
        self.replied += 1

    def sessionFinished(self, record: Any) -> None:
        self.finished.append(record.outcome)
