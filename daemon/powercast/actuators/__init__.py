"""What decisions move: fans switched by commands, sysfs PWM, Modbus TCP drives, BACnet/IP
objects (CRAC units, air handlers) or SNMP SET (switched PDU outlets).

Every actuator has one interface (:class:`Driver`): ``apply(level)``, ``read()`` (the
real level, or None when the device cannot tell), ``position(level)`` (the level the
device can really take) and a declared safe state, which is always full speed (100 %).
:class:`Worker` owns one actuator: it moves it to the desired level one step at a
time, each bounded by a timeout, retrying with backoff, and records what it really
knows, so a failed actuator is reported as failed with its position unknown rather
than assumed. A device with a watchdog of its own gets its level written again every
``refresh_s`` (a lease), so it falls back to fans on by itself when the controller's
host dies.

The Modbus, BACnet and SNMP drivers are imported only when such an actuator is configured
(pymodbus, bacpypes3 and pysnmp take a few hundred milliseconds to import).
"""

from __future__ import annotations

from powercast.actuators.base import Driver, DriverError, Worker
from powercast.actuators.command import CommandDriver
from powercast.actuators.hwmon import HwmonDriver
from powercast.config import (
    Actuator,
    BacnetActuator,
    CommandActuator,
    HwmonActuator,
    ModbusActuator,
    SnmpActuator,
)

__all__ = ["Driver", "DriverError", "Worker", "actuator_name", "lease", "make_driver"]


def actuator_name(key: str, config: Actuator) -> str:
    """How logs, status and errors name an actuator: ``zone/index(kind)``."""
    return f"{key}({config.__struct_config__.tag})"


def make_driver(config: Actuator, name: str) -> Driver:
    if isinstance(config, CommandActuator):
        return CommandDriver(name, config)
    if isinstance(config, HwmonActuator):
        return HwmonDriver(name, config)
    if isinstance(config, ModbusActuator):
        from powercast.actuators.modbus import ModbusDriver  # noqa: PLC0415  # import cost

        return ModbusDriver(name, config)
    if isinstance(config, BacnetActuator):
        from powercast.actuators.bacnet import BacnetDriver  # noqa: PLC0415  # import cost

        return BacnetDriver(name, config)
    if isinstance(config, SnmpActuator):
        from powercast.actuators.snmp import SnmpDriver  # noqa: PLC0415  # import cost

        return SnmpDriver(name, config)
    raise TypeError(f"unknown actuator {config!r}")


def lease(config: Actuator) -> float | None:
    """How often the worker renews the device's position (its ``refresh_s``), or None."""
    if isinstance(config, ModbusActuator | BacnetActuator | SnmpActuator):
        return config.refresh_s
    return None
