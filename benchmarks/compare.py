"""
``python -m benchmarks.compare --old TREE --new TREE [options]``: txsocksgss
from two source trees (two commits), measured in one run on one machine,
taking turns; prints a Markdown table of the medians and the new/old
ratios, and writes the JSON (see docs/performance.rst, "Comparing two
commits").  Exit status 1 when a measurement fails or is missing, 2 on a
usage error.

Only the proxy process differs between the two: it is started with
``PYTHONPATH=TREE``, so twistd, the plugin and txsocksgss come from that
tree.  Everything else (the load generators, the data movers, the
destination, the realm) is this harness's own code.  Three variants:

- ``old``: the old tree with twistd's default text log (a tree from before
  `txsocksgss.logs.fastTextObserver` has nothing else);
- ``new``: the new tree with ``--logger txsocksgss.logs.fastTextObserver``
  (as ``make run`` and ``python -m benchmarks``);
- ``new-twistd-log``: the new tree with twistd's default text log, the
  same log set-up as ``old``.

Each round measures, for each group in turn, every variant on a freshly
started proxy: method none (idle-tunnel memory, handshake latency,
connection rate with the proxy's CPU, bulk both ways), username/password
with set_password's default scrypt cost and with a cheap one
(`benchmarks.userpass`), GSS-API (handshake rate, bulk at levels 1 and 2).
The variants take turns within each group, in reverse order every other
round, so a drift of the machine's speed falls on all of them alike; each
figure is the median of its rounds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from benchmarks.data import DataFile
from benchmarks.destination import Destination
from benchmarks.proxies import TEXT_LOGGER, Proxy, ProxyStartError, start_txsocksgss
from benchmarks.report import write_json
from benchmarks.runner import ROOT, machine_info, measure_direct, measure_proxy, raise_fd_limit, tree_version
from benchmarks.settings import SIZE_OPTIONS, SMOKE, Settings
from benchmarks.userpass import DEFAULT_COST_SECONDS, measure_userpass_rate, password_file, userpass_method_args

__all__ = ["Variant", "variants_for", "compare", "combine_rounds", "format_markdown", "main"]

DEFAULT_OUTPUT = f"{ROOT}/benchmarks/results"
DEFAULT_ROUNDS = 3
SMOKE_ROUNDS = 2

Say = Callable[[str], None]


@dataclass(frozen=True)
class Variant:
    """One proxy set-up: a name (a column of the table), its source tree and twistd's ``--logger`` (None: default)."""

    name: str
    tree: str
    logger: str | None
    description: str

    def environment(self) -> dict[str, str]:
        """This process's environment with ``PYTHONPATH`` = the tree alone (its code wins over the installed one)."""
        return {**os.environ, "PYTHONPATH": self.tree}


def variants_for(old: str, new: str, names: Sequence[str] | None = None) -> list[Variant]:
    """The variants (see the module's docstring) of the trees ``old`` and ``new``, those of ``names`` only."""
    old, new = os.path.abspath(old), os.path.abspath(new)
    every = [
        Variant("old", old, None, "old tree, twistd's default text log"),
        Variant("new", new, TEXT_LOGGER, f"new tree, --logger {TEXT_LOGGER}"),
        Variant("new-twistd-log", new, None, "new tree, twistd's default text log"),
    ]
    if names is None:
        return every
    unknown = set(names) - {variant.name for variant in every}
    if unknown or "old" not in names:
        raise ValueError(f"variants must include old, from {', '.join(v.name for v in every)}; got {list(names)}")
    return [variant for variant in every if variant.name in names]


def check_tree(variant: Variant) -> str:
    """
    Where txsocksgss comes from under ``variant``'s environment; raises
    ProxyStartError unless that is the variant's tree (or its logger is missing there).
    """
    probe = "import os, txsocksgss; print(os.path.dirname(os.path.abspath(txsocksgss.__file__)))"
    if variant.logger:
        module, _, name = variant.logger.rpartition(".")
        probe += f"; import {module}; getattr({module}, {name!r})"
    done = subprocess.run([sys.executable, "-c", probe], env=variant.environment(), capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), timeout=60)
    package = done.stdout.strip()
    if done.returncode != 0 or os.path.realpath(os.path.dirname(package)) != os.path.realpath(variant.tree):
        raise ProxyStartError(f"{variant.name}: PYTHONPATH={variant.tree} does not give that tree's txsocksgss"
                              f"{' and ' + variant.logger if variant.logger else ''}: {package!r} {done.stderr[-500:]}")
    return package


