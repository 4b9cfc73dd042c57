"""
Where ``socksgss connect`` sends its request: `resolve_destination`
decides where the destination name is resolved (by this client for
``socks5://`` and ``socks4://``, by the proxy for ``socks5h://`` and
``socks4a://``), and `build_endpoint` builds the `SOCKS5ClientEndpoint` or
`SOCKS4ClientEndpoint` that reaches it through the proxy.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IResolutionReceiver
from zope.interface import implementer

from txsocksgss.cli.proxy_url import ProxyURL
from txsocksgss.cli.status import UsageError
from txsocksgss.client.endpoints import DEFAULT_TIMEOUT, SOCKS4ClientEndpoint, SOCKS5ClientEndpoint
from txsocksgss.errors import ProtocolError, SOCKSError
from txsocksgss.interfaces import IClientAuthenticatorFactory

__all__ = ["DestinationLookupError", "resolve_destination", "build_endpoint"]


class DestinationLookupError(SOCKSError):
    """The client could not resolve the destination name (``socks5://``, ``socks4://``)."""


@implementer(IResolutionReceiver)
class _FirstAddress:
    def __init__(self, host: str) -> None:
        self.host = host
        self.addresses: list[str] = []
        self.result: Deferred[str] = Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        if self.addresses:
            self.result.callback(self.addresses[0])
        else:
            self.result.errback(DestinationLookupError(f"cannot resolve {self.host}"))


def resolve_destination(reactor: Any, proxy: ProxyURL, host: str) -> Deferred[str]:
    """
    The host to put in the request for ``host``: itself for an IP literal
    or when the proxy resolves names (``socks5h``, ``socks4a``); otherwise
    the first address the reactor's name resolver gives (IPv4 or IPv6 for
    ``socks5``, IPv4 only for ``socks4``).

    Fails with `DestinationLookupError` when the name has no usable address.
    """
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None or proxy.remote_dns:
        return succeed(host)
    from twisted.internet.address import IPv4Address, IPv6Address

    receiver = _FirstAddress(host)
    families = [IPv4Address] if proxy.version == 4 else [IPv4Address, IPv6Address]
    reactor.nameResolver.resolveHostName(receiver, host, 0, families, "TCP")
    return receiver.result


def build_endpoint(
    reactor: Any,
    proxy: ProxyURL,
    host: str,
    port: int,
    *,
    authenticators: Sequence[IClientAuthenticatorFactory] = (),
    userid: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> SOCKS5ClientEndpoint | SOCKS4ClientEndpoint:
    """
    The endpoint that reaches ``host``:``port`` through ``proxy``.

    ``host`` is what goes in the request, as `resolve_destination` gave it.
    The proxy is reached with a HostnameEndpoint (names, IPv4, IPv6) that
    gives up after ``timeout`` seconds; the handshake has ``timeout``
    seconds too.  SOCKS 5 offers ``authenticators`` in order (no
    authentication when empty); SOCKS 4 sends ``userid`` (default: the
    local user name) and asks for 4a when ``host`` is a name.

    :raise UsageError: a destination the protocol cannot carry.
    """
    from twisted.internet.endpoints import HostnameEndpoint

    to_proxy = HostnameEndpoint(reactor, proxy.host, proxy.port, timeout=timeout)
    try:
        if proxy.version == 5:
            return SOCKS5ClientEndpoint(to_proxy, host, port, list(authenticators),
                                        timeout=timeout, clock=reactor)
        return SOCKS4ClientEndpoint(to_proxy, host, port, userid, timeout=timeout, clock=reactor)
    except (ProtocolError, ValueError) as error:
        raise UsageError(f"cannot ask the proxy for {host} port {port}: {error}") from None
