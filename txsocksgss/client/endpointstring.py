"""
Endpoint description strings for the SOCKS client endpoints, so that
anything taking a ``clientFromString`` description (``twistd`` plugins,
configuration files, command lines) can go through a SOCKS proxy.

The parsers here provide
`twisted.internet.interfaces.IStreamClientEndpointStringParserWithReactor`;
``twisted/plugins/socksgss_endpoints.py`` declares one object of each so
that Twisted's plugin system finds them.

Grammar
=======

::

    socks5:PROXYHOST[:PROXYPORT]:host=DEST:port=DESTPORT
           [:user=USER:password=PASSWORD][:methods=LIST]
           [:timeout=SECONDS][:proxy=ENDPOINT]
    socks4:PROXYHOST[:PROXYPORT]:host=IPV4:port=DESTPORT
           [:userid=USERID][:timeout=SECONDS][:proxy=ENDPOINT]
    socks4a:PROXYHOST[:PROXYPORT]:host=DEST:port=DESTPORT
           [:userid=USERID][:timeout=SECONDS][:proxy=ENDPOINT]

Keys may come in any order.  ``host``, ``port`` and a proxy (``PROXYHOST``
or ``proxy=``) are required; everything else is optional.  Twisted splits
the string at ``:`` and at the first ``=`` of each field; a backslash makes
the next character literal (so an IPv6 address is written ``\\:\\:1``, or
in brackets as ``[\\:\\:1]``, either way with its colons escaped).

The proxy
    ``PROXYHOST:PROXYPORT`` (or the keywords ``proxyhost=``/``proxyport=``)
    reaches the proxy with a `HostnameEndpoint`.  ``PROXYPORT`` defaults to
    1080, the port RFC 1928 s3 names for SOCKS.  Instead,
    ``proxy=ENDPOINT`` takes any client endpoint description, parsed with
    ``clientFromString``: TLS to the proxy (``proxy=tls\\:proxy.example\\:1080``,
    which needs pyOpenSSL), a UNIX socket, or another SOCKS endpoint, which
    chains proxies.  Each level of nesting escapes again: a colon inside
    the inner description is ``\\:``, and one inside a description nested
    in that is ``\\\\\\:``.  ``proxy=`` and ``PROXYHOST`` together are an
    error.

The destination
    ``host=`` is an IPv4 address, an IPv6 address or a host name; names are
    sent to the proxy to resolve (SOCKS 5 DOMAINNAME, SOCKS 4a), never
    resolved locally.  ``port=`` is 1 to 65535.  ``socks4`` accepts only IPv4
    addresses: the parser does not resolve names, so a name is an error that
    points to ``socks4a``.  Neither SOCKS 4 form can carry IPv6.

Authentication (``socks5``)
    ``user=`` and ``password=`` come together (1 to 255 bytes of UTF-8
    each).  With them the client offers both username/password (RFC 1929)
    and no authentication, username/password first, and the proxy picks
    (RFC 1928 s3), as curl does: a proxy that needs no login still works,
    and the credentials are sent only to a proxy that selects method 0x02.
    ``methods=`` overrides the offer with a comma-separated list in order
    of preference, of ``none`` and ``userpass`` (``methods=userpass`` never
    falls back to an anonymous session).  Without credentials the offer is
    ``none``.

GSS-API (``socks5``, RFC 1961)
    ``methods=gssapi`` or any ``gssapi_*`` key offers GSS-API, first: by
    default the offer is gssapi, then userpass (with credentials), then
    none, as curl does; ``methods=`` restricts it.  Keys:
    ``gssapi_service`` (default ``rcmd``), ``gssapi_host`` (default
    PROXYHOST; the target is ``SERVICE@HOST``), ``gssapi_principal`` (a full
    target principal instead), ``gssapi_mech`` (``krb5`` or ``spnego``),
    ``gssapi_ccache`` (a credential cache path), ``gssapi_protection`` (the
    level to request: ``confidentiality``, ``integrity`` or ``clear``),
    ``gssapi_accept`` (comma-separated levels accepted in the answer;
    default: the one requested), ``gssapi_nec`` and ``gssapi_delegate``
    (``true``/``false``).

MAF (``socks5``, method 0x08)
    ``methods=maf:maf_submethods=userpass+gssapi`` offers the
    Multi-Authentication Framework with those sub-methods, in that order;
    each takes its own settings (``user=``/``password=``, ``gssapi_*``).

``userid=`` (``socks4``, ``socks4a``)
    The SOCKS 4 USERID field; it may be empty.  Default: the local user name.

``timeout=``
    Seconds for the whole SOCKS handshake, a positive number, or ``none``
    for no limit.  Default: `txsocksgss.client.endpoints.DEFAULT_TIMEOUT`.
    It does not limit the connection to the proxy (give ``proxy=`` with the
    inner endpoint's own ``timeout=`` for that).

Examples::

    socks5:127.0.0.1:1080:host=example.com:port=80
    socks5:proxy.example:host=example.com:port=443:user=bob:password=s3cret
    socks5:host=example.com:port=80:proxy=tls\\:proxy.example\\:1080
    socks5:host=example.com:port=80:proxy=socks5\\:first.example\\:1080\\:host=second.example\\:port=1080
    socks4a:proxy.example:1080:host=example.com:port=80:userid=bob

Every malformed description raises `ValueError` whose message names the
prefix and the offending key; a password never appears in a message.
Percent-encoding is not decoded.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any, Mapping, Sequence

from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin
from zope.interface import implementer

from txsocksgss.auth.registry import (
    CLIENT_METHOD_NAMES,
    SUBMETHOD_NAMES,
    ClientOptions,
    MissingClientSetting,
    build_client,
)
from txsocksgss.client.endpoints import DEFAULT_TIMEOUT, SOCKS4ClientEndpoint, SOCKS5ClientEndpoint
from txsocksgss.errors import ConfigError, ProtocolError
from txsocksgss.interfaces import IClientAuthenticatorFactory
from txsocksgss.wire.socks5 import Address, AddressType

__all__ = [
    "DEFAULT_PROXY_PORT",
    "SOCKS5EndpointStringParser",
    "SOCKS4EndpointStringParser",
    "SOCKS4aEndpointStringParser",
]

DEFAULT_PROXY_PORT = 1080
"""The proxy port when a description names a proxy host without one (RFC 1928 s3)."""

_PORT = re.compile(r"[0-9]{1,5}")
_COMMON_KEYS = frozenset({"host", "port", "timeout", "proxy", "proxyhost", "proxyport"})
_METHOD_NAMES = CLIENT_METHOD_NAMES
_GSSAPI_KEYS = (
    "gssapi_service", "gssapi_host", "gssapi_principal", "gssapi_mech", "gssapi_ccache",
    "gssapi_protection", "gssapi_accept", "gssapi_nec", "gssapi_delegate",
)


def _text(value: Any) -> str:
    # clientFromString hands over bytes when the description was bytes.
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


class _SOCKSEndpointStringParser:
    """
    The keys every prefix shares: the proxy, the destination, the timeout.
    A subclass names its ``prefix``, its extra keys and builds the endpoint.
    """

    prefix: str
    _extraKeys: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} prefix={self.prefix!r}>"

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> IStreamClientEndpoint:
        """
        Build the endpoint a ``PREFIX:...`` description names (the grammar is
        in this module's docstring).

        :param reactor: reaches the proxy and times the handshake.
        :param args: the positional fields after the prefix (PROXYHOST, PROXYPORT).
        :param kwargs: the ``key=value`` fields.
        :raises ValueError: the description is malformed.
        """
        positional = [_text(arg) for arg in args]
        keys = {key: _text(value) for key, value in kwargs.items()}
        allowed = _COMMON_KEYS | self._extraKeys
        unknown = sorted(set(keys) - allowed)
        if unknown:
            raise self._error(
                f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                f"(known: {', '.join(sorted(allowed))})"
            )
        proxy, proxy_host = self._proxy(reactor, positional, keys)
        if "host" not in keys:
            raise self._error("missing host=DESTINATION")
        if "port" not in keys:
            raise self._error("missing port=DESTINATION_PORT")
        destination = self._destination(keys["host"], self._port(keys["port"], "port"))
        timeout = self._timeout(keys.get("timeout"))
        return self._build(reactor, proxy, destination, timeout, keys, proxy_host)

    def _build(self, reactor: Any, proxy: IStreamClientEndpoint, destination: Address,
               timeout: float | None, keys: Mapping[str, str], proxy_host: str | None) -> IStreamClientEndpoint:
        raise NotImplementedError

    def _error(self, message: str) -> ValueError:
        return ValueError(f"{self.prefix} endpoint description: {message}")

    def _proxy(self, reactor: Any, positional: Sequence[str],
               keys: Mapping[str, str]) -> tuple[IStreamClientEndpoint, str | None]:
        if len(positional) > 2:
            raise self._error(
                f"{len(positional)} positional fields {positional!r}; expected at most "
                "PROXYHOST:PROXYPORT (escape the colons of an IPv6 address as \\:)"
            )
        host = positional[0] if positional else None
        port = positional[1] if len(positional) > 1 else None
        if "proxyhost" in keys:
            if host is not None:
                raise self._error("the proxy host is given both as a positional field and as proxyhost=")
            host = keys["proxyhost"]
        if "proxyport" in keys:
            if port is not None:
                raise self._error("the proxy port is given both as a positional field and as proxyport=")
            port = keys["proxyport"]
        if "proxy" in keys:
            if host is not None or port is not None:
                raise self._error("give either PROXYHOST[:PROXYPORT] or proxy=ENDPOINT, not both")
            return self._innerEndpoint(reactor, keys["proxy"]), None
        if host is None:
            if port is not None:
                raise self._error("proxyport= without a proxy host")
            raise self._error("no proxy: give PROXYHOST[:PROXYPORT] or proxy=ENDPOINT")
        host = _unbracket(host)
        if not host:
            raise self._error("the proxy host is empty")
        proxyPort = DEFAULT_PROXY_PORT if port is None else self._port(port, "the proxy port")
        return HostnameEndpoint(reactor, host, proxyPort), host

    def _innerEndpoint(self, reactor: Any, description: str) -> IStreamClientEndpoint:
        if not description:
            raise self._error("proxy= is empty")
        try:
            return clientFromString(reactor, description)
        except Exception as error:
            # Twisted's parsers raise many kinds of error for a bad
            # description: ValueError for an unknown prefix, TypeError for a
            # missing or unknown argument, even NameError for ``tls:``
            # without pyOpenSSL.  Callers get one kind, with the cause chained.
            raise self._error(f"proxy={description!r} is not a usable endpoint description: {error}") from error

    def _port(self, text: str, what: str) -> int:
        if _PORT.fullmatch(text) is None or not 1 <= int(text) <= 0xFFFF:
            raise self._error(f"{what} {text!r} is not a port number (1 to 65535)")
        return int(text)

    def _timeout(self, text: str | None) -> float | None:
        if text is None:
            return DEFAULT_TIMEOUT
        if text.lower() == "none":
            return None
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            raise self._error(f"timeout {text!r} is not a positive number of seconds (or none)")
        return seconds

    def _destination(self, host: str, port: int) -> Address:
        host = _unbracket(host)
        if not host:
            raise self._error("host= is empty")
        try:
            return Address.of(host, port)
        except ProtocolError as error:
            raise self._error(f"host {_shorten(host)!r}: {error}") from error


def _shorten(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unbracket(host: str) -> str:
    """``[2001:db8::1]`` -> ``2001:db8::1``; anything else unchanged."""
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return host
        return inner
    return host


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class SOCKS5EndpointStringParser(_SOCKSEndpointStringParser):
    """
    ``socks5:`` descriptions; builds a `SOCKS5ClientEndpoint`.

    Extra keys: ``user``, ``password``, ``methods`` (see the module docstring).
    """

    prefix = "socks5"
    _extraKeys = frozenset({"user", "password", "methods", "maf_submethods"}) | frozenset(_GSSAPI_KEYS)

    def _build(self, reactor: Any, proxy: IStreamClientEndpoint, destination: Address,
               timeout: float | None, keys: Mapping[str, str], proxy_host: str | None) -> IStreamClientEndpoint:
        methods = self._methods(keys, proxy_host)
        return SOCKS5ClientEndpoint(proxy, destination.host, destination.port, methods,
                                    timeout=timeout, clock=reactor)

    def _gssapi(self, keys: Mapping[str, str], proxy_host: str | None) -> dict[str, Any] | None:
        """The GSS-API client side's settings (keyword arguments), or None when no key asks for it."""
        given = {k: v for k, v in keys.items() if k in _GSSAPI_KEYS}
        wanted = (given or "gssapi" in [n.strip().lower() for n in keys.get("methods", "").split(",")]
                  or "gssapi" in [n.strip() for n in keys.get("maf_submethods", "").split("+")])
        if not wanted:
            return None
        from txsocksgss.auth.gssapi import parse_levels

        try:
            host = given.get("gssapi_host", proxy_host)
            if host is None and "gssapi_principal" not in given:
                raise ConfigError("with proxy= give gssapi_host= or gssapi_principal= for the service name")
            level = parse_levels(given.get("gssapi_protection", "confidentiality"))
            if len(level) != 1:
                raise ConfigError("gssapi_protection= names the one level to request")
            accept = parse_levels(given["gssapi_accept"]) if "gssapi_accept" in given else None
            return {
                "host": host,
                "service": given.get("gssapi_service", "rcmd"),
                "principal": given.get("gssapi_principal"),
                "mechanism": given.get("gssapi_mech", "krb5"),
                "ccache": given.get("gssapi_ccache"),
                "level": level[0],
                "accept": accept,
                "nec": self._flag(given, "gssapi_nec"),
                "delegate": self._flag(given, "gssapi_delegate"),
            }
        except ConfigError as error:
            raise self._error(str(error)) from error

    def _submethods(self, keys: Mapping[str, str]) -> tuple[str, ...]:
        names = [n.strip() for n in keys.get("maf_submethods", "").split("+") if n.strip()]
        if not names:
            raise self._error(f"methods=maf needs maf_submethods=SUB+SUB ({', '.join(SUBMETHOD_NAMES)})")
        for name in names:
            if name not in SUBMETHOD_NAMES:
                raise self._error(f"unknown MAF sub-method {name!r} (known: {', '.join(SUBMETHOD_NAMES)})")
        return tuple(names)

    def _flag(self, keys: Mapping[str, str], name: str) -> bool:
        value = keys.get(name, "false").lower()
        if value not in ("true", "false", "yes", "no", "1", "0"):
            raise self._error(f"{name}={value!r} is not true or false")
        return value in ("true", "yes", "1")

    def _methods(self, keys: Mapping[str, str], proxy_host: str | None = None) -> list[IClientAuthenticatorFactory]:
        gssapi = self._gssapi(keys, proxy_host)
        if ("user" in keys) != ("password" in keys):
            raise self._error("user= and password= must be given together")
        has_credentials = "user" in keys
        if "methods" in keys:
            names = [name.strip().lower() for name in keys["methods"].split(",")]
            for name in names:
                if name not in _METHOD_NAMES:
                    raise self._error(f"unknown method {name!r} in methods= (known: {', '.join(_METHOD_NAMES)})")
            if len(set(names)) != len(names):
                raise self._error(f"methods={keys['methods']!r} names a method twice")
        else:
            names = (["gssapi"] if gssapi is not None else []) + (["userpass"] if has_credentials else [])
            names.append("none")
        if "userpass" in names and not has_credentials:
            raise self._error("methods= offers userpass but user= and password= are missing")
        if has_credentials and "userpass" not in names and "maf" not in names:
            raise self._error("user= and password= are given but methods= does not offer userpass")
        options = ClientOptions(keys.get("user"), keys.get("password"), gssapi,
                                self._submethods(keys) if "maf" in names else ())
        try:
            return [build_client(name, options) for name in names]
        except MissingClientSetting as missing:
            raise self._error(f"MAF sub-method {missing.method} needs its settings "
                              "(user=/password= or gssapi_*)") from missing
        except ProtocolError as error:
            # The wire error names only the field and its length, never the value.
            raise self._error(f"bad credentials: {error}") from error
        except ConfigError as error:
            raise self._error(str(error)) from error


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class SOCKS4EndpointStringParser(_SOCKSEndpointStringParser):
    """
    ``socks4:`` descriptions; builds a `SOCKS4ClientEndpoint` to an IPv4
    destination.  Extra key: ``userid``.
    """

    prefix = "socks4"
    _extraKeys = frozenset({"userid"})
    _namesAllowed = False

    def _build(self, reactor: Any, proxy: IStreamClientEndpoint, destination: Address,
               timeout: float | None, keys: Mapping[str, str], proxy_host: str | None) -> IStreamClientEndpoint:
        if destination.type == AddressType.IPV6:
            raise self._error(f"host {destination.host!r} is IPv6, which SOCKS 4 cannot carry; use socks5")
        if destination.type == AddressType.DOMAIN and not self._namesAllowed:
            raise self._error(
                f"host {destination.host!r} is a name, and SOCKS 4 carries only IPv4 addresses; "
                "use socks4a to have the proxy resolve it, or give an IPv4 address"
            )
        try:
            return SOCKS4ClientEndpoint(proxy, destination.host, destination.port, keys.get("userid"),
                                        timeout=timeout, clock=reactor)
        except (ProtocolError, ValueError) as error:
            raise self._error(str(error)) from error


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class SOCKS4aEndpointStringParser(SOCKS4EndpointStringParser):
    """``socks4a:`` descriptions: as ``socks4``, and a host name goes to the proxy to resolve."""

    prefix = "socks4a"
    _namesAllowed = True
