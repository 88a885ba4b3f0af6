"""A binary or analog output/value on a BACnet/IP device (CRAC/CRAH unit, air handler).

The controller writes present-value at its own slot of the object's 16-slot priority
array (WriteProperty with a priority) and reads back. "Fans on" is either our on_value at
that slot, or NULL there (``on = "relinquish"``): the command is given back and the
BMS's own lower priorities or the relinquish-default decide. Read back in that mode, an
empty slot counts as on; otherwise present-value tells, so a BMS command at a higher
priority that overrides ours shows as a read-back that disagrees.

One bacpypes3 application per actuator, on its own UDP port (``local``, a free port by
default); each request is bounded by timeout_s with no retries of its own (the worker
retries with backoff). bacpypes3 raises the device's Error, Reject and Abort as
BaseException: they are caught here and become DriverErrors naming device, object and
what the device said.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from bacpypes3.apdu import AbortPDU, ErrorPDU, ErrorRejectAbortNack
from bacpypes3.app import Application
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import Null, Real

from powercast.actuators.base import DriverError
from powercast.config import BacnetActuator, bacnet_object

VENDOR_ID: Final = 999
"""The vendor identifier our local device object presents (999: none assigned)."""


def command_value(config: BacnetActuator, on: bool) -> float | None:
    """What is written at our priority for a position: a present value, or None for
    NULL (our command given back)."""
    if on:
        return None if config.on == "relinquish" else config.fans_on_value
    return config.off_value


def position(config: BacnetActuator, value: float) -> bool:
    """A present value as a position: on_value and off_value as such, another analog
    value by the side of off_value it lies on (a fan running slower still runs)."""
    if value == config.fans_on_value:
        return True
    if value == config.off_value:
        return False
    return (value > config.off_value) == (config.fans_on_value > config.off_value)


class BacnetDriver:
    def __init__(self, name: str, config: BacnetActuator) -> None:
        self.name = name
        self._config = config
        self.timeout_s = config.timeout_s * 3
        """A write and up to two reads, each bounded by timeout_s."""
        kind, instance = bacnet_object(config.object)
        self._object = f"{kind},{instance}"
        self._binary = kind.startswith("binary")
        self._device = Address(f"{config.host}:{config.port}")
        self._where = f"bacnet {config.host}:{config.port} {self._object}"
        self._app: Application | None = None

    async def apply(self, on: bool) -> None:
        value = command_value(self._config, on)
        shown = "NULL (relinquish)" if value is None else f"{value:g}"
        what = f"write {shown} at priority {self._config.priority}"
        await self._ask(
            what,
            lambda app: app.write_property(
                self._device,
                self._object,
                "present-value",
                self._encode(value),
                priority=self._config.priority,
            ),
        )

    async def read(self) -> bool | None:
        if self._config.on == "relinquish":
            slot = await self._ask(
                f"read priority-array[{self._config.priority}]",
                lambda app: app.read_property(
                    self._device, self._object, "priority-array", self._config.priority
                ),
            )
            if getattr(slot, "null", None) is not None:
                return True  # our command is given back: the BMS decides
        value = await self._ask(
            "read present-value",
            lambda app: app.read_property(self._device, self._object, "present-value"),
        )
        try:
            number = float(int(value) if self._binary else value)
        except (TypeError, ValueError):
            raise DriverError(
                f"{self.name}: {self._where}: present-value is {str(value)[:40]!r},"
                f" not a {'binary' if self._binary else 'number'}"
            ) from None
        return position(self._config, number)

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None

    def _encode(self, value: float | None) -> Any:
        if value is None:
            return Null(())
        if self._binary:
            return "active" if value else "inactive"
        return Real(value)

    async def _ask(self, what: str, request: Any) -> Any:
        """One request, its failures in words: the device's error, or no answer."""
        app = await self._application()
        try:
            return await request(app)
        except ErrorRejectAbortNack as err:
            if isinstance(err, AbortPDU) and str(err) == "no-response":
                said = f"no answer within {self._config.timeout_s:g} s"
            elif isinstance(err, ErrorPDU):
                said = f"device said {err.errorClass}: {err.errorCode}"
            else:
                said = f"device said {type(err).__name__.removesuffix('PDU').lower()}: {err}"
            raise DriverError(f"{self.name}: {self._where}: {what}: {said}") from None
        except (OSError, ValueError, TypeError) as err:
            self.close()
            raise DriverError(f"{self.name}: {self._where}: {what}: {err}") from None

    async def _application(self) -> Application:
        """Our own BACnet application, bound to ``local``; bounded (bacpypes3 retries a
        bind that fails, e.g. to an address this host lacks, silently for ever)."""
        if self._app is not None:
            return self._app
        config = self._config
        device = DeviceObject(
            objectIdentifier=("device", config.local_device),
            objectName=f"powercast-{config.local_device}",
            vendorIdentifier=VENDOR_ID,
            apduTimeout=round(config.timeout_s * 1000),
            numberOfApduRetries=0,
        )
        port = NetworkPortObject(
            config.local, objectIdentifier=("network-port", 1), objectName="NetworkPort-1"
        )
        app = Application.from_object_list([device, port])
        try:
            async with asyncio.timeout(config.timeout_s):
                for link in app.link_layers.values():
                    await link.server._local_transport_ready.wait()
        except TimeoutError:
            app.close()
            raise DriverError(
                f"{self.name}: local: cannot bind {config.local} within {config.timeout_s:g} s"
                " (not an address of this host, or the port is taken?)"
            ) from None
        self._app = app
        return app
