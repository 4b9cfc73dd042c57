"""
Method 0x08, the Multi-Authentication Framework (draft-ietf-aft-socks-maf),
server and client side.

Theory of operation.  MAF is client-initiated and server-managed.  The
client lists the sub-methods it can run (in blocks of at most 255 ids, the
last id MORE_METHODS_AVAILABLE when another block follows).  The server's
Authentication Management Server policy (`txsocksgss.interfaces.IMAFPolicy`)
then decides, again and again: DO one sub-method, ask for more ids
(relative or absolute), or end with SUCCESS (and an integrity grade) or
FAILURE.  A sub-method is one of the project's ordinary authenticators,
unchanged, run by the same `txsocksgss.auth.driver.ConversationDriver` as
everywhere: its bytes travel in the DATA of PROCESS messages (the DO message
carries the server's first bytes, if any, and waits for them when the
sub-method's first step waits).  When a sub-method ends on the
client side, the client sends WHAT NEXT? and the policy decides again.

Decisions where the draft is silent or contradicts itself (docs/maf.rst):

- NMETHODS is one octet (docs/protocol.rst, MAF).
- A sub-method's outcome on the server is the outcome of the server-side
  authenticator; the client's WHAT NEXT? only says the client is done.  A
  WHAT NEXT? before the server-side sub-method has ended means the client
  gave up: that sub-method failed.
- SUCCESS carries DATA ``grade=N`` (ASCII); FAILURE carries the reason
  (UTF-8).  ACKNOWLEDGE is never sent and is a protocol error when received.
- Per-message protection: the MAF messages themselves are never protected.
  If sub-methods that succeeded established a protection (GSS-API at level
  1 or 2), the last such one protects everything after SUCCESS, exactly as
  after that method's own subnegotiation.
- Identity: the user is the one the last successful sub-method established;
  every sub-method's outcome is kept in the identity's attributes.
- A sub-method whose authenticator raises (a bug; the driver logs it) has
  failed with "authentication error".  On the server it sent nothing the
  client's side could finish on, so MAF ends at once in FAILURE; on the
  client it is a sub-method that failed here.
- Caps: DATA length, sub-method ids in all, requests for more, DO rounds and
  PROCESS messages per sub-method; passing one ends in FAILURE.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from txsocksgss.auth.conversation import AuthResult, AuthStep, Identity, SessionInfo
from txsocksgss.auth.driver import ConversationDriver, ConversationEnd, EndKind
from txsocksgss.errors import ConfigError, ProtocolError
from txsocksgss.interfaces import (
    IClientAuthenticator,
    IClientAuthenticatorFactory,
    IMAFPolicy,
    IServerAuthenticator,
    IServerAuthenticatorFactory,
)
from txsocksgss.wire.maf import (
    Instruction,
    MAFMessage,
    MethodMessage,
    RequestMore,
    RequestMoreFlags,
    SubMethod,
    SubMethodsSupported,
    WhatNext,
    parse_maf_message,
)
from txsocksgss.wire.reader import MessageBuffer
from txsocksgss.wire.socks5 import AuthMethod

__all__ = [
    "SUBMETHOD_IDS",
    "SUBMETHOD_NAMES",
    "MAFLimits",
    "SubMethodOutcome",
    "MAFState",
    "DoSubMethod",
    "AskForMore",
    "Succeed",
    "Fail",
    "ChainPolicy",
    "Chain",
    "MAFServerFactory",
    "MAFClientFactory",
    "TestSubMethodServerFactory",
    "TestSubMethodClientFactory",
    "chains_from_table",
    "parse_chain_spec",
]

_log = Logger()

# The ids of SubMethod that mark a message, not a sub-method.
_MARKERS = frozenset({SubMethod.SUCCESS, SubMethod.MORE_METHODS_AVAILABLE, SubMethod.FAILURE})
#: Sub-method ids by name: the draft's internal test method and the
#: project's methods (proprietary range 0x00000003-0x0000FFFF of the draft),
#: read from `txsocksgss.wire.maf.SubMethod`; `txsocksgss.auth.registry`
#: gives each method its id from the same enum.
SUBMETHOD_IDS: Mapping[str, int] = {member.name.lower(): member for member in SubMethod if member not in _MARKERS}
SUBMETHOD_NAMES: Mapping[int, str] = {value: name for name, value in SUBMETHOD_IDS.items()}


def _name(method_id: int) -> str:
    return SUBMETHOD_NAMES.get(method_id, f"{method_id:#010x}")


@dataclass(frozen=True)
class MAFLimits:
    """Caps on one MAF subnegotiation (see the module docstring)."""

    max_data: int = 65536
    max_methods: int = 1020
    max_requests_for_more: int = 4
    max_rounds: int = 8
    max_process_messages: int = 64


# -- the policy's view and its decisions ---------------------------------------


@dataclass(frozen=True)
class SubMethodOutcome:
    """How one sub-method ended on the server."""

    method: int
    succeeded: bool
    identity: Identity | None = None
    protection: Any = None
    reason: str = ""


@dataclass(frozen=True)
class MAFState:
    """
    What the policy knows when it decides.

    :ivar offered: ids the client listed, in its order, without duplicates
        and without MORE_METHODS_AVAILABLE.
    :ivar more_available: the client's last block said it has more.
    :ivar requests_for_more: how many times more ids were asked for.
    :ivar outcomes: the sub-methods run so far, in order.
    :ivar supported: ids this server can run.
    """

    offered: tuple[int, ...]
    more_available: bool
    requests_for_more: int
    outcomes: tuple[SubMethodOutcome, ...]
    supported: frozenset[int]
    new_in_last_block: int = 0


@dataclass(frozen=True)
class DoSubMethod:
    method: int


@dataclass(frozen=True)
class AskForMore:
    absolute: bool = False


@dataclass(frozen=True)
class Succeed:
    grade: int = 0


@dataclass(frozen=True)
class Fail:
    reason: str


MAFDecision = DoSubMethod | AskForMore | Succeed | Fail


@dataclass(frozen=True)
class Chain:
    """One acceptable sequence of sub-methods (by id, in order) and the grade it earns."""

    methods: tuple[int, ...]
    grade: int

    def __str__(self) -> str:
        return "+".join(_name(m) for m in self.methods) + f" (grade {self.grade})"


@implementer(IMAFPolicy)
class ChainPolicy:
    """
    The default Authentication Management Server policy: alternatives
    ("gssapi, or userpass then test"), most preferred first, each an ordered
    chain of required sub-methods with a grade.

    The first alternative whose sub-methods the client offered all of is
    followed in order; when none is complete and the client has more ids,
    more are asked for (relative).  A failed sub-method abandons its
    alternative; with ``continue_on_failure`` the next alternative that does
    not need a failed sub-method is tried, else the whole MAF fails.
    """

    def __init__(self, chains: Sequence[Chain], continue_on_failure: bool = False) -> None:
        if not chains:
            raise ConfigError("a MAF policy needs at least one chain of sub-methods")
        self.chains = tuple(chains)
        self.continue_on_failure = continue_on_failure

    def decide(self, state: MAFState) -> MAFDecision:
        failed = {o.method for o in state.outcomes if not o.succeeded}
        if failed and not self.continue_on_failure:
            last = state.outcomes[-1]
            return Fail(f"sub-method {_name(last.method)} failed: {last.reason}")
        succeeded = [o.method for o in state.outcomes if o.succeeded]
        offered = set(state.offered)
        for chain in self.chains:
            if failed & set(chain.methods) or not set(chain.methods) <= state.supported:
                continue
            if succeeded != list(chain.methods[: len(succeeded)]):
                continue  # this chain does not extend what has run
            if not set(chain.methods) <= offered:
                continue
            if len(succeeded) == len(chain.methods):
                return Succeed(chain.grade)
            return DoSubMethod(chain.methods[len(succeeded)])
        if state.more_available and state.new_in_last_block:
            return AskForMore(absolute=False)
        return Fail("the client offers no acceptable chain of sub-methods "
                    f"(acceptable: {'; '.join(str(c) for c in self.chains)})")


# -- the internal test method -------------------------------------------------


@implementer(IServerAuthenticatorFactory)
class TestSubMethodServerFactory:
    """
    The draft's Internal Test Method (0x00000001), as this project defines
    it: the client sends ``TEST``, the server answers ``TEST``; any other
    data fails.  It proves nothing about anyone; use it to test MAF.
    """

    method = SubMethod.TEST
    name = "test"
    __test__ = False  # not a pytest test class

    def buildAuthenticator(self, session: SessionInfo) -> IServerAuthenticator:
        return _TestServer()


@implementer(IServerAuthenticator)
class _TestServer:
    method = SubMethod.TEST

    def begin(self) -> AuthStep:
        return AuthStep()

    def receive(self, data: bytes) -> AuthStep:
        if data == b"TEST":
            return AuthStep(b"TEST", AuthResult.success(Identity(SubMethod.TEST, None, {"test": True})))
        return AuthStep(b"FAIL", AuthResult.failure(f"test method got {data[:16]!r}"))

    def abort(self) -> None:
        pass


@implementer(IClientAuthenticatorFactory)
class TestSubMethodClientFactory:
    """The client side of the Internal Test Method (see `TestSubMethodServerFactory`)."""

    method = SubMethod.TEST
    __test__ = False  # not a pytest test class

    def __init__(self, payload: bytes = b"TEST") -> None:
        self.payload = payload

    def buildAuthenticator(self, session: SessionInfo) -> IClientAuthenticator:
        return _TestClient(self.payload)


@implementer(IClientAuthenticator)
class _TestClient:
    method = SubMethod.TEST

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def begin(self) -> AuthStep:
        return AuthStep(self.payload)

    def receive(self, data: bytes) -> AuthStep:
        if data == b"TEST":
            return AuthStep(result=AuthResult.success(Identity(SubMethod.TEST, None)))
        return AuthStep(result=AuthResult.failure("the server's test method answered FAIL"))

    def abort(self) -> None:
        pass


class _MessageLoop:
    """
    What both MAF conversations share: parse every whole buffered message,
    handle it, and stop at a result or at a sub-method step that must wait
    (then resume when it fires).
    """

    _buffer: MessageBuffer
    _parse: Any
    # What this receive() answers, in order: sub-method callbacks append too.
    _sent: list[bytes]
    _malformed = "malformed MAF message"

    def _finished(self) -> bool:
        raise NotImplementedError

    def _handle(self, message: MAFMessage, sent: list[bytes]) -> AuthResult | Deferred[Any] | None:
        raise NotImplementedError

    def _resume(self, sent: list[bytes]) -> AuthStep | Deferred[AuthStep]:
        raise NotImplementedError

    def _failed(self, reason: str, sent: list[bytes]) -> AuthStep:
        raise NotImplementedError

    def _run(self, sent: list[bytes]) -> AuthStep | Deferred[AuthStep]:
        while not self._finished():
            try:
                message = self._buffer.next(self._parse)
            except ProtocolError as error:
                return self._failed(f"{self._malformed}: {error}", sent)
            if message is None:
                break
            try:
                outcome = self._handle(message, sent)
            except ProtocolError as error:
                return self._failed(str(error), sent)
            if isinstance(outcome, Deferred):
                # A sub-method's step is pending: go on once it is taken.
                return outcome.addCallback(lambda _: self._resume(sent))
            if isinstance(outcome, AuthResult):
                return AuthStep(b"".join(sent), outcome, self._buffer.take_all())
        return AuthStep(b"".join(sent))


def _combined(outcomes: Sequence[SubMethodOutcome], grade: int) -> AuthResult:
    """The MAF result from the sub-methods' outcomes (see the module docstring)."""
    succeeded = [o for o in outcomes if o.succeeded]
    users = [o.identity.user for o in succeeded if o.identity is not None and o.identity.user]
    protections = [o.protection for o in succeeded if o.protection is not None]
    attributes: dict[str, Any] = {
        "grade": grade,
        "submethods": tuple(_name(o.method) for o in succeeded),
        "users": tuple(users),
    }
    # The user and the facts that qualify it (realm, mechanism) come from one
    # sub-method, the last that named a user: a password user never borrows
    # a Kerberos realm.
    named = [o for o in succeeded if o.identity is not None and o.identity.user]
    if named:
        source = named[-1].identity
        assert source is not None
        for key in ("realm", "mechanism"):
            if key in source.attributes:
                attributes[key] = source.attributes[key]
    for outcome in succeeded:
        if outcome.identity is not None and "protection" in outcome.identity.attributes:
            attributes["protection"] = outcome.identity.attributes["protection"]
    identity = Identity(AuthMethod.MAF, users[-1] if users else None, attributes)
    return AuthResult.success(identity, protections[-1] if protections else None)


