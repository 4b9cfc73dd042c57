"""
The server as an IService: what twistd runs and what a program composes.

    from txsocksgss.server.config import Config
    from txsocksgss.server.service import makeService

    service = makeService(Config.build(listen=["tcp:1080:interface=127.0.0.1"]))
    service.setServiceParent(application)   # or any MultiService

Operations.  Stopping the service stops the listeners, lets open tunnels
go on for ``config.shutdown_grace`` seconds, then closes the rest (see
`SOCKSService.stopService`).  `SOCKSService.reload` re-reads the rules file
and the password file without dropping a session; twistd's service does it
on SIGHUP.  With ``config.metrics`` an HTTP endpoint serves Prometheus
metrics (`txsocksgss.server.metrics`).
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Iterable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsocksgss.auth.passwordfile import PasswordFileChecker
from txsocksgss.auth.registry import MethodRole, ServerBuild, find
from txsocksgss.interfaces import IServerAuthenticatorFactory
from txsocksgss._twisted_internals import listening_port, probe, raise_listen_errors
from txsocksgss.auth.ident import IdentChecker, IdentMode
from txsocksgss.server.config import Config, check_open_proxy
from txsocksgss.server.guard import destination_guard_for
from txsocksgss.server.lean import lean_available, lean_endpoint
from txsocksgss.server.limits import SessionLimits, limit_settings
from txsocksgss.server.metrics import ServerMetrics, metricsService
from txsocksgss.server.protocol import ServerContext, SOCKS5ServerProtocol, SOCKSServerFactory
from txsocksgss.server.reload import Reloader, SignalReload
from txsocksgss.server.session import SessionObserver
from txsocksgss.server.workers import WorkerPool, reuse_port_endpoint

__all__ = ["makeService", "makeServerFactory", "makeServiceFromFactory", "ManagedServerFactory", "SOCKSService"]

_log = Logger()

# After the grace period the remaining sessions are closed; a client that
# reads nothing can hold a closing connection open, so after this many more
# seconds the stragglers are aborted.
_CLOSE_DEADLINE = 5.0


def _authenticators(
    config: Config, checkers: Iterable[ICredentialsChecker], realm: IRealm | None,
    password_checkers: list[PasswordFileChecker] | None = None,
) -> tuple[IServerAuthenticatorFactory, ...]:
    """The server sides of ``config``'s methods, in its order, built by the registry."""
    build = ServerBuild(config, checkers, realm, password_checkers)
    # "socks4" is not a SOCKS 5 method: it lets version 4 requests in (see ServerContext.socks4).
    return tuple(build.factory(name) for name in config.effective_methods
                 if _role(name) is not MethodRole.SOCKS4)


def _role(name: str) -> MethodRole | None:
    entry = find(name)
    return entry.role if entry is not None else None


class ManagedServerFactory(SOCKSServerFactory):
    """
    The `SOCKSServerFactory` `makeServerFactory` builds, with what a running
    service manages besides the protocol: ``observers``, added to every new
    session's `SessionRecord` (metrics), and ``password_checkers``, the
    password files a reload re-reads.
    """

    def __init__(self, context: ServerContext, password_checkers: Iterable[PasswordFileChecker] = ()) -> None:
        self.observers: list[SessionObserver] = []
        self.password_checkers = tuple(password_checkers)
        super().__init__(context, lambda ctx: SOCKS5ServerProtocol(ctx, self.observers))

    @property
    def leanSessions(self) -> bool:
        """
        Whether a plain TCP listener may serve this factory's sessions
        through `txsocksgss.server.lean` (its protocols get the connections
        that driver adopts): splicing is on, and no subclass builds protocols of
        its own.
        """
        return self.context.splice and type(self).buildProtocol is SOCKSServerFactory.buildProtocol


def makeServerFactory(
    config: Config,
    reactor: Any = None,
    checkers: Iterable[ICredentialsChecker] = (),
    realm: IRealm | None = None,
    authenticators: Iterable[IServerAuthenticatorFactory] | None = None,
) -> ManagedServerFactory:
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
    password_checkers: list[PasswordFileChecker] = []
    if authenticators is None:
        methods = _authenticators(config, checkers, realm, password_checkers)
    else:
        methods = tuple(authenticators)
    check_open_proxy(config, methods)
    ident = None
    if config.ident != "off":
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
        limits=SessionLimits(limit_settings(config)),
        guard=destination_guard_for(config.destination_guard, config.listen),
    )
    return ManagedServerFactory(context, password_checkers)


