"""The bacnet actuator against a real BACnet/IP device: a bacpypes3 application in the
test's event loop with commandable objects (a real 16-slot priority array), on 127.0.0.1
at a free port (devices.bacnet_device); the driver sends from another free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import tomli_w
from bacpypes3.basetypes import BinaryPV
from bacpypes3.primitivedata import ObjectIdentifier
from devices import bacnet_device, present, slot
from test_actuators import run, running, until

from powercast import config as cfg
from powercast.actuators import DriverError, Worker, actuator_name, make_driver
from powercast.actuators.bacnet import BacnetDriver, command_value, position
from powercast.config import BacnetActuator

from harness import write_toml


def bacnet(port: int, **kw: Any) -> BacnetDriver:
    config = BacnetActuator(**{"host": "127.0.0.1", "port": port, "timeout_s": 0.5, **kw})
    driver = make_driver(config, "hall/0(bacnet)")
    assert isinstance(driver, BacnetDriver)
    return driver


@contextlib.asynccontextmanager
async def closing(driver: BacnetDriver) -> AsyncIterator[BacnetDriver]:
    try:
        yield driver
    finally:
        driver.close()


@pytest.mark.system
class TestBacnetDriver:
    def test_analog_output_written_at_our_priority_and_read_back(self) -> None:
        """off and on land in slot 8 of the priority array; present-value and read() agree."""

        async def go() -> list[Any]:
            seen: list[Any] = []
            async with bacnet_device() as (app, port):
                config = {"object": "analog-output,1", "on_value": 100.0, "off_value": 20.0}
                async with closing(bacnet(port, **config)) as d:
                    for level in (0, 100):
                        await d.apply(level)
                        seen.append((slot(app, "analog-output,1", 8), await d.read()))
                    seen.append(present(app, "analog-output,1"))
            return seen

        assert run(go()) == [(20.0, 0), (100.0, 100), 100.0]

    def test_analog_value_and_another_priority(self) -> None:
        """An AV (commandable) at priority 12: only slot 12 is written."""

        async def go() -> tuple[Any, Any, int | None]:
            async with bacnet_device() as (app, port):
                config = {"object": "analog-value,3", "priority": 12, "on_value": 80.0}
                async with closing(bacnet(port, **config)) as d:
                    await d.apply(0)
                    return (
                        slot(app, "analog-value,3", 12),
                        slot(app, "analog-value,3", 8),
                        (await d.read()),
                    )

        assert run(go()) == (0.0, None, 0)

    def test_relinquish_gives_control_back_to_the_bms(self) -> None:
        """on = "relinquish": off writes inactive at our priority, on writes NULL there and
        the BMS's own relinquish-default (active) is the present value again."""

        async def go() -> list[Any]:
            seen: list[Any] = []
            async with bacnet_device() as (app, port):
                config = {"object": "binary-output,1", "priority": 10, "on": "relinquish"}
                async with closing(bacnet(port, **config)) as d:
                    for level in (0, 100):
                        await d.apply(level)
                        seen.append(
                            (slot(app, "binary-output,1", 10), str(present(app, "binary-output,1")))
                        )
                        seen.append(await d.read())
            return seen

        assert run(go()) == [(0, "inactive"), 0, (None, "active"), 100]

    def test_a_level_between_scales_an_analog_object_and_runs_a_binary_one(self) -> None:
        """Level 50 writes the midpoint of off_value..on_value to an analog output (read
        back as 50) even in relinquish mode; a binary output is simply on (read as 100)."""

        async def go() -> list[Any]:
            seen: list[Any] = []
            async with bacnet_device() as (app, port):
                speed = {"object": "analog-output,1", "on_value": 100.0, "off_value": 20.0}
                switch = {"object": "binary-output,1"}
                for config in (speed, {**speed, "on": "relinquish"}, switch):
                    async with closing(bacnet(port, **config)) as d:
                        assert d.position(50) == (100 if config is switch else 50)
                        await d.apply(50)
                        obj = str(config["object"])
                        seen.append((str(slot(app, obj, 8)), await d.read()))
            return seen

        assert run(go()) == [("60.0", 50), ("60.0", 50), ("active", 100)]

    def test_a_higher_priority_command_shows_as_a_disagreeing_readback(self) -> None:
        """The BMS holds "on" at priority 3: our off at 8 is stored but does not win, and
        the worker reports the actuator failed with the position it really has (on)."""

        async def go() -> Worker:
            async with bacnet_device() as (app, port):
                obj = app.get_object_id(ObjectIdentifier("binary-output,1"))
                await obj.write_property("presentValue", BinaryPV("active"), priority=3)
                driver = bacnet(port, object="binary-output,1")
                worker = Worker(driver, "hall", min_backoff_s=10.0)
                async with running(worker):
                    worker.want(0)
                    await until(worker, lambda w: w.status == "failed")
                    assert slot(app, "binary-output,1", 8) == 0
            return worker

        worker = run(go())
        assert worker.known == 100
        assert worker.error == "hall/0(bacnet): set 0 % but reads back 100 %"

    def test_refused_write_names_device_object_and_reason(self) -> None:
        """A write the device refuses is a DriverError saying write-access-denied."""

        async def go() -> str:
            async with (
                bacnet_device() as (_, port),
                closing(bacnet(port, object="binary-value,2")) as d,
            ):
                with pytest.raises(DriverError) as caught:
                    await d.apply(0)
            return str(caught.value)

        assert run(go()).endswith(
            "binary-value,2: write 0 at priority 8: device said property: write-access-denied"
        )

    def test_unknown_object_is_named(self) -> None:
        """An object the device lacks: the device's unknown-object, with address and object."""

        async def go() -> str:
            async with (
                bacnet_device() as (_, port),
                closing(bacnet(port, object="analog-output,9", on_value=100.0)) as d,
            ):
                with pytest.raises(DriverError) as caught:
                    await d.read()
            return str(caught.value)

        assert "analog-output,9: read present-value: device said object: unknown-object" in run(
            go()
        )

    def test_silent_device_fails_alone(self) -> None:
        """A device that never answers (a bound UDP port that drops everything): its
        actuator fails with "no answer" within its bound, position unknown; an actuator on
        a live device, driven at the same time, is set as if nothing else happened."""

        async def go() -> tuple[Worker, Worker, float, float]:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
                hole.bind(("127.0.0.1", 0))
                async with bacnet_device() as (app, port):
                    dead = Worker(
                        bacnet(hole.getsockname()[1], object="binary-output,1"),
                        "hall",
                        known=100,
                        min_backoff_s=10.0,
                    )
                    live = Worker(bacnet(port, object="binary-output,1"), "hall", known=100)
                    started = time.monotonic()
                    async with running(dead), running(live):
                        dead.want(0)
                        live.want(0)
                        await until(live, lambda w: w.status == "ok")
                        live_took = time.monotonic() - started
                        await until(dead, lambda w: w.status == "failed")
                        dead_took = time.monotonic() - started
                        assert str(present(app, "binary-output,1")) == "inactive"
            return dead, live, live_took, dead_took

        dead, live, live_took, dead_took = run(go())
        assert (live.known, dead.known) == (0, None)
        assert "write 0 at priority 8: no answer within 0.5 s" in dead.error
        assert live_took < 0.5  # not held up by the silent device (busy machine: ~5 ms here)
        assert 0.4 <= dead_took < 3.0

    def test_local_address_not_on_this_host_is_a_bounded_error(self) -> None:
        """local names an address this host lacks: bacpypes3 would retry the bind for ever;
        the driver gives up within timeout_s and says so."""

        async def go() -> str:
            driver = bacnet(47808, object="binary-output,1", local="192.0.2.1:0")
            async with closing(driver):
                with pytest.raises(DriverError) as caught:
                    await driver.apply(100)
            return str(caught.value)

        assert "local: cannot bind 192.0.2.1:0 within 0.5 s" in run(go())


