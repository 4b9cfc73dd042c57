"""
``socksgss connect``: join standard input and output to a host through a
SOCKS proxy, in the spirit of ``ncat --proxy``.

    socksgss connect --proxy socks5h://alice:s3cret@proxy.example:1080 example.com 80

Theory of operation.  Three layers, from pure to I/O:

1. `parse_proxy_url` turns a proxy URL, spelled as curl spells it, into a
   `ProxyURL`; `options_from_args` turns the parsed command line into a
   `ConnectOptions` (credentials, methods in order of preference, SOCKS 4
   user id).  Both are pure and raise `UsageError` for bad input.
2. `resolve_destination` decides where the destination name is resolved
   (locally for ``socks5://`` and ``socks4://``, by the proxy for
   ``socks5h://`` and ``socks4a://``) and `build_endpoint` builds the
   `SOCKS5ClientEndpoint` or `SOCKS4ClientEndpoint` for it.
3. The Twisted glue: `_StdioBridge` joins a
   `twisted.internet.stdio.StandardIO` to the tunnel (with flow control both
   ways and half-close), `_DatagramLines` joins it to a UDP association, and
   `run_connect` drives one of the three modes under `task.react`.

Exit status (`EXIT_OK` and the rest):

    0  the tunnel (or association) ended normally
    1  connection or reply failure: proxy unreachable, failure reply, lookup
       failure, timeout, protocol error, connection lost, interrupted
    2  usage error: bad option, bad proxy URL, missing credentials
    3  authentication failure: bad user name or password, or the proxy
       accepts none of the methods offered

Every failure is one line on standard error (``socksgss: ...``), never a
traceback (``-v`` adds one for internal errors) and never a password.
"""

from __future__ import annotations

import argparse
import enum
import ipaddress
import re
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectError, ConnectionDone, DNSLookupError, MessageLengthError
from twisted.internet.error import TimeoutError as TwistedTimeoutError
from twisted.internet.interfaces import IHalfCloseableProtocol, IResolutionReceiver
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txsocksgss.auth.none import NoAuthClientFactory
from txsocksgss.auth.userpass import UserPassClientFactory
from txsocksgss.client.endpoints import DEFAULT_TIMEOUT, SOCKS4ClientEndpoint, SOCKS5ClientEndpoint
from txsocksgss.errors import (
    ClientAuthenticationFailed,
    NoAcceptableMethod,
    ProtocolError,
    SOCKSError,
    SOCKSReplyError,
    TruncatedMessage,
)
from txsocksgss.interfaces import IClientAuthenticatorFactory
from txsocksgss.wire.socks5 import AuthMethod

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_AUTHENTICATION",
    "DEFAULT_PROXY_PORT",
    "CLIENT_METHODS",
    "Mode",
    "ProxyURL",
    "ProxyURLError",
    "UsageError",
    "Credentials",
    "ConnectOptions",
    "parse_proxy_url",
    "parse_proxy_user",
    "default_methods",
    "options_from_args",
    "build_authenticators",
    "resolve_destination",
    "build_endpoint",
    "describe_error",
    "add_connect_parser",
    "run_connect",
]

# Not imported from txsocksgss.cli: that module imports this one, and under
# ``python -m txsocksgss.cli`` it would be imported twice, circularly.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTHENTICATION = 3

#: The port a proxy URL without one means (curl's default for SOCKS).
DEFAULT_PROXY_PORT = 1080

_PROGRAM = "socksgss"
_COMMAND = "connect"


class UsageError(Exception):
    """Bad input from the command line: one line on stderr, exit status 2."""


class ProxyURLError(UsageError):
    """A proxy URL that cannot be used; the text says why, never the password."""


# --- proxy URLs -------------------------------------------------------------

# scheme -> (SOCKS version, whether the proxy resolves the destination name)
_SCHEMES: Mapping[str, tuple[int, bool]] = {
    "socks5": (5, False),
    "socks5h": (5, True),
    "socks4": (4, False),
    "socks4a": (4, True),
}
# What may not appear in an unbracketed host (RFC 3986 s3.2.2 reg-name, loosely,
# as curl is loose: non-ASCII names are let through for IDNA).
_BAD_HOST_CHARACTERS = frozenset(" \t\r\n/\\?#@[]%:<>\"'`{}|^")


