"""
Reaching a destination: name resolution, outgoing TCP connections, and the
SOCKS reply code that each way of failing maps to (docs/protocol.rst,
SOCKS 5 reply codes).
"""

from __future__ import annotations

import errno
import ipaddress
from functools import lru_cache
from typing import Any

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IHostnameResolver, IResolutionReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.wire.socks5 import ReplyCode

__all__ = ["DestinationUnresolved", "resolve", "reply_code_for", "is_ip_literal", "ip_literal"]


class DestinationUnresolved(Exception):
    """A host name resolved to no address (or the lookup failed)."""


@lru_cache(maxsize=4096)
def ip_literal(host: str) -> str | None:
    """
    ``host`` in canonical text form if it is an IPv4 or IPv6 address, else
    None (a name).  Cached: every session asks about its client and its
    destination, and parsing costs more than the rest of a short request.
    """
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def is_ip_literal(host: str) -> bool:
    """True if ``host`` is an IPv4 or IPv6 address in text form."""
    return ip_literal(host) is not None


@implementer(IResolutionReceiver)
class _Collector:
    def __init__(self, host: str) -> None:
        self.host = host
        self.addresses: list[str] = []
        self.resolution: Any = None
        self.deferred: Deferred[list[str]] = Deferred(self._cancel)

    def _cancel(self, deferred: Deferred[list[str]]) -> None:
        # The session ended (negotiation timeout, client gone) while the
        # lookup ran.  Stop the lookup if the resolver can; Twisted's own
        # resolvers cannot (their cancel raises NotImplementedError), and
        # then a late answer is ignored (resolutionComplete below).
        cancel = getattr(self.resolution, "cancel", None)
        if cancel is not None:
            try:
                cancel()
            except NotImplementedError:
                pass

    def resolutionBegan(self, resolution: Any) -> None:
        self.resolution = resolution

    def addressResolved(self, address: Any) -> None:  # an IPv4Address or IPv6Address
        if address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        if self.deferred.called:  # cancelled while the lookup ran
            return
        if self.addresses:
            self.deferred.callback(self.addresses)
        else:
            self.deferred.errback(DestinationUnresolved(f"{self.host!r} did not resolve"))


def resolve(resolver: IHostnameResolver, host: str, port: int) -> Deferred[list[str]]:
    """
    Resolve ``host`` to a list of IP address strings, in the resolver's order.

    IP literals are returned as they are, without a lookup.  Fails with
    `DestinationUnresolved` when the name has no address (DNS failure:
    REP 04), or is no host name at all (it cannot be encoded with IDNA).  The Deferred has no time limit of its own (the negotiation
    timeout bounds it); cancelling it fails it with CancelledError and
    cancels the lookup when the resolver supports that.
    """
    literal = ip_literal(host)
    if literal is not None:
        return succeed([literal])
    try:
        # A name no resolver can look up (a label over 63 characters, say):
        # Twisted's resolver would fail in its thread and never answer.
        host.encode("idna")
    except UnicodeError as error:
        return fail(DestinationUnresolved(f"{host!r} is not a host name ({error})"))
    collector = _Collector(host)
    resolution = resolver.resolveHostName(collector, host, portNumber=port)
    if collector.resolution is None:
        collector.resolution = resolution
    return collector.deferred


def reply_code_for(failure: Failure | BaseException) -> ReplyCode:
    """
    The SOCKS 5 reply code for a failure to reach a destination.

    ECONNREFUSED -> 05, no address -> 04, ENETUNREACH -> 03,
    EHOSTUNREACH -> 04, a timeout -> 06, anything else -> 01.
    """
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, ierror.ConnectionRefusedError):
        return ReplyCode.CONNECTION_REFUSED
    if isinstance(exc, (DestinationUnresolved, ierror.DNSLookupError)):
        return ReplyCode.HOST_UNREACHABLE
    if isinstance(exc, (ierror.TimeoutError, ierror.TCPTimedOutError)):
        return ReplyCode.TTL_EXPIRED
    if isinstance(exc, ierror.NoRouteError):
        return ReplyCode.NETWORK_UNREACHABLE
    os_error = getattr(exc, "osError", None)
    if os_error in (errno.ENETUNREACH, errno.ENETDOWN):
        return ReplyCode.NETWORK_UNREACHABLE
    if os_error in (errno.EHOSTUNREACH, errno.EHOSTDOWN):
        return ReplyCode.HOST_UNREACHABLE
    if os_error == errno.ECONNREFUSED:
        return ReplyCode.CONNECTION_REFUSED
    if os_error == errno.ETIMEDOUT:
        return ReplyCode.TTL_EXPIRED
    return ReplyCode.GENERAL_FAILURE


