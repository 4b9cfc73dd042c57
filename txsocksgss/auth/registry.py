"""
The one registry of authentication methods: for each, its name, its SOCKS 5
code, its MAF sub-method id, how the server side is built from the server's
settings and how the client side is built from the client's options.

Every face reads it: the server's configuration (which names ``methods``
and ``--method`` accept, the MAF chains), twistd's option help and
completion, the service (building the server side), ``socksgss connect``
and the ``socks5:`` endpoint strings (building the client side), MAF (the
sub-methods) and the metrics' method labels.

``socks4`` is in the table although it is not a SOCKS 5 method: it is the
configuration's switch that lets SOCKS 4/4a requests in (which have no
method negotiation, only ident), and the configuration has always listed it
among the method names.  Its role, `MethodRole.SOCKS4`, says so; it has no
code and builds nothing.  ``test`` (`MethodRole.SUBMETHOD`) is the MAF
draft's internal test method: it runs only inside MAF.

Adding a method: write its authenticators (one module in ``auth/``), give
it a code in `txsocksgss.wire.socks5.AuthMethod` (and, to run inside MAF,
an id in `txsocksgss.wire.maf.SubMethod` named like it), and add one
`RegisteredMethod` to `METHODS`.  The builders are duck-typed: the server
side reads attributes of the server's settings (a
`txsocksgss.server.config.Config`), the client side a `ClientOptions`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal

from txsocksgss.auth.checkers import FirstMatchChecker
from txsocksgss.auth.maf import (
    Chain,
    ChainPolicy,
    MAFClientFactory,
    MAFServerFactory,
    TestSubMethodClientFactory,
    TestSubMethodServerFactory,
    parse_chain_spec,
)
from txsocksgss.auth.none import NoAuthClientFactory, NoAuthServerFactory
from txsocksgss.auth.passwordfile import PasswordFileChecker
from txsocksgss.auth.userpass import SOCKSUserRealm, UserPassClientFactory, UserPassServerFactory
from txsocksgss.errors import ConfigError
from txsocksgss.interfaces import IClientAuthenticatorFactory, IServerAuthenticatorFactory
from txsocksgss.wire.maf import SubMethod
from txsocksgss.wire.socks5 import AuthMethod

__all__ = [
    "MethodRole",
    "RegisteredMethod",
    "ServerBuild",
    "ClientOptions",
    "MissingClientSetting",
    "METHODS",
    "SERVER_METHOD_NAMES",
    "CLIENT_METHOD_NAMES",
    "SUBMETHOD_NAMES",
    "find",
    "method_name",
    "submethod_id",
    "build_client",
]


class MethodRole(enum.Enum):
    """What a registered name is."""

    METHOD = "method"  # a SOCKS 5 method: offered in a greeting, chosen by the server
    SUBMETHOD = "sub-method"  # runs only inside MAF
    SOCKS4 = "socks4"  # the configuration's switch for SOCKS 4/4a requests


@dataclass(frozen=True)
class RegisteredMethod:
    """
    One method of the registry.

    :ivar name: its name everywhere (configuration, options, endpoint strings, logs, metrics).
    :ivar role: a `MethodRole`.
    :ivar code: its SOCKS 5 code (`MethodRole.METHOD` only).
    :ivar submethod: its MAF sub-method id, when it can run inside MAF.
    :ivar summary: one line for help texts.
    :ivar server: builds the server side: ``server(build)`` with a `ServerBuild`.
    :ivar client: builds the client side: ``client(options, within_maf)``
        with `ClientOptions`; raises `MissingClientSetting` when an option it
        needs is missing, `ConfigError` (or the wire's `ProtocolError` for
        credentials) when one is bad.
    """

    name: str
    role: MethodRole
    code: AuthMethod | None
    submethod: SubMethod | None
    summary: str
    server: Callable[["ServerBuild"], IServerAuthenticatorFactory] | None = None
    client: Callable[["ClientOptions", bool], IClientAuthenticatorFactory] | None = None


class ServerBuild:
    """
    Building the server side of methods, once each: ``settings`` (duck-typed,
    a `txsocksgss.server.config.Config`), the credential checkers and the
    realm a program adds, and a list collecting the password files a reload
    re-reads.  MAF builds its sub-methods through the same `factory`, so a
    method is built once however many chains name it.
    """

    def __init__(self, settings: Any, checkers: Iterable[ICredentialsChecker] = (), realm: IRealm | None = None,
                 password_checkers: list[PasswordFileChecker] | None = None) -> None:
        self.settings = settings
        self.checkers = list(checkers)
        self.realm = realm
        self.password_checkers = password_checkers
        self._built: dict[str, IServerAuthenticatorFactory] = {}

    def factory(self, name: str) -> IServerAuthenticatorFactory:
        """The server authenticator factory of method ``name``, built on first use."""
        if name not in self._built:
            entry = find(name)
            if entry is None or entry.server is None:
                raise ConfigError(f"unknown method {name!r}")  # the configuration has refused it already
            self._built[name] = entry.server(self)
        return self._built[name]


@dataclass(frozen=True)
class ClientOptions:
    """
    What the client sides are built from, whatever face gathered it.

    :ivar user: the user name for userpass (str or bytes), or ``None``.
    :ivar password: its password (never shown).
    :ivar gssapi: keyword arguments of
        `txsocksgss.auth.gssapi.GSSAPIClientFactory`, or ``None`` when the
        face gathered no GSS-API settings.
    :ivar maf_submethods: names of the sub-methods MAF offers, in order.
    """

    user: str | bytes | None = None
    password: str | bytes | None = field(default=None, repr=False)
    gssapi: Mapping[str, Any] | None = None
    maf_submethods: tuple[str, ...] = ()


class MissingClientSetting(ConfigError):
    """
    A method's client side needs an option that was not given.  Each face
    words it with its own option names.

    :ivar method: the method's name.
    :ivar setting: ``"credentials"``, ``"gssapi"`` or ``"submethods"``.
    :ivar within_maf: whether the method was to run as a MAF sub-method.
    """

    def __init__(self, method: str, setting: str, within_maf: bool) -> None:
        super().__init__(f"method {method} needs its {setting}")
        self.method = method
        self.setting = setting
        self.within_maf = within_maf


# -- the server sides -----------------------------------------------------------


def _server_userpass(build: ServerBuild) -> IServerAuthenticatorFactory:
    checkers = list(build.checkers)
    if build.settings.passwd:
        checkers.insert(0, PasswordFileChecker(build.settings.passwd))
    if build.password_checkers is not None:
        build.password_checkers.extend(c for c in checkers if isinstance(c, PasswordFileChecker))
    if not checkers:
        raise ConfigError(
            "method userpass needs a password file: --passwd FILE "
            "(create it with `socksgss passwd FILE USER`)"
        )
    checker = checkers[0] if len(checkers) == 1 else FirstMatchChecker(checkers)
    return UserPassServerFactory(Portal(build.realm or SOCKSUserRealm(), [checker]))


def _server_gssapi(build: ServerBuild) -> IServerAuthenticatorFactory:
    # Imported where used: it loads python-gssapi, which a client that
    # imports this registry may never need.
    from txsocksgss.auth.gssapi import GSSAPIServerFactory, parse_levels

    settings = build.settings
    mechanisms = ("krb5", "spnego") if settings.gssapi_mech == "any" else (settings.gssapi_mech,)
    return GSSAPIServerFactory(
        service=settings.gssapi_service,
        keytab=settings.gssapi_keytab,
        mechanisms=mechanisms,
        protection=parse_levels(settings.gssapi_protection),
        nec=settings.gssapi_nec,
        wrap=settings.gssapi_wrap,
    )


def _server_maf(build: ServerBuild) -> IServerAuthenticatorFactory:
    chains = []
    submethods: dict[int, IServerAuthenticatorFactory] = {}
    for spec in build.settings.maf_chains:
        names, grade = parse_chain_spec(spec)
        chains.append(Chain(tuple(submethod_id(n) for n in names), grade))
        for name in names:
            submethods[submethod_id(name)] = build.factory(name)
    return MAFServerFactory(ChainPolicy(chains, build.settings.maf_continue_on_failure), submethods)


# -- the client sides -----------------------------------------------------------


def _client_userpass(options: ClientOptions, within_maf: bool) -> IClientAuthenticatorFactory:
    if options.user is None or options.password is None:
        raise MissingClientSetting("userpass", "credentials", within_maf)
    return UserPassClientFactory(options.user, options.password)


def _client_gssapi(options: ClientOptions, within_maf: bool) -> IClientAuthenticatorFactory:
    if options.gssapi is None:
        raise MissingClientSetting("gssapi", "gssapi", within_maf)
    from txsocksgss.auth.gssapi import GSSAPIClientFactory  # python-gssapi only when wanted

    return GSSAPIClientFactory(**options.gssapi)


def _client_maf(options: ClientOptions, within_maf: bool) -> IClientAuthenticatorFactory:
    if not options.maf_submethods:
        raise MissingClientSetting("maf", "submethods", within_maf)
    pairs = []
    for name in options.maf_submethods:
        entry = find(name)
        if entry is None or entry.submethod is None or entry.client is None:
            raise ConfigError(f"unknown MAF sub-method {name!r} (known: {', '.join(SUBMETHOD_NAMES)})")
        pairs.append((entry.submethod, entry.client(options, True)))
    return MAFClientFactory(pairs)


#: Every method, in the order help texts list them.
METHODS: tuple[RegisteredMethod, ...] = (
    RegisteredMethod("none", MethodRole.METHOD, AuthMethod.NONE, None,
                     "no authentication (RFC 1928)",
                     server=lambda build: NoAuthServerFactory(),
                     client=lambda options, within_maf: NoAuthClientFactory()),
    RegisteredMethod("userpass", MethodRole.METHOD, AuthMethod.USERPASS, SubMethod.USERPASS,
                     "username and password (RFC 1929)", server=_server_userpass, client=_client_userpass),
    RegisteredMethod("gssapi", MethodRole.METHOD, AuthMethod.GSSAPI, SubMethod.GSSAPI,
                     "GSS-API, Kerberos (RFC 1961)", server=_server_gssapi, client=_client_gssapi),
    RegisteredMethod("maf", MethodRole.METHOD, AuthMethod.MAF, None,
                     "Multi-Authentication Framework: chains of sub-methods", server=_server_maf,
                     client=_client_maf),
    RegisteredMethod("socks4", MethodRole.SOCKS4, None, None,
                     "serve SOCKS 4/4a requests (no authentication but ident)"),
    RegisteredMethod("test", MethodRole.SUBMETHOD, None, SubMethod.TEST,
                     "MAF's internal test method (proves nothing)",
                     server=lambda build: TestSubMethodServerFactory(),
                     client=lambda options, within_maf: TestSubMethodClientFactory()),
)

_BY_NAME: Mapping[str, RegisteredMethod] = {entry.name: entry for entry in METHODS}
_BY_CODE: Mapping[int, RegisteredMethod] = {entry.code: entry for entry in METHODS if entry.code is not None}

#: The names a server's ``methods`` / ``--method`` accept.
SERVER_METHOD_NAMES: tuple[str, ...] = tuple(e.name for e in METHODS if e.role is not MethodRole.SUBMETHOD)
#: The names a client offers (``socksgss connect --method``, ``methods=``).
CLIENT_METHOD_NAMES: tuple[str, ...] = tuple(e.name for e in METHODS if e.role is MethodRole.METHOD)
#: The names that can run inside MAF (chains, ``--maf-submethod``, ``maf_submethods=``).
SUBMETHOD_NAMES: tuple[str, ...] = tuple(e.name for e in METHODS if e.submethod is not None)


def find(name: str) -> RegisteredMethod | None:
    """The method named ``name``, or ``None``."""
    return _BY_NAME.get(name)


def method_name(code: int) -> str:
    """The name of a SOCKS 5 method code, or the code in hex (``0x80``)."""
    entry = _BY_CODE.get(code)
    return entry.name if entry is not None else f"{code:#04x}"


def submethod_id(name: str) -> int:
    """The MAF sub-method id of ``name`` (a name of `SUBMETHOD_NAMES`)."""
    entry = _BY_NAME[name]
    assert entry.submethod is not None, f"{name} is not a MAF sub-method"
    return entry.submethod


def build_client(name: str, options: ClientOptions) -> IClientAuthenticatorFactory:
    """
    The client authenticator factory of method ``name`` (one of
    `CLIENT_METHOD_NAMES`) from ``options``.

    :raise MissingClientSetting: an option the method needs was not given.
    :raise ConfigError: an unknown name, or a bad option.
    """
    entry = _BY_NAME.get(name)
    if entry is None or entry.role is not MethodRole.METHOD or entry.client is None:
        raise ConfigError(f"unknown method {name!r} (known: {', '.join(CLIENT_METHOD_NAMES)})")
    return entry.client(options, False)
