"""
Ident (RFC 1413) checks of SOCKS 4 clients.

SOCKS 4 has no authentication: the client names itself in USERID.  The
server may ask the identd on the client's host who owns the connection and
compare (the SOCKS 4 protocol gives two replies for that: 92, identd cannot
be reached, and 93, the ids differ).  `IdentChecker` does that in one of
three modes:

``off``
    No query; the session's user is USERID.
``log``
    Query, log the answer, never refuse; the session's user is the ident
    answer when there is one, else USERID.
``require``
    Query; no answer (refused, timed out, an ERROR reply) -> 92; an answer
    other than USERID -> 93; the session's user is the matching id.

Trust: an identd on a machine the user controls says whatever the user
wants; ident only means something for hosts whose administrators you trust.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from txsocksgss.errors import ProtocolError
from txsocksgss.interfaces import IIdentChecker
from txsocksgss.wire.ident import IdentError, IdentQuery, IdentUserId, parse_ident_response
from txsocksgss.wire.reader import MessageBuffer
from txsocksgss.wire.socks4 import SOCKS4ReplyCode

__all__ = ["IdentMode", "IdentOutcome", "IdentChecker", "IDENT_PORT"]

_log = Logger()

IDENT_PORT = 113


class IdentMode(enum.Enum):
    """How `IdentChecker` uses identd: see the module docstring."""

    OFF = "off"
    LOG = "log"
    REQUIRE = "require"


@dataclass(frozen=True)
class IdentOutcome:
    """
    The verdict on a SOCKS 4 client.

    ``refusal`` is None to go on, else the SOCKS 4 reply code to refuse with
    (92 or 93); ``user`` is the session's user; ``reason`` is for the log.
    """

    user: str | None
    refusal: SOCKS4ReplyCode | None = None
    reason: str = ""
    ident_answer: str | None = None


class _IdentQueryProtocol(Protocol):
    """Sends one query, reads one reply line (capped), then closes."""

    def __init__(self, query: IdentQuery) -> None:
        self.query = query
        self.answer: Deferred[IdentUserId | IdentError] = Deferred()
        self._buffer = MessageBuffer(limit=1024)

    def connectionMade(self) -> None:
        self.transport.write(self.query.serialize())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.answer.called:
            return
        self._buffer.feed(data)
        try:
            response = self._buffer.next(parse_ident_response)
        except ProtocolError as error:
            self.answer.errback(error)
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if response is not None:
            self.answer.callback(response)
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        if not self.answer.called:
            self.answer.errback(ProtocolError("identd closed the connection without an answer"))


@implementer(IIdentChecker)
class IdentChecker:
    """
    :param mode: an `IdentMode`.
    :param reactor: IReactorTCP and IReactorTime.
    :param port: the identd port on the client's host (113; tests use a high port).
    :param timeout: seconds for the whole lookup.
    """

    def __init__(self, mode: IdentMode, reactor: Any, port: int = IDENT_PORT, timeout: float = 10.0) -> None:
        self.mode = mode
        self.reactor = reactor
        self.port = port
        self.timeout = timeout

    def check(self, client: tuple[str, int], server: tuple[str, int], userid: str) -> Deferred[IdentOutcome]:
        """Judge a SOCKS 4 client at ``client`` that reached us at ``server`` and calls itself ``userid``."""
        if self.mode is IdentMode.OFF:
            return succeed(IdentOutcome(user=userid or None))
        d: Deferred[Any] = self._lookup(client, server)
        d.addCallbacks(lambda answer: self._judge(userid, answer), lambda failure: self._unreachable(userid, failure))
        return d

    def _lookup(self, client: tuple[str, int], server: tuple[str, int]) -> Deferred[IdentUserId | IdentError]:
        host = client[0]
        endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        # Connect from the address the client reached, so the identd sees the right peer.
        endpoint = endpoint_type(self.reactor, host, self.port, timeout=self.timeout, bindAddress=(server[0], 0))
        protocol = _IdentQueryProtocol(IdentQuery(client[1], server[1]))
        connecting = connectProtocol(endpoint, protocol)
        result: Deferred[IdentUserId | IdentError] = Deferred()

        def timed_out() -> None:
            if not result.called:
                result.errback(ProtocolError(f"identd at {host}:{self.port} gave no answer in {self.timeout} s"))
                connecting.cancel()
                if protocol.transport is not None:
                    protocol.transport.abortConnection()  # type: ignore[attr-defined]

        timer = self.reactor.callLater(self.timeout, timed_out)

        def answered(value: IdentUserId | IdentError) -> None:
            if timer.active():
                timer.cancel()
            if not result.called:
                result.callback(value)

        def failed(failure: Any) -> None:
            if timer.active():
                timer.cancel()
            if not result.called:
                result.errback(failure)

        connecting.addErrback(failed)
        protocol.answer.addCallbacks(answered, failed)
        return result

    def _judge(self, userid: str, answer: IdentUserId | IdentError) -> IdentOutcome:
        if isinstance(answer, IdentError):
            return self._unreachable(userid, f"identd answered ERROR : {answer.error}")
        ident_user = answer.user_id
        matches = ident_user == userid
        _log.info("ident: client says {userid!r}, identd says {ident!r}", userid=userid, ident=ident_user)
        if self.mode is IdentMode.LOG or matches:
            return IdentOutcome(user=ident_user, ident_answer=ident_user)
        return IdentOutcome(
            user=None,
            refusal=SOCKS4ReplyCode.IDENT_MISMATCH,
            reason=f"USERID {userid!r} but identd says {ident_user!r}",
            ident_answer=ident_user,
        )

    def _unreachable(self, userid: str, failure: Any) -> IdentOutcome:
        why = failure if isinstance(failure, str) else failure.getErrorMessage()
        if self.mode is IdentMode.LOG:
            _log.info("ident: no answer for {userid!r}: {why}", userid=userid, why=why)
            return IdentOutcome(user=userid or None)
        return IdentOutcome(user=None, refusal=SOCKS4ReplyCode.IDENT_UNREACHABLE, reason=f"identd: {why}")
