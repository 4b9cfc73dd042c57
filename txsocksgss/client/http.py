"""
HTTP and HTTPS through a SOCKS proxy with Twisted's `Agent`.

`SOCKSAgentEndpointFactory` tells an Agent how to reach each URI's host::

    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.web.client import Agent, readBody
    from txsocksgss.client.http import SOCKSAgentEndpointFactory

    proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", 1080)
    agent = Agent.usingEndpointFactory(reactor, SOCKSAgentEndpointFactory(proxy))
    response = await agent.request(b"GET", b"https://example.com/")
    body = await readBody(response)

Host names in URIs are sent to the proxy to resolve (SOCKS 5 DOMAINNAME or
SOCKS 4a), so the client does no DNS of its own.

TLS: `Agent.usingEndpointFactory` uses the endpoint it is given as it is;
only Agent's own default endpoint factory adds TLS for ``https``.  So for
``https`` (and ``wss``) URIs this factory wraps the SOCKS endpoint with
`wrapClientTLS`, using the ``contextFactory`` policy (an `IPolicyForHTTPS`,
by default `BrowserLikePolicyForHTTPS`, the same default as `Agent`).  TLS
then runs end to end with the origin server inside the SOCKS tunnel; the
proxy sees only ciphertext.  HTTPS needs Twisted's TLS extra (pyOpenSSL,
service_identity); plain HTTP does not.

Pass the same `HTTPConnectionPool` to several requests to keep connections
(and so SOCKS tunnels) open between them; the pool keys them by scheme,
host and port as usual.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import BrowserLikePolicyForHTTPS, URI
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from txsocksgss.client.endpoints import DEFAULT_TIMEOUT, SOCKS4ClientEndpoint, SOCKS5ClientEndpoint
from txsocksgss.interfaces import IClientAuthenticatorFactory

__all__ = ["SOCKSAgentEndpointFactory"]

_PLAIN_SCHEMES = frozenset({b"http", b"ws"})
_TLS_SCHEMES = frozenset({b"https", b"wss"})


@implementer(IAgentEndpointFactory)
class SOCKSAgentEndpointFactory:
    """
    An `IAgentEndpointFactory` whose endpoints reach every URI's host and
    port through one SOCKS proxy.

    :param proxyEndpoint: an endpoint that reaches the proxy (TCP, TLS, or
        another SOCKS endpoint for a chain).
    :param methods: SOCKS 5 client authenticator factories in order of
        preference (default: no authentication).  Not allowed with version 4.
    :param version: 5 for SOCKS 5, or 4 for SOCKS 4 (IPv4 destinations) and
        4a (host names, which the proxy resolves).
    :param contextFactory: the `IPolicyForHTTPS` that makes the TLS client
        settings for ``https`` URIs (default: `BrowserLikePolicyForHTTPS`,
        which checks the certificate against the system's trust roots and
        the URI's host).
    :param timeout: seconds for each SOCKS handshake (``None``: no limit).
    :param userid: the SOCKS 4 USERID (default: the local user name); only
        with version 4.
    :param clock: IReactorTime for the handshake timeout (default: the reactor).
    :raises ValueError: an unknown version, or an option that the version
        does not use.
    """

    def __init__(
        self,
        proxyEndpoint: IStreamClientEndpoint,
        methods: Sequence[IClientAuthenticatorFactory] | None = None,
        version: int = 5,
        *,
        contextFactory: IPolicyForHTTPS | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        userid: str | bytes | None = None,
        clock: Any = None,
    ) -> None:
        if version not in (4, 5):
            raise ValueError(f"SOCKS version {version!r}; expected 4 or 5")
        if version == 4 and methods:
            raise ValueError("SOCKS 4 has no authentication methods; use userid= instead")
        if version == 5 and userid is not None:
            raise ValueError("userid= is the SOCKS 4 USERID; SOCKS 5 authenticates with methods=")
        self.proxyEndpoint = proxyEndpoint
        self.methods = tuple(methods) if methods else None
        self.version = version
        self.contextFactory = contextFactory if contextFactory is not None else BrowserLikePolicyForHTTPS()
        self.timeout = timeout
        self.userid = userid
        self._clock = clock

    def __repr__(self) -> str:
        return f"<SOCKSAgentEndpointFactory SOCKS {self.version} via {self.proxyEndpoint!r}>"

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        """
        The endpoint for ``uri``: a SOCKS tunnel to its host and port, inside
        TLS for ``https`` and ``wss``.

        :raises SchemeNotSupported: a scheme other than http, https, ws, wss.
        :raises ValueError: a host that is not ASCII, or that the SOCKS version
            cannot carry (IPv6 with SOCKS 4).
        :raises txsocksgss.errors.InvalidField: a host name too long for SOCKS
            (over 255 bytes).
        """
        if uri.scheme not in _PLAIN_SCHEMES | _TLS_SCHEMES:
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host of the URI ({uri.host!r}) is not ASCII; give it IDNA-encoded") from None
        endpoint: IStreamClientEndpoint
        if self.version == 5:
            endpoint = SOCKS5ClientEndpoint(self.proxyEndpoint, host, uri.port, self.methods,
                                            timeout=self.timeout, clock=self._clock)
        else:
            endpoint = SOCKS4ClientEndpoint(self.proxyEndpoint, host, uri.port, self.userid,
                                            timeout=self.timeout, clock=self._clock)
        if uri.scheme in _TLS_SCHEMES:
            creator = self.contextFactory.creatorForNetloc(uri.host, uri.port)
            return wrapClientTLS(creator, endpoint)
        return endpoint
