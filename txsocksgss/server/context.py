"""
What every session of one server shares: the reactor (the clock and the
network), the resolver, the methods in order of preference, the policy, the
limits and the guard, the timeouts; and the set of open sessions, for drain
and shutdown.  Values and bookkeeping only: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHostnameResolver

from txsocksgss.interfaces import IAccessPolicy, IIdentChecker, IServerAuthenticatorFactory
from txsocksgss.server.guard import DestinationGuard
from txsocksgss.server.limits import RefusalLog, SessionLimits

__all__ = ["ServerContext"]


@dataclass
class ServerContext:
    """
    Everything a server protocol needs, shared by all its connections.

    ``reactor`` provides IReactorTCP, IReactorUDP and IReactorTime;
    ``authenticators`` are in the server's order of preference; ``socks4``
    lets SOCKS 4/4a requests in (they bypass every SOCKS 5 method);
    ``external`` is the address BIND and UDP ASSOCIATE listen on (``None``:
    the address the client reached the server on).  ``limits`` admits
    connections (unlimited by default); ``guard``, when set, refuses
    guarded destinations before ``policy`` is asked; ``refusal_log``
    throttles the log lines of refused connections.
    """

    reactor: Any
    resolver: IHostnameResolver
    authenticators: tuple[IServerAuthenticatorFactory, ...]
    policy: IAccessPolicy
    negotiation_timeout: float = 30.0
    idle_timeout: float | None = 3600.0
    external: str | None = None
    ident: IIdentChecker | None = None
    socks4: bool = False
    splice: bool = True
    limits: SessionLimits = field(default_factory=SessionLimits)
    guard: DestinationGuard | None = None
    refusal_log: RefusalLog = field(default_factory=RefusalLog)
    sessions: set[Any] = field(default_factory=set)
    _drain_waiters: list[Deferred[None]] = field(default_factory=list)

    def sessionStarted(self, session: Any) -> None:
        self.sessions.add(session)

    def sessionEnded(self, session: Any) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def whenDrained(self) -> Deferred[None]:
        """A Deferred that fires once no client connection is open (at once if none is)."""
        waiter: Deferred[None] = Deferred()
        if self.sessions:
            self._drain_waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter

    def closeSessions(self) -> None:
        """Close every client connection now (their sessions are logged as ended)."""
        for session in list(self.sessions):
            session.shutdown()
