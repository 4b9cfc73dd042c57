"""
The SOCKS session machine: one server session, SOCKS 5 and the SOCKS 4/4a
dialect, from accept to the end of the tunnel, without any I/O.

Theory of operation.  A `SessionMachine` is told what happened (`begin`
at accept, `dataReceived`, `eofReceived`, `connectionLost`, and the
outcomes of the work it started) and acts only through its driver, an
`txsocksgss.interfaces.ISessionIO`: send bytes, install a protection,
connect, start a tunnel, open a BIND or UDP command, close.  It owns what
makes up a session: the receive buffer, the `SessionRecord`, the admission
ticket, the negotiation deadline (from accept to the first reply, on the
injected clock ``context.reactor``) and the outcome.  Its states are
`SessionState`; `_moveTo` is the one place that changes them, and refuses
a move the table `_MOVES` does not allow.

    GREETING --(method chosen)--> AUTHENTICATING --(success)--> REQUEST
    GREETING --(first byte 04, SOCKS 4 on)----------------------> REQUEST
    REQUEST  --(a request)--> COMMAND --(reply, tunnel)--> RELAYING
    any state --(the end)--> CLOSED

Two drivers run it: `txsocksgss.server.protocol.SOCKSServerProtocol` over
any Twisted transport, and `txsocksgss.server.lean.BareSocketDriver` on the
bare sockets of a plain TCP listener.  When the bare driver is asked for
what it cannot do (a protection, BIND or UDP ASSOCIATE, a send the socket
does not take at once) it gives the connection to a Twisted driver and
points the machine at it (`adopt`): the session goes on, nothing parsed,
admitted or timed twice.

Replies follow docs/protocol.rst: a request that fails gets the reply code
of what really happened (denied 02, unreachable 03/04, refused 05, timeout
06, unsupported command 07 or address type 08); every way out goes through
`close`, which sends the failure reply owed, cancels pending work and
writes the session's single log line.
"""

from __future__ import annotations

import enum
from typing import Any, Callable

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectingCancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsocksgss.auth.conversation import ANONYMOUS, AuthResult, Identity, SessionInfo
from txsocksgss.auth.driver import ConversationDriver, ConversationEnd, EndKind
from txsocksgss.auth.ident import IdentOutcome
from txsocksgss.auth.none import NoAuthServerFactory
from txsocksgss.errors import ProtocolError, UnsupportedAddressType, UnsupportedCommand
from txsocksgss.interfaces import IServerAuthenticatorFactory, IStreamProtection
from txsocksgss.server.context import ServerContext
from txsocksgss.server.limits import Refusal, SessionTicket
from txsocksgss.server.outcomes import Outcome, OutcomeKind
from txsocksgss.server.outbound import DestinationUnresolved, ip_literal, is_ip_literal, reply_code_for, resolve
from txsocksgss.server.rules import AccessRequest, Decision
from txsocksgss.server.session import SessionRecord
from txsocksgss.wire.reader import MessageBuffer
from txsocksgss.wire.socks4 import (
    SOCKS4_VERSION,
    SOCKS4Command,
    SOCKS4Reply,
    SOCKS4ReplyCode,
    SOCKS4Request,
    parse_socks4_request,
)
from txsocksgss.wire.socks5 import (
    Address,
    AddressType,
    AuthMethod,
    Command,
    MethodSelection,
    Reply,
    ReplyCode,
    Request,
    parse_greeting,
    parse_request,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "EARLY_DATA_LIMIT",
    "NEGOTIATION_BUFFER_LIMIT",
    "SessionMachine",
    "SessionState",
    "allowed_addresses",
    "decide_access",
    "failure_outcome",
    "format_endpoint",
    "log_refusal",
]

_log = Logger(namespace="txsocksgss.server.protocol")

