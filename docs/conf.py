"""Sphinx configuration for the txsocksgss documentation."""

import importlib
import inspect
import os
import sys
import typing

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

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

# The docstrings write `Name` for a cross-reference (ARCHITECTURE.md: "docs/
# renders them"); make that a Python object reference rather than italics.
# Unresolved ones render as plain code (nitpicky is off), so no warnings.
default_role = "py:obj"

templates_path: list[str] = []
exclude_patterns = ["_build"]

html_theme = "alabaster"
html_static_path: list[str] = []


# -- zope.interface ---------------------------------------------------------
#
# autodoc documents classes, functions and data, but a zope.interface
# ``Interface`` is an InterfaceClass *instance*, so ``automodule :members:``
# silently skips every interface.  sphinxcontrib-zopeext would fix that, but
# it is not among the project's dependencies, so this small directive renders
# them instead:
#
#     .. zope-interfaces:: txsocksgss.interfaces
#
# documents every interface in the module's __all__ (in that order) as a
# py:class, with its attributes and methods (signatures as declared, without
# ``self``) and their docstrings.


def _docstring_lines(text, indent):
    if not text:
        return []
    return [indent + line if line else "" for line in inspect.cleandoc(text).splitlines()]


class ZopeInterfacesDirective(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self):
        from zope.interface.interface import InterfaceClass, Method

        module_name = self.arguments[0]
        module = importlib.import_module(module_name)
        if getattr(module, "__file__", None):
            self.env.note_dependency(module.__file__)
        names = getattr(module, "__all__", None) or sorted(vars(module))
        source = f"<zope-interfaces {module_name}>"
        lines = []
        for name in names:
            interface = getattr(module, name, None)
            if not isinstance(interface, InterfaceClass) or interface.__module__ != module_name:
                continue
            bases = ", ".join(
                f"{base.__module__}.{base.__name__}" for base in interface.__bases__
            )
            lines += [f".. py:class:: {name}", f"   :module: {module_name}", ""]
            lines += [f"   *Interface* (extends ``{bases}``).", ""]
            lines += _docstring_lines(interface.getDoc(), "   ") + [""]
            for member, description in interface.namesAndDescriptions(all=False):
                if isinstance(description, Method):
                    signature = description.getSignatureString()
                    lines += [f"   .. py:method:: {member}{signature}", ""]
                else:
                    lines += [f"   .. py:attribute:: {member}", ""]
                lines += _docstring_lines(description.getDoc(), "      ") + [""]
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source), container)
        return container.children


# An annotation naming an interface (``realm: IRealm | None``) would render as
# the interface's repr, "<InterfaceClass twisted.cred.portal.IRealm>": Sphinx
# spells an annotation ``module.__qualname__``, and interfaces have no
# __qualname__.  Give the interfaces an object's annotations mention one,
# just before Sphinx reads them.


def _qualify_interfaces(app, obj, bound_method):
    from zope.interface.interface import InterfaceClass

    hints = {}
    for candidate in (obj, getattr(obj, "__init__", None)):
        try:
            hints.update(typing.get_type_hints(candidate))
        except Exception:  # unresolvable names: Sphinx copes on its own
            pass
    pending = list(hints.values())
    while pending:
        hint = pending.pop()
        if isinstance(hint, InterfaceClass) and not getattr(hint, "__qualname__", None):
            hint.__qualname__ = hint.__name__
        args = getattr(hint, "__args__", None)
        if isinstance(args, tuple):
            pending.extend(args)


def setup(app):
    app.add_directive("zope-interfaces", ZopeInterfacesDirective)
    app.connect("autodoc-before-process-signature", _qualify_interfaces)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
