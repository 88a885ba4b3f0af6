"""The two daemons as real processes over real multicast on loopback."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from powercast import net, wire

from harness import (
    GROUP,
    Daemon,
    Notify,
    free_port,
    make_keys,
    network,
    next_message,
    publisher_config,
    running,
    set_reading,
    write_toml,
)

pytestmark = pytest.mark.system

RECORD = "import os, sys; open(sys.argv[1], 'a').write(os.environ['POWERCAST_STATE'] + ' ' + os.environ['POWERCAST_FANS'] + '\\n')"  # noqa: E501


def controller_config(port: int, record: Path, **policy: Any) -> dict[str, Any]:
    argv = [sys.executable, "-c", RECORD, str(record)]
    return {
        "role": "controller",
        "network": network(port),
        "auth": {"keys_dir": str(record.parent / "keys")},
        "policy": {"shed_after_s": 0.3, "restore_after_s": 0.3, **policy},
        "actions": [
            {"on": state, "argv": argv, "timeout_s": 5.0}
            for state in ("normal", "on_battery", "shedding", "thermal_override", "failsafe")
        ],
        "log": {"format": "json", "level": "debug"},
    }


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    port = free_port()
    make_keys(tmp_path / "keys")
    record = tmp_path / "actions.log"
    reading = tmp_path / "ups.json"
    set_reading(reading, "online", 24.0)
    return {
        "controller": write_toml(tmp_path / "c.toml", controller_config(port, record)),
        "publisher": write_toml(
            tmp_path / "p.toml", publisher_config(port, tmp_path / "keys", reading, id="ups-test")
        ),
        "record": record,
        "reading": reading,
        "port": Path(str(port)),
    }


def wait_record(path: Path, lines: list[str], timeout: float = 5.0) -> None:
    """The actions run, in order; a leading failsafe (the startup grace ended before the
    publisher's first datagram, on a busy machine) is the start's own and allowed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = path.read_text().splitlines() if path.exists() else []
        if got[:1] == ["failsafe on"] and lines[:1] != ["failsafe on"]:
            got = got[1:]
        if got == lines:
            return
        time.sleep(0.02)
    got = path.read_text().splitlines() if path.exists() else []
    raise AssertionError(f"actions ran {got}, expected {lines}")


class TestOutage:
    def test_outage_sheds_and_restores(self, files: dict[str, Path], tmp_path: Path) -> None:
        """A UPS on battery sheds the fans; heat brings them back, then power restores them."""
        notify = Notify(tmp_path)
        env = {"NOTIFY_SOCKET": notify.path}
        with (
            running("control", "--config", str(files["controller"]), env=env) as ctl,
            running("publish", "--config", str(files["publisher"])) as pub,
        ):
            assert "READY=1" in notify.wait_for("READY=1")
            pub.wait_for("ready")
            ctl.wait_for("transition", state="normal")
            set_reading(files["reading"], "on_battery", 24.0)
            ctl.wait_for("transition", state="on_battery")
            shed = ctl.wait_for("transition", state="shedding")
            assert shed["fans"] == "off"
            assert shed["power"] == "on_battery"
            assert shed["hottest"] == "ups-test/inlet"
            assert "STATUS=shedding" in notify.wait_for("STATUS=shedding")
            set_reading(files["reading"], "on_battery", 40.0)
            hot = ctl.wait_for("transition", state="thermal_override")
            assert hot["temperature_c"] == 40.0
            set_reading(files["reading"], "online", 40.0)
            ctl.wait_for("transition", state="normal")
            wait_record(
                files["record"],
                [
                    "normal on",
                    "on_battery on",
                    "shedding off",
                    "thermal_override on",
                    "normal on",
                ],
            )
        notify.close()

    def test_publisher_gone_fails_safe(self, files: dict[str, Path]) -> None:
        """When the publisher stops, its data runs out at its TAL and the fans run."""
        with running("control", "--config", str(files["controller"])) as ctl:
            ctl.wait_for("ready")
            with running("publish", "--config", str(files["publisher"])):
                ctl.wait_for("transition", state="normal")
            started = time.monotonic()
            event = ctl.wait_for("transition", state="failsafe")
            assert "no fresh data" in event["reason"]
            assert event["stale"] == ["ups-test"]
            # TAL is 3 heartbeats of 0.2 s: lost well within a second, not much sooner.
            assert time.monotonic() - started < 2.0


class TestBadInput:
    def test_garbage_datagrams_are_counted_and_dropped(self, files: dict[str, Path]) -> None:
        """Malformed datagrams change no decision, are logged rate-limited, and the daemon lives."""
        port = int(str(files["port"]))
        with (
            running("control", "--config", str(files["controller"])) as ctl,
            running("publish", "--config", str(files["publisher"])),
        ):
            ctl.wait_for("transition", state="normal")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
                )
                for i in range(200):
                    s.sendto(b"PWRC\x01" + bytes([i]) * 40, (GROUP, port))
                    s.sendto(b"not powercast at all", (GROUP, port))
            rejected = ctl.wait_for("datagram_rejected")
            assert rejected["reason"] in {"tag", "length", "magic", "version"}
            time.sleep(0.3)
            assert ctl.proc.poll() is None
            transitions = [e for e in ctl.seen if e.get("event") == "transition"]
            assert [t["state"] for t in transitions] == ["normal"]
            warnings = [e for e in ctl.seen if e.get("event") == "datagram_rejected"]
            assert len(warnings) <= 6  # one per reason per 10 s, not one per datagram

    def test_bad_config_never_starts(self, tmp_path: Path) -> None:
        """A bad config is one line naming the file, the key and the value; exit 78."""
        bad = tmp_path / "c.toml"
        bad.write_text('role = "controller"\n[policy]\ntemp_high_c = "hot"\n')
        daemon = Daemon("control", "--config", str(bad))
        assert daemon.wait() == 78
        assert daemon.output() == [
            f'powercast: {bad}: policy.temp_high_c: expected a number, got "hot"'
        ]

    @pytest.mark.parametrize("interface", ["nosuch0", "192.0.2.1"])
    def test_interface_not_on_this_host_is_one_line_and_exit_78(
        self, tmp_path: Path, interface: str
    ) -> None:
        """An interface name or address this host does not have stops the start with a line
        naming the setting, and EX_CONFIG (78): systemd does not restart it for ever."""
        make_keys(tmp_path / "keys")
        config = controller_config(free_port(), tmp_path / "r")
        config["network"]["interface"] = interface
        path = write_toml(tmp_path / "c.toml", config)
        daemon = Daemon("control", "--config", str(path))
        assert daemon.wait() == 78
        (line,) = daemon.output()
        assert line.startswith(f"powercast: {path}: network.interface: ")
        assert repr(interface) in line

    def test_port_in_use_may_pass_and_exits_1(self, tmp_path: Path) -> None:
        """A unicast port held by a socket that does not share it is not a config mistake:
        exit 1, so systemd tries again."""
        make_keys(tmp_path / "keys")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
            holder.bind(("127.0.0.1", 0))
            port = holder.getsockname()[1]
            config = controller_config(free_port(), tmp_path / "r")
            config["network"]["unicast_listen"] = f"127.0.0.1:{port}"
            path = write_toml(tmp_path / "c.toml", config)
            daemon = Daemon("control", "--config", str(path))
            assert daemon.wait() == 1
        (line,) = daemon.output()
        assert line.startswith(f"powercast: {path}: network.unicast_listen: port {port}")