@pytest.mark.system
class TestBacnetFailsafe:
    def test_failsafe_process_relinquishes_and_writes_on(self, tmp_path: Path) -> None:
        """`powercast failsafe` (a real process, no controller running) gives the CRAC's
        on/off back to the BMS (NULL at our priority) and writes the fan speed on; a
        device that never answers is reported, and holds back neither."""

        async def go() -> tuple[subprocess.CompletedProcess[str], list[Any]]:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
                hole.bind(("127.0.0.1", 0))
                async with bacnet_device() as (app, port):
                    crac = {"host": "127.0.0.1", "port": port, "timeout_s": 0.5}
                    actuators = [
                        {**crac, "object": "binary-output,1", "on": "relinquish"},
                        {**crac, "object": "analog-output,1", "on_value": 100.0},
                        {**crac, "object": "binary-output,1", "port": hole.getsockname()[1]},
                    ]
                    for table in actuators[:2]:  # shed, as a controller left them
                        async with closing(bacnet(**table)) as d:
                            await d.apply(0)
                    config = write_toml(
                        tmp_path / "c.toml",
                        {
                            "role": "controller",
                            "actuators": [{"kind": "bacnet", **t} for t in actuators],
                        },
                    )
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "powercast", "failsafe", "--config", str(config),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        env={**os.environ, "RUNTIME_DIRECTORY": str(tmp_path)},
                    )  # fmt: skip
                    out, err = await asyncio.wait_for(proc.communicate(), 30)
                    seen = [
                        slot(app, "binary-output,1", 8),
                        str(present(app, "binary-output,1")),
                        slot(app, "analog-output,1", 8),
                    ]
            done = subprocess.CompletedProcess([], proc.returncode or 0, out.decode(), err.decode())
            return done, seen

        done, seen = run(go())
        assert seen == [None, "active", 100.0]
        assert done.returncode == 1, done.stderr
        assert "powercast: default/2(bacnet): bacnet 127.0.0.1:" in done.stderr
        assert "no answer within 0.5 s" in done.stderr
        assert "Traceback" not in done.stderr


