"""A whole staged outage through real daemons: a publisher reading a file (the UPS), a
controller on the loopback group, and a fan PWM in a sysfs-like tree of tmp_path.

100 % -> 50 % (runtime under 600 s) -> 0 % (under 200 s) -> power back: the fans stay
off until restore_after_s has passed and the UPS announces min_return_runtime_s again
-> 100 %. Asserted on the PWM file itself and on the controller's log lines.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from harness import (
    controller_config,
    free_port,
    make_keys,
    publisher_config,
    running,
    set_reading,
    write_toml,
)

pytestmark = pytest.mark.system

RESTORE_AFTER_S = 1.0
MIN_RETURN_RUNTIME_S = 300.0
STAGES = [
    {"level": 50, "runtime_below_s": 600.0},
    {"level": 0, "runtime_below_s": 200.0},
]


def wait_pwm(path: Path, value: int, timeout: float = 5.0) -> float:
    """Wait for the PWM file to hold ``value``; the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while (now := time.monotonic()) < deadline:
        if path.read_text().strip() == str(value):
            return now
        time.sleep(0.01)
    raise AssertionError(f"{path} holds {path.read_text().strip()!r}, expected {value}")


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Any]:
    port = free_port()
    keys = make_keys(tmp_path / "keys")
    reading = tmp_path / "ups.json"
    set_reading(reading, "online", 24.0, runtime_s=1800.0, charge_pct=100.0)
    hwmon = tmp_path / "sys/class/hwmon/hwmon3"
    hwmon.mkdir(parents=True)
    pwm = hwmon / "pwm1"
    pwm.write_text("255\n")
    (hwmon / "pwm1_enable").write_text("2\n")
    actuator = {
        "kind": "hwmon",
        "path": str(pwm),
        "enable_path": str(hwmon / "pwm1_enable"),
        "on_value": 255,
        "off_value": 0,
    }
    policy = {
        "shed_after_s": 0.3,
        "restore_after_s": RESTORE_AFTER_S,
        "stages": STAGES,
        "min_return_runtime_s": MIN_RETURN_RUNTIME_S,
    }
    controller = controller_config(port, keys, policy=policy, actuators=[actuator])
    return {
        "controller": write_toml(tmp_path / "c.toml", controller),
        "publisher": write_toml(tmp_path / "p.toml", publisher_config(port, keys, reading)),
        "reading": reading,
        "pwm": pwm,
    }


class TestStagedOutage:
    def test_100_50_0_then_back_after_the_minimum(self, site: dict[str, Any]) -> None:
        """The PWM goes 255 -> 128 -> 0 as the runtime falls, holds 0 on mains until the
        battery has min_return_runtime_s again and restore_after_s passed, then 255."""
        pwm, reading = site["pwm"], site["reading"]
        with (
            running("control", "--config", str(site["controller"])) as ctl,
            running("publish", "--config", str(site["publisher"])),
        ):
            ctl.wait_for("transition", state="normal", timeout=10.0)
            set_reading(reading, "on_battery", 24.0, runtime_s=1200.0, charge_pct=90.0)
            shed = ctl.wait_for("transition", state="shedding")
            assert (shed["stage"], shed["fan_level"], shed["runtime_s"]) == (0, 100, 1200.0)
            assert "no stage reached" in shed["reason"]
            assert pwm.read_text() == "255\n"  # no stage yet: full speed, nothing written

            set_reading(reading, "on_battery", 24.0, runtime_s=500.0, charge_pct=60.0)
            half = ctl.wait_for("stage", stage=1)
            assert (half["state"], half["fan_level"], half["previous_fan_level"]) == (
                "shedding",
                50,
                100,
            )
            wait_pwm(pwm, 128)
            assert (pwm.parent / "pwm1_enable").read_text() == "1\n"  # manual, first write

            set_reading(reading, "on_battery", 24.0, runtime_s=150.0, charge_pct=20.0)
            off = ctl.wait_for("stage", stage=2)
            assert off["fan_level"] == 0
            wait_pwm(pwm, 0)

            set_reading(reading, "online", 24.0, runtime_s=160.0, charge_pct=21.0)
            back = time.monotonic()
            time.sleep(RESTORE_AFTER_S + 0.5)  # restore_after_s is over; runtime is not back
            assert pwm.read_text() == "0\n"
            set_reading(reading, "online", 24.0, runtime_s=400.0, charge_pct=40.0)
            normal = ctl.wait_for("transition", state="normal")
            restored = wait_pwm(pwm, 255)
            assert restored - back >= RESTORE_AFTER_S + 0.5
            assert normal["fan_level"] == 100
            assert normal["runtime_s"] == 400.0
        while not ctl.events.empty():  # the rest of its log, after it stopped
            ctl.seen.append(ctl.events.get())
        sets = [e for e in ctl.seen if e.get("event") == "actuator_set"]
        assert [e["fan_level"] for e in sets] == [50, 0, 100]
        held = [
            e for e in ctl.seen if e.get("event") == "transition" and e.get("state") == "shedding"
        ]
        assert len(held) == 1  # one shed: the stages and the hold are not new sheds


class TestConfigCheck:
    def test_check_takes_stages_and_names_a_bad_one(
        self, site: dict[str, Any], tmp_path: Path
    ) -> None:
        """`config check` accepts the staged config; overlapping stages exit 78 with the
        zone, the stage and the key named."""
        good = subprocess.run(
            [sys.executable, "-m", "powercast", "config", "check", str(site["controller"])],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert good.returncode == 0, good.stderr
        bad_config = tomllib.loads(site["controller"].read_text())
        bad_config.pop("actuators")
        bad_config["zones"] = [
            {"name": "a"},
            {"name": "b", "policy": {"stages": [*STAGES, {"level": 10, "runtime_below_s": 100}]}},
        ]
        bad = write_toml(tmp_path / "bad.toml", bad_config)
        done = subprocess.run(
            [sys.executable, "-m", "powercast", "config", "check", str(bad)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 78
        assert done.stderr == (
            f"powercast: {bad}: zones[1].policy.stages[2].level: expected less than"
            " stages[1]'s 0 (stages go deeper in order), got 10\n"
        )