# -- server -------------------------------------------------------------------


class _ServerStage(enum.Enum):
    OFFERS = "waiting for sub-method ids"
    RUNNING = "running a sub-method"
    DONE_WAITING = "waiting for WHAT NEXT?"
    FINISHED = "finished"


@implementer(IServerAuthenticatorFactory)
class MAFServerFactory:
    """
    Server side of method 0x08; configuration name ``maf``.

    :param policy: the `IMAFPolicy` (e.g. `ChainPolicy`).
    :param submethods: server authenticator factories by sub-method id.
    :param limits: `MAFLimits`.
    """

    method = AuthMethod.MAF
    name = "maf"

    def __init__(self, policy: IMAFPolicy, submethods: Mapping[int, IServerAuthenticatorFactory],
                 limits: MAFLimits = MAFLimits()) -> None:
        self.policy = policy
        self.submethods = dict(submethods)
        self.limits = limits

    def buildAuthenticator(self, session: SessionInfo) -> IServerAuthenticator:
        return _MAFServerConversation(self, session)


@implementer(IServerAuthenticator)
class _MAFServerConversation(_MessageLoop):
    method = AuthMethod.MAF

    def __init__(self, factory: MAFServerFactory, session: SessionInfo) -> None:
        self._factory = factory
        self._limits = factory.limits
        self._session = session
        self._buffer = MessageBuffer(limit=12 + factory.limits.max_data)
        self._parse = partial(parse_maf_message, max_data=factory.limits.max_data)
        self._stage = _ServerStage.OFFERS
        self._offered: list[int] = []
        self._more = False
        self._new_in_last_block = 0
        self._requests_for_more = 0
        self._outcomes: list[SubMethodOutcome] = []
        self._current: int | None = None
        self._sub: ConversationDriver | None = None
        self._do_sent = False
        self._abandoned: str | None = None
        self._sent = []
        self._sub_outcome: SubMethodOutcome | None = None
        self._process_count = 0
        self._pending: Deferred[Any] | None = None
        # Sub-methods that failed here: the server counts them against the
        # client's address even if the client hangs up before the verdict.
        self.failedAttempts = 0

    def begin(self) -> AuthStep:
        return AuthStep()

    def abort(self) -> None:
        if self._sub is not None:
            self._sub.abort()
        self._stage = _ServerStage.FINISHED

    def receive(self, data: bytes) -> AuthStep | Deferred[AuthStep]:
        self._buffer.feed(data)
        self._sent = []
        return self._run(self._sent)

    def _finished(self) -> bool:
        return self._stage is _ServerStage.FINISHED

    def _resume(self, sent: list[bytes]) -> AuthStep | Deferred[AuthStep]:
        if self._stage is _ServerStage.FINISHED:
            return AuthStep(b"".join(sent))
        self._sendDo()
        result = self._checkAbandoned(sent)
        if result is not None:
            return AuthStep(b"".join(sent), result, self._buffer.take_all())
        return self._run(sent)

    def _handle(self, message: MAFMessage, sent: list[bytes]) -> AuthResult | Deferred[Any] | None:
        if self._stage is _ServerStage.OFFERS:
            if not isinstance(message, SubMethodsSupported):
                raise ProtocolError(f"expected the client's sub-methods, got {type(message).__name__}")
            self._takeOffers(message)
            return self._decide(sent)
        if self._stage is _ServerStage.RUNNING:
            if isinstance(message, WhatNext):
                # The client finished first: the sub-method did not succeed here.
                assert self._sub is not None and self._current is not None
                self._sub.abort()
                self._recordOutcome(SubMethodOutcome(self._current, False, reason="the client gave up"))
                return self._decide(sent)
            if not isinstance(message, MethodMessage) or message.instruction != Instruction.PROCESS:
                raise ProtocolError(f"expected PROCESS or WHAT NEXT?, got {type(message).__name__}")
            if message.method != self._current:
                raise ProtocolError(f"PROCESS for sub-method {message.method:#010x} while running {self._current:#010x}")
            self._process_count += 1
            if self._process_count > self._limits.max_process_messages:
                raise ProtocolError(f"more than {self._limits.max_process_messages} PROCESS messages")
            sub = self._sub
            assert sub is not None
            sub.feed(message.data)
            return sub.whenSettled() if sub.waiting else self._checkAbandoned(sent)
        if self._stage is _ServerStage.DONE_WAITING:
            if not isinstance(message, WhatNext):
                raise ProtocolError(f"expected WHAT NEXT?, got {type(message).__name__}")
            assert self._sub_outcome is not None
            self._outcomes.append(self._sub_outcome)
            self._sub_outcome = None
            return self._decide(sent)
        raise ProtocolError("MAF message after the end")

    def _takeOffers(self, message: SubMethodsSupported) -> None:
        ids = list(message.methods)
        self._more = message.more_available
        if self._more:
            ids = ids[:-1]
        new = [i for i in ids if i not in self._offered and i != SubMethod.MORE_METHODS_AVAILABLE]
        self._offered.extend(dict.fromkeys(new))
        self._new_in_last_block = len(new)
        if len(self._offered) > self._limits.max_methods:
            raise ProtocolError(f"more than {self._limits.max_methods} sub-methods offered")

    def _state(self) -> MAFState:
        return MAFState(
            offered=tuple(self._offered),
            more_available=self._more,
            requests_for_more=self._requests_for_more,
            outcomes=tuple(self._outcomes),
            supported=frozenset(self._factory.submethods),
            new_in_last_block=self._new_in_last_block,
        )

    def _decide(self, sent: list[bytes]) -> AuthResult | Deferred[Any] | None:
        decision = self._factory.policy.decide(self._state())
        if isinstance(decision, AskForMore):
            if not self._more or self._requests_for_more >= self._limits.max_requests_for_more:
                return self._finalFailure("the client has no more sub-methods to offer", sent)
            self._requests_for_more += 1
            flags = RequestMoreFlags.ABSOLUTE if decision.absolute else RequestMoreFlags.RELATIVE
            sent.append(RequestMore(flags).serialize())
            self._stage = _ServerStage.OFFERS
            return None
        if isinstance(decision, Fail):
            return self._finalFailure(decision.reason, sent)
        if isinstance(decision, Succeed):
            return self._finalSuccess(decision.grade, sent)
        method = decision.method
        factory = self._factory.submethods.get(method)
        if factory is None or method not in self._offered:
            return self._finalFailure(f"the policy chose sub-method {_name(method)}, which cannot run", sent)
        if len(self._outcomes) >= self._limits.max_rounds:
            return self._finalFailure(f"more than {self._limits.max_rounds} sub-methods", sent)
        self._current = method
        self._process_count = 0
        self._do_sent = False
        self._stage = _ServerStage.RUNNING
        _log.debug("MAF: DO {method}", method=_name(method))
        sub = self._sub = ConversationDriver(
            factory.buildAuthenticator(self._session), send=self._subSend, ended=self._subEnded,
            method=_name(method), log=_log, backlog_limit=None)
        sub.start()
        if sub.waiting:
            return sub.whenSettled()  # DO goes out with the first step (see _resume)
        self._sendDo()
        return self._checkAbandoned(sent)

    def _checkAbandoned(self, sent: list[bytes]) -> AuthResult | None:
        """After a sub-method's step: the FAILURE that ends MAF if the sub-method crashed."""
        reason, self._abandoned = self._abandoned, None
        if reason is None:
            return None
        assert self._sub_outcome is not None
        self._outcomes.append(self._sub_outcome)
        self._sub_outcome = None
        return self._finalFailure(reason, sent)

    def _sendDo(self) -> None:
        """DO, with the sub-method's first bytes (if its first step had none, when that step is taken)."""
        if not self._do_sent and self._current is not None:
            self._do_sent = True
            self._sent.append(MethodMessage(Instruction.DO, self._current, b"").serialize())

    def _subSend(self, data: bytes) -> None:
        """The sub-method's bytes: in DO for its first step, in PROCESS after it."""
        assert self._current is not None
        instruction = Instruction.PROCESS if self._do_sent else Instruction.DO
        self._do_sent = True
        self._sent.append(MethodMessage(instruction, self._current, data).serialize())

    def _subEnded(self, end: ConversationEnd) -> None:
        self._subFinished(end.result)
        if end.kind is not EndKind.FINISHED:
            # It raised (the driver logged it) and sent nothing, so the
            # client's side of it cannot finish: MAF ends in FAILURE, which
            # tells the client why (see _checkAbandoned).
            assert self._current is not None
            self._abandoned = f"sub-method {_name(self._current)} failed: {end.result.reason}"

    def _subFinished(self, result: AuthResult) -> None:
        assert self._current is not None
        if not result.succeeded:
            self.failedAttempts += 1
        self._sub_outcome = SubMethodOutcome(
            self._current, result.succeeded, result.identity, result.protection, result.reason)
        _log.info("MAF: sub-method {method} {verdict}{why}", method=_name(self._current),
                  verdict="succeeded" if result.succeeded else "failed",
                  why="" if result.succeeded else f": {result.reason}")
        self._sub = None
        self._stage = _ServerStage.DONE_WAITING

    def _recordOutcome(self, outcome: SubMethodOutcome) -> None:
        self._outcomes.append(outcome)
        self._sub = None

    def _finalSuccess(self, grade: int, sent: list[bytes]) -> AuthResult:
        self._stage = _ServerStage.FINISHED
        sent.append(MethodMessage(Instruction.SUCCESS, SubMethod.SUCCESS, f"grade={grade}".encode()).serialize())
        return _combined(self._outcomes, grade)

    def _finalFailure(self, reason: str, sent: list[bytes]) -> AuthResult:
        self._stage = _ServerStage.FINISHED
        sent.append(MethodMessage(Instruction.FAILURE, SubMethod.FAILURE, reason.encode()[:1024]).serialize())
        return AuthResult.failure(f"MAF: {reason}")

    def _failed(self, reason: str, sent: list[bytes]) -> AuthStep:
        if self._sub is not None:
            self._sub.abort()
            self._sub = None
        if self._stage is _ServerStage.FINISHED:
            return AuthStep(b"".join(sent), AuthResult.failure(f"MAF: {reason}"))
        result = self._finalFailure(reason, sent)
        return AuthStep(b"".join(sent), result)


