"""The fuzz target runs for a bounded time in every test run: 2 s of fuzzing (most of the
test's time is the target instrumenting its imports), 60 s under -m slow;
POWERCAST_FUZZ_SECONDS sets either."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

TARGET = Path(__file__).parent / "fuzz" / "fuzz_datagram.py"


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="needs atheris: pip install -e '.[test]', or run tests/run",
)
class TestFuzz:
    @pytest.mark.parametrize(
        "seconds",
        [pytest.param(2, id="quick"), pytest.param(60, id="long", marks=pytest.mark.slow)],
    )
    def test_datagram_path_survives_fuzzing(self, tmp_path: Path, seconds: int) -> None:
        """libFuzzer-driven bytes through decode, verify, session and policy raise nothing."""
        seconds = int(os.environ.get("POWERCAST_FUZZ_SECONDS", seconds))
        done = subprocess.run(
            [sys.executable, str(TARGET), f"-max_total_time={seconds}", "-print_final_stats=1"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=seconds + 60,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Done " in done.stderr
        runs = int(done.stderr.split("Done ")[1].split()[0])
        assert runs > 1000
