"""
What the ``socksgss`` subcommands share at the terminal: the program's
name, the one-line error message (``socksgss COMMAND: error: ...``) on
standard error, the bytes a command-line string stands for, and the two
consoles of a run that lasts: `StderrConsole` (``socksgss connect``,
details with ``-v``) and `StdioConsole` (``socksgss demo``, standard
output too, silent on a closed pipe).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["PROGRAM", "error_line", "report_error", "text_bytes", "StderrConsole", "StdioConsole"]

#: The console script's name, the first word of every message.
PROGRAM = "socksgss"


def error_line(command: str, message: str) -> str:
    """The line that reports bad usage or a failure of ``socksgss COMMAND``."""
    return f"{PROGRAM} {command}: error: {message}"


def report_error(command: str, message: str) -> None:
    """Write `error_line` to standard error."""
    print(error_line(command, message), file=sys.stderr)


def text_bytes(text: str) -> bytes:
    """
    The bytes ``text`` stands for: UTF-8, with any bytes that were not
    UTF-8 (kept by Python as lone surrogates, ``surrogateescape``) given
    back as they were typed.
    """
    return text.encode("utf-8", "surrogateescape")


class StderrConsole:
    """
    Standard error of a run: errors (``socksgss: ...``) and status lines
    always, details (``socksgss: ...``) only when ``verbose``.

    :param stream: where to write (default: ``sys.stderr`` at each write).
    """

    def __init__(self, verbose: bool, stream: Any = None) -> None:
        self.verbose = verbose
        self._stream = stream

    def _write(self, line: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def error(self, message: str) -> None:
        """An error or a warning: always written."""
        self._write(f"{PROGRAM}: {message}")

    def status(self, line: str) -> None:
        """A line of the run's own output (``bound HOST PORT``), written as it is."""
        self._write(line)

    def info(self, message: str) -> None:
        """A detail of the handshake: written with ``-v`` only."""
        if self.verbose:
            self._write(f"{PROGRAM}: {message}")


class StdioConsole:
    """
    Standard output for a run's results (``socksgss demo``: the
    instructions and the session lines), standard error for the rest.  A
    line gets its newline when it has none; a closed pipe makes that
    stream silent rather than failing the run.

    :param command: the subcommand, named in `error` lines.
    :param out: where `out` writes (default: ``sys.stdout`` at each write).
    :param err: where `err` and `error` write (default: ``sys.stderr``).
    """

    def __init__(self, command: str, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._command = command
        self._out = out
        self._err = err

    @staticmethod
    def _put(stream: TextIO, text: str) -> None:
        try:
            stream.write(text if text.endswith("\n") else text + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say there
            pass

    def out(self, text: str) -> None:
        """Text for standard output."""
        self._put(self._out or sys.stdout, text)

    def err(self, text: str) -> None:
        """Text for standard error, as it is."""
        self._put(self._err or sys.stderr, text)

    def error(self, message: str) -> None:
        """An `error_line` of the subcommand on standard error."""
        self.err(error_line(self._command, message))
