"""
The lean accept path of a plain TCP listener: the common session (method
none, CONNECT, spliced) on bare sockets; every other session handed to
`txsocksgss.server.protocol.SOCKS5ServerProtocol` as it stands.

Theory of operation.  Twisted's accept path builds a transport and a
protocol per connection, and a short spliced tunnel spends more CPU in
them (their construction, their dispatch of each read, their close) than
in its own work.  `LeanListener` is a listening socket registered with the
reactor like Twisted's own port; each connection it accepts becomes a
`LeanSession`, one small object registered for reading its socket, which
parses the greeting and the request with the same sans-IO codecs
(`txsocksgss.wire.socks5`) and asks the same limits, guard and policy as
the protocol:

- greeting: if the method the server would choose is ``none`` (its
  authenticator succeeds at once, with nothing to send and no
  protection), the session answers and goes on; anything else (another
  method, no acceptable one, SOCKS 4, a malformed greeting) is *handed
  off* before a byte is sent: the connection is given to Twisted
  (``adoptStreamConnection``) with the listener's factory, and the
  protocol is fed the bytes received so far, so it sees the connection as
  if it had accepted it itself.
- request: a CONNECT is judged, connected with
  `txsocksgss.server.direct.DirectConnector` (after resolving a name) and
  spliced (`txsocksgss.server.splice.SpliceRelay`, taking the session's
  registration over); anything else (BIND, UDP ASSOCIATE, a malformed or
  unsupported request) is handed off after the method: the protocol
  resumes from the method's result (`SOCKS5ServerProtocol.resumeAfterMethod`)
  and parses the request itself.

A handed-off connection keeps its session: the protocol takes over its
admission, its record (from the time of accept) and its negotiation
deadline (`txsocksgss.server.protocol.Handover`), and logs it.  Replies,
outcomes in the session line, timeouts and limits are those of the
protocol.  The listener is hardened as Twisted's port is: an accept error
of one connection does not stop the others, and running out of
descriptors pauses accepting for a moment instead of spinning.  The listener is only used where splicing is (Linux, an
epoll reactor, ``splice`` on): see `lean_available`.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReadDescriptor, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.auth.conversation import ANONYMOUS, AuthResult, AuthStep, SessionInfo
from txsocksgss.auth.none import NoAuthServerFactory
from txsocksgss.errors import ProtocolError
from txsocksgss.server.direct import DirectConnector
from txsocksgss.server.limits import Refusal
from txsocksgss.server.outbound import ip_literal, resolve
from txsocksgss.server.protocol import (
    _CONNECT_TIMEOUT,
    Handover,
    _EARLY_DATA_LIMIT,
    _NEGOTIATION_BUFFER_LIMIT,
    _format_destination,
    allowed_addresses,
    decide_access,
    failure_outcome,
    log_refusal,
)
from txsocksgss.server.rules import AccessRequest
from txsocksgss.server.session import SessionRecord
from txsocksgss.server.splice import EPollReactor, SpliceRelay, reset_on_close
from txsocksgss.wire.reader import MessageBuffer
from txsocksgss.wire.socks4 import SOCKS4_VERSION
from txsocksgss.wire.socks5 import (
    Address,
    AuthMethod,
    Command,
    MethodSelection,
    Reply,
    ReplyCode,
    parse_greeting,
    parse_request,
)

__all__ = ["LeanListener", "LeanSession", "LeanTCPServerEndpoint", "lean_available", "lean_endpoint"]

_log = Logger()

_UNSPECIFIED = Address.of("0.0.0.0", 0)
# Accepts per readable event at most, as Twisted's own port.
_ACCEPTS_PER_EVENT = 100
# accept() errors that say "no more now", not "this connection failed".
_ACCEPT_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# accept() errors of one connection (accept(2): Linux passes network errors
# on, and a firewall may forbid one): try the next.
_ACCEPT_RETRY = (errno.ECONNABORTED, errno.EPERM, errno.EPROTO, errno.ENETDOWN, errno.ENOPROTOOPT,
                 errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH)
# How long the listener stops accepting when out of descriptors or memory.
_ACCEPT_PAUSE = 0.1

_GREETING, _REQUEST, _CONNECTING, _RELAYING, _DONE = range(5)
# How method none (the stock NoAuthServerFactory) ends, at once.
_NO_AUTHENTICATION = AuthResult.success(ANONYMOUS)
_STATE_NAMES = {_GREETING: "greeting", _REQUEST: "request"}


class _Given(Factory):
    """The factory of one connection whose protocol is already built."""

    noisy = False

    def __init__(self, protocol: Any) -> None:
        self.given = protocol

    def buildProtocol(self, addr: Any) -> Any:
        return self.given


def lean_available(reactor: Any, splice: bool) -> bool:
    """Whether a listener may use the lean path: splicing on, os.splice there, and the epoll reactor."""
    return splice and hasattr(os, "splice") and EPollReactor is not None and isinstance(reactor, EPollReactor)


def _address_object(family: int, pair: tuple[Any, ...]) -> IPv4Address | IPv6Address:
    if family == socket.AF_INET6:
        return IPv6Address("TCP", pair[0], pair[1])
    return IPv4Address("TCP", pair[0], pair[1])


@implementer(IListeningPort, IReadDescriptor)
class LeanListener:
    """
    A listening TCP socket (bound, listening, non-blocking) whose
    connections become `LeanSession` objects; ``factory`` is the server's
    `txsocksgss.server.service.ManagedServerFactory` (its context, its
    observers, and the protocols of handed-off connections).
    """

    def __init__(self, reactor: Any, sock: socket.socket, factory: Any) -> None:
        self.reactor = reactor
        self.socket = sock
        self.factory = factory
        self.context = factory.context
        self._fd = sock.fileno()
        host, port = sock.getsockname()[:2]
        self._address = _address_object(sock.family, (host, port))
        # Bound to one address, every connection has that local address.
        self.fixedHost = None if host in ("0.0.0.0", "::") else (host, port)
        self.listening = False
        self._resume: Any = None

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "LeanListener"

    def getHost(self) -> IPv4Address | IPv6Address:
        return self._address

    def startListening(self) -> None:
        self.factory.doStart()
        self.listening = True
        self.reactor.addReader(self)
        _log.info("{factory} starting on {port}", factory=type(self.factory).__name__, port=self._address.port)

    def stopListening(self) -> Deferred[None]:
        """Stop accepting; fires once the socket is closed (open sessions go on)."""
        closed: Deferred[None] = Deferred()
        if not self.listening:
            closed.callback(None)
            return closed
        self.listening = False
        self.reactor.removeReader(self)
        if self._resume is not None and self._resume.active():
            self._resume.cancel()

        def close() -> None:  # not within an event batch
            self.socket.close()
            self.factory.doStop()
            _log.info("(TCP Port {port} Closed)", port=self._address.port)
            closed.callback(None)

        self.reactor.callLater(0, close)
        return closed

    def connectionLost(self, reason: Failure) -> None:  # pragma: no cover - a listening socket does not hang up
        _log.info("listening socket lost: {why}", why=reason.getErrorMessage())

    def doRead(self) -> None:
        for _ in range(_ACCEPTS_PER_EVENT):
            try:
                sock, peer = self.socket.accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in _ACCEPT_RETRY:
                    continue  # that connection failed; the next may not
                if error.errno in _ACCEPT_EXHAUSTED:
                    self._pause(os.strerror(error.errno))
                else:
                    _log.failure("accept failed")
                return
            try:
                sock.setblocking(False)
                LeanSession(self, sock, peer).start()
            except Exception:
                _log.failure("could not start a session")
                sock.close()

    def _pause(self, why: str) -> None:
        """
        Out of descriptors or memory: the waiting connection stays in the
        backlog and the socket stays readable, so stop reading it for a
        moment instead of trying again at once (a busy loop).
        """
        _log.info("could not accept a connection: {why}; accepting again in {delay}s", why=why,
                  delay=_ACCEPT_PAUSE)
        self.reactor.removeReader(self)
        self._resume = self.reactor.callLater(_ACCEPT_PAUSE, self._resumeAccepting)

    def _resumeAccepting(self) -> None:
        self._resume = None
        if self.listening:
            self.reactor.addReader(self)


@implementer(IReadDescriptor)
class LeanSession:
    """One connection accepted by a `LeanListener`; see the module docstring."""

    def __init__(self, listener: LeanListener, sock: socket.socket, peer: tuple[Any, ...]) -> None:
        self.listener = listener
        self.context = listener.context
        self.reactor = listener.reactor
        self.sock = sock
        self._fd = sock.fileno()
        self.peer = peer
        self.state = _GREETING
        self.record: SessionRecord | None = None
        self.relay: SpliceRelay | None = None
        self._buffer = MessageBuffer(limit=_NEGOTIATION_BUFFER_LIMIT)
        self._ticket: Any = None
        self._timer: Any = None
        self._reading = False
        self._method: Any = None
        self._result: AuthResult | None = None
        self._outgoing: DirectConnector | None = None
        self._pending: Deferred[Any] | None = None
        self._phase = ""

    # -- reactor ---------------------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "LeanSession"

    def start(self) -> None:
        """Admit the connection (or refuse it), start the negotiation timer and read."""
        host, port = self.peer[0], self.peer[1]
        if len(self.peer) == 4 and self.peer[3]:
            # A link-local IPv6 peer: with its scope (fe80::1%eth0), as Twisted shows it.
            host = socket.getnameinfo(self.peer, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
            self.peer = (host, port)
        client = _format_destination(host, port)
        now = self.reactor.seconds()
        admission = self.context.limits.admit(host, now)
        if isinstance(admission, Refusal):
            self.state = _DONE
            log_refusal(self.context, client, admission, now)
            reset_on_close(self.sock)
            self.sock.close()  # never registered: no event can be pending for it
            return
        self._ticket = admission
        self.record = SessionRecord(client=client, started=now)
        self.record.observers.extend(self.listener.factory.observers)
        self.context.sessionStarted(self)
        self._timer = self.reactor.callLater(self.context.negotiation_timeout, self._timedOut)
        self._reading = True
        self.reactor.addReader(self)

    def doRead(self) -> None:
        try:
            data = self.sock.recv(_NEGOTIATION_BUFFER_LIMIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close("client closed during negotiation")
            return
        self._buffer.feed(data)
        if self.state == _CONNECTING:
            if len(self._buffer) > _EARLY_DATA_LIMIT:
                self._close("client sent too much data before the reply", ReplyCode.GENERAL_FAILURE)
            return
        if self.state == _GREETING:
            self._greeting()
        if self.state == _REQUEST and len(self._buffer):
            self._request()

    def connectionLost(self, reason: Failure) -> None:
        # An error or hang-up event (the reactor has unregistered us).
        self._reading = False
        self._close("client closed during negotiation")

    # -- negotiation -------------------------------------------------------------

    def _greeting(self) -> None:
        if self._buffer.peek() == SOCKS4_VERSION:
            self._handOff()
            return
        received = self._buffer.contents()  # for a hand-off after the greeting is parsed
        try:
            greeting = self._buffer.next(parse_greeting)
        except ProtocolError:
            self._handOff()  # the protocol answers a malformed greeting its own way
            return
        if greeting is None:
            return
        offered = greeting.methods
        chosen = next((f for f in self.context.authenticators if f.method in offered), None)
        if chosen is None or chosen.method != AuthMethod.NONE:
            self._handOff(received)
            return
        if type(chosen) is NoAuthServerFactory:
            result: AuthResult | None = _NO_AUTHENTICATION  # what its conversation always ends with
        else:
            fixed = self.listener.fixedHost
            server = fixed if fixed is not None else self.sock.getsockname()[:2]
            info = SessionInfo(client=(self.peer[0], self.peer[1]), server=server)
            step = chosen.buildAuthenticator(info).begin()
            result = step.result if isinstance(step, AuthStep) and not step.send and not step.unused else None
        if result is None or not result.succeeded or result.protection is not None or result.identity is None:
            self._handOff(received)  # not what method none does here: the protocol runs it
            return
        self._method, self._result = chosen, result
        assert self.record is not None
        self.record.method = chosen.name
        self.record.user = result.identity.user
        self._send(MethodSelection(chosen.method).serialize())
        self.state = _REQUEST

    def _request(self) -> None:
        received = self._buffer.contents()  # for a hand-off after the request is parsed
        try:
            request = self._buffer.next(parse_request)
        except ProtocolError:
            self._handOff(received, resume=True)  # unsupported command or address type, malformed: the protocol's reply
            return
        if request is None:
            return
        if request.command is not Command.CONNECT:
            self._handOff(received, resume=True)
            return
        assert self.record is not None
        self.state = _CONNECTING
        self._buffer.limit = _EARLY_DATA_LIMIT
        destination = request.destination
        self.record.command = "connect"
        self.record.destination = _format_destination(destination.host, destination.port)
        literal = ip_literal(destination.host)
        if literal is not None:
            self._connectTo(destination, [literal])
            return
        self._phase = f"resolving {destination.host}"
        d = resolve(self.context.resolver, destination.host, destination.port)
        d.addCallbacks(self._resolved, self._failed, callbackArgs=(destination,))
        self._pending = d

    def _resolved(self, addresses: list[str], destination: Address) -> None:
        self._pending = None
        if self.state == _CONNECTING:
            self._connectTo(destination, addresses)

    def _connectTo(self, destination: Address, addresses: list[str]) -> None:
        assert self._result is not None and self._result.identity is not None and self.record is not None
        identity = self._result.identity
        client = self.record.client

        def decide(address: str) -> Any:
            return decide_access(self.context, AccessRequest(
                client=self.peer[0], command="connect", destination_host=destination.host,
                destination_port=destination.port, destination_address=address, user=identity.user,
                method=self._method.name, version=5, attributes=dict(identity.attributes)), client)

        try:
            allowed = allowed_addresses(decide, addresses)
        except Exception:
            self._failed(Failure())
            return
        timeout = _CONNECT_TIMEOUT if self.context.negotiation_timeout > _CONNECT_TIMEOUT else None
        self._outgoing = DirectConnector(self.reactor, allowed, destination.port, timeout,
                                         self._connected, self._failed)
        self._outgoing.start()

    def _failed(self, failure: Failure) -> None:
        self._pending = None
        self._outgoing = None
        if self.state != _CONNECTING or failure.check(CancelledError):
            return
        assert self.record is not None
        self._close(*failure_outcome(failure, self.record.destination))

    def _connected(self, upstream: socket.socket) -> None:
        """Reply, and splice the client's socket (registration and all) with ``upstream``."""
        self._outgoing = None
        if self.state != _CONNECTING:
            upstream.close()
            return
        try:
            bound_host, bound_port = upstream.getsockname()[:2]
        except OSError:  # reset already
            bound_host, bound_port = _UNSPECIFIED.host, 0
        self._endNegotiation()
        self.state = _RELAYING
        reply = self._reply(ReplyCode.SUCCEEDED, Address.of(bound_host, bound_port))
        try:
            sent = self.sock.send(reply)
        except OSError:
            sent = 0  # the relay, sending it again, meets the error
        self._reading = False  # the relay's socket takes the registration over
        self.relay = SpliceRelay(self.sock, upstream, self.reactor, self.context.idle_timeout, self._relayEnded,
                                 reader=self)
        self.relay.start(toUpstream=self._buffer.take_all(), toClient=reply[sent:])

    def _relayEnded(self, outcome: str) -> None:
        assert self.record is not None and self.relay is not None
        self.state = _DONE
        self.record.bytes_from_client = self.relay.bytes_from_client
        self.record.bytes_to_client = self.relay.bytes_from_upstream
        self.record.finish(self.reactor.seconds(), outcome)
        self._ticket.release()
        self.context.sessionEnded(self)

    # -- endings -----------------------------------------------------------------

    def _timedOut(self) -> None:
        self._timer = None
        if self.state == _CONNECTING:
            phase = self._outgoing.describe() if self._outgoing is not None else self._phase
            self._close(f"negotiation timeout while {phase}", ReplyCode.TTL_EXPIRED)
        else:
            self._close(f"negotiation timeout in {_STATE_NAMES.get(self.state, 'request')}")

    def shutdown(self) -> None:
        """Close this session now, whatever its state (server shutdown)."""
        if self.relay is not None:
            self.relay.close("server shutdown")
        else:
            self._close("server shutdown", abort=True)

    def _endNegotiation(self) -> None:
        """The first reply, or the end: stop the negotiation timer, leave the negotiating count."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._ticket is not None:
            self._ticket.negotiated()

    def _stopWork(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        outgoing, self._outgoing = self._outgoing, None
        if outgoing is not None:
            outgoing.cancel()
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def _close(self, outcome: str, reply: ReplyCode | None = None, abort: bool = False) -> None:
        """End the session before the relay: the reply owed, the log line, the close (next turn; ``abort``: a reset)."""
        if self.state in (_RELAYING, _DONE):
            return
        self.state = _DONE
        self._stopWork()
        if reply is not None:
            self._send(self._reply(reply, _UNSPECIFIED))
        assert self.record is not None
        self.record.finish(self.reactor.seconds(), outcome)
        if abort:
            reset_on_close(self.sock)
        # Not within this batch of events (see SpliceRelay._end).
        self.reactor.callLater(0, self.sock.close)
        self._ticket.release()
        self.context.sessionEnded(self)

    def _handOff(self, received: bytes | None = None, resume: bool = False) -> None:
        """
        Give the connection to the protocol, with the session as it stands
        (`Handover`: the admission, still negotiating; the record; the
        deadline): before anything was sent (it gets every byte received:
        ``received``, else the buffer), or after the method (``resume``: it
        goes on from the method's result with the bytes after the greeting).
        """
        assert self.record is not None
        self.state = _DONE
        self._stopWork()
        data = received if received is not None else self._buffer.take_all()
        record = self.record
        record.observers.clear()  # the protocol adds them again
        protocol = self.listener.factory.buildProtocol(_address_object(self.sock.family, self.peer))
        protocol.handover = Handover(self._ticket, record, record.started + self.context.negotiation_timeout)
        try:
            # The transport has its own duplicate of the descriptor.
            self.reactor.adoptStreamConnection(self._fd, self.sock.family, _Given(protocol))
        except Exception as error:
            why = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else repr(error)
            _log.info("could not hand a connection from {client} over: {why}", client=record.client, why=why)
            record.observers.extend(self.listener.factory.observers)
            record.finish(self.reactor.seconds(), "client closed during negotiation")
            self._ticket.release()
            return
        finally:
            self.reactor.callLater(0, self.sock.close)
            self.context.sessionEnded(self)
        if resume:
            assert self._method is not None and self._result is not None
            protocol.resumeAfterMethod(self._method, self._result, data)
        elif data:
            protocol.dataReceived(data)

    # -- helpers -----------------------------------------------------------------

    def _reply(self, code: ReplyCode, bound: Address) -> bytes:
        assert self.record is not None
        self.record.markReplied(self.reactor.seconds())
        return Reply(code, bound).serialize()

    def _send(self, data: bytes) -> None:
        """A reply of a few bytes: the socket's empty buffer takes it; an error shows on the next read."""
        try:
            self.sock.send(data)
        except OSError:
            pass


@implementer(IStreamServerEndpoint)
class LeanTCPServerEndpoint:
    """
    A ``tcp:`` or ``tcp6:`` listener (``reuse_port``: with SO_REUSEPORT,
    for ``--workers``) that serves through a `LeanListener` when the
    factory lets it (`ManagedServerFactory.leanSessions`), else through
    Twisted's own port on the same socket.
    """

    def __init__(self, reactor: Any, port: int, interface: str, backlog: int = 50,
                 reuse_port: bool = False) -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog
        self.reuse_port = reuse_port

    def listen(self, factory: Any) -> Deferred[Any]:
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            if lean_available(self.reactor, True) and getattr(factory, "leanSessions", False):
                listener = LeanListener(self.reactor, sock, factory)
                listener.startListening()
                return succeed(listener)
            port = self.reactor.adoptStreamPort(sock.fileno(), family, factory)
            sock.close()  # adoptStreamPort keeps its own copy
            return succeed(port)
        except (OSError, OverflowError) as error:
            sock.close()
            return fail(CannotListenError(self.interface, self.port, error))


def lean_endpoint(reactor: Any, description: str, reuse_port: bool) -> LeanTCPServerEndpoint | None:
    """
    The `LeanTCPServerEndpoint` for a plain ``tcp:``/``tcp6:`` listener
    description (``PORT``, ``interface=``, ``backlog=``), None for any other
    kind (ssl:, haproxy:, unix: and the rest keep Twisted's endpoints).
    """
    from txsocksgss.server.config import split_endpoint_description

    kind, positional, keywords = split_endpoint_description(description)
    if kind not in ("tcp", "tcp6") or set(keywords) - {"port", "interface", "backlog"}:
        return None
    port_text = keywords.get("port", positional[0] if positional else "")
    if not port_text.isdigit() or len(positional) > 1:
        return None
    interface = keywords.get("interface", "::" if kind == "tcp6" else "0.0.0.0").strip("[]")
    backlog = int(keywords.get("backlog", "1024" if reuse_port else "50"))
    return LeanTCPServerEndpoint(reactor, int(port_text), interface, backlog, reuse_port)
