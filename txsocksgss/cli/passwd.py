"""
``socksgss passwd``: set or delete a user's password in a password file.

    socksgss passwd [--delete] FILE USER

The new password is asked twice when standard input is a terminal, and is
otherwise the first line of standard input.  The file is written by
`txsocksgss.auth.passwordfile` (created with mode 0600 when missing).

Exit status: 0 success; 1 the file is unreadable, malformed or cannot be
written, the user to delete is not there, or the input was interrupted;
2 a bad user name or password, or two typed passwords that differ.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from txsocksgss.auth.passwordfile import (
    MAX_PASSWORD_LENGTH,
    check_password,
    check_user_name,
    delete_user,
    set_password,
)
from txsocksgss.cli.console import report_error, text_bytes
from txsocksgss.cli.status import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError
from txsocksgss.errors import ConfigError

__all__ = ["add_passwd_parser"]

_COMMAND = "passwd"


def add_passwd_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``socksgss passwd`` to the ``socksgss`` subparsers."""
    parser = subparsers.add_parser(
        _COMMAND,
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
    parser.set_defaults(run=_run)


def _read_new_password() -> bytes:
    """
    The new password: asked twice with getpass when stdin is a terminal,
    else the first line of stdin without its line ending.

    :raise UsageError: when the two typed passwords differ.
    """
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        first = getpass.getpass("New password: ")
        second = getpass.getpass("Repeat the new password: ")
        if first != second:
            raise UsageError("the two passwords differ; nothing was changed")
        return text_bytes(first)
    if stdin is None:
        return b""
    # Bounded read: anything this long is refused anyway.
    limit = 4 * MAX_PASSWORD_LENGTH + 2
    buffer = getattr(stdin, "buffer", None)
    if buffer is not None:
        line: bytes = buffer.readline(limit)
    else:
        line = text_bytes(stdin.readline(limit))
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def _run(args: argparse.Namespace) -> int:
    user: str = args.user
    path: str = args.file
    try:
        check_user_name(user)
    except ValueError as e:
        report_error(_COMMAND, f"bad user name {user!r}: {e}")
        return EXIT_USAGE
    try:
        if args.delete:
            if not delete_user(path, user):
                report_error(_COMMAND, f"no user {user!r} in {path}; nothing was changed")
                return EXIT_FAILURE
            print(f"removed {user} from {path}")
            return EXIT_OK
        password = _read_new_password()
        try:
            check_password(password)
        except ValueError as e:
            raise UsageError(f"{e} (passwords are 1 to {MAX_PASSWORD_LENGTH} bytes)") from None
        replaced = set_password(path, user, password)
    except UsageError as e:
        report_error(_COMMAND, str(e))
        return EXIT_USAGE
    except ConfigError as e:
        report_error(_COMMAND, f"{e}; nothing was changed")
        return EXIT_FAILURE
    except OSError as e:
        report_error(_COMMAND, f"cannot write {path}: {e.strerror or e}")
        return EXIT_FAILURE
    except (EOFError, KeyboardInterrupt):
        report_error(_COMMAND, "interrupted; nothing was changed")
        return EXIT_FAILURE
    print(f"{'changed the password of' if replaced else 'added'} {user} in {path}")
    return EXIT_OK
