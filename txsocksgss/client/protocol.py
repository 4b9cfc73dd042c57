"""
The client handshake drivers: SOCKS 5 and SOCKS 4/4a.

Theory of operation.  A handshake protocol is the protocol on the connection
to the proxy.  It speaks SOCKS (greeting, method subnegotiation through an
`IClientAuthenticator`, request, reply) with the sans-IO codecs, and once
the proxy answers success it builds the application's protocol with the
caller's factory and from then on only passes events through: bytes,
half-close, connection loss.  The application writes straight to the real
transport, so the tunnel costs one function call per received chunk.

Results are Deferreds on the handshake protocol: ``firstReply`` (the bound
address; BIND's first reply), and ``established`` (a `SOCKSConnection`; for
BIND, after the second reply).  A failure reply, a malformed message, an
authentication failure, a timeout or a cancellation fails them with a
`txsocksgss.errors.SOCKSError` (or CancelledError / TimeoutError) and closes
the connection.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Sequence

from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IProtocol, IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.auth.conversation import Identity, SessionInfo
from txsocksgss.auth.driver import ConversationDriver, ConversationEnd, EndKind
from txsocksgss.auth.registry import method_name
from txsocksgss.errors import (
    ClientAuthenticationFailed,
    NoAcceptableMethod,
    ProtocolError,
    SOCKSError,
    TruncatedMessage,
    socks4_reply_error,
    socks5_reply_error,
)
from txsocksgss.interfaces import IClientAuthenticatorFactory, IStreamProtection
from txsocksgss.protection import ProtectedTransport
from txsocksgss.wire.reader import MessageBuffer
from txsocksgss.wire.socks4 import SOCKS4Command, SOCKS4ReplyCode, SOCKS4Request, parse_socks4_reply
from txsocksgss.wire.socks5 import (
    Address,
    AddressType,
    AuthMethod,
    Command,
    Greeting,
    ReplyCode,
    Request,
    parse_method_selection,
    parse_reply,
)

__all__ = ["SOCKSConnection", "SOCKS5ClientProtocol", "SOCKS4ClientProtocol", "HandshakeState"]

_log = Logger()


@dataclass(frozen=True)
class SOCKSConnection:
    """
    A tunnel the proxy granted.

    :ivar protocol: the application protocol, connected (``None`` for a UDP
        association, whose TCP connection carries no data).
    :ivar bound: BND.ADDR/BND.PORT of the (last) success reply: for CONNECT
        the proxy's outgoing address, for BIND the connecting host, for UDP
        ASSOCIATE the relay.
    :ivar identity: what the authentication established (method, user).
    :ivar handshake: the handshake protocol on the proxy connection.
    """

    protocol: IProtocol | None
    bound: Address
    identity: Identity | None
    handshake: "_HandshakeProtocol"


class HandshakeState(enum.Enum):
    """Where a client handshake is."""

    SELECTION = "method selection"
    AUTHENTICATING = "authentication"
    REPLY = "reply"
    SECOND_REPLY = "second reply"
    ESTABLISHED = "established"
    FAILED = "failed"


def _address_for_factory(destination: Address) -> Any:
    if destination.type == AddressType.IPV4:
        return IPv4Address("TCP", destination.host, destination.port)
    if destination.type == AddressType.IPV6:
        return IPv6Address("TCP", destination.host, destination.port)
    return HostnameAddress(destination.host.encode("ascii"), destination.port)


@implementer(IHalfCloseableProtocol)
class _HandshakeProtocol(Protocol):
    """
    What both SOCKS versions share: the results, the timeout, cancellation,
    and becoming a pass-through for the application protocol.
    """

    state: HandshakeState

    def __init__(self, destination: Address, factory: IProtocolFactory | None,
                 clock: Any = None, timeout: float | None = None) -> None:
        self.destination = destination
        self.factory_for_application = factory
        self.firstReply: Deferred[Address] = Deferred()
        self.established: Deferred[SOCKSConnection] = Deferred()
        self.controlLost: Deferred[None] = Deferred()
        self.identity: Identity | None = None
        self.protection: IStreamProtection | None = None
        self.application: IProtocol | None = None
        self._buffer = MessageBuffer(limit=1024)
        self._clock = clock
        self._timeout = timeout
        self._timer: IDelayedCall | None = None

    # -- Twisted protocol ---------------------------------------------------

    def connectionMade(self) -> None:
        if self._clock is not None and self._timeout:
            self._timer = self._clock.callLater(self._timeout, self._timedOut)
        self.startHandshake()

    def installProtection(self, protection: IStreamProtection) -> None:
        """From now on, wrap what is written and unwrap what is received."""
        self.protection = protection
        self.transport = ProtectedTransport(self.transport, protection, self._protectionFailed)

    def _protectionFailed(self, error: ProtocolError) -> None:
        _log.info("closing the proxy connection: {error}", error=error)
        self.fail(error)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.protection is not None:
            try:
                data = self.protection.unprotect(data)
            except ProtocolError as error:
                self._protectionFailed(error)
                return
            if not data:
                return
        application = self.application
        if application is not None:
            application.dataReceived(data)
        elif self.state is HandshakeState.ESTABLISHED or self.state is HandshakeState.FAILED:
            return  # a UDP association's control connection, or after failure
        else:
            self._buffer.feed(data)
            try:
                self.advance()
            except ProtocolError as error:
                self.fail(error)

    def readConnectionLost(self) -> None:
        application = self.application
        if application is not None and IHalfCloseableProtocol.providedBy(application):
            application.readConnectionLost()  # type: ignore[attr-defined]
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        application = self.application
        if application is not None and IHalfCloseableProtocol.providedBy(application):
            application.writeConnectionLost()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._cancelTimer()
        if self.application is not None:
            self.application.connectionLost(reason)
        elif self.state is not HandshakeState.ESTABLISHED:
            where = self.state.value
            error = TruncatedMessage(f"the proxy closed the connection during the {where}")
            self._failResults(error)
        if not self.controlLost.called:
            self.controlLost.callback(None)

    # -- used by subclasses and endpoints -------------------------------------

    def startHandshake(self) -> None:
        raise NotImplementedError

    def advance(self) -> None:
        raise NotImplementedError

    def succeed(self, bound: Address, final: bool = True) -> None:
        """A success reply: fire ``firstReply``; if ``final``, start the application."""
        if not self.firstReply.called:
            self.firstReply.callback(bound)
        if not final:
            self.state = HandshakeState.SECOND_REPLY
            self._cancelTimer()  # waiting for an inbound connection may take long
            return
        self.state = HandshakeState.ESTABLISHED
        self._cancelTimer()
        leftover = self._buffer.take_all()
        if self.factory_for_application is not None:
            application = self.factory_for_application.buildProtocol(_address_for_factory(self.destination))
            if application is None:
                self.fail(SOCKSError("the application factory refused to build a protocol"))
                return
            self.application = application
            application.makeConnection(self.transport)  # type: ignore[arg-type]
        self.established.callback(SOCKSConnection(self.application, bound, self.identity, self))
        if leftover and self.application is not None:
            self.application.dataReceived(leftover)

    def fail(self, error: BaseException) -> None:
        """End the handshake with ``error``: fail the results and close the connection."""
        if self.state in (HandshakeState.FAILED, HandshakeState.ESTABLISHED):
            return
        self._failResults(error)
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Cancel the handshake: results fail with CancelledError; the connection is aborted."""
        if self.state in (HandshakeState.FAILED, HandshakeState.ESTABLISHED):
            return
        self._failResults(CancelledError("SOCKS handshake cancelled"))
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _failResults(self, error: BaseException) -> None:
        if self.state is HandshakeState.FAILED:
            return
        self.state = HandshakeState.FAILED
        self._cancelTimer()
        failure = Failure(error)
        if not self.firstReply.called:
            self.firstReply.errback(failure)
            self.firstReply.addErrback(lambda _: None)  # the same error reaches `established`
        if not self.established.called:
            self.established.errback(failure)

    def _timedOut(self) -> None:
        self._timer = None
        self.fail(TimeoutError(f"no answer from the SOCKS proxy within {self._timeout} seconds "
                               f"(during the {self.state.value})"))

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class SOCKS5ClientProtocol(_HandshakeProtocol):
    """
    The SOCKS 5 handshake (RFC 1928): greeting with the methods of
    ``authenticators`` in the caller's order, the subnegotiation of the
    method the proxy picks, the request, one reply (two for BIND).
    """

    state = HandshakeState.SELECTION

    def __init__(
        self,
        request: Request,
        authenticators: Sequence[IClientAuthenticatorFactory],
        factory: IProtocolFactory | None,
        session: SessionInfo | None = None,
        clock: Any = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(request.destination, factory, clock, timeout)
        if not authenticators:
            raise ValueError("at least one authentication method is needed")
        self.request = request
        self.authenticators = {a.method: a for a in authenticators}
        self._offered = tuple(a.method for a in authenticators)
        self._session = session
        self._conversation: ConversationDriver | None = None

    def startHandshake(self) -> None:
        self.transport.write(Greeting(self._offered).serialize())  # type: ignore[union-attr]

    def advance(self) -> None:
        while True:
            if self.state is HandshakeState.SELECTION:
                selection = self._buffer.next(parse_method_selection)
                if selection is None:
                    return
                self._startAuthentication(selection.method)
            elif self.state is HandshakeState.AUTHENTICATING:
                if len(self._buffer):
                    assert self._conversation is not None
                    self._conversation.feed(self._buffer.take_all())
                return
            elif self.state in (HandshakeState.REPLY, HandshakeState.SECOND_REPLY):
                reply = self._buffer.next(parse_reply)
                if reply is None:
                    return
                if reply.code != ReplyCode.SUCCEEDED:
                    context = f" ({self.request.command.name} {self.destination.host}:{self.destination.port})"
                    self.fail(socks5_reply_error(int(reply.code), context))
                    return
                final = self.request.command != Command.BIND or self.state is HandshakeState.SECOND_REPLY
                self.succeed(reply.bound, final=final)
                if final:
                    return
            else:
                return

    def _startAuthentication(self, method: int) -> None:
        if method == AuthMethod.NO_ACCEPTABLE:
            offered = ", ".join(f"{m:#04x}" for m in self._offered)
            self.fail(NoAcceptableMethod(f"the proxy accepts none of the methods offered ({offered})"))
            return
        factory = self.authenticators.get(method)
        if factory is None:
            raise ProtocolError(f"the proxy chose method {method:#04x}, which was not offered")
        host = self.transport.getPeer()  # type: ignore[union-attr]
        session = self._session or SessionInfo(
            client=None, server=(getattr(host, "host", ""), getattr(host, "port", 0))
        )
        self.state = HandshakeState.AUTHENTICATING
        self._conversation = ConversationDriver(
            factory.buildAuthenticator(session), send=self._sendAuthBytes, ended=self._authEnded,
            method=method_name(method), log=_log)
        self._conversation.start()

    def _sendAuthBytes(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def _authEnded(self, end: ConversationEnd) -> None:
        self._conversation = None
        if end.kind is EndKind.CRASHED:
            assert end.failure is not None
            self.fail(ClientAuthenticationFailed(f"authentication error: {end.failure.getErrorMessage()}"))
            return
        if end.kind is EndKind.OVERFLOW:
            self.fail(ClientAuthenticationFailed("the proxy sent too much data during authentication"))
            return
        result = end.result
        if not result.succeeded:
            self.fail(ClientAuthenticationFailed(result.reason))
            return
        self.identity = result.identity
        self.state = HandshakeState.REPLY
        if result.protection is not None:
            self.installProtection(result.protection)
        self.transport.write(self.request.serialize())  # type: ignore[union-attr]
        unused = end.unused
        if unused and self.protection is not None:
            try:
                unused = self.protection.unprotect(unused)
            except ProtocolError as error:
                self.fail(error)
                return
        if unused:
            self._buffer.feed(unused)
        # The caller's advance() loop (or ours, for a Deferred step) parses the reply.
        if len(self._buffer):
            try:
                self.advance()
            except ProtocolError as error:
                self.fail(error)

    def _failResults(self, error: BaseException) -> None:
        # However the handshake ends early (failure, timeout, cancellation,
        # connection lost), a conversation under way is aborted.
        conversation, self._conversation = self._conversation, None
        if conversation is not None:
            conversation.abort()
        super()._failResults(error)


class SOCKS4ClientProtocol(_HandshakeProtocol):
    """
    The SOCKS 4 handshake, and 4a when the destination is a host name: one
    request, one reply (two for BIND).
    """

    state = HandshakeState.REPLY

    def __init__(
        self,
        command: SOCKS4Command,
        destination: Address,
        userid: bytes,
        factory: IProtocolFactory | None,
        clock: Any = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(destination, factory, clock, timeout)
        if destination.type == AddressType.IPV6:
            raise ValueError("SOCKS 4 cannot carry an IPv6 destination; use SOCKS 5")
        if destination.type == AddressType.DOMAIN:
            self.request = SOCKS4Request(command, destination.port, "0.0.0.1", userid, destination.host)
        else:
            self.request = SOCKS4Request(command, destination.port, destination.host, userid)
        self.identity = Identity(method=-1, user=userid.decode("utf-8", "replace") or None)

    def startHandshake(self) -> None:
        self.transport.write(self.request.serialize())  # type: ignore[union-attr]

    def advance(self) -> None:
        while self.state in (HandshakeState.REPLY, HandshakeState.SECOND_REPLY):
            reply = self._buffer.next(parse_socks4_reply)
            if reply is None:
                return
            if reply.code != SOCKS4ReplyCode.GRANTED:
                context = f" ({self.request.command.name} {self.destination.host}:{self.destination.port})"
                self.fail(socks4_reply_error(int(reply.code), context))
                return
            bound = Address(AddressType.IPV4, reply.address, reply.port)
            final = self.request.command != SOCKS4Command.BIND or self.state is HandshakeState.SECOND_REPLY
            self.succeed(bound, final=final)
