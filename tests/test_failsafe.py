"""`powercast failsafe`: every actuator to fans on, for the unit's ExecStopPost=."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import write_toml

pytestmark = pytest.mark.system


def run(
    config: Path,
    *extra: str,
    service_result: str | None = None,
    exit_status: str | None = None,
    runtime_dir: Path | None = None,
    state_dir: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    private = ("SERVICE_RESULT", "EXIT_STATUS", "RUNTIME_DIRECTORY", "STATE_DIRECTORY")
    env = {k: v for k, v in os.environ.items() if k not in private}
    env["RUNTIME_DIRECTORY"] = str(runtime_dir or config.parent / "no-runtime-dir")
    if state_dir is not None:
        env["STATE_DIRECTORY"] = str(state_dir)
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

    def test_after_every_stop_unless_the_operator_leaves_the_fans(self, tmp_path: Path) -> None:
        """After any stop (clean, refused config, watchdog) no controller runs: fans on. The
        leave-fans marker in the runtime directory keeps them as they are, for one stop."""
        pwm = tmp_path / "pwm1"
        config = config_with_pwm(tmp_path, pwm)
        runtime = tmp_path / "run"
        runtime.mkdir()
        for result, status in (("success", "0"), ("exit-code", "78"), ("watchdog", "6")):
            pwm.write_text("0\n")
            done = run(config, "--after-stop", service_result=result, exit_status=status)
            assert done.returncode == 0, done.stderr
            assert pwm.read_text() == "255\n", result
        pwm.write_text("0\n")
        (runtime / "controller.leave-fans").write_text("filter change\n")
        done = run(config, "--after-stop", runtime_dir=runtime)
        assert done.returncode == 0
        assert "fans left as they are" in done.stdout
        assert pwm.read_text() == "0\n"
        assert run(config, runtime_dir=runtime).returncode == 0  # by hand: always
        assert pwm.read_text() == "255\n"

    def test_failure_is_named(self, tmp_path: Path) -> None:
        """An actuator that cannot be set is one line naming it, and exit 1."""
        config = config_with_pwm(tmp_path, tmp_path / "missing" / "pwm1")
        done = run(config)
        assert done.returncode == 1
        assert done.stderr.startswith("powercast: z0/0(hwmon): cannot write ")
        assert "Traceback" not in done.stderr
