"""What decisions move: fans switched by commands, sysfs PWM, or Modbus TCP drives.

Every actuator has one interface (:class:`Driver`): ``apply(on)``, ``read()`` (the real
position, or None when the device cannot tell) and a declared safe state, which is
always "fans on". :class:`Worker` owns one actuator: it moves it to the desired
position one step at a time, each bounded by a timeout, retrying with backoff, and
records what it really knows, so a failed actuator is reported as failed with its
position unknown rather than assumed.
"""

from __future__ import annotations

from powercast.actuators.base import Driver, DriverError, Worker
from powercast.actuators.command import CommandDriver
from powercast.actuators.hwmon import HwmonDriver
from powercast.config import Actuator, CommandActuator, HwmonActuator, ModbusActuator

__all__ = ["Driver", "DriverError", "Worker", "actuator_name", "make_driver"]


def actuator_name(key: str, config: Actuator) -> str:
    """How logs, status and errors name an actuator: ``zone/index(kind)``."""
    return f"{key}({config.__struct_config__.tag})"


def make_driver(config: Actuator, name: str) -> Driver:
    if isinstance(config, CommandActuator):
        return CommandDriver(name, config)
    if isinstance(config, HwmonActuator):
        return HwmonDriver(name, config)
    if isinstance(config, ModbusActuator):
        # pymodbus loads only where a Modbus drive is configured: the others start sooner.
        from powercast.actuators.modbus import ModbusDriver  # noqa: PLC0415

        return ModbusDriver(name, config)
    raise TypeError(f"unknown actuator {config!r}")
