"""A whole staged outage on three real devices, driven by real daemons: a publisher
reading a file (the UPS) and one controller with one zone whose stages go 100 % -> 50 %
(runtime under 600 s) -> 0 % (under 200 s), moving

- a BACnet/IP device's analog output (the fan speed, 0.0 .. 100.0 %: 50 % is 50.0),
- a PDU outlet on an SNMP agent (snmpsim; on at every level but 0, off at 0),
- a fan unit on Modbus TCP with a BMS timeout (a speed register, 0 .. 1000: 50 % is
  500), which the controller keeps where it is by writing it again (its lease).

Each step is asserted on what each device itself holds, read by the test (the BACnet
object in the device, the outlet by net-snmp's snmpget, the Modbus register in the
server), never on the controller's own account. At the end the controller is killed
while the fans are off: the Modbus unit turns them on by itself within its timeout; the
BACnet and SNMP devices have no such watchdog and are left off, which is what
``powercast failsafe`` after every stop is for: run, it turns all three on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from devices import (
    COMMAND,
    BacnetDevice,
    BmsDevice,
    PduAgent,
    bacnet_device_thread,
    bms_device,
    pdu_agent,
)
from test_source_snmp import RESPONDER

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
BMS_TIMEOUT_S = 1.5
"""The Modbus unit's watchdog: this long without a write to its speed register, fans on."""
MODBUS_REFRESH_S = 0.4
"""The controller's lease on the Modbus unit: well below its timeout."""
BACNET_REFRESH_S = 1.0
SPEED = "analog-output,1"
"""The BACnet device's fan speed in percent; relinquish-default 100.0."""
PRIORITY = 8
OUTLET = f"{COMMAND}.1"
"""The PDU outlet: 1 on, 2 off."""
ON, OFF = 1, 2
REGISTER = 0
"""The Modbus unit's speed register: 1000 full speed, 0 off."""
FULL_SPEED = 1000
SETTLE_S = 8.0
"""How long a device may take to follow a step on a loaded machine."""


class Held(NamedTuple):
    """What the three devices hold: the BACnet speed, the outlet, the Modbus register."""

    bacnet: float
    outlet: int
    modbus: int


FULL = Held(100.0, ON, FULL_SPEED)
HALF = Held(50.0, ON, 500)
SHED = Held(0.0, OFF, 0)


class Site(NamedTuple):
    bacnet: BacnetDevice
    pdu: PduAgent
    bms: BmsDevice
    controller: Path
    publisher: Path
    reading: Path
    env: dict[str, str]

    def outlet(self) -> int:
        """The outlet's command value, as the agent answers another SNMP manager."""
        done = subprocess.run(
            ["snmpget", "-v2c", "-c", "public", "-Oqv", "-t", "1", "-r", "3",
             f"127.0.0.1:{self.pdu.port}", OUTLET],
            capture_output=True, text=True, timeout=15, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    def held(self) -> Held:
        return Held(float(self.bacnet.present(SPEED)), self.outlet(), self.bms.control())


def settles(read: Callable[[], Held], expected: Held, timeout: float = SETTLE_S) -> float:
    """Wait for the devices to hold ``expected``; the monotonic time they were seen to."""
    deadline = time.monotonic() + timeout
    while (now := time.monotonic()) < deadline:
        if (got := read()) == expected:
            return now
        time.sleep(0.05)
    raise AssertionError(f"the devices hold {got}, expected {expected} within {timeout} s")


def stays(read: Callable[[], Held], expected: Held, seconds: float) -> int:
    """Assert the devices hold ``expected`` at every look for ``seconds``; how many looks."""
    looks = 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert (got := read()) == expected, f"the devices hold {got}, expected {expected}"
        looks += 1
        time.sleep(0.05)
    return looks


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """The three devices and the daemons' configs; the devices are always stopped."""
    if not RESPONDER.exists():
        pytest.skip("needs snmpsim: pip install -e '.[test]', or sh tests/run")
    if not shutil.which("snmpget"):
        reason = "needs net-snmp's snmpget: apt-get install snmp, or .ci/run"
        if os.environ.get("POWERCAST_SNMP_TESTS") == "require":
            pytest.fail(f"{reason}, and POWERCAST_SNMP_TESTS=require")
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        bacnet = stack.enter_context(bacnet_device_thread())
        pdu = stack.enter_context(pdu_agent(tmp_path / "pdu"))
        bms = stack.enter_context(bms_device(BMS_TIMEOUT_S, control=REGISTER, fans_on=FULL_SPEED))
        port = free_port()
        keys = make_keys(tmp_path / "keys")
        reading = tmp_path / "ups.json"
        set_reading(reading, "online", 24.0, runtime_s=1800.0, charge_pct=100.0)
        local = {"host": "127.0.0.1", "timeout_s": 2.0}
        actuators = [
            {
                "kind": "bacnet",
                **local,
                "port": bacnet.port,
                "object": SPEED,
                "priority": PRIORITY,
                "on_value": 100.0,
                "off_value": 0.0,
                "refresh_s": BACNET_REFRESH_S,
            },
            {
                "kind": "snmp",
                **local,
                "port": pdu.port,
                "community": "public",
                "oid": OUTLET,
                "on_value": ON,
                "off_value": OFF,
                "retries": 1,
            },
            {
                "kind": "modbus",
                **local,
                "port": bms.port,
                "register": REGISTER,
                "on_value": FULL_SPEED,
                "off_value": 0,
                "refresh_s": MODBUS_REFRESH_S,
            },
        ]
        zone = {
            "name": "hall",
            "policy": {
                "restore_after_s": RESTORE_AFTER_S,
                "stages": STAGES,
                "min_return_runtime_s": MIN_RETURN_RUNTIME_S,
            },
            "actuators": actuators,
        }
        controller = controller_config(port, keys, zones=[zone])
        yield Site(
            bacnet=bacnet,
            pdu=pdu,
            bms=bms,
            controller=write_toml(tmp_path / "c.toml", controller),
            publisher=write_toml(tmp_path / "p.toml", publisher_config(port, keys, reading)),
            reading=reading,
            env={"RUNTIME_DIRECTORY": str(tmp_path)},
        )


def failsafe(site: Site) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "powercast", "failsafe", "--config", str(site.controller)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **site.env},
    )


