"""A real controller restarted mid-outage: it picks up where it was without toggling the fans.

Real processes over real multicast on loopback (tests/harness.py): a publisher reading a
file source, a controller driving a hwmon actuator (a pwm file in tmp_path) and keeping
its state in tmp_path. A thread reads the pwm file every 2 ms across the restart, so a
fan that was turned on for a moment would be seen.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from powercast import config, persist
from powercast.auth import Keyring
from powercast.runtime import ControllerDaemon
from powercast.wire import PowerStatus

from fakes import FakePublisher, make_keyring
from harness import (
    Daemon,
    controller_config,
    free_port,
    make_keys,
    network,
    publisher_config,
    running,
    set_reading,
    write_toml,
)

pytestmark = pytest.mark.system

ON, OFF = "255", "0"
RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"


@dataclass
class Files:
    controller: Path
    publisher: Path
    reading: Path
    pwm: Path
    state_dir: Path
    record: Path


def make_files(tmp_path: Path, grace: float) -> Files:
    port = free_port()
    keys = make_keys(tmp_path / "keys")
    pwm = tmp_path / "pwm1"
    pwm.write_text(f"{ON}\n")  # fans run at boot
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    record = tmp_path / "actions.log"
    reading = tmp_path / "ups.json"
    set_reading(reading, "online")
    controller = controller_config(
        port,
        keys,
        policy={"shed_after_s": 0.3, "restore_after_s": 0.3, "startup_grace_s": grace},
        actuators=[{"kind": "hwmon", "path": str(pwm), "on_value": 255, "off_value": 0}],
        actions=[
            {"on": state, "argv": [sys.executable, "-c", RECORD, str(record), state]}
            for state in ("normal", "shedding", "failsafe")
        ],
        persist={"state_dir": str(state_dir)},
        log={"format": "json", "level": "debug"},
    )
    publisher = publisher_config(
        port,
        keys,
        reading,
        id="ups-test",
        tal_factor=50.0,  # data lives 10 s: no expiry timer wakes the controller early
    )
    return Files(
        controller=write_toml(tmp_path / "c.toml", controller),
        publisher=write_toml(tmp_path / "p.toml", publisher),
        reading=reading,
        pwm=pwm,
        state_dir=state_dir,
        record=record,
    )


class Watch:
    """Reads the pwm file every 2 ms in a thread; keeps every value seen, in order (an
    empty read, mid-rewrite, is neither on nor off and is skipped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self.path.read_text().strip()
            self.reads += 1
            # Empty: caught between the truncate and the write of a new value.
            if value and (not self.values or self.values[-1] != value):
                self.values.append(value)
            time.sleep(0.002)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(1.0)
        return self.values


def wait_file(path: Path, value: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.read_text().strip() == value:
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} holds {path.read_text().strip()!r}, expected {value!r}")


def control(files: Files, *extra: str) -> Daemon:
    return Daemon("control", "--config", str(files.controller), *extra)


@dataclass
class Scene:
    files: Files
    controller: Daemon
    publisher: Daemon


@pytest.fixture
def shedding(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Scene]:
    """A controller that has shed the fans (pwm 0) on the publisher's outage; both stopped
    on the way out. startup_grace_s: 2 s, or the test's indirect parameter."""
    files = make_files(tmp_path, grace=getattr(request, "param", 2.0))
    ctl = control(files)
    pub = Daemon("publish", "--config", str(files.publisher))
    try:
        ctl.wait_for("transition", state="normal")
        set_reading(files.reading, "on_battery")
        ctl.wait_for("transition", state="shedding")
        ctl.wait_for("actuator_set", position="off")
        assert files.pwm.read_text() == f"{OFF}\n"
        yield Scene(files, ctl, pub)
    finally:
        ctl.stop()
        pub.stop()


class TestRestart:
    def test_restart_during_outage_costs_one_on_off_pair(self, shedding: Scene) -> None:
        """SIGTERM and start again while on battery: the fans run while no controller does
        (one on), then the restored state, confirmed by the first heartbeat within the
        grace, sheds them again (one off) and replays the state's commands; no transition."""
        files = shedding.files
        watch = Watch(files.pwm)
        while not watch.values:  # the watch has seen the fans shed before the stop
            time.sleep(0.001)
        assert shedding.controller.stop() == 0
        assert shedding.controller.wait_for("stopping_fans_on", timeout=1.0)
        assert files.pwm.read_text() == f"{ON}\n"
        assert (files.state_dir / "controller-state.json").exists()
        ctl = control(files)
        try:
            restored = ctl.wait_for("state_restored")
            assert restored["zones"] == {"default": "shedding"}
            ctl.wait_for("ready")
            ready_at = time.monotonic()
            reconciled = ctl.wait_for("reconciled", timeout=3.0)
            confirmed_in = time.monotonic() - ready_at
            assert reconciled["state"] == "shedding"
            ctl.wait_for("actuator_set", position="off")
            ctl.wait_for("action", state="shedding")
            time.sleep(0.3)  # more heartbeats: still nothing moves
            assert watch.stop() == [OFF, ON, OFF]
        finally:
            ctl.stop()
        assert confirmed_in < 1.9  # the first heartbeat (0.2 s), not the end of the 2 s grace
        events = [e.get("event") for e in ctl.seen]
        assert "transition" not in events
        assert files.record.read_text().splitlines()[-1] == "shedding"  # replayed

    @pytest.mark.parametrize("shedding", [1.0], indirect=True)  # startup_grace_s
    def test_restart_without_data_fails_safe_after_the_grace(self, shedding: Scene) -> None:
        """Started again with the publisher gone: the stop turned the fans on, and the
        restored shed is not carried out without data: failsafe after the grace."""
        files = shedding.files
        watch = Watch(files.pwm)
        while not watch.values:
            time.sleep(0.001)
        assert shedding.controller.stop() == 0
        shedding.publisher.stop()
        with running("control", "--config", str(files.controller)) as ctl:
            ctl.wait_for("state_restored")
            ctl.wait_for("ready")
            started = time.monotonic()
            failsafe = ctl.wait_for("transition", state="failsafe", timeout=3.0)
            took = time.monotonic() - started
            assert "no fresh data" in failsafe["reason"]
        assert files.pwm.read_text() == f"{ON}\n"
        assert watch.stop() == [OFF, ON]  # on at the stop, and on it stays
        assert 0.8 <= took < 3.0  # startup_grace_s = 1 s, counted from before "ready"

    def test_another_zones_data_does_not_end_a_zones_grace(self, tmp_path: Path) -> None:
        """A zone restored shedding waits out its grace for its own publisher, even while
        another zone's publisher speaks and actuators are still being probed."""
        files = make_files(tmp_path, grace=1.0)
        files.pwm.write_text(f"{OFF}\n")
        config = tomllib.loads(files.controller.read_text())
        hall_a = {
            "name": "hall-a",
            "publishers": ["ups-gone"],
            "actuators": config.pop("actuators"),
        }
        slow = [sys.executable, "-c", "import time; time.sleep(0.5); print('on')"]
        hall_b = {
            "name": "hall-b",
            "publishers": ["ups-test"],
            "actuators": [
                {"kind": "command", "on_argv": ["true"], "off_argv": ["true"], "verify_argv": slow}
            ],
        }
        config.pop("actions")
        write_toml(files.controller, {**config, "zones": [hall_a, hall_b]})
        saved = {
            "version": 1,
            "saved_at": time.time(),
            "zones": {"hall-a": {"state": "shedding", "entered_at": time.time() - 60.0}},
            "actuators": {"hall-a/0": False},
        }
        (files.state_dir / "controller-state.json").write_text(json.dumps(saved))
        watch = Watch(files.pwm)
        with (
            running("publish", "--config", str(files.publisher)) as pub,
            running("control", "--config", str(files.controller)) as ctl,
        ):
            pub.wait_for("ready")
            ctl.wait_for("state_restored")
            started = time.monotonic()
            first = ctl.wait_for("transition", zone="hall-a", timeout=3.0)
            took = time.monotonic() - started
            ctl.wait_for("actuator_set", position="on")
        assert first["state"] == "failsafe"
        assert first["stale"] == []  # ups-gone was never heard
        assert 0.8 <= took < 3.0  # the grace (1 s), not the first datagram of ups-test
        assert watch.stop() == [OFF, ON]
        hall_b_moves = [e for e in ctl.seen if e.get("event") == "transition"]
        assert {e["zone"] for e in hall_b_moves} == {"hall-a", "hall-b"}


class TestDryRun:
    def test_dry_run_decides_and_logs_but_touches_nothing(self, tmp_path: Path) -> None:
        """control --dry-run: transitions and would-be moves are logged; the pwm file, the
        actions and the state file are left alone."""
        files = make_files(tmp_path, grace=2.0)
        stamp = files.pwm.stat().st_mtime_ns
        with (
            running("control", "--config", str(files.controller), "--dry-run") as ctl,
            running("publish", "--config", str(files.publisher)),
        ):
            ctl.wait_for("transition", state="normal")
            set_reading(files.reading, "on_battery")
            shed = ctl.wait_for("transition", state="shedding")
            assert shed["fans"] == "off"
            action = ctl.wait_for("action_dry_run")
            assert action["argv"][-1] == "shedding"
            would = ctl.wait_for("actuator_dry_run")
            assert would["would_set"] == "off"
        assert files.pwm.read_text() == f"{ON}\n"
        assert files.pwm.stat().st_mtime_ns == stamp
        assert not files.record.exists()
        assert list(files.state_dir.iterdir()) == []
        events = [e.get("event") for e in ctl.seen]
        assert "action" not in events
        assert "actuator_set" not in events


def in_process(tmp_path: Path, **extra: Any) -> tuple[Keyring, Path, Path, config.ControllerConfig]:
    """Keys, a state directory and a controller config file (with ``extra`` keys), loaded,
    for a ControllerDaemon run inside the test process."""
    keyring = make_keyring(tmp_path / "keys")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    path = write_toml(
        tmp_path / "c.toml",
        {
            "role": "controller",
            "network": network(free_port()),
            "auth": {"keys_dir": str(tmp_path / "keys"), "max_clock_skew_s": 0.0},
            "persist": {"state_dir": str(state_dir)},
            "log": {"format": "json"},
            **extra,
        },
    )
    ctl_config = config.load(path, "controller")
    assert isinstance(ctl_config, config.ControllerConfig)
    return keyring, state_dir, path, ctl_config


class _Done(Exception):
    """Ends the in-process controller's TaskGroup."""


class TestStartOrder:
    def test_a_datagram_taken_while_the_sockets_open_does_not_undo_the_restore(
        self, tmp_path: Path
    ) -> None:
        """Data arriving before start() has restored the state is judged after the restore."""
        keyring, state_dir, path, ctl_config = in_process(
            tmp_path,
            policy={"shed_after_s": 5.0, "startup_grace_s": 5.0},
            zones=[
                {"name": "a", "publishers": ["ups-a"]},
                {"name": "b", "publishers": ["ups-b"]},
            ],
        )
        wall = time.time()
        shed = persist.ZoneRecord("shedding", wall - 60.0, "saved", battery_since=wall - 70.0)
        persist.save(state_dir, persist.StateRecord(1, wall - 1.0, zones={"a": shed, "b": shed}))
        datagram = FakePublisher.signed("ups-a", keyring).say(
            0.0, PowerStatus.ON_BATTERY, inlet=24.0
        )

        class Early(ControllerDaemon):
            async def _listen(self, network: config.Network) -> Any:
                transport = await super()._listen(network)
                self._on_datagram(
                    datagram, "127.0.0.1"
                )  # came in while start() was still opening sockets
                return transport

        async def go() -> dict[str, tuple[str, bool]]:
            daemon = Early(path, ctl_config, keyring)
            try:
                async with asyncio.TaskGroup() as tg:
                    await daemon.start(tg)
                    zones = {n: (p.state, p.settled) for n, p in daemon.core.zones.items()}
                    raise _Done
            except* _Done:
                pass
            finally:
                daemon.close()
            return zones

        # a: the restored shed is confirmed by its data; b: restored, waiting out the grace.
        assert asyncio.run(go()) == {"a": ("shedding", True), "b": ("shedding", False)}

    def test_a_decision_taken_while_the_actuators_are_probed_reaches_them(
        self, tmp_path: Path
    ) -> None:
        """Probes run in each worker's own task: start() does not wait for a slow one, and a
        move decided meanwhile is the worker's wish, carried out once its probe is done."""
        slow = [sys.executable, "-c", "import time; time.sleep(0.5); print('on')"]
        keyring, state_dir, path, ctl_config = in_process(
            tmp_path,
            actuators=[
                {"kind": "command", "on_argv": ["true"], "off_argv": ["true"], "verify_argv": slow}
            ],
        )
        wall = time.time()
        shed = persist.ZoneRecord("shedding", wall - 60.0, "saved", battery_since=wall - 70.0)
        persist.save(state_dir, persist.StateRecord(1, wall - 1.0, zones={"default": shed}))
        hot = FakePublisher.signed("ups-a", keyring).say(0.0, PowerStatus.ON_BATTERY, inlet=50.0)

        async def go() -> tuple[float, str, bool | None, bool | None]:
            daemon = ControllerDaemon(path, ctl_config, keyring)
            try:
                async with asyncio.TaskGroup() as tg:
                    started = time.monotonic()
                    await daemon.start(tg)
                    took = time.monotonic() - started
                    daemon._on_datagram(hot, "127.0.0.1")  # while the probe still runs
                    worker = daemon.workers["default"][0]
                    wish = worker.desired
                    for _ in range(300):
                        if worker.known is True:
                            break
                        await asyncio.sleep(0.01)
                    seen = (took, daemon.core.policy.state, wish, worker.known)
                    raise _Done
            except* _Done:
                pass
            finally:
                daemon.close()
            return seen

        took, state, wish, known = asyncio.run(go())
        assert took < 0.4  # the 0.5 s probe did not hold up the start
        assert (state, wish, known) == ("thermal_override", True, True)