# -- the measurements: groups, each on a fresh proxy -------------------------------


def _start(variant: Variant, workdir: str, settings: Settings, method_args: Sequence[str], group: str) -> Proxy:
    return start_txsocksgss(workdir, settings.proxy_args, method_args, env=variant.environment(),
                            name=f"{variant.name}-{group}", logger=variant.logger)


def _alive(proxy: Proxy) -> None:
    if proxy.process.poll() is not None:
        raise ProxyStartError(f"{proxy.name} exited during its measurements; its log:\n{proxy.log_tail()}")


def _per_session_us(result: dict[str, Any], prefix: str = "") -> None:
    """Add ``PREFIXproxy_cpu_us_per_session``: the proxy's CPU time per completed session."""
    rate = result.get(f"{prefix}connection_rate_per_s")
    cores = result.get(f"{prefix}connection_rate_proxy_cpu_cores")
    if isinstance(rate, (int, float)) and isinstance(cores, (int, float)) and rate > 0:
        result[f"{prefix}proxy_cpu_us_per_session"] = cores / rate * 1e6


def _group_none(variant: Variant, context: "_Context") -> dict[str, Any]:
    with _start(variant, context.workdir, context.settings, ("--method", "none"), "none") as proxy:
        result = measure_proxy(proxy, context.destination, context.data, context.settings, context.say)
    _per_session_us(result)
    return result


def _group_userpass(cost: str, short: str) -> Callable[[Variant, "_Context"], dict[str, Any]]:
    def measure(variant: Variant, context: "_Context") -> dict[str, Any]:
        method_args = userpass_method_args(password_file(context.workdir, cost))
        seconds = DEFAULT_COST_SECONDS if cost == "scrypt-default" else 0.0
        context.say(f"{variant.name}: username/password, {cost} ({context.settings.rate_concurrency} at a time, "
                    f"{max(seconds, context.settings.rate_seconds):g} s)")
        with _start(variant, context.workdir, context.settings, method_args, cost) as proxy:
            figures = measure_userpass_rate(proxy, context.destination.echo_port, context.settings, seconds)
            _alive(proxy)
        result = {key.replace("userpass_", f"userpass_{short}_", 1): value for key, value in figures.items()}
        _per_session_us(result, f"userpass_{short}_")
        return result

    return measure


def _group_gss(variant: Variant, context: "_Context") -> dict[str, Any]:
    from benchmarks.gss import gssapi_method_args, measure_gss_server, start_realm

    method_args = gssapi_method_args(start_realm().service_keytab)
    with _start(variant, context.workdir, context.settings, method_args, "gssapi") as proxy:
        figures = measure_gss_server(proxy, context.destination, context.data, context.settings, context.say)
        _alive(proxy)
    return {f"gss_{key}": value for key, value in figures.items()}


@dataclass
class _Context:
    settings: Settings
    destination: Destination
    data: DataFile
    workdir: str
    say: Say


def _groups(settings: Settings) -> list[tuple[str, Callable[[Variant, _Context], dict[str, Any]]]]:
    groups = [("none", _group_none),
              ("userpass-default", _group_userpass("scrypt-default", "default")),
              ("userpass-cheap", _group_userpass("scrypt-cheap", "cheap"))]
    if settings.gss:
        groups.append(("gssapi", _group_gss))
    return groups


def round_order(variants: Sequence[Variant], number: int) -> list[Variant]:
    """The variants in round ``number`` (from 1): in order, reversed every other round."""
    return list(variants) if number % 2 else list(reversed(variants))


