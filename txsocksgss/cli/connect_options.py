"""
The ``socksgss connect`` command line, validated: `options_from_args`
turns the parsed arguments into a `ConnectOptions` (the proxy URL, the
destination, the mode, the methods in order of preference with their
credentials and GSS-API options, or the SOCKS 4 user id).  Pure: bad input
is a `UsageError` whose message never holds a password.
"""

from __future__ import annotations

import argparse
import enum
import ipaddress
from dataclasses import dataclass
from typing import Callable

from txsocksgss.cli.client_methods import (
    Credentials,
    GSSAPIOptions,
    build_authenticators,
    default_methods,
    parse_proxy_user,
)
from txsocksgss.cli.console import text_bytes
from txsocksgss.cli.proxy_url import ProxyURL, parse_proxy_url
from txsocksgss.cli.status import UsageError
from txsocksgss.client.endpoints import DEFAULT_TIMEOUT

__all__ = ["Mode", "ConnectOptions", "options_from_args"]


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
        if len(text_bytes(userid)) > 255 or "\x00" in userid:
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
