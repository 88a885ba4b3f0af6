"""Real devices for actuator tests, each on 127.0.0.1 at a free port:

- a BACnet/IP device (bacpypes3) with commandable objects, a real 16-slot priority array;
  in the test's event loop (``bacnet_device``) or in a thread of its own
  (``BacnetDevice``) beside blocking code that drives daemons;
- an APC-like PDU: snmpsim with its ``writecache`` variation module (``PduAgent``);
- a fan unit on Modbus TCP with a BMS timeout (``BmsDevice``): no write to its control
  register for ``timeout_s`` and it sets itself to fans on.

bacpypes3 0.0.110 answers a 127.x destination on its own port itself, so a driver sends
from another free port (../shared/notes/bacnet-snmp-traps.md 1.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from bacpypes3.app import Application
from bacpypes3.local.analog import AnalogOutputObject, AnalogValueObjectCmd
from bacpypes3.local.binary import BinaryOutputObject, BinaryValueObject
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.local.oos import OutOfService
from bacpypes3.primitivedata import ObjectIdentifier
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from test_source_snmp import Agent

T = TypeVar("T")


class _LoopThread:
    """An event loop in a daemon thread: a device served beside blocking test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def serve(self, ready: Future[None]) -> None:
        """Start serving, set ``ready``, then serve until cancelled."""
        raise NotImplementedError

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.serve(self._ready))
        except asyncio.CancelledError:
            pass
        except BaseException as err:  # a device that cannot start says why, at start()
            if not self._ready.done():
                self._ready.set_exception(err)
        finally:
            self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 2.0) -> T:
        """Run ``coro`` in the device's loop; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def start(self) -> None:
        self._thread.start()
        self._ready.result(timeout=10)

    def stop(self) -> None:
        if not self._thread.is_alive():  # never started, or done already
            if not self.loop.is_closed():
                self.loop.close()
            return
        with contextlib.suppress(RuntimeError):  # closed meanwhile: it is done
            for task in self.call(_tasks(), timeout=5):
                self.loop.call_soon_threadsafe(task.cancel)
        self._thread.join(5)


async def _tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks()


# --- BACnet/IP ----------------------------------------------------------------------------


class LockedBinaryValue(OutOfService, BinaryValueObject):  # type: ignore[misc]
    """A value the BMS does not let others write: write-access-denied while in service."""


def objects() -> list[Any]:
    return [
        AnalogOutputObject(
            objectIdentifier=("analog-output", 1),
            objectName="fan-speed",
            presentValue=100.0,
            relinquishDefault=100.0,
            units="percent",
        ),
        BinaryOutputObject(  # the BMS's schedule: fans on (relinquish-default active)
            objectIdentifier=("binary-output", 1),
            objectName="crac-1-on-off",
            presentValue="active",
            relinquishDefault="active",
        ),
        AnalogValueObjectCmd(
            objectIdentifier=("analog-value", 3),
            objectName="ahu-fan-setpoint",
            presentValue=80.0,
            relinquishDefault=80.0,
            units="percent",
        ),
        LockedBinaryValue(
            objectIdentifier=("binary-value", 2),
            objectName="crac-2-locked",
            presentValue="active",
            outOfService=False,
        ),
    ]


@contextlib.asynccontextmanager
async def bacnet_device() -> AsyncIterator[tuple[Application, int]]:
    """A BACnet/IP device on 127.0.0.1, a free port; yields it and its port."""
    app = Application.from_object_list(
        [
            DeviceObject(
                objectIdentifier=("device", 1001), objectName="crac", vendorIdentifier=999
            ),
            NetworkPortObject(
                "127.0.0.1:0", objectIdentifier=("network-port", 1), objectName="NetworkPort-1"
            ),
            *objects(),
        ]
    )
    try:
        (link,) = app.link_layers.values()
        await asyncio.wait_for(link.server._local_transport_ready.wait(), 5)
        yield app, link.server.local_transport.get_extra_info("sockname")[1]
    finally:
        app.close()


def slot(app: Application, obj: str, priority: int) -> Any:
    """What the device holds at ``priority`` of ``obj`` (None for NULL)."""
    value = app.get_object_id(ObjectIdentifier(obj)).priorityArray[priority - 1]
    return None if value.null is not None else getattr(value, value._choice)


def present(app: Application, obj: str) -> Any:
    return app.get_object_id(ObjectIdentifier(obj)).presentValue


class BacnetDevice(_LoopThread):
    """``bacnet_device`` served from a thread of its own; read in its own loop."""

    def __init__(self) -> None:
        super().__init__()
        self.port = 0
        self._app: Application | None = None

    async def serve(self, ready: Future[None]) -> None:
        async with bacnet_device() as (self._app, self.port):
            ready.set_result(None)
            await asyncio.Event().wait()

    async def _read(self, obj: str, priority: int | None) -> Any:
        assert self._app is not None
        return present(self._app, obj) if priority is None else slot(self._app, obj, priority)

    def present(self, obj: str) -> Any:
        """The present value of ``obj`` now."""
        return self.call(self._read(obj, None))

    def slot(self, obj: str, priority: int) -> Any:
        """What ``obj`` holds at ``priority`` now (None for NULL)."""
        return self.call(self._read(obj, priority))


@contextlib.contextmanager
def bacnet_device_thread() -> Iterator[BacnetDevice]:
    """A BacnetDevice, always stopped."""
    device = BacnetDevice()
    try:
        device.start()
        yield device
    finally:
        device.stop()


# --- SNMP: a PDU's outlets ----------------------------------------------------------------

COMMAND = "1.3.6.1.4.1.318.1.1.12.3.3.1.1.4"
"""rPDUOutletControlOutletCommand; .n is outlet n (1 on, 2 off)."""
STATUS = "1.3.6.1.4.1.318.1.1.12.3.5.1.1.4"
"""rPDUOutletStatusOutletState: read-only here."""
OUTLETS = 8


class PduAgent(Agent):
    """snmpsim serving outlets 1-8, all on, writable (writecache keys on the OID alone)."""

    def write_pdu(self) -> None:
        rows = [f"{COMMAND}.{n}|2:writecache|value=1\n" for n in range(1, OUTLETS + 1)]
        rows += [f"{STATUS}.{n}|2|{3 if n == 8 else 1}\n" for n in range(1, OUTLETS + 1)]
        (self.dir / "data" / "public.snmprec").write_text("".join(rows))


@contextlib.contextmanager
def pdu_agent(directory: Path) -> Iterator[PduAgent]:
    """A PduAgent with its files in ``directory`` (made if need be), always stopped."""
    directory.mkdir(parents=True, exist_ok=True)
    agent = PduAgent(directory)
    agent.write_pdu()
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()


# --- Modbus TCP: a fan unit with a BMS timeout --------------------------------------------

HOLDING = 3


class BmsDevice(_LoopThread):
    """A fan unit on Modbus TCP with a BMS timeout, served from a thread of its own: no
    write to holding register ``control`` for ``timeout_s`` and it sets ``fans_on`` there
    (its watchdog starts with the first write)."""

    def __init__(self, timeout_s: float, control: int = 0, fans_on: int = 1) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.control_register = control
        self.fans_on = fans_on
        self.writes: list[float] = []
        """When (monotonic) each write to the control register came."""
        self.timeouts: list[float] = []
        """When the watchdog set fans on."""
        self.port = 0
        self._server: ModbusTcpServer | None = None

    async def _action(  # noqa: PLR0917  # pymodbus calls it so
        self, fc: int, start: int, address: int, count: int, registers: list[int], values: Any
    ) -> None:
        control = self.control_register
        if values is not None and fc in (6, 16) and address <= control < address + count:
            self.writes.append(time.monotonic())

    async def _watchdog(self) -> None:
        assert self._server is not None
        while True:
            await asyncio.sleep(0.02)
            last = self.writes[-1] if self.writes else None
            if last is None or time.monotonic() - last < self.timeout_s:
                continue
            if await self._get() != self.fans_on:
                await self._server.async_setValues(
                    1, HOLDING, self.control_register, [self.fans_on]
                )
                self.timeouts.append(time.monotonic())

    async def _get(self) -> int:
        assert self._server is not None
        values = await self._server.async_getValues(1, HOLDING, self.control_register, 1)
        return int(values[0])

    async def serve(self, ready: Future[None]) -> None:
        device = SimDevice(
            id=1,
            action=self._action,
            simdata=(
                [SimData(0, count=8, values=False, datatype=DataType.BITS)],
                [SimData(0, count=8, values=False, datatype=DataType.BITS)],
                [SimData(0, count=8, values=self.fans_on, datatype=DataType.REGISTERS)],
                [SimData(0, count=8, values=0, datatype=DataType.REGISTERS)],
            ),
        )
        self._server = ModbusTcpServer(device, address=("127.0.0.1", 0))
        await self._server.serve_forever(background=True)
        self.port = self._server.transport.sockets[0].getsockname()[1]
        watchdog = asyncio.create_task(self._watchdog())
        ready.set_result(None)
        try:
            await asyncio.Event().wait()
        finally:
            watchdog.cancel()
            await self._server.shutdown()

    def control(self) -> int:
        """The control register now."""
        return self.call(self._get())


@contextlib.contextmanager
def bms_device(timeout_s: float, **kw: int) -> Iterator[BmsDevice]:
    """A BmsDevice, always stopped."""
    device = BmsDevice(timeout_s, **kw)
    try:
        device.start()
        yield device
    finally:
        device.stop()


def wait_control(device: BmsDevice, value: int, timeout: float) -> float:
    """Seconds until the control register holds ``value``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if device.control() == value:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"control register is {device.control()}, not {value}, after {timeout} s")
