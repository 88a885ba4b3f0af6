"""Device-side leases (``refresh_s``): a device with its own watchdog, like a CRAC unit's
"BMS timeout", goes back to fans on by itself when the controller's host dies, because
the controller must keep writing to keep it where it is.

The device is the test's own Modbus TCP server (devices.BmsDevice: pymodbus, in a thread
with its own event loop) with a BMS timeout: no write to its control register for
``BMS_TIMEOUT_S`` and it sets itself to fans on. A real controller process drives it
off; it is then killed with SIGKILL, so nothing of it runs (no stop, no ``powercast
failsafe``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from devices import bms_device, wait_control
from test_actuators import Spy, pwm_tree, run, running, until

from powercast.actuators import Worker
from powercast.actuators.hwmon import HwmonDriver
from powercast.config import HwmonActuator

from harness import (
    Daemon,
    controller_config,
    free_port,
    make_keys,
    publisher_config,
    set_reading,
    write_toml,
)

BMS_TIMEOUT_S = 1.5
"""The device's watchdog: this long without a write to the control register, fans on."""
REFRESH_S = 0.4
"""The controller's lease: well below the device's timeout."""
CONTROL = 0
"""The control register: 1 fans on ("System On"), 0 off."""


@pytest.mark.system
class TestDeviceLease:
    def test_killed_controller_leaves_the_device_to_turn_fans_on(self, tmp_path: Path) -> None:
        """While the controller runs, its lease keeps the device off for several BMS
        timeouts; after SIGKILL (nothing of the controller runs), the device's own timeout
        turns the fans on within BMS_TIMEOUT_S of the last write."""
        port = free_port()
        keys = make_keys(tmp_path / "keys")
        reading = tmp_path / "ups.json"
        set_reading(reading, "online")
        with bms_device(BMS_TIMEOUT_S, control=CONTROL) as device:
            actuator = {
                "kind": "modbus",
                "host": "127.0.0.1",
                "port": device.port,
                "register": CONTROL,
                "on_value": 1,
                "off_value": 0,
                "timeout_s": 0.5,
                "refresh_s": REFRESH_S,
            }
            ctl_config = write_toml(
                tmp_path / "c.toml", controller_config(port, keys, actuators=[actuator])
            )
            pub_config = write_toml(tmp_path / "p.toml", publisher_config(port, keys, reading))
            env = {"RUNTIME_DIRECTORY": str(tmp_path)}
            publisher = Daemon("publish", "--config", str(pub_config), env=env, name="publisher")
            controller = Daemon("control", "--config", str(ctl_config), env=env, name="controller")
            try:
                controller.wait_for("transition", state="normal", timeout=10)
                set_reading(reading, "on_battery")
                controller.wait_for("transition", state="shedding")
                wait_control(device, 0, timeout=5)
                held_from = time.monotonic()
                while time.monotonic() - held_from < 3 * BMS_TIMEOUT_S:
                    assert device.control() == 0, "the device timed out while the lease ran"
                    time.sleep(0.05)
                assert device.timeouts == []
                renewals = [t for t in device.writes if t >= held_from]
                # About one per REFRESH_S; fewer than half would leave the device to time out.
                assert len(renewals) >= (3 * BMS_TIMEOUT_S / REFRESH_S) / 2
                controller.proc.kill()
                controller.proc.wait(5)
                killed = time.monotonic()
                assert device.control() == 0  # still shed: nothing ran at the kill
                waited = wait_control(device, 1, timeout=BMS_TIMEOUT_S + 2.0)
            finally:
                controller.stop()
                publisher.stop()
        last_write = device.writes[-1]
        assert last_write <= killed
        assert len(device.timeouts) == 1
        # The device's own timeout, counted from the last write (+ its 20 ms poll; a busy
        # machine's margin): fans on without any part of the controller running.
        assert device.timeouts[0] - last_write < BMS_TIMEOUT_S + 0.5
        assert waited < BMS_TIMEOUT_S + 0.5


@pytest.mark.unit
class TestWorkerLease:
    def test_the_right_position_is_written_again_every_refresh_s(self, tmp_path: Path) -> None:
        """With refresh_s, a position known to be right is written again on schedule (the
        first time at once: a probed position starts no lease); renewals are quiet: the
        worker's owner hears of none of them."""
        pwm, _ = pwm_tree(tmp_path, "0\n")
        spy = Spy(HwmonDriver("hall/0(hwmon)", HwmonActuator(path=str(pwm))))
        worker = Worker(spy, "hall", refresh_s=0.1)
        changes: list[str] = []

        async def go() -> None:
            await worker.probe()
            worker.on_change = lambda w: changes.append(w.status)
            async with running(worker):
                worker.want(0)
                await until(worker, lambda w: w.status == "ok")
                await asyncio.sleep(0.55)

        run(go())
        assert worker.known == 0
        assert 4 <= len(spy.applied) <= 8  # at once, then ~every 0.1 s for 0.55 s
        assert set(spy.applied) == {0}
        assert changes == ["idle", "ok"]  # the probe, the first write; no renewal

    def test_without_refresh_s_nothing_is_rewritten(self, tmp_path: Path) -> None:
        """No lease: a position known to be right is never written."""
        pwm, _ = pwm_tree(tmp_path, "0\n")
        spy = Spy(HwmonDriver("hall/0(hwmon)", HwmonActuator(path=str(pwm))))
        worker = Worker(spy, "hall")

        async def go() -> None:
            async with running(worker):
                worker.want(0)
                await asyncio.sleep(0.3)

        run(go())
        assert (worker.known, spy.applied) == (0, [])

    def test_a_failed_renewal_is_a_failed_actuator(self, tmp_path: Path) -> None:
        """A renewal that cannot be written marks the actuator failed, position unknown:
        the device may be timing out right now."""
        pwm, _ = pwm_tree(tmp_path, "0\n")
        worker = Worker(
            HwmonDriver("hall/0(hwmon)", HwmonActuator(path=str(pwm))),
            "hall",
            refresh_s=0.1,
            min_backoff_s=10.0,
        )

        async def go() -> None:
            async with running(worker):
                worker.want(0)
                await until(worker, lambda w: w.status == "ok")
                pwm.unlink()
                pwm.mkdir()  # the device is gone: writes fail
                await until(worker, lambda w: w.status == "failed")

        run(go())
        assert worker.known is None
        assert "cannot write" in worker.error
