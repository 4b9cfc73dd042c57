"""
The ``socksgss`` console script.

One program with a subcommand per task (``socksgss passwd``, and later
``connect`` and ``demo``).  Each subcommand is a pair: a function that adds
its parser to the subparsers, and a ``run(args) -> int`` it stores as the
parser's default; `main` parses and calls it.  Exit status: 0 success, 1
failure (file unreadable or malformed, user not found), 2 bad usage or bad
input (argparse's own convention).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Callable, Sequence

from txsocksgss.auth.passwordfile import (
    MAX_PASSWORD_LENGTH,
    check_password,
    check_user_name,
    delete_user,
    set_password,
)
from txsocksgss.cli.connect import add_connect_parser
from txsocksgss.cli.demo import add_demo_parser
from txsocksgss.errors import ConfigError

__all__ = ["EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_PROGRAM = "socksgss"


class _UsageError(Exception):
    """Bad input from the person at the keyboard: reported, exit status 2."""


def _report(command: str, message: str) -> None:
    print(f"{_PROGRAM} {command}: error: {message}", file=sys.stderr)


# --- socksgss passwd ---------------------------------------------------------


def _add_passwd(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser(
        "passwd",
        help="set or delete a user's password in a password file",
        description=(
            "Set USER's password in the password file FILE (created, mode 0600, "
            "when missing), or delete USER with --delete.  The new password is "
            "asked twice when standard input is a terminal; otherwise it is the "
            "first line of standard input."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="the password file")
    parser.add_argument("user", metavar="USER", help="the user name (1 to 255 bytes, no ':')")
    parser.add_argument("--delete", action="store_true", help="remove USER instead")
    parser.set_defaults(run=_run_passwd)


def _read_new_password() -> bytes:
    """
    The new password: asked twice with getpass when stdin is a terminal,
    else the first line of stdin without its line ending.

    :raise _UsageError: when the two typed passwords differ.
    """
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        first = getpass.getpass("New password: ")
        second = getpass.getpass("Repeat the new password: ")
        if first != second:
            raise _UsageError("the two passwords differ; nothing was changed")
        return first.encode("utf-8", "surrogateescape")
    if stdin is None:
        return b""
    # Bounded read: anything this long is refused anyway.
    limit = 4 * MAX_PASSWORD_LENGTH + 2
    buffer = getattr(stdin, "buffer", None)
    if buffer is not None:
        line: bytes = buffer.readline(limit)
    else:
        line = stdin.readline(limit).encode("utf-8", "surrogateescape")
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def _run_passwd(args: argparse.Namespace) -> int:
    command = "passwd"
    user: str = args.user
    path: str = args.file
    try:
        check_user_name(user)
    except ValueError as e:
        _report(command, f"bad user name {user!r}: {e}")
        return EXIT_USAGE
    try:
        if args.delete:
            if not delete_user(path, user):
                _report(command, f"no user {user!r} in {path}; nothing was changed")
                return EXIT_FAILURE
            print(f"removed {user} from {path}")
            return EXIT_OK
        password = _read_new_password()
        try:
            check_password(password)
        except ValueError as e:
            raise _UsageError(f"{e} (passwords are 1 to {MAX_PASSWORD_LENGTH} bytes)") from None
        replaced = set_password(path, user, password)
    except _UsageError as e:
        _report(command, str(e))
        return EXIT_USAGE
    except ConfigError as e:
        _report(command, f"{e}; nothing was changed")
        return EXIT_FAILURE
    except OSError as e:
        _report(command, f"cannot write {path}: {e.strerror or e}")
        return EXIT_FAILURE
    except (EOFError, KeyboardInterrupt):
        _report(command, "interrupted; nothing was changed")
        return EXIT_FAILURE
    print(f"{'changed the password of' if replaced else 'added'} {user} in {path}")
    return EXIT_OK


# --- the program -------------------------------------------------------------

_SubcommandAdder = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

#: Every subcommand's parser builder, in the order ``--help`` lists them.
_SUBCOMMANDS: tuple[_SubcommandAdder, ...] = (_add_passwd, add_connect_parser, add_demo_parser)


def build_parser() -> argparse.ArgumentParser:
    """
    The ``socksgss`` argument parser, with one subparser per subcommand;
    each sets ``run``, a function from the parsed arguments to an exit status.
    """
    parser = argparse.ArgumentParser(
        prog=_PROGRAM, description="txsocksgss: a SOCKS 4/5 proxy suite with GSS-API."
    )
    subparsers = parser.add_subparsers(metavar="COMMAND", dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run ``socksgss`` with ``argv`` (``sys.argv[1:]`` when ``None``).

    :return: the exit status: 0 success, 1 failure, 2 bad usage or input
        (argparse's errors and ``--help`` return here too, rather than
        exiting).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        if e.code is None:
            return EXIT_OK
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)

