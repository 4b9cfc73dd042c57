"""
The only module of txsocksgss that touches private names of Twisted.

Each use is behind a function named for what it does, and each fast path
that depends on one can be turned off: `probe` (run when a server starts,
`txsocksgss.server.service.SOCKSService.startService`) checks that the
installed Twisted still has the shape each function expects, turns off the
fast paths whose shape is gone (with one log line saying why), and every
function then takes its safe way.  A test fails when a private Twisted name
appears in any other module (tests/test_layers.py), and setup.cfg bounds
Twisted to the versions the suite has passed on.

What each private name buys:

- ``FileDescriptor._tempDataLen`` (with the public ``dataBuffer``): whether
  a TCP connection still holds bytes to write.  A reply may go straight
  onto the socket, and a socket may be spliced, only when it holds none.
  Without it: nothing is written straight, nothing spliced.
- ``HAProxyProtocolWrapper`` and ``_proxyInfo`` (twisted.protocols.haproxy):
  the connection under a PROXY-protocol wrapper, and whether its header
  has arrived.  Without it: ``haproxy:`` sessions are not spliced, and
  a session behind it starts at once, with the balancer's address.
- ``EPollReactor._selectables`` / ``_reads`` / ``_writes``: a socket
  registered for reading is handed from one reader to another without two
  epoll_ctl calls.  Without it: removeReader then addReader.
- ``tcp.Connection._shouldShutdown``: a connection whose both directions
  have ended is closed at once, without the shutdown(2) before close.
  Without it: loseConnection.
- ``StreamServerEndpointService._raiseSynchronously`` /
  ``_waitingForPort``: a listen error stops twistd at start-up (as
  twisted.application.strports arranges), and the listening port is known.
  These are the service's own contract in practice; without them a listen
  error is logged instead of raised, and `listening_port` fails.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

__all__ = [
    "awaiting_proxy_header",
    "close_without_shutdown",
    "enabled",
    "has_pending_writes",
    "listening_port",
    "probe",
    "raise_listen_errors",
    "take_over_reader",
    "unwrap_proxy_protocol",
]

_log = Logger()

try:
    from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
except ImportError:  # pragma: no cover - a Twisted without it
    HAProxyProtocolWrapper = None  # type: ignore[assignment,misc]

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover - no epoll on this platform
    EPollReactor = None  # type: ignore[assignment,misc]

#: The fast paths that depend on a private name, and whether each is on.
_ENABLED = {
    "pending-writes": True,
    "proxy-protocol": HAProxyProtocolWrapper is not None,
    "epoll-handover": EPollReactor is not None,
    "close-at-once": True,
}


def enabled(fast_path: str) -> bool:
    """Whether ``fast_path`` (a key of the probe) is on."""
    return _ENABLED[fast_path]


def _turn_off(fast_path: str, why: str) -> None:
    if _ENABLED[fast_path]:
        _ENABLED[fast_path] = False
        _log.info("fast path {fast_path} off: {why}", fast_path=fast_path, why=why)


def probe(reactor: Any) -> dict[str, bool]:
    """
    Check the shape of the installed Twisted (and of ``reactor``) against
    what each function here expects; turn off, with a log line, each fast
    path whose shape is not there.  Returns the fast paths and whether each
    is on.
    """
    from twisted.internet import abstract, tcp
    from twisted.internet.protocol import Protocol

    if not isinstance(getattr(abstract.FileDescriptor(reactor), "_tempDataLen", None), int):
        _turn_off("pending-writes", "twisted.internet.abstract.FileDescriptor has no _tempDataLen")
    if HAProxyProtocolWrapper is None:
        _turn_off("proxy-protocol", "twisted.protocols.haproxy._wrapper.HAProxyProtocolWrapper is missing")
    else:
        try:
            wrapper = HAProxyProtocolWrapper(None, Protocol())  # type: ignore[arg-type]
        except Exception as error:  # a changed constructor
            _turn_off("proxy-protocol", f"HAProxyProtocolWrapper(factory, protocol) failed: {error!r}")
        else:
            if getattr(wrapper, "_proxyInfo", False) is not None:
                _turn_off("proxy-protocol", "HAProxyProtocolWrapper has no _proxyInfo of None before the header")
    if EPollReactor is not None and isinstance(reactor, EPollReactor):
        for name, kind in (("_selectables", dict), ("_reads", set), ("_writes", set)):
            if not isinstance(getattr(reactor, name, None), kind):
                _turn_off("epoll-handover", f"the epoll reactor has no {name} {kind.__name__}")
                break
    if not isinstance(getattr(tcp.Connection, "_shouldShutdown", None), bool):
        _turn_off("close-at-once", "twisted.internet.tcp.Connection has no _shouldShutdown")
    return dict(_ENABLED)


def has_pending_writes(connection: Any) -> bool:
    """
    Whether the Twisted TCP ``connection`` holds bytes it has not written
    yet (or cannot tell: then True, so that nothing is written past them).
    """
    if not _ENABLED["pending-writes"]:
        return True
    return bool(connection.dataBuffer or connection._tempDataLen)


def unwrap_proxy_protocol(transport: Any) -> Any:
    """
    The transport under a PROXY-protocol wrapper (``haproxy:``), which only
    reads a header before the session starts; any other transport as it is.
    """
    if _ENABLED["proxy-protocol"] and isinstance(transport, HAProxyProtocolWrapper):
        return transport.transport
    return transport


def awaiting_proxy_header(transport: Any) -> bool:
    """Whether ``transport`` is a PROXY-protocol wrapper whose header has not arrived yet."""
    if not _ENABLED["proxy-protocol"] or not isinstance(transport, HAProxyProtocolWrapper):
        return False
    return getattr(transport, "_proxyInfo", False) is None


def take_over_reader(reactor: Any, fd: int, reader: Any, new_reader: Any) -> bool:
    """
    Make ``new_reader`` the reader of ``fd`` in place of ``reader``, without
    touching epoll, when ``reactor`` is Twisted's epoll reactor and ``fd``
    is registered for reading only, by ``reader``.  False if not done (the
    caller then uses removeReader and addReader).
    """
    if (not _ENABLED["epoll-handover"] or EPollReactor is None or not isinstance(reactor, EPollReactor)
            or fd not in reactor._reads or fd in reactor._writes or reactor._selectables.get(fd) is not reader):
        return False
    reactor._selectables[fd] = new_reader
    return True


def close_without_shutdown(transport: Any, reason: Any) -> bool:
    """
    Close the TCP ``transport`` now, reporting ``reason``, without the
    shutdown(2) Twisted does before close (both directions have ended, so
    it has nothing left to do).  False if not done (use loseConnection).
    """
    if not _ENABLED["close-at-once"]:
        return False
    if transport.connected:
        transport._shouldShutdown = False
        transport.connectionLost(reason)
    return True


def raise_listen_errors(service: Any) -> None:
    """
    Have a StreamServerEndpointService (or a metrics listener) raise its
    listen error from startService, stopping twistd at start-up, as
    twisted.application.strports.service arranges.
    """
    service._raiseSynchronously = True


def listening_port(service: Any) -> Any:
    """The Deferred of a started StreamServerEndpointService that fires with its listening port (None before start)."""
    return getattr(service, "_waitingForPort", None)