@dataclass(frozen=True)
class ProxyURL:
    """
    A parsed proxy URL.

    :ivar scheme: ``socks5``, ``socks5h``, ``socks4`` or ``socks4a`` (lower case).
    :ivar host: the proxy's host name or IP address, without brackets.
    :ivar port: the proxy's port (default `DEFAULT_PROXY_PORT`).
    :ivar user: the percent-decoded user name, or ``None``.
    :ivar password: the percent-decoded password, or ``None``; left out of
        ``repr`` and `display`.
    :ivar remote_dns: whether the proxy resolves the destination name
        (``socks5h``, ``socks4a``) rather than the client.

    User name and password are ``str`` decoded from UTF-8 with
    ``surrogateescape``, so percent-encoded bytes that are not UTF-8 come
    back unchanged from ``.encode("utf-8", "surrogateescape")``.
    """

    scheme: str
    host: str
    port: int = DEFAULT_PROXY_PORT
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    remote_dns: bool = False

    @property
    def version(self) -> int:
        """The SOCKS version the scheme speaks: 4 or 5."""
        return _SCHEMES[self.scheme][0]

    def display(self) -> str:
        """The URL without the password, for messages: ``socks5://bob@[::1]:1080``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        return f"{self.scheme}://{user}{host}:{self.port}"


def _percent_decode(text: str) -> str:
    # curl decodes %XX in the user and password of a URL; invalid escapes
    # stay as they are (urllib's rule).
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


def _parse_port(text: str) -> int:
    if not text:
        return DEFAULT_PROXY_PORT  # "host:" is the default port (RFC 3986 s3.2.3)
    if not text.isascii() or not text.isdigit():
        raise ProxyURLError(f"the port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 0xFFFF:
        raise ProxyURLError(f"the port {port} is out of range (1 to 65535)")
    return port


def _split_host_port(authority: str) -> tuple[str, int]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ProxyURLError("an IPv6 address opened with '[' has no ']'")
        literal, rest = authority[1:end], authority[end + 1:]
        if rest and not rest.startswith(":"):
            raise ProxyURLError(f"unexpected {rest!r} after the bracketed address")
        # A zone is written %25 in a URL (RFC 6874).
        host = literal.replace("%25", "%")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ProxyURLError(f"[{literal}] is not an IPv6 address") from None
        return host, _parse_port(rest[1:])
    host, colon, port_text = authority.partition(":")
    if ":" in port_text:
        raise ProxyURLError("an IPv6 proxy address must be in brackets: socks5://[2001:db8::1]:1080")
    if not host:
        raise ProxyURLError("the proxy host is missing")
    bad = sorted(_BAD_HOST_CHARACTERS.intersection(host))
    if bad or not host.isprintable():
        raise ProxyURLError(f"the proxy host {host!r} contains characters a host name cannot have")
    return host, _parse_port(port_text)


def parse_proxy_url(text: str) -> ProxyURL:
    """
    Parse ``scheme://[user[:password]@]host[:port][/]`` the way curl reads
    a SOCKS proxy URL.

    The scheme is ``socks5``, ``socks5h``, ``socks4`` or ``socks4a`` (any
    case); the port defaults to 1080; an IPv6 host is written in brackets;
    user name and password are percent-decoded.  The user information ends
    at the last ``@`` (a host cannot hold one), and the password starts
    after the first ``:`` in it.  An empty ``user:password@`` means no
    credentials.

    :raise ProxyURLError: no or an unknown scheme, no host, a bad port, an
        unbracketed or malformed IPv6 address, a path, query or fragment.
        The message never repeats the password.
    """
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise ProxyURLError(
            "a proxy URL starts with a scheme: socks5://, socks5h://, socks4:// or socks4a://"
        )
    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        raise ProxyURLError(
            f"unsupported proxy scheme {scheme!r}; use socks5, socks5h, socks4 or socks4a"
        )
    match = re.match(r"([^/?#]*)(.*)\Z", rest, re.DOTALL)
    assert match is not None  # the pattern matches any string
    authority, tail = match.groups()
    userinfo, at, hostport = authority.rpartition("@")
    if tail not in ("", "/"):
        raise ProxyURLError("a proxy URL has no path, query or fragment (nothing after host:port)")
    user: str | None = None
    password: str | None = None
    if at and userinfo:
        raw_user, colon, raw_password = userinfo.partition(":")
        user = _percent_decode(raw_user)
        password = _percent_decode(raw_password) if colon else None
    host, port = _split_host_port(hostport)
    return ProxyURL(scheme, host, port, user, password, _SCHEMES[scheme][1])


# --- credentials and methods -------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A user name and password for method 0x02; the password is never shown."""

    user: str
    password: str | None = field(default=None, repr=False)


def parse_proxy_user(text: str) -> Credentials:
    """
    ``--proxy-user USER:PASSWORD``: split at the first ``:``, no
    percent-decoding (as curl).  Without ``:`` the password is ``None``.
    """
    user, colon, password = text.partition(":")
    return Credentials(user, password if colon else None)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _userpass(credentials: Credentials | None) -> IClientAuthenticatorFactory:
    if credentials is None:
        raise UsageError(
            "method userpass needs credentials: give --proxy-user USER:PASSWORD "
            "or socks5://USER:PASSWORD@HOST"
        )
    if credentials.password is None:
        raise UsageError(
            f"no password for the proxy user {credentials.user!r}: "
            "give --proxy-user USER:PASSWORD or socks5://USER:PASSWORD@HOST"
        )
    user, password = _encode(credentials.user), _encode(credentials.password)
    if not 1 <= len(user) <= 255:
        raise UsageError(f"the proxy user name is {len(user)} bytes; RFC 1929 allows 1 to 255")
    if not 1 <= len(password) <= 255:
        raise UsageError(f"the proxy password is {len(password)} bytes; RFC 1929 allows 1 to 255")
    return UserPassClientFactory(user, password)


