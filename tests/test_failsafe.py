"""`powercast failsafe`: every actuator to fans on, for the unit's ExecStopPost=."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness import write_toml


def run(
    config: Path, *extra: str, service_result: str | None = None, exit_status: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SERVICE_RESULT", "EXIT_STATUS")}
    if service_result is not None:
        env["SERVICE_RESULT"] = service_result
    if exit_status is not None:
        env["EXIT_STATUS"] = exit_status
    return subprocess.run(
        [sys.executable, "-m", "powercast", "failsafe", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def config_with_pwm(tmp_path: Path, *pwms: Path) -> Path:
    return write_toml(
        tmp_path / "c.toml",
        {
            "role": "controller",
            "zones": [
                {"name": f"z{i}", "actuators": [{"kind": "hwmon", "path": str(pwm)}]}
                for i, pwm in enumerate(pwms)
            ],
        },
    )


class TestFailsafe:
    def test_sets_every_actuator_on(self, tmp_path: Path) -> None:
        """Each zone's PWM goes to its on value and the command says how many."""
        pwms = [tmp_path / "pwm1", tmp_path / "pwm2"]
        for pwm in pwms:
            pwm.write_text("0\n")
        done = run(config_with_pwm(tmp_path, *pwms))
        assert done.returncode == 0, done.stderr
        assert [p.read_text() for p in pwms] == ["255\n", "255\n"]
        assert done.stdout == "powercast failsafe: 2 of 2 actuators set to fans on\n"

    def test_after_failure_only_when_systemd_says_so(self, tmp_path: Path) -> None:
        """With --after-failure, a clean stop leaves the fans alone; a watchdog kill does not."""
        pwm = tmp_path / "pwm1"
        pwm.write_text("0\n")
        config = config_with_pwm(tmp_path, pwm)
        assert run(config, "--after-failure", service_result="success").returncode == 0
        assert pwm.read_text() == "0\n"
        refused = run(config, "--after-failure", service_result="exit-code", exit_status="78")
        assert refused.returncode == 0
        assert pwm.read_text() == "0\n"  # a refused config never started, so moved nothing
        assert run(config, "--after-failure", service_result="watchdog").returncode == 0
        assert pwm.read_text() == "255\n"

    def test_failure_is_named(self, tmp_path: Path) -> None:
        """An actuator that cannot be set is one line naming it, and exit 1."""
        config = config_with_pwm(tmp_path, tmp_path / "missing" / "pwm1")
        done = run(config)
        assert done.returncode == 1
        assert done.stderr.startswith("powercast: z0/0(hwmon): cannot write ")
        assert "Traceback" not in done.stderr
