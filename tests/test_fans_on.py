"""One promise, one test per way to break it: when data is stale, missing or unknown, or
when no controller runs, the fans run.

Each test drives real processes (``python -m powercast``) against real files in tmp_path:
a pwm file for a hwmon actuator, a FIFO nobody reads for a hung one, a raw TCP server on
127.0.0.1 for a buggy Modbus drive, programs that append to a file for commands. Each
fails when a fan that should run is left off, or when the fans wait on a hung device.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from shutil import which
from typing import Any

import pytest
import tomli_w
from test_failsafe import run as failsafe
from test_restart import OFF, ON, Files, make_files, wait_file

from powercast.control import call as control_call
from powercast.failsafe import READ_BOUND_S
from powercast.runtime.controller import SHUTDOWN_GRACE_S
from powercast.runtime.copies import RETRY_S, WRITE_TIMEOUT_S

from harness import Daemon, end, set_reading, write_toml

pytestmark = pytest.mark.system

APPEND = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"


def hwmon(path: Path) -> dict[str, Any]:
    return {"kind": "hwmon", "path": str(path), "on_value": 255, "off_value": 0}


def rewrite(files: Files, **changes: Any) -> dict[str, Any]:
    """The controller config of ``make_files`` with top-level keys replaced (None: removed)."""
    config = tomllib.loads(files.controller.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    write_toml(files.controller, config)
    return config


def runtime_dir(files: Files) -> Path:
    """The daemons' RUNTIME_DIRECTORY: their control sockets and the leave-fans marker
    stay in tmp_path, away from /run/powercast and other tests."""
    path = files.controller.parent / "run"
    path.mkdir(exist_ok=True)
    return path


def control(files: Files) -> Daemon:
    env = {"RUNTIME_DIRECTORY": str(runtime_dir(files))}
    return Daemon("control", "--config", str(files.controller), env=env, name="controller")


def publish(files: Files) -> Daemon:
    env = {"RUNTIME_DIRECTORY": str(runtime_dir(files))}
    return Daemon("publish", "--config", str(files.publisher), env=env, name="publisher")


@contextlib.contextmanager
def up(daemon: Daemon) -> Iterator[Daemon]:
    """A daemon that is always stopped, also when the test fails."""
    try:
        yield daemon
    finally:
        daemon.stop()


def stopped_within(daemon: Daemon, limit: float) -> float:
    """SIGTERM, and the seconds until the process exited (it must, within ``limit``)."""
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    try:
        daemon.proc.wait(limit)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        daemon.proc.wait()
        raise AssertionError(f"{daemon.name} still running {limit} s after SIGTERM") from None
    daemon._reader.join(2)
    return time.monotonic() - started


def shed(ctl: Daemon, files: Files) -> None:
    """Power fails at the publisher; the controller sheds and the pwm reads off."""
    ctl.wait_for("transition", state="normal")
    set_reading(files.reading, "on_battery")
    ctl.wait_for("transition", state="shedding")
    wait_file(files.pwm, OFF)


def busy_device(log: Path, busy: Path, *, once: bool = False) -> dict[str, Any]:
    """A command actuator appending "on" or "off" to ``log``, whose "on" fails while the
    file ``busy`` exists (``once``: the failed try removes it, so the next one works)."""
    refuse = "os.unlink(sys.argv[2]); sys.exit('busy')" if once else "sys.exit('busy')"
    on = (
        "import os, sys\n"
        f"if os.path.exists(sys.argv[2]):\n    {refuse}\n"
        "open(sys.argv[1], 'a').write('on\\n')"
    )
    return {
        "kind": "command",
        "on_argv": [sys.executable, "-c", on, str(log), str(busy)],
        "off_argv": [sys.executable, "-c", APPEND, str(log), "off"],
    }


def wait_log(log: Path, last: str, timeout: float = 5.0) -> None:
    """Until ``log``'s last line is ``last``."""
    deadline = time.monotonic() + timeout
    while not (log.exists() and log.read_text().endswith(f"{last}\n")):
        assert time.monotonic() < deadline, f"{log.name} never ended in {last!r}"
        time.sleep(0.01)


def drain(daemon: Daemon) -> list[dict[str, Any]]:
    """Every event the daemon logged (after it exited), including those already seen."""
    while not daemon.events.empty():
        daemon.seen.append(daemon.events.get())
    return daemon.seen


# --- 1, 2: a hung device ------------------------------------------------------------------


