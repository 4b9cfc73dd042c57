"""
The bare-socket driver of the SOCKS session machine, and the lean listener
of plain TCP listeners that uses it.

Theory of operation.  Twisted's accept path builds a transport and a
protocol per connection, and a short spliced tunnel spends more CPU in
them (their construction, their dispatch of each read, their close) than
in its own work.  `LeanListener` is a listening socket registered with the
reactor like Twisted's own port; each connection it accepts gets a
`BareSocketDriver`, one small object registered for reading its socket,
which drives the same `txsocksgss.server.negotiation.SessionMachine` as the
Twisted driver (`txsocksgss.server.protocol.SOCKS5ServerProtocol`): the
same admission, methods, requests, replies, timeouts and session lines.

The driver does what a bare socket can: it reads, sends short messages
(the socket's empty buffer takes them), connects with
`txsocksgss.server.direct.DirectConnector` and splices the tunnel
(`txsocksgss.server.splice.SpliceRelay`, which takes the driver's epoll
registration over).  Asked for anything else (a protection to install, a
BIND or UDP ASSOCIATE to open, a send the socket does not take at once) it
*adopts* the connection into a Twisted driver built by the listener's
factory (``adoptStreamConnection``), gives that driver the machine
(`SOCKS5ServerProtocol.adopt`), and the session carries on there with its
admission, record, buffer and deadline.  So the bare driver serves every
session whose tunnel needs no protection: method none, username/password,
MAF, GSS-API at level clear, SOCKS 4.

The listener is hardened as Twisted's port is: an accept error of one
connection does not stop the others, and running out of descriptors
pauses accepting for a moment instead of spinning.  The listener is only
used where splicing is (Linux, an epoll reactor, ``splice`` on): see
`lean_available`.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReadDescriptor, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.interfaces import ISessionIO, IStreamProtection
from txsocksgss.server.config import split_endpoint_description
from txsocksgss.server.direct import DirectConnector
from txsocksgss.server.negotiation import SessionMachine
from txsocksgss.server.outcomes import Outcome, OutcomeKind
from txsocksgss.server.splice import EPollReactor, SpliceRelay, reset_on_close

__all__ = ["BareSocketDriver", "LeanListener", "LeanTCPServerEndpoint", "lean_available", "lean_endpoint"]

_log = Logger()

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
# The most one read takes during the negotiation (a GSS-API token is larger
# than a greeting; the machine's buffer caps what may wait).
_READ_SIZE = 4096


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
    connections get a `BareSocketDriver` each; ``factory`` is the server's
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
                BareSocketDriver(self, sock, peer).start()
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


@implementer(IReadDescriptor, ISessionIO)
class BareSocketDriver:
    """
    The `ISessionIO` of one connection accepted by a `LeanListener`, on its
    bare socket; see the module docstring.
    """

    # Slots: one of these stays with every spliced tunnel (its machine's driver).
    __slots__ = ("listener", "context", "reactor", "sock", "_fd", "peer", "machine", "relay", "_reading",
                 "_registered", "__weakref__")

    def __init__(self, listener: LeanListener, sock: socket.socket, peer: tuple[Any, ...]) -> None:
        self.listener = listener
        self.context = listener.context
        self.reactor = listener.reactor
        self.sock = sock
        self._fd = sock.fileno()
        self.peer = peer
        self.machine = SessionMachine(self.context, self, listener.factory.observers)
        self.relay: SpliceRelay | None = None
        self._reading = False
        self._registered = False

    # -- reactor ---------------------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "BareSocketDriver"

    def start(self) -> None:
        """Begin the session (admitted or refused) and read."""
        host, port = self.peer[0], self.peer[1]
        if len(self.peer) == 4 and self.peer[3]:
            # A link-local IPv6 peer: with its scope (fe80::1%eth0), as Twisted shows it.
            host = socket.getnameinfo(self.peer, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
            self.peer = (host, port)
        fixed = self.listener.fixedHost
        server = fixed if fixed is not None else self.sock.getsockname()[:2]
        if self.machine.begin((host, port), server):
            self._reading = self._registered = True
            self.reactor.addReader(self)

    def doRead(self) -> None:
        try:
            data = self.sock.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.machine.dataReceived(data)
        else:
            self.machine.eofReceived()

    def connectionLost(self, reason: Failure) -> None:
        # An error or hang-up event (the reactor has unregistered us).
        self._reading = False
        self.machine.connectionLost()

    # -- ISessionIO ------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Onto the socket; what its buffer does not take at once goes through a Twisted driver, in order."""
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the error shows on the next read
        if sent < len(data):
            protocol = self._adopt()
            if protocol is not None:
                protocol.transport.write(data[sent:])

    def installProtection(self, protection: IStreamProtection) -> None:
        protocol = self._adopt()
        if protocol is not None:
            protocol.installProtection(protection)

    def connect(self, addresses: list[str], port: int, timeout: float | None,
                onConnected: Callable[..., bool], onFailed: Callable[[Failure], None]) -> DirectConnector:
        return DirectConnector(self.reactor, addresses, port, timeout, onConnected, onFailed)

    def openTunnel(self, upstream: Any, reply: bytes, onEnd: Callable[[Outcome], None]) -> tuple[SpliceRelay, bytes]:
        """Splice the client's socket (registration and all) with ``upstream``, a bare socket."""
        try:
            sent = self.sock.send(reply)
        except OSError:
            sent = 0  # the relay, sending it again, meets the error
        self._reading = False  # the relay's socket takes the registration over
        self.relay = SpliceRelay(self.sock, upstream, self.reactor, self.context.idle_timeout, onEnd, reader=self)
        return self.relay, reply[sent:]

    def tunnelEnded(self, tunnel: Any) -> None:
        # The relay closes both sockets itself.
        self.machine.connectionLost()

    def openBind(self, context: Any, destination: Any) -> Any:
        protocol = self._adopt()
        return protocol.openBind(context, destination) if protocol is not None else None

    def openUDP(self, context: Any, declared: Any) -> Any:
        protocol = self._adopt()
        return protocol.openUDP(context, declared) if protocol is not None else None

    def close(self, abort: bool) -> None:
        self._stopReading()
        if abort:
            reset_on_close(self.sock)
        if self._registered:
            # Not within this batch of events (see SpliceRelay._end).
            self.reactor.callLater(0, self.sock.close)
        else:
            self.sock.close()  # never registered: no event can be pending for it
        self.machine.connectionLost()

    # -- adoption ----------------------------------------------------------------

    def _stopReading(self) -> None:
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def _adopt(self) -> Any:
        """
        Give the connection, with the machine, to a Twisted driver built by
        the listener's factory; return it (None if Twisted could not take
        the connection: the session is then closed).
        """
        self._stopReading()
        machine = self.machine
        protocol = self.listener.factory.buildProtocol(_address_object(self.sock.family, self.peer))
        protocol.adopt(machine)
        try:
            # The transport has its own duplicate of the descriptor.
            self.reactor.adoptStreamConnection(self._fd, self.sock.family, _Given(protocol))
        except Exception as error:
            why = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else repr(error)
            _log.info("could not hand a connection from {client} over: {why}",
                      client=machine.record.client if machine.record else "-", why=why)
            machine.adopt(self)
            machine.close(Outcome(OutcomeKind.CLIENT_GONE))
            return None
        self.reactor.callLater(0, self.sock.close)
        return protocol


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
    kind, positional, keywords = split_endpoint_description(description)
    if kind not in ("tcp", "tcp6") or set(keywords) - {"port", "interface", "backlog"}:
        return None
    port_text = keywords.get("port", positional[0] if positional else "")
    if not port_text.isdigit() or len(positional) > 1:
        return None
    interface = keywords.get("interface", "::" if kind == "tcp6" else "0.0.0.0").strip("[]")
    backlog = int(keywords.get("backlog", "1024" if reuse_port else "50"))
    return LeanTCPServerEndpoint(reactor, int(port_text), interface, backlog, reuse_port)
