"""
The table of settings (txsocksgss/server/settings.py): one row per Config
field, each with an option and a TOML key (or a reason for none), every
one documented; and the options, the TOML keys and the defaults that
twistd and Config take from it agree with it.
"""

from __future__ import annotations

import os
import re
from dataclasses import fields
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.docs import ROOT, read_text
from txsocksgss.errors import ConfigError
from txsocksgss.server.config import Config
from txsocksgss.server.settings import SETTINGS, Setting
from txsocksgss.tap import Options, config_from_options

#: For each option: the text given on the command line, the value given in
#: the TOML file, the Config field's value either way, and another value
#: for the file (which the command line beats).  Every option of the table
#: needs a row (a test below says so), so a new setting is exercised
#: through both faces.  RULES stands for an empty rules file the test makes.
SAMPLES: dict[str, tuple[str | None, Any, Any, Any]] = {
    "listen": ("tcp:1081:interface=127.0.0.1", ["tcp:1081:interface=127.0.0.1"], ("tcp:1081:interface=127.0.0.1",),
               ["tcp:1082:interface=127.0.0.1"]),
    "method": ("userpass", ["userpass"], ("userpass",), ["none"]),
    "passwd": ("/etc/socksgss/users.passwd", "/etc/socksgss/users.passwd", "/etc/socksgss/users.passwd", "/other"),
    "rules": ("RULES", "RULES", "RULES", "RULES"),
    "negotiation-timeout": ("12", 12, 12.0, 20),
    "idle-timeout": ("0", 0, None, 60),
    "shutdown-grace": ("2.5", 2.5, 2.5, 4),
    "metrics": ("tcp:9181:interface=127.0.0.1", "tcp:9181:interface=127.0.0.1", "tcp:9181:interface=127.0.0.1",
                "tcp:9182:interface=127.0.0.1"),
    "allow-open": (None, True, True, False),
    "external": ("192.0.2.10", "192.0.2.10", "192.0.2.10", "192.0.2.20"),
    "gssapi-keytab": ("/etc/socksgss/proxy.keytab", "/etc/socksgss/proxy.keytab", "/etc/socksgss/proxy.keytab",
                      "/other"),
    "gssapi-service": ("socks", "socks", "socks", "rcmd"),
    "gssapi-mech": ("krb5", "krb5", "krb5", "spnego"),
    "gssapi-protection": ("integrity,clear", ["integrity", "clear"], ("integrity", "clear"), ["confidentiality"]),
    "gssapi-nec": (None, True, True, False),
    "gssapi-wrap": ("library", "library", "library", "auto"),
    "ident": ("log", "log", "log", "require"),
    "ident-port": ("1113", 1113, 1113, 113),
    "ident-timeout": ("3", 3, 3.0, 4),
    "maf-chain": ("userpass+gssapi=2", ["userpass+gssapi=2"], ("userpass+gssapi=2",), ["gssapi=1"]),
    "maf-continue-on-failure": (None, True, True, False),
    "no-splice": (None, False, False, True),
    "workers": ("2", 2, 2, 3),
    "max-sessions": ("7", 7, 7, 8),
    "max-sessions-per-client": ("0", 0, 0, 1),
    "max-negotiating": ("9", 9, 9, 10),
    "auth-fail-limit": ("0", 0, 0, 1),
    "auth-fail-window": ("30", 30, 30.0, 31),
    "destination-guard": ("on", "on", "on", "off"),
}


class _ParsedOnly(Options):
    """Options that parse, without building the server (no password file or keytab is read)."""

    def postOptions(self) -> None:
        pass


def _with_options() -> list[Setting]:
    return [setting for setting in SETTINGS if setting.option]


