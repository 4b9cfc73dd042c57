"""
One benchmark run: the destination, "direct", each proxy in turn (fresh
for each: memory first, then latency, connection rate and bulk), then
GSS-API.  Returns the results as one dict (what the JSON holds).
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import shutil
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
from benchmarks.proxies import Proxy, ProxyStartError, require_program, start_proxy
from benchmarks.report import generator_check
from benchmarks.settings import Settings

__all__ = ["run", "raise_fd_limit"]

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


def _measure_proxy(proxy: Proxy, destination: Destination, data: DataFile, settings: Settings,
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


def _measure_direct(destination: Destination, data: DataFile, settings: Settings, say: Say) -> dict[str, object]:
    result: dict[str, object] = {}
    say(f"direct: connection rate ({settings.rate_concurrency} at a time, {settings.rate_seconds:g} s)")
    result.update(measure_connection_rate(None, destination.echo_port, settings.rate_concurrency,
                                          settings.rate_processes, settings.rate_seconds))
    say(f"direct: bulk ({settings.bulk_runs} x {settings.bulk_mb} MB each way)")
    result.update(measure_bulk(None, destination, data, settings.bulk_runs, settings.bulk_mb))
    return result


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _machine() -> dict[str, object]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    commit = _output(["git", "rev-parse", "--short", "HEAD"])
    dirty = _output(["git", "status", "--porcelain", "--untracked-files=no", "--", "txsocksgss", "twisted"])
    versions = {package: _output(["dpkg-query", "-W", "-f=${Version}", package])
                for package in ("dante-server", "microsocks", "krb5-kdc")}
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "txsocksgss": f"{commit}{'+uncommitted changes' if dirty else ''}" or "unknown",
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
        "machine": {**_machine(), "fd_limit": fd_limit},
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
            results["proxies"]["direct"] = _measure_direct(destination, data, settings, say)
            for name in settings.proxies:
                with start_proxy(name, workdir, settings.proxy_args) as proxy:
                    results["proxies"][name] = _measure_proxy(proxy, destination, data, settings, say)
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
