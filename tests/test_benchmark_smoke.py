"""
The benchmark harness (benchmarks/, ``make bench``): its smoke run
(``python -m benchmarks --smoke``) completes within a minute and its JSON
holds every measurement for every proxy.  Dante, microsocks and the
Kerberos tools are required: a missing peer fails the run, never skips it.
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

pytestmark = [pytest.mark.interop, pytest.mark.kerberos]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_LIMIT = 55  # seconds; the smoke run takes about 15

PROXIES = ("txsocksgss", "dante", "microsocks")
# Written out here rather than imported, so the test states what the JSON promises.
PROXY_FIELDS = (
    "bulk_upload_mb_s",
    "bulk_download_mb_s",
    "connection_rate_per_s",
    "handshake_p50_ms",
    "handshake_p99_ms",
    "idle_tunnel_rss_kib",
    "idle_tunnel_pss_kib",
    "bulk_proxy_cpu_s_per_gb",
    "connection_rate_proxy_cpu_cores",
)
# txsocksgss only: the connection rate with username/password (benchmarks/userpass.py, a cheap hash).
TXSOCKSGSS_FIELDS = ("userpass_connection_rate_per_s", "userpass_connection_rate_proxy_cpu_cores")
DIRECT_FIELDS = ("bulk_upload_mb_s", "bulk_download_mb_s", "connection_rate_per_s")
POSITIVE_FIELDS = ("bulk_upload_mb_s", "bulk_download_mb_s", "connection_rate_per_s", "handshake_p50_ms",
                   "handshake_p99_ms")
GSS_FIELDS = (
    "handshake_rate_per_s",
    "integrity_upload_mb_s",
    "integrity_download_mb_s",
    "confidentiality_upload_mb_s",
    "confidentiality_download_mb_s",
    "client_cpu_cores",
)


@dataclass(frozen=True)
class SmokeRun:
    problem: str | None  # why the run failed, with its output
    results: dict[str, Any]
    table: str


@functools.cache
def smoke_run() -> SmokeRun:
    """``python -m benchmarks --smoke``, once per test process (each test checks a part of it)."""
    output = tempfile.mkdtemp(prefix="txsocksgss-bench-smoke-")
    try:
        # A session of its own: on a timeout the whole group goes (proxies, KDC), not only the harness.
        run = subprocess.Popen([sys.executable, "-m", "benchmarks", "--smoke", "--output-dir", output],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
        try:
            stdout, stderr = run.communicate(timeout=TIME_LIMIT)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            stdout, stderr = run.communicate()
            return SmokeRun(f"the smoke run took over {TIME_LIMIT} s; its output:\n{stdout}\n{stderr}", {}, "")
        text = f"stdout:\n{stdout}\nstderr:\n{stderr}"
        files = glob.glob(os.path.join(output, "*.json"))
        if run.returncode != 0 or len(files) != 1:
            return SmokeRun(f"exit status {run.returncode}, JSON files {files}\n{text}", {}, "")
        with open(files[0]) as f:
            return SmokeRun(None, json.load(f), stdout)
    finally:
        shutil.rmtree(output, ignore_errors=True)


class BenchmarkSmokeTests(SynchronousTestCase):
    def setUp(self) -> None:
        run = smoke_run()
        if run.problem is not None:
            self.fail(run.problem)
        self.results = run.results
        self.table = run.table

    def assertNumber(self, value: object, where: str, positive: bool = False) -> None:
        self.assertIsInstance(value, (int, float), f"{where} is {value!r}\n{self.table}")
        assert isinstance(value, (int, float))
        self.assertTrue(math.isfinite(value), f"{where} is {value!r}")
        if positive:
            self.assertGreater(value, 0, where)

    def test_every_proxy_has_every_measurement(self) -> None:
        proxies = self.results["proxies"]
        self.assertEqual(sorted(proxies), sorted(("direct", *PROXIES)))
        for proxy in PROXIES:
            for field in PROXY_FIELDS:
                self.assertNumber(proxies[proxy].get(field), f"{proxy}.{field}", field in POSITIVE_FIELDS)
            self.assertEqual(proxies[proxy]["connection_errors"], 0, proxies[proxy])
        for field in DIRECT_FIELDS:
            self.assertNumber(proxies["direct"].get(field), f"direct.{field}", positive=True)

    def test_txsocksgss_is_measured_with_username_password(self) -> None:
        figures = self.results["proxies"]["txsocksgss"]
        for field in TXSOCKSGSS_FIELDS:
            self.assertNumber(figures.get(field), f"txsocksgss.{field}", positive=True)
        self.assertEqual(figures["userpass_connection_errors"], 0, figures.get("userpass_connection_error_examples"))
        self.assertIn("connections/s, username/password (scrypt N=16)", self.table)

    def test_the_rate_takes_the_median_of_the_rounds(self) -> None:
        # --smoke runs two rounds, the proxies taking turns.
        for proxy in PROXIES:
            figures = self.results["proxies"][proxy]
            rounds = figures["connection_rate_rounds"]
            self.assertEqual(len(rounds), 2, proxy)
            rates = sorted(r["connection_rate_per_s"] for r in rounds)
            self.assertEqual(figures["connection_rate_per_s"], (rates[0] + rates[1]) / 2)
        self.assertIn("median of 2 rounds, proxies taking turns", self.table)

    def test_gssapi_is_measured_against_our_server(self) -> None:
        gss = self.results["gssapi"]
        for field in GSS_FIELDS:
            self.assertNumber(gss["txsocksgss"].get(field), f"gssapi.txsocksgss.{field}", field != "client_cpu_cores")
        if gss["dante-gssapi"] is None:
            # Optional: the table must say why it is missing.
            self.assertTrue(gss["dante_gssapi_skipped"])
            self.assertIn("skipped", self.table)
        else:
            for field in GSS_FIELDS:
                self.assertNumber(gss["dante-gssapi"].get(field), f"gssapi.dante-gssapi.{field}")

    def test_the_generator_is_checked_and_the_table_printed(self) -> None:
        check = self.results["generator"]
        self.assertIsInstance(check["faster_than_every_proxy"], bool)
        self.assertIn("faster than every proxy measured", self.table)
        for proxy in ("direct", *PROXIES):
            self.assertIn(proxy, self.table)
        self.assertIn("x)", self.table)  # the ratios to Dante


class CombineRateRoundsTests(SynchronousTestCase):
    def test_medians_sums_and_every_round_kept(self) -> None:
        from benchmarks.runner import combine_rate_rounds

        rounds = [
            {"connection_rate_per_s": rate, "connections": 10, "connection_errors": errors,
             "connection_error_examples": examples, "generator_cpu_cores": gen,
             "connection_rate_proxy_cpu_cores": cores}
            for rate, errors, examples, gen, cores in (
                (4000.0, 0, [], 0.3, 1.2), (5000.0, 1, ["connect: ECONNRESET"], 0.4, 1.4),
                (4500.0, 0, [], 0.2, 1.3))
        ]
        combined = combine_rate_rounds(rounds)
        self.assertEqual(combined["connection_rate_per_s"], 4500.0)
        self.assertEqual(combined["connection_rate_proxy_cpu_cores"], 1.3)
        self.assertEqual((combined["connections"], combined["connection_errors"]), (30, 1))
        self.assertEqual(combined["connection_error_examples"], ["connect: ECONNRESET"])
        self.assertEqual(combined["generator_cpu_cores"], 0.4)
        self.assertIs(combined["connection_rate_rounds"], rounds)


    def test_rate_rounds_must_be_at_least_one(self) -> None:
        from benchmarks.__main__ import _parser, settings_from

        parser = _parser()
        error = self.assertRaises(SystemExit, settings_from, parser.parse_args(["--rate-rounds", "0"]))
        self.assertIn("--rate-rounds must be at least 1", str(error))
        self.assertEqual(settings_from(parser.parse_args(["--rate-rounds", "3"])).rate_rounds, 3)
