"""
The results: one table on stdout, one JSON file.

Every value is compared with Dante's from the same run ("0.85x" = 0.85
times Dante's value); for latency, memory and CPU lower is better, for
the rest higher.  The JSON holds every number, the runs behind each
median, the settings and the machine.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

__all__ = ["PROXY_FIELDS", "TXSOCKSGSS_FIELDS", "DIRECT_FIELDS", "GSS_FIELDS", "format_table", "write_json",
           "generator_check", "missing_fields"]

# (JSON key, label, format); the table shows them in this order.
_ROWS = [
    ("bulk_upload_mb_s", "bulk upload, MB/s (median)", "{:,.0f}"),
    ("bulk_download_mb_s", "bulk download, MB/s (median)", "{:,.0f}"),
    ("connection_rate_per_s", "connections/s", "{:,.0f}"),
    ("handshake_p50_ms", "handshake p50, ms", "{:.3f}"),
    ("handshake_p99_ms", "handshake p99, ms", "{:.3f}"),
    ("idle_tunnel_rss_kib", "memory per idle tunnel, KiB RSS", "{:,.1f}"),
    ("idle_tunnel_pss_kib", "memory per idle tunnel, KiB PSS", "{:,.1f}"),
    ("bulk_proxy_cpu_s_per_gb", "proxy CPU per GB relayed, s", "{:.2f}"),
    ("connection_rate_proxy_cpu_cores", "proxy CPU at that rate, cores", "{:.2f}"),
]
# txsocksgss only (`benchmarks.userpass`: Dante's username method checks the system's users).
_TXSOCKSGSS_ROWS = [
    ("userpass_connection_rate_per_s", "connections/s, username/password (scrypt N=16)", "{:,.0f}"),
    ("userpass_connection_rate_proxy_cpu_cores", "proxy CPU at the username/password rate, cores", "{:.2f}"),
]
_GSS_ROWS = [
    ("handshake_rate_per_s", "handshakes/s", "{:,.0f}"),
    ("integrity_upload_mb_s", "level 1 (integrity) upload, MB/s", "{:,.0f}"),
    ("integrity_download_mb_s", "level 1 (integrity) download, MB/s", "{:,.0f}"),
    ("confidentiality_upload_mb_s", "level 2 (confidentiality) upload, MB/s", "{:,.0f}"),
    ("confidentiality_download_mb_s", "level 2 (confidentiality) download, MB/s", "{:,.0f}"),
    ("client_cpu_cores", "our client's CPU during handshakes, cores", "{:.2f}"),
]

PROXY_FIELDS = tuple(key for key, _, _ in _ROWS)
TXSOCKSGSS_FIELDS = tuple(key for key, _, _ in _TXSOCKSGSS_ROWS)
DIRECT_FIELDS = ("bulk_upload_mb_s", "bulk_download_mb_s", "connection_rate_per_s")
GSS_FIELDS = tuple(key for key, _, _ in _GSS_ROWS)
_REFERENCE = "dante"
_NO_RATIO = {"client_cpu_cores"}  # the client's cost, not the server's


def missing_fields(results: dict[str, Any]) -> list[str]:
    """``proxy.field`` for every expected number that is absent (an incomplete run)."""
    missing = []
    for name, values in results["proxies"].items():
        expected = DIRECT_FIELDS if name == "direct" else PROXY_FIELDS
        if name == "txsocksgss":
            expected += TXSOCKSGSS_FIELDS
        for key in expected:
            if not isinstance(values.get(key), (int, float)):
                missing.append(f"{name}.{key}")
    gss = results.get("gssapi")
    if gss is not None:
        for name in ("txsocksgss", "dante-gssapi"):
            if gss.get(name) is None:
                continue
            missing += [f"gssapi.{name}.{key}" for key in GSS_FIELDS
                        if not isinstance(gss[name].get(key), (int, float))]
    return missing


def generator_check(results: dict[str, Any]) -> dict[str, Any]:
    """Were the clients (run direct, without a proxy) faster than every proxy, in every measurement?"""
    proxies = {name: values for name, values in results["proxies"].items() if name != "direct"}
    direct = results["proxies"].get("direct", {})
    check: dict[str, Any] = {}
    for key in DIRECT_FIELDS:
        best_name = max(proxies, key=lambda name: proxies[name][key]) if proxies else None
        best = proxies[best_name][key] if best_name else 0.0
        check[key] = {"direct": direct.get(key), "best_proxy": best_name, "best_proxy_value": best,
                      "faster": bool(direct.get(key)) and direct[key] > best}
    check["generator_cpu_cores_max"] = max((values.get("generator_cpu_cores", 0.0) for values in proxies.values()),
                                           default=0.0)
    check["faster_than_every_proxy"] = all(check[key]["faster"] for key in DIRECT_FIELDS)
    return check


def _cell(values: dict[str, Any] | None, key: str, form: str, reference: dict[str, Any] | None,
          is_reference: bool) -> str:
    value = None if values is None else values.get(key)
    if not isinstance(value, (int, float)):
        return "-"
    text = form.format(value)
    base = None if reference is None else reference.get(key)
    if not is_reference and key not in _NO_RATIO and isinstance(base, (int, float)) and base:
        text += f" ({value / base:.2f}x)"
    return text


def _table(title: str, columns: Sequence[str], data: dict[str, Any], rows: Sequence[tuple[str, str, str]],
           reference: str) -> list[str]:
    cells = [[title, *columns]]
    for key, label, form in rows:
        cells.append([label] + [_cell(data.get(name), key, form, data.get(reference), name == reference)
                                for name in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = []
    for number, row in enumerate(cells):
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
        if number == 0:
            lines.append("-" * len(lines[0]))
    return lines


def format_table(results: dict[str, Any]) -> str:
    """The whole report: header, the method-none table, the generator check, the GSS-API table."""
    settings = results["settings"]
    machine = results["machine"]
    proxies = results["proxies"]
    columns = [name for name in ("direct", "txsocksgss", "dante", "microsocks") if name in proxies]
    lines = [
        f"txsocksgss benchmark, {results['started']} ({results['duration_s']:.0f} s), "
        f"{machine['cpus']} CPUs, Linux {machine['kernel']}, Python {machine['python']}",
        f"txsocksgss {machine['txsocksgss']}; proxy args: {' '.join(settings['proxy_args']) or '(none)'}",
        f"bulk {settings['bulk_runs']} x {settings['bulk_mb']} MB each way; "
        f"{settings['rate_concurrency']} connections at a time for {settings['rate_seconds']:g} s "
        f"({settings['rate_processes']} generator processes{_rounds(settings)}); "
        f"{settings['latency_count']} handshakes one at a "
        f"time; {settings['idle_tunnels']} idle tunnels",
        "(n.nnx) = times Dante's value; higher is better for MB/s and rates, lower for ms, KiB and CPU",
    ]
    if settings["smoke"]:
        lines.append("SMOKE RUN: it checks that every measurement completes; its numbers mean nothing")
    lines.append("")
    lines += _table("method none", columns, proxies, _ROWS + _TXSOCKSGSS_ROWS, _REFERENCE)
    errors = {name: values.get("connection_errors") for name, values in proxies.items()
              if values.get("connection_errors")}
    if proxies.get("txsocksgss", {}).get("userpass_connection_errors"):
        errors["txsocksgss, username/password"] = proxies["txsocksgss"]["userpass_connection_errors"]
    if errors:
        lines.append(f"connection errors during the rate test: {errors}")
    lines.append("")
    lines += _generator_lines(results["generator"], len(proxies) - 1)
    lines.append("")
    lines += _gss_lines(results.get("gssapi"), settings)
    return "\n".join(lines)


def _generator_lines(check: dict[str, Any], proxies: int) -> list[str]:
    if not proxies:
        return ["generator check: no proxy measured"]
    lines = []
    for key, what in (("connection_rate_per_s", "connections/s"), ("bulk_upload_mb_s", "upload MB/s"),
                      ("bulk_download_mb_s", "download MB/s")):
        item = check[key]
        lines.append(f"generator ceiling ({what}): direct {item['direct']:,.0f} vs best proxy "
                     f"{item['best_proxy']} {item['best_proxy_value']:,.0f}"
                     + (f" ({item['direct'] / item['best_proxy_value']:.1f}x)" if item["best_proxy_value"] else ""))
    lines.append(f"generator CPU while driving the proxies: at most {check['generator_cpu_cores_max']:.2f} cores")
    lines.append("the load generator and the data movers were faster than every proxy measured: "
                 + ("YES" if check["faster_than_every_proxy"] else "NO (those proxy numbers are the generator's)"))
    return lines


def _gss_lines(gss: dict[str, Any] | None, settings: dict[str, Any]) -> list[str]:
    if gss is None:
        return ["GSS-API: not measured (--no-gss)"]
    columns = [name for name in ("txsocksgss", "dante-gssapi") if gss.get(name) is not None]
    lines = _table(f"GSS-API, Kerberos ({settings['gss_rate_concurrency']} handshakes at a time; "
                   f"{settings['gss_runs']} x {settings['gss_mb']} MB)", columns, gss, _GSS_ROWS, "dante-gssapi")
    movers = [gss[name].get(f"{level}_mover_cpu_cores", 0.0) for name in columns
              for level in ("integrity", "confidentiality")]
    lines.append(f"GSS-API data mover CPU while timed: at most {max(movers, default=0.0):.2f} cores "
                 "(it neither wraps nor unwraps on the clock)")
    if gss.get("dante_gssapi_skipped"):
        lines.append(f"Dante GSS-API build: skipped: {gss['dante_gssapi_skipped']}")
    return lines


def write_json(results: dict[str, Any], directory: str, prefix: str = "") -> str:
    """Write ``results`` to ``directory``/``prefix``<started, as 20250101T120000Z>.json; returns the path."""
    os.makedirs(directory, exist_ok=True)
    stamp = results["started"].replace("-", "").replace(":", "")
    path = os.path.join(directory, f"{prefix}{stamp}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def _rounds(settings: dict[str, Any]) -> str:
    rounds = settings.get("rate_rounds", 1)
    return f", median of {rounds} rounds, proxies taking turns" if rounds > 1 else ""

