"""benchmarks/run still runs: one --smoke --json pass (the fewest samples), every figure
present and a positive finite number (no timing checks: figures depend on the machine;
benchmarks/README.md has the numbers and their goals)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {
    "ingest": {"per_s", "baseline_per_s", "ratio"},
    "flood": {"p50_ms", "p99_ms"},
    "dispatch": {"p50_ms", "p99_ms"},
    "e2e_loopback": {"p50_ms", "p99_ms"},
    "e2e_netns": {"p50_ms", "p99_ms"},
    "loss20": {"p50_ms", "p99_ms"},
    "idle": {"controller_cpu_pct", "controller_rss_mb", "publisher_cpu_pct"},
    "ready": {"p50_ms", "p99_ms"},
    "scale_1000": {"cpu_pct"},
    "nut_detect": {
        "p50_ms",
        "p99_ms",
        "upsd_p50_ms",
        "upsd_p99_ms",
        "upsmon_p50_ms",
        "upsmon_p99_ms",
        "publisher_cpu_pct",
    },
    "verify_cost": {"decode_us", "hmac_us", "ed25519_us", "over_budget_us", "ed25519_ratio"},
    "trap_detect": {"p50_ms", "p99_ms", "baseline_get_p50_ms", "agent_p50_ms"},
    "relay_throughput": {"best_received_per_s", "baseline_received_per_s"},
}
"""The numbers each figure gives; CPU shares may be 0 (clock ticks, when the kernel keeps no
schedstat), every other one is above 0."""
REQUIRED = {"nut_detect": "POWERCAST_NUT_TESTS", "trap_detect": "POWERCAST_SNMP_TESTS"}
"""Figures that need a system package, and the variable that makes their skip a failure
(.ci/run sets it: upsd for nut_detect, snmpd for trap_detect)."""
FLAGS = {"flood": {"watchdog_late"}}
"""The yes/no answers some figures give besides their numbers."""


class TestBenchmarks:
    def test_smoke_json_run_prints_every_figure(self) -> None:
        """`benchmarks/run --smoke --json` exits 0 with every figure, each measured (positive
        finite numbers) or skipped."""
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "run"), "--smoke", "--json"],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        results = json.loads(done.stdout)
        assert set(results) == set(FIGURES)
        for name, fields in FIGURES.items():
            result = results[name]
            assert "error" not in result, f"{name}: {result['error']}"
            if "skipped" in result:
                required = REQUIRED.get(name)
                assert required is None or os.environ.get(required) != "require", (
                    f"{name}: {result['skipped']}"
                )
                continue
            assert fields | FLAGS.get(name, set()) <= set(result), f"{name}: {sorted(result)}"
            for field in fields:
                value = result[field]
                where = f"{name}.{field}: {value!r}"
                assert isinstance(value, int | float), where
                assert not isinstance(value, bool), where
                assert math.isfinite(value), where
                assert value > 0 or (value == 0 and field.endswith("cpu_pct")), where
            for flag in FLAGS.get(name, set()):
                assert isinstance(result[flag], bool), f"{name}.{flag}: {result[flag]!r}"
            assert isinstance(result["met"], bool)


class TestPercentile:
    def test_nearest_rank(self) -> None:
        """The p99 of 100 samples is the 99th smallest, not the largest: one slow sample in a
        hundred is what a p99 allows."""
        sys.path.insert(0, str(ROOT / "benchmarks"))
        try:
            from bench import percentile
        finally:
            sys.path.remove(str(ROOT / "benchmarks"))
        hundred = [float(v) for v in range(100, 0, -1)]
        assert percentile(hundred, 99) == 99.0
        assert percentile(hundred, 50) == 50.0
        assert percentile(hundred, 100) == 100.0
        assert percentile([float(v) for v in range(1, 41)], 99) == 40.0
        assert percentile([7.0], 99) == 7.0
