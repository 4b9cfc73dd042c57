"""
Reload without dropping sessions: new rules apply to new requests, open
tunnels go on, a bad rules file keeps the old rules, the password file is
re-read; on SIGHUP, in a real twistd process and in its workers.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.helpers.clients import Tunnel, openTunnel
from tests.helpers.integration import IntegrationTestCase
from tests.helpers.ports import free_port
from tests.helpers.processes import spawnTwistd
from tests.helpers.servers import EchoFactory
from txsocksgss.auth.passwordfile import PasswordFileChecker, run_synchronously, set_password
from txsocksgss.client.endpoints import SOCKS5ClientEndpoint
from txsocksgss.errors import ConnectionNotAllowed
from txsocksgss.server.config import Config
from txsocksgss.server.reload import Reloader, SignalReload
from txsocksgss.server.rules import ALLOW_ALL
from txsocksgss.server.service import makeServerFactory, makeService
from txsocksgss.server.workers import WorkerPool


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _deny_port(port: int) -> str:
    return f'default = "allow"\n\n[[rule]]\naction = "deny"\nname = "no-echo"\nports = [{port}]\n'


class _Context:
    policy: Any = None


class ReloaderTests(SynchronousTestCase):
    def test_new_rules_replace_the_policy(self) -> None:
        path = self.mktemp()
        _write(path, _deny_port(7))
        context = _Context()
        context.policy = ALLOW_ALL
        self.assertTrue(Reloader(context, path).reload())
        self.assertEqual(len(context.policy.rules), 1)
        self.assertTrue(context.policy.default_allow)

    def test_a_bad_rules_file_keeps_the_old_rules_and_says_why(self) -> None:
        path = self.mktemp()
        _write(path, '[[rule]]\naction = "maybe"\n')
        context = _Context()
        context.policy = ALLOW_ALL
        logged: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.assertFalse(Reloader(context, path).reload())
        self.assertIs(context.policy, ALLOW_ALL)
        errors = [e for e in logged if e.get("log_format", "").startswith("rules not reloaded")]
        self.assertEqual(len(errors), 1)
        self.assertIn(path, errors[0]["error"])

    def test_a_missing_rules_file_keeps_the_old_rules(self) -> None:
        context = _Context()
        context.policy = ALLOW_ALL
        self.assertFalse(Reloader(context, self.mktemp()).reload())
        self.assertIs(context.policy, ALLOW_ALL)

    def test_inline_rules_are_left_alone(self) -> None:
        context = _Context()
        context.policy = ALLOW_ALL
        self.assertTrue(Reloader(context, None).reload())
        self.assertIs(context.policy, ALLOW_ALL)

    def test_the_password_file_is_reread_even_when_it_looks_unchanged(self) -> None:
        path = self.mktemp()
        set_password(path, "alice", b"old-password", n=2**4)
        checker = PasswordFileChecker(path, threadpool_runner=run_synchronously)
        set_password(path, "alice", b"new-password", n=2**4)
        # Make the change invisible to the checker's own check (as a rewrite
        # within the file system's timestamp granularity would be).
        st = os.stat(path)
        checker._signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"alice", b"old-password")))
        Reloader(_Context(), None, [checker]).reload()
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"alice", b"old-password")),
                             UnauthorizedLogin)
        self.assertEqual(
            self.successResultOf(checker.requestAvatarId(UsernamePassword(b"alice", b"new-password"))), "alice")

    def test_the_factory_knows_its_password_checker(self) -> None:
        path = self.mktemp()
        set_password(path, "alice", b"pw", n=2**4)
        factory = makeServerFactory(Config.build(passwd=path), MemoryReactorClock())
        self.assertEqual([type(c) for c in factory.password_checkers], [PasswordFileChecker])


class ServiceReloadTests(SynchronousTestCase):
    def test_reload_forwards_sighup_to_the_workers(self) -> None:
        service = makeService(Config.build(listen=["tcp:1080:interface=127.0.0.1"]), MemoryReactorClock())
        sent: list[int] = []

        class Pool:
            def signalWorkers(self, signum: int) -> None:
                sent.append(signum)

        service.workers = Pool()
        service.reload()
        self.assertEqual(sent, [signal.SIGHUP])

    def test_worker_pool_signals_running_workers_only(self) -> None:
        pool = WorkerPool(MemoryReactorClock(), 3, [])
        signals: list[tuple[str, Any]] = []

        class Transport:
            def __init__(self, name: str) -> None:
                self.name = name

            def signalProcess(self, signum: Any) -> None:
                signals.append((self.name, signum))

        class Protocol:
            def __init__(self, ended: bool) -> None:
                self.ended = Deferred()
                if ended:
                    self.ended.callback(None)

        pool.processes = [(Transport("running"), Protocol(False)), (Transport("gone"), Protocol(True))]
        pool.signalWorkers(signal.SIGHUP)
        self.assertEqual(signals, [("running", signal.SIGHUP)])


class SignalReloadTests(TestCase):
    def test_sighup_runs_the_reload_in_the_reactor_and_uninstall_restores_the_handler(self) -> None:
        previous = signal.getsignal(signal.SIGHUP)
        reloaded: Deferred[None] = Deferred()
        handler = SignalReload(reactor, lambda: reloaded.callback(None))
        handler.install()
        self.addCleanup(handler.uninstall)
        os.kill(os.getpid(), signal.SIGHUP)

        def check(_: Any) -> None:
            handler.uninstall()
            self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

        return reloaded.addCallback(check)


class RulesReloadIntegrationTests(IntegrationTestCase):
    @inlineCallbacks
    def test_open_tunnel_survives_and_new_requests_follow_the_new_rules(self) -> None:
        echo_port = self.listen(EchoFactory())
        rules = self.mktemp()
        _write(rules, 'default = "allow"\n')
        proxy_port, factory = self.startSOCKS(rules_file=rules)
        tunnel = yield openTunnel(self, proxy_port, echo_port)
        self.assertEqual((yield tunnel.roundTrip(b"one")), b"one")

        _write(rules, _deny_port(echo_port))
        self.assertTrue(Reloader(factory.context, rules).reload())
        self.assertEqual((yield tunnel.roundTrip(b"two")), b"onetwo")
        endpoint = SOCKS5ClientEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy_port), "127.0.0.1", echo_port)
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Tunnel)), ConnectionNotAllowed)


class TwistdReloadTests(IntegrationTestCase):
    @inlineCallbacks
    def test_sighup_reloads_rules_without_dropping_the_open_tunnel(self) -> None:
        echo_port = self.listen(EchoFactory())
        rules = self.mktemp()
        _write(rules, 'default = "allow"\n')
        port = free_port()
        process = spawnTwistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1", "--rules", rules)
        yield process.waitFor(b"txsocksgss listening on")
        tunnel = yield openTunnel(self, port, echo_port)
        self.assertEqual((yield tunnel.roundTrip(b"one")), b"one")

        _write(rules, _deny_port(echo_port))
        process.transport.signalProcess(signal.SIGHUP)
        yield process.waitFor(b"rules reloaded from")
        self.assertEqual((yield tunnel.roundTrip(b"two")), b"onetwo")
        endpoint = SOCKS5ClientEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port), "127.0.0.1", echo_port)
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Tunnel)), ConnectionNotAllowed)

        # A broken file: logged, and the rules in force stay.
        _write(rules, "default = \n")
        process.transport.signalProcess(signal.SIGHUP)
        yield process.waitFor(b"rules not reloaded, the old rules stay")
        yield self.assertFailure(endpoint.connect(Factory.forProtocol(Tunnel)), ConnectionNotAllowed)
        self.assertEqual((yield tunnel.roundTrip(b"three")), b"onetwothree")

        tunnel.transport.loseConnection()
        yield tunnel.lost
        process.transport.signalProcess(signal.SIGTERM)
        yield process.ended
        output = process.output.decode()
        self.assertNotIn("Traceback", output)
        self.assertIn("denied by rule 1 (no-echo)", output)

    @inlineCallbacks
    def test_the_master_passes_sighup_to_its_workers(self) -> None:
        rules = self.mktemp()
        _write(rules, 'default = "allow"\n')
        port = free_port()
        process = spawnTwistd(self, "--listen", f"tcp:{port}:interface=127.0.0.1", "--rules", rules,
                              "--workers", "2")
        yield process.waitFor(b"txsocksgss listening on", count=2)  # the master's and worker 1's
        _write(rules, _deny_port(9))
        process.transport.signalProcess(signal.SIGHUP)
        yield process.waitFor(b"rules reloaded from", count=2)
        worker_lines = [line for line in process.output.splitlines()
                        if b"rules reloaded from" in line and b"worker 1:" in line]
        self.assertEqual(len(worker_lines), 1, process.output.decode())
        process.transport.signalProcess(signal.SIGTERM)
        yield process.ended
        self.assertIn(b"worker 1 ended", process.output)
        self.assertNotIn(b"Traceback", process.output)
