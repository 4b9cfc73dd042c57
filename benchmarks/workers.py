"""
Load-generator processes that start together.  Each runs
``target(*arguments, ready)``: it prepares (connects, warms up), calls
``ready()``, which returns when every process is ready, runs its loop and
returns a dict of counts.  The parent notices a process that fails or
dies at any point, so a broken worker ends the run with its reason
instead of hanging it.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from typing import Any, Callable, Literal, Sequence

from benchmarks.processes import die_with_parent

__all__ = ["run_together", "shares", "START_TIMEOUT"]

START_TIMEOUT = 60.0  # for every process to be ready
_POLL = 0.5


def run_together(start_method: Literal["fork", "spawn"], target: Callable[..., dict[str, Any]],
                 arguments: Sequence[tuple[Any, ...]], duration: float,
                 at_start: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    """
    One process per tuple of ``arguments`` (multiprocessing ``start_method``:
    "fork", or "spawn" for a process that needs a fresh reactor); calls
    ``at_start`` when they are all ready and returns their reports, in
    order.  Raises ConnectionError when one fails, dies, or takes more than
    `START_TIMEOUT` to be ready or ``duration`` + `START_TIMEOUT` to report.
    """
    context: Any = multiprocessing.get_context(start_method)  # typeshed: BaseContext lacks Process
    messages = context.Queue()
    go = context.Event()
    workers = [context.Process(target=_worker, args=(number, target, args, messages, go), daemon=True)
               for number, args in enumerate(arguments)]
    for worker in workers:
        worker.start()
    try:
        _collect(messages, workers, "ready", START_TIMEOUT)
        go.set()
        at_start()
        reports = _collect(messages, workers, "report", duration + START_TIMEOUT)
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.terminate()
                worker.join()
    return [reports[number] for number in range(len(workers))]


def _collect(messages: Any, workers: list[Any], kind: str, timeout: float) -> dict[int, Any]:
    """One ``kind`` message from every worker; a failure, a silent death or the timeout raise."""
    found: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    silent_dead = 0
    while len(found) < len(workers):
        try:
            number, message, payload = messages.get(timeout=_POLL)
        except queue.Empty:
            dead = [worker for number, worker in enumerate(workers)
                    if number not in found and worker.exitcode is not None]
            silent_dead = silent_dead + 1 if dead else 0
            if silent_dead > 1:  # twice: what it sent just before dying has had time to arrive
                raise ConnectionError(f"a load-generator process exited (status {dead[0].exitcode}) "
                                      f"without a report") from None
            if time.monotonic() > deadline:
                raise ConnectionError(f"the load-generator processes were not {kind} within {timeout:g} s") from None
            continue
        if message == "failure":
            raise ConnectionError(f"a load-generator process failed: {payload}")
        if message != kind:
            raise ConnectionError(f"a load-generator process sent {message!r} where {kind!r} was due")
        found[number] = payload
    return found


def _worker(number: int, target: Callable[..., dict[str, Any]], arguments: tuple[Any, ...], messages: Any,
            go: Any) -> None:
    die_with_parent()

    def ready() -> None:
        messages.put((number, "ready", None))
        if not go.wait(START_TIMEOUT + _POLL * 4):
            raise ConnectionError("never told to start")

    try:
        messages.put((number, "report", target(*arguments, ready)))
    except BaseException as error:  # the parent waits for a word from every worker: send the failure
        messages.put((number, "failure", f"{type(error).__name__}: {error}"))


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into at most ``parts`` near-equal positive shares."""
    return [share for share in (total // parts + (1 if i < total % parts else 0) for i in range(parts)) if share]
