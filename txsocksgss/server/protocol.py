"""
The SOCKS 5 server protocol: accept -> greeting -> method -> subnegotiation
-> request -> reply -> relay.

Theory of operation.  `SOCKS5ServerProtocol` is a thin driver around the
sans-IO codecs (`txsocksgss.wire.socks5`) and the authenticators
(`txsocksgss.interfaces.IServerAuthenticator`).  Its state is one
`SessionState`; `dataReceived` feeds a `MessageBuffer` and `_advance` parses
whatever the current state expects.  Each command (CONNECT here, BIND in
`txsocksgss.server.bind`, UDP ASSOCIATE in `txsocksgss.server.udp`) resolves
the destination asynchronously, asks the `IAccessPolicy`, and answers with
the reply code that matches what really happened (PROTOCOL.md).  After a
success reply the connection becomes a `Relay`.

Every way out goes through `_close`, which sends the failure reply if one is
owed, cancels pending work, and writes the session's single log line.  A
negotiation timer runs from accept to the (first) reply.

Defences (see `txsocksgss.server.limits` and `txsocksgss.server.guard`): at
accept, `SessionLimits.admit` may refuse the connection (too many sessions
overall, from this address, or negotiating; or the address is cooling down
after authentication failures); a refused connection is aborted at once
with a (throttled) log line and never becomes a session.  Each failed
authentication is reported to the limits.  The destination guard is asked
before the access policy about every resolved destination address.  A
session closed during negotiation that the client does not let go of (it
never reads, so the close cannot complete) is aborted after another
negotiation timeout; a closed tunnel, after another idle timeout.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet import error as ierror
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IHostnameResolver
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.auth.conversation import AuthResult, AuthStep, Identity, SessionInfo
from txsocksgss.errors import ProtocolError, UnsupportedAddressType, UnsupportedCommand
from txsocksgss.interfaces import (
    IAccessPolicy,
    IIdentChecker,
    IServerAuthenticator,
    IServerAuthenticatorFactory,
    IStreamProtection,
)
from txsocksgss.protection import ProtectedTransport
from txsocksgss.server.direct import DirectConnector
from txsocksgss.server.guard import DestinationGuard
from txsocksgss.server.limits import Refusal, RefusalLog, SessionLimits, SessionTicket
from txsocksgss.server.outbound import DestinationUnresolved, ip_literal, is_ip_literal, reply_code_for, resolve
from txsocksgss.server.relay import Relay, UpstreamProtocol
from txsocksgss.server.rules import AccessRequest, Decision
from txsocksgss.server.session import SessionRecord
from txsocksgss.server.splice import SpliceRelay, plain_connection, splice_available
from txsocksgss.auth.ident import IdentOutcome
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

__all__ = ["Handover", "ServerContext", "SessionState", "SOCKS5ServerProtocol", "SOCKSServerFactory"]

_log = Logger()

_CANCELLED = (CancelledError, ConnectingCancelledError)
_COMMAND_NAMES = {Command.CONNECT: "connect", Command.BIND: "bind", Command.UDP_ASSOCIATE: "udp"}
_UNSPECIFIED = Address(AddressType.IPV4, "0.0.0.0", 0)
# The longest SOCKS 5 request is 4 + 1 + 255 + 2 bytes; a greeting 2 + 255.
_NEGOTIATION_BUFFER_LIMIT = 1024
# The reactor's connect timeout (Twisted's endpoints' default); see _connectTo.
_CONNECT_TIMEOUT = 30.0
# Bytes a client may send after its request, before the reply, that we keep.
_EARLY_DATA_LIMIT = 256 * 1024


class SessionState(enum.Enum):
    """Where a SOCKS 5 session is; `SOCKS5ServerProtocol` moves between them in order."""

    GREETING = "greeting"
    AUTHENTICATING = "authenticating"
    REQUEST = "request"
    COMMAND = "command"
    RELAYING = "relaying"
    CLOSED = "closed"


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


@dataclass
class Handover:
    """
    A session started before the protocol got its connection
    (`txsocksgss.server.lean`): its admission ``ticket`` (still
    negotiating), its ``record`` (the time of accept, the client), and the
    reactor time its negotiation must end by.
    """

    ticket: SessionTicket
    record: SessionRecord
    deadline: float


def _method_name(factory: IServerAuthenticatorFactory | None) -> str:
    return factory.name if factory is not None else "-"


def _address_of(host: str, port: int) -> Address:
    return Address.of(host, port)


@implementer(IHalfCloseableProtocol)
class SOCKS5ServerProtocol(Protocol):
    """
    One client connection to the SOCKS 5 server.  See the module docstring.
    """

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.version = 5
        self.state = SessionState.GREETING
        self.identity: Identity | None = None
        self._buffer = MessageBuffer(limit=_NEGOTIATION_BUFFER_LIMIT)
        self._method: IServerAuthenticatorFactory | None = None
        self._auth: IServerAuthenticator | None = None
        self._auth_pending = False
        self._auth_backlog = b""
        self._negotiation_timer: IDelayedCall | None = None
        self._pending: Deferred[Any] | None = None
        self._outgoing: _OutgoingConnection | DirectConnector | None = None
        self._command_handler: Any = None
        self._relay: Relay | SpliceRelay | None = None
        self.record: SessionRecord | None = None
        self.protection: IStreamProtection | None = None
        self._ticket: SessionTicket | None = None
        self._linger: IDelayedCall | None = None
        #: Set before the connection is made to take over a session started
        #: elsewhere (see `Handover`).
        self.handover: Handover | None = None
        self._connection_lost = False
        # What a command is waiting for, for the negotiation timeout's log line.
        self._phase = "serving the request"
        self._awaiting_proxy_header = False

    # -- Twisted protocol ---------------------------------------------------

    def connectionMade(self) -> None:
        if getattr(self.transport, "_proxyInfo", False) is None:
            # Behind a PROXY-protocol listener (haproxy:) whose header has not
            # arrived: the peer is still the balancer.  Admission, the record
            # and the logs wait for the client's real address, but the
            # negotiation timer runs already.
            self._awaiting_proxy_header = True
            self._negotiation_timer = self.context.reactor.callLater(
                self.context.negotiation_timeout, self._proxyHeaderTimedOut
            )
            return
        self._startSession()

    def _proxyHeaderTimedOut(self) -> None:
        self._negotiation_timer = None
        self.state = SessionState.CLOSED
        _log.info("no PROXY protocol header within the negotiation timeout; connection closed")
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _startSession(self) -> None:
        now = self.context.reactor.seconds()
        handover, self.handover = self.handover, None
        if handover is not None:
            # Admitted and timed already (txsocksgss.server.lean): the
            # session goes on with its ticket, record and deadline.
            self._ticket = handover.ticket
            self.record = handover.record
            self._negotiation_timer = self.context.reactor.callLater(
                max(0.0, handover.deadline - now), self._negotiationTimedOut
            )
            self.context.sessionStarted(self)
            return
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = getattr(peer, "host", None)
        client = _format_destination(host, getattr(peer, "port", 0)) if host is not None else "unix"
        admission = self.context.limits.admit(host, now)
        if isinstance(admission, Refusal):
            self._refuse(client, admission, now)
            return
        self._ticket = admission
        self.record = SessionRecord(client=client, started=now)
        self.context.sessionStarted(self)
        self._negotiation_timer = self.context.reactor.callLater(
            self.context.negotiation_timeout, self._negotiationTimedOut
        )

    def dataReceived(self, data: bytes) -> None:
        if self._awaiting_proxy_header:
            self._awaiting_proxy_header = False
            self._cancelNegotiationTimer()
            self._startSession()
            if self.state is SessionState.CLOSED:  # refused at admission
                return
        if self.protection is not None:
            try:
                data = self.protection.unprotect(data)
            except ProtocolError as error:
                self._protectionFailed(error)
                return
        if self._relay is not None:
            self._relay.fromClient(data)
            return
        if self.state is SessionState.CLOSED or self.state is SessionState.RELAYING:
            # RELAYING without a relay: a UDP association's control
            # connection, on which RFC 1928 gives the client nothing to say.
            return
        if self.state is SessionState.AUTHENTICATING:
            self._feedAuthenticator(data)
            return
        self._buffer.feed(data)
        if self.state is SessionState.COMMAND:
            if len(self._buffer) > _EARLY_DATA_LIMIT:
                self._close("client sent too much data before the reply", ReplyCode.GENERAL_FAILURE)
            return
        self._advance()

    def readConnectionLost(self) -> None:
        if self._relay is not None:
            self._relay.clientEOF()
        elif self._command_handler is not None and self.state is SessionState.RELAYING:
            # UDP ASSOCIATE: the association ends with its TCP connection.
            self._close("client closed the control connection")
        else:
            self._close("client closed during negotiation")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._connection_lost = True
        if self._awaiting_proxy_header:
            self._cancelNegotiationTimer()
            self.state = SessionState.CLOSED
            return
        if self._ticket is not None:
            self._ticket.release()
        self.context.sessionEnded(self)
        if self._relay is not None:
            self._relay.clientLost(reason)
        else:
            relaying = self.state is SessionState.RELAYING
            self._close("client closed" if relaying else "client closed during negotiation")
        self._cancelLinger()

    def _refuse(self, client: str, refusal: Refusal, now: float) -> None:
        """Admission refused: no session, no reply; the connection is aborted now."""
        self.state = SessionState.CLOSED
        log_refusal(self.context, client, refusal, now)
        self.transport.abortConnection()  # type: ignore[union-attr]

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
                            self._close("SOCKS 4 request, but SOCKS 4 is not enabled (--method socks4)",
                                        SOCKS4ReplyCode.REJECTED)
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
                    request = self._buffer.next(parse_request)
                    if request is None:
                        return
                    self._handleRequest(request)
                else:
                    return
        except UnsupportedCommand as error:
            self._close(f"bad request: {error}", ReplyCode.COMMAND_NOT_SUPPORTED)
        except UnsupportedAddressType as error:
            self._close(f"bad request: {error}", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED)
        except ProtocolError as error:
            reply = ReplyCode.GENERAL_FAILURE if self.state is SessionState.REQUEST else None
            self._close(f"protocol error in {self.state.value}: {error}", reply)

    # -- SOCKS 4 and 4a -------------------------------------------------------

    def _startSOCKS4(self) -> None:
        """A first byte of 04: a SOCKS 4 request, with no method negotiation."""
        assert self.record is not None
        self.version = 4
        self.record.version = 4
        self.record.method = "socks4"
        self.state = SessionState.REQUEST

    def _handleSOCKS4Request(self, request: SOCKS4Request) -> None:
        assert self.record is not None
        self.state = SessionState.COMMAND
        self._buffer.limit = _EARLY_DATA_LIMIT
        host = request.hostname if request.hostname is not None else request.address
        destination = Address.of(host, request.port)
        self.record.command = "connect" if request.command == SOCKS4Command.CONNECT else "bind"
        self.record.destination = _format_destination(destination.host, destination.port)
        userid = request.userid.decode("utf-8", "replace")
        checker = self.context.ident
        peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
        host_address: Any = self.transport.getHost()  # type: ignore[union-attr]
        if checker is None:
            d: Deferred[Any] = succeed(IdentOutcome(user=userid or None))
        else:
            d = checker.check((peer.host, peer.port), (host_address.host, host_address.port), userid)
        d.addCallback(self._identChecked, request.command, destination)
        d.addErrback(self._commandFailed)
        self._pending = d

    def _identChecked(self, outcome: IdentOutcome, command: SOCKS4Command, destination: Address) -> None:
        self._pending = None
        if self.state is not SessionState.COMMAND:
            return
        assert self.record is not None
        if outcome.refusal is not None:
            self._close(f"ident: {outcome.reason}", outcome.refusal)
            return
        self.identity = Identity(method=-1, user=outcome.user, attributes={"ident": outcome.ident_answer})
        self.record.user = outcome.user
        if command == SOCKS4Command.CONNECT:
            self._connect(destination)
        else:
            from txsocksgss.server.bind import BindCommand

            self._command_handler = BindCommand(self, destination)
            self._command_handler.start()

    def _selectMethod(self, offered: tuple[int, ...]) -> None:
        """RFC 1928 s3: the first method in the server's preference that the client offers."""
        chosen = next((f for f in self.context.authenticators if f.method in offered), None)
        if chosen is None:
            self.transport.write(MethodSelection(AuthMethod.NO_ACCEPTABLE).serialize())  # type: ignore[union-attr]
            offered_text = ",".join(f"{m:#04x}" for m in offered)
            self._close(f"no acceptable method (client offered {offered_text})")
            return
        self._method = chosen
        assert self.record is not None
        self.record.method = chosen.name
        _writeNow(self.transport, MethodSelection(chosen.method).serialize())
        host = self.transport.getHost()  # type: ignore[union-attr]
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        session = SessionInfo(
            client=(getattr(peer, "host", ""), getattr(peer, "port", 0)),
            server=(getattr(host, "host", ""), getattr(host, "port", 0)),
        )
        self._auth = chosen.buildAuthenticator(session)
        self.state = SessionState.AUTHENTICATING
        if len(self._buffer):
            self._auth_backlog = self._buffer.take_all()
        self._takeStep(self._auth.begin())

    def resumeAfterMethod(self, method: IServerAuthenticatorFactory, result: AuthResult, data: bytes) -> None:
        """
        Go on from a method negotiation that ran on this connection before
        the protocol got it (`txsocksgss.server.lean` answered the greeting
        and ran ``method`` to ``result``); ``data`` is what the client sent
        after it (its request, unparsed).
        """
        if self.state is not SessionState.GREETING or self.record is None:
            return  # refused at admission
        self._method = method
        self.record.method = method.name
        self._authFinished(result, data)

    def _feedAuthenticator(self, data: bytes) -> None:
        if self._auth_pending:
            self._auth_backlog += data
            if len(self._auth_backlog) > _EARLY_DATA_LIMIT:
                self._close("client sent too much data during authentication")
            return
        assert self._auth is not None
        try:
            step = self._auth.receive(data)
        except Exception:
            _log.failure("authenticator {method} raised", method=_method_name(self._method))
            self._close("authentication error")
            return
        self._takeStep(step)

    def _takeStep(self, step: AuthStep | Deferred[AuthStep]) -> None:
        if isinstance(step, Deferred):
            self._auth_pending = True
            self._pending = step
            step.addCallback(self._authStep)
            step.addErrback(self._authCrashed)
        else:
            self._authStep(step)

    def _authCrashed(self, failure: Failure) -> None:
        if failure.check(CancelledError) or self.state is SessionState.CLOSED:
            return
        _log.failure("authenticator {method} raised", failure, method=_method_name(self._method))
        self._close("authentication error")

    def _authStep(self, step: AuthStep) -> None:
        if self.state is not SessionState.AUTHENTICATING:
            return
        self._auth_pending = False
        self._pending = None
        if step.send:
            self.transport.write(step.send)  # type: ignore[union-attr]
        if step.result is None:
            backlog, self._auth_backlog = self._auth_backlog, b""
            if backlog:
                self._feedAuthenticator(backlog)
            return
        self._authFinished(step.result, step.unused + self._auth_backlog)

    def _authFinished(self, result: AuthResult, unused: bytes) -> None:
        self._auth_backlog = b""
        self._auth = None
        if not result.succeeded:
            self._authenticationFailed()
            self._close(f"authentication failed: {result.reason}")
            return
        assert self.record is not None and result.identity is not None
        self.identity = result.identity
        self.record.user = result.identity.user
        self.state = SessionState.REQUEST
        level = result.identity.attributes.get("protection")
        if level:
            self.record.protection = str(level)
        if result.protection is not None:
            self.protection = result.protection
            self.transport = ProtectedTransport(self.transport, result.protection, self._protectionFailed)
            self.record.protection = result.protection.name
            if unused:
                try:
                    unused = result.protection.unprotect(unused)
                except ProtocolError as error:
                    self._protectionFailed(error)
                    return
        if unused:
            self._buffer.feed(unused)
        self._advance()

    def _authenticationFailed(self) -> None:
        """Count the failure against the client's address; log when it starts a cool-down."""
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        limits = self.context.limits
        if limits.authenticationFailed(getattr(peer, "host", None), self.context.reactor.seconds()):
            _log.info(
                "client {client}: {count} authentication failures within {window:g}s; "
                "refusing its connections for {window:g}s (--auth-fail-limit)",
                client=getattr(peer, "host", "-"),
                count=limits.settings.auth_fail_limit,
                window=limits.settings.auth_fail_window,
            )

    def _protectionFailed(self, error: ProtocolError) -> None:
        """
        A token failed to verify (nothing of it is delivered), or data could
        not be protected (the context expired; nothing of it is sent): the
        connection ends now.
        """
        if self._relay is not None:
            self._relay.close(f"protection failure: {error}")
            self.transport.abortConnection()  # type: ignore[union-attr]
        else:
            self._close(f"protection failure: {error}")
            self.transport.abortConnection()  # type: ignore[union-attr]

    # -- requests -------------------------------------------------------------

    def _handleRequest(self, request: Request) -> None:
        assert self.record is not None
        self.state = SessionState.COMMAND
        self._buffer.limit = _EARLY_DATA_LIMIT
        destination = request.destination
        self.record.command = _COMMAND_NAMES[request.command]
        self.record.destination = _format_destination(destination.host, destination.port)
        if request.command is Command.CONNECT:
            self._connect(destination)
        elif request.command is Command.BIND:
            from txsocksgss.server.bind import BindCommand

            self._command_handler = BindCommand(self, destination)
            self._command_handler.start()
        else:
            from txsocksgss.server.udp import UDPAssociateCommand

            self._command_handler = UDPAssociateCommand(self, destination)
            self._command_handler.start()

    def listeningInterface(self) -> str | None:
        """
        The IP address BIND and UDP ASSOCIATE listen on: ``external``, else
        the address the client reached; None on a non-IP listener (UNIX
        socket) without ``external``.
        """
        if self.context.external:
            return self.context.external
        return getattr(self.transport.getHost(), "host", None)  # type: ignore[union-attr]

    def accessRequest(self, command: str, host: str, port: int, address: str | None) -> AccessRequest:
        """The `AccessRequest` for this session's client and identity, for the policy."""
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        identity = self.identity
        return AccessRequest(
            client=getattr(peer, "host", ""),
            command=command,
            destination_host=host,
            destination_port=port,
            destination_address=address,
            user=identity.user if identity is not None else None,
            method=_method_name(self._method) if self.version == 5 else "socks4",
            version=self.version,
            attributes=dict(identity.attributes) if identity is not None else {},
        )

    def decide(self, command: str, host: str, port: int, address: str | None) -> Decision:
        """
        Ask the destination guard (if on), then the policy, about one
        destination; log denials with the guard or the rule that decided.
        """
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

    def _connect(self, destination: Address) -> None:
        # An IP literal (the usual request) is judged and connected at once:
        # no lookup, so no Deferred to wait on.
        literal = ip_literal(destination.host)
        if literal is not None:
            self._connectTo(destination, [literal])
            return
        self._phase = f"resolving {destination.host}"
        d = resolve(self.context.resolver, destination.host, destination.port)
        d.addCallbacks(self._resolved, self._commandFailed, callbackArgs=(destination,))
        self._pending = d

    def _resolved(self, addresses: list[str], destination: Address) -> None:
        self._pending = None
        if self.state is SessionState.COMMAND:
            self._connectTo(destination, addresses)

    def _connectTo(self, destination: Address, addresses: list[str]) -> None:
        """Connect to the first allowed address of ``addresses`` that answers (`_OutgoingConnection`)."""
        try:
            allowed = self.allowedAddresses("connect", destination, addresses)
        except Exception:
            self._commandFailed(Failure())
            return
        # The negotiation timer (started earlier) bounds the attempt; the
        # reactor's own connect timeout is only needed when it is longer.
        timeout = _CONNECT_TIMEOUT if self.context.negotiation_timeout > _CONNECT_TIMEOUT else None
        if self._willSplice():
            self._outgoing = DirectConnector(self.context.reactor, allowed, destination.port, timeout,
                                             self._directConnected, self._commandFailed)
            self._outgoing.start()
            return
        self._outgoing = _OutgoingConnection(self, allowed, destination.port, timeout)
        self._outgoing.tryNext()

    def _willSplice(self) -> bool:
        """
        Whether the tunnel will be spliced (known before the connect): no
        protection, and the client's connection is a plain TCP socket with
        nothing buffered.  Then the upstream connection needs no Twisted
        transport at all (`DirectConnector`).
        """
        return (
            self.context.splice
            and self.protection is None
            and isinstance(self.context.reactor, PosixReactorBase)
            and splice_available(self.context.reactor, self.transport)
        )

    def _directConnected(self, upstream: socket.socket) -> None:
        """The direct connect succeeded: reply and splice (with what the client sent early first)."""
        self._outgoing = None
        if self.state is not SessionState.COMMAND:
            upstream.close()
            return
        try:
            bound_host, bound_port = upstream.getsockname()[:2]
        except OSError:  # reset already
            bound_host, bound_port = _UNSPECIFIED.host, 0
        self._cancelNegotiationTimer()
        self.state = SessionState.RELAYING
        early = self._buffer.take_all()
        reply = self._reply(ReplyCode.SUCCEEDED, _address_of(bound_host, bound_port))
        rest = _sendNow(self.transport, reply)
        relay = SpliceRelay(self.transport, upstream, self.context.reactor,
                            self.context.idle_timeout, self._relayEnded)
        self._relay = relay
        relay.start(toUpstream=early, toClient=rest)

    def upstreamConnected(self, upstream: UpstreamProtocol) -> None:
        """The CONNECT's outgoing connection is up: reply and relay (`_OutgoingConnection` calls this)."""
        self._outgoing = None
        assert upstream.transport is not None
        if self.state is not SessionState.COMMAND:
            upstream.transport.loseConnection()
            return
        bound = upstream.transport.getHost()
        self.startRelay(upstream, ReplyCode.SUCCEEDED, _address_of(bound.host, bound.port))  # type: ignore[attr-defined]

    def _commandFailed(self, failure: Failure) -> None:
        self._pending = None
        self._outgoing = None
        if self.state is not SessionState.COMMAND or failure.check(*_CANCELLED):
            return
        self._close(*failure_outcome(failure, self.record.destination if self.record else "-"))

    # -- used by the command handlers ----------------------------------------

    def sendReply(self, code: ReplyCode | SOCKS4ReplyCode, bound: Address = _UNSPECIFIED) -> None:
        """Write one reply in the session's SOCKS version; the first one ends the negotiation timer."""
        self._cancelNegotiationTimer()
        self.transport.write(self._reply(code, bound))  # type: ignore[union-attr]

    def _reply(self, code: ReplyCode | SOCKS4ReplyCode, bound: Address) -> bytes:
        if self.version == 5:
            return Reply(code, bound).serialize()
        # SOCKS 4 has one failure code (91) besides the two ident ones.
        if isinstance(code, SOCKS4ReplyCode):
            code4 = code
        else:
            code4 = SOCKS4ReplyCode.GRANTED if code == ReplyCode.SUCCEEDED else SOCKS4ReplyCode.REJECTED
        address = bound.host if bound.type == AddressType.IPV4 else "0.0.0.0"
        return SOCKS4Reply(code4, bound.port, address).serialize()

    def startRelay(self, upstream: UpstreamProtocol, code: ReplyCode, bound: Address) -> None:
        """
        Send the success reply (``code``, ``bound``) and join this connection
        and ``upstream`` (connected): with the zero-copy `SpliceRelay` when
        nothing stands in its way (no protection, nothing buffered either
        side, plain TCP), else with the ordinary `Relay`.
        """
        assert upstream.transport is not None and self.transport is not None
        self._cancelNegotiationTimer()
        self.state = SessionState.RELAYING
        early = self._buffer.take_all()
        reply = self._reply(code, bound)
        relay: Relay | SpliceRelay
        splice = (
            self.context.splice
            and self.protection is None
            and not early
            and not upstream.hasEarlyData()
            and splice_available(self.context.reactor, self.transport, upstream.transport)
        )
        # The splice relay takes the socket over: only if the reply is all on it.
        if _writeNow(self.transport, reply) and splice:
            relay = SpliceRelay(self.transport, upstream.transport, self.context.reactor,
                                self.context.idle_timeout, self._relayEnded)
        else:
            relay = Relay(self.transport, upstream.transport, self.context.reactor,
                          self.context.idle_timeout, self._relayEnded)
        self._relay = relay
        relay.start()
        if early:
            relay.fromClient(early)
        upstream.attach(relay)  # type: ignore[arg-type]

    def shutdown(self) -> None:
        """Close this session now, whatever its state (server shutdown)."""
        if self._relay is not None:
            self._relay.close("server shutdown")
        else:
            self._close("server shutdown")
            self.transport.abortConnection()  # type: ignore[union-attr]

    def closeWith(self, outcome: str, reply: ReplyCode | None = None) -> None:
        """End the session from a command handler (with a failure reply if ``reply``)."""
        self._close(outcome, reply)

    def trackPending(self, deferred: Deferred[Any] | None) -> None:
        """Remember work to cancel if the session ends first."""
        self._pending = deferred

    @property
    def relay(self) -> Relay | SpliceRelay | None:
        return self._relay

    # -- endings --------------------------------------------------------------

    def _relayEnded(self, outcome: str) -> None:
        assert self.record is not None and self._relay is not None
        self.record.bytes_from_client = self._relay.bytes_from_client
        self.record.bytes_to_client = self._relay.bytes_from_upstream
        self.state = SessionState.CLOSED
        self.record.finish(self.context.reactor.seconds(), outcome)
        if (not self._connection_lost and not self._relay.closed_at_once and self.context.idle_timeout
                and self._linger is None):
            # The client may still be reading the tunnel's last bytes; one
            # that reads nothing for an idle period is not let hold its place.
            self._linger = self.context.reactor.callLater(self.context.idle_timeout, self._lingerTimedOut)

    def _negotiationTimedOut(self) -> None:
        self._negotiation_timer = None
        if self.state is SessionState.COMMAND:
            phase = self._outgoing.describe() if self._outgoing is not None else self._phase
            self._close(f"negotiation timeout while {phase}", ReplyCode.TTL_EXPIRED)
        else:
            self._close(f"negotiation timeout in {self.state.value}")

    def _cancelNegotiationTimer(self) -> None:
        """Negotiation is over (first reply, or the end): stop the timer, leave the negotiating count."""
        if self._negotiation_timer is not None and self._negotiation_timer.active():
            self._negotiation_timer.cancel()
        self._negotiation_timer = None
        if self._ticket is not None:
            self._ticket.negotiated()

    def _lingerTimedOut(self) -> None:
        self._linger = None
        _log.info("client {client} did not let go of its closed connection; aborting it",
                  client=self.record.client if self.record else "-")
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _cancelLinger(self) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None

    def _close(self, outcome: str, send_reply: ReplyCode | SOCKS4ReplyCode | None = None) -> None:
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        self._cancelNegotiationTimer()
        if self._auth is not None:
            # A conversation cut short may already hold failed attempts (a
            # MAF sub-method the server refused): they count for the cool-down.
            if getattr(self._auth, "failedAttempts", 0):
                self._authenticationFailed()
            self._auth.abort()
            self._auth = None
        pending, self._pending = self._pending, None
        if pending is not None:
            # A called Deferred may still be waiting on a chained one (an
            # outgoing connection): cancel() forwards to it.
            pending.cancel()
        outgoing, self._outgoing = self._outgoing, None
        if outgoing is not None:
            outgoing.cancel()
        if self._command_handler is not None:
            self._command_handler.stop()
        if send_reply is not None:
            self.transport.write(self._reply(send_reply, _UNSPECIFIED))  # type: ignore[union-attr]
        if self.record is not None:
            handler = self._command_handler
            if handler is not None:
                self.record.bytes_from_client = getattr(handler, "bytes_from_client", 0)
                self.record.bytes_to_client = getattr(handler, "bytes_to_client", 0)
            self.record.finish(self.context.reactor.seconds(), outcome)
        self.transport.loseConnection()  # type: ignore[union-attr]
        if not self._connection_lost and self._linger is None:
            # loseConnection waits for the reply to be read; a client that
            # never reads would hold its place forever.
            self._linger = self.context.reactor.callLater(self.context.negotiation_timeout, self._lingerTimedOut)


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
            destination=_format_destination(request.destination_address or request.destination_host,
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


def failure_outcome(failure: Failure, destination: str) -> tuple[str, ReplyCode]:
    """
    The session outcome and the reply code for a request that failed with
    ``failure`` (denied, unresolved, unreachable...); a failure that is not
    a network outcome is a bug, logged with its traceback.
    """
    if failure.check(_Denied):
        return f"denied by {failure.value}", ReplyCode.NOT_ALLOWED
    code = reply_code_for(failure)
    if not failure.check(ierror.ConnectError, DestinationUnresolved, ierror.DNSLookupError):
        _log.failure("unexpected error while serving {destination}", failure, destination=destination)
    return f"{code.name.lower().replace('_', ' ')}: {failure.getErrorMessage()}", code


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


def _sendNow(transport: Any, data: bytes) -> bytes:
    """
    Send ``data`` straight onto the socket of ``transport`` (a plain
    connection with nothing buffered, `_willSplice`); what the socket does
    not take now is returned (all of it if the send failed: the relay,
    sending it again, meets the error and ends the tunnel).
    """
    connection = plain_connection(transport)
    assert connection is not None
    try:
        sent = connection.socket.send(data)
    except OSError:
        sent = 0
    return data[sent:]


def _writeNow(transport: Any, data: bytes) -> bool:
    """
    Write ``data`` on ``transport``, straight onto the socket when the
    transport is a plain connection (`plain_connection`) with nothing in its
    buffer: Twisted's own write would wait for the next turn of the reactor,
    a registration and a wake-up more per message.  What the socket does
    not take goes through the transport, in order.  True if all of it is on
    the socket (a splice relay may then take the socket over).
    """
    connection = plain_connection(transport)
    if connection is None or connection.dataBuffer or connection._tempDataLen or connection.disconnecting:
        transport.write(data)
        return False
    try:
        sent = connection.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        transport.write(data)  # the transport meets the error itself and reports the loss
        return False
    if sent < len(data):
        transport.write(data[sent:])
        return False
    return True


class _OutgoingConnection(ClientFactory):
    """
    The outgoing connection of a CONNECT: tries ``addresses`` in order with
    the reactor's connectTCP (the last failure wins) and tells ``session``
    the outcome, `SOCKS5ServerProtocol.upstreamConnected` or its failure.
    `cancel` stops the attempt under way; nothing is reported after it.
    """

    noisy = False

    def __init__(self, session: SOCKS5ServerProtocol, addresses: list[str], port: int,
                 timeout: float | None) -> None:
        self._session = session
        self._remaining = addresses
        self._port = port
        self._timeout = timeout
        self._address = ""
        self._connector: Any = None
        self._finished = False

    def tryNext(self) -> None:
        self._address = self._remaining.pop(0)
        self._connector = self._session.context.reactor.connectTCP(
            self._address, self._port, self, timeout=self._timeout)

    def describe(self) -> str:
        """What the session waits for, for the negotiation timeout's log line."""
        return f"connecting to {_format_destination(self._address, self._port)}"

    def buildProtocol(self, addr: Any) -> UpstreamProtocol:
        upstream = UpstreamProtocol()
        upstream.onConnected = self._connected
        return upstream

    def _connected(self, upstream: UpstreamProtocol) -> None:
        self._finished = True
        self._session.upstreamConnected(upstream)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if self._finished:
            return
        if self._remaining:
            self.tryNext()
            return
        self._finished = True
        self._session._commandFailed(reason)

    def cancel(self) -> None:
        if not self._finished:
            self._finished = True
            self._connector.stopConnecting()


class _Denied(Exception):
    """The policy allowed none of the destination's addresses; the text is the rule."""


def _format_destination(host: str, port: int) -> str:
    """``host:port``, or ``[host]:port`` for an IPv6 address (which alone holds a colon)."""
    if ":" in host and is_ip_literal(host):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class SOCKSServerFactory(Factory):
    """
    Builds a `SOCKS5ServerProtocol` per connection, all sharing one
    `ServerContext`.  ``protocolFor`` may be replaced (SOCKS 4 support picks
    the protocol from the first byte).
    """

    def __init__(self, context: ServerContext,
                 protocolFor: Callable[[ServerContext], Protocol] | None = None) -> None:
        self.context = context
        self._protocolFor = protocolFor or SOCKS5ServerProtocol

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = self._protocolFor(self.context)
        protocol.factory = self
        return protocol