# -- client -------------------------------------------------------------------


@implementer(IClientAuthenticatorFactory)
class MAFClientFactory:
    """
    Client side of method 0x08.

    :param submethods: (sub-method id, client authenticator factory) pairs
        in the client's order of preference.
    :param block_size: ids per SUB-METHODS message (at most 254, leaving
        room for MORE_METHODS_AVAILABLE).
    :param continue_on_failure: after one of its sub-methods fails, go on
        with what the server says next.  Off by default: the client then
        ends the handshake at once, because a sub-method that failed here
        but succeeded on the server (a GSS-API level this client refuses)
        would leave the two sides disagreeing about protection.
    """

    method = AuthMethod.MAF

    def __init__(self, submethods: Sequence[tuple[int, IClientAuthenticatorFactory]], block_size: int = 254,
                 max_data: int = 65536, continue_on_failure: bool = False) -> None:
        if not submethods:
            raise ConfigError("MAF needs at least one sub-method")
        if not 1 <= block_size <= 254:
            raise ConfigError("MAF block size must be 1 to 254")
        self.submethods = tuple(submethods)
        self.block_size = block_size
        self.max_data = max_data
        self.continue_on_failure = continue_on_failure

    def buildAuthenticator(self, session: SessionInfo) -> IClientAuthenticator:
        return _MAFClientConversation(self, session)