def actuator_error(**table: Any) -> str:
    text = {"role": "controller", "actuators": [{"kind": "bacnet", **table}]}
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.parse(tomli_w.dumps(text), "c.toml")
    return str(caught.value)


@pytest.mark.unit
class TestBacnetConfig:
    @pytest.mark.parametrize(
        ("table", "expected"),
        [
            (
                {"object": "binary-output,1"},
                "c.toml: actuators[0].host: missing (this key is required)",
            ),
            (
                {"host": "crac-1.example", "object": "binary-output,1"},
                "actuators[0].host: expected the device's IPv4 address (BACnet/IP),"
                " got 'crac-1.example'",
            ),
            (
                {"host": "10.0.0.5", "object": "multi-state-output,1"},
                "actuators[0].object: expected type,instance with type one of binary-output,",
            ),
            (
                {"host": "10.0.0.5", "object": "binary-output,4194303"},
                "instance 0..4194302",
            ),
            (
                {"host": "10.0.0.5", "object": "binary-output,1", "priority": 17},
                "actuators[0].priority: expected an integer <= 16, got 17",
            ),
            (
                {"host": "10.0.0.5", "object": "binary-output,1", "priority": 6},
                "actuators[0].priority: expected 1..5 or 7..16 (6 is reserved",
            ),
            (
                {"host": "10.0.0.5", "object": "binary-output,1", "on_value": 100},
                "actuators[0].on_value: expected 0 (inactive) or 1 (active) for a binary object",
            ),
            (
                {"host": "10.0.0.5", "object": "binary-output,1", "on": "off"},
                "actuators[0].on: expected one of 'write', 'relinquish', got \"off\"",
            ),
            (
                {"host": "10.0.0.5", "object": "analog-output,1"},
                "actuators[0].on_value: expected the present value for fans on (e.g. 100.0)"
                " for analog-output,1, got none",
            ),
            (
                {"host": "10.0.0.5", "object": "binary-output,1", "local": "eth0"},
                "actuators[0].local: expected an IPv4 address and port",
            ),
            (
                {"host": "10.0.0.5", "object": "binary-output,1", "refresh_s": 0},
                "actuators[0].refresh_s: expected a number >= 0.1, got 0",
            ),
        ],
    )
    def test_bad_table_is_named(self, table: dict[str, Any], expected: str) -> None:
        """Each mistake names its key, what was expected and what was found."""
        assert expected in actuator_error(**table)

    def test_defaults(self) -> None:
        """Priority 8, write mode, 1/0, BACnet's port: a minimal table is usable."""
        config = msgspec.convert(
            {"kind": "bacnet", "host": "10.0.0.5", "object": "binary-output,1"},
            type=cfg.Actuator,
        )
        assert isinstance(config, BacnetActuator)
        assert (config.port, config.priority, config.on, config.refresh_s) == (
            47808,
            8,
            "write",
            None,
        )


