"""A publisher whose source fails: unknown power, one log line, backoff, recovery by itself;
the sensors of a failed source stay on the wire, as failed."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from powercast import net, wire

from harness import (
    GROUP,
    controller_config,
    free_port,
    make_keys,
    network,
    next_message,
    running,
    write_toml,
)

pytestmark = pytest.mark.system

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


def write_json(path: Path, reading: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(reading))
    tmp.replace(path)


def two_sources(tmp_path: Path, port: int) -> dict[str, Any]:
    """Publisher 'hall-a': a UPS on battery in ups.json, the hall inlet in hall.json."""
    ups, hall = tmp_path / "ups.json", tmp_path / "hall.json"
    write_json(ups, {"power": {"status": "on_battery"}, "temperatures": {"ups.battery": 27.0}})
    write_json(hall, {"temperatures": {"inlet": 22.0}})
    return {
        "role": "publisher",
        "id": "hall-a",
        "heartbeat_s": 0.2,
        "network": {**network(port), "ttl": 1, "loop": True},
        "auth": {"keys_dir": str(make_keys(tmp_path / "keys")), "key_id": 1},
        "sources": [
            {"kind": "file", "path": str(ups), "interval_s": 0.05},
            {"kind": "file", "path": str(hall), "interval_s": 0.05},
        ],
        "log": {"format": "json"},
    }


class TestFailedSensorOnTheWire:
    def test_failed_source_is_announced_failed_and_the_zone_runs_its_fans(
        self, tmp_path: Path
    ) -> None:
        """A source that fails keeps its sensor on the group as None; a zone counting it
        (no sensors list) leaves shedding for failsafe instead of going on with the other."""
        port = free_port()
        publisher = write_toml(tmp_path / "p.toml", two_sources(tmp_path, port))
        controller = write_toml(
            tmp_path / "c.toml",
            controller_config(port, tmp_path / "keys", policy={"shed_after_s": 0.3}),
        )
        listener = net.open_receiver(GROUP, port, "127.0.0.1")
        listener.setblocking(True)
        try:
            with (
                running("control", "--config", str(controller)) as ctl,
                running("publish", "--config", str(publisher)) as pub,
            ):
                ctl.wait_for("transition", state="shedding")
                (tmp_path / "hall.json").unlink()
                pub.wait_for("source_failed")
                message = next_message(
                    listener, until=lambda m: m.temperatures.get("inlet", 0) is None
                )
                assert message.temperatures == {"ups.battery": 27.0, "inlet": None}
                assert message.power.status is wire.PowerStatus.ON_BATTERY
                failsafe = ctl.wait_for("transition", state="failsafe")
                assert failsafe["fans"] == "on"
                assert "no reading from hall-a/inlet" in failsafe["reason"]
        finally:
            listener.close()

    def test_reload_without_the_source_starts_a_new_epoch_without_its_sensor(
        self, tmp_path: Path
    ) -> None:
        """A source removed on reload takes its sensors along: a new epoch, not a failed one."""
        port = free_port()
        config = two_sources(tmp_path, port)
        publisher = write_toml(tmp_path / "p.toml", config)
        listener = net.open_receiver(GROUP, port, "127.0.0.1")
        listener.setblocking(True)
        try:
            with running("publish", "--config", str(publisher)) as pub:
                pub.wait_for("ready")
                epoch = next_message(listener).epoch
                write_toml(publisher, {**config, "sources": config["sources"][:1]})
                pub.signal(signal.SIGHUP)
                pub.wait_for("reloaded")
                message = next_message(listener, until=lambda m: m.epoch != epoch)
                assert message.temperatures == {"ups.battery": 27.0}
                assert message.power.status is wire.PowerStatus.ON_BATTERY
        finally:
            listener.close()
