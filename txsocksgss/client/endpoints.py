"""
Client endpoints that reach a destination through a SOCKS proxy.

Each wraps another IStreamClientEndpoint that reaches the proxy (TCP, TLS,
UNIX, or another SOCKS endpoint, for a chain of proxies) and provides
IStreamClientEndpoint itself, so anything that takes an endpoint (Agent,
ClientService, connectProtocol) goes through the proxy unchanged:

    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from txsocksgss.client.endpoints import SOCKS5ClientEndpoint

    proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", 1080)
    endpoint = SOCKS5ClientEndpoint(proxy, "example.com", 80)
    protocol = await connectProtocol(endpoint, MyProtocol())

``connect`` fires with the application protocol once the proxy has granted
the tunnel; ``establish`` fires with a `SOCKSConnection` that also carries
the address the proxy bound (BND.ADDR/BND.PORT) and the identity the
authentication established.  Cancelling either Deferred aborts the
handshake and closes the connection.
"""

from __future__ import annotations

import getpass
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.auth.none import NoAuthClientFactory
from txsocksgss.client.protocol import (
    SOCKS4ClientProtocol,
    SOCKS5ClientProtocol,
    SOCKSConnection,
    _HandshakeProtocol,
)
from txsocksgss.interfaces import IClientAuthenticatorFactory
from txsocksgss.wire.socks4 import SOCKS4Command
from txsocksgss.wire.socks5 import Address, Command, Request

__all__ = ["SOCKS5ClientEndpoint", "SOCKS4ClientEndpoint", "SOCKSConnection", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 30.0


class _OneShotFactory(Factory):
    """Hands out one already-built protocol."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


def _default_clock(clock: Any) -> Any:
    if clock is not None:
        return clock
    from twisted.internet import reactor

    return reactor


def run_handshake(
    proxy: IStreamClientEndpoint,
    handshake: _HandshakeProtocol,
    result: Callable[[_HandshakeProtocol], Deferred[Any]],
) -> Deferred[Any]:
    """
    Connect ``proxy`` with ``handshake`` as the protocol and fire with the
    Deferred ``result(handshake)`` picks (``established`` or ``firstReply``).
    Cancelling stops the connection attempt, or aborts the handshake.
    """
    connecting: Deferred[Any]

    def cancel(_: Deferred[Any]) -> None:
        if handshake.transport is None:
            connecting.cancel()
        else:
            handshake.abort()

    outcome: Deferred[Any] = Deferred(cancel)

    def connected(_protocol: Any) -> None:
        result(handshake).addCallbacks(_fire(outcome), _fail(outcome))

    connecting = proxy.connect(_OneShotFactory(handshake))
    connecting.addCallbacks(connected, _fail(outcome))
    return outcome


def cancellable(source: Deferred[Any], handshake: _HandshakeProtocol) -> Deferred[Any]:
    """A Deferred that follows ``source`` and aborts ``handshake`` when cancelled."""
    follower: Deferred[Any] = Deferred(lambda _: handshake.abort())
    source.addCallbacks(_fire(follower), _fail(follower))
    return follower


def _fire(target: Deferred[Any]) -> Callable[[Any], None]:
    def fire(value: Any) -> None:
        if not target.called:
            target.callback(value)

    return fire


def _fail(target: Deferred[Any]) -> Callable[[Failure], None]:
    def fail(failure: Failure) -> None:
        if not target.called:
            target.errback(failure)

    return fail


@implementer(IStreamClientEndpoint)
class SOCKS5ClientEndpoint:
    """
    Reach ``host``:``port`` through a SOCKS 5 proxy.

    :param proxy: an endpoint that reaches the proxy.
    :param host: the destination: an IPv4 or IPv6 address, or a host name
        that the proxy resolves.
    :param port: the destination port.
    :param methods: client authenticator factories in order of preference
        (default: no authentication only).
    :param timeout: seconds for the whole handshake (``None``: no limit).
    :param clock: IReactorTime for the timeout (default: the reactor).
    """

    def __init__(
        self,
        proxy: IStreamClientEndpoint,
        host: str,
        port: int,
        methods: Sequence[IClientAuthenticatorFactory] | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        clock: Any = None,
    ) -> None:
        self.proxy = proxy
        self.destination = Address.of(host, port)
        self.methods = tuple(methods) if methods else (NoAuthClientFactory(),)
        self.timeout = timeout
        self._clock = clock

    def __repr__(self) -> str:
        return f"<SOCKS5ClientEndpoint {self.destination.host}:{self.destination.port} via {self.proxy!r}>"

    def handshake(self, command: Command, factory: IProtocolFactory | None,
                  destination: Address | None = None) -> SOCKS5ClientProtocol:
        """A new handshake protocol for ``command`` (used by `connect`, BIND and UDP)."""
        request = Request(command, destination or self.destination)
        return SOCKS5ClientProtocol(request, self.methods, factory,
                                    clock=_default_clock(self._clock), timeout=self.timeout)

    def establish(self, factory: IProtocolFactory) -> Deferred[SOCKSConnection]:
        """CONNECT; fires with a `SOCKSConnection` (protocol, bound address, identity)."""
        handshake = self.handshake(Command.CONNECT, factory)
        return run_handshake(self.proxy, handshake, lambda h: h.established)

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """IStreamClientEndpoint.connect: fires with the application protocol."""
        return self.establish(factory).addCallback(_protocolOf)


@implementer(IStreamClientEndpoint)
class SOCKS4ClientEndpoint:
    """
    Reach ``host``:``port`` through a SOCKS 4 proxy; a host name (not an
    IPv4 address) is sent to the proxy to resolve, which is SOCKS 4a.

    :param userid: the USERID field (default: the local user name).
    :param timeout: seconds for the handshake (``None``: no limit).
    """

    def __init__(
        self,
        proxy: IStreamClientEndpoint,
        host: str,
        port: int,
        userid: str | bytes | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        clock: Any = None,
    ) -> None:
        self.proxy = proxy
        self.destination = Address.of(host, port)
        if userid is None:
            userid = _local_user()
        self.userid = userid.encode("utf-8") if isinstance(userid, str) else userid
        self.timeout = timeout
        self._clock = clock
        # Validate now (IPv6, lengths) so a bad endpoint fails at construction.
        self.handshake(SOCKS4Command.CONNECT, None)

    def __repr__(self) -> str:
        return f"<SOCKS4ClientEndpoint {self.destination.host}:{self.destination.port} via {self.proxy!r}>"

    def handshake(self, command: SOCKS4Command, factory: IProtocolFactory | None,
                  destination: Address | None = None) -> SOCKS4ClientProtocol:
        return SOCKS4ClientProtocol(command, destination or self.destination, self.userid, factory,
                                    clock=_default_clock(self._clock), timeout=self.timeout)

    def establish(self, factory: IProtocolFactory) -> Deferred[SOCKSConnection]:
        handshake = self.handshake(SOCKS4Command.CONNECT, factory)
        return run_handshake(self.proxy, handshake, lambda h: h.established)

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return self.establish(factory).addCallback(_protocolOf)


def _protocolOf(connection: SOCKSConnection) -> IProtocol:
    assert connection.protocol is not None
    return connection.protocol


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