@implementer(IClientAuthenticator)
class _MAFClientConversation(_MessageLoop):
    method = AuthMethod.MAF
    _malformed = "malformed MAF message from the proxy"

    def __init__(self, factory: MAFClientFactory, session: SessionInfo) -> None:
        self._factory = factory
        self._session = session
        self._by_id = dict(factory.submethods)
        self._ids = [i for i, _ in factory.submethods]
        self._sent_count = 0
        self._buffer = MessageBuffer(limit=12 + factory.max_data)
        self._parse = partial(parse_maf_message, max_data=factory.max_data)
        self._sub: ConversationDriver | None = None
        self._current: int | None = None
        self._outcomes: list[SubMethodOutcome] = []
        self._sub_failure: str | None = None
        self._sent = []
        self._done = False

    def _nextBlock(self) -> bytes:
        block = self._ids[self._sent_count: self._sent_count + self._factory.block_size]
        self._sent_count += len(block)
        more = self._sent_count < len(self._ids)
        methods = tuple(block) + ((SubMethod.MORE_METHODS_AVAILABLE,) if more else ())
        return SubMethodsSupported(methods).serialize()

    def begin(self) -> AuthStep:
        return AuthStep(self._nextBlock())

    def abort(self) -> None:
        if self._sub is not None:
            self._sub.abort()
        self._done = True

    def receive(self, data: bytes) -> AuthStep | Deferred[AuthStep]:
        self._buffer.feed(data)
        self._sent = []
        return self._run(self._sent)

    def _finished(self) -> bool:
        return self._done

    def _resume(self, sent: list[bytes]) -> AuthStep | Deferred[AuthStep]:
        if self._done:
            return AuthStep(b"".join(sent))
        try:
            self._checkSubFailure()
        except ProtocolError as error:
            return self._failed(str(error), sent)
        return self._run(sent)

    def _handle(self, message: MAFMessage, sent: list[bytes]) -> AuthResult | Deferred[Any] | None:
        if isinstance(message, RequestMore):
            if message.flags == RequestMoreFlags.ABSOLUTE:
                self._sent_count = 0
            if self._sent_count >= len(self._ids):
                raise ProtocolError("the proxy asked for more sub-methods, but all were sent")
            sent.append(self._nextBlock())
            return None
        if not isinstance(message, MethodMessage):
            raise ProtocolError(f"unexpected {type(message).__name__} from the proxy")
        if message.instruction == Instruction.SUCCESS:
            return self._success(message.data)
        if message.instruction == Instruction.FAILURE:
            self._done = True
            reason = message.data.decode("utf-8", "replace")
            return AuthResult.failure(f"the proxy's MAF failed: {reason}")
        if message.instruction == Instruction.DO:
            if self._sub is not None:
                raise ProtocolError("DO while a sub-method is running")
            factory = self._by_id.get(message.method)
            if factory is None:
                raise ProtocolError(f"the proxy asked for sub-method {_name(message.method)}, which was not offered")
            self._current = message.method
            sub = self._sub = ConversationDriver(
                factory.buildAuthenticator(self._session), send=self._subSend, ended=self._subEnded,
                method=_name(message.method), log=_log, backlog_limit=None)
            sub.start(message.data)  # the server's first bytes, fed once the first step is out
            return self._afterSubStep(sub)
        if message.instruction == Instruction.PROCESS:
            if self._sub is None or message.method != self._current:
                raise ProtocolError(f"PROCESS for sub-method {message.method:#010x}, which is not running")
            sub = self._sub
            sub.feed(message.data)
            return self._afterSubStep(sub)
        raise ProtocolError(f"unexpected {message.instruction.name} from the proxy")

    def _afterSubStep(self, sub: ConversationDriver) -> Deferred[None] | None:
        if sub.waiting:
            return sub.whenSettled()
        self._checkSubFailure()
        return None

    def _checkSubFailure(self) -> None:
        failure, self._sub_failure = self._sub_failure, None
        if failure is not None:
            raise ProtocolError(failure)

    def _subSend(self, data: bytes) -> None:
        assert self._current is not None
        self._sent.append(MethodMessage(Instruction.PROCESS, self._current, data).serialize())

    def _subEnded(self, end: ConversationEnd) -> None:
        assert self._current is not None
        result = end.result
        self._outcomes.append(SubMethodOutcome(
            self._current, result.succeeded, result.identity, result.protection, result.reason))
        self._sub = None
        if not result.succeeded and not self._factory.continue_on_failure:
            # Raised by _checkSubFailure, in the message loop (this may run in a Deferred's callback).
            self._sub_failure = f"sub-method {_name(self._current)} failed here: {result.reason}"
            return
        self._sent.append(WhatNext().serialize())

    def _success(self, data: bytes) -> AuthResult:
        self._done = True
        text = data.decode("ascii", "replace")
        grade = int(text[6:]) if text.startswith("grade=") and text[6:].isdigit() else 0
        return _combined(self._outcomes, grade)

    def _failed(self, reason: str, sent: list[bytes]) -> AuthStep:
        self._done = True
        if self._sub is not None:
            self._sub.abort()
        return AuthStep(b"".join(sent), AuthResult.failure(reason))