class TestHungDevice:
    def test_failsafe_sets_the_others_and_names_the_hung_one(self, tmp_path: Path) -> None:
        """A pwm that never answers (a FIFO nobody reads: open() blocks, like a stuck bus)
        costs its own timeout only: the other zone's fans run and the command ends.

        The previous design ran the actuators one after another on asyncio's shared thread
        pool, which the interpreter joins at exit: the hung write kept the command alive."""
        hung, pwm = tmp_path / "hung-pwm", tmp_path / "pwm1"
        os.mkfifo(hung)
        pwm.write_text("0\n")
        config = write_toml(
            tmp_path / "c.toml",
            {
                "role": "controller",
                "zones": [
                    {"name": "a", "actuators": [hwmon(hung)]},
                    {"name": "b", "actuators": [hwmon(pwm)]},
                ],
            },
        )
        started = time.monotonic()
        done = failsafe(config)
        took = time.monotonic() - started
        assert pwm.read_text() == "255\n"
        assert done.returncode == 1
        assert done.stderr.splitlines() == ["powercast: a/0(hwmon): no answer within 2 s"]
        assert done.stdout == "powercast failsafe: 1 of 2 actuators set to fans on\n"
        assert took < 8.0  # the driver's 2 s, not FAILSAFE_BOUND_S (30 s), not forever

    def test_controller_drives_the_others_and_stops(self, tmp_path: Path) -> None:
        """A controller whose zone a hangs on its pwm: zone b's fans go on as soon as the
        data says so, and SIGTERM ends the controller within its grace, the stuck thread
        left behind.

        The previous design probed every actuator in turn before any moved (b waited on
        a's probe, forever) and joined the thread at exit."""
        files = make_files(tmp_path, grace=5.0)
        hung = tmp_path / "hung-pwm"
        os.mkfifo(hung)
        files.pwm.write_text(f"{OFF}\n")
        rewrite(
            files,
            actuators=None,
            actions=None,
            zones=[
                {"name": "a", "actuators": [hwmon(hung)]},
                {"name": "b", "actuators": [hwmon(files.pwm)]},
            ],
        )
        ctl, pub = control(files), publish(files)
        try:
            ctl.wait_for("transition", zone="b", state="normal")
            decided = time.monotonic()
            wait_file(files.pwm, ON, timeout=1.0)
            assert time.monotonic() - decided < 1.0
            took = stopped_within(ctl, SHUTDOWN_GRACE_S + 4.0)
        finally:
            ctl.stop()
            pub.stop()
        assert ctl.proc.returncode == 0
        events = drain(ctl)
        unknown = [e for e in events if e.get("event") == "stopping_fans_unknown"]
        assert [e["actuators"] for e in unknown] == [["a/0(hwmon)"]]
        assert took < SHUTDOWN_GRACE_S + 3.0
        assert files.pwm.read_text() == f"{ON}\n"


# --- 3: a buggy Modbus drive ----------------------------------------------------------------


