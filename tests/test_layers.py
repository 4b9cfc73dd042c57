"""
The import layers of docs/architecture.rst, read from the source (AST):
imports go down only, the client and the server sides never import each
other, the package has no import cycle, a module of ours is imported
inside a function only where the layers allow nothing else, wire/ imports
no Twisted, and no private Twisted name is used outside
txsocksgss/_twisted_internals.py.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import twisted
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "txsocksgss"

#: Layer of each module (by dotted prefix; the longest prefix wins): a
#: module may import modules of its own layer or lower ones only.
LAYERS = {
    "txsocksgss._twisted_internals": 0,
    "txsocksgss.errors": 0,
    "txsocksgss.interfaces": 0,
    "txsocksgss": 0,  # the package's __init__
    "txsocksgss.wire": 1,
    "txsocksgss.auth": 2,
    "txsocksgss.protection": 2,
    "txsocksgss.textlog": 2,
    "txsocksgss.logs": 2,
    # the server core (sans-IO) and the client side, beside each other
    "txsocksgss.server": 3,
    "txsocksgss.server.negotiation": 3,
    "txsocksgss.server.context": 3,
    "txsocksgss.server.rules": 3,
    "txsocksgss.server.guard": 3,
    "txsocksgss.server.limits": 3,
    "txsocksgss.server.session": 3,
    "txsocksgss.server.config": 3,
    "txsocksgss.server.settings": 3,
    "txsocksgss.server.outbound": 3,
    "txsocksgss.server.idle": 3,
    "txsocksgss.server.reload": 3,
    "txsocksgss.server.outcomes": 3,
    "txsocksgss.client": 3,
    # the server's I/O: drivers, tunnels, connectors, commands, listeners
    "txsocksgss.server.protocol": 4,
    "txsocksgss.server.lean": 4,
    "txsocksgss.server.relay": 4,
    "txsocksgss.server.splice": 4,
    "txsocksgss.server.direct": 4,
    "txsocksgss.server.connector": 4,
    "txsocksgss.server.bind": 4,
    "txsocksgss.server.udp": 4,
    "txsocksgss.server.metrics": 4,
    # the IService a program composes
    "txsocksgss.server.service": 5,
    "txsocksgss.server.workers": 5,
    # faces: options -> Config -> service
    "txsocksgss.tap": 6,
    "txsocksgss.worker": 6,
    "txsocksgss.cli": 6,
}


#: Modules of ours that the client side and the faces may import where used.
OPTIONAL = {"txsocksgss.auth.gssapi"}


def layer_of(module: str) -> int:
    best = max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len)
    return LAYERS[best]


def side_of(module: str) -> str | None:
    for side in ("txsocksgss.server", "txsocksgss.client"):
        if module == side or module.startswith(side + "."):
            return side
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found[module_name(path)] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return found


def imports(tree: ast.Module, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module of ours, line, inside a function) for every import in ``tree``."""
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("txsocksgss"):
                        out.append((alias.name, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("txsocksgss"):
                for alias in child.names:
                    candidate = f"{child.module}.{alias.name}"
                    out.append((candidate if candidate in known else child.module, child.lineno, in_function))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # annotations only
            visit(child, inner)

    visit(tree, False)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


class LayerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.trees = modules()
        self.graph = {name: imports(tree, set(self.trees)) for name, tree in self.trees.items()}

    def test_imports_go_down_only(self) -> None:
        wrong = [f"{module}:{line} imports {target} (layer {layer_of(target)} above {layer_of(module)})"
                 for module, found in self.graph.items() for target, line, _ in found
                 if layer_of(target) > layer_of(module)]
        self.assertEqual(wrong, [])

    def test_the_client_and_the_server_do_not_import_each_other(self) -> None:
        crossing = [f"{module}:{line} imports {target}"
                    for module, found in self.graph.items() for target, line, _ in found
                    if side_of(module) and side_of(target) and side_of(module) != side_of(target)]
        self.assertEqual(crossing, [])

    def test_no_import_cycle(self) -> None:
        edges = {module: {target for target, _, _ in found if target in self.graph and target != module}
                 for module, found in self.graph.items()}
        # A package imports its own modules through __init__ only by name: not a cycle of code.
        cycles = []
        state: dict[str, int] = {}
        stack: list[str] = []

        def visit(node: str) -> None:
            state[node] = 1
            stack.append(node)
            for target in sorted(edges[node]):
                if state.get(target) == 1:
                    cycles.append(stack[stack.index(target):] + [target])
                elif target not in state:
                    visit(target)
            stack.pop()
            state[node] = 2

        for node in sorted(edges):
            if node not in state:
                visit(node)
        self.assertEqual(cycles, [])

    def test_modules_of_ours_are_imported_at_the_top(self) -> None:
        # Except the GSS-API method where a client may not need it: it loads
        # python-gssapi (about 65 ms), and the endpoint-string plugin is
        # imported by every Twisted program that parses an endpoint string.
        local = [f"{module}:{line} imports {target} inside a function"
                 for module, found in self.graph.items() for target, line, inside in found
                 if inside and not (target in OPTIONAL and side_of(module) != "txsocksgss.server")]
        self.assertEqual(local, [])

    def test_wire_imports_no_twisted(self) -> None:
        found = []
        for module, tree in self.trees.items():
            if layer_of(module) != 1:
                continue
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{module}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "twisted"]
        self.assertEqual(found, [])

    def test_the_checker_sees_an_import_going_up(self) -> None:
        # The checks above must be able to fail: a wire module importing the server is caught.
        tree = ast.parse("from txsocksgss.server.protocol import SOCKS5ServerProtocol\n")
        [(target, _, _)] = imports(tree, set(self.trees))
        self.assertGreater(layer_of(target), layer_of("txsocksgss.wire.socks5"))


def _twisted_private_names() -> set[str]:
    """The ``_names`` Twisted's own source assigns as attributes (self._x = ..., or _x = ... in a class)."""
    names: set[str] = set()
    root = Path(twisted.__file__).parent
    for path in root.rglob("*.py"):
        if "test" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):  # pragma: no cover
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
                names.add(node.attr)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.Assign, ast.AnnAssign)):
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        names.update(t.id for t in targets if isinstance(t, ast.Name) and t.id.startswith("_"))
    return {name for name in names if not name.startswith("__")}


