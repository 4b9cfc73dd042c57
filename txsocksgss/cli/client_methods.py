"""
The authentication methods ``socksgss connect`` offers a SOCKS 5 proxy:
the ``--method`` names, each with the builder of its client authenticator
factory from the credentials (``--proxy-user`` or the proxy URL's) and the
``--gssapi-*`` options, the default choice (as curl's), and the names of
the method codes for messages.  Pure: a bad combination is a `UsageError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from txsocksgss.auth.none import NoAuthClientFactory
from txsocksgss.auth.userpass import UserPassClientFactory
from txsocksgss.cli.console import text_bytes
from txsocksgss.cli.status import UsageError
from txsocksgss.interfaces import IClientAuthenticatorFactory
from txsocksgss.wire.socks5 import AuthMethod
from txsocksgss.errors import ConfigError
from txsocksgss.auth.maf import SUBMETHOD_IDS, MAFClientFactory, TestSubMethodClientFactory

__all__ = [
    "CLIENT_METHODS",
    "Credentials",
    "GSSAPIOptions",
    "parse_proxy_user",
    "default_methods",
    "build_authenticators",
    "method_name",
]


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
    user, password = text_bytes(credentials.user), text_bytes(credentials.password)
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


def _maf(credentials: Credentials | None, gssapi: GSSAPIOptions | None = None,
         submethods: Sequence[str] = ()) -> IClientAuthenticatorFactory:
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


#: The ``--method`` names, each with the builder of its client authenticator
#: factory from the credentials (``None`` when none were given) and the
#: GSS-API options.  A new method registers here.
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


def method_name(code: int) -> str:
    """The ``--method`` name of a SOCKS 5 method code, or the code in hex (``0x80``)."""
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