@dataclass(frozen=True)
class GSSAPIOptions:
    """The ``--gssapi-*`` options (RFC 1961); ``host`` defaults to the proxy's host."""

    host: str | None = None
    service: str = "rcmd"
    principal: str | None = None
    mechanism: str = "krb5"
    ccache: str | None = None
    protection: str = "confidentiality"
    accept: str | None = None
    nec: bool = False
    delegate: bool = False
    given: bool = False


def _gssapi(credentials: Credentials | None, gssapi: GSSAPIOptions | None = None) -> IClientAuthenticatorFactory:
    from txsocksgss.auth.gssapi import GSSAPIClientFactory, parse_levels
    from txsocksgss.errors import ConfigError

    gssapi = gssapi or GSSAPIOptions()
    try:
        [level] = parse_levels(gssapi.protection) if "," not in gssapi.protection else [None]  # type: ignore[list-item]
        if level is None:
            raise ConfigError("--gssapi-protection names the one level to request; use --gssapi-accept for more")
        accept = parse_levels(gssapi.accept) if gssapi.accept else None
        return GSSAPIClientFactory(
            host=gssapi.host,
            service=gssapi.service,
            principal=gssapi.principal,
            mechanism=gssapi.mechanism,
            ccache=gssapi.ccache,
            level=level,
            accept=accept,
            nec=gssapi.nec,
            delegate=gssapi.delegate,
        )
    except ConfigError as error:
        raise UsageError(str(error)) from None


#: The ``--method`` names, each with the builder of its client authenticator
#: factory from the credentials (``None`` when none were given) and the
#: GSS-API options.  A new method registers here.
def _maf(credentials: Credentials | None, gssapi: GSSAPIOptions | None = None,
         submethods: Sequence[str] = ()) -> IClientAuthenticatorFactory:
    from txsocksgss.auth.maf import SUBMETHOD_IDS, MAFClientFactory, TestSubMethodClientFactory

    if not submethods:
        raise UsageError("method maf needs --maf-submethod NAME (userpass, gssapi, test), repeatable")
    builders = {"userpass": lambda: _userpass(credentials), "gssapi": lambda: _gssapi(credentials, gssapi),
                "test": TestSubMethodClientFactory}
    pairs = []
    for name in submethods:
        if name not in builders:
            raise UsageError(f"unknown MAF sub-method {name!r}; choose from {', '.join(builders)}")
        pairs.append((SUBMETHOD_IDS[name], builders[name]()))
    return MAFClientFactory(pairs)


CLIENT_METHODS: dict[str, Callable[..., IClientAuthenticatorFactory]] = {
    "none": lambda credentials, gssapi=None, submethods=(): NoAuthClientFactory(),
    "userpass": lambda credentials, gssapi=None, submethods=(): _userpass(credentials),
    "gssapi": lambda credentials, gssapi=None, submethods=(): _gssapi(credentials, gssapi),
    "maf": _maf,
}

_METHOD_NAMES: Mapping[int, str] = {
    AuthMethod.NONE: "none",
    AuthMethod.GSSAPI: "gssapi",
    AuthMethod.USERPASS: "userpass",
    AuthMethod.MAF: "maf",
}


def _method_name(code: int) -> str:
    return _METHOD_NAMES.get(code, f"{code:#04x}")


def default_methods(has_credentials: bool, gssapi: bool = False) -> tuple[str, ...]:
    """
    The methods offered without ``--method``, as curl does: gssapi first when
    a ``--gssapi-*`` option is given, userpass with credentials, then none.
    """
    return (("gssapi",) if gssapi else ()) + (("userpass",) if has_credentials else ()) + ("none",)


def build_authenticators(
    methods: Sequence[str], credentials: Credentials | None, gssapi: GSSAPIOptions | None = None,
    maf_submethods: Sequence[str] = (),
) -> list[IClientAuthenticatorFactory]:
    """
    The client authenticator factories for ``methods`` (names of
    `CLIENT_METHODS`), in the same order.

    :raise UsageError: an unknown name, or a method that needs credentials
        that were not given (or are too long).
    """
    factories = []
    for name in methods:
        builder = CLIENT_METHODS.get(name)
        if builder is None:
            raise UsageError(f"unknown method {name!r}; choose from {', '.join(CLIENT_METHODS)}")
        factories.append(builder(credentials, gssapi, maf_submethods))
    return factories


# --- options -------------------------------------------------------------------


class Mode(enum.Enum):
    """What ``socksgss connect`` asks the proxy for."""

    CONNECT = "connect"
    BIND = "bind"
    UDP = "udp"