@pytest.fixture
def buggy_drive() -> Iterator[int]:
    """A Modbus TCP "drive" on 127.0.0.1 that answers every request with a read reply
    holding no data (byte count 0): pymodbus takes it, and ``reply.bits[0]`` raises
    IndexError in the driver. pymodbus' own server cannot be made to send this."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                function = 1 if pdu[0] in (1, 5, 15) else 3  # coils, else registers
                body = bytes([function, 0])  # byte count 0: no bits, no registers
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await done.wait()

    done = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(5.0)
        yield port[0]
    finally:
        loop.call_soon_threadsafe(done.set)
        thread.join(2.0)
        loop.close()


class TestOddModbusReply:
    def test_failsafe_names_the_drive_and_sets_the_others(
        self, tmp_path: Path, buggy_drive: int
    ) -> None:
        """A drive's malformed reply is that actuator's failure, in one line: the other
        zone's fans still go on. A driver bug that escaped (IndexError) would end the
        command with a traceback before, or instead of, setting the rest."""
        pwm = tmp_path / "pwm1"
        pwm.write_text("0\n")
        drive = {"kind": "modbus", "host": "127.0.0.1", "port": buggy_drive, "coil": 0}
        config = write_toml(
            tmp_path / "c.toml",
            {
                "role": "controller",
                "zones": [
                    {"name": "a", "actuators": [{**drive, "timeout_s": 1.0}]},
                    {"name": "b", "actuators": [hwmon(pwm)]},
                ],
            },
        )
        started = time.monotonic()
        done = failsafe(config)
        assert time.monotonic() - started < 8.0
        assert pwm.read_text() == "255\n"
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        failures = [line for line in done.stderr.splitlines() if "a/0(modbus)" in line]
        assert failures == ["powercast: a/0(modbus): IndexError: list index out of range"]
        assert done.stdout == "powercast failsafe: 1 of 2 actuators set to fans on\n"


# --- 4: fans moved by commands only ---------------------------------------------------------


class TestActionsOnly:
    def test_failsafe_runs_the_failsafe_commands(self, tmp_path: Path) -> None:
        """A config without actuators, whose ``failsafe`` state runs a command that turns
        the fans on: with no controller running, that command runs."""
        files = make_files(tmp_path, grace=1.0)
        rewrite(files, actuators=None)
        done = failsafe(files.controller)
        assert done.returncode == 0, done.stderr
        assert files.record.read_text().splitlines() == ["failsafe"]

    def test_controller_without_data_runs_them_after_the_grace(self, tmp_path: Path) -> None:
        """Started with no saved state and no publisher, the controller is in failsafe
        from the start, so no transition ever runs that state's command: settling the
        zone after the grace replays it. Before, nothing ran and fans that commands
        control stayed where the last controller left them."""
        files = make_files(tmp_path, grace=1.0)
        rewrite(files, actuators=None)
        with up(control(files)) as ctl:
            ctl.wait_for("ready")
            started = time.monotonic()
            replayed = ctl.wait_for("actions_replayed", timeout=3.0)
            took = time.monotonic() - started
            ctl.wait_for("action", state="failsafe")
        assert replayed["state"] == "failsafe"
        assert 0.5 <= took < 3.0  # startup_grace_s = 1 s
        assert files.record.read_text().splitlines() == ["failsafe"]


# --- 5: a crash in the middle of carrying out a state ---------------------------------------


class TestCrashThenRestart:
    def test_restart_replays_the_states_commands(self, tmp_path: Path) -> None:
        """Killed with SIGKILL after entering normal: nothing says its command finished
        (a crash mid-action looks the same), so the restarted controller, restored to
        normal and confirmed by the data, runs it again. Before, a restore confirmed by
        the data moved nothing."""
        files = make_files(tmp_path, grace=2.0)
        with up(publish(files)):
            first = control(files)
            try:
                first.wait_for("transition", state="normal")
                first.wait_for("action", state="normal")
                assert (files.state_dir / "controller-state.json").exists()
            finally:
                first.proc.kill()
                first.stop()
            assert files.record.read_text().splitlines() == ["normal"]
            with up(control(files)) as ctl:
                restored = ctl.wait_for("state_restored")
                assert restored["zones"] == {"default": "normal"}
                replayed = ctl.wait_for("actions_replayed", timeout=3.0)
                ctl.wait_for("action", state="normal")
        assert replayed["state"] == "normal"
        assert files.record.read_text().splitlines() == ["normal", "normal"]


# --- 6: a saved position that cannot be read back ------------------------------------------


class TestUnreadablePosition:
    def test_saved_position_is_written_again(self, tmp_path: Path) -> None:
        """A command actuator that cannot report its position (no verify_argv), saved as
        off while shedding: the restarted controller does not trust the file (someone may
        have turned the fans on since) and runs off_argv again. Before, the saved
        position was taken as known and nothing ran."""
        files = make_files(tmp_path, grace=2.0)
        switched = tmp_path / "switched.log"
        argv = [sys.executable, "-c", APPEND, str(switched)]
        rewrite(
            files,
            actions=None,
            actuators=[{"kind": "command", "on_argv": [*argv, "on"], "off_argv": [*argv, "off"]}],
        )
        wall = time.time()
        saved = {
            "version": 1,
            "saved_at": wall - 1.0,
            "zones": {
                "default": {
                    "state": "shedding",
                    "entered_at": wall - 60.0,
                    "battery_since": wall - 70.0,
                }
            },
            "actuators": {"default/0": False},
        }
        (files.state_dir / "controller-state.json").write_text(json.dumps(saved))
        set_reading(files.reading, "on_battery")
        with up(publish(files)) as pub:
            pub.wait_for("ready")
            time.sleep(0.5)  # its first datagrams, before the source was read, said unknown
            ctl = control(files)
            try:
                restored = ctl.wait_for("state_restored")
                assert restored["zones"] == {"default": "shedding"}
                ctl.wait_for("actuator_set", position="off", timeout=3.0)
                assert switched.read_text().splitlines() == ["off"]  # written, not believed
            finally:
                ctl.stop()
        events = [e.get("event") for e in drain(ctl)]
        assert "transition" not in events  # the restored shed was confirmed, not re-entered
        assert switched.read_text().splitlines() == ["off", "on"]  # and on at the stop


# --- 7: a typo saved after the controller died ----------------------------------------------


def died_shed(tmp_path: Path) -> Files:
    """A controller that shed its fans, killed (SIGKILL)."""
    files = make_files(tmp_path, grace=2.0)
    with up(publish(files)):
        ctl = control(files)
        try:
            shed(ctl, files)
        finally:
            ctl.proc.kill()
            ctl.stop()
    assert files.pwm.read_text() == f"{OFF}\n"
    return files


def died_shed_with_a_typo(tmp_path: Path) -> Files:
    """A controller that shed its fans, killed; then a typo saved in its config."""
    files = died_shed(tmp_path)
    files.controller.write_text(files.controller.read_text() + "\n[policy\ntypo = 1\n")
    return files


class TestRunningConfig:
    def test_failsafe_uses_the_config_the_controller_ran(self, tmp_path: Path) -> None:
        """A controller that shed its fans dies (SIGKILL); meanwhile its config file got a
        typo. ``powercast failsafe`` still knows the actuator from the copy the controller
        kept of its running config, and turns the fans on. Before, it read only the file
        on disk: a config error, nothing moved."""
        files = died_shed_with_a_typo(tmp_path)
        done = failsafe(files.controller, "--after-failure", state_dir=files.state_dir)
        assert files.pwm.read_text() == f"{ON}\n"
        assert done.returncode == 0, done.stderr
        assert "using the config the controller last ran" in done.stderr
        assert done.stdout == "powercast failsafe: 1 of 1 actuators set to fans on\n"


# --- 8: a reload that adds a hung device ----------------------------------------------------


class TestReloadAddsHungZone:
    def test_other_zone_reacts_while_the_new_one_probes(self, tmp_path: Path) -> None:
        """Zone a sheds; a reload adds zone b, whose actuator takes 5 s to report its
        position. Heat in zone a turns its fans on at once, not after b's probe. Before,
        a reload stopped every worker and probed the actuators one after another before
        any was driven again."""
        files = make_files(tmp_path, grace=2.0)
        zone_a = {"name": "a", "actuators": [hwmon(files.pwm)]}
        rewrite(files, actuators=None, actions=None, zones=[zone_a])
        flag = tmp_path / "probed-once"
        slow = (
            "import os, sys, time\n"
            "if not os.path.exists(sys.argv[1]):\n"
            "    open(sys.argv[1], 'w').close(); time.sleep(5)\n"
            "print('on')"
        )
        zone_b = {
            "name": "b",
            "actuators": [
                {
                    "kind": "command",
                    "on_argv": ["true"],
                    "off_argv": ["true"],
                    "verify_argv": [sys.executable, "-c", slow, str(flag)],
                }
            ],
        }
        with up(publish(files)):
            ctl = control(files)
            try:
                ctl.wait_for("transition", zone="a", state="normal")
                set_reading(files.reading, "on_battery")
                ctl.wait_for("transition", zone="a", state="shedding")
                wait_file(files.pwm, OFF)
                rewrite(files, zones=[zone_a, zone_b])
                ctl.signal(signal.SIGHUP)
                ctl.wait_for("reloaded")
                deadline = time.monotonic() + 2.0
                while not flag.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert flag.exists()  # b's probe has begun and hangs for 5 s
                hot = time.monotonic()
                set_reading(files.reading, "on_battery", inlet=50.0)
                wait_file(files.pwm, ON, timeout=1.5)
                took = time.monotonic() - hot
            finally:
                ctl.stop(timeout=8.0)
        assert took < 1.0
        override = [e for e in drain(ctl) if e.get("state") == "thermal_override"]
        assert "a" in {e["zone"] for e in override}


class TestReloadDropsAnActuator:
    def test_a_dropped_actuator_is_driven_on_until_it_gets_there(self, tmp_path: Path) -> None:
        """Zone a sheds with two actuators; a reload drops the second. Its first try to go
        back on fails (the device is busy); it is tried again until it is on. Before, one
        failed try left a shed fan off with nothing to move it again."""
        files = make_files(tmp_path, grace=2.0)
        log = tmp_path / "dropped.log"
        busy = tmp_path / "busy"
        dropped = busy_device(log, busy, once=True)
        rewrite(files, actions=None, actuators=[hwmon(files.pwm), dropped])
        with up(publish(files)):
            ctl = control(files)
            try:
                ctl.wait_for("transition", state="normal")
                set_reading(files.reading, "on_battery")
                ctl.wait_for("transition", state="shedding")
                wait_log(log, "off", timeout=3.0)
                busy.touch()
                rewrite(files, actuators=[hwmon(files.pwm)])
                ctl.signal(signal.SIGHUP)
                ctl.wait_for("reloaded")
                ctl.wait_for("actuator_failed", timeout=3.0)  # busy, the first time
                ctl.wait_for("actuator_released", timeout=5.0)
                assert log.read_text().endswith("off\non\n")
                assert not busy.exists()  # it was tried, refused, and tried again
                assert files.pwm.read_text() == f"{OFF}\n"  # the one kept stays shed
            finally:
                ctl.stop()


class TestReloadDropsThenCrash:
    """A reload drops a shed actuator whose device refuses to go back on; the controller
    dies (SIGKILL) before it gets there. Before, nothing named that actuator any more: the
    running config's copy was already the new config, so neither ``powercast failsafe``
    nor the next controller moved it, and its fans stayed off."""

    def _dropped_while_busy(
        self, tmp_path: Path, *, released_blocked: bool = False
    ) -> tuple[Files, Path, Path]:
        """Zone sheds with a pwm and a command actuator; the command's device turns busy
        (its on command fails while a file exists), a reload drops it, and the controller
        is killed after the first failed try to turn it on. ``released_blocked``: the
        released copy cannot be written (a directory is in its place)."""
        files = make_files(tmp_path, grace=2.0)
        log = tmp_path / "dropped.log"
        busy = tmp_path / "busy"
        dropped = busy_device(log, busy)
        rewrite(files, actions=None, actuators=[hwmon(files.pwm), dropped])
        with up(publish(files)):
            ctl = control(files)
            try:
                shed(ctl, files)
                wait_log(log, "off", timeout=3.0)
                busy.touch()
                if released_blocked:
                    (files.state_dir / "controller.released.toml").mkdir()
                rewrite(files, actuators=[hwmon(files.pwm)])
                ctl.signal(signal.SIGHUP)
                ctl.wait_for("reloaded")
                kept = "failsafe_copy_failed" if released_blocked else "released_kept"
                ctl.wait_all("actuator_failed", kept, timeout=3.0)
            finally:
                ctl.proc.kill()
                ctl.stop()
        assert log.read_text().endswith("off\n")  # left off, with no controller
        busy.unlink()
        return files, log, busy

    def test_failsafe_turns_the_dropped_actuator_on(self, tmp_path: Path) -> None:
        files, log, _ = self._dropped_while_busy(tmp_path)
        done = failsafe(files.controller, "--after-failure", state_dir=files.state_dir)
        assert done.returncode == 0, done.stderr
        assert log.read_text().endswith("off\non\n")
        assert files.pwm.read_text() == f"{ON}\n"
        assert done.stdout == "powercast failsafe: 2 of 2 actuators set to fans on\n"

    def test_a_released_copy_not_written_keeps_the_old_running_copy(self, tmp_path: Path) -> None:
        """The released copy cannot be written: the running copy is then not rewritten
        either, and the old one, which still names the dropped actuator, is what
        ``powercast failsafe`` reads. Before, the new running copy was written anyway and
        nothing named the actuator."""
        files, log, busy = self._dropped_while_busy(tmp_path, released_blocked=True)
        assert str(busy) in (files.state_dir / "controller.running.toml").read_text()
        done = failsafe(files.controller, "--after-failure", state_dir=files.state_dir)
        assert done.returncode == 0, done.stderr
        assert log.read_text().endswith("off\non\n")

    def test_the_next_controller_turns_it_on(self, tmp_path: Path) -> None:
        files, log, _ = self._dropped_while_busy(tmp_path)
        released = files.state_dir / "controller.released.toml"
        assert released.exists()
        with up(publish(files)), up(control(files)) as ctl:
            ctl.wait_for("released_actuators_resumed")
            ctl.wait_for("actuator_released", timeout=5.0)
            assert log.read_text().endswith("off\non\n")
            deadline = time.monotonic() + 2.0
            while released.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not released.exists()  # nothing is left to a failsafe


class TestReloadTwice:
    def test_an_actuator_released_twice_over_is_still_named(self, tmp_path: Path) -> None:
        """Zone sheds with a pwm and a command actuator A, whose device then turns busy; a
        reload replaces A by B (same place in the config, same kind), and a second reload
        replaces B by C before A got back on. B goes on; the controller dies; ``powercast
        failsafe`` still turns A on. Before, the second release took the first one's
        name: A left the released copy (B going on emptied it) and its fans stayed off
        with no controller."""
        files = make_files(tmp_path, grace=2.0)
        logs = {name: tmp_path / f"{name}.log" for name in "abc"}

        def command(name: str) -> dict[str, Any]:
            return busy_device(logs[name], tmp_path / f"{name}.busy")

        def went(name: str, what: str) -> None:
            wait_log(logs[name], what)

        rewrite(files, actions=None, actuators=[hwmon(files.pwm), command("a")])
        with up(publish(files)):
            ctl = control(files)
            try:
                shed(ctl, files)
                went("a", "off")
                (tmp_path / "a.busy").touch()
                rewrite(files, actuators=[hwmon(files.pwm), command("b")])
                ctl.signal(signal.SIGHUP)
                ctl.wait_for("reloaded")
                ctl.wait_all("actuator_failed", "released_kept", timeout=3.0)  # A, busy
                went("b", "off")
                rewrite(files, actuators=[hwmon(files.pwm), command("c")])
                ctl.signal(signal.SIGHUP)
                ctl.wait_for("reloaded")
                went("b", "on")
                ctl.wait_for("actuator_released", timeout=3.0)  # B
                ctl.wait_for("released_kept", actuators=1)  # its copy rewritten: A alone
            finally:
                ctl.proc.kill()
                ctl.stop()
        assert logs["a"].read_text().endswith("off\n")  # left off, with no controller
        (tmp_path / "a.busy").unlink()
        done = failsafe(files.controller, "--after-failure", state_dir=files.state_dir)
        assert done.returncode == 0, done.stderr
        assert logs["a"].read_text().endswith("off\non\n")


class TestReleasedUnreadable:
    def test_an_unreadable_released_copy_is_said_and_kept(self, tmp_path: Path) -> None:
        """The copy of released actuators cannot be read (damaged, or written by another
        version): a starting controller logs an error naming it, and keeps it aside, where
        no later release overwrites it. Before, the controller said nothing and removed
        it: the actuators it named, possibly off, were left to no one."""
        files = make_files(tmp_path, grace=2.0)
        released = files.state_dir / "controller.released.toml"
        damaged = '[[zones]]\nname = "default"\n[[zones.actuators]\n'
        released.write_text(damaged)
        with up(control(files)) as ctl:
            event = ctl.wait_for("released_unreadable")
            ctl.wait_for("listening")
        assert str(released) in event["error"]
        assert Path(event["kept"]) == released.with_name("controller.released.toml.unreadable")
        assert Path(event["kept"]).read_text() == damaged


class TestReleasedElsewhere:
    def test_failsafe_reads_the_copy_where_the_controller_keeps_it(self, tmp_path: Path) -> None:
        """persist.state_dir names the controller's state directory, and the unit's
        StateDirectory= holds an older copy of released actuators (kept before the setting
        was made). ``powercast failsafe`` turns on the actuator named in the copy the
        controller keeps, and the older copy's too (on is safe). Before, it read the
        unit's directory first and stopped there: the actuator just released stayed off."""
        files = make_files(tmp_path, grace=2.0)
        logs = {name: tmp_path / f"{name}.log" for name in ("current", "older")}

        def released(name: str) -> str:
            argv = [sys.executable, "-c", APPEND, str(logs[name])]
            return tomli_w.dumps(
                {
                    "zones": [
                        {
                            "name": "default",
                            "actuators": [
                                {"kind": "command", "on_argv": [*argv, "on"], "off_argv": argv}
                            ],
                        }
                    ]
                }
            )

        unit_state = tmp_path / "unit-state"
        unit_state.mkdir()
        (unit_state / "controller.released.toml").write_text(released("older"))
        (files.state_dir / "controller.released.toml").write_text(released("current"))
        done = failsafe(files.controller, "--after-failure", state_dir=unit_state)
        assert done.returncode == 0, done.stderr
        assert logs["current"].read_text() == "on\n"
        assert logs["older"].read_text() == "on\n"


