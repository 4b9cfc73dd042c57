"""Sphinx configuration for the txsocksgss documentation."""

import os
import sys

# The repository root, so autodoc imports the working tree's txsocksgss.
sys.path.insert(0, os.path.abspath(".."))

project = "txsocksgss"
author = "txsocksgss contributors"
copyright = "txsocksgss contributors"
release = "0.1.0"
version = "0.1"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
# intersphinx is deliberately left out: it fetches inventories from the
# network at build time, and the docs must build offline.

autodoc_typehints = "description"
autodoc_member_order = "bysource"
nitpicky = False

templates_path: list[str] = []
exclude_patterns = ["_build"]

html_theme = "alabaster"
html_static_path: list[str] = []
