"""The registry of methods (txsocksgss.auth.registry) and the tables read from it."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from txsocksgss.auth import registry
from txsocksgss.auth.maf import SUBMETHOD_IDS, MAFClientFactory, MAFServerFactory
from txsocksgss.auth.none import NoAuthClientFactory, NoAuthServerFactory
from txsocksgss.auth.registry import ClientOptions, MethodRole, MissingClientSetting, ServerBuild
from txsocksgss.auth.userpass import UserPassClientFactory
from txsocksgss.errors import ConfigError
from txsocksgss.server.config import KNOWN_METHODS
from txsocksgss.wire.maf import SubMethod
from txsocksgss.wire.socks5 import AuthMethod


def _settings(**values: object) -> SimpleNamespace:
    base = dict(passwd=None, maf_chains=(), maf_continue_on_failure=False)
    base.update(values)
    return SimpleNamespace(**base)


class RegistryTests(SynchronousTestCase):
    def test_the_names_of_each_face(self) -> None:
        self.assertEqual(registry.SERVER_METHOD_NAMES, ("none", "userpass", "gssapi", "maf", "socks4"))
        self.assertEqual(KNOWN_METHODS, registry.SERVER_METHOD_NAMES)
        self.assertEqual(registry.CLIENT_METHOD_NAMES, ("none", "userpass", "gssapi", "maf"))
        self.assertEqual(registry.SUBMETHOD_NAMES, ("userpass", "gssapi", "test"))

    def test_codes_and_submethod_ids(self) -> None:
        for entry in registry.METHODS:
            if entry.role is MethodRole.METHOD:
                self.assertEqual(registry.method_name(entry.code), entry.name)  # type: ignore[arg-type]
            else:
                self.assertIsNone(entry.code)
            if entry.submethod is not None:
                # MAF names its sub-methods from the same enum.
                self.assertEqual(entry.submethod.name.lower(), entry.name)
                self.assertEqual(SUBMETHOD_IDS[entry.name], entry.submethod)
        self.assertEqual(set(SUBMETHOD_IDS), set(registry.SUBMETHOD_NAMES))
        self.assertEqual(registry.submethod_id("userpass"), SubMethod.USERPASS)
        self.assertEqual(registry.method_name(AuthMethod.GSSAPI), "gssapi")
        self.assertEqual(registry.method_name(0x80), "0x80")

    def test_socks4_and_test_build_no_socks5_method(self) -> None:
        socks4 = registry.find("socks4")
        assert socks4 is not None
        self.assertEqual((socks4.role, socks4.server, socks4.client), (MethodRole.SOCKS4, None, None))
        self.assertRaises(ConfigError, registry.build_client, "test", ClientOptions())
        self.assertRaises(ConfigError, registry.build_client, "socks4", ClientOptions())
        self.assertIsNone(registry.find("kerberos"))

    def test_server_sides_are_built_once(self) -> None:
        build = ServerBuild(_settings(maf_chains=("test=0",)))
        self.assertIsInstance(build.factory("none"), NoAuthServerFactory)
        maf = build.factory("maf")
        self.assertIsInstance(maf, MAFServerFactory)
        self.assertIs(maf.submethods[SubMethod.TEST], build.factory("test"))  # type: ignore[attr-defined]
        self.assertIs(build.factory("maf"), maf)
        self.assertRaises(ConfigError, build.factory, "socks4")

    def test_userpass_needs_a_checker(self) -> None:
        error = self.assertRaises(ConfigError, ServerBuild(_settings()).factory, "userpass")
        self.assertIn("--passwd FILE", str(error))

    def test_client_sides(self) -> None:
        options = ClientOptions(user="alice", password="secret", maf_submethods=("userpass", "test"))
        self.assertIsInstance(registry.build_client("none", options), NoAuthClientFactory)
        self.assertIsInstance(registry.build_client("userpass", options), UserPassClientFactory)
        maf = registry.build_client("maf", options)
        assert isinstance(maf, MAFClientFactory)
        self.assertEqual([i for i, _ in maf.submethods], [SubMethod.USERPASS, SubMethod.TEST])

    def test_missing_client_settings_say_what_is_missing(self) -> None:
        missing = self.assertRaises(MissingClientSetting, registry.build_client, "userpass", ClientOptions())
        self.assertEqual((missing.method, missing.setting, missing.within_maf), ("userpass", "credentials", False))
        missing = self.assertRaises(MissingClientSetting, registry.build_client, "maf",
                                    ClientOptions(maf_submethods=("gssapi",)))
        self.assertEqual((missing.method, missing.setting, missing.within_maf), ("gssapi", "gssapi", True))
        missing = self.assertRaises(MissingClientSetting, registry.build_client, "maf", ClientOptions())
        self.assertEqual(missing.setting, "submethods")
