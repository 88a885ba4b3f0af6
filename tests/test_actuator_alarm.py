"""A failed actuator is said where operators look: the unit's status line and the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import (
    Notify,
    controller_config,
    free_port,
    make_keys,
    publisher_config,
    running,
    write_toml,
)

pytestmark = pytest.mark.system


class TestActuatorAlarm:
    def test_failed_actuator_shows_in_status_line(self, tmp_path: Path) -> None:
        """An actuator that cannot be written is logged as failed and named in STATUS=."""
        port = free_port()
        keys = make_keys(tmp_path / "keys")
        reading = tmp_path / "ups.json"
        reading.write_text(
            json.dumps({"power": {"status": "on_battery"}, "temperatures": {"a": 20}})
        )
        controller = write_toml(
            tmp_path / "c.toml",
            controller_config(
                port,
                keys,
                policy={"shed_after_s": 0.0, "startup_grace_s": 0.5},
                actuators=[{"kind": "hwmon", "path": str(tmp_path / "gone" / "pwm1")}],
            ),
        )
        publisher = write_toml(tmp_path / "p.toml", publisher_config(port, keys, reading))
        notify = Notify(tmp_path)
        with (
            running(
                "control", "--config", str(controller), env={"NOTIFY_SOCKET": notify.path}
            ) as ctl,
            running("publish", "--config", str(publisher)),
        ):
            ctl.wait_for("transition", state="shedding")
            failed = ctl.wait_for("actuator_failed")
            assert failed["position"] == "unknown"
            assert "gone/pwm1" in failed["error"]
            status = notify.wait_for("STATUS=shedding")
            while "ACTUATOR FAILED" not in status:
                status = notify.wait_for("STATUS=")
            assert "ACTUATOR FAILED, position unknown: default/0(hwmon)" in status
        notify.close()
