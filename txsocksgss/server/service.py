"""
The server as an IService: what twistd runs and what a program composes.

    from txsocksgss.server.config import Config
    from txsocksgss.server.service import makeService

    service = makeService(Config.build(listen=["tcp:1080:interface=127.0.0.1"]))
    service.setServiceParent(application)   # or any MultiService
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from txsocksgss.auth.checkers import FirstMatchChecker
from txsocksgss.auth.none import NoAuthServerFactory
from txsocksgss.auth.passwordfile import PasswordFileChecker
from txsocksgss.auth.userpass import SOCKSUserRealm, UserPassServerFactory
from txsocksgss.errors import ConfigError
from txsocksgss.interfaces import IServerAuthenticatorFactory
from txsocksgss.server.config import Config, endpoint_is_loopback
from txsocksgss.wire.socks5 import AuthMethod
from txsocksgss.server.protocol import ServerContext, SOCKSServerFactory

__all__ = ["makeService", "makeServerFactory", "SOCKSService"]

_log = Logger()


def _authenticators(
    config: Config, checkers: Iterable[ICredentialsChecker], realm: IRealm | None
) -> tuple[IServerAuthenticatorFactory, ...]:
    built: dict[str, IServerAuthenticatorFactory] = {}

    def factory_for(name: str) -> IServerAuthenticatorFactory:
        if name not in built:
            built[name] = _buildMethod(name, config, checkers, realm, factory_for)
        return built[name]

    # "socks4" is not a SOCKS 5 method: it lets version 4 requests in (see ServerContext.socks4).
    return tuple(factory_for(name) for name in config.effective_methods if name != "socks4")


def _buildMethod(name: str, config: Config, checkers: Iterable[ICredentialsChecker], realm: IRealm | None,
                 factory_for: Any) -> IServerAuthenticatorFactory:
    if name == "none":
        return NoAuthServerFactory()
    if name == "userpass":
        all_checkers = list(checkers)
        if config.passwd:
            all_checkers.insert(0, PasswordFileChecker(config.passwd))
        if not all_checkers:
            raise ConfigError(
                "method userpass needs a password file: --passwd FILE "
                "(create it with `socksgss passwd FILE USER`)"
            )
        checker = all_checkers[0] if len(all_checkers) == 1 else FirstMatchChecker(all_checkers)
        return UserPassServerFactory(Portal(realm or SOCKSUserRealm(), [checker]))
    if name == "gssapi":
        from txsocksgss.auth.gssapi import GSSAPIServerFactory, parse_levels

        mechanisms = ("krb5", "spnego") if config.gssapi_mech == "any" else (config.gssapi_mech,)
        return GSSAPIServerFactory(
            service=config.gssapi_service,
            keytab=config.gssapi_keytab,
            mechanisms=mechanisms,
            protection=parse_levels(config.gssapi_protection),
            nec=config.gssapi_nec,
        )
    if name == "test":
        from txsocksgss.auth.maf import TestSubMethodServerFactory

        return TestSubMethodServerFactory()
    if name == "maf":
        from txsocksgss.auth.maf import SUBMETHOD_IDS, Chain, ChainPolicy, MAFServerFactory
        from txsocksgss.server.config import parse_maf_chain

        chains = []
        submethods: dict[int, IServerAuthenticatorFactory] = {}
        for spec in config.maf_chains:
            names, grade = parse_maf_chain(spec)
            chains.append(Chain(tuple(SUBMETHOD_IDS[n] for n in names), grade))
            for sub in names:
                submethods[SUBMETHOD_IDS[sub]] = factory_for(sub)
        return MAFServerFactory(ChainPolicy(chains, config.maf_continue_on_failure), submethods)
    raise ConfigError(f"unknown method {name!r}")  # validate() has already refused unknown names


def makeServerFactory(
    config: Config,
    reactor: Any = None,
    checkers: Iterable[ICredentialsChecker] = (),
    realm: IRealm | None = None,
    authenticators: Iterable[IServerAuthenticatorFactory] | None = None,
) -> SOCKSServerFactory:
    """
    The protocol factory behind every listener of ``config``.

    :param reactor: defaults to the global reactor.
    :param checkers: extra twisted.cred checkers for ``userpass`` (after the
        password file, if any).
    :param realm: the realm for ``userpass`` (default `SOCKSUserRealm`).
    :param authenticators: replaces the factories built from
        ``config.methods`` (for methods a program implements itself).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if authenticators is None:
        methods = _authenticators(config, checkers, realm)
    else:
        methods = tuple(authenticators)
    check_open_proxy(config, methods)
    ident = None
    if config.ident != "off":
        from txsocksgss.auth.ident import IdentChecker, IdentMode

        ident = IdentChecker(IdentMode(config.ident), reactor, config.ident_port, config.ident_timeout)
    context = ServerContext(
        reactor=reactor,
        resolver=reactor.nameResolver,
        authenticators=methods,
        policy=config.rules,
        negotiation_timeout=config.negotiation_timeout,
        idle_timeout=config.idle_timeout,
        external=config.external,
        ident=ident,
        socks4="socks4" in config.effective_methods,
        splice=config.splice,
    )
    return SOCKSServerFactory(context)


