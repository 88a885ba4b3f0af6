"""benchmarks/run still runs: one --quick --json pass, every figure present (no timing checks:
figures depend on the machine; README's "Performance" has the numbers and their targets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {
    "ingest": {"per_s", "baseline_per_s", "ratio"},
    "flood": {"p50_ms", "p99_ms", "watchdog_late"},
    "dispatch": {"p50_ms", "p99_ms"},
    "e2e_loopback": {"p50_ms", "p99_ms"},
    "e2e_netns": {"p50_ms", "p99_ms"},
    "loss20": {"p50_ms", "p99_ms"},
    "idle": {"controller_cpu_pct", "controller_rss_mb", "publisher_cpu_pct"},
    "ready": {"p50_ms", "p99_ms"},
    "scale_1000": {"cpu_pct"},
}


class TestBenchmarks:
    def test_quick_json_run_prints_every_figure(self) -> None:
        """`benchmarks/run --quick --json` exits 0 with every figure, each measured or skipped."""
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "run"), "--quick", "--json"],
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
            if "skipped" not in result:
                assert fields <= set(result), f"{name}: {sorted(result)}"
                assert isinstance(result["met"], bool)
