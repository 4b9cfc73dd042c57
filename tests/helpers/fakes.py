"""
Fakes for unit tests of the server on twisted.internet.testing: resolvers
that answer from a dict, never answer, or never answer but can be
cancelled; a StringTransport that can half-close; and a MemoryReactorClock
that can open UDP ports.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

__all__ = [
    "FakeResolver",
    "FakeUDPPort",
    "HalfCloseableStringTransport",
    "HangingResolver",
    "Resolution",
    "SilentResolver",
    "UDPMemoryReactor",
]


@implementer(IHostnameResolver)
class FakeResolver:
    """Answers from a dict and never asks the network; names not in it do not resolve.  ``asked`` lists the names."""

    def __init__(self, names: dict[str, list[str]] | None = None) -> None:
        self.names = names or {}
        self.asked: list[str] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        self.asked.append(hostName)
        receiver.resolutionBegan(None)
        for address in self.names.get(hostName, []):
            kind = IPv6Address if ":" in address else IPv4Address
            receiver.addressResolved(kind("TCP", address, portNumber))
        receiver.resolutionComplete()
        return None


@implementer(IHostnameResolver)
class HangingResolver:
    """Never answers; remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        self.asked.append(hostName)
        receiver.resolutionBegan(None)
        return None


class Resolution:
    """One lookup of `SilentResolver`: its name, and whether it was cancelled."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@implementer(IHostnameResolver)
class SilentResolver:
    """A name server that never answers; its resolutions (``resolutions``) note being cancelled."""

    def __init__(self) -> None:
        self.resolutions: list[Resolution] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        resolution = Resolution(hostName)
        self.resolutions.append(resolution)
        receiver.resolutionBegan(resolution)
        return resolution


class HalfCloseableStringTransport(StringTransport):
    """A StringTransport whose ``loseWriteConnection`` (a half-close) sets ``writeClosed``."""

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


class FakeUDPPort:
    """A UDP port of `UDPMemoryReactor`: keeps what is written as (data, address) in ``written``."""

    def __init__(self, protocol: Any, interface: str) -> None:
        self.protocol = protocol
        self.interface = interface
        self.written: list[tuple[bytes, Any]] = []
        self.listening = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface, 6000)

    def write(self, data: bytes, addr: Any) -> None:
        self.written.append((data, addr))

    def stopListening(self) -> None:
        self.listening = False


class UDPMemoryReactor(MemoryReactorClock):
    """MemoryReactorClock with listenUDP: the ports are kept in ``udpPorts``."""

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts: list[FakeUDPPort] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> FakeUDPPort:
        fake = FakeUDPPort(protocol, interface)
        protocol.transport = fake
        self.udpPorts.append(fake)
        return fake
