"""
The destination guard: destinations a proxy reachable from other hosts must
never connect to on a client's behalf, whatever the rules say.

Theory of operation.  A SOCKS server reachable from the network turns every
client into a guest on the proxy's host: without a guard, a client could
reach services that listen on loopback only (admin consoles, databases), the
link-local cloud metadata service (instance credentials at 169.254.169.254
and fd00:ec2::254), or the proxy itself (a loop that multiplies
connections).  `guard_verdict` is a pure function that names why an address
is guarded, or returns None; it runs on *resolved* addresses, after DNS, so a
name that resolves to 127.0.0.1 is caught like the literal.  The server asks
it before the access rules (`SOCKS5ServerProtocol.decide`), for CONNECT,
BIND (the host expected to connect) and each UDP datagram; a denial answers
REP 02 (SOCKS 4: 91) and logs ``destination guard (REASON)``.

Guarded: loopback (127.0.0.0/8, ::1), link-local (169.254.0.0/16,
fe80::/10), the cloud metadata addresses, the unspecified addresses
(0.0.0.0/8, ::, which Linux connects to the local host) and the proxy's own
addresses.  IPv4-mapped IPv6 addresses (::ffff:127.0.0.1) are judged as the
IPv4 address they carry.  For BIND an unspecified address means "any host"
(RFC 1928 s6), so it is not refused there.

The proxy's own addresses (`OwnAddresses`) are the addresses its listeners
bind, plus every address of the host when a listener binds the wildcard
address (0.0.0.0 or ::), since then any local address reaches the proxy.
"Every address of the host" is checked with a cheap trick instead of an
interface list: an address is local if a UDP socket can be bound to it (the
kernel refuses, with EADDRNOTAVAIL, an address no interface holds).  That
follows interfaces that come and go, costs three system calls, and needs no
psutil.  A host that allows binding non-local addresses
(net.ipv4.ip_nonlocal_bind, per family) would make every address look local,
so the trick is first tried on documentation addresses (192.0.2.254,
198.51.100.254, 203.0.113.254; 2001:db8::fe, 2001:db8:ffff::fe); where
binding all of a family's succeeds, a snapshot taken at start-up from
/proc/net/fib_trie, /proc/net/if_inet6 and the host name's addresses is used
instead.

`destination_guard_for` turns the ``--destination-guard`` setting (on, off,
auto: on when any listener is not loopback) into a `DestinationGuard` or None.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from typing import Callable, Container, Iterable, Sequence

from twisted.logger import Logger

from txsocksgss.server.config import endpoint_is_loopback, split_endpoint_description

__all__ = [
    "CLOUD_METADATA_ADDRESSES",
    "DestinationGuard",
    "GUARD_MODES",
    "GuardReason",
    "OwnAddresses",
    "destination_guard_for",
    "guard_verdict",
    "interface_addresses",
    "listener_interfaces",
    "local_addresses",
]

_log = Logger()

GUARD_MODES = ("on", "off", "auto")

#: Instance metadata services (AWS, GCP, Azure, OpenStack share the IPv4 one; AWS the IPv6 one).
CLOUD_METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})

_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
# Documentation addresses (RFC 5737, RFC 3849): hosts rarely hold them (test
# networks sometimes hold one), so binding all of a family's means the host
# binds anything.
_NEVER_LOCAL = {4: ("192.0.2.254", "198.51.100.254", "203.0.113.254"), 6: ("2001:db8::fe", "2001:db8:ffff::fe")}


class GuardReason(enum.Enum):
    """Why the guard refuses an address; the value appears in the log."""

    CLOUD_METADATA = "cloud metadata"
    UNSPECIFIED = "unspecified address"
    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    OWN_ADDRESS = "the proxy's own address"


def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return parsed.ipv4_mapped
        if parsed.scope_id is not None:
            parsed = ipaddress.IPv6Address(address.split("%", 1)[0])
    return parsed


def guard_verdict(address: str, own: Container[str] = frozenset(), *,
                  unspecified_means_any: bool = False) -> GuardReason | None:
    """
    Why the guard refuses ``address`` (an IP address as text), or None if it
    may be used.

    :param own: the proxy's own addresses (any container of address text in
        canonical form; `OwnAddresses` or a set).
    :param unspecified_means_any: BIND: an unspecified address names no
        destination (it means any host), so it is not refused.
    :return: the first matching `GuardReason`, most specific first; None for
        anything that is not an IP address (nothing can be reached there).
    """
    parsed = _parse(address)
    if parsed is None:
        return None
    if parsed in CLOUD_METADATA_ADDRESSES:
        return GuardReason.CLOUD_METADATA
    if parsed.is_unspecified or (parsed.version == 4 and parsed in _THIS_NETWORK):
        return None if unspecified_means_any else GuardReason.UNSPECIFIED
    if parsed.is_loopback:
        return GuardReason.LOOPBACK
    if parsed.is_link_local:
        return GuardReason.LINK_LOCAL
    if str(parsed) in own:
        return GuardReason.OWN_ADDRESS
    return None


def _bindable(address: str) -> bool:
    """True if a UDP socket can be bound to ``address`` on this host (see the module docstring)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def interface_addresses() -> frozenset[str]:
    """
    The addresses this host's interfaces hold now: IPv4 from
    /proc/net/fib_trie (``/32 host LOCAL`` entries), IPv6 from
    /proc/net/if_inet6 (Linux).  A file that cannot be read is skipped.
    """
    found: set[str] = set()
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as trie:
            last = None
            for line in trie:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif text.startswith("/32 host LOCAL") and last is not None:
                    found.add(last)
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as interfaces:
            for line in interfaces:
                fields = line.split()
                if fields and len(fields[0]) == 32:
                    found.add(str(ipaddress.IPv6Address(int(fields[0], 16))))
    except (OSError, ValueError):
        pass
    return _canonical(found)