#: The longest SOCKS 5 request is 4 + 1 + 255 + 2 bytes; a greeting 2 + 255.
NEGOTIATION_BUFFER_LIMIT = 1024
#: The connector's own timeout per address (Twisted's endpoints' default);
#: only used when the negotiation timeout is longer (see `_connectTo`).
CONNECT_TIMEOUT = 30.0
#: Bytes a client may send after its request, before the reply, that are kept.
EARLY_DATA_LIMIT = 256 * 1024

_CANCELLED = (CancelledError, ConnectingCancelledError)
_COMMAND_NAMES = {Command.CONNECT: "connect", Command.BIND: "bind", Command.UDP_ASSOCIATE: "udp"}
_UNSPECIFIED = Address(AddressType.IPV4, "0.0.0.0", 0)
# How method none (the stock NoAuthServerFactory) always ends: at once,
# with nothing to send, so no conversation object is built for it.
_NO_AUTHENTICATION = AuthResult.success(ANONYMOUS)
# The buffer of every session whose tunnel has started: empty, never fed.
_NO_BUFFER = MessageBuffer(limit=0)


class SessionState(enum.Enum):
    """Where a session is; `SessionMachine._moveTo` moves between them (see `_MOVES`)."""

    GREETING = "greeting"
    AUTHENTICATING = "authenticating"
    REQUEST = "request"
    COMMAND = "command"
    RELAYING = "relaying"
    CLOSED = "closed"

    # Members are singletons, equal only to themselves: the identity hash
    # is the C one, where Enum's hashes the name in Python (the machine
    # looks a state up in `_MOVES` twice per move, five moves a session).
    __hash__ = object.__hash__


_MOVES: dict[SessionState, frozenset[SessionState]] = {
    SessionState.GREETING: frozenset({SessionState.AUTHENTICATING, SessionState.REQUEST, SessionState.CLOSED}),
    SessionState.AUTHENTICATING: frozenset({SessionState.REQUEST, SessionState.CLOSED}),
    SessionState.REQUEST: frozenset({SessionState.COMMAND, SessionState.CLOSED}),
    SessionState.COMMAND: frozenset({SessionState.RELAYING, SessionState.CLOSED}),
    SessionState.RELAYING: frozenset({SessionState.CLOSED}),
    SessionState.CLOSED: frozenset(),
}


