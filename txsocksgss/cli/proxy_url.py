"""
Proxy URLs, spelled as curl spells them, for ``socksgss connect --proxy``:

    socks5://[USER:PASSWORD@]HOST[:PORT]   HOST resolved by the client
    socks5h://...                          HOST resolved by the proxy
    socks4://[USER@]HOST[:PORT]            resolved by the client, IPv4 only
    socks4a://...                          resolved by the proxy

`parse_proxy_url` is pure: text in, a `ProxyURL` or a `ProxyURLError` out.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import unquote_to_bytes

from txsocksgss.cli.status import UsageError

__all__ = ["DEFAULT_PROXY_PORT", "ProxyURL", "ProxyURLError", "parse_proxy_url"]

#: The port a proxy URL without one means (curl's default for SOCKS).
DEFAULT_PROXY_PORT = 1080


class ProxyURLError(UsageError):
    """A proxy URL that cannot be used; the text says why, never the password."""


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
