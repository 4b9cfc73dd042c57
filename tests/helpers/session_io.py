"""
A recording fake of `txsocksgss.interfaces.ISessionIO`, the driver side of
the session machine, for unit tests of `txsocksgss.server.negotiation`
without sockets or a reactor: every action the machine takes is recorded in
order, and the work it starts (connects, tunnels, commands) is completed by
the test.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.helpers.fakes import FakeResolver
from txsocksgss.auth.none import NoAuthServerFactory
from txsocksgss.interfaces import ICommand, IConnector, ISessionIO, ITunnel
from txsocksgss.server.context import ServerContext
from txsocksgss.server.limits import LimitSettings, SessionLimits
from txsocksgss.server.negotiation import SessionMachine
from txsocksgss.server.rules import ALLOW_ALL
from txsocksgss.wire.socks5 import Address

__all__ = ["FakeCommand", "FakeConnector", "FakeTunnel", "RecordingSessionIO", "machine_on_fakes"]


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
        self.end("client closed")

    def close(self, outcome: str) -> None:
        self.end(outcome)

    def end(self, outcome: str, up: int = 0, down: int = 0) -> None:
        if self.ended is None:
            self.ended = outcome
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
                     ident: Any = None, begin: bool = True) -> tuple[SessionMachine, RecordingSessionIO, Clock]:
    """A session machine on a `RecordingSessionIO` and a Clock, begun for client 192.0.2.7:40000."""
    clock = Clock()
    context = ServerContext(
        reactor=clock,
        resolver=FakeResolver(names),
        authenticators=tuple(authenticators or (NoAuthServerFactory(),)),
        policy=policy,
        negotiation_timeout=negotiation_timeout,
        socks4=socks4,
        ident=ident,
        limits=SessionLimits(limits or LimitSettings()),
    )
    io = RecordingSessionIO()
    machine = SessionMachine(context, io)
    io.machine = machine
    if begin:
        machine.begin(("192.0.2.7", 40000), ("198.51.100.1", 1080))
    return machine, io, clock