class TestLifecycle:
    def test_notify_ready_status_watchdog_stopping(
        self, files: dict[str, Path], tmp_path: Path
    ) -> None:
        """READY=1 with STATUS, watchdog pings at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM."""
        notify = Notify(tmp_path)
        env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"}
        daemon = Daemon("control", "--config", str(files["controller"]), env=env)
        try:
            ready = notify.wait_for("READY=1")
            assert "STATUS=failsafe" in ready
            notify.wait_for("WATCHDOG=1")
            started = time.monotonic()
            notify.wait_for("WATCHDOG=1")
            notify.wait_for("WATCHDOG=1")
            assert time.monotonic() - started < 1.0  # 0.2 s apart, not 0.4
        finally:
            code = daemon.stop()
        assert code == 0
        assert "STOPPING=1" in notify.wait_for("STOPPING=1")
        notify.close()

    def test_reload_does_not_credit_a_new_actuator_with_the_old_ones_position(
        self, files: dict[str, Path], tmp_path: Path
    ) -> None:
        """An actuator replaced on reload is written: the old one's position is not its own."""
        path, port = files["controller"], int(str(files["port"]))

        def with_actuator(name: str) -> dict[str, Any]:
            marker = tmp_path / name
            touch = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"]
            actuator = {"kind": "command", "on_argv": touch, "off_argv": ["true"]}
            return {**controller_config(port, files["record"]), "actuators": [actuator]}

        write_toml(path, with_actuator("old-fans-on"))
        with (
            running("control", "--config", str(path)) as ctl,
            running("publish", "--config", str(files["publisher"])),
        ):
            ctl.wait_for("actuator_set", position="on")
            write_toml(path, with_actuator("new-fans-on"))
            ctl.signal(signal.SIGHUP)
            ctl.wait_for("reloaded")
            # The old actuator, released, is set on too and logs under the same name:
            # which of the two is logged first is not fixed.
            deadline = time.monotonic() + 5.0
            while not (tmp_path / "new-fans-on").exists() and time.monotonic() < deadline:
                ctl.wait_for("actuator_set", timeout=deadline - time.monotonic(), position="on")
            assert (tmp_path / "new-fans-on").exists()

    def test_reload_leaves_a_dropped_actuator_with_its_fans_on(
        self, files: dict[str, Path], tmp_path: Path
    ) -> None:
        """An actuator the new config no longer drives is set to fans on before it is let go."""
        path, port = files["controller"], int(str(files["port"]))
        pwm = tmp_path / "pwm1"
        pwm.write_text("255\n")
        config = controller_config(port, files["record"])
        write_toml(path, {**config, "actuators": [{"kind": "hwmon", "path": str(pwm)}]})
        with (
            running("control", "--config", str(path)) as ctl,
            running("publish", "--config", str(files["publisher"])),
        ):
            ctl.wait_for("transition", state="normal")
            set_reading(files["reading"], "on_battery", 24.0)
            ctl.wait_for("actuator_set", position="off")
            assert pwm.read_text() == "0\n"
            write_toml(path, config)  # the same, without the actuator
            ctl.signal(signal.SIGHUP)
            released = ctl.wait_for("actuator_released")
            assert released["actuator"] == "default/0(hwmon)"
            assert pwm.read_text() == "255\n"

    def test_sighup_reloads_a_valid_config_and_keeps_running_on_a_bad_one(
        self, files: dict[str, Path], tmp_path: Path
    ) -> None:
        """SIGHUP: RELOADING=1 ... READY=1; a bad file is logged and the running config stays."""
        notify = Notify(tmp_path)
        env = {"NOTIFY_SOCKET": notify.path}
        path = files["controller"]
        with (
            running("control", "--config", str(path), env=env) as ctl,
            running("publish", "--config", str(files["publisher"])),
        ):
            notify.wait_for("READY=1")
            ctl.wait_for("transition", state="normal")
            set_reading(files["reading"], "on_battery", 30.0)
            ctl.wait_for("transition", state="shedding")

            # Valid: a lower limit makes 30 °C too hot, at once, without a restart.
            config = controller_config(int(str(files["port"])), files["record"], temp_high_c=29.0)
            write_toml(path, config)
            ctl.signal(signal.SIGHUP)
            assert "MONOTONIC_USEC=" in notify.wait_for("RELOADING=1")
            ctl.wait_for("transition", state="thermal_override")
            ctl.wait_for("reloaded")
            notify.wait_for("READY=1")

            # Invalid: logged with file and key; the running config (29 °C) stays.
            path.write_text('role = "controller"\n[policy]\ntemp_high_c = "hot"\n')
            ctl.signal(signal.SIGHUP)
            failed = ctl.wait_for("reload_failed")
            assert f"{path}: policy.temp_high_c" in failed["error"]
            notify.wait_for("READY=1")
            set_reading(files["reading"], "on_battery", 25.0)
            ctl.wait_for("transition", state="shedding")
            assert ctl.proc.poll() is None
        notify.close()

    def test_reload_of_a_deeply_nested_file_keeps_running(
        self, files: dict[str, Path], tmp_path: Path
    ) -> None:
        """SIGHUP with arrays nested 100,000 deep: reload_failed naming the file, the running
        config stays and the controller keeps deciding."""
        path = files["controller"]
        with (
            running("control", "--config", str(path)) as ctl,
            running("publish", "--config", str(files["publisher"])),
        ):
            ctl.wait_for("transition", state="normal")
            path.write_text('role = "controller"\nx = ' + "[" * 100_000 + "]" * 100_000 + "\n")
            ctl.signal(signal.SIGHUP)
            failed = ctl.wait_for("reload_failed")
            assert failed["error"].startswith(f"{path}: x: nested too deep")
            set_reading(files["reading"], "on_battery", 24.0)
            ctl.wait_for("transition", state="shedding")
            assert ctl.proc.poll() is None


