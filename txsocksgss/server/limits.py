"""
Admission limits for client connections: how many sessions at once (overall,
per client address, and still negotiating), and the cool-down after repeated
authentication failures from one address.

Theory of operation.  `SessionLimits` is sans-IO: it never reads a clock,
never touches a socket and never logs.  The server protocol asks `admit` when
a connection is accepted and keeps the `SessionTicket` it gets; the ticket is
told when negotiation ends (the first reply, or the end of the session) and
when the connection is gone, and it keeps the counts.  Both calls are
idempotent, so a session that ends in several ways at once (a timeout and a
close) is counted out exactly once.  Authentication failures are reported
with `authenticationFailed`; once ``auth_fail_limit`` of them fall within
``auth_fail_window`` seconds, the address is refused for a cool-down of
``auth_fail_window`` seconds from that failure.  Time is always passed in
(``now``, from the injected reactor clock), so tests drive it directly.

A refused connection is never queued: the caller closes it at once.
`RefusalLog` keeps the log of refusals readable under a flood: at most one
line per kind of refusal per second, the next one counting those left out.

Clients are keyed by IP address (an IPv4-mapped IPv6 address counts as its
IPv4 address); clients without one (UNIX sockets) are subject only to the
overall limits.  Memory is bounded: at most ``max_tracked_clients`` addresses
have a failure history or a cool-down; past that the oldest entries go first.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "LimitSettings",
    "Refusal",
    "RefusalLog",
    "RefusalReason",
    "SessionLimits",
    "SessionTicket",
    "client_key",
    "limit_settings",
]


class RefusalReason(enum.Enum):
    """Why a connection was refused at accept; the value names the option that set the limit."""

    SESSIONS = "max-sessions"
    PER_CLIENT = "max-sessions-per-client"
    NEGOTIATING = "max-negotiating"
    AUTH_FAILURES = "auth-fail-limit"


@dataclass(frozen=True)
class Refusal:
    """A refused connection: the reason and a sentence for the log."""

    reason: RefusalReason
    detail: str


@dataclass(frozen=True)
class LimitSettings:
    """
    The limits; 0 means unlimited (for ``auth_fail_limit``: no cool-down).

    :ivar max_sessions: client connections open at once.
    :ivar max_sessions_per_client: client connections open at once from one address.
    :ivar max_negotiating: connections that have not had their first reply yet.
    :ivar auth_fail_limit: authentication failures from one address, within
        ``auth_fail_window`` seconds, that start a cool-down.
    :ivar auth_fail_window: seconds, both the window and the cool-down.
    :ivar max_tracked_clients: addresses with a failure history or a
        cool-down kept in memory.
    """

    max_sessions: int = 0
    max_sessions_per_client: int = 0
    max_negotiating: int = 0
    auth_fail_limit: int = 0
    auth_fail_window: float = 60.0
    max_tracked_clients: int = 65536

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_sessions_per_client", "max_negotiating", "auth_fail_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (unlimited) or more")
        if self.auth_fail_window <= 0:
            raise ValueError("auth_fail_window must be a positive number of seconds")
        if self.max_tracked_clients < 1:
            raise ValueError("max_tracked_clients must be at least 1")


def limit_settings(config: Any) -> LimitSettings:
    """The `LimitSettings` of a `txsocksgss.server.config.Config`."""
    return LimitSettings(
        max_sessions=config.max_sessions,
        max_sessions_per_client=config.max_sessions_per_client,
        max_negotiating=config.max_negotiating,
        auth_fail_limit=config.auth_fail_limit,
        auth_fail_window=config.auth_fail_window,
    )


def client_key(host: str | None) -> str | None:
    """
    The key a client address is counted under: the address in canonical
    text form (IPv4-mapped IPv6 as IPv4); ``None`` (no per-client limit) for
    a client without an IP address.
    """
    if not host:
        return None
    return _canonical_client(host)


@lru_cache(maxsize=4096)
def _canonical_client(host: str) -> str | None:
    # Cached: every accepted connection asks, usually about the same few addresses.
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class SessionTicket:
    """
    One admitted connection's share of the counts (from `SessionLimits.admit`).

    `negotiated` and `release` may each be called any number of times; only
    the first call counts.
    """

    __slots__ = ("_limits", "client", "negotiating", "released")

    def __init__(self, limits: "SessionLimits", client: str | None) -> None:
        self._limits = limits
        self.client = client
        self.negotiating = True
        self.released = False

    def negotiated(self) -> None:
        """Negotiation is over (first reply sent, or the session ended)."""
        if self.negotiating:
            self.negotiating = False
            self._limits._negotiating -= 1

    def release(self) -> None:
        """The connection is gone: give back its place."""
        if self.released:
            return
        self.negotiated()
        self.released = True
        self._limits._release(self.client)


class SessionLimits:
    """
    The counts and failure history of one server (one process); see the
    module docstring.
    """

    def __init__(self, settings: LimitSettings = LimitSettings()) -> None:
        self.settings = settings
        self._sessions = 0
        self._negotiating = 0
        self._per_client: dict[str, int] = {}
        # Insertion order is age order: a key is moved to the end when touched.
        self._failures: dict[str, deque[float]] = {}
        self._blocked_until: dict[str, float] = {}

    # -- counts ----------------------------------------------------------------

    @property
    def sessions(self) -> int:
        """Admitted connections not yet released."""
        return self._sessions

    @property
    def negotiating(self) -> int:
        """Admitted connections still negotiating."""
        return self._negotiating

    def sessionsOf(self, host: str | None) -> int:
        """Admitted connections not yet released from ``host``."""
        key = client_key(host)
        return self._per_client.get(key, 0) if key is not None else 0

    def admit(self, host: str | None, now: float) -> SessionTicket | Refusal:
        """
        Decide on a new connection from ``host`` (an IP address as text, or
        None): a `SessionTicket` (counted) if it may proceed, else a `Refusal`
        (nothing counted).  The cool-down is checked first, so a blocked
        address never takes a place.
        """
        settings = self.settings
        key = client_key(host)
        if key is not None:
            until = self.blockedUntil(key, now)
            if until is not None:
                return Refusal(
                    RefusalReason.AUTH_FAILURES,
                    f"{settings.auth_fail_limit} authentication failures within "
                    f"{settings.auth_fail_window:g}s; refused for another {until - now:.1f}s",
                )
        if settings.max_sessions and self._sessions >= settings.max_sessions:
            return Refusal(RefusalReason.SESSIONS, f"{self._sessions} sessions open (limit {settings.max_sessions})")
        if key is not None and settings.max_sessions_per_client:
            count = self._per_client.get(key, 0)
            if count >= settings.max_sessions_per_client:
                return Refusal(
                    RefusalReason.PER_CLIENT,
                    f"{count} sessions open from this address (limit {settings.max_sessions_per_client})",
                )
        if settings.max_negotiating and self._negotiating >= settings.max_negotiating:
            return Refusal(
                RefusalReason.NEGOTIATING,
                f"{self._negotiating} sessions negotiating (limit {settings.max_negotiating})",
            )
        self._sessions += 1
        self._negotiating += 1
        if key is not None:
            self._per_client[key] = self._per_client.get(key, 0) + 1
        return SessionTicket(self, key)

    def _release(self, key: str | None) -> None:
        self._sessions -= 1
        if key is not None:
            remaining = self._per_client.get(key, 0) - 1
            if remaining > 0:
                self._per_client[key] = remaining
            else:
                self._per_client.pop(key, None)

    # -- authentication failures -----------------------------------------------

    def authenticationFailed(self, host: str | None, now: float) -> bool:
        """
        Record one failed authentication from ``host`` at ``now``.  True if
        this failure starts a cool-down (the caller logs it).
        """
        limit = self.settings.auth_fail_limit
        key = client_key(host)
        if not limit or key is None:
            return False
        window = self.settings.auth_fail_window
        history = self._failures.pop(key, None)
        if history is None:
            history = deque(maxlen=limit)
        history.append(now)
        if len(history) == limit and now - history[0] <= window:
            self._blocked_until.pop(key, None)
            self._blocked_until[key] = now + window
            self._trim(self._blocked_until, now)
            return True
        self._failures[key] = history
        self._trim(self._failures, now)
        return False

    def blockedUntil(self, host: str | None, now: float) -> float | None:
        """When ``host``'s cool-down ends, or None if it is not cooling down."""
        key = client_key(host)
        if key is None:
            return None
        until = self._blocked_until.get(key)
        if until is None:
            return None
        if now >= until:
            del self._blocked_until[key]
            return None
        return until

    @property
    def trackedClients(self) -> int:
        """Addresses with a failure history or a cool-down in memory."""
        return len(self._failures) + len(self._blocked_until)

    def _trim(self, table: dict[str, Any], now: float) -> None:
        """Keep ``table`` under the cap: expired entries first, then the oldest."""
        cap = self.settings.max_tracked_clients
        if len(table) <= cap:
            return
        window = self.settings.auth_fail_window
        if table is self._blocked_until:
            expired = [key for key, until in table.items() if now >= until]
        else:
            expired = [key for key, history in table.items() if now - history[-1] > window]
        for key in expired:
            del table[key]
        while len(table) > cap:
            del table[next(iter(table))]


class RefusalLog:
    """
    Throttles the log of refused connections: `shouldLog` says whether to
    write a line for a refusal now (at most one per reason per ``interval``
    seconds) and how many refusals of that reason were left out since the
    last line.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last: dict[RefusalReason, float] = {}
        self._suppressed: dict[RefusalReason, int] = {}

    def shouldLog(self, reason: RefusalReason, now: float) -> int | None:
        """None: do not log this one; else log it, mentioning the returned count of left-out refusals."""
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return None
        self._last[reason] = now
        return self._suppressed.pop(reason, 0)
