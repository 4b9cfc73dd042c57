"""
The ``socksgss`` console script (``txsocksgss.cli:main``; also
``python -m txsocksgss.cli``).

One program with a subcommand per task, each in a module of its own:
``socksgss passwd`` (`txsocksgss.cli.passwd`), ``socksgss connect``
(`txsocksgss.cli.connect`) and ``socksgss demo`` (`txsocksgss.cli.demo`).
Each subcommand is a pair: a function that adds its parser to the
subparsers, and a ``run(args) -> int`` it stores as the parser's default;
`main` parses and calls it.  Exit status (`txsocksgss.cli.status`): 0
success, 1 failure, 2 bad usage or bad input (argparse's own convention),
3 an authentication failure of ``socksgss connect``.
"""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

from txsocksgss.cli.connect import add_connect_parser
from txsocksgss.cli.console import PROGRAM
from txsocksgss.cli.demo import add_demo_parser
from txsocksgss.cli.passwd import add_passwd_parser
from txsocksgss.cli.status import EXIT_AUTHENTICATION, EXIT_FAILURE, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_AUTHENTICATION", "build_parser", "main"]

_SubcommandAdder = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

#: Every subcommand's parser builder, in the order ``--help`` lists them.
_SUBCOMMANDS: tuple[_SubcommandAdder, ...] = (add_passwd_parser, add_connect_parser, add_demo_parser)


def build_parser() -> argparse.ArgumentParser:
    """
    The ``socksgss`` argument parser, with one subparser per subcommand;
    each sets ``run``, a function from the parsed arguments to an exit status.
    """
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="txsocksgss: a SOCKS 4/5 proxy suite with GSS-API."
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
        exiting), 3 an authentication failure of ``socksgss connect``.
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