class PrivateTwistedNameTests(SynchronousTestCase):
    """
    No module but txsocksgss/_twisted_internals.py touches a private name of
    Twisted: an import from a private Twisted module or of a private name,
    or an attribute that Twisted's code defines as private and ours never
    defines itself.
    """

    def test_only_the_internals_module_uses_private_twisted_names(self) -> None:
        ours: set[str] = set()
        trees = modules()
        for module, tree in trees.items():
            if module == "txsocksgss._twisted_internals":
                continue  # what it stores is Twisted's, not ours
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    ours.add(node.attr)
                elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                    ours.add(node.name)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    ours.add(node.id)
                elif isinstance(node, ast.arg):
                    ours.add(node.arg)
        theirs = _twisted_private_names() - ours
        found = []
        for module, tree in trees.items():
            if module == "txsocksgss._twisted_internals":
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twisted"):
                    private = [p for p in (node.module or "").split(".") if p.startswith("_")]
                    private += [a.name for a in node.names if a.name.startswith("_")]
                    found += [f"{module}:{node.lineno} imports {node.module}: {p}" for p in private]
                elif isinstance(node, ast.Attribute) and node.attr in theirs:
                    found.append(f"{module}:{node.lineno} uses {node.attr}")
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in
                      ("getattr", "hasattr", "setattr") and len(node.args) > 1
                      and isinstance(node.args[1], ast.Constant) and node.args[1].value in theirs):
                    found.append(f"{module}:{node.lineno} uses {node.args[1].value} by name")
        self.assertEqual(found, [])

    def test_the_internals_module_is_where_they_are(self) -> None:
        # The check can fail: the internals module itself uses names the scan finds.
        theirs = _twisted_private_names()
        for name in ("_tempDataLen", "_selectables", "_shouldShutdown", "_proxyInfo", "_waitingForPort"):
            self.assertIn(name, theirs)
        source = (PACKAGE / "_twisted_internals.py").read_text(encoding="utf-8")
        self.assertIn("._selectables", source)


if os.environ.get("TXSOCKSGSS_LAYERS_DEBUG"):  # pragma: no cover - a maintainer's aid
    for _name, _found in {n: imports(t, set(modules())) for n, t in modules().items()}.items():
        print(_name, layer_of(_name), sorted({t for t, _, _ in _found}))
