"""What decisions move: fans switched by commands, sysfs PWM, or Modbus TCP drives.

Every actuator has one interface (:class:`Driver`): ``apply(on)``, ``read()`` (the real
position, or None when the device cannot tell) and a declared safe state, which is
always "fans on". :class:`Worker` owns one actuator: it moves it to the desired
position one step at a time, each bounded by a timeout, retrying with backoff, and
records what it really knows, so a failed actuator is reported as failed with its
position unknown rather than assumed.
"""

from __future__ import annotations

import asyncio

from powercast.actuators.base import SAFE_POSITION, Driver, DriverError, Worker
from powercast.actuators.command import CommandDriver
from powercast.actuators.hwmon import HwmonDriver
from powercast.actuators.modbus import ModbusDriver
from powercast.config import Actuator, CommandActuator, HwmonActuator, ModbusActuator, Zone

__all__ = ["Driver", "DriverError", "Worker", "make_driver", "to_safe_state"]


def make_driver(config: Actuator, name: str) -> Driver:
    if isinstance(config, CommandActuator):
        return CommandDriver(name, config)
    if isinstance(config, HwmonActuator):
        return HwmonDriver(name, config)
    if isinstance(config, ModbusActuator):
        return ModbusDriver(name, config)
    raise TypeError(f"unknown actuator {config!r}")


async def to_safe_state(zones: list[Zone]) -> list[str]:
    """Drive every actuator to its safe position (fans on); returns the failures.

    For ``powercast failsafe``, which the controller unit runs after the daemon stops or
    dies: a controller that is not running cannot react to heat, so the fans must run.
    """
    failures = []
    for zone in zones:
        for index, actuator in enumerate(zone.actuators):
            driver = make_driver(actuator, f"{zone.name}/{index}({actuator.__struct_config__.tag})")
            try:
                async with asyncio.timeout(driver.timeout_s):
                    await driver.apply(SAFE_POSITION)
                    position = await driver.read()
            except (DriverError, TimeoutError) as err:
                failures.append(
                    str(err) or f"{driver.name}: no answer within {driver.timeout_s:g} s"
                )
                continue
            if position is False:
                failures.append(f"{driver.name}: set on but reads back off")
    return failures
