"""What decisions move: fans switched by commands, sysfs PWM, or Modbus TCP drives.

Every actuator has one interface (:class:`Driver`): ``apply(level)``, ``read()`` (the
real level, or None when the device cannot tell), ``position(level)`` (the level the
device can really take) and a declared safe state, which is always full speed (100 %).
:class:`Worker` owns one actuator: it moves it to the desired level one step at a
time, each bounded by a timeout, retrying with backoff, and records what it really
knows, so a failed actuator is reported as failed with its position unknown rather
than assumed.
"""

from __future__ import annotations

from powercast.actuators.base import Driver, DriverError, Worker
from powercast.actuators.command import CommandDriver
from powercast.actuators.hwmon import HwmonDriver
from powercast.actuators.modbus import ModbusDriver
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
        return ModbusDriver(name, config)
    raise TypeError(f"unknown actuator {config!r}")
