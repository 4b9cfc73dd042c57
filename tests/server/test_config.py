"""
Configuration: TOML files, precedence of the command line, validation
errors that say how to fix them, the open-proxy refusal, and twistd's
option parsing.
"""

from __future__ import annotations

import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txsocksgss.auth.passwordfile import set_password
from txsocksgss.errors import ConfigError
from txsocksgss.server.config import DEFAULT_LISTEN, Config, endpoint_is_loopback
from txsocksgss.tap import Options


class EndpointLoopbackTests(SynchronousTestCase):
    def test_loopback_and_public_endpoints(self):
        self.assertTrue(endpoint_is_loopback("tcp:1080:interface=127.0.0.1"))
        self.assertTrue(endpoint_is_loopback("tcp6:1080:interface=\\:\\:1"))
        self.assertTrue(endpoint_is_loopback("tcp:port=1080:interface=127.0.0.2"))
        self.assertTrue(endpoint_is_loopback("unix:/run/socksgss.sock"))
        self.assertFalse(endpoint_is_loopback("tcp:1080"))
        self.assertFalse(endpoint_is_loopback("tcp:1080:interface=0.0.0.0"))
        self.assertFalse(endpoint_is_loopback("tcp6:1080"))
        self.assertFalse(endpoint_is_loopback("haproxy:tcp:1080:interface=127.0.0.1"))
        self.assertFalse(endpoint_is_loopback("systemd:domain=INET:index=0"))


class ConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self):
        config = Config.build()
        self.assertEqual(config.listen, (DEFAULT_LISTEN,))
        self.assertEqual(config.effective_methods, ("none",))
        self.assertEqual(config.negotiation_timeout, 30.0)

    def test_passwd_alone_means_userpass(self):
        self.assertEqual(Config.build(passwd="/etc/x").effective_methods, ("userpass",))

    def test_toml_file_with_inline_rules_and_relative_paths(self):
        path = self.write(
            'listen = ["tcp:1081:interface=127.0.0.1"]\n'
            'methods = ["userpass", "none"]\n'
            'passwd = "users.passwd"\n'
            "negotiation_timeout = 10\n"
            "idle_timeout = 0\n"
            'default = "deny"\n'
            "[[rule]]\n"
            'action = "allow"\n'
            'from = ["127.0.0.0/8"]\n'
        )
        config = Config.from_toml(path)
        self.assertEqual(config.listen, ("tcp:1081:interface=127.0.0.1",))
        self.assertEqual(config.methods, ("userpass", "none"))
        self.assertEqual(config.passwd, os.path.join(os.path.dirname(path), "users.passwd"))
        self.assertEqual(config.negotiation_timeout, 10.0)
        self.assertIsNone(config.idle_timeout)
        self.assertEqual(len(config.rules.rules), 1)

    def test_unknown_setting_is_named(self):
        error = self.assertRaises(ConfigError, Config.from_toml, self.write("lisen = []\n"))
        self.assertIn("lisen", str(error))

    def test_bad_toml(self):
        error = self.assertRaises(ConfigError, Config.from_toml, self.write("listen = [\n"))
        self.assertIn("not valid TOML", str(error))

    def test_missing_file(self):
        error = self.assertRaises(ConfigError, Config.from_toml, "/nonexistent/socksgss.toml")
        self.assertIn("/nonexistent/socksgss.toml", str(error))

    def test_bad_values(self):
        for values, text in [
            ({"methods": ["kerberos"]}, "unknown method"),
            ({"methods": ["none", "none"]}, "twice"),
            ({"negotiation_timeout": 0}, "positive"),
            ({"negotiation_timeout": "soon"}, "number of seconds"),
            ({"external": "proxy.example"}, "IP address"),
            ({"gssapi_mech": "ntlm"}, "gssapi-mech"),
            ({"gssapi_wrap": "fastest"}, "gssapi-wrap"),
            ({"gssapi_wrap": 1}, "gssapi_wrap must be a string"),
            ({"gssapi_protection": ["secret"]}, "gssapi-protection"),
            ({"gssapi_service": "rcmd/host"}, "bare service name"),
            ({"listen": []}, "--listen"),
        ]:
            error = self.assertRaises(ConfigError, Config.build, **values)
            self.assertIn(text, str(error), values)

    def test_open_proxy_refused_with_instructions(self):
        error = self.assertRaises(ConfigError, Config.build, listen=["tcp:1080"])
        self.assertIn("--allow-open", str(error))
        self.assertIn("userpass", str(error))

    def test_socks4_counts_as_unauthenticated_unless_ident_is_required(self):
        error = self.assertRaises(ConfigError, Config.build, listen=["tcp:1080"], methods=["userpass", "socks4"],
                                  passwd="/etc/x")
        self.assertIn("unauthenticated", str(error))
        Config.build(listen=["tcp:1080"], methods=["userpass", "socks4"], passwd="/etc/x", ident="require")

    def test_open_proxy_allowed_when_asked_or_authenticated(self):
        Config.build(listen=["tcp:1080"], allow_open=True)
        Config.build(listen=["tcp:1080"], methods=["userpass"], passwd="/etc/x")


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_no_options_is_a_working_default(self):
        options = self.parse()
        self.assertEqual(options.config.listen, (DEFAULT_LISTEN,))
        self.assertEqual([m.name for m in options.factory.context.authenticators], ["none"])

    def test_repeatable_listen_and_method(self):
        passwd = os.path.abspath(self.mktemp())
        set_password(passwd, "alice", b"pw", n=2**4)
        options = self.parse("--listen", "tcp:1081:interface=127.0.0.1", "--listen", "unix:/tmp/s.sock",
                             "--method", "userpass", "--method", "none", "--passwd", passwd)
        self.assertEqual(options.config.listen, ("tcp:1081:interface=127.0.0.1", "unix:/tmp/s.sock"))
        self.assertEqual([m.name for m in options.factory.context.authenticators], ["userpass", "none"])

    def test_command_line_beats_the_file(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("negotiation_timeout = 10\nidle_timeout = 50\n")
        options = self.parse("--config", path, "--idle-timeout", "70")
        self.assertEqual(options.config.negotiation_timeout, 10.0)
        self.assertEqual(options.config.idle_timeout, 70.0)

    def test_problems_are_usage_errors_not_tracebacks(self):
        for args, text in [
            (["--method", "telepathy"], "unknown method"),
            (["--method", "userpass"], "password file"),
            (["--method", "userpass", "--passwd", "/nonexistent/passwd"], "/nonexistent/passwd"),
            (["--listen", "tcp:1080:interface=0.0.0.0"], "--allow-open"),
            (["--idle-timeout", "-1"], "negative"),
            (["--method", "gssapi", "--gssapi-keytab", "/nonexistent/keytab"], "/nonexistent/keytab"),
        ]:
            error = self.assertRaises(usage.UsageError, self.parse, *args)
            self.assertIn(text, str(error), args)

    def test_help_lists_every_option(self):
        text = str(Options())
        for option in ("--listen", "--method", "--passwd", "--rules", "--config", "--negotiation-timeout",
                       "--idle-timeout", "--allow-open", "--external", "--gssapi-keytab", "--gssapi-service",
                       "--gssapi-mech", "--gssapi-protection", "--gssapi-nec", "--gssapi-wrap"):
            self.assertIn(option, text)


class MAFOpenProxyTests(SynchronousTestCase):
    def test_test_only_chain_is_refused_even_with_spaces(self):
        for spec in ("test=1", "test =1", " test = 1"):
            error = self.assertRaises(ConfigError, Config.build, listen=["tcp:1080"], methods=["maf"],
                                      maf_chains=[spec])
            self.assertIn("unauthenticated", str(error), spec)

    def test_a_real_chain_is_accepted(self):
        Config.build(listen=["tcp:1080"], methods=["maf"], maf_chains=["userpass+test=2"], passwd="/etc/x")