@dataclass(frozen=True)
class ConnectOptions:
    """
    Everything a run needs, validated.

    :ivar host: the destination (CONNECT), the expected peer (BIND), or the
        datagram target (UDP), as given (brackets removed).
    :ivar methods: ``--method`` names in order of preference (empty for SOCKS 4).
    :ivar credentials: for userpass; the URL's, or ``--proxy-user``'s.
    :ivar userid: the SOCKS 4 USERID (``None`` for SOCKS 5).
    :ivar timeout: seconds for connecting to the proxy and for the handshake.
    """

    proxy: ProxyURL
    host: str
    port: int
    mode: Mode = Mode.CONNECT
    methods: tuple[str, ...] = ("none",)
    credentials: Credentials | None = None
    userid: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    verbose: bool = False
    warnings: tuple[str, ...] = ()
    gssapi: GSSAPIOptions | None = None
    maf_submethods: tuple[str, ...] = ()


def _local_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _parse_destination_port(text: str, mode: Mode) -> int:
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"the port {text!r} is not a number")
    port = int(text)
    low = 0 if mode is Mode.BIND else 1
    if not low <= port <= 0xFFFF:
        raise UsageError(f"the port {port} is out of range ({low} to 65535)")
    return port


def options_from_args(args: argparse.Namespace, local_user: Callable[[], str] = _local_user) -> ConnectOptions:
    """
    Validate the parsed ``socksgss connect`` arguments.

    :param local_user: gives the default SOCKS 4 user id.
    :raise UsageError: for any bad value; the message never holds a password.
    """
    proxy = parse_proxy_url(args.proxy)
    mode = Mode.BIND if args.bind else Mode.UDP if args.udp else Mode.CONNECT
    host: str = args.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise UsageError("the destination host is empty")
    port = _parse_destination_port(args.port, mode)
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")
    timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout

    credentials: Credentials | None = None
    if args.proxy_user is not None:
        credentials = parse_proxy_user(args.proxy_user)
    elif proxy.user is not None:
        credentials = Credentials(proxy.user, proxy.password)

    warnings: list[str] = []
    if proxy.version == 4:
        if mode is Mode.UDP:
            raise UsageError("SOCKS 4 has no UDP; use a socks5:// or socks5h:// proxy with --udp")
        if _is_ipv6(host):
            raise UsageError("SOCKS 4 cannot reach an IPv6 address; use a socks5:// proxy")
        if args.method:
            warnings.append("SOCKS 4 has no authentication methods; --method is ignored")
        if credentials is not None and credentials.password is not None:
            warnings.append("SOCKS 4 sends no password; only the user name is used, as the user id")
        # curl sends the proxy user name as the SOCKS 4 USERID.
        if args.userid is not None:
            userid = args.userid
        elif credentials is not None:
            userid = credentials.user
        else:
            userid = local_user()
        if len(_encode(userid)) > 255 or "\x00" in userid:
            raise UsageError("the SOCKS 4 user id must be at most 255 bytes, without NUL")
        return ConnectOptions(proxy, host, port, mode, (), credentials, userid, timeout,
                              args.verbose, tuple(warnings))

    if args.userid is not None:
        warnings.append("--userid is for SOCKS 4 only; it is ignored")
    gssapi = _gssapi_options(args, proxy)
    if args.method:
        methods = tuple(dict.fromkeys(args.method))  # duplicates dropped, order kept
    else:
        methods = default_methods(credentials is not None, gssapi.given)
    maf_submethods = tuple(getattr(args, "maf_submethod", None) or ())
    build_authenticators(methods, credentials, gssapi, maf_submethods)  # fail now, before any I/O
    return ConnectOptions(proxy, host, port, mode, methods, credentials, None, timeout,
                          args.verbose, tuple(warnings), gssapi, maf_submethods)


def _gssapi_options(args: argparse.Namespace, proxy: ProxyURL) -> GSSAPIOptions:
    names = ("gssapi_service", "gssapi_principal", "gssapi_mech", "gssapi_ccache", "gssapi_protection",
             "gssapi_accept", "gssapi_host")
    given = any(getattr(args, name, None) is not None for name in names) or bool(
        getattr(args, "gssapi_nec", False) or getattr(args, "gssapi_delegate", False))
    return GSSAPIOptions(
        host=getattr(args, "gssapi_host", None) or proxy.host,
        service=getattr(args, "gssapi_service", None) or "rcmd",
        principal=getattr(args, "gssapi_principal", None),
        mechanism=getattr(args, "gssapi_mech", None) or "krb5",
        ccache=getattr(args, "gssapi_ccache", None),
        protection=getattr(args, "gssapi_protection", None) or "confidentiality",
        accept=getattr(args, "gssapi_accept", None),
        nec=bool(getattr(args, "gssapi_nec", False)),
        delegate=bool(getattr(args, "gssapi_delegate", False)),
        given=given,
    )


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


# --- resolution and endpoints ------------------------------------------------------


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


# --- messages ----------------------------------------------------------------------

# RFC 1928 s6 (REP) and the SOCKS 4 protocol document (CD).
_SOCKS5_REPLIES: Mapping[int, str] = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}
_SOCKS4_REPLIES: Mapping[int, str] = {
    91: "request rejected or failed",
    92: "request rejected: the proxy cannot reach the client's identd",
    93: "request rejected: identd reports a different user id",
}


