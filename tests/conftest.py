"""
Shared pytest set-up.

Tests are trial TestCases (so `trial tests` runs them too); under pytest the
reactor comes from pytest-twisted.  trial's ``mktemp`` makes paths relative to
the working directory, so the session runs in a scratch directory instead of
the checkout.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _scratch_working_directory(tmp_path_factory: pytest.TempPathFactory):
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)