def compare(settings: Settings, variants: Sequence[Variant], rounds: int, say: Say) -> dict[str, Any]:
    """Every round of every group for every variant; the results as one dict (what the JSON holds)."""
    trees = {variant.tree: check_tree(variant) for variant in variants}
    fd_limit = raise_fd_limit(4 * settings.idle_tunnels + 1024)
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.monotonic()
    results: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "settings": settings.as_dict(),
        "rounds": rounds,
        "machine": {**machine_info(), "fd_limit": fd_limit},
        "variants": {variant.name: {"tree": variant.tree, "package": trees[variant.tree],
                                    "version": tree_version(variant.tree), "logger": variant.logger,
                                    "description": variant.description} for variant in variants},
        "runs": [],
    }
    if settings.gss:
        from benchmarks.gss import start_realm

        say("GSS-API: a Kerberos realm (k5test)")
        start_realm()  # before any load: the KDC needs ten consecutive free ports
    workdir = tempfile.mkdtemp(prefix="txsocksgss-compare-")
    os.chmod(workdir, 0o755)
    figures: dict[str, list[dict[str, Any]]] = {variant.name: [{} for _ in range(rounds)] for variant in variants}
    try:
        with DataFile() as data, Destination(data) as destination:
            context = _Context(settings, destination, data, workdir, say)
            say("direct: the load generator's ceiling")
            results["direct"] = measure_direct(destination, data, settings, say)
            for number in range(1, rounds + 1):
                for group, measure in _groups(settings):
                    for variant in round_order(variants, number):
                        say(f"round {number} of {rounds}: {variant.name}, {group}")
                        result = measure(variant, context)
                        figures[variant.name][number - 1].update(result)
                        results["runs"].append({"round": number, "group": group, "variant": variant.name,
                                                "at_s": round(time.monotonic() - clock, 1)})
    except BaseException:
        say(f"the proxies' logs are kept in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    results["figures"] = figures
    results["medians"] = {name: combine_rounds(rounds_) for name, rounds_ in figures.items()}
    results["duration_s"] = time.monotonic() - clock
    return results


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def combine_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """
    One variant's figures: for every number all its rounds have, the
    median, and the spread of the rounds ((max - min) / median) as
    ``spread[KEY]``; error counts add up instead.
    """
    keys = [key for key in rounds[0] if all(_number(r.get(key)) for r in rounds)]
    combined: dict[str, Any] = {"spread": {}}
    for key in keys:
        values = [float(r[key]) for r in rounds]
        if key.endswith("_errors"):
            combined[key] = sum(values)
            continue
        middle = statistics.median(values)
        combined[key] = middle
        combined["spread"][key] = (max(values) - min(values)) / middle if middle else 0.0
    return combined


# -- the report ----------------------------------------------------------------------

# (key, label, format); lower is better for ms, µs, KiB, CPU; higher for the rest.
ROWS = [
    ("connection_rate_per_s", "connections/s, method none", "{:,.0f}"),
    ("proxy_cpu_us_per_session", "proxy CPU per session, µs, method none", "{:,.1f}"),
    ("connection_rate_proxy_cpu_cores", "proxy CPU at that rate, cores", "{:.2f}"),
    ("handshake_p50_ms", "handshake p50, ms", "{:.3f}"),
    ("handshake_p99_ms", "handshake p99, ms", "{:.3f}"),
    ("bulk_upload_mb_s", "bulk upload, MB/s", "{:,.0f}"),
    ("bulk_download_mb_s", "bulk download, MB/s", "{:,.0f}"),
    ("bulk_proxy_cpu_s_per_gb", "proxy CPU per GB relayed, s", "{:.2f}"),
    ("idle_tunnel_rss_kib", "memory per idle tunnel, KiB RSS", "{:,.2f}"),
    ("idle_tunnel_pss_kib", "memory per idle tunnel, KiB PSS", "{:,.2f}"),
    ("userpass_default_connection_rate_per_s", "connections/s, username/password, default scrypt "
                                               "(N=2^14: bound by the hash)", "{:,.1f}"),
    ("userpass_default_proxy_cpu_us_per_session", "proxy CPU per session, µs, default scrypt", "{:,.0f}"),
    ("userpass_cheap_connection_rate_per_s", "connections/s, username/password, cheap scrypt (N=2^4)", "{:,.0f}"),
    ("userpass_cheap_proxy_cpu_us_per_session", "proxy CPU per session, µs, cheap scrypt", "{:,.1f}"),
    ("userpass_cheap_connection_rate_proxy_cpu_cores", "proxy CPU at that rate, cores", "{:.2f}"),
    ("gss_handshake_rate_per_s", "GSS-API handshakes/s", "{:,.0f}"),
    ("gss_integrity_upload_mb_s", "GSS-API level 1 (integrity) upload, MB/s", "{:,.0f}"),
    ("gss_integrity_download_mb_s", "GSS-API level 1 (integrity) download, MB/s", "{:,.0f}"),
    ("gss_confidentiality_upload_mb_s", "GSS-API level 2 (confidentiality) upload, MB/s", "{:,.0f}"),
    ("gss_confidentiality_download_mb_s", "GSS-API level 2 (confidentiality) download, MB/s", "{:,.0f}"),
    ("gss_client_cpu_cores", "our GSS-API client's CPU during handshakes, cores", "{:.2f}"),
]
ERROR_FIELDS = ("connection_errors", "userpass_default_connection_errors", "userpass_cheap_connection_errors",
                "gss_handshake_errors")


def expected_fields(results: dict[str, Any]) -> list[str]:
    """The keys of `ROWS` a complete run has (the GSS-API ones only when measured)."""
    return [key for key, _, _ in ROWS if results["settings"]["gss"] or not key.startswith("gss_")]


def missing_fields(results: dict[str, Any]) -> list[str]:
    """``variant.key`` for every expected median that is absent."""
    return [f"{name}.{key}" for name, medians in results["medians"].items() for key in expected_fields(results)
            if not _number(medians.get(key))]


def format_markdown(results: dict[str, Any]) -> str:
    """The header lines and one Markdown table: each variant's medians and its ratio to ``old``."""
    settings, machine, variants = results["settings"], results["machine"], results["variants"]
    medians = results["medians"]
    others = [name for name in variants if name != "old"]
    lines = [
        f"txsocksgss, old against new: {results['started']} ({results['duration_s']:.0f} s), "
        f"{machine['cpus']} CPUs, Linux {machine['kernel']}, Python {machine['python']}",
        "",
    ]
    lines += [f"- `{name}`: {info['version']} ({info['tree']}), {info['description']}" for name, info in variants.items()]
    lines += [
        f"- proxy args: `{' '.join(settings['proxy_args']) or '(none)'}`; median of {results['rounds']} rounds, "
        "the variants taking turns (reversed every other round), each on a freshly started proxy",
        f"- {settings['rate_concurrency']} connections at a time for {settings['rate_seconds']:g} s "
        f"({settings['rate_processes']} generator processes); {settings['latency_count']} handshakes one at a time; "
        f"{settings['idle_tunnels']} idle tunnels; bulk {settings['bulk_runs']} x {settings['bulk_mb']} MB each way"
        + (f"; GSS-API {settings['gss_rate_concurrency']} handshakes at a time, "
           f"{settings['gss_runs']} x {settings['gss_mb']} MB" if settings["gss"] else "; GSS-API not measured"),
        "- ratio = variant / old: higher is better for rates and MB/s, lower for ms, µs, KiB and CPU; "
        "spread = the largest (max - min) / median of any variant's rounds",
    ]
    if settings["smoke"]:
        lines.append("- SMOKE RUN: it checks that every measurement completes; its numbers mean nothing")
    lines.append("")
    header = ["measure", "old"]
    for name in others:
        header += [name, f"{name}/old"]
    header.append("spread")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    base = medians["old"]
    for key, label, form in ROWS:
        if key not in expected_fields(results):
            continue
        cells = [label, _formatted(base.get(key), form)]
        for name in others:
            value = medians[name].get(key)
            cells.append(_formatted(value, form))
            cells.append(f"{value / base[key]:.3f}" if _number(value) and _number(base.get(key)) and base[key]
                         else "-")
        spreads = [medians[name]["spread"].get(key) for name in variants]
        known = [spread for spread in spreads if _number(spread)]
        cells.append(f"{max(known):.1%}" if known and results["rounds"] > 1 else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    errors = {f"{name}.{key}": medians[name].get(key) for name in variants for key in ERROR_FIELDS
              if medians[name].get(key)}
    lines.append(f"errors during the rate tests: {errors}" if errors else "no errors in any rate test")
    lines += _generator_lines(results)
    return "\n".join(lines)


def _formatted(value: object, form: str) -> str:
    return form.format(value) if _number(value) else "-"


def _generator_lines(results: dict[str, Any]) -> list[str]:
    direct = results.get("direct", {})
    medians = results["medians"]
    lines = []
    for key, what in (("connection_rate_per_s", "connections/s"), ("bulk_upload_mb_s", "upload MB/s"),
                      ("bulk_download_mb_s", "download MB/s")):
        best = max((m.get(key, 0.0) for m in medians.values()), default=0.0)
        ceiling = direct.get(key, 0.0)
        verdict = "faster" if ceiling > best else "NOT faster: these figures are the generator's"
        lines.append(f"generator ceiling ({what}): direct {ceiling:,.0f} against the best variant {best:,.0f}: {verdict}")
    cores = max((r.get("generator_cpu_cores", 0.0) for rounds in results["figures"].values() for r in rounds),
                default=0.0)
    lines.append(f"generator CPU while driving the proxies (method none): at most {cores:.2f} cores")
    return lines


# -- the command line ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, metavar="TREE", help="the old source tree (a checkout)")
    parser.add_argument("--new", default=".", metavar="TREE", help="the new source tree (default: .)")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"rounds, the variants taking turns (default {DEFAULT_ROUNDS}; --smoke: {SMOKE_ROUNDS})")
    parser.add_argument("--variants", default=None,
                        help="comma-separated variants to measure (default old,new,new-twistd-log)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every measurement completes")
    parser.add_argument("--proxy-args", default="", metavar="ARGS",
                        help="extra arguments for both proxies, one shell-quoted string (--proxy-args='--workers 2')")
    parser.add_argument("--no-gss", action="store_true", help="skip the GSS-API measurements")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT, help="where the JSON goes (default %(default)s)")
    for name, help_text in SIZE_OPTIONS:
        if name == "rate_rounds":
            continue  # --rounds: every measurement is repeated, not only the rate
        default = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=None,
                            help=f"{help_text} (default {default:g}; --smoke: {SMOKE.get(name, default):g})")
    return parser