@pytest.mark.unit
class TestBacnetLevels:
    def test_binary_is_off_only_at_level_0(self) -> None:
        """A binary object: inactive at 0, active at any level above."""
        config = BacnetActuator(host="10.0.0.5", object="binary-output,1")
        assert [command_value(config, level) for level in (0, 1, 50, 100)] == [0.0, 1, 1, 1]

    def test_analog_scales_towards_on(self) -> None:
        """An analog object: off_value at 0, on_value at 100, linear between (reversed
        ranges too), and each value read back is the level written."""
        for off, on in ((20.0, 100.0), (100.0, 0.0)):
            config = BacnetActuator(
                host="10.0.0.5", object="analog-output,1", on_value=on, off_value=off
            )
            assert command_value(config, 0) == off
            assert command_value(config, 100) == on
            for level in range(101):
                value = command_value(config, level)
                assert value is not None
                assert position(config, value) == level

    def test_relinquish_gives_back_only_full_speed(self) -> None:
        """on = "relinquish": NULL at 100 (and at any level above 0 for a binary object);
        an analog level between is still written."""
        binary = BacnetActuator(host="10.0.0.5", object="binary-output,1", on="relinquish")
        analog = BacnetActuator(host="10.0.0.5", object="analog-value,1", on="relinquish")
        assert [command_value(binary, level) for level in (0, 1, 100)] == [0.0, None, None]
        assert [command_value(analog, level) for level in (0, 30, 100)] == [0.0, 30.0, None]

    def test_a_value_beyond_the_range_or_between_reads_as_a_level(self) -> None:
        """A value past on_value is full speed, one before off_value off, one just above
        off_value still running (1 %), one just short of on_value not full speed (99 %)."""
        config = BacnetActuator(
            host="10.0.0.5", object="analog-output,1", on_value=100.0, off_value=20.0
        )
        assert [position(config, v) for v in (120.0, 10.0, 20.1, 99.9)] == [100, 0, 1, 99]

    def test_a_bool_is_refused(self) -> None:
        """True is not a level: the guard refuses it rather than write 1 %."""
        config = BacnetActuator(host="10.0.0.5", object="binary-output,1")
        with pytest.raises(TypeError):
            command_value(config, True)


@pytest.mark.unit
class TestBacnetHostProblems:
    def test_local_address_must_be_this_hosts(self) -> None:
        """config check: local must be an address of this host (or 0.0.0.0), by key."""
        text = (
            'role = "controller"\n[[zones]]\nname = "hall"\n[[zones.actuators]]\n'
            'kind = "bacnet"\nhost = "10.0.0.5"\nobject = "binary-output,1"\n'
            'local = "192.0.2.1:47808"\n'
        )
        assert cfg.host_problems(cfg.parse(text, "c.toml")) == [
            "zones[0].actuators[0].local: no interface on this host has this address"
            " (expected one of this host's addresses, or 0.0.0.0 or :: for all of them,"
            " got '192.0.2.1')"
        ]

    def test_default_local_is_fine(self) -> None:
        """The default, 0.0.0.0:0, with bacpypes3 installed: nothing to say."""
        text = (
            'role = "controller"\n[[actuators]]\n'
            'kind = "bacnet"\nhost = "10.0.0.5"\nobject = "binary-output,1"\n'
        )
        assert cfg.host_problems(cfg.parse(text, "c.toml")) == []

    def test_named_in_status_and_logs_by_kind(self) -> None:
        """actuator_name carries the kind, as for every other actuator."""
        config = BacnetActuator(host="10.0.0.5", object="binary-output,1")
        assert actuator_name("hall/0", config) == "hall/0(bacnet)"