class TestStagedOutageOnDevices:
    def test_bacnet_snmp_and_modbus_follow_the_stages_and_the_lease_outlives_a_kill(
        self, site: Site
    ) -> None:
        """Full on battery with 900 s left; 50.0 / on / 500 under 600 s; 0.0 / off / 0
        under 200 s, held on mains with little runtime (the Modbus unit's lease renewed
        past several of its timeouts); full again once the UPS has min_return_runtime_s.
        Killed while off: the Modbus unit is on again within its timeout by itself, the
        BACnet speed and the outlet stay off until `powercast failsafe` turns them on."""
        reading, bms = site.reading, site.bms
        env = site.env
        with (
            running("control", "--config", str(site.controller), env=env) as ctl,
            running("publish", "--config", str(site.publisher), env=env),
        ):
            ctl.wait_for("transition", state="normal", timeout=20.0)
            assert site.held() == FULL

            set_reading(reading, "on_battery", 24.0, runtime_s=900.0, charge_pct=90.0)
            shed = ctl.wait_for("transition", state="shedding", timeout=10.0)
            assert (shed["stage"], shed["fan_level"]) == (0, 100)  # no stage reached yet
            stays(site.held, FULL, 0.5)

            set_reading(reading, "on_battery", 24.0, runtime_s=500.0, charge_pct=60.0)
            settles(site.held, HALF)
            assert site.bacnet.slot(SPEED, PRIORITY) == 50.0  # ours, at our priority

            set_reading(reading, "on_battery", 24.0, runtime_s=100.0, charge_pct=15.0)
            settles(site.held, SHED)
            assert bms.timeouts == []

            # Power back, but little runtime: held off, for longer than restore_after_s
            # and than several of the Modbus unit's own timeouts.
            set_reading(reading, "online", 24.0, runtime_s=150.0, charge_pct=16.0)
            held_from = time.monotonic()
            stays(site.held, SHED, max(RESTORE_AFTER_S + 1.0, 3 * BMS_TIMEOUT_S))
            assert bms.timeouts == [], "the Modbus unit timed out while the lease ran"
            renewals = [t for t in bms.writes if t >= held_from]
            # About one per MODBUS_REFRESH_S; fewer than half would let the unit time out.
            assert len(renewals) >= (3 * BMS_TIMEOUT_S / MODBUS_REFRESH_S) / 2

            set_reading(reading, "online", 24.0, runtime_s=400.0, charge_pct=40.0)
            settles(site.held, FULL)
            assert site.bacnet.slot(SPEED, PRIORITY) == 100.0
            normal = ctl.wait_for("transition", state="normal", timeout=5.0)
            assert normal["fan_level"] == 100

            # A second outage, deep at once; then the controller dies with the fans off.
            set_reading(reading, "on_battery", 24.0, runtime_s=100.0, charge_pct=15.0)
            settles(site.held, SHED)
            ctl.proc.kill()  # SIGKILL: no stop, no failsafe, nothing of it runs
            ctl.proc.wait(5)
            killed = time.monotonic()
            assert bms.control() == 0  # its timeout has not run out yet: read it first
            assert site.held()[:2] == SHED[:2]

            deadline = killed + BMS_TIMEOUT_S + 3.0
            while bms.control() != FULL_SPEED:
                assert time.monotonic() < deadline, "the Modbus unit did not time out"
                time.sleep(0.02)
            # Its own timeout, from the last write (+ its 20 ms poll and a busy machine's
            # margin): fans on with no part of the controller running.
            last_write = bms.writes[-1]
            assert last_write <= killed
            assert len(bms.timeouts) == 1
            assert bms.timeouts[0] - last_write < BMS_TIMEOUT_S + 0.5
            # The BACnet device and the PDU have no watchdog: left where the controller
            # left them, off, for as long as nobody moves them.
            assert site.held() == Held(0.0, OFF, FULL_SPEED)

        done = failsafe(site)
        assert done.returncode == 0, done.stderr
        assert site.held() == FULL
        assert site.bacnet.slot(SPEED, PRIORITY) == 100.0
        while not ctl.events.empty():  # the rest of its log, up to the kill
            ctl.seen.append(ctl.events.get())
        assert [e for e in ctl.seen if e.get("event") == "actuator_failed"] == []