class TableTests(SynchronousTestCase):
    def test_every_config_field_has_exactly_one_setting(self) -> None:
        self.assertEqual([f.name for f in fields(Config)], [s.name for s in SETTINGS])

    def test_every_setting_has_an_option_and_a_toml_key_or_says_why_not(self) -> None:
        for setting in SETTINGS:
            exposed = bool(setting.option and setting.toml_key)
            # A reason is given exactly when something is missing (no stale reasons).
            self.assertEqual(bool(setting.unexposed), not exposed, setting.name)
            if setting.option:
                self.assertTrue(setting.help, setting.name)
        self.assertEqual([s.name for s in SETTINGS if s.unexposed], ["rules"])

    def test_options_and_toml_keys_are_unique(self) -> None:
        options = [s.option for s in SETTINGS if s.option] + ["config"]
        keys = [s.toml_key for s in SETTINGS if s.toml_key] + ["default", "rule"]
        self.assertEqual(len(options), len(set(options)))
        self.assertEqual(len(keys), len(set(keys)))

    def test_a_flag_is_neither_repeatable_nor_parsed(self) -> None:
        for setting in SETTINGS:
            if setting.flag is not None:
                self.assertFalse(setting.repeatable or setting.parse, setting.name)
                self.assertIsInstance(setting.default, bool)
                self.assertNotEqual(setting.flag, setting.default, setting.name)

    def test_defaults_are_configs_defaults_and_acceptable(self) -> None:
        config = Config()
        for setting in SETTINGS:
            self.assertEqual(getattr(config, setting.name), setting.default, setting.name)
            setting.check(setting.default)
            if setting.default is not None:
                self.assertEqual(setting.coerce(setting.default), setting.default, setting.name)

    def test_the_defaults_the_help_names_are_the_defaults(self) -> None:
        checked = 0
        for setting in _with_options():
            match = re.search(r"\(default ([^;):\s]+)", setting.help)
            if match is None:
                continue
            default = setting.default
            if isinstance(default, tuple):
                shown = ",".join(default)
            elif isinstance(default, float) and default.is_integer():
                shown = str(int(default))
            else:
                shown = str(default)
            self.assertEqual(match.group(1), shown, setting.name)
            checked += 1
        self.assertGreater(checked, 15)

    def test_coercion_refuses_a_wrong_type_by_the_settings_name(self) -> None:
        for setting in SETTINGS:
            if setting.name == "rules":
                continue  # a RuleSet, made by code only
            for wrong in (object(), 1.5j):
                error = self.assertRaises(ConfigError, setting.coerce, wrong)
                named = setting.name in str(error) or setting.name.replace("_", " ") in str(error)
                self.assertTrue(named, (setting.name, str(error)))

    def test_a_number_where_a_list_belongs_is_a_config_error(self) -> None:
        # It used to escape as TypeError: a traceback from twistd for `listen = 1080`.
        for name in ("listen", "methods", "gssapi_protection", "maf_chains"):
            error = self.assertRaises(ConfigError, Config.from_table, {name: 1080})
            self.assertEqual(str(error), f"{name} must be a list of strings")


class FacesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.rules = os.path.abspath(self.mktemp())
        open(self.rules, "w").close()

    def sample(self, option: str) -> tuple[str | None, Any, Any, Any]:
        if option == "rules":
            other = os.path.abspath(self.mktemp())
            open(other, "w").close()
            return self.rules, self.rules, self.rules, other
        return SAMPLES[option]

    def test_every_option_has_a_sample(self) -> None:
        self.assertEqual(sorted(SAMPLES), sorted(s.option for s in _with_options()))

    def test_twistd_has_each_option_with_its_help(self) -> None:
        options = Options()
        for setting in _with_options():
            takes_argument = setting.flag is None
            self.assertIn(setting.option + ("=" if takes_argument else ""), options.longOpt, setting.name)
            self.assertEqual(options.docs[setting.option], setting.help, setting.name)
        self.assertIn("config=", options.longOpt)

    def test_each_option_sets_its_field_and_nothing_else(self) -> None:
        default = Config()
        for setting in _with_options():
            text, _toml, expected, _other = self.sample(setting.option)
            argv = [f"--{setting.option}"] + ([] if text is None else [text])
            config = _parsed(argv)
            self.assertEqual(getattr(config, setting.name), expected, argv)
            changed = {f.name for f in fields(Config) if getattr(config, f.name) != getattr(default, f.name)}
            self.assertEqual(changed - {"rules"}, {setting.name}, argv)

    def test_each_toml_key_sets_the_same_field(self) -> None:
        for setting in _with_options():
            _text, toml_value, expected, _other = self.sample(setting.option)
            config = Config.from_table({setting.toml_key: toml_value}, base="/")
            self.assertEqual(getattr(config, setting.name), expected, setting.toml_key)

    def test_repeated_options_keep_their_order(self) -> None:
        for setting in _with_options():
            if not setting.repeatable:
                continue
            first, _toml, _expected, _other = self.sample(setting.option)
            second = {"listen": "unix:/tmp/socksgss.sock", "method": "none", "maf-chain": "gssapi=1"}[setting.option]
            config = _parsed([f"--{setting.option}", first, f"--{setting.option}", second])
            self.assertEqual(getattr(config, setting.name), (first, second))

    def test_the_command_line_beats_the_file_for_every_setting(self) -> None:
        for setting in _with_options():
            text, _toml_value, expected, other = self.sample(setting.option)
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(f"{setting.toml_key} = {_toml(other)}\n")
            config = _parsed(["--config", path])
            self.assertNotEqual(getattr(config, setting.name), expected, setting.option)  # the file counts
            config = _parsed(["--config", path, f"--{setting.option}"] + ([] if text is None else [text]))
            self.assertEqual(getattr(config, setting.name), expected, setting.option)


class DocumentationTests(SynchronousTestCase):
    def test_the_configuration_page_documents_every_option_and_key(self) -> None:
        page = read_text(os.path.join(ROOT, "docs", "configuration.rst"))
        missing = [f"--{s.option}" for s in SETTINGS if s.option and f"``--{s.option}``" not in page]
        missing += [s.toml_key for s in SETTINGS if s.toml_key and f"``{s.toml_key}``" not in page]
        missing += [f"option:: --{s.option}" for s in SETTINGS if s.option and f".. option:: --{s.option}" not in page]
        self.assertEqual(missing, [])


def _parsed(argv: list[str]) -> Config:
    options = _ParsedOnly()
    options.parseOptions(argv)
    return config_from_options(options)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
