"""
How a ``socksgss`` subcommand ends: its exit status.

Every subcommand's ``run(args)`` returns one of these:

    0  `EXIT_OK`              success, or the normal end of a run
    1  `EXIT_FAILURE`         failure: a file unreadable or malformed, a user
                              not found, a connection or reply failure, a
                              failed set-up
    2  `EXIT_USAGE`           bad usage or bad input (argparse's own
                              convention); `UsageError` is that input
    3  `EXIT_AUTHENTICATION`  ``socksgss connect`` only: the proxy refused
                              the credentials, or every method offered

A subcommand that runs the reactor (``connect``, ``demo``) runs it with
`react_for_status`, which gives back the status its coroutine returned.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_AUTHENTICATION",
    "UsageError",
    "react_for_status",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTHENTICATION = 3


class UsageError(Exception):
    """Bad input from the command line or the keyboard: one line on stderr, exit status 2."""


def react_for_status(run: Callable[[Any], Coroutine[Any, Any, int]], stopped: int) -> int:
    """
    Run ``run(reactor)`` under `twisted.internet.task.react` and return the
    exit status it returned; ``stopped`` when the reactor stopped before it
    returned (SIGINT or SIGTERM).
    """
    from twisted.internet import task

    outcome: list[int] = []

    async def main(reactor: Any) -> None:
        outcome.append(await run(reactor))

    try:
        task.react(main)
    except SystemExit:  # react always ends with sys.exit; the status is ours
        pass
    return outcome[0] if outcome else stopped
