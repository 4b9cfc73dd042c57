"""
One benchmark run: the destination, "direct", each proxy in turn (fresh
for each: memory first, then latency, connection rate and bulk), the
connection rate of txsocksgss with username/password (a cheap hash,
`benchmarks.userpass`), then GSS-API.  Returns the results as one dict (what the JSON holds).
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Any, Callable

from benchmarks.bulk import measure_bulk
from benchmarks.connrate import measure_connection_rate
from benchmarks.data import DataFile
from benchmarks.destination import Destination
from benchmarks.idle import measure_idle
from benchmarks.latency import measure_latency
from benchmarks.proxies import Proxy, ProxyStartError, require_program, start_proxy, start_txsocksgss
from benchmarks.report import generator_check
from benchmarks.settings import Settings
from benchmarks.userpass import password_file, userpass_method_args, measure_userpass_rate

__all__ = ["run", "raise_fd_limit", "measure_proxy", "measure_direct", "machine_info", "tree_version", "ROOT"]

_PROGRAMS = {"dante": "danted", "microsocks": "microsocks"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Say = Callable[[str], None]


def raise_fd_limit(needed: int) -> int:
    """
    Raise RLIMIT_NOFILE (soft, and hard when allowed) to at least
    ``needed``; the proxies inherit it.  Returns the soft limit now set.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            pass  # not root: the hard limit stays
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def measure_proxy(proxy: Proxy, destination: Destination, data: DataFile, settings: Settings,
                   say: Say) -> dict[str, object]:
    result: dict[str, object] = {"argv": proxy.argv}
    say(f"{proxy.name}: {settings.idle_tunnels} idle tunnels")
    result.update(measure_idle(proxy.port, proxy.pid, destination.echo_port, settings.idle_tunnels))
    say(f"{proxy.name}: {settings.latency_count} handshakes one at a time")
    result.update(measure_latency(proxy.port, destination.echo_port, settings.latency_count))
    say(f"{proxy.name}: connection rate ({settings.rate_concurrency} at a time, {settings.rate_seconds:g} s)")
    result.update(measure_connection_rate(proxy.port, destination.echo_port, settings.rate_concurrency,
                                          settings.rate_processes, settings.rate_seconds, proxy.pid))
    say(f"{proxy.name}: bulk ({settings.bulk_runs} x {settings.bulk_mb} MB each way)")
    result.update(measure_bulk(proxy.port, destination, data, settings.bulk_runs, settings.bulk_mb, proxy.pid))
    if proxy.process.poll() is not None:
        raise ProxyStartError(f"{proxy.name} exited during the measurements; its log:\n{proxy.log_tail()}")
    return result


_RATE_FIELDS = ("connection_rate_per_s", "connections", "connection_errors", "connection_error_examples",
                "generator_cpu_cores", "connection_rate_proxy_cpu_cores")


def _more_rate_rounds(destination: Destination, workdir: str, settings: Settings, proxies: dict[str, Any],
                      say: Say) -> None:
    """
    Rounds 2 to ``settings.rate_rounds`` of the connection rate: the
    proxies take turns, each started afresh and warmed up with a short
    unrecorded run, so that the machine's drift (its speed moves by tens of
    percent over minutes) falls on all of them alike; each proxy's figures
    become the median of its rounds (`combine_rate_rounds`).
    """
    rounds = {name: [{field: proxies[name][field] for field in _RATE_FIELDS if field in proxies[name]}]
              for name in settings.proxies}
    for number in range(2, settings.rate_rounds + 1):
        for name in settings.proxies:
            say(f"{name}: connection rate, round {number} of {settings.rate_rounds}")
            with start_proxy(name, workdir, settings.proxy_args) as proxy:
                measure_connection_rate(proxy.port, destination.echo_port, settings.rate_concurrency,
                                        settings.rate_processes, min(1.0, settings.rate_seconds), proxy.pid)
                rounds[name].append(measure_connection_rate(
                    proxy.port, destination.echo_port, settings.rate_concurrency, settings.rate_processes,
                    settings.rate_seconds, proxy.pid))
                if proxy.process.poll() is not None:
                    raise ProxyStartError(f"{proxy.name} exited during round {number} of the connection rate; "
                                          f"its log:\n{proxy.log_tail()}")
    for name in settings.proxies:
        proxies[name].update(combine_rate_rounds(rounds[name]))