def local_addresses() -> frozenset[str]:
    """`interface_addresses` and whatever the host name resolves to."""
    found: set[str] = set(interface_addresses())
    try:
        for *_ignored, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(sockaddr[0]))
    except OSError:
        pass
    return _canonical(found)


def _canonical(addresses: Iterable[str]) -> frozenset[str]:
    return frozenset(str(p) for p in map(_parse, addresses) if p is not None)


class OwnAddresses:
    """
    The proxy's own addresses, as a container of address text: ``fixed``
    (the listeners' addresses) and, with ``all_local``, every address of the
    host (see the module docstring for how that is checked).

    ``bindable`` and ``snapshot`` are replaceable for tests.
    """

    def __init__(self, fixed: Iterable[str] = (), all_local: bool = False, *,
                 bindable: Callable[[str], bool] = _bindable,
                 snapshot: Callable[[], frozenset[str]] = local_addresses) -> None:
        self.fixed = _canonical(fixed)
        self.all_local = all_local
        self._bindable = bindable
        self._trick_works = {version: not all(bindable(probe) for probe in probes)
                             for version, probes in _NEVER_LOCAL.items()}
        self._snapshot = snapshot() if all_local and not all(self._trick_works.values()) else frozenset()

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        parsed = _parse(address)
        if parsed is None:
            return False
        text = str(parsed)
        if text in self.fixed:
            return True
        if not self.all_local:
            return False
        if self._trick_works[parsed.version]:
            return self._bindable(text)
        return text in self._snapshot

    def describe(self) -> str:
        """For the start-up log line."""
        fixed = ", ".join(sorted(self.fixed)) or "none"
        if not self.all_local:
            return f"listener addresses {fixed}"
        how = "bind test" if all(self._trick_works.values()) else "start-up snapshot"
        return f"listener addresses {fixed} and every local address ({how})"


class DestinationGuard:
    """The guard of one server: `guard_verdict` with the server's own addresses."""

    def __init__(self, own: Container[str]) -> None:
        self.own = own

    def check(self, command: str, address: str) -> GuardReason | None:
        """Why ``address`` may not be used for ``command`` (connect, bind, udp), or None."""
        return guard_verdict(address, self.own, unspecified_means_any=command == "bind")


def listener_interfaces(descriptions: Iterable[str]) -> tuple[frozenset[str], bool]:
    """
    The IP addresses server endpoint strings listen on, and whether any of
    them listens on every address (a wildcard interface, or an endpoint type
    whose address cannot be told from the string: counted as wildcard, the
    safe side).  UNIX sockets have no IP address.
    """
    interfaces: set[str] = set()
    wildcard = False
    for description in descriptions:
        while description.lower().startswith("haproxy:"):
            description = description[len("haproxy:"):]
        kind, _positional, keywords = split_endpoint_description(description)
        if kind == "unix":
            continue
        if kind not in ("tcp", "tcp6", "ssl"):
            wildcard = True
            continue
        parsed = _parse(keywords.get("interface", "").strip("[]"))
        if parsed is None or parsed.is_unspecified:
            wildcard = True
        else:
            interfaces.add(str(parsed))
    return frozenset(interfaces), wildcard


def destination_guard_for(mode: str, listen: Sequence[str]) -> DestinationGuard | None:
    """
    The guard for the ``--destination-guard`` ``mode`` (on, off, auto) and the
    listeners ``listen`` (endpoint strings); None when it is off.  ``auto`` is
    on when any listener is not loopback (or a UNIX socket).
    """
    if mode not in GUARD_MODES:
        raise ValueError(f"destination guard must be one of {', '.join(GUARD_MODES)}, not {mode!r}")
    if mode == "off" or (mode == "auto" and all(endpoint_is_loopback(d) for d in listen)):
        return None
    interfaces, wildcard = listener_interfaces(listen)
    own = OwnAddresses(interfaces, all_local=wildcard)
    _log.info(
        "destination guard on ({mode}): denying loopback, link-local, cloud metadata, unspecified "
        "and own addresses ({own})",
        mode=mode, own=own.describe(),
    )
    return DestinationGuard(own)
