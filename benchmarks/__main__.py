"""
``python -m benchmarks [options]``: run the benchmarks, print the table,
write the JSON (see docs/performance.rst).  Exit status 1 when a peer is
missing or a measurement fails, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys

from benchmarks.proxies import ProxyStartError
from benchmarks.report import format_table, missing_fields, write_json
from benchmarks.runner import ROOT, run
from benchmarks.settings import PROXIES, SIZE_OPTIONS, SMOKE, Settings

DEFAULT_OUTPUT = f"{ROOT}/benchmarks/results"


def _parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="a very short run that checks every measurement completes")
    parser.add_argument("--proxy-args", default="", metavar="ARGS",
                        help="extra arguments for txsocksgss, one shell-quoted string "
                             "(write --proxy-args='--workers 2')")
    parser.add_argument("--proxies", default=",".join(PROXIES),
                        help=f"comma-separated proxies to measure (default {','.join(PROXIES)})")
    parser.add_argument("--no-gss", action="store_true", help="skip the GSS-API measurements")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT, help="where the JSON goes (default %(default)s)")
    for name, help_text in SIZE_OPTIONS:
        default = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=None,
                            help=f"{help_text} (default {default:g}; --smoke: {SMOKE.get(name, default):g})")
    return parser


def settings_from(arguments: argparse.Namespace) -> Settings:
    settings = Settings()
    if arguments.smoke:
        settings = settings.replace(**SMOKE)
    proxies = tuple(name.strip() for name in arguments.proxies.split(",") if name.strip())
    unknown = [name for name in proxies if name not in PROXIES]
    if unknown:
        raise SystemExit(f"unknown proxies {unknown}; known: {', '.join(PROXIES)}")
    overrides = {name: value for name, value in vars(arguments).items()
                 if value is not None and hasattr(settings, name)
                 and name not in ("smoke", "proxy_args", "proxies")}
    if overrides.get("rate_rounds", 1) < 1:
        raise SystemExit("--rate-rounds must be at least 1")
    return settings.replace(proxy_args=tuple(shlex.split(arguments.proxy_args)), proxies=proxies,
                            gss=not arguments.no_gss, **overrides)


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the with blocks: the proxies and the realm are stopped


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    settings = settings_from(arguments)
    signal.signal(signal.SIGTERM, _terminated)

    def say(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    try:
        results = run(settings, say)
    except (ProxyStartError, ConnectionError) as error:
        say(f"error: {error}")
        return 1
    missing = missing_fields(results)
    path = write_json(results, arguments.output_dir)
    print(format_table(results))
    print(f"\nJSON: {path}")
    if missing:
        say(f"error: measurements missing: {', '.join(missing)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