def combine_rate_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """
    One proxy's connection-rate figures from several rounds: the rate and
    the CPU use are the medians, errors add up, and every round is kept
    (``connection_rate_rounds``).
    """
    combined: dict[str, Any] = {
        "connection_rate_per_s": statistics.median(r["connection_rate_per_s"] for r in rounds),
        "connections": sum(r["connections"] for r in rounds),
        "connection_errors": sum(r["connection_errors"] for r in rounds),
        "connection_error_examples": sorted({e for r in rounds for e in r["connection_error_examples"]})[:5],
        "generator_cpu_cores": max(r["generator_cpu_cores"] for r in rounds),
        "connection_rate_rounds": rounds,
    }
    cores = [r["connection_rate_proxy_cpu_cores"] for r in rounds if "connection_rate_proxy_cpu_cores" in r]
    if cores:
        combined["connection_rate_proxy_cpu_cores"] = statistics.median(cores)
    return combined


def _measure_userpass(destination: Destination, workdir: str, settings: Settings, say: Say) -> dict[str, object]:
    """txsocksgss's connection rate with username/password and a cheap hash: the sessions' cost, not scrypt's."""
    say(f"txsocksgss: connection rate with username/password ({settings.rate_concurrency} at a time, "
        f"{settings.rate_seconds:g} s)")
    method_args = userpass_method_args(password_file(workdir, "scrypt-cheap"))
    with start_txsocksgss(workdir, settings.proxy_args, method_args, name="txsocksgss-userpass") as proxy:
        result = measure_userpass_rate(proxy, destination.echo_port, settings)
        if proxy.process.poll() is not None:
            raise ProxyStartError(f"{proxy.name} exited during the measurements; its log:\n{proxy.log_tail()}")
    return result


def measure_direct(destination: Destination, data: DataFile, settings: Settings, say: Say) -> dict[str, object]:
    result: dict[str, object] = {}
    say(f"direct: connection rate ({settings.rate_concurrency} at a time, {settings.rate_seconds:g} s)")
    result.update(measure_connection_rate(None, destination.echo_port, settings.rate_concurrency,
                                          settings.rate_processes, settings.rate_seconds))
    say(f"direct: bulk ({settings.bulk_runs} x {settings.bulk_mb} MB each way)")
    result.update(measure_bulk(None, destination, data, settings.bulk_runs, settings.bulk_mb))
    return result


def _output(argv: list[str], cwd: str = ROOT) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def tree_version(root: str) -> str:
    """The short commit of the source tree ``root``, "+uncommitted changes" when its code differs from it."""
    commit = _output(["git", "rev-parse", "--short", "HEAD"], root)
    dirty = _output(["git", "status", "--porcelain", "--untracked-files=no", "--", "txsocksgss", "twisted"], root)
    return f"{commit}{'+uncommitted changes' if dirty else ''}" or "unknown"


def machine_info() -> dict[str, object]:
    """The machine, the Python and the peers' packages; ``txsocksgss``: this tree's `tree_version`."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    versions = {package: _output(["dpkg-query", "-W", "-f=${Version}", package])
                for package in ("dante-server", "microsocks", "krb5-kdc")}
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "txsocksgss": tree_version(ROOT),
        "packages": versions,
    }


def run(settings: Settings, say: Say) -> dict[str, Any]:
    """Every measurement of ``settings``; raises ProxyStartError when a peer is missing or fails."""
    for name in settings.proxies:
        if name in _PROGRAMS:
            require_program(_PROGRAMS[name])  # a missing peer is an error, before anything runs
    fd_limit = raise_fd_limit(4 * settings.idle_tunnels + 1024)
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.monotonic()
    results: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "settings": settings.as_dict(),
        "machine": {**machine_info(), "fd_limit": fd_limit},
        "proxies": {},
        "gssapi": None,
    }
    if settings.gss:
        # Before any load: the KDC needs ten consecutive free ports.
        from benchmarks.gss import start_realm

        say("GSS-API: a Kerberos realm (k5test)")
        start_realm()
    workdir = tempfile.mkdtemp(prefix="txsocksgss-bench-")
    os.chmod(workdir, 0o755)  # Dante's children run as nobody
    try:
        with DataFile() as data, Destination(data) as destination:
            results["proxies"]["direct"] = measure_direct(destination, data, settings, say)
            for name in settings.proxies:
                with start_proxy(name, workdir, settings.proxy_args) as proxy:
                    results["proxies"][name] = measure_proxy(proxy, destination, data, settings, say)
            if "txsocksgss" in settings.proxies:
                results["proxies"]["txsocksgss"].update(_measure_userpass(destination, workdir, settings, say))
            if settings.rate_rounds > 1:
                _more_rate_rounds(destination, workdir, settings, results["proxies"], say)
            if settings.gss:
                from benchmarks.gss import run_gss

                results["gssapi"] = run_gss(settings, destination, data, workdir, say)
    except BaseException:
        say(f"the proxies' logs are kept in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    results["generator"] = generator_check(results)
    results["duration_s"] = time.monotonic() - clock
    return results
