"""Actuators against the real thing: sysfs-like files, a real Modbus TCP server, real processes.

The Modbus server is pymodbus' own ModbusTcpServer, in the test's event loop on 127.0.0.1
port 0 (../shared/notes/modbus.md); each test runs its own loop with asyncio.run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from powercast.actuators import DriverError, Worker, make_driver
from powercast.actuators.command import CommandDriver
from powercast.actuators.hwmon import HwmonDriver
from powercast.actuators.modbus import ModbusDriver
from powercast.config import CommandActuator, HwmonActuator, ModbusActuator

T = TypeVar("T")
COILS, HOLDING = 1, 3
"""Modbus function codes of the server-side data blocks."""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def until(worker: Worker, done: Callable[[Worker], bool], timeout: float = 3.0) -> None:
    """Wait for the worker's next changes until ``done(worker)``."""
    changed = asyncio.Event()
    previous = worker.on_change

    def note(w: Worker) -> None:
        if previous is not None:
            previous(w)
        changed.set()

    worker.on_change = note
    try:
        async with asyncio.timeout(timeout):
            while not done(worker):
                await changed.wait()
                changed.clear()
    finally:
        worker.on_change = previous


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """The worker's task, cancelled on the way out."""
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- hwmon --------------------------------------------------------------------------------


def pwm_tree(tmp_path: Path, value: str = "128\n") -> tuple[Path, Path]:
    """A hwmon directory with pwm1 holding ``value`` and pwm1_enable at 2 (automatic)."""
    hwmon = tmp_path / "sys/class/hwmon/hwmon2"
    hwmon.mkdir(parents=True)
    (hwmon / "pwm1").write_text(value)
    (hwmon / "pwm1_enable").write_text("2\n")
    return hwmon / "pwm1", hwmon / "pwm1_enable"


def hwmon(pwm: Path, enable: Path | None = None) -> HwmonDriver:
    config = HwmonActuator(path=str(pwm), enable_path=None if enable is None else str(enable))
    return HwmonDriver("hall/0(hwmon)", config)


@pytest.mark.unit
class TestHwmonDriver:
    def test_writes_and_reads_back(self, tmp_path: Path) -> None:
        """apply writes on_value/off_value to the file; read tells on/off from it."""
        pwm, _ = pwm_tree(tmp_path)
        driver = hwmon(pwm)

        async def go() -> list[bool | None]:
            seen = []
            for on in (False, True):
                await driver.apply(on)
                seen.append(await driver.read())
            return seen

        assert run(go()) == [False, True]
        assert pwm.read_text() == "255\n"

    def test_enable_written_once_before_the_first_write(self, tmp_path: Path) -> None:
        """pwm1_enable gets enable_value (manual) before the first write, and only then."""
        pwm, enable = pwm_tree(tmp_path)
        driver = hwmon(pwm, enable)
        run(driver.apply(False))
        assert (enable.read_text(), pwm.read_text()) == ("1\n", "0\n")
        enable.write_text("2\n")  # someone else changes it: not ours to fight over
        run(driver.apply(True))
        assert (enable.read_text(), pwm.read_text()) == ("2\n", "255\n")

    def test_another_speed_counts_as_on(self, tmp_path: Path) -> None:
        """A PWM value between off and on reads as on: the fan spins."""
        pwm, _ = pwm_tree(tmp_path, "128\n")
        assert run(hwmon(pwm).read()) is True

    def test_missing_file_names_it(self, tmp_path: Path) -> None:
        """A PWM file that is not there: DriverError naming the file, for write and read."""
        pwm = tmp_path / "hwmon9/pwm1"
        driver = hwmon(pwm)
        with pytest.raises(DriverError, match=f"cannot write {pwm}: No such file"):
            run(driver.apply(True))
        with pytest.raises(DriverError, match=f"cannot read {pwm}: No such file"):
            run(driver.read())

    def test_unwritable_enable_names_it(self, tmp_path: Path) -> None:
        """An enable path that cannot be written (a directory): DriverError naming it."""
        pwm, _ = pwm_tree(tmp_path)
        enable = tmp_path / "enable-is-a-dir"
        enable.mkdir()
        with pytest.raises(DriverError, match=f"cannot write {enable}: Is a directory"):
            run(hwmon(pwm, enable).apply(True))
        assert pwm.read_text() == "128\n"  # nothing written past the failed enable

    @pytest.mark.parametrize("garbage", ["fast\n", "", "12.5\n"])
    def test_garbage_names_the_file(self, tmp_path: Path, garbage: str) -> None:
        """A PWM file that does not hold an integer: DriverError naming file and content."""
        pwm, _ = pwm_tree(tmp_path, garbage)
        with pytest.raises(DriverError, match=f"{pwm} holds {garbage.strip()!r}, not a number"):
            run(hwmon(pwm).read())

    def test_undecodable_bytes_are_a_driver_error(self, tmp_path: Path) -> None:
        """A PWM file holding bytes that are not text: DriverError, not another exception."""
        pwm, _ = pwm_tree(tmp_path)
        pwm.write_bytes(b"\xff\xfe\n")
        with pytest.raises(DriverError, match=f"{pwm}"):
            run(hwmon(pwm).read())