# --- 9: a clean stop while the fans are shed ------------------------------------------------


class TestCleanStop:
    @pytest.mark.parametrize("leave", [False, True], ids=["fans-on", "marker-leaves-fans"])
    def test_stop_during_shedding(self, tmp_path: Path, leave: bool) -> None:
        """SIGTERM while shedding: no controller will react to heat, so the fans go on
        before the process exits. The operator's marker in the runtime directory, made
        after the start (which removes a stale one), leaves them off for this stop."""
        files = make_files(tmp_path, grace=2.0)
        runtime = runtime_dir(files)
        with up(publish(files)):
            ctl = control(files)
            try:
                shed(ctl, files)
                if leave:
                    (runtime / "controller.leave-fans").write_text("filter change\n")
                took = stopped_within(ctl, 5.0)
            finally:
                ctl.stop()
        events = [e.get("event") for e in drain(ctl)]
        assert ctl.proc.returncode == 0
        assert took < 3.0
        if leave:
            assert "stopping_fans_left" in events
            assert "stopping_fans_on" not in events
            assert files.pwm.read_text() == f"{OFF}\n"
        else:
            assert "stopping_fans_on" in events
            assert files.pwm.read_text() == f"{ON}\n"


class TestCopyDoesNotAnswer:
    def test_failsafe_skips_a_copy_that_does_not_answer(self, tmp_path: Path) -> None:
        """The controller died with its fans shed, and its running config's copy does not
        answer a read (a FIFO in its place here; a state directory on a dead NFS server
        does the same). ``powercast failsafe`` gives it a bounded wait, says so, and turns
        the fans on from the config on disk. Before, it waited on that read for ever, with
        the fans off."""
        files = died_shed(tmp_path)
        running = files.state_dir / "controller.running.toml"
        running.unlink()
        os.mkfifo(running)
        started = time.monotonic()
        done = failsafe(files.controller, "--after-failure", state_dir=files.state_dir)
        assert files.pwm.read_text() == f"{ON}\n"
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < READ_BOUND_S + 5.0
        assert f"{running}: no answer within {READ_BOUND_S:g} s" in done.stderr


