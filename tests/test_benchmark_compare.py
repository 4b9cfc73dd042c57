"""
``python -m benchmarks.compare`` (two source trees measured in one run,
taking turns): its smoke run, with this tree as both the old and the new
one, completes and its JSON and Markdown table hold every measurement of
every variant; and the pure parts (the order of the turns, the medians).
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

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_LIMIT = 150  # seconds; the run below takes about 30 (40 on a busy machine)
VARIANTS = ("old", "new")
# Written out here rather than imported, so the test states what the JSON promises.
FIELDS = (
    "connection_rate_per_s",
    "proxy_cpu_us_per_session",
    "connection_rate_proxy_cpu_cores",
    "handshake_p50_ms",
    "handshake_p99_ms",
    "bulk_upload_mb_s",
    "bulk_download_mb_s",
    "bulk_proxy_cpu_s_per_gb",
    "idle_tunnel_rss_kib",
    "idle_tunnel_pss_kib",
    "userpass_default_connection_rate_per_s",
    "userpass_cheap_connection_rate_per_s",
    "userpass_cheap_proxy_cpu_us_per_session",
)
ERROR_FIELDS = ("connection_errors", "userpass_default_connection_errors", "userpass_cheap_connection_errors")


@dataclass(frozen=True)
class CompareRun:
    problem: str | None
    results: dict[str, Any]
    table: str


@functools.cache
def compare_run() -> CompareRun:
    """The smoke run, two rounds, without GSS-API (the harness's own smoke test covers it), once per process."""
    output = tempfile.mkdtemp(prefix="txsocksgss-compare-smoke-")
    argv = [sys.executable, "-m", "benchmarks.compare", "--old", ROOT, "--new", ROOT, "--smoke", "--rounds", "2",
            "--variants", ",".join(VARIANTS), "--no-gss", "--output-dir", output]
    try:
        run = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
        try:
            stdout, stderr = run.communicate(timeout=TIME_LIMIT)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            stdout, stderr = run.communicate()
            return CompareRun(f"the comparison took over {TIME_LIMIT} s:\n{stdout}\n{stderr}", {}, "")
        files = glob.glob(os.path.join(output, "compare-*.json"))
        if run.returncode != 0 or len(files) != 1:
            return CompareRun(f"exit status {run.returncode}, JSON {files}\nstdout:\n{stdout}\nstderr:\n{stderr}",
                              {}, "")
        with open(files[0]) as f:
            return CompareRun(None, json.load(f), stdout)
    finally:
        shutil.rmtree(output, ignore_errors=True)


class CompareSmokeTests(SynchronousTestCase):
    def setUp(self) -> None:
        run = compare_run()
        if run.problem is not None:
            self.fail(run.problem)
        self.results = run.results
        self.table = run.table

    def test_every_variant_has_every_median(self) -> None:
        self.assertEqual(sorted(self.results["medians"]), sorted(VARIANTS))
        for name in VARIANTS:
            medians = self.results["medians"][name]
            for field in FIELDS:
                value = medians.get(field)
                self.assertIsInstance(value, float, f"{name}.{field} is {value!r}\n{self.table}")
                self.assertTrue(math.isfinite(value), f"{name}.{field} is {value!r}")
                if "rate" in field or "bulk" in field or "handshake" in field:
                    self.assertGreater(value, 0, f"{name}.{field}")  # memory may shrink: PSS moves with others
            for field in ERROR_FIELDS:
                self.assertEqual(medians[field], 0, f"{name}.{field}")

    def test_the_variants_take_turns_and_the_median_counts(self) -> None:
        runs = [(r["round"], r["group"], r["variant"]) for r in self.results["runs"]]
        self.assertEqual([(1, "none", "old"), (1, "none", "new")], runs[:2])
        self.assertIn((2, "none", "new"), runs)
        self.assertLess(runs.index((2, "none", "new")), runs.index((2, "none", "old")))  # reversed in round 2
        for name in VARIANTS:
            rates = sorted(r["connection_rate_per_s"] for r in self.results["figures"][name])
            self.assertEqual(len(rates), 2)
            self.assertEqual(self.results["medians"][name]["connection_rate_per_s"], (rates[0] + rates[1]) / 2)

    def test_each_variant_ran_its_own_logger_and_tree(self) -> None:
        variants = self.results["variants"]
        self.assertIsNone(variants["old"]["logger"])
        self.assertEqual(variants["new"]["logger"], "txsocksgss.logs.fastTextObserver")
        self.assertEqual(variants["old"]["package"], os.path.join(ROOT, "txsocksgss"))
        for name in VARIANTS:
            argv = self.results["figures"][name][0]["argv"]
            self.assertEqual("--logger" in argv, name == "new", argv)

    def test_the_markdown_table(self) -> None:
        self.assertIn("| measure | old | new | new/old | spread |", self.table)
        self.assertIn("| connections/s, username/password, cheap scrypt (N=2^4) |", self.table)
        self.assertIn("bound by the hash", self.table)
        self.assertIn("SMOKE RUN", self.table)
        self.assertIn("no errors in any rate test", self.table)


class CompareUnitTests(SynchronousTestCase):
    def test_round_order_reverses_every_other_round(self) -> None:
        from benchmarks.compare import round_order, variants_for

        variants = variants_for("/a", "/b")
        names = [[v.name for v in round_order(variants, number)] for number in (1, 2, 3)]
        self.assertEqual(names, [["old", "new", "new-twistd-log"], ["new-twistd-log", "new", "old"],
                                 ["old", "new", "new-twistd-log"]])

    def test_variants_need_old_and_known_names(self) -> None:
        from benchmarks.compare import variants_for

        self.assertEqual([v.name for v in variants_for("/a", "/b", ["new", "old"])], ["old", "new"])
        self.assertRaises(ValueError, variants_for, "/a", "/b", ["new"])
        self.assertRaises(ValueError, variants_for, "/a", "/b", ["old", "newest"])
        self.assertEqual(variants_for("/a", "/b")[0].environment()["PYTHONPATH"], "/a")

    def test_combine_rounds_medians_spread_and_error_sums(self) -> None:
        from benchmarks.compare import combine_rounds

        combined = combine_rounds([
            {"connection_rate_per_s": 100.0, "connection_errors": 1, "argv": ["x"]},
            {"connection_rate_per_s": 120.0, "connection_errors": 0, "argv": ["x"]},
            {"connection_rate_per_s": 80.0, "connection_errors": 2, "argv": ["x"]},
        ])
        self.assertEqual(combined["connection_rate_per_s"], 100.0)
        self.assertEqual(combined["connection_errors"], 3)
        self.assertAlmostEqual(combined["spread"]["connection_rate_per_s"], 0.4)
        self.assertNotIn("argv", combined)