# -- modbus -------------------------------------------------------------------------------


def fan_device() -> SimDevice:
    """A fan drive: 16 coils, 16 discrete inputs, 32 holding and 32 input registers."""
    return SimDevice(
        id=1,
        simdata=(
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, count=32, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=32, values=0, datatype=DataType.REGISTERS)],
        ),
    )


@contextlib.asynccontextmanager
async def modbus_server(port: int = 0) -> AsyncIterator[tuple[ModbusTcpServer, int]]:
    """A real Modbus TCP server on 127.0.0.1 in this event loop, and its port."""
    server = ModbusTcpServer(fan_device(), address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    try:
        yield server, server.transport.sockets[0].getsockname()[1]
    finally:
        await server.shutdown()


def modbus(port: int, **kw: Any) -> ModbusDriver:
    config = ModbusActuator(host="127.0.0.1", port=port, timeout_s=0.25, **kw)
    driver = make_driver(config, "hall/0(modbus)")
    assert isinstance(driver, ModbusDriver)
    return driver


@contextlib.asynccontextmanager
async def closing(driver: ModbusDriver) -> AsyncIterator[ModbusDriver]:
    """The driver, its client closed on the way out (no reconnect task left behind)."""
    try:
        yield driver
    finally:
        driver._drop()


@pytest.mark.system
class TestModbusDriver:
    def test_coil_is_set_and_read_back(self) -> None:
        """A coil is written on and off; the server holds it and read() agrees."""

        async def go() -> list[tuple[list[bool], bool | None]]:
            seen = []
            async with modbus_server() as (server, port), closing(modbus(port, coil=3)) as d:
                for on in (True, False):
                    await d.apply(on)
                    seen.append((await server.async_getValues(1, COILS, 3, 1), await d.read()))
            return seen

        assert run(go()) == [([True], True), ([False], False)]

    def test_holding_register_is_set_and_read_back(self) -> None:
        """A holding register gets on_value/off_value; another speed reads as on."""

        async def go() -> list[Any]:
            seen: list[Any] = []
            config = {"register": 10, "on_value": 1500, "off_value": 0}
            async with modbus_server() as (server, port), closing(modbus(port, **config)) as d:
                for on in (True, False):
                    await d.apply(on)
                    seen.append((await server.async_getValues(1, HOLDING, 10, 1), await d.read()))
                await server.async_setValues(1, HOLDING, 10, [700])  # the drive runs slower
                seen.append(await d.read())
            return seen

        assert run(go()) == [([1500], True), ([0], False), True]

    def test_refused_write_is_an_error(self) -> None:
        """A coil outside the device's blocks: the device refuses, DriverError says so."""

        async def go() -> None:
            async with modbus_server() as (_, port), closing(modbus(port, coil=999)) as d:
                await d.apply(True)

        with pytest.raises(DriverError, match="refused the write"):
            run(go())

    def test_server_gone_is_driver_error(self) -> None:
        """With the server stopped, writes fail with a DriverError naming host and port."""

        async def go() -> tuple[int, list[str]]:
            errors = []
            async with modbus_server() as (_, port):
                driver = modbus(port, coil=3)
                await driver.apply(True)
            async with closing(driver):
                for _ in range(2):  # the old connection, then a new one that is refused
                    try:
                        await driver.apply(False)
                    except DriverError as err:
                        errors.append(str(err))
            return port, errors

        port, errors = run(go())
        assert len(errors) == 2
        assert all(f"127.0.0.1:{port}" in e for e in errors)
        assert "cannot connect" in errors[1]

    def test_worker_fails_backs_off_and_recovers(self) -> None:
        """Server down: the worker reports failed with the position unknown, retries with
        doubling waits, and sets the coil once the server is back."""

        async def go() -> tuple[list[float], Worker, list[bool]]:
            async with modbus_server() as (_, port):
                pass  # a port that was just free
            driver = modbus(port, coil=3)
            worker = Worker(driver, "hall", known=False, min_backoff_s=0.05, max_backoff_s=0.2)
            attempts: list[float] = []

            def note(w: Worker) -> None:
                if w.status == "failed":
                    attempts.append(time.monotonic())

            worker.on_change = note
            async with closing(driver), running(worker):
                worker.want(True)
                await until(worker, lambda w: w.attempts >= 4)
                assert (worker.status, worker.known) == ("failed", None)
                assert f"127.0.0.1:{port}" in worker.error
                async with modbus_server(port) as (server, _):
                    await until(worker, lambda w: w.status == "ok")
                    coil = await server.async_getValues(1, COILS, 3, 1)
            return [b - a for a, b in itertools.pairwise(attempts)], worker, coil

        gaps, worker, coil = run(go())
        assert (worker.status, worker.known, worker.attempts, coil) == ("ok", True, 0, [True])
        # Waits of 0.05, 0.1, 0.2 s (capped), each plus a refused connect of well under 50 ms.
        # Doubling from min_backoff_s; the upper bounds leave room for a busy machine.
        assert 0.05 <= gaps[0] < 0.05 + 0.5
        assert 0.1 <= gaps[1] < 0.1 + 0.5
        assert 0.2 <= gaps[2] < 0.2 + 0.5


# -- command ------------------------------------------------------------------------------


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def commands(tmp_path: Path, **kw: Any) -> CommandActuator:
    """on/off write the position to a file, verify prints it."""
    state = tmp_path / "fans"
    return CommandActuator(
        on_argv=sh(f"echo on > {state}"),
        off_argv=sh(f"echo off > {state}"),
        verify_argv=["/bin/cat", str(state)],
        **kw,
    )


@pytest.mark.system
class TestCommandDriver:
    def test_on_off_and_verify(self, tmp_path: Path) -> None:
        """on_argv/off_argv run as real processes; verify_argv reports the position."""
        driver = make_driver(commands(tmp_path, timeout_s=5.0), "hall/0(command)")

        async def go() -> list[bool | None]:
            seen = []
            for on in (False, True):
                await driver.apply(on)
                seen.append(await driver.read())
            return seen

        assert run(go()) == [False, True]
        assert (tmp_path / "fans").read_text() == "on\n"

    def test_without_verify_the_position_is_not_known_by_reading(self, tmp_path: Path) -> None:
        """Without verify_argv, read() says None: the last successful command counts."""
        config = CommandActuator(on_argv=["/bin/true"], off_argv=["/bin/true"])
        assert run(CommandDriver("c", config).read()) is None

    def test_unexpected_exit_code_fails(self, tmp_path: Path) -> None:
        """An exit code outside ok_exit_codes is a DriverError with the program and output."""
        config = CommandActuator(on_argv=sh("echo jammed; exit 3"), off_argv=["/bin/true"])
        with pytest.raises(DriverError, match=r"/bin/sh failed: jammed"):
            run(CommandDriver("c", config).apply(True))
        ok = CommandActuator(on_argv=sh("exit 3"), off_argv=["/bin/true"], ok_exit_codes=[0, 3])
        run(CommandDriver("c", ok).apply(True))

    def test_verify_saying_something_else_fails(self, tmp_path: Path) -> None:
        """A verify program that prints neither on nor off is a DriverError quoting it."""
        config = CommandActuator(
            on_argv=["/bin/true"], off_argv=["/bin/true"], verify_argv=sh("echo spinning")
        )
        with pytest.raises(DriverError, match="should print on or off, got 'spinning'"):
            run(CommandDriver("c", config).read())

    def test_hung_command_is_killed_at_its_timeout(self, tmp_path: Path) -> None:
        """A command that hangs is killed at timeout_s; the worker reports it failed."""
        pidfile = tmp_path / "pid"
        config = CommandActuator(
            on_argv=sh(f"echo $$ > {pidfile}; exec sleep 30"),
            off_argv=["/bin/true"],
            timeout_s=0.3,
        )
        worker = Worker(CommandDriver("hall/0(command)", config), "hall", known=False)

        async def go() -> float:
            async with running(worker):
                started = time.monotonic()
                worker.want(True)
                await until(worker, lambda w: w.status == "failed")
                return time.monotonic() - started

        took = run(go())
        assert 0.3 <= took < 3.0
        assert worker.known is None
        pid = int(pidfile.read_text())
        assert not Path(f"/proc/{pid}").exists()  # killed and reaped


# -- worker -------------------------------------------------------------------------------


class Spy:
    """A driver wrapper that counts what the worker asked of the real driver."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.name = driver.name
        self.timeout_s = driver.timeout_s
        self.applied: list[bool] = []
        self.reads = 0

    async def apply(self, on: bool) -> None:
        self.applied.append(on)
        await self.driver.apply(on)

    async def read(self) -> bool | None:
        self.reads += 1
        result: bool | None = await self.driver.read()
        return result


class Stuck:
    """A device that takes writes but always reads back off."""

    name = "stuck"
    timeout_s = 1.0

    async def apply(self, on: bool) -> None:
        pass

    async def read(self) -> bool | None:
        return False


@pytest.mark.unit
class TestWorker:
    def test_no_write_when_the_probed_position_is_wanted(self, tmp_path: Path) -> None:
        """A fan found on is not written when on is wanted (no toggle); off is written once."""
        pwm, _ = pwm_tree(tmp_path, "255\n")
        spy = Spy(hwmon(pwm))
        worker = Worker(spy, "hall")

        async def go() -> None:
            await worker.probe()
            assert worker.known is True
            async with running(worker):
                worker.want(True)
                await asyncio.sleep(0.05)
                assert (spy.applied, worker.status) == ([], "idle")
                worker.want(False)
                await until(worker, lambda w: w.status == "ok")

        before = pwm.stat().st_mtime_ns
        run(go())
        assert spy.applied == [False]
        assert pwm.read_text() == "0\n"
        assert pwm.stat().st_mtime_ns != before

    def test_readback_that_disagrees_is_failed(self) -> None:
        """A device that reads back another position than set: failed, with both named."""
        worker = Worker(Stuck(), "hall", min_backoff_s=10.0)

        async def go() -> None:
            async with running(worker):
                worker.want(True)
                await until(worker, lambda w: w.status == "failed")

        run(go())
        assert worker.known is False
        assert worker.error == "stuck: set on but reads back off"

    def test_dry_run_touches_nothing(self, tmp_path: Path) -> None:
        """dry_run: the wish is logged and taken as known, no file written, no command run."""
        pwm, enable = pwm_tree(tmp_path, "255\n")
        marker = tmp_path / "ran"
        cmd = CommandActuator(on_argv=sh(f"touch {marker}"), off_argv=sh(f"touch {marker}"))
        spies = [Spy(hwmon(pwm, enable)), Spy(CommandDriver("hall/1(command)", cmd))]
        workers = [Worker(spy, "hall", dry_run=True) for spy in spies]
        stamps = {p: (p.read_text(), p.stat().st_mtime_ns) for p in (pwm, enable)}

        async def go() -> None:
            async with running(workers[0]), running(workers[1]):
                for worker in workers:
                    worker.want(False)
                    await until(worker, lambda w: w.status == "dry_run")

        run(go())
        assert [(w.known, w.status) for w in workers] == [(False, "dry_run")] * 2
        assert [s.applied for s in spies] == [[], []]
        assert {p: (p.read_text(), p.stat().st_mtime_ns) for p in stamps} == stamps
        assert not marker.exists()

    def test_latest_wish_wins(self, tmp_path: Path) -> None:
        """Wishes made while a step runs are not queued: the worker ends at the last one."""
        pwm, _ = pwm_tree(tmp_path, "255\n")
        spy = Spy(hwmon(pwm))
        worker = Worker(spy, "hall", known=True)

        async def go() -> None:
            async with running(worker):
                for on in (False, True, False, True, False):
                    worker.want(on)
                await until(worker, lambda w: w.status == "ok" and w.known is False)
                await asyncio.sleep(0.02)

        run(go())
        assert spy.applied == [False]
        assert pwm.read_text() == "0\n"


class BuggyDriver:
    """A driver with a bug: every call raises something that is not a DriverError."""

    name = "z/0(buggy)"
    timeout_s = 1.0

    async def apply(self, on: bool) -> None:
        raise RuntimeError("driver bug")

    async def read(self) -> bool | None:
        raise KeyError("also a bug")


@pytest.mark.unit
class TestWorkerContainsDriverBugs:
    def test_a_driver_bug_is_a_failed_actuator_not_a_dead_daemon(self) -> None:
        """Exceptions other than DriverError mark the actuator failed; none escapes."""

        async def go() -> Worker:
            worker = Worker(BuggyDriver(), "z", min_backoff_s=0.05)
            await worker.probe()  # must not raise
            task = asyncio.create_task(worker.run())
            worker.want(True)
            await until(worker, lambda w: w.status == "failed")
            assert not task.done()  # still retrying, not crashed
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return worker

        worker = run(go())
        assert worker.known is None
        assert worker.error == "z/0(buggy): RuntimeError: driver bug"


@pytest.mark.system
class TestWriteUnderWay:
    def test_position_is_unknown_while_a_write_is_under_way(self, tmp_path: Path) -> None:
        """While "off" is being written the fans are not known to be on: a stop that waits
        for every actuator to be known on must not take the old position for the new
        (it did, and the process exited with the fans just turned off)."""
        state = tmp_path / "fans"
        state.write_text("on\n")
        config = CommandActuator(
            on_argv=["/bin/sh", "-c", f"echo on > {state}"],
            off_argv=["/bin/sh", "-c", f"sleep 0.3; echo off > {state}"],
            verify_argv=["/bin/cat", str(state)],
        )
        worker = Worker(CommandDriver("hall/0(command)", config), "hall")
        seen: list[bool | None] = []

        async def go() -> None:
            async with running(worker):
                await until(worker, lambda w: w.known is True)
                worker.want(False)
                await asyncio.sleep(0.1)
                seen.append(worker.known)  # mid-write
                await until(worker, lambda w: w.status == "ok" and w.known is False)

        run(go())
        assert seen == [None]
