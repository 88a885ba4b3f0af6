"""A publisher whose source fails: unknown power, one log line, backoff, recovery by itself."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from harness import free_port, make_keys, network, running, write_toml

# Appends a line per run to argv[1]; fails while argv[2] does not exist, then prints a reading.
FLAKY = """
import os, sys
open(sys.argv[1], "a").write("run\\n")
if not os.path.exists(sys.argv[2]):
    sys.exit("sensor bus error")
print('{"power": {"status": "online"}, "temperatures": {"inlet": 22.0}}')
"""


def publisher(tmp_path: Path, runs: Path, healthy: Path) -> Path:
    config: dict[str, Any] = {
        "role": "publisher",
        "id": "flaky",
        "heartbeat_s": 0.2,
        "network": network(free_port()),
        "auth": {"keys_dir": str(make_keys(tmp_path / "keys")), "key_id": 1},
        "sources": [
            {
                "kind": "command",
                "argv": [sys.executable, "-c", FLAKY, str(runs), str(healthy)],
                "interval_s": 0.1,
                "timeout_s": 5.0,
            }
        ],
        "log": {"format": "json"},
    }
    return write_toml(tmp_path / "p.toml", config)


class TestPublisherSourceFaults:
    def test_failing_source_backs_off_and_recovers(self, tmp_path: Path) -> None:
        """A failing source is logged once, retried at doubling gaps, and recovers by itself."""
        runs, healthy = tmp_path / "runs", tmp_path / "healthy"
        with running("publish", "--config", str(publisher(tmp_path, runs, healthy))) as pub:
            failed = pub.wait_for("source_failed", timeout=5.0)
            assert failed["error"].endswith("exited with status 1 sensor bus error")
            started = time.monotonic()
            time.sleep(3.0)
            count = len(runs.read_text().splitlines())
            # Every 0.1 s that would be ~30 runs; 0.1, 0.2, 0.4, 0.8, 1.6 s apart it is ~6.
            assert 3 <= count <= 8, count
            healthy.touch()
            pub.wait_for("source_recovered", timeout=5.0)  # within the current gap (<= 3.2 s)
            changed = pub.wait_for("reading_changed", timeout=2.0)
            assert (changed["power"], changed["temp_inlet"]) == ("online", 22.0)
            assert time.monotonic() - started < 8.0
            assert pub.proc.poll() is None
        failures = [e for e in pub.seen if e.get("event") == "source_failed"]
        assert len(failures) == 1  # the same reason is not logged again