def describe_error(error: BaseException, proxy: ProxyURL) -> tuple[str, int]:
    """
    The one-line message (without the ``socksgss: `` prefix) and the exit
    status for a failure of a run through ``proxy``.
    """
    if isinstance(error, SOCKSReplyError):
        code = error.code if error.code is not None else 0
        if proxy.version == 5:
            text = _SOCKS5_REPLIES.get(code, "unknown failure reply")
            return f"proxy refused: {text} (SOCKS 5 reply {code:02x})", EXIT_FAILURE
        text = _SOCKS4_REPLIES.get(code, "unknown failure reply")
        return f"proxy refused: {text} (SOCKS 4 reply {code})", EXIT_FAILURE
    if isinstance(error, NoAcceptableMethod):
        return f"authentication failed: {error}", EXIT_AUTHENTICATION
    if isinstance(error, ClientAuthenticationFailed):
        return f"authentication failed: {error}", EXIT_AUTHENTICATION
    if isinstance(error, TwistedTimeoutError) and isinstance(error.osError, str):
        return f"timed out: {error.osError}", EXIT_FAILURE  # the handshake's own timer
    if isinstance(error, (ConnectError, DNSLookupError)):
        reason = str(error).rstrip(".")
        return f"cannot reach the proxy {proxy.host}:{proxy.port}: {reason}", EXIT_FAILURE
    if isinstance(error, DestinationLookupError):
        return str(error), EXIT_FAILURE
    if isinstance(error, TruncatedMessage):
        return str(error), EXIT_FAILURE
    if isinstance(error, ProtocolError):
        return f"proxy protocol error: {error}", EXIT_FAILURE
    if isinstance(error, CancelledError):
        return "cancelled", EXIT_FAILURE
    if isinstance(error, SOCKSError):
        return str(error), EXIT_FAILURE
    return f"internal error: {error.__class__.__name__}: {error}", EXIT_FAILURE


