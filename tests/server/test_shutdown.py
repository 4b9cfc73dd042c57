"""
Graceful shutdown: stopping the service stops accepting, lets open tunnels
go on for the grace period (--shutdown-grace), then closes the rest; the
same through a real twistd process stopped with SIGTERM.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.clients import openTunnel
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.ports import free_port
from tests.helpers.processes import spawnTwistd
from tests.helpers.servers import EchoFactory
from txsocksgss.errors import ConfigError
from txsocksgss.server.config import Config
from txsocksgss.server.service import SOCKSService, makeService
from txsocksgss.tap import Options


class _StubTransport:
    def __init__(self, session: "_StubSession") -> None:
        self.session = session
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.session.end()


class _StubSession:
    """Stands for a client connection in ``context.sessions``; ``stubborn`` ones ignore shutdown()."""

    def __init__(self, context: Any, stubborn: bool = False) -> None:
        self.context = context
        self.stubborn = stubborn
        self.shutdowns = 0
        self.transport = _StubTransport(self)
        context.sessionStarted(self)

    def shutdown(self) -> None:
        self.shutdowns += 1
        if not self.stubborn:
            self.end()

    def end(self) -> None:
        self.context.sessionEnded(self)


class GracePeriodTests(SynchronousTestCase):
    """The drain logic on a memory reactor and a clock."""

    def service(self, **config: Any) -> SOCKSService:
        config.setdefault("listen", ["tcp:1080:interface=127.0.0.1"])
        service = makeService(Config.build(**config), MemoryReactorClock())
        service.clock = Clock()
        service.startService()
        return service

    def test_default_grace_is_ten_seconds(self) -> None:
        self.assertEqual(Config().shutdown_grace, 10.0)

    def test_stops_at_once_without_sessions(self) -> None:
        service = self.service()
        self.successResultOf(service.stopService())
        self.assertFalse(service.running)

    def test_waits_for_a_session_that_ends_within_the_grace_period(self) -> None:
        service = self.service(shutdown_grace=10)
        session = _StubSession(service.factory.context)
        stopped = service.stopService()
        service.clock.advance(9)
        self.assertNoResult(stopped)
        session.end()
        self.successResultOf(stopped)
        self.assertEqual(session.shutdowns, 0)
        self.assertEqual(service.clock.getDelayedCalls(), [])

    def test_closes_the_sessions_left_when_the_grace_period_is_over(self) -> None:
        service = self.service(shutdown_grace=10)
        sessions = [_StubSession(service.factory.context) for _ in range(3)]
        stopped = service.stopService()
        self.assertNoResult(stopped)
        service.clock.advance(10)
        self.successResultOf(stopped)
        self.assertEqual([s.shutdowns for s in sessions], [1, 1, 1])
        self.assertEqual(service.clock.getDelayedCalls(), [])

    def test_zero_grace_closes_at_once(self) -> None:
        service = self.service(shutdown_grace=0)
        session = _StubSession(service.factory.context)
        stopped = service.stopService()
        service.clock.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(session.shutdowns, 1)

    def test_connections_that_do_not_close_are_aborted_after_a_deadline(self) -> None:
        service = self.service(shutdown_grace=1)
        polite = _StubSession(service.factory.context)
        stubborn = _StubSession(service.factory.context, stubborn=True)
        stopped = service.stopService()
        service.clock.advance(1)
        self.assertNoResult(stopped)
        self.assertEqual((polite.shutdowns, stubborn.shutdowns), (1, 1))
        service.clock.advance(5)
        self.successResultOf(stopped)
        self.assertTrue(stubborn.transport.aborted)
        self.assertFalse(polite.transport.aborted)

    def test_hurrying_skips_the_grace_period_then_the_close_deadline(self) -> None:
        service = self.service(shutdown_grace=600)
        stubborn = _StubSession(service.factory.context, stubborn=True)
        stopped = service.stopService()
        service.hurryShutdown()
        self.assertEqual(stubborn.shutdowns, 1)
        self.assertNoResult(stopped)
        service.hurryShutdown()
        self.assertTrue(stubborn.transport.aborted)
        self.successResultOf(stopped)
        self.assertEqual(service.clock.getDelayedCalls(), [])

    def test_negative_grace_is_refused(self) -> None:
        error = self.assertRaises(ConfigError, Config.build, shutdown_grace=-1)
        self.assertIn("shutdown grace", str(error))

    def test_twistd_option_and_toml_key(self) -> None:
        options = Options()
        options.parseOptions(["--shutdown-grace", "2.5"])
        self.assertEqual(options.config.shutdown_grace, 2.5)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("shutdown_grace = 0\n")
        self.assertEqual(Config.from_toml(path).shutdown_grace, 0.0)


def _logged(text: str) -> Deferred[None]:
    """Fires when a log event whose text contains ``text`` is emitted."""
    d: Deferred[None] = Deferred()

    def observer(event: dict[str, Any]) -> None:
        if text in formatEvent(event) and not d.called:
            globalLogPublisher.removeObserver(observer)
            d.callback(None)

    globalLogPublisher.addObserver(observer)
    return d


class ServiceShutdownTests(IntegrationTestCase):
    """The service on real sockets, with the grace period on a clock."""

    @inlineCallbacks
    def test_open_tunnel_works_during_the_grace_period_and_is_closed_after(self) -> None:
        logs = self.captureLogs()
        echo_port = self.listen(EchoFactory())
        service = makeService(Config.build(listen=["tcp:0:interface=127.0.0.1"], shutdown_grace=30), reactor)
        service.clock = Clock()
        service.startService()
        ports = yield service.whenListening()
        proxy_port = ports["tcp:0:interface=127.0.0.1"].getHost().port
        tunnel = yield openTunnel(self, proxy_port, echo_port)
        self.assertEqual((yield tunnel.roundTrip(b"before")), b"before")

        draining = _logged("stopped listening; waiting up to 30.0s for 1 open sessions")
        stopped = service.stopService()
        yield draining
        # No new clients...
        refused = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy_port), Protocol())
        yield self.assertFailure(refused, ConnectionRefusedError)
        # ...but the open tunnel still carries data.
        self.assertEqual((yield tunnel.roundTrip(b"during")), b"beforeduring")
        self.assertFalse(stopped.called)

        service.clock.advance(30)
        yield tunnel.lost
        yield stopped
        self.assertTrue(any("outcome=server shutdown" in line for line in logs), logs)
        self.assertTrue(any("shutdown grace period over; closing 1 open sessions" in line for line in logs))


class TwistdShutdownTests(IntegrationTestCase):
    """twistd stopped by SIGTERM with a tunnel open."""

    @inlineCallbacks
    def test_sigterm_keeps_the_tunnel_for_the_grace_period_then_closes_it(self) -> None:
        port = free_port()
        process = spawnTwistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1", "--shutdown-grace", "3")
        yield process.waitFor(b"txsocksgss listening on")
        echo_port = self.listen(EchoFactory())
        tunnel = yield openTunnel(self, port, echo_port)
        self.assertEqual((yield tunnel.roundTrip(b"ping")), b"ping")

        process.transport.signalProcess(signal.SIGTERM)
        yield process.waitFor(b"stopped listening; waiting up to 3.0s for 1 open sessions")
        refused = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
        yield self.assertFailure(refused, ConnectionRefusedError)
        self.assertEqual((yield tunnel.roundTrip(b"pong")), b"pingpong")

        yield tunnel.lost
        exit_code, exit_signal = yield process.ended
        output = process.output.decode()
        # twistd re-raises the signal that stopped it once it has shut down.
        self.assertIn((exit_code, exit_signal), [(0, None), (None, signal.SIGTERM)], output)
        self.assertNotIn("Traceback", output)
        self.assertLess(output.index("shutdown grace period over; closing 1 open sessions"),
                        output.index("outcome=server shutdown"))
        self.assertIn("Server Shut Down", output)

    @inlineCallbacks
    def test_a_second_sigterm_closes_the_tunnels_at_once(self) -> None:
        port = free_port()
        # A grace period longer than the test's timeout: the second signal must cut it short.
        process = spawnTwistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1", "--shutdown-grace", "600")
        yield process.waitFor(b"txsocksgss listening on")
        echo_port = self.listen(EchoFactory())
        tunnel = yield openTunnel(self, port, echo_port)
        process.transport.signalProcess(signal.SIGTERM)
        yield process.waitFor(b"stopped listening; waiting up to 600.0s for 1 open sessions")
        process.transport.signalProcess(signal.SIGTERM)
        yield tunnel.lost
        exit_code, exit_signal = yield process.ended
        output = process.output.decode()
        self.assertIn((exit_code, exit_signal), [(0, None), (None, signal.SIGTERM)], output)
        self.assertIn("SIGTERM received while stopping: not waiting any longer", output)
        self.assertIn("outcome=server shutdown", output)
        self.assertNotIn("Traceback", output)

    @inlineCallbacks
    def test_sigterm_exits_as_soon_as_the_last_tunnel_ends(self) -> None:
        port = free_port()
        # A grace period longer than the test's timeout: the process must not wait it out.
        process = spawnTwistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1", "--shutdown-grace", "600")
        yield process.waitFor(b"txsocksgss listening on")
        echo_port = self.listen(EchoFactory())
        tunnel = yield openTunnel(self, port, echo_port)
        process.transport.signalProcess(signal.SIGTERM)
        yield process.waitFor(b"stopped listening; waiting up to 600.0s for 1 open sessions")
        tunnel.transport.loseConnection()
        exit_code, exit_signal = yield process.ended
        output = process.output.decode()
        self.assertIn((exit_code, exit_signal), [(0, None), (None, signal.SIGTERM)], output)
        self.assertIn("every session ended within the shutdown grace period", output)
        self.assertNotIn("outcome=server shutdown", output)
        self.assertNotIn("Traceback", output)
