"""
The SOCKS 5 BIND command (RFC 1928 s4, s6): accept one inbound connection
for the client.

The server listens on a new port (on ``ServerContext.external``, or the
address the client reached the server on), sends the first reply with that
address, accepts the first connection that comes from the host named in the
request (any host when the request names 0.0.0.0 or ::), sends the second
reply with the connecting host's address, and relays.  A connection from
another host is refused and logged; the port closes after the first accepted
connection.  If nobody connects within the idle timeout the client gets
REP 06 (TTL expired).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from txsocksgss.interfaces import ICommand
from txsocksgss.server.outcomes import Outcome, OutcomeKind
from txsocksgss.server.relay import UpstreamProtocol
from txsocksgss.wire.socks5 import Address, ReplyCode

__all__ = ["BindCommand"]

_log = Logger()


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


@implementer(ICommand)
class BindCommand:
    """
    The BIND command of one session.  ``session`` is its command context,
    the session machine (`txsocksgss.server.negotiation.SessionMachine`):
    its ``context`` (reactor, guard, idle timeout), ``record``,
    `resolveAllowed`, `listeningInterface`, `sendReply`, `startRelay`,
    `closeWith`, `commandFailed` and `trackPending`.
    """

    def __init__(self, session: Any, destination: Address) -> None:
        self.session = session
        self.destination = destination
        self._expected: set[str] | None = None
        self._port: IListeningPort | None = None
        self._accepted: UpstreamProtocol | None = None
        self._wait_timer: IDelayedCall | None = None
        self._open_call: IDelayedCall | None = None

    def start(self) -> None:
        d = self.session.resolveAllowed("bind", self.destination)
        d.addCallback(self._listen)
        d.addErrback(self.session.commandFailed)
        self.session.trackPending(d)

    def _listen(self, allowed: list[str]) -> None:
        self.session.trackPending(None)
        context = self.session.context
        if not _is_unspecified(self.destination.host):
            self._expected = {str(ipaddress.ip_address(a)) for a in allowed}
        interface = self.session.listeningInterface()
        if interface is None:
            self.session.closeWith(Outcome(OutcomeKind.COMMAND_ERROR, "BIND on a non-IP listener needs --external ADDRESS"),
                                   ReplyCode.GENERAL_FAILURE)
            return
        # Not while the reactor dispatches this poll's events: a descriptor
        # closed earlier in it may be reused by the new port, which would then
        # get the stale event (Twisted's epoll reactor, twisted#4759).
        self._open_call = context.reactor.callLater(0, self._openPort, interface)

    def _openPort(self, interface: str) -> None:
        self._open_call = None
        context = self.session.context
        self._port = context.reactor.listenTCP(0, _BindFactory(self), backlog=1, interface=interface)
        bound: Any = self._port.getHost()
        self.session.sendReply(ReplyCode.SUCCEEDED, Address.of(bound.host, bound.port))
        if context.idle_timeout:
            self._wait_timer = context.reactor.callLater(context.idle_timeout, self._timedOut)

    def accept(self, addr: Any) -> Protocol | None:
        """Called for each inbound connection: the protocol to use, or None to refuse it."""
        if self._accepted is not None:
            return None
        host = getattr(addr, "host", "")
        guard = self.session.context.guard
        reason = guard.check("connect", host) if guard is not None else None
        if reason is not None:
            # A BIND for "any host" must not become a way in from a guarded one.
            _log.info("BIND for {client}: refused a connection from {host} by destination guard ({why})",
                      client=self.session.record.client if self.session.record else "-",
                      host=host, why=reason.value)
            return None
        if self._expected is not None and host not in self._expected:
            _log.info(
                "BIND for {client}: refused a connection from {host}, expected {expected}",
                client=self.session.record.client if self.session.record else "-",
                host=host,
                expected=sorted(self._expected),
            )
            return None
        self._stopListening()
        self._cancelTimer()
        protocol = UpstreamProtocol()
        protocol.onConnected = self._connected
        self._accepted = protocol
        return protocol

    def _connected(self, protocol: UpstreamProtocol) -> None:
        assert protocol.transport is not None
        peer: Any = protocol.transport.getPeer()
        self.session.startRelay(protocol, ReplyCode.SUCCEEDED, Address.of(peer.host, peer.port))  # type: ignore[attr-defined]

    def _timedOut(self) -> None:
        self._wait_timer = None
        self.session.closeWith(Outcome(OutcomeKind.BIND_TIMEOUT), ReplyCode.TTL_EXPIRED)

    def stop(self) -> None:
        """The session ended before the relay started: release everything."""
        if self._open_call is not None and self._open_call.active():
            self._open_call.cancel()
        self._open_call = None
        self._stopListening()
        self._cancelTimer()
        if self._accepted is not None and self._accepted.relay is None and self._accepted.transport:
            self._accepted.transport.loseConnection()

    def _stopListening(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            port.stopListening()

    def _cancelTimer(self) -> None:
        if self._wait_timer is not None and self._wait_timer.active():
            self._wait_timer.cancel()
        self._wait_timer = None


class _BindFactory(Factory):
    def __init__(self, command: BindCommand) -> None:
        self.command = command

    def buildProtocol(self, addr: Any) -> Protocol | None:
        return self.command.accept(addr)
