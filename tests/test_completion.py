"""
Shell completion and --help of `twistd socksgss` (Twisted's usage.Completions).
"""

from __future__ import annotations

import os
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import run_program
from txsocksgss.tap import Options

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class CompletionTests(TestCase):
    @inlineCallbacks
    def test_zsh_completion_offers_options_and_their_choices(self):
        out, err, code = yield run_program(TWISTD, ["socksgss", "--_shell-completion", "zsh:3"])
        self.assertEqual(code, 0, err)
        self.assertIn(b":method:(none userpass gssapi maf socks4)", out)
        self.assertIn(b":gssapi-mech:(krb5 spnego any)", out)
        self.assertIn(b":ident:(off log require)", out)
        self.assertIn(b"--passwd=", out)

    def test_every_option_has_help(self):
        options = Options()
        for flag in options.optFlags:
            self.assertTrue(flag[2], flag)
        for parameter in options.optParameters:
            self.assertTrue(parameter[3], parameter)
        for name in ("listen", "method", "maf_chain"):
            self.assertTrue(getattr(options, f"opt_{name}").__doc__)

    @inlineCallbacks
    def test_help_lists_every_option(self):
        out, err, code = yield run_program(TWISTD, ["socksgss", "--help"])
        self.assertEqual(code, 0, err)
        for option in ("--listen", "--method", "--gssapi-protection", "--ident", "--maf-chain", "--workers",
                       "--max-sessions", "--destination-guard", "--shutdown-grace", "--metrics"):
            self.assertIn(option.encode(), out)
