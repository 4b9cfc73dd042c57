"""
mypy (with mypy-zope) over the package: the annotations on public names are
checked in CI, as the architecture asks.
"""

from __future__ import annotations

import os
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.helpers.processes import run_program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TypingTests(TestCase):
    timeout = 300

    @inlineCallbacks
    def test_mypy_finds_no_issue(self):
        out, err, code = yield run_program(
            sys.executable, ["-m", "mypy", "--config-file", os.path.join(ROOT, "setup.cfg"),
                             os.path.join(ROOT, "txsocksgss")])
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))