class SOCKSService(MultiService):
    """
    A MultiService with one listener per ``config.listen`` entry; ``factory``
    serves them all.  As ``config`` asks, it also runs the other worker
    processes (``workers``) and the metrics endpoint (``metrics``).

    :param handle_signals: while running, reload (`reload`) on SIGHUP; while
        stopping, close the open sessions at once on a second SIGTERM or
        SIGINT instead of waiting out the grace period.  A program that
        handles signals itself leaves it off and calls `reload`.
    :ivar clock: the IReactorTime of the shutdown grace period.
    :ivar metrics: the `txsocksgss.server.metrics.ServerMetrics`, or ``None``
        without ``config.metrics``.
    :ivar reloader: the `txsocksgss.server.reload.Reloader` of this server.
    """

    def __init__(self, config: Config, factory: SOCKSServerFactory, reactor: Any,
                 worker_argv: Iterable[str] | None = None, handle_signals: bool = False) -> None:
        super().__init__()
        self.methods = ", ".join(m.name for m in factory.context.authenticators)
        self.config = config
        self.factory = factory
        self.clock = reactor
        self.workers: Any = None
        self.metrics: Any = None
        self._listeners: list[StreamServerEndpointService] = []
        self._metrics_service: Service | None = None
        shared = config.workers > 1
        if shared and worker_argv is not None:
            self.workers = WorkerPool(reactor, config.workers, list(worker_argv))
            self.workers.setServiceParent(self)
        lean = lean_available(reactor, config.splice)
        for description in config.listen:
            endpoint: Any = lean_endpoint(reactor, description, reuse_port=shared) if lean else None
            if endpoint is not None:
                pass
            elif shared:
                endpoint = reuse_port_endpoint(reactor, description)
            else:
                endpoint = serverFromString(reactor, description)
            listener = StreamServerEndpointService(endpoint, factory)
            # As twisted.application.strports does: a listen error stops
            # twistd at start-up instead of being logged and ignored.
            raise_listen_errors(listener)
            listener.setName(description)
            listener.setServiceParent(self)
            self._listeners.append(listener)
        if config.metrics:
            self.metrics = ServerMetrics(factory.context)
            # A factory not built by makeServerFactory has no observers: its
            # metrics then hold the open sessions and relayed bytes only.
            getattr(factory, "observers", []).append(self.metrics)
            self._metrics_service = metricsService(reactor, config.metrics, self.metrics.registry)
            self._metrics_service.setName("metrics")
            self._metrics_service.setServiceParent(self)
        self.reloader = Reloader(factory.context, config.rules_file, getattr(factory, "password_checkers", ()))
        self._reactor = reactor
        self._handle_signals = handle_signals
        self._signal = SignalReload(reactor, self.reload) if handle_signals else None
        self._waiting: Deferred[Any] | None = None  # what stopping waits for now; cancel() hurries it

    def startService(self) -> None:
        # Before any listener: a fast path whose Twisted internals are not
        # what it expects is turned off (and says so) before it is used.
        probe(self._reactor)
        super().startService()
        if self._signal is not None:
            self._signal.install()
        _log.info(
            "txsocksgss listening on {listen}; methods {methods}; rules: {rules}",
            listen=", ".join(self.config.listen),
            methods=self.methods,
            rules=self.config.rules_file or ("inline" if self.config.rules.rules else "none (allow all)"),
        )
        if self.config.metrics:
            _log.info("metrics on {endpoint}", endpoint=self.config.metrics)

    def whenListening(self) -> Deferred[dict[str, IListeningPort]]:
        """
        Fires, once the service has started and every listener listens, with
        the listening port of each: by endpoint string, and ``"metrics"``
        (for listeners on port 0).
        """
        services = [*self._listeners, *([self._metrics_service] if self._metrics_service is not None else [])]
        waits = [listening_port(s) for s in services]
        if any(w is None for w in waits):
            raise RuntimeError("the service has not been started")
        listening: Deferred[Any] = DeferredList(waits, fireOnOneErrback=True, consumeErrors=True)
        listening.addCallback(lambda results: {s.name: port for s, (_ok, port) in zip(services, results)})
        return listening

    def reload(self) -> bool:
        """
        Re-read the rules file and the password file now, in this process
        and (by SIGHUP) in the worker processes.  Open sessions go on; new
        requests follow the new rules.  A bad rules file is logged and the
        old rules stay.

        :return: False when this process kept its old rules.
        """
        reloaded = self.reloader.reload()
        if self.workers is not None:
            self.workers.signalWorkers(signal.SIGHUP)
        return reloaded

    def stopService(self) -> Deferred[None]:
        """
        Stop gracefully: stop accepting, let the open sessions go on for
        ``config.shutdown_grace`` seconds, then close the rest (aborting,
        5 seconds later, connections that still have not closed); stop the
        metrics endpoint last.  Fires when every client connection is gone.
        """
        Service.stopService(self)
        restore: Callable[[], None] | None = None
        if self._signal is not None:
            self._signal.uninstall()
        if self._handle_signals:
            restore = _callOnSignals(self._reactor, (signal.SIGTERM, signal.SIGINT), self._signalledAgain)
        others = [s for s in reversed(list(self)) if s is not self._metrics_service and s is not self.workers]
        stopping: Deferred[Any] = DeferredList([maybeDeferred(s.stopService) for s in others])
        stopping.addCallback(lambda _: self._drain())
        waits = [stopping]
        if self.workers is not None:
            waits.append(maybeDeferred(self.workers.stopService))  # the workers have their own grace
        stopped: Deferred[Any] = DeferredList(waits)
        if self._metrics_service is not None:
            metrics = self._metrics_service
            stopped.addCallback(lambda _: metrics.stopService())

        def done(_: Any) -> None:
            self._waiting = None
            if restore is not None:
                restore()

        stopped.addCallback(done)
        return stopped

    def hurryShutdown(self) -> None:
        """
        While stopping, skip the rest of the current wait: the grace period
        (the open sessions are closed now), or the wait for closing
        connections (they are aborted now).
        """
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()

    def _signalledAgain(self, signum: int) -> None:
        _log.info("{signal} received while stopping: not waiting any longer",
                  signal=signal.Signals(signum).name)
        self.hurryShutdown()

    def _drain(self) -> Deferred[None] | None:
        """Wait for the open sessions to end, up to the grace period; then close them."""
        context = self.factory.context
        if not context.sessions:
            return None
        grace = self.config.shutdown_grace
        _log.info("stopped listening; waiting up to {grace}s for {count} open sessions to end",
                  grace=grace, count=len(context.sessions))
        drained = self._waiting = context.whenDrained()
        timer = self.clock.callLater(grace, self.hurryShutdown)

        def ended(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                result.trap(CancelledError)
                return self._closeRemaining()
            self._waiting = None
            _log.info("every session ended within the shutdown grace period")
            return None

        drained.addBoth(ended)
        return drained

    def _closeRemaining(self) -> Deferred[None] | None:
        context = self.factory.context
        _log.info("shutdown grace period over; closing {count} open sessions", count=len(context.sessions))
        context.closeSessions()
        if not context.sessions:
            return None
        closed = self._waiting = context.whenDrained()
        timer = self.clock.callLater(_CLOSE_DEADLINE, self.hurryShutdown)

        def ended(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if not isinstance(result, Failure):
                self._waiting = None
                return None
            result.trap(CancelledError)
            _log.warn("{count} connections still open after closing them: aborting them",
                      count=len(context.sessions))
            for session in list(context.sessions):
                transport = getattr(session, "transport", None)
                if transport is not None:
                    transport.abortConnection()
            return context.whenDrained()

        closed.addBoth(ended)
        return closed


def _callOnSignals(reactor: Any, signums: Iterable[int], call: Callable[[int], Any]) -> Callable[[], None]:
    """
    Call ``call(signum)`` in the reactor thread on each of ``signums`` from
    now on; return the function that puts the previous handlers back.
    """
    def received(signum: int, frame: Any) -> None:
        # A signal handler may run between any two bytecodes of the reactor thread.
        reactor.callFromThread(call, signum)

    previous = {signum: signal.signal(signum, received) for signum in signums}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    return restore


def makeService(
    config: Config,
    reactor: Any = None,
    checkers: Iterable[ICredentialsChecker] = (),
    realm: IRealm | None = None,
    authenticators: Iterable[IServerAuthenticatorFactory] | None = None,
    handle_signals: bool = False,
) -> SOCKSService:
    """
    Build the SOCKS server service for ``config`` (see `makeServerFactory`
    for the other arguments).  Add it to an Application or MultiService; it
    listens when started.  With ``handle_signals`` it reloads on SIGHUP
    (see `SOCKSService`).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    factory = makeServerFactory(config, reactor, checkers, realm, authenticators)
    return SOCKSService(config, factory, reactor, handle_signals=handle_signals)


def makeServiceFromFactory(config: Config, factory: SOCKSServerFactory, reactor: Any = None,
                           worker_argv: Iterable[str] | None = None,
                           handle_signals: bool = False) -> SOCKSService:
    """
    The service for a factory already built with `makeServerFactory` (twistd
    builds it while parsing options).  With ``config.workers`` > 1 and
    ``worker_argv`` (the twistd options), it also starts the other workers.
    With ``handle_signals`` it reloads on SIGHUP (twistd's service does; see
    `SOCKSService`).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return SOCKSService(config, factory, reactor, worker_argv, handle_signals)