class TestStateNotWritable:
    def test_a_state_file_that_cannot_be_written_moves_nothing_else(self, tmp_path: Path) -> None:
        """The state directory is not a directory: one state_not_saved line, and the
        controller still sheds and restores (the writes happen off the loop, bounded)."""
        files = make_files(tmp_path, grace=2.0)
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        rewrite(files, persist={"state_dir": str(blocker)})
        with up(publish(files)):
            ctl = control(files)
            try:
                shed(ctl, files)
                set_reading(files.reading, "online")
                ctl.wait_for("transition", state="normal", timeout=5.0)
                wait_file(files.pwm, ON)
            finally:
                ctl.stop()
        failed = [e for e in drain(ctl) if e.get("event") == "state_not_saved"]
        assert len(failed) == 1, failed
        assert str(blocker) in failed[0]["directory"]


# --- 11: a state directory on a disk that hangs ---------------------------------------------


@contextlib.contextmanager
def hanging_disk(where: Path) -> Iterator[Callable[[bool], None]]:
    """An ext4 filesystem on a loop device, mounted at ``where``. The callable freezes it
    (True: every write into it then waits, as on a disk that hangs; reads still work) or
    thaws it (False). Thawed, unmounted and its loop device freed when done, also when the
    test fails: a process left waiting on it ends only once it thaws."""
    if os.geteuid() != 0:
        require_disk("needs root to mount a loop device and freeze it")
    tools = [name for name in ("mkfs.ext4", "mount", "umount", "fsfreeze") if not which(name)]
    if tools:
        require_disk(f"needs {', '.join(tools)} (e2fsprogs, util-linux)")
    image = where.with_name(f"{where.name}.img")
    with image.open("wb") as f:
        f.truncate(32 << 20)
    where.mkdir()
    made = subprocess.run(
        ["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        require_disk(f"mkfs.ext4 failed: {made.stderr.strip()}")
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        require_disk(f"cannot mount a loop device here: {mounted.stderr.strip()}")

    def freeze(frozen: bool) -> None:
        subprocess.run(["fsfreeze", "-f" if frozen else "-u", str(where)], check=True)

    try:
        yield freeze
    finally:
        subprocess.run(["fsfreeze", "-u", str(where)], capture_output=True, check=False)
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
        image.unlink()


def require_disk(reason: str) -> None:
    """Skip with ``reason``; under POWERCAST_DISK_TESTS=require, fail instead."""
    if os.environ.get("POWERCAST_DISK_TESTS") == "require":
        pytest.fail(f"{reason}, and POWERCAST_DISK_TESTS=require")
    pytest.skip(reason)


class TestStateDiskHangs:
    def test_a_disk_that_hangs_delays_no_fan(self, tmp_path: Path) -> None:
        """The state directory's disk hangs (a frozen filesystem: writes wait, as on a dead
        NFS server) while the fans are shed; a reload writes the running config's copy there,
        and then power returns. The fans go back on, and the copy that could not be written
        is said; once the disk is back, the copy is written. Before, the copy was written in
        the event loop: the reload hung the controller, and the fans stayed off."""
        files = make_files(tmp_path, grace=2.0)
        disk = tmp_path / "disk"
        with hanging_disk(disk) as freeze:
            rewrite(files, persist={"state_dir": str(disk)})
            with up(publish(files)), up(control(files)) as ctl:
                shed(ctl, files)
                freeze(True)
                try:
                    config = rewrite(files, policy={"shed_after_s": 0.3, "restore_after_s": 0.2})
                    ctl.signal(signal.SIGHUP)
                    ctl.wait_for("reloaded")
                    set_reading(files.reading, "online")
                    ctl.wait_for("transition", state="normal", timeout=3.0)
                    wait_file(files.pwm, ON)
                    failed = ctl.wait_for("failsafe_copy_failed", timeout=WRITE_TIMEOUT_S + 3)
                    assert failed["file"] == str(disk / "controller.running.toml")
                finally:
                    freeze(False)
                ctl.wait_for("failsafe_copy_kept", timeout=RETRY_S + 3)
                running = tomllib.loads((disk / "controller.running.toml").read_text())
                assert running["policy"]["restore_after_s"] == config["policy"]["restore_after_s"]


# --- 12: a log stream that stops reading (journald hung) ------------------------------------


class LogSocket:
    """A daemon's stderr as the journal gives it under systemd: a stream socket. The test
    reads it (the lines, as JSON) until :meth:`stall`, which stops reading and fills the
    socket, as a journald that hangs leaves it; :meth:`resume` reads on."""

    def __init__(self) -> None:
        self.theirs, self.ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lines: list[dict[str, Any]] = []
        self.text: list[str] = []
        self._reading = threading.Event()
        self._reading.set()
        self._paused = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self.ours.settimeout(0.02)
        buffer = b""
        while not self._done:
            if not self._reading.is_set():
                self._paused.set()
                self._reading.wait()
            try:
                chunk = self.ours.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            buffer += chunk
            *whole, buffer = buffer.split(b"\n")
            for line in whole:
                self.text.append(line.decode(errors="replace"))
                with contextlib.suppress(ValueError):
                    self.lines.append(json.loads(line))

    def events(self) -> list[str]:
        return [line.get("event", "") for line in self.lines]

    def stall(self) -> None:
        self._paused.clear()
        self._reading.clear()
        assert self._paused.wait(2.0)
        self.theirs.setblocking(False)
        filler = b"#" * 4095 + b"\n"
        with contextlib.suppress(BlockingIOError):
            while True:
                self.theirs.send(filler)
        self.theirs.setblocking(True)

    def resume(self) -> None:
        self._reading.set()

    def close(self) -> None:
        self._done = True
        self._reading.set()
        self._thread.join(2.0)
        self.theirs.close()
        self.ours.close()


Stalled = tuple[Files, "LogSocket", "subprocess.Popen[bytes]"]


@contextlib.contextmanager
def shed_on_a_stalled_log(tmp_path: Path) -> Iterator[Stalled]:
    """A publisher, and a controller whose stderr is ``LogSocket``; the fans shed, then the
    log stream stalls. The controller is stopped at the end if it still runs, the stream
    closed."""
    files = make_files(tmp_path, grace=2.0)
    stream = LogSocket()
    env = {**os.environ, "RUNTIME_DIRECTORY": str(runtime_dir(files))}
    argv = [sys.executable, "-m", "powercast", "control", "--config", str(files.controller)]
    try:
        with up(publish(files)):
            proc = subprocess.Popen(
                argv, stderr=stream.theirs.fileno(), stdout=subprocess.DEVNULL, env=env
            )
            try:
                wait_until(lambda: "ready" in stream.events())
                set_reading(files.reading, "on_battery")
                wait_file(files.pwm, OFF)
                stream.stall()
                yield files, stream, proc
            finally:
                stream.resume()
                end(proc, 10.0)
    finally:
        stream.close()


def back_to_normal(stream: LogSocket) -> bool:
    return any(e.get("event") == "transition" and e.get("state") == "normal" for e in stream.lines)


class TestLogStreamStalls:
    def test_a_log_stream_that_stops_reading_delays_no_fan(self, tmp_path: Path) -> None:
        """The fans are shed; then the log stream stops reading (journald hung: its socket
        full). Power returns: the fans go on, and the lines the stream could not take then
        reach it once it reads again. Before, the next log line blocked the whole
        controller: the fans stayed off until the watchdog killed it. (Past a bound, lines
        are dropped and counted: tests/test_logs.py.)"""
        with shed_on_a_stalled_log(tmp_path) as (files, stream, proc):
            set_reading(files.reading, "online")
            wait_file(files.pwm, ON)
            stream.resume()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10.0) == 0
            wait_until(lambda: "stopping_fans_on" in stream.events())
        assert back_to_normal(stream)  # logged while stalled, not lost

    def test_lines_held_while_it_stalled_arrive_without_another_line(self, tmp_path: Path) -> None:
        """The log stream stops reading while the fans are shed; power returns and the
        fans go on; the stream reads again and the controller has nothing more to say. The
        lines it could not take (the transition to normal) still reach it, at once. Before,
        they waited for the daemon's next line, which a quiet controller may not log for
        hours."""
        with shed_on_a_stalled_log(tmp_path) as (files, stream, proc):
            set_reading(files.reading, "online")
            wait_file(files.pwm, ON)
            time.sleep(0.5)  # what it logs about that, it logs into the full socket
            stream.resume()
            wait_until(lambda: back_to_normal(stream))
            assert proc.poll() is None  # no stop was needed to get them out

    def test_lines_dropped_are_counted_in_status_and_said_once_it_reads(
        self, tmp_path: Path
    ) -> None:
        """The log stream stalls and the controller logs past the 256 KiB it holds (an
        operator's overrides, each one line): the lines past it are dropped, the count is
        in its status, and once the stream reads again one ``log_lines_dropped`` line says
        the same count. The fans went on meanwhile."""
        with shed_on_a_stalled_log(tmp_path) as (files, stream, proc):
            sock = runtime_dir(files) / "controller.sock"
            order = {"request": "override", "fans": "on", "for_s": 600, "reason": "r" * 200}
            for _ in range(1000):  # about 400 bytes a line: 256 KiB is some 650 lines
                assert control_call(sock, order)["ok"]
            wait_file(files.pwm, ON)
            dropped = control_call(sock, {"request": "status"})["status"]["log_lines_dropped"]
            assert dropped > 0
            stream.resume()
            wait_until(lambda: "log_lines_dropped" in stream.events())
            said = next(e for e in stream.lines if e.get("event") == "log_lines_dropped")
            assert said["lines"] == dropped
            assert said["level"] == "warning"
            overrides = [e for e in stream.lines if e.get("event") == "override"]
            assert len(overrides) + dropped >= 1000
            after = control_call(sock, {"request": "status"})["status"]["log_lines_dropped"]
            assert after == dropped  # none more since it reads
            assert proc.poll() is None

    def test_lines_held_at_a_stop_are_not_lost(self, tmp_path: Path) -> None:
        """The log stream is full (journald busy for a moment) when the controller stops:
        its last lines (the fans back on) wait in its buffer, and reach the stream when it
        reads again within a bound, before the process ends. Before, they were lost with
        the process: an operator could not tell whether the fans went on at the stop."""
        with shed_on_a_stalled_log(tmp_path) as (files, stream, proc):
            proc.send_signal(signal.SIGTERM)
            wait_file(files.pwm, ON)
            time.sleep(0.2)  # its last lines are said into the full socket
            stream.resume()
            assert proc.wait(10.0) == 0
            wait_until(lambda: "stopping_fans_on" in stream.events(), timeout=2.0)


class TestLogLineNotUtf8:
    def test_a_value_that_is_not_utf8_is_logged_not_raised(self, tmp_path: Path) -> None:
        """A controller whose config path has a byte that is not UTF-8 (the file name as the
        file system gives it) logs to a socket (the journal's stream) in logfmt: the line
        names it with a backslash escape, as stderr always did, and the controller runs.
        Before, encoding the line raised from inside the log call: the controller died
        at its ``ready`` line."""
        files = make_files(tmp_path, grace=2.0)
        rewrite(files, log={"format": "logfmt", "level": "info"})
        odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/controller-\xff.toml"))
        odd.write_bytes(files.controller.read_bytes())
        stream = LogSocket()
        env = {**os.environ, "RUNTIME_DIRECTORY": str(runtime_dir(files))}
        proc = subprocess.Popen(
            [sys.executable, "-m", "powercast", "control", "--config", str(odd)],
            stderr=stream.theirs.fileno(),
            stdout=subprocess.DEVNULL,
            env=env,
        )
        try:

            def ready() -> list[str]:
                return [line for line in stream.text if " event=ready " in line]

            wait_until(lambda: bool(ready()) or proc.poll() is not None, timeout=10.0)
            time.sleep(0.3)  # an error after it would end the process by now
            assert proc.poll() is None, stream.text
            assert not any("internal error" in line for line in stream.text), stream.text
            assert "controller-\\udcff.toml" in ready()[0]
        finally:
            end(proc, 10.0)
            stream.close()


class TestDaemonErrorOnAStalledLog:
    def test_a_daemon_that_ends_on_an_error_ends_when_the_journal_does_not_read(
        self, tmp_path: Path
    ) -> None:
        """A controller ends on an error (here its config, which it cannot run) while the
        journal does not read its stream: it says why without waiting on it, and ends.
        Before, the line waited on the journal: the process lived on, and systemd ran the
        failsafe after it only when its watchdog killed it, or never without one."""
        config = tmp_path / "controller.toml"
        config.write_text("[policy\ntypo = 1\n")
        argv = [sys.executable, "-m", "powercast", "control", "--config", str(config)]
        with on_a_stalled_log(argv) as (_, proc):
            assert proc.wait(10.0) == 78


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@contextlib.contextmanager
def on_a_stalled_log(
    argv: list[str], env: dict[str, str] | None = None
) -> Iterator[tuple[LogSocket, subprocess.Popen[bytes]]]:
    """``argv`` run with its stdout and stderr on a journal stream that does not read;
    killed at the end if it still runs, the stream closed."""
    stream = LogSocket()
    try:
        stream.stall()
        out = stream.theirs.fileno()
        proc = subprocess.Popen(argv, stdout=out, stderr=out, env=env)
        try:
            yield stream, proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        stream.close()


@contextlib.contextmanager
def failsafe_on_a_stalled_log(tmp_path: Path) -> Iterator[Stalled]:
    """A controller died with its fans shed (and a typo in its config); ``powercast
    failsafe --after-failure`` runs on a journal stream that does not read."""
    files = died_shed_with_a_typo(tmp_path)
    env = {**os.environ, "STATE_DIRECTORY": str(files.state_dir)}
    env["RUNTIME_DIRECTORY"] = str(runtime_dir(files))
    argv = [sys.executable, "-m", "powercast", "failsafe", "--config", str(files.controller)]
    with on_a_stalled_log([*argv, "--after-failure"], env) as (stream, proc):
        yield files, stream, proc


class TestFailsafeLogStalls:
    def test_failsafe_moves_the_fans_before_it_writes(self, tmp_path: Path) -> None:
        """The controller died with its fans shed, its config file has a typo, and the
        journal does not read (its stream socket full): ``powercast failsafe`` turns the
        fans on first, and its report (the note that it used the running copy among it)
        reaches the journal once it reads again. Before, the note was written first, and
        the failsafe waited on the journal with the fans off."""
        with failsafe_on_a_stalled_log(tmp_path) as (files, stream, proc):
            wait_file(files.pwm, ON, timeout=10.0)
            stream.resume()
            assert proc.wait(10.0) == 0
            wait_until(lambda: any("actuators set to fans on" in line for line in stream.text))
        assert any("using the config the controller last ran" in line for line in stream.text)

    def test_failsafe_ends_when_the_journal_never_reads_its_report(self, tmp_path: Path) -> None:
        """The controller died with its fans shed and the journal does not read at all:
        ``powercast failsafe`` turns the fans on, gives its report a bounded wait, and
        ends. Before, it waited on the journal with the report until systemd killed it
        at the stop's timeout (30 s): the controller's restart waited that long too."""
        with failsafe_on_a_stalled_log(tmp_path) as (files, _, proc):
            wait_file(files.pwm, ON, timeout=10.0)
            assert proc.wait(10.0) == 0


COLLECTED_WHILE_LOGGING = """
import asyncio, gc, sys
import structlog
from powercast import logs

logs.configure(level="info", fmt="json")
log = structlog.get_logger("powercast")
loop = asyncio.new_event_loop()
left = [300]

class Lost:
    '''A future that failed, its exception never retrieved, in a cycle: only the cycle
    collector frees it, and asyncio then logs "Future exception was never retrieved".'''

    def __init__(self):
        self.future = loop.create_future()
        self.future.set_exception(RuntimeError("lost"))
        self.cycle = self

    def __del__(self):
        left[0] -= 1
        if left[0] > 0:
            Lost()  # the next, for the collector's next run

Lost()
gc.set_threshold(1, 1, 1)  # the collector runs at nearly every allocation, in a write too
for n in range(200):
    log.info("tick", n=n)
gc.set_threshold(700, 10, 10)
print("done", flush=True)
logs.drain(10.0)  # as a daemon at its exit
"""


class TestLogWrittenFromInsideItself:
    def test_a_collection_that_logs_in_the_middle_of_a_line_hangs_nothing(self) -> None:
        """The log stream is full (journald busy) and the cycle collector runs while a line
        is written: it frees a future whose exception nobody retrieved, and asyncio logs
        that, into the same stream, from inside the write. The daemon goes on, and both
        lines reach the stream once it reads. Before, the write waited on its own lock for
        ever: the whole daemon hung (fans, SIGTERM, the watchdog's ping)."""
        stream = LogSocket()
        try:
            stream.stall()
            proc = subprocess.Popen(
                [sys.executable, "-c", COLLECTED_WHILE_LOGGING],
                stderr=stream.theirs.fileno(),
                stdout=subprocess.PIPE,
            )
            try:
                assert proc.stdout is not None
                ready, _, _ = select.select([proc.stdout], [], [], 20.0)
                assert ready, "the process hung in its log write"
                assert proc.stdout.readline() == b"done\n"
                stream.resume()
                assert proc.wait(15.0) == 0
            finally:
                stream.resume()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            wait_until(lambda: any("was never retrieved" in line for line in stream.text))
        finally:
            stream.close()
