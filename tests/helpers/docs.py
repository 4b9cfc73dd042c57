"""
Reading the manual's reST for the docs tests: its ``.. code-block::``
blocks, and the Python ones marked ``# example: NAME`` or
``# helper: NAME`` (the convention tests/test_docs_examples.py describes),
loaded and run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

__all__ = ["EXAMPLE_MARKER", "ROOT", "Block", "code_blocks", "load_example_from", "marked_blocks", "read_text"]

#: The checkout (the directory above tests/).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: The first line of a marked Python block: ``# example: NAME`` or ``# helper: NAME``.
EXAMPLE_MARKER = re.compile(r"#\s*(example|helper):\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def code_blocks(text: str, language: str) -> list[tuple[int, str]]:
    """The ``.. code-block:: LANGUAGE`` blocks of an rST text, with their line numbers."""
    blocks = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)\.\. code-block:: (\S+)\s*$", line)
        if not match or match.group(2) != language:
            continue
        directive_indent = len(match.group(1))
        body: list[str] = []
        for following in lines[number + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= directive_indent:
                break
            body.append(following)
        content = [b for b in body if b.strip()]
        indent = min(len(b) - len(b.lstrip()) for b in content)
        blocks.append((number + 1, "\n".join(b[indent:] for b in body).strip() + "\n"))
    return blocks


@dataclass(frozen=True)
class Block:
    """One marked Python block of a page."""

    page: str
    line: int
    kind: str  # "example" or "helper"
    name: str
    source: str

    def run(self, namespace: dict[str, Any]) -> None:
        """Execute the block in ``namespace`` (tracebacks name the page and line)."""
        exec(compile(self.source, f"{self.page} line {self.line}", "exec"), namespace)


def marked_blocks(page: str, text: str) -> list[Block]:
    """The marked Python blocks of ``text`` (the page named ``page``), in order."""
    blocks = []
    for line, source in code_blocks(text, "python"):
        match = EXAMPLE_MARKER.fullmatch(source.splitlines()[0].strip())
        if match:
            blocks.append(Block(page, line, match.group(1), match.group(2), source))
    return blocks


def load_example_from(blocks: Iterable[Block], name: str) -> Callable[..., Any]:
    """
    The function the ``# example: NAME`` block among ``blocks`` defines,
    run in a fresh namespace after the helpers of its page, in page order.
    """
    blocks = list(blocks)
    [block] = [b for b in blocks if b.kind == "example" and b.name == name]
    namespace: dict[str, Any] = {"__name__": f"docs_example_{name}"}
    for helper in blocks:
        if helper.kind == "helper" and helper.page == block.page:
            helper.run(namespace)
    block.run(namespace)
    return namespace[name]