SLOW_READ = "import sys, time; time.sleep(1.0); print(sys.argv[1])"


class TestPublisherRestart:
    """A publisher restarted (kill -9, then started again) with a source that takes ~1 s."""

    @pytest.fixture
    def restart(self, files: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
        """The publisher with a second source that takes a second to read; TAL 4 s."""
        port = int(str(files["port"]))
        set_reading(files["reading"], "on_battery", 24.0)
        config = publisher_config(port, tmp_path / "keys", files["reading"], id="ups-test")
        slow = json.dumps({"temperatures": {"hall": 23.0}})
        config["heartbeat_s"], config["tal_factor"] = 1.0, 4.0
        config["sources"].append(
            {"kind": "command", "argv": [sys.executable, "-c", SLOW_READ, slow], "timeout_s": 5.0}
        )
        return {**files, "publisher": write_toml(tmp_path / "slow.toml", config)}

    def test_restart_within_its_tal_does_not_move_a_controller(
        self, restart: dict[str, Path]
    ) -> None:
        """Its first datagram waits for the slow first read and says on_battery, not unknown:
        the shedding controller stays put. Gone past its TAL, the controller fails safe."""
        port = int(str(restart["port"]))
        listener = net.open_receiver(GROUP, port, "127.0.0.1")
        listener.setblocking(True)
        publish = ("publish", "--config", str(restart["publisher"]))
        first = Daemon(*publish, name="publisher")
        try:
            with running("control", "--config", str(restart["controller"])) as ctl:
                ctl.wait_for("transition", state="shedding", timeout=10.0)
                epoch = next_message(listener).epoch
                first.proc.kill()  # kill -9: no goodbye
                first.wait()
                with running(*publish) as second:
                    started = time.monotonic()
                    message = next_message(listener, until=lambda m: m.epoch != epoch)
                    waited = time.monotonic() - started
                    assert message.power.status is wire.PowerStatus.ON_BATTERY
                    assert message.temperatures == {"inlet": 24.0, "hall": 23.0}
                    assert 1.0 <= waited < 4.0, waited
                    assert_quiet(ctl, "transition", 1.0)
                    second.proc.kill()
                stopped = time.monotonic()
                event = ctl.wait_for("transition", state="failsafe", timeout=5.0)
                assert event["stale"] == ["ups-test"]
                assert 3.0 <= event["_at"] - stopped < 5.0  # TAL 4 s after the last datagram
                moves = [e["state"] for e in ctl.seen if e.get("event") == "transition"]
                assert moves[-2:] == ["shedding", "failsafe"]
        finally:
            first.stop()
            listener.close()


def assert_quiet(daemon: Daemon, event: str, seconds: float) -> None:
    """``daemon`` logs no ``event`` within ``seconds``."""
    try:
        got = daemon.wait_for(event, timeout=seconds)
    except AssertionError:
        return
    raise AssertionError(f"{daemon.name} logged {got}")
