"""
The authentication methods ``socksgss connect`` offers a SOCKS 5 proxy:
the ``--method`` names (the client methods of `txsocksgss.auth.registry`),
the credentials (``--proxy-user`` or the proxy URL's) and the
``--gssapi-*`` options checked in this command's words and handed to the
registry's builders, the default choice (as curl's), and the names of the
method codes for messages.  Pure: a bad combination is a `UsageError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from txsocksgss.auth.registry import (
    CLIENT_METHOD_NAMES,
    SUBMETHOD_NAMES,
    ClientOptions,
    MissingClientSetting,
    build_client,
)
from txsocksgss.auth.registry import method_name as registry_method_name
from txsocksgss.cli.console import text_bytes
from txsocksgss.cli.status import UsageError
from txsocksgss.errors import ConfigError
from txsocksgss.interfaces import IClientAuthenticatorFactory

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


def _credential_bytes(credentials: Credentials | None) -> tuple[bytes, bytes]:
    """The user name and password for userpass, checked with this face's words."""
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
    return user, password


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


def _gssapi_settings(gssapi: GSSAPIOptions | None) -> dict[str, Any]:
    """The keyword arguments of the GSS-API client side, from the ``--gssapi-*`` options."""
    from txsocksgss.auth.gssapi import parse_levels

    gssapi = gssapi or GSSAPIOptions()
    try:
        [level] = parse_levels(gssapi.protection) if "," not in gssapi.protection else [None]  # type: ignore[list-item]
        if level is None:
            raise ConfigError("--gssapi-protection names the one level to request; use --gssapi-accept for more")
        accept = parse_levels(gssapi.accept) if gssapi.accept else None
    except ConfigError as error:
        raise UsageError(str(error)) from None
    return {"host": gssapi.host, "service": gssapi.service, "principal": gssapi.principal,
            "mechanism": gssapi.mechanism, "ccache": gssapi.ccache, "level": level, "accept": accept,
            "nec": gssapi.nec, "delegate": gssapi.delegate}


#: The ``--method`` names: the client methods of the registry.
CLIENT_METHODS: tuple[str, ...] = CLIENT_METHOD_NAMES


def method_name(code: int) -> str:
    """The ``--method`` name of a SOCKS 5 method code, or the code in hex (``0x80``)."""
    return registry_method_name(code)


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
    for name in methods:
        if name not in CLIENT_METHODS:
            raise UsageError(f"unknown method {name!r}; choose from {', '.join(CLIENT_METHODS)}")
    # The methods that will run, MAF's sub-methods included, in order: each
    # one's options are checked (in this face's words) only when it runs.
    running = []
    for name in methods:
        running.append(name)
        if name == "maf":
            if not maf_submethods:
                raise UsageError("method maf needs --maf-submethod NAME "
                                 f"({', '.join(SUBMETHOD_NAMES)}), repeatable")
            for sub in maf_submethods:
                if sub not in SUBMETHOD_NAMES:
                    raise UsageError(f"unknown MAF sub-method {sub!r}; choose from {', '.join(SUBMETHOD_NAMES)}")
            running.extend(maf_submethods)
    user = password = None
    gssapi_settings = None
    for name in running:
        if name == "userpass" and user is None:
            user, password = _credential_bytes(credentials)
        elif name == "gssapi" and gssapi_settings is None:
            gssapi_settings = _gssapi_settings(gssapi)
    options = ClientOptions(user, password, gssapi_settings, tuple(maf_submethods))
    try:
        return [build_client(name, options) for name in methods]
    except MissingClientSetting as missing:  # pragma: no cover - every need is checked above
        raise UsageError(str(missing)) from None
    except ConfigError as error:
        raise UsageError(str(error)) from None