def settings_from(arguments: argparse.Namespace) -> tuple[Settings, list[Variant], int]:
    settings = Settings()
    if arguments.smoke:
        settings = settings.replace(**SMOKE)
    overrides = {name: value for name, value in vars(arguments).items()
                 if value is not None and hasattr(settings, name) and name not in ("smoke", "proxy_args")}
    settings = settings.replace(proxy_args=tuple(shlex.split(arguments.proxy_args)), proxies=("txsocksgss",),
                                gss=not arguments.no_gss, rate_rounds=1, **overrides)
    rounds = arguments.rounds if arguments.rounds is not None else SMOKE_ROUNDS if arguments.smoke else DEFAULT_ROUNDS
    if rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    for tree in (arguments.old, arguments.new):
        if not os.path.isdir(os.path.join(tree, "txsocksgss")):
            raise SystemExit(f"{tree} is not a txsocksgss source tree (no txsocksgss/ in it)")
    names = None if arguments.variants is None else [n.strip() for n in arguments.variants.split(",") if n.strip()]
    try:
        variants = variants_for(arguments.old, arguments.new, names)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    return settings, variants, rounds


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the with blocks: the proxies and the realm are stopped


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    settings, variants, rounds = settings_from(arguments)
    signal.signal(signal.SIGTERM, _terminated)

    def say(message: str) -> None:
        print(f"compare: {message}", file=sys.stderr, flush=True)

    try:
        results = compare(settings, variants, rounds, say)
    except (ProxyStartError, ConnectionError) as error:
        say(f"error: {error}")
        return 1
    missing = missing_fields(results)
    path = write_json(results, arguments.output_dir, prefix="compare-")
    print(format_markdown(results))
    print(f"\nJSON: {path}")
    if missing:
        say(f"error: measurements missing: {', '.join(missing)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
