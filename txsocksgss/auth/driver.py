"""
The one driver of authentication conversations: the server's session
machine, the client's handshake and MAF (for each sub-method, on both sides)
run an authenticator through a `ConversationDriver`.

Theory of operation.  An authenticator (`txsocksgss.interfaces.IServerAuthenticator`
or `IClientAuthenticator`) answers `begin` and each `receive` with an
`AuthStep`, or with a Deferred of one when it must wait (a password checker,
an ident lookup, a KDC).  The driver is told what arrived (`start`, `feed`,
`abort`) and reports through two callables given to it: ``send(data)`` for
the bytes of each step, and ``ended(end)`` once, with a `ConversationEnd`.
It owns the rules every caller needs and none should repeat:

- while a step is pending, bytes that arrive are kept (the backlog) and fed
  in one piece when the step is taken; past ``backlog_limit`` the
  conversation ends with `EndKind.OVERFLOW`;
- the authenticator is never called again after its last step, nor after
  `abort` (which cancels a pending step);
- bytes after the end of the subnegotiation (``AuthStep.unused``, and the
  backlog) are handed back in ``ConversationEnd.unused``;
- an exception from the authenticator, or a failed Deferred step, ends the
  conversation with `EndKind.CRASHED` (result: "authentication error"),
  logged with its traceback: a bug, never the peer's fault.

No I/O and no reactor: the callables do the sending.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsocksgss.auth.conversation import AuthResult, AuthStep

__all__ = ["BACKLOG_LIMIT", "CRASH_REASON", "OVERFLOW_REASON", "EndKind", "ConversationEnd", "ConversationDriver"]

_log = Logger()

#: Bytes kept while a step is pending (as the server keeps before its reply).
BACKLOG_LIMIT = 256 * 1024
#: The reason of the result of a conversation whose authenticator raised.
CRASH_REASON = "authentication error"
#: The reason of the result of a conversation whose backlog overflowed.
OVERFLOW_REASON = "too much data during authentication"


class EndKind(enum.Enum):
    """How a conversation ended."""

    FINISHED = "finished"  # the authenticator's last step: its result, succeeded or failed
    CRASHED = "crashed"  # the authenticator raised, or its Deferred step failed
    OVERFLOW = "overflow"  # the peer sent more than the backlog limit while a step was pending


@dataclass(frozen=True)
class ConversationEnd:
    """
    What a conversation came to.

    ``result`` is the authenticator's result (`EndKind.FINISHED`) or a
    failure the driver made (`CRASH_REASON`, `OVERFLOW_REASON`); ``unused``
    the bytes received after the subnegotiation; ``failure`` what was
    raised (`EndKind.CRASHED` only).
    """

    kind: EndKind
    result: AuthResult
    unused: bytes = b""
    failure: Failure | None = None


class _State(enum.Enum):
    NEW = "new"
    READY = "ready"  # the last step is taken; waiting for the peer
    WAITING = "waiting"  # a Deferred step is pending
    ENDED = "ended"  # ended, or aborted


class ConversationDriver:
    """
    Runs one authenticator (see the module docstring).

    :param authenticator: an `IServerAuthenticator` or `IClientAuthenticator`.
    :param send: called with the bytes of each step that has any.
    :param ended: called once with the `ConversationEnd` (never after `abort`).
    :param method: the method's name, for the log line of a crash.
    :param log: the logger of that line (the caller's, for its namespace).
    :param backlog_limit: bytes kept while a step is pending; ``None``: no cap.
    """

    def __init__(self, authenticator: Any, send: Callable[[bytes], None],
                 ended: Callable[[ConversationEnd], None], method: str = "-", log: Logger = _log,
                 backlog_limit: int | None = BACKLOG_LIMIT) -> None:
        self.authenticator = authenticator
        self._send = send
        self._ended = ended
        self._method = method
        self._log = log
        self._backlog_limit = backlog_limit
        self._state = _State.NEW
        self._backlog = b""
        self._pending: Deferred[Any] | None = None
        self._settled: list[Deferred[None]] = []

    @property
    def waiting(self) -> bool:
        """Whether a Deferred step is pending (what is fed now is kept)."""
        return self._state is _State.WAITING

    @property
    def ended(self) -> bool:
        """Whether the conversation ended (or was aborted)."""
        return self._state is _State.ENDED

    def start(self, received: bytes = b"") -> None:
        """
        Call ``begin``; ``received``: bytes the peer already sent, fed once
        the first step is taken (or handed back as unused if it ends there).
        """
        if self._state is not _State.NEW:
            raise RuntimeError("conversation already started")
        self._state = _State.READY
        self._backlog = received
        self._call(self.authenticator.begin)

    def feed(self, data: bytes) -> None:
        """Bytes from the peer: given to the authenticator now, or kept while a step is pending."""
        if self._state is _State.NEW or self._state is _State.ENDED:
            raise RuntimeError(f"conversation {self._state.value}: nothing can be fed")
        if self._state is _State.WAITING:
            self._backlog += data
            if self._backlog_limit is not None and len(self._backlog) > self._backlog_limit:
                self._stop()
                self._ended(ConversationEnd(EndKind.OVERFLOW, AuthResult.failure(OVERFLOW_REASON)))
            return
        self._call(self.authenticator.receive, data)

    def abort(self) -> None:
        """Give up: abort the authenticator, cancel a pending step; nothing is reported after it."""
        if self._state is not _State.ENDED:
            self._stop()

    def whenSettled(self) -> Deferred[None]:
        """
        A Deferred that fires once no step is pending (at once if none is):
        the step's bytes are sent and its end, if any, reported by then.  MAF
        uses it to resume its own conversation after a sub-method's wait.
        """
        if self._state is not _State.WAITING:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._settled.append(d)
        return d

    # -- internals ------------------------------------------------------------

    def _call(self, function: Callable[..., Any], *args: Any) -> None:
        try:
            step = function(*args)
        except Exception:
            self._crashed(Failure())
            return
        if isinstance(step, Deferred):
            self._state = _State.WAITING
            self._pending = step
            step.addCallback(self._stepArrived)
            step.addErrback(self._stepFailed)
        else:
            self._take(step)

    def _stepArrived(self, step: AuthStep) -> None:
        if self._state is not _State.WAITING:
            return
        self._pending = None
        self._state = _State.READY
        self._take(step)

    def _stepFailed(self, failure: Failure) -> None:
        # As the session machine always did: whatever fails on the way from a
        # pending step to its end is the conversation's error.
        if self._state is _State.ENDED or failure.check(CancelledError):
            return
        self._pending = None
        self._crashed(failure)

    def _take(self, step: AuthStep) -> None:
        if step.send:
            self._send(step.send)
            if self._state is _State.ENDED:  # the caller aborted while sending
                return
        if step.result is None:
            backlog, self._backlog = self._backlog, b""
            if backlog:
                self._call(self.authenticator.receive, backlog)
            else:
                self._fireSettled()
            return
        unused, self._backlog = step.unused + self._backlog, b""
        self._state = _State.ENDED
        self._ended(ConversationEnd(EndKind.FINISHED, step.result, unused))
        self._fireSettled()

    def _crashed(self, failure: Failure) -> None:
        self._log.failure("authenticator {method} raised", failure, method=self._method)
        self._stop()
        self._ended(ConversationEnd(EndKind.CRASHED, AuthResult.failure(CRASH_REASON), failure=failure))
        self._fireSettled()

    def _stop(self) -> None:
        self._state = _State.ENDED
        self._backlog = b""
        self.authenticator.abort()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    def _fireSettled(self) -> None:
        waiting, self._settled = self._settled, []
        for d in waiting:
            d.callback(None)