def check_open_proxy(config: Config, methods: Iterable[IServerAuthenticatorFactory]) -> None:
    """
    Refuse an unauthenticated method on a listener other clients can reach,
    unless ``config.allow_open``: the open-proxy check, on the methods
    actually served (a program's own authenticators included).
    """
    socks4_open = "socks4" in config.effective_methods and config.ident != "require"
    if config.allow_open or not (socks4_open or any(m.method == AuthMethod.NONE for m in methods)):
        return
    public = [desc for desc in config.listen if not endpoint_is_loopback(desc)]
    if public:
        raise ConfigError(
            f"refusing to start an unauthenticated proxy on {public[0]}: anyone who can "
            "reach that address could use it.  Listen on 127.0.0.1 "
            "(--listen tcp:1080:interface=127.0.0.1), require a password "
            "(--method userpass --passwd FILE), or pass --allow-open if the "
            "network or the rules already restrict who can connect"
        )


class SOCKSService(MultiService):
    """A MultiService with one listener per ``config.listen`` entry; ``factory`` serves them all."""

    def __init__(self, config: Config, factory: SOCKSServerFactory, reactor: Any,
                 worker_argv: Iterable[str] | None = None) -> None:
        super().__init__()
        self.methods = ", ".join(m.name for m in factory.context.authenticators)
        self.config = config
        self.factory = factory
        shared = config.workers > 1
        if shared and worker_argv is not None:
            from txsocksgss.server.workers import WorkerPool

            WorkerPool(reactor, config.workers, list(worker_argv)).setServiceParent(self)
        for description in config.listen:
            if shared:
                from txsocksgss.server.workers import reuse_port_endpoint

                endpoint: Any = reuse_port_endpoint(reactor, description)
            else:
                endpoint = serverFromString(reactor, description)
            listener = StreamServerEndpointService(endpoint, factory)
            # As twisted.application.strports does: a listen error stops
            # twistd at start-up instead of being logged and ignored.
            listener._raiseSynchronously = True
            listener.setName(description)
            listener.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        _log.info(
            "txsocksgss listening on {listen}; methods {methods}; rules: {rules}",
            listen=", ".join(self.config.listen),
            methods=self.methods,
            rules=self.config.rules_file or ("inline" if self.config.rules.rules else "none (allow all)"),
        )


def makeService(
    config: Config,
    reactor: Any = None,
    checkers: Iterable[ICredentialsChecker] = (),
    realm: IRealm | None = None,
    authenticators: Iterable[IServerAuthenticatorFactory] | None = None,
) -> SOCKSService:
    """
    Build the SOCKS server service for ``config`` (see `makeServerFactory`
    for the other arguments).  Add it to an Application or MultiService; it
    listens when started.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    factory = makeServerFactory(config, reactor, checkers, realm, authenticators)
    return SOCKSService(config, factory, reactor)


def makeServiceFromFactory(config: Config, factory: SOCKSServerFactory, reactor: Any = None,
                           worker_argv: Iterable[str] | None = None) -> SOCKSService:
    """
    The service for a factory already built with `makeServerFactory` (twistd
    builds it while parsing options).  With ``config.workers`` > 1 and
    ``worker_argv`` (the twistd options), it also starts the other workers.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return SOCKSService(config, factory, reactor, worker_argv)
