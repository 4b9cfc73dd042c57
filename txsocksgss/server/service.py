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

from txsocksgss.auth.none import NoAuthServerFactory
from txsocksgss.auth.passwordfile import PasswordFileChecker
from txsocksgss.auth.userpass import SOCKSUserRealm, UserPassServerFactory
from txsocksgss.errors import ConfigError
from txsocksgss.interfaces import IServerAuthenticatorFactory
from txsocksgss.server.config import Config
from txsocksgss.server.protocol import ServerContext, SOCKSServerFactory

__all__ = ["makeService", "makeServerFactory", "SOCKSService"]

_log = Logger()


def _authenticators(
    config: Config, checkers: Iterable[ICredentialsChecker], realm: IRealm | None
) -> tuple[IServerAuthenticatorFactory, ...]:
    factories: list[IServerAuthenticatorFactory] = []
    for name in config.effective_methods:
        if name == "none":
            factories.append(NoAuthServerFactory())
        elif name == "userpass":
            all_checkers = list(checkers)
            if config.passwd:
                all_checkers.insert(0, PasswordFileChecker(config.passwd))
            if not all_checkers:
                raise ConfigError("method userpass needs a password file or a credentials checker")
            factories.append(UserPassServerFactory(Portal(realm or SOCKSUserRealm(), all_checkers)))
        elif name == "gssapi":
            from txsocksgss.auth.gssapi import GSSAPIServerFactory, parse_levels

            mechanisms = ("krb5", "spnego") if config.gssapi_mech == "any" else (config.gssapi_mech,)
            factories.append(
                GSSAPIServerFactory(
                    service=config.gssapi_service,
                    keytab=config.gssapi_keytab,
                    mechanisms=mechanisms,
                    protection=parse_levels(config.gssapi_protection),
                    nec=config.gssapi_nec,
                )
            )
        else:  # validate() has already refused unknown names
            raise ConfigError(f"unknown method {name!r}")
    return tuple(factories)


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
    context = ServerContext(
        reactor=reactor,
        resolver=reactor.nameResolver,
        authenticators=methods,
        policy=config.rules,
        negotiation_timeout=config.negotiation_timeout,
        idle_timeout=config.idle_timeout,
        external=config.external,
    )
    return SOCKSServerFactory(context)


class SOCKSService(MultiService):
    """A MultiService with one listener per ``config.listen`` entry; ``factory`` serves them all."""

    def __init__(self, config: Config, factory: SOCKSServerFactory, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.factory = factory
        for description in config.listen:
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
            methods=", ".join(self.config.effective_methods),
            rules=self.config.rules_file or "built in",
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
