"""
The documentation: it builds without a warning, it documents every option
and setting the code has, its examples are valid, and the README's set-up
is the promised two commands.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.docs import ROOT, code_blocks, read_text
from txsocksgss.errors import ConfigError
from txsocksgss.server.config import _RULE_KEYS, _TOML_KEYS, Config
from txsocksgss.server.rules import rules_from_table
from txsocksgss.tap import Options

DOCS = os.path.join(ROOT, "docs")
README = os.path.join(ROOT, "README.rst")


def _option_names() -> list[str]:
    """Every long option of ``twistd socksgss``, without --help and --version."""
    names = [flag[0] for flag in Options.optFlags]
    names += [parameter[0] for parameter in Options.optParameters]
    names += [
        attribute[len("opt_"):].replace("_", "-")
        for attribute in dir(Options)
        if attribute.startswith("opt_")
    ]
    return sorted(set(names) - {"help", "version"})


class BuildTests(SynchronousTestCase):
    def test_html_builds_without_warnings(self) -> None:
        """sphinx -W --keep-going -b html docs OUT succeeds."""
        if importlib.util.find_spec("sphinx") is None:
            self.fail("Sphinx is not installed (make test installs it: pip install -e '.[test,docs]')")
        output = tempfile.mkdtemp(prefix="txsocksgss-docs-")
        self.addCleanup(shutil.rmtree, output, ignore_errors=True)
        result = subprocess.run(
            [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS, output],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(
            result.returncode, 0, f"sphinx failed:\n{result.stdout}\n{result.stderr}"
        )
        self.assertTrue(os.path.exists(os.path.join(output, "index.html")))


class ConfigurationPageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.page = read_text(os.path.join(DOCS, "configuration.rst"))

    def test_every_option_is_documented(self) -> None:
        names = _option_names()
        self.assertIn("listen", names)  # the discovery itself works
        missing = [name for name in names if f"``--{name}``" not in self.page]
        self.assertEqual(missing, [], "options missing from docs/configuration.rst")

    def test_every_toml_key_is_documented(self) -> None:
        keys = sorted({*_TOML_KEYS, *_RULE_KEYS, "default", "rule"})
        missing = [key for key in keys if f"``{key}``" not in self.page]
        self.assertEqual(missing, [], "TOML keys missing from docs/configuration.rst")


class ExampleTests(SynchronousTestCase):
    """The examples in the manual are accepted by the code they describe."""

    def test_toml_examples_are_valid(self) -> None:
        scratch = tempfile.mkdtemp(prefix="txsocksgss-docs-toml-")
        self.addCleanup(shutil.rmtree, scratch, ignore_errors=True)
        empty_rules = os.path.join(scratch, "rules.toml")
        open(empty_rules, "w").close()
        checked = 0
        for page in ("quickstart.rst", "configuration.rst", "rules.rst"):
            for line, block in code_blocks(read_text(os.path.join(DOCS, page)), "toml"):
                where = f"docs/{page} line {line}"
                try:
                    table = tomllib.loads(block)
                except tomllib.TOMLDecodeError as error:
                    self.fail(f"{where}: not valid TOML: {error}\n{block}")
                try:
                    if set(table) <= {"default", "rule"}:
                        rules_from_table(table, source=where)
                    else:
                        if "rules" in table:
                            table["rules"] = empty_rules
                        # A fragment showing one setting may show a public
                        # listener without the settings that make it safe.
                        table.setdefault("allow_open", True)
                        Config.from_table(table, base=scratch, source=where)
                except ConfigError as error:
                    self.fail(f"{where}: rejected: {error}\n{block}")
                checked += 1
        self.assertGreater(checked, 10)

    def test_python_examples_compile(self) -> None:
        page = read_text(os.path.join(DOCS, "embedding.rst"))
        blocks = code_blocks(page, "python")
        self.assertGreater(len(blocks), 3)
        for line, block in blocks:
            compile(block, f"docs/embedding.rst line {line}", "exec")


class ReadmeTests(SynchronousTestCase):
    def test_renders_without_warnings(self) -> None:
        """README.rst is the package's long description: docutils must accept it cleanly."""
        try:
            from docutils.core import publish_doctree
            from docutils.utils import SystemMessage
        except ImportError:
            self.fail("docutils is not installed (make test installs it with Sphinx)")
        try:
            publish_doctree(
                read_text(README),
                settings_overrides={"report_level": 5, "halt_level": 2},
            )
        except SystemMessage as error:
            self.fail(f"README.rst: {error}")

    def test_setup_is_exactly_make_run_and_make_test(self) -> None:
        """The Set-up section's literal blocks hold the two commands and nothing else."""
        try:
            from docutils import nodes
            from docutils.core import publish_doctree
        except ImportError:
            self.fail("docutils is not installed (make test installs it with Sphinx)")
        tree = publish_doctree(
            read_text(README), settings_overrides={"report_level": 5, "halt_level": 5}
        )
        sections = [
            section
            for section in tree.findall(nodes.section)
            if section.next_node(nodes.title).astext() == "Set-up"
        ]
        self.assertEqual(len(sections), 1, "README.rst needs one section titled Set-up")
        commands = []
        for block in sections[0].findall(nodes.literal_block):
            for line in block.astext().splitlines():
                command = line.split("#", 1)[0].strip()
                if command:
                    commands.append(command)
        self.assertEqual(commands, ["make run", "make test"])