class _Console:
    """Standard error: errors and the BIND status lines always, handshake details with -v."""

    def __init__(self, verbose: bool, stream: Any = None) -> None:
        self.verbose = verbose
        self._stream = stream

    def _write(self, line: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def error(self, message: str) -> None:
        self._write(f"{_PROGRAM}: {message}")

    def status(self, line: str) -> None:
        self._write(line)

    def info(self, message: str) -> None:
        if self.verbose:
            self._write(f"{_PROGRAM}: {message}")


# --- the Twisted glue: a stream tunnel ------------------------------------------------


class _StdioBridge:
    """
    Joins standard input/output to the tunnel, once the tunnel is up.

    stdin -> tunnel with the tunnel's transport pausing stdin when its send
    buffer is full; tunnel -> stdout likewise.  EOF on stdin half-closes the
    tunnel; the end of the remote side (its half-close or close) ends the
    run: the tunnel closes, stdout is flushed and ``finished`` fires with
    the exit status.

    :param open_stdio: builds the stdio transport for a protocol (StandardIO
        in the program, a fake in tests).
    """

    def __init__(self, open_stdio: Callable[[Protocol], Any], console: _Console) -> None:
        self._open_stdio = open_stdio
        self._console = console
        self.finished: Deferred[int] = Deferred()
        self.tunnel: Any = None
        self.stdio: Any = None
        self._stdout_open = False
        self._tunnel_closed = False
        self._tunnel_reason: Failure | None = None
        self._failed = False

    def factory(self) -> Factory:
        """The factory for the application protocol on the tunnel (one protocol)."""
        bridge = self

        class _Factory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> Protocol:
                return _TunnelSide(bridge)

        return _Factory()

    # tunnel events

    def tunnelMade(self, transport: Any) -> None:
        self.tunnel = transport
        try:
            self.stdio = self._open_stdio(_StdioSide(self))
        except OSError as error:
            self._console.error(f"cannot use standard input and output: {error.strerror or error}")
            self._failed = True
            transport.loseConnection()
            return
        self._stdout_open = True
        transport.registerProducer(self.stdio, True)
        self.stdio.registerProducer(transport, True)

    def tunnelData(self, data: bytes) -> None:
        if self._stdout_open:
            self.stdio.write(data)

    def tunnelReadLost(self) -> None:
        # The remote side is done sending: the run is over (as nc does).
        self.tunnel.loseConnection()

    def tunnelLost(self, reason: Failure) -> None:
        self._tunnel_closed = True
        self._tunnel_reason = reason
        if self._stdout_open:
            self.stdio.loseConnection()  # flushes stdout, then stdioLost ends the run
        else:
            self._finish()

    # stdio events

    def stdinData(self, data: bytes) -> None:
        if not self._tunnel_closed:
            self.tunnel.write(data)

    def stdinEOF(self) -> None:
        if self._tunnel_closed:
            return
        # A paused streaming producer would keep the write side from closing.
        self.tunnel.unregisterProducer()
        self.tunnel.loseWriteConnection()

    def stdoutLost(self) -> None:
        # Nobody reads what the remote side sends any more.
        self._stdout_open = False
        if self._tunnel_closed:
            self._finish()
        else:
            self.tunnel.loseConnection()

    def stdioLost(self, reason: Failure) -> None:
        self._stdout_open = False
        if self._tunnel_closed:
            self._finish()
        elif self.tunnel is not None:
            self.tunnel.loseConnection()

    def _finish(self) -> None:
        if self.finished.called:
            return
        reason = self._tunnel_reason
        if self._failed:
            self.finished.callback(EXIT_FAILURE)
        elif reason is None or reason.check(ConnectionDone):
            self.finished.callback(EXIT_OK)
        else:
            self._console.error(f"connection lost: {reason.getErrorMessage()}")
            self.finished.callback(EXIT_FAILURE)


@implementer(IHalfCloseableProtocol)
class _TunnelSide(Protocol):
    def __init__(self, bridge: _StdioBridge) -> None:
        self.bridge = bridge

    def connectionMade(self) -> None:
        self.bridge.tunnelMade(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.bridge.tunnelData(data)

    def readConnectionLost(self) -> None:
        self.bridge.tunnelReadLost()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.bridge.tunnelLost(reason if reason is not None else Failure(ConnectionDone()))


@implementer(IHalfCloseableProtocol)
class _StdioSide(Protocol):
    def __init__(self, bridge: _StdioBridge) -> None:
        self.bridge = bridge

    def dataReceived(self, data: bytes) -> None:
        self.bridge.stdinData(data)

    def readConnectionLost(self) -> None:
        self.bridge.stdinEOF()

    def writeConnectionLost(self) -> None:
        self.bridge.stdoutLost()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.bridge.stdioLost(reason if reason is not None else Failure(ConnectionDone()))


# --- the Twisted glue: datagrams ---------------------------------------------------------

_MAX_LINE = 0xFFFF  # no UDP payload is longer: a longer line is dropped whole, not split


class _DatagramLines(DatagramProtocol):
    """
    The UDP mode: a line of stdin (without ``\\n`` or ``\\r\\n``) is one
    datagram to ``target``; a datagram received is written to stdout with a
    newline.  EOF on stdin sends the last unterminated line, if any, and
    closes the association; ``finished`` fires with the exit status when it
    has ended and stdout is flushed.
    """

    noisy = False

    def __init__(self, target: tuple[str, int], console: _Console) -> None:
        self.target = target
        self.console = console
        self.association: Any = None
        self.stdio: Any = None
        self.finished: Deferred[int] = Deferred()
        self._pending = b""
        self._discarding = False
        self._closing = False
        self._failed = False
        self._stdout_open = False

    def attach(self, association: Any, open_stdio: Callable[[Protocol], Any]) -> None:
        self.association = association
        association.closed.addCallback(lambda _: self._associationEnded())
        try:
            self.stdio = open_stdio(_LineSide(self))
        except OSError as error:
            self.console.error(f"cannot use standard input and output: {error.strerror or error}")
            self._failed = True
            self._closing = True
            association.close()
            return
        self._stdout_open = True

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self._stdout_open:
            self.stdio.write(data + b"\n")

    def lineData(self, data: bytes) -> None:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            if self._discarding:
                self._discarding = False  # the end of a line too long to send
                continue
            self._send(line[:-1] if line.endswith(b"\r") else line)
        if len(self._pending) > _MAX_LINE:
            self._pending = b""
            if not self._discarding:
                self._discarding = True
                self.console.error(f"a line longer than {_MAX_LINE} bytes cannot be a datagram; dropped")

    def lineEOF(self) -> None:
        if self._pending and not self._discarding:
            line, self._pending = self._pending, b""
            self._send(line)
        self._closing = True
        self.association.close()

    def stdoutLost(self) -> None:
        self._stdout_open = False
        self._closing = True
        self.association.close()

    def stdioLost(self, reason: Failure) -> None:
        self._stdout_open = False
        if self.association.closed.called:
            self._done()
        else:
            self._closing = True
            self.association.close()

    def _send(self, line: bytes) -> None:
        if self._closing:
            return
        try:
            self.association.write(line, self.target)
        except (OSError, MessageLengthError) as error:  # too long for UDP, unreachable relay, ...
            reason = str(error).rstrip(".")
            self.console.error(f"datagram of {len(line)} bytes not sent: {reason}")

    def _associationEnded(self) -> None:
        if not self._closing:
            self.console.error("the proxy ended the UDP association")
        if self._stdout_open:
            self.stdio.loseConnection()  # flushes stdout; stdioLost finishes
        else:
            self._done()

    def _done(self) -> None:
        if not self.finished.called:
            self.finished.callback(EXIT_OK if self._closing and not self._failed else EXIT_FAILURE)


@implementer(IHalfCloseableProtocol)
class _LineSide(Protocol):
    def __init__(self, lines: _DatagramLines) -> None:
        self.lines = lines

    def dataReceived(self, data: bytes) -> None:
        self.lines.lineData(data)

    def readConnectionLost(self) -> None:
        self.lines.lineEOF()

    def writeConnectionLost(self) -> None:
        self.lines.stdoutLost()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lines.stdioLost(reason if reason is not None else Failure(ConnectionDone()))


# --- the run ------------------------------------------------------------------------------


def _printable_host(host: str, fallback: Callable[[], str]) -> str:
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host
    # RFC 1928 s6: an unspecified BND.ADDR means "the address you reached me on".
    return fallback() if unspecified else host


def _default_stdio(reactor: Any) -> Callable[[Protocol], Any]:
    from twisted.internet.stdio import StandardIO

    return lambda protocol: StandardIO(protocol, reactor=reactor)


async def run_connect(
    reactor: Any,
    options: ConnectOptions,
    console: _Console | None = None,
    open_stdio: Callable[[Protocol], Any] | None = None,
) -> int:
    """
    Run one ``socksgss connect`` with ``options``; returns the exit status.

    Every expected failure becomes a one-line message on stderr and its
    status (see the module docstring); nothing raises.
    """
    console = console or _Console(options.verbose)
    open_stdio = open_stdio or _default_stdio(reactor)
    proxy = options.proxy
    try:
        for warning in options.warnings:
            console.error(f"warning: {warning}")
        if proxy.version == 5:
            console.info(f"proxy {proxy.display()}, offering {', '.join(options.methods)}")
            authenticators = build_authenticators(options.methods, options.credentials, options.gssapi,
                                                  options.maf_submethods)
        else:
            console.info(f"proxy {proxy.display()}, user id {options.userid!r}")
            authenticators = []
        target = await resolve_destination(reactor, proxy, options.host)
        if target != options.host:
            console.info(f"resolved {options.host} to {target}")

        def endpoint_for(host: str, port: int) -> SOCKS5ClientEndpoint | SOCKS4ClientEndpoint:
            return build_endpoint(reactor, proxy, host, port, authenticators=authenticators,
                                  userid=options.userid, timeout=options.timeout)

        if options.mode is Mode.UDP:
            return await _run_udp(reactor, options, console, open_stdio, endpoint_for, target)
        if options.mode is Mode.BIND:
            return await _run_bind(options, console, open_stdio, endpoint_for(target, options.port))
        return await _run_tunnel(options, console, open_stdio, endpoint_for(target, options.port))
    except UsageError as error:
        console.status(f"{_PROGRAM} {_COMMAND}: error: {error}")
        return EXIT_USAGE
    except Exception as error:
        message, status = describe_error(error, proxy)
        console.error(message)
        if options.verbose and not isinstance(error, (SOCKSError, ConnectError, DNSLookupError)):
            traceback.print_exc()
        return status


def _log_identity(console: _Console, identity: Any) -> None:
    if identity is None:
        return
    if identity.method < 0:
        console.info("SOCKS 4: no method negotiation")
        return
    user = f" as {identity.user}" if identity.user else ""
    console.info(f"method {_method_name(identity.method)}{user}")


async def _run_tunnel(options: ConnectOptions, console: _Console, open_stdio: Callable[[Protocol], Any],
                      endpoint: Any) -> int:
    bridge = _StdioBridge(open_stdio, console)
    connection = await endpoint.establish(bridge.factory())
    _log_identity(console, connection.identity)
    console.info(f"connected to {options.host} port {options.port}; "
                 f"the proxy bound {connection.bound.host} {connection.bound.port}")
    return await bridge.finished


async def _run_bind(options: ConnectOptions, console: _Console, open_stdio: Callable[[Protocol], Any],
                    endpoint: Any) -> int:
    from txsocksgss.client.bind import bindThroughProxy

    bridge = _StdioBridge(open_stdio, console)
    pending = await bindThroughProxy(endpoint, bridge.factory())
    _log_identity(console, pending.handshake.identity)

    def proxy_address() -> str:
        transport = pending.handshake.transport
        peer = transport.getPeer() if transport is not None else None
        return str(getattr(peer, "host", options.proxy.host))

    console.status(f"bound {_printable_host(pending.address.host, proxy_address)} {pending.address.port}")
    connection = await pending.accepted
    console.status(f"accepted {connection.bound.host} {connection.bound.port}")
    return await bridge.finished


async def _run_udp(reactor: Any, options: ConnectOptions, console: _Console,
                   open_stdio: Callable[[Protocol], Any], endpoint_for: Callable[[str, int], Any],
                   target: str) -> int:
    from txsocksgss.client.udp import associateUDP

    # The address we will send from is unknown before the association:
    # RFC 1928 s4 says to send zeros then.
    endpoint = endpoint_for("0.0.0.0", 0)
    lines = _DatagramLines((target, options.port), console)
    association = await associateUDP(endpoint, lines, reactor)
    _log_identity(console, association.handshake.identity)
    console.info(f"UDP relay {association.relay[0]} {association.relay[1]}; "
                 f"datagrams go to {options.host} port {options.port}")
    lines.attach(association, open_stdio)
    return await lines.finished


# --- the subcommand ------------------------------------------------------------------------

_DESCRIPTION = """\
Join standard input and output to HOST PORT through a SOCKS proxy (like
ncat --proxy).  EOF on standard input half-closes the connection; the
program ends when the remote side closes.  With --bind, HOST PORT is the
peer expected to connect (0.0.0.0 0 for any): "bound HOST PORT" (where the
proxy listens) and then "accepted HOST PORT" are printed on standard error.
With --udp, each line of standard input is one datagram to HOST PORT and
each datagram received is printed as a line; EOF ends the association.
"""

_EPILOG = """\
proxy URLs (as curl):
  socks5://[USER:PASSWORD@]HOST[:PORT]   HOST resolved by this client
  socks5h://...                          HOST resolved by the proxy
  socks4://[USER@]HOST[:PORT]            resolved here, IPv4 only
  socks4a://...                          resolved by the proxy
  The port defaults to 1080; an IPv6 proxy address is written [2001:db8::1];
  USER and PASSWORD are percent-decoded.  For SOCKS 4 the user id is
  --userid, else USER, else the local user name.

exit status:
  0  normal end
  1  connection or reply failure (unreachable proxy, failure reply, timeout)
  2  usage error
  3  authentication failure (bad user name or password, no acceptable method)
"""


def add_connect_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``socksgss connect`` to the ``socksgss`` subparsers."""
    parser = subparsers.add_parser(
        _COMMAND,
        help="join stdin/stdout to a host through a SOCKS proxy",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("host", metavar="HOST", help="destination (or expected peer with --bind)")
    parser.add_argument("port", metavar="PORT", help="destination port")
    parser.add_argument("--proxy", metavar="URL", required=True,
                        help="the proxy: socks5://, socks5h://, socks4:// or socks4a://")
    parser.add_argument("--proxy-user", metavar="USER:PASSWORD",
                        help="credentials for the proxy (override those in the URL)")
    parser.add_argument("--method", action="append", choices=sorted(CLIENT_METHODS), metavar="NAME",
                        help="an authentication method to offer, repeatable, in order of preference: "
                             f"{', '.join(CLIENT_METHODS)} (default: userpass then none with "
                             "credentials, else none; ignored by SOCKS 4)")
    parser.add_argument("--userid", metavar="NAME", help="the SOCKS 4 user id (default: the local user name)")
    parser.add_argument("--maf-submethod", action="append", metavar="NAME",
                        help="with --method maf: a sub-method to offer (userpass, gssapi, test), repeatable, "
                             "in order")
    gss = parser.add_argument_group("GSS-API (RFC 1961); any of these offers gssapi first")
    gss.add_argument("--gssapi-service", metavar="NAME", help="service name of the proxy (default rcmd)")
    gss.add_argument("--gssapi-host", metavar="HOST",
                     help="host part of the target name SERVICE@HOST (default: the proxy URL's host)")
    gss.add_argument("--gssapi-principal", metavar="PRINCIPAL",
                     help="full target principal, e.g. rcmd/proxy.example@REALM, instead of SERVICE@HOST")
    gss.add_argument("--gssapi-mech", choices=("krb5", "spnego"), help="mechanism (default krb5)")
    gss.add_argument("--gssapi-ccache", metavar="PATH", help="credential cache (default: KRB5CCNAME)")
    gss.add_argument("--gssapi-protection", choices=("confidentiality", "integrity", "clear"),
                     help="protection level to request (default confidentiality)")
    gss.add_argument("--gssapi-accept", metavar="LEVELS",
                     help="comma-separated levels accepted in the proxy's answer (default: the one requested)")
    gss.add_argument("--gssapi-nec", action="store_true", help="send the level octet unwrapped (NEC servers)")
    gss.add_argument("--gssapi-delegate", action="store_true",
                     help="delegate the Kerberos ticket to the proxy (off: RFC 1961 asks for it, but it hands "
                          "the proxy your TGT)")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=None,
                        help=f"seconds for reaching the proxy and for the handshake (default {DEFAULT_TIMEOUT:g})")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--bind", action="store_true", help="BIND: accept one connection from HOST PORT")
    mode.add_argument("--udp", action="store_true", help="UDP ASSOCIATE: lines to and from datagrams")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the handshake to standard error")
    parser.set_defaults(run=_run)


def _ensure_standard_fds() -> None:
    """
    Put /dev/null on a closed stdin or stdout (``<&-``, ``>&-``): a closed
    stdin reads as empty, a closed stdout discards, rather than the reactor
    failing on a bad descriptor.
    """
    import os

    for fd in (0, 1):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _run(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except UsageError as error:
        print(f"{_PROGRAM} {_COMMAND}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    _ensure_standard_fds()

    from twisted.internet import task

    outcome: list[int] = []

    async def main(reactor: Any) -> None:
        outcome.append(await run_connect(reactor, options))

    try:
        task.react(main)
    except SystemExit:  # react always ends with sys.exit; the status is ours
        pass
    # No outcome: a signal stopped the reactor before the end.
    return outcome[0] if outcome else EXIT_FAILURE