class _Denied(Exception):
    """The policy allowed none of the destination's addresses; the text is the rule."""


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, or ``[host]:port`` for an IPv6 address (which alone holds a colon)."""
    if ":" in host and is_ip_literal(host):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def decide_access(context: ServerContext, request: AccessRequest, client: str) -> Decision:
    """
    Ask the destination guard (if on), then the policy, about ``request``;
    log a denial with the guard or the rule that decided (``client``: the
    session's client, as its log line shows it).
    """
    guarded = None
    if context.guard is not None and request.destination_address is not None:
        guarded = context.guard.check(request.command, request.destination_address)
    if guarded is not None:
        decision = Decision(False, f"destination guard ({guarded.value})")
    else:
        decision = context.policy.decide(request)
    if not decision.allowed:
        _log.info(
            "denied {command} to {destination} for {client} (user {user}) by {rule}",
            command=request.command,
            destination=format_endpoint(request.destination_address or request.destination_host,
                                        request.destination_port),
            client=client,
            user=request.user or "-",
            rule=decision.rule,
        )
    return decision


def allowed_addresses(decide: Callable[[str], Decision], addresses: list[str]) -> list[str]:
    """
    The ones of ``addresses`` that ``decide`` allows, in order; raises
    `_Denied` (carrying the rule that decided about the first) when none is.
    """
    decisions = [(address, decide(address)) for address in addresses]
    allowed = [address for address, decision in decisions if decision.allowed]
    if not allowed:
        raise _Denied(decisions[0][1].rule)
    return allowed


def failure_outcome(failure: Failure, destination: str) -> tuple[Outcome, ReplyCode]:
    """
    The session outcome and the reply code for a request that failed with
    ``failure`` (denied, unresolved, unreachable...); a failure that is not
    a network outcome is a bug, logged with its traceback.
    """
    if failure.check(_Denied):
        return Outcome(OutcomeKind.DENIED, str(failure.value)), ReplyCode.NOT_ALLOWED
    code = reply_code_for(failure)
    if not failure.check(ierror.ConnectError, DestinationUnresolved, ierror.DNSLookupError):
        _log.failure("unexpected error while serving {destination}", failure, destination=destination)
    return Outcome.destination_failed(code, failure.getErrorMessage()), code


def log_refusal(context: ServerContext, client: str, refusal: Refusal, now: float) -> None:
    """The (throttled) log line of a connection refused at admission."""
    left_out = context.refusal_log.shouldLog(refusal.reason, now)
    if left_out is not None:
        _log.info(
            "refused connection from {client} by --{limit}: {detail}{more}",
            client=client,
            limit=refusal.reason.value,
            detail=refusal.detail,
            more=f" ({left_out} more refused for this reason since the last line)" if left_out else "",
        )


class SessionMachine:
    """
    One server session; see the module docstring.

    ``io`` is the driver (an `ISessionIO`), replaced by `adopt` when another
    driver takes the connection over; ``observers`` are added to the
    session's record (metrics).  The driver calls `begin` once, at accept,
    with the client's and the server's (host, port) as the connection shows
    them (None for a UNIX socket).
    """

    def __init__(self, context: ServerContext, io: Any, observers: tuple[Any, ...] | list[Any] = ()) -> None:
        self.context = context
        self.io = io
        self.observers = observers
        self.version = 5
        self.state = SessionState.GREETING
        self.identity: Identity | None = None
        self.record: SessionRecord | None = None
        self.protection: IStreamProtection | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        #: The tunnel (a `txsocksgss.interfaces.ITunnel`) once relaying.
        self.relay: Any = None
        self._buffer = MessageBuffer(limit=NEGOTIATION_BUFFER_LIMIT)
        self._ticket: SessionTicket | None = None
        self._negotiation_timer: Any = None
        self._method: IServerAuthenticatorFactory | None = None
        self._conversation: ConversationDriver | None = None
        self._pending: Deferred[Any] | None = None
        self._outgoing: Any = None
        self._command_handler: Any = None
        self._lost = False
        # What a command is waiting for, for the negotiation timeout's log line.
        self._phase = "serving the request"

    # -- the one place that moves between states ----------------------------

    def _moveTo(self, state: SessionState) -> None:
        if state not in _MOVES[self.state]:
            raise RuntimeError(f"session machine: no move from {self.state.value} to {state.value}")
        self.state = state

    # -- events from the driver ---------------------------------------------

    def begin(self, client: tuple[str, int] | None, server: tuple[str, int] | None) -> bool:
        """
        The connection was accepted: admit it (or refuse it: the connection
        is aborted, no session is recorded) and start the negotiation timer.
        Returns whether the session was admitted.
        """
        self.client, self.server = client, server
        context = self.context
        now = context.reactor.seconds()
        host = client[0] if client is not None else None
        label = format_endpoint(client[0], client[1]) if client is not None else "unix"
        admission = context.limits.admit(host, now)
        if isinstance(admission, Refusal):
            self._moveTo(SessionState.CLOSED)
            log_refusal(context, label, admission, now)
            self.io.close(abort=True)
            return False
        self._ticket = admission
        self.record = SessionRecord(client=label, started=now)
        if self.observers:
            self.record.observers.extend(self.observers)
        context.sessionStarted(self)
        self._negotiation_timer = context.reactor.callLater(context.negotiation_timeout, self._negotiationTimedOut)
        return True

    def adopt(self, io: Any) -> None:
        """Another driver carries on with this session (see the module docstring)."""
        self.io = io

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the client (unprotected already, when a protection is installed)."""
        state = self.state
        if state is SessionState.CLOSED or state is SessionState.RELAYING:
            # RELAYING: a UDP association's control connection, on which
            # RFC 1928 gives the client nothing to say (a tunnel's bytes go
            # to the tunnel, not here).
            return
        if state is SessionState.AUTHENTICATING:
            self._feedAuthenticator(data)
            return
        self._buffer.feed(data)
        if state is SessionState.COMMAND:
            if len(self._buffer) > EARLY_DATA_LIMIT:
                self.close(Outcome(OutcomeKind.TOO_MUCH_EARLY_DATA), ReplyCode.GENERAL_FAILURE)
            return
        self._advance()

    def eofReceived(self) -> None:
        """The client shut down its sending side (a tunnel is told by its driver)."""
        if self._command_handler is not None and self.state is SessionState.RELAYING:
            # UDP ASSOCIATE: the association ends with its TCP connection.
            self.close(Outcome(OutcomeKind.CONTROL_CLOSED))
        else:
            self.close(Outcome(OutcomeKind.CLIENT_GONE))

    def connectionLost(self) -> None:
        """The client's connection is gone: the admission is released, the session ends."""
        if self._lost:
            return
        self._lost = True
        if self._ticket is not None:
            self._ticket.release()
        self.context.sessionEnded(self)
        if self.relay is not None:
            if self.state is not SessionState.CLOSED:  # else the tunnel has ended already
                self.relay.clientLost(None)
        else:
            relaying = self.state is SessionState.RELAYING
            self.close(Outcome(OutcomeKind.CLIENT_CLOSED if relaying else OutcomeKind.CLIENT_GONE))

    @property
    def lost(self) -> bool:
        """Whether the driver reported the connection gone."""
        return self._lost

    def protectionFailed(self, error: ProtocolError) -> None:
        """
        A token failed to verify (nothing of it is delivered), or data could
        not be protected (the context expired; nothing of it is sent): the
        connection ends now.
        """
        if self.relay is not None:
            self.relay.close(Outcome(OutcomeKind.PROTECTION_FAILURE, str(error)))
            self.io.close(abort=True)
        else:
            self.close(Outcome(OutcomeKind.PROTECTION_FAILURE, str(error)), abort=True)

    def shutdown(self) -> None:
        """Close this session now, whatever its state (server shutdown)."""
        if self.relay is not None:
            self.relay.close(Outcome(OutcomeKind.SHUTDOWN))
        else:
            self.close(Outcome(OutcomeKind.SHUTDOWN), abort=True)

    # -- negotiation ----------------------------------------------------------

    def _advance(self) -> None:
        """Parse what the current state expects, for as long as whole messages are buffered."""
        try:
            while True:
                if self.state is SessionState.GREETING:
                    if not len(self._buffer):
                        return
                    if self._buffer.peek() == SOCKS4_VERSION:
                        if not self.context.socks4:
                            self.version = 4
                            self.close(Outcome(OutcomeKind.SOCKS4_DISABLED), SOCKS4ReplyCode.REJECTED)
                            return
                        self._startSOCKS4()
                        continue
                    greeting = self._buffer.next(parse_greeting)
                    if greeting is None:
                        return
                    self._selectMethod(greeting.methods)
                elif self.state is SessionState.REQUEST and self.version == 4:
                    request4 = self._buffer.next(parse_socks4_request)
                    if request4 is None:
                        return
                    self._handleSOCKS4Request(request4)
                elif self.state is SessionState.REQUEST:
                    if not len(self._buffer):
                        return
                    request = self._buffer.next(parse_request)
                    if request is None:
                        return
                    self._handleRequest(request)
                else:
                    return
        except ProtocolError as error:
            # The error carries the reply it calls for; a reply is owed
            # only to a request (docs/protocol.rst, Reply codes).
            reply = ReplyCode(error.reply_code) if self.state is SessionState.REQUEST else None
            if isinstance(error, (UnsupportedCommand, UnsupportedAddressType)):
                self.close(Outcome(OutcomeKind.BAD_REQUEST, str(error)), reply)
            else:
                self.close(Outcome.protocol_error(self.state.value, error), reply)

    def _startSOCKS4(self) -> None:
        """A first byte of 04: a SOCKS 4 request, with no method negotiation."""
        assert self.record is not None
        self.version = 4
        self.record.version = 4
        self.record.method = "socks4"
        self._moveTo(SessionState.REQUEST)

    def _selectMethod(self, offered: tuple[int, ...]) -> None:
        """RFC 1928 s3: the first method in the server's preference that the client offers."""
        chosen = next((f for f in self.context.authenticators if f.method in offered), None)
        if chosen is None:
            self.io.send(MethodSelection(AuthMethod.NO_ACCEPTABLE).serialize())
            offered_text = ",".join(f"{m:#04x}" for m in offered)
            self.close(Outcome(OutcomeKind.NO_ACCEPTABLE_METHOD, offered_text))
            return
        self._method = chosen
        assert self.record is not None
        self.record.method = chosen.name
        self.io.send(MethodSelection(chosen.method).serialize())
        self._moveTo(SessionState.AUTHENTICATING)
        if type(chosen) is NoAuthServerFactory:
            self._authFinished(_NO_AUTHENTICATION, self._buffer.take_all())
            return
        client = self.client if self.client is not None else ("", 0)
        server = self.server if self.server is not None else ("", 0)
        self._conversation = ConversationDriver(
            chosen.buildAuthenticator(SessionInfo(client=client, server=server)),
            send=self._sendAuthBytes, ended=self._authEnded, method=chosen.name, log=_log,
            backlog_limit=EARLY_DATA_LIMIT)
        self._conversation.start(self._buffer.take_all())

    def _feedAuthenticator(self, data: bytes) -> None:
        assert self._conversation is not None
        self._conversation.feed(data)

    def _sendAuthBytes(self, data: bytes) -> None:
        self.io.send(data)

    def _authEnded(self, end: ConversationEnd) -> None:
        if end.kind is EndKind.CRASHED:
            self.close(Outcome(OutcomeKind.AUTH_ERROR))  # the driver logged the traceback
            return
        if end.kind is EndKind.OVERFLOW:
            self.close(Outcome(OutcomeKind.AUTH_TOO_MUCH_DATA))
            return
        self._authFinished(end.result, end.unused)

    def _authFinished(self, result: AuthResult, unused: bytes) -> None:
        self._conversation = None
        if not result.succeeded:
            self._authenticationFailed()
            self.close(Outcome.auth_failed(result.reason))
            return
        assert self.record is not None and result.identity is not None
        self.identity = result.identity
        self.record.user = result.identity.user
        self._moveTo(SessionState.REQUEST)
        level = result.identity.attributes.get("protection")
        if level:
            self.record.protection = str(level)
        if result.protection is not None:
            self.protection = result.protection
            self.record.protection = result.protection.name
            self.io.installProtection(result.protection)
            if self.state is not SessionState.REQUEST:  # the driver could not take it
                return
            if unused:
                try:
                    unused = result.protection.unprotect(unused)
                except ProtocolError as error:
                    self.protectionFailed(error)
                    return
        if unused:
            self._buffer.feed(unused)
        self._advance()

    def _authenticationFailed(self) -> None:
        """Count the failure against the client's address; log when it starts a cool-down."""
        host = self.client[0] if self.client is not None else None
        limits = self.context.limits
        if limits.authenticationFailed(host, self.context.reactor.seconds()):
            _log.info(
                "client {client}: {count} authentication failures within {window:g}s; "
                "refusing its connections for {window:g}s (--auth-fail-limit)",
                client=host if host is not None else "-",
                count=limits.settings.auth_fail_limit,
                window=limits.settings.auth_fail_window,
            )

    def _methodName(self) -> str:
        return self._method.name if self._method is not None else "-"

    # -- requests -------------------------------------------------------------

    def _handleRequest(self, request: Request) -> None:
        assert self.record is not None
        self._moveTo(SessionState.COMMAND)
        self._buffer.limit = EARLY_DATA_LIMIT
        destination = request.destination
        self.record.command = _COMMAND_NAMES[request.command]
        self.record.destination = format_endpoint(destination.host, destination.port)
        if request.command is Command.CONNECT:
            self._connect(destination)
        elif request.command is Command.BIND:
            self._startCommand(self.io.openBind(self, destination))
        else:
            self._startCommand(self.io.openUDP(self, destination))

    def _handleSOCKS4Request(self, request: SOCKS4Request) -> None:
        assert self.record is not None
        self._moveTo(SessionState.COMMAND)
        self._buffer.limit = EARLY_DATA_LIMIT
        host = request.hostname if request.hostname is not None else request.address
        destination = Address.of(host, request.port)
        self.record.command = "connect" if request.command == SOCKS4Command.CONNECT else "bind"
        self.record.destination = format_endpoint(destination.host, destination.port)
        userid = request.userid.decode("utf-8", "replace")
        checker = self.context.ident
        if checker is None:
            d: Deferred[Any] = succeed(IdentOutcome(user=userid or None))
        else:
            d = checker.check(self.client or ("", 0), self.server or ("", 0), userid)
        # Noted before the callbacks are added: a check answered at once goes
        # on to the lookup of a 4a name, whose Deferred `_connect` notes as
        # the work to cancel; noting the fired check after it would lose it.
        self._pending = d
        d.addCallback(self._identChecked, request.command, destination)
        d.addErrback(self.commandFailed)

    def _identChecked(self, outcome: IdentOutcome, command: SOCKS4Command, destination: Address) -> None:
        self._pending = None
        if self.state is not SessionState.COMMAND:
            return
        assert self.record is not None
        if outcome.refusal is not None:
            self.close(Outcome(OutcomeKind.IDENT_REFUSED, outcome.reason), outcome.refusal)
            return
        self.identity = Identity(method=-1, user=outcome.user, attributes={"ident": outcome.ident_answer})
        self.record.user = outcome.user
        if command == SOCKS4Command.CONNECT:
            self._connect(destination)
        else:
            self._startCommand(self.io.openBind(self, destination))

    def _startCommand(self, command: Any) -> None:
        # The driver may have had to hand the connection over for it, and
        # failed (the session is closed then).
        if self.state is SessionState.COMMAND:
            self._command_handler = command
            command.start()

    def _connect(self, destination: Address) -> None:
        # An IP literal (the usual request) is judged and connected at once:
        # no lookup, so no Deferred to wait on.
        literal = ip_literal(destination.host)
        if literal is not None:
            self._connectTo(destination, [literal])
            return
        self._phase = f"resolving {destination.host}"
        d = resolve(self.context.resolver, destination.host, destination.port)
        d.addCallbacks(self._resolved, self.commandFailed, callbackArgs=(destination,))
        self._pending = d

    def _resolved(self, addresses: list[str], destination: Address) -> None:
        self._pending = None
        if self.state is SessionState.COMMAND:
            self._connectTo(destination, addresses)

    def _connectTo(self, destination: Address, addresses: list[str]) -> None:
        """Connect to the first allowed address of ``addresses`` that answers."""
        try:
            allowed = self.allowedAddresses("connect", destination, addresses)
        except Exception:
            self.commandFailed(Failure())
            return
        # The negotiation timer (started earlier) bounds the attempt; the
        # connector's own timeout is only needed when it is longer.
        timeout = CONNECT_TIMEOUT if self.context.negotiation_timeout > CONNECT_TIMEOUT else None
        self._outgoing = self.io.connect(allowed, destination.port, timeout, self._upstreamConnected,
                                         self.commandFailed)
        if self._outgoing is not None:
            self._outgoing.start()

    def _upstreamConnected(self, upstream: Any, bound: Address) -> bool:
        """The CONNECT's outgoing connection is up: reply and relay; False if the session is gone."""
        self._outgoing = None
        if self.state is not SessionState.COMMAND:
            return False
        self.startRelay(upstream, ReplyCode.SUCCEEDED, bound)
        return True

    # -- the command context (BIND and UDP ASSOCIATE, txsocksgss.server.bind/udp) --

    def commandFailed(self, failure: Failure) -> None:
        """A command's work failed: the reply code and outcome that match (`failure_outcome`)."""
        self._pending = None
        self._outgoing = None
        if self.state is not SessionState.COMMAND or failure.check(*_CANCELLED):
            return
        self.close(*failure_outcome(failure, self.record.destination if self.record else "-"))

    def sendReply(self, code: ReplyCode | SOCKS4ReplyCode, bound: Address = _UNSPECIFIED) -> None:
        """Send one reply in the session's SOCKS version; the first one ends the negotiation timer."""
        self._endNegotiation()
        self.io.send(self._reply(code, bound))

    def startRelay(self, upstream: Any, code: ReplyCode, bound: Address) -> None:
        """
        Reply (``code``, ``bound``) and join the client with ``upstream`` (a
        connected socket or an upstream protocol) in a tunnel the driver
        chooses; what the client sent early goes first.
        """
        self._endNegotiation()
        self._moveTo(SessionState.RELAYING)
        early = self._buffer.take_all()
        # Nothing reads the buffer from now on (the tunnel takes the bytes):
        # a tunnel that idles for hours does not keep it.
        self._buffer = _NO_BUFFER
        reply = self._reply(code, bound)
        # Known to the session before it starts: a tunnel may end at once.
        self.relay, unsent = self.io.openTunnel(upstream, reply, self._tunnelEnded)
        self.relay.start(toUpstream=early, toClient=unsent)

    def associationStarted(self) -> None:
        """UDP ASSOCIATE answered: the control connection now only keeps the association alive."""
        self._moveTo(SessionState.RELAYING)

    def closeWith(self, outcome: Outcome, reply: ReplyCode | None = None) -> None:
        """End the session from a command (with a failure reply if ``reply``)."""
        self.close(outcome, reply)

    def trackPending(self, deferred: Deferred[Any] | None) -> None:
        """Remember work to cancel if the session ends first."""
        self._pending = deferred

    def listeningInterface(self) -> str | None:
        """
        The IP address BIND and UDP ASSOCIATE listen on: ``external``, else
        the address the client reached; None on a non-IP listener (UNIX
        socket) without ``external``.
        """
        if self.context.external:
            return self.context.external
        return self.server[0] if self.server is not None else None

    def accessRequest(self, command: str, host: str, port: int, address: str | None) -> AccessRequest:
        """The `AccessRequest` for this session's client and identity, for the policy."""
        identity = self.identity
        return AccessRequest(
            client=self.client[0] if self.client is not None else "",
            command=command,
            destination_host=host,
            destination_port=port,
            destination_address=address,
            user=identity.user if identity is not None else None,
            method=self._methodName() if self.version == 5 else "socks4",
            version=self.version,
            attributes=dict(identity.attributes) if identity is not None else {},
        )

    def decide(self, command: str, host: str, port: int, address: str | None) -> Decision:
        """Ask the destination guard (if on), then the policy, about one destination (`decide_access`)."""
        return decide_access(self.context, self.accessRequest(command, host, port, address),
                             self.record.client if self.record else "-")

    def allowedAddresses(self, command: str, destination: Address, addresses: list[str]) -> list[str]:
        """
        The addresses of ``destination`` (resolved to ``addresses``) that the
        guard and the policy allow, in order; raises `_Denied` (carrying the
        deciding rule) when they allow none.
        """
        return allowed_addresses(
            lambda address: self.decide(command, destination.host, destination.port, address), addresses)

    def resolveAllowed(self, command: str, destination: Address) -> Deferred[list[str]]:
        """
        Resolve ``destination`` and keep the addresses the policy allows.
        Fails with `DestinationUnresolved` when the name has no address, and
        with `_Denied` (carrying the deciding rule) when the policy allows none.
        """
        d = resolve(self.context.resolver, destination.host, destination.port)
        d.addCallback(lambda addresses: self.allowedAddresses(command, destination, addresses))
        return d

    # -- endings --------------------------------------------------------------

    def _tunnelEnded(self, outcome: Outcome) -> None:
        assert self.record is not None and self.relay is not None
        self.record.bytes_from_client = self.relay.bytes_from_client
        self.record.bytes_to_client = self.relay.bytes_from_upstream
        self._moveTo(SessionState.CLOSED)
        self.record.finish(self.context.reactor.seconds(), outcome)
        self.io.tunnelEnded(self.relay)

    def _negotiationTimedOut(self) -> None:
        self._negotiation_timer = None
        if self.state is SessionState.COMMAND:
            phase = self._outgoing.describe() if self._outgoing is not None else self._phase
            self.close(Outcome(OutcomeKind.COMMAND_TIMEOUT, phase), ReplyCode.TTL_EXPIRED)
        else:
            self.close(Outcome.negotiation_timeout(self.state.value))

    def _endNegotiation(self) -> None:
        """Negotiation is over (first reply, or the end): stop the timer, leave the negotiating count."""
        timer, self._negotiation_timer = self._negotiation_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self._ticket is not None:
            self._ticket.negotiated()

    def close(self, outcome: Outcome, reply: ReplyCode | SOCKS4ReplyCode | None = None, abort: bool = False) -> None:
        """
        End the session before (or without) a tunnel: stop every piece of
        work, send the failure reply if one is owed, log the session line,
        and have the driver close the connection (``abort``: with a reset).
        With a tunnel running, the tunnel is closed instead, and its end
        ends the session.
        """
        if self.state is SessionState.CLOSED:
            return
        if self.relay is not None:
            self.relay.close(outcome)
            return
        self._moveTo(SessionState.CLOSED)
        self._endNegotiation()
        conversation, self._conversation = self._conversation, None
        if conversation is not None:
            # A conversation cut short may already hold failed attempts (a
            # MAF sub-method the server refused): they count for the cool-down.
            if getattr(conversation.authenticator, "failedAttempts", 0):
                self._authenticationFailed()
            conversation.abort()
        pending, self._pending = self._pending, None
        if pending is not None:
            # A called Deferred may still be waiting on a chained one (an
            # outgoing connection): cancel() forwards to it.
            pending.cancel()
        outgoing, self._outgoing = self._outgoing, None
        if outgoing is not None:
            outgoing.cancel()
        handler = self._command_handler
        if handler is not None:
            handler.stop()
        if reply is not None and not self._lost:
            self.io.send(self._reply(reply, _UNSPECIFIED))
        if self.record is not None:
            if handler is not None:
                self.record.bytes_from_client = getattr(handler, "bytes_from_client", 0)
                self.record.bytes_to_client = getattr(handler, "bytes_to_client", 0)
            self.record.finish(self.context.reactor.seconds(), outcome)
        if not self._lost:
            self.io.close(abort=abort)

    def _reply(self, code: ReplyCode | SOCKS4ReplyCode, bound: Address) -> bytes:
        """A reply in the session's SOCKS version (its time noted: the handshake latency)."""
        if self.record is not None:
            self.record.markReplied(self.context.reactor.seconds())
        if self.version == 5:
            return Reply(code, bound).serialize()
        # SOCKS 4 has one failure code (91) besides the two ident ones.
        if isinstance(code, SOCKS4ReplyCode):
            code4 = code
        else:
            code4 = SOCKS4ReplyCode.GRANTED if code == ReplyCode.SUCCEEDED else SOCKS4ReplyCode.REJECTED
        address = bound.host if bound.type == AddressType.IPV4 else "0.0.0.0"
        return SOCKS4Reply(code4, bound.port, address).serialize()
