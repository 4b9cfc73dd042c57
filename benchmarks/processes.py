"""
A proxy's process tree as /proc shows it: its pids (Dante forks, and a
proxy with worker processes too), their memory and their CPU time.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass

__all__ = ["descendants", "Memory", "tree_memory", "tree_cpu_seconds", "die_with_parent", "wait_until_quiet"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent() -> None:
    """
    Have the kernel send this process SIGTERM when its parent dies
    (prctl PR_SET_PDEATHSIG), so that a harness killed with SIGKILL leaves
    no proxy, destination or generator behind.  For ``preexec_fn`` and for
    the harness's own child processes.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the harness's handler, for a forked child
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name, in parentheses, may hold spaces: split after it.
    return stat.rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (children, their children...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass(frozen=True)
class Memory:
    """Resident memory of a process tree in KiB: RSS (shared pages counted in each process) and PSS."""

    rss_kib: int
    pss_kib: int
    processes: int


def tree_memory(pid: int) -> Memory:
    """RSS and PSS summed over ``pid`` and its descendants (/proc/PID/smaps_rollup)."""
    rss = pss = count = 0
    for member in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{member}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
        count += 1
    return Memory(rss, pss, count)


def tree_cpu_seconds(pid: int) -> float:
    """
    CPU time (user + system) used so far by ``pid`` and its descendants,
    including children they have already reaped.
    """
    ticks = 0
    for member in [pid, *descendants(pid)]:
        try:
            fields = _stat_fields(member)
        except OSError:
            continue
        # utime stime cutime cstime: fields 14-17 of proc(5), 11-14 counted after the name.
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / _TICKS


def wait_until_quiet(pid: int, cores: float = 0.05, interval: float = 0.2, timeout: float = 15.0) -> bool:
    """
    Wait until ``pid``'s tree uses less than ``cores`` of CPU over
    ``interval`` seconds (work left over from an earlier load, such as
    password hashes queued for clients that are gone, has drained), or
    ``timeout`` seconds pass.  Returns whether it became quiet.
    """
    deadline = time.monotonic() + timeout
    before = tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = tree_cpu_seconds(pid)
        if now - before < cores * interval:
            return True
        before = now
    return False