def chains_from_table(table: Sequence[Mapping[str, Any]]) -> tuple[Chain, ...]:
    """``[{methods = ["userpass", "gssapi"], grade = 2}, ...]`` -> chains (names or ids)."""
    chains = []
    for index, entry in enumerate(table, 1):
        unknown = set(entry) - {"methods", "grade"}
        if unknown:
            raise ConfigError(f"MAF chain {index}: unknown key(s) {', '.join(sorted(unknown))}")
        methods = entry.get("methods")
        if not methods or not isinstance(methods, list):
            raise ConfigError(f"MAF chain {index}: methods must be a non-empty list")
        ids = []
        for name in methods:
            if isinstance(name, int):
                ids.append(name)
            elif name in SUBMETHOD_IDS:
                ids.append(SUBMETHOD_IDS[name])
            else:
                raise ConfigError(f"MAF chain {index}: unknown sub-method {name!r} "
                                  f"(known: {', '.join(SUBMETHOD_IDS)})")
        grade = entry.get("grade", 0)
        if isinstance(grade, bool) or not isinstance(grade, int) or grade < 0:
            raise ConfigError(f"MAF chain {index}: grade must be a whole number >= 0")
        chains.append(Chain(tuple(ids), grade))
    return tuple(chains)


def parse_chain_spec(spec: str) -> tuple[tuple[str, ...], int]:
    """
    A chain as the command line and the TOML ``maf_chains`` give it:
    ``"userpass+gssapi=2"`` -> (("userpass", "gssapi"), 2); the grade
    defaults to 0.  Raises `ConfigError` naming the chain.
    """
    methods_text, _, grade_text = spec.partition("=")
    methods = tuple(m.strip() for m in methods_text.split("+"))
    for method in methods:
        if method not in SUBMETHOD_IDS:
            raise ConfigError(f"MAF chain {spec!r}: unknown sub-method {method!r} "
                              f"(known: {', '.join(SUBMETHOD_IDS)})")
    try:
        grade = int(grade_text) if grade_text else 0
    except ValueError:
        raise ConfigError(f"MAF chain {spec!r}: the grade after = must be a whole number") from None
    if grade < 0 or len(set(methods)) != len(methods):
        raise ConfigError(f"MAF chain {spec!r}: a negative grade or a sub-method twice")
    return methods, grade
