"""
The service as a program composes it: extra twisted.cred checkers next to
the password file, the open-proxy check on the methods actually served,
and BIND/UDP on a listener without an IP address.
"""

from __future__ import annotations

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import UNIXAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from txsocksgss.auth.checkers import FirstMatchChecker
from txsocksgss.auth.none import NoAuthServerFactory
from txsocksgss.auth.passwordfile import PasswordFileChecker, run_synchronously, set_password
from txsocksgss.errors import ConfigError
from txsocksgss.server.config import Config
from txsocksgss.server.service import makeServerFactory, makeService
from txsocksgss.wire.socks5 import Address, Command, ReplyCode, Request


class CheckerTests(SynchronousTestCase):
    def test_password_file_and_extra_checker_both_work(self):
        path = self.mktemp()
        set_password(path, "alice", b"from-file", n=2**4)
        checker = FirstMatchChecker([
            PasswordFileChecker(path, threadpool_runner=run_synchronously),
            InMemoryUsernamePasswordDatabaseDontUse(bob=b"in-memory"),
        ])
        self.assertEqual(self.successResultOf(checker.requestAvatarId(UsernamePassword(b"alice", b"from-file"))),
                         "alice")
        self.assertEqual(self.successResultOf(checker.requestAvatarId(UsernamePassword(b"bob", b"in-memory"))),
                         b"bob")
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"bob", b"from-file")), UnauthorizedLogin)

    def test_userpass_with_only_a_program_checker(self):
        factory = makeServerFactory(Config.build(methods=["userpass"]), MemoryReactorClock(),
                                    checkers=[InMemoryUsernamePasswordDatabaseDontUse(bob=b"pw")])
        self.assertEqual([m.name for m in factory.context.authenticators], ["userpass"])

    def test_userpass_without_any_checker_is_refused(self):
        error = self.assertRaises(ConfigError, makeServerFactory, Config.build(methods=["userpass"]),
                                  MemoryReactorClock())
        self.assertIn("--passwd", str(error))


class OpenProxyTests(SynchronousTestCase):
    def test_program_authenticators_are_checked_too(self):
        path = self.mktemp()
        set_password(path, "alice", b"pw", n=2**4)
        config = Config.build(listen=["tcp:1080"], methods=["userpass"], passwd=path)
        error = self.assertRaises(ConfigError, makeService, config, MemoryReactorClock(),
                                  authenticators=[NoAuthServerFactory()])
        self.assertIn("unauthenticated", str(error))

    def test_service_has_one_listener_per_endpoint(self):
        config = Config.build(listen=["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"])
        service = makeService(config, MemoryReactorClock())
        self.assertEqual([s.name for s in service], list(config.listen))


class NonIPListenerTests(SynchronousTestCase):
    def test_bind_and_udp_on_a_unix_listener_fail_cleanly(self):
        for command in (Command.BIND, Command.UDP_ASSOCIATE):
            factory = makeServerFactory(Config.build(listen=["unix:/tmp/x.sock"]), MemoryReactorClock())
            protocol = factory.buildProtocol(None)
            transport = StringTransport(hostAddress=UNIXAddress("/tmp/x.sock"), peerAddress=UNIXAddress(None))
            protocol.makeConnection(transport)
            protocol.dataReceived(b"\x05\x01\x00" + Request(command, Address.of("0.0.0.0", 0)).serialize())
            self.assertEqual(transport.value()[2:4], bytes([5, ReplyCode.GENERAL_FAILURE]))
            self.assertTrue(transport.disconnecting)
            self.assertIn("--external", protocol.record.outcome)
            self.assertEqual(protocol.record.client, "unix")
