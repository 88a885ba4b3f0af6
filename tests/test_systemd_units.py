"""The Debian package and its units in a real systemd + journald (a throw-away container).

One container for the module (tests/systemd_box.py; its root is an overlay of this
host's, so installing there touches nothing here). The .deb is built from
this checkout by packaging/build-deb, installed with dpkg -i, and its units are started as
an admin would: with the package's /usr/bin/powercast, User=powercast, the keys as
credentials and the full sandbox. Each test leaves every unit stopped.

Needs root, util-linux unshare and dpkg-deb; without them the tests skip, saying why
(docs/testing.md). .ci/run sets POWERCAST_SYSTEMD_TESTS=require so that a skip there is a
failure instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from harness import file_reading
from systemd_box import SystemdBox, booted, skip_or_fail

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]
CONTROLLER = "powercast-controller.service"
PUBLISHER = "powercast-publisher.service"
RELAY = "powercast-relay.service"
UNITS = (CONTROLLER, PUBLISHER, RELAY)
READING = "/run/powercast/ups.toml"  # the publisher's file source, in its RuntimeDirectory
DROP_IN_DIR = "powercast-controller.service.d"


def controller_config(**policy: Any) -> dict[str, Any]:
    """The controller's test config: quick debounces, actions that run inside the sandbox."""
    return {
        "role": "controller",
        "network": {"group": "239.1.1.1", "port": 5001, "interface": "127.0.0.1"},
        "policy": {
            "publishers": ["ups-test"],
            "shed_after_s": 1.0,
            "restore_after_s": 1.0,
            **policy,
        },
        "actions": [
            {"on": "shedding", "argv": ["/bin/sh", "-c", "echo fans off"]},
            {"on": "normal", "argv": ["/bin/sh", "-c", "echo fans on"]},
        ],
    }


PUBLISHER_CONFIG: dict[str, Any] = {
    "role": "publisher",
    "id": "ups-test",
    "heartbeat_s": 0.5,
    "network": {"group": "239.1.1.1", "port": 5001, "interface": "127.0.0.1"},
    "sources": [{"kind": "file", "path": READING, "interval_s": 0.2}],
}

UNREACHABLE = "10.255.255.1"
"""A broker on a private address (the unit allows those) that the container, with only a
loopback network, has no route to: the connection fails at once."""


def relay_config(host: str = UNREACHABLE, port: int = 1883) -> dict[str, Any]:
    """The relay's test config: the test group, a broker at host:port, quick retries."""
    return {
        "role": "relay",
        "network": {"group": "239.1.1.1", "port": 5001, "interface": "127.0.0.1"},
        "broker": {"host": host, "port": port, "reconnect_max_s": 1.0},
    }


@dataclass
class Sandbox:
    """The booted container with the package: run commands in it, read its units and journal."""

    box: SystemdBox
    after_install: dict[str, str] = field(default_factory=dict)

    @property
    def units(self) -> Path:
        """/etc/systemd/system inside: drop-ins written here are seen there."""
        return self.box.units

    def sh(
        self, *argv: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the container; raise with its output when check and it failed."""
        return self.box.sh(*argv, input=input, check=check, timeout_s=90)

    def write(self, path: str, text: str) -> None:
        """Write a file inside the container."""
        self.sh(
            "sh", "-c", f"umask 022 && cat >'{path}.tmp' && mv '{path}.tmp' '{path}'", input=text
        )

    def prop(self, unit: str, name: str) -> str:
        """One property of a unit, as `systemctl show -P` gives it."""
        return self.sh("systemctl", "show", "-P", name, unit).stdout.strip()

    def cursor(self) -> str:
        """The journal's current end, to read only what comes after it."""
        out = self.sh("journalctl", "-n", "1", "-o", "json", "--no-pager").stdout
        return str(json.loads(out.splitlines()[-1])["__CURSOR"]) if out.strip() else ""

    def journal(self, unit: str, *matches: str, after: str = "") -> list[dict[str, Any]]:
        """The unit's journal entries after the cursor, those with every FIELD=value given.

        The matches are applied here: journalctl 252 finds nothing when --after-cursor is
        combined with field matches (the operator's command without a cursor is tested
        as such in test_journal_fields).
        """
        argv = ["journalctl", "-u", unit, "-o", "json", "--no-pager"]
        if after:
            argv.append(f"--after-cursor={after}")
        out = self.sh(*argv, check=False).stdout
        wanted = [match.split("=", 1) for match in matches]
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [e for e in entries if all(e.get(k) == v for k, v in wanted)]

    def messages(self, unit: str) -> str:
        """The unit's journal as text, for assertion messages."""
        return self.sh("journalctl", "-u", unit, "-o", "short-monotonic", "--no-pager").stdout

    def wait_for(
        self, what: str, check: Callable[[], Any], unit: str, timeout: float = 15.0
    ) -> Any:
        """Poll check() until it returns something true; fail with the unit's journal."""
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout} s waiting for {what}\n{self.messages(unit)}"
                )
            time.sleep(0.1)

    def event(self, unit: str, event: str, *matches: str, after: str = "") -> dict[str, Any]:
        """Wait for the unit to log event (POWERCAST_EVENT) and return its journal entry."""

        def found() -> dict[str, Any] | None:
            entries = self.journal(unit, f"POWERCAST_EVENT={event}", *matches, after=after)
            return entries[-1] if entries else None

        entry: dict[str, Any] = self.wait_for(f"{event} {matches}", found, unit)
        return entry

    def reset(self) -> None:
        """Every unit stopped and not failed; the test configs and a fresh reading in place."""
        self.sh("systemctl", "stop", *UNITS)
        self.sh("systemctl", "reset-failed", *UNITS, check=False)
        self.write("/etc/powercast/controller.toml", tomli_w.dumps(controller_config()))
        self.write("/etc/powercast/publisher.toml", tomli_w.dumps(PUBLISHER_CONFIG))
        self.set_reading("online")

    def set_reading(self, status: str, inlet: float = 24.5) -> None:
        """What the publisher's file source reads next."""
        reading = file_reading(status, inlet)
        self.sh(
            "install", "-d", "-m", "0750", "-o", "powercast", "-g", "powercast", "/run/powercast"
        )
        self.write(READING, tomli_w.dumps(reading))


@pytest.fixture(scope="module")
def sandbox(deb: Path) -> Iterator[Sandbox]:
    """One booted container for the module, with the package installed and a key made."""
    with booted() as box:
        shutil.copy(deb, box.opt / "powercast.deb")
        box.sh("dpkg", "-i", "/opt/box/powercast.deb")
        sandbox = Sandbox(box)
        sandbox.after_install = {
            unit: box.sh("systemctl", "is-enabled", unit, check=False).stdout.strip()
            + "/"
            + box.sh("systemctl", "is-active", unit, check=False).stdout.strip()
            for unit in UNITS
        }
        box.sh("powercast", "keygen", "1", "/etc/powercast/keys/1.key")
        yield sandbox


@pytest.fixture
def box(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The session's container, with every unit stopped and the test configs, before and after."""
    sandbox.reset()
    yield sandbox
    sandbox.reset()


class TestDebianPackage:
    def test_contents(self, deb: Path) -> None:
        """The .deb holds the program, vendored code, units, sysusers/tmpfiles and conffiles."""
        listing = subprocess.run(
            ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
        ).stdout
        paths = {line.split()[-1].removeprefix(".") for line in listing.splitlines()}
        for path in (
            "/usr/bin/powercast",
            "/usr/lib/powercast/powercast/cli/__init__.py",
            "/usr/lib/powercast/msgspec/__init__.py",
            "/usr/lib/powercast/structlog/__init__.py",
            "/lib/systemd/system/powercast-controller.service",
            "/lib/systemd/system/powercast-publisher.service",
            "/lib/systemd/system/powercast-relay.service",
            "/usr/lib/sysusers.d/powercast.conf",
            "/usr/lib/tmpfiles.d/powercast.conf",
            "/etc/powercast/controller.toml",
            "/etc/powercast/publisher.toml",
            "/etc/powercast/relay.toml",
            "/usr/share/doc/powercast/examples/hwmon.conf",
            "/usr/share/doc/powercast/examples/relay.toml",
            "/usr/share/doc/powercast/docs/monitoring.md",
            "/usr/share/powercast/grafana/powercast.json",
            "/usr/share/powercast/prometheus/powercast.rules.yml",
            "/usr/share/powercast/prometheus/powercast.rules.test.yml",
        ):
            assert path in paths, path
        conffiles = subprocess.run(
            ["dpkg-deb", "--info", str(deb), "conffiles"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert conffiles == [
            "/etc/powercast/controller.toml",
            "/etc/powercast/publisher.toml",
            "/etc/powercast/relay.toml",
        ]

    def test_monitoring_files_are_the_repository_files(self, deb: Path, tmp_path: Path) -> None:
        """The dashboard and the rules with their tests are installed unchanged, side by
        side, so `promtool test rules` runs where they are installed."""
        subprocess.run(["dpkg-deb", "--extract", str(deb), str(tmp_path)], check=True)
        share = tmp_path / "usr" / "share" / "powercast"
        for installed, source in (
            ("grafana/powercast.json", "monitoring/grafana/powercast.json"),
            ("prometheus/powercast.rules.yml", "monitoring/prometheus/powercast.rules.yml"),
            (
                "prometheus/powercast.rules.test.yml",
                "monitoring/prometheus/powercast.rules.test.yml",
            ),
        ):
            assert (share / installed).read_bytes() == (ROOT / source).read_bytes(), installed
            assert (share / installed).stat().st_mode & 0o777 == 0o644, installed

    def test_units_are_the_repository_units(self, deb: Path, tmp_path: Path) -> None:
        """The package installs systemd/*.service from this checkout unchanged."""
        subprocess.run(["dpkg-deb", "--extract", str(deb), str(tmp_path)], check=True)
        for unit in UNITS:
            installed = (tmp_path / "lib" / "systemd" / "system" / unit).read_text()
            assert installed == (ROOT / "systemd" / unit).read_text()

    def test_install_starts_nothing(self, sandbox: Sandbox) -> None:
        """dpkg -i leaves every unit disabled and inactive."""
        assert sandbox.after_install == dict.fromkeys(UNITS, "disabled/inactive")

    def test_user_and_directories(self, sandbox: Sandbox) -> None:
        """Installing creates the powercast system user, the keys and state directories."""
        uid = int(sandbox.sh("id", "-u", "powercast").stdout)
        assert 0 < uid < 1000
        stat = sandbox.sh("stat", "-c", "%n %a %U %G", "/etc/powercast/keys", "/var/lib/powercast")
        assert stat.stdout.splitlines() == [
            "/etc/powercast/keys 700 root root",
            "/var/lib/powercast 750 powercast powercast",
        ]

    def test_program_runs(self, sandbox: Sandbox) -> None:
        """/usr/bin/powercast runs on the system python3 with the vendored dependencies."""
        done = sandbox.sh("powercast", "config", "check", "/etc/powercast/publisher.toml")
        assert done.stdout.startswith("/etc/powercast/publisher.toml: ok (publisher")
        # The controller's conffile names the site's fan program, not installed here.
        done = sandbox.sh(
            "powercast", "config", "check", "/etc/powercast/controller.toml", check=False
        )
        assert done.returncode == 78
        assert 'got "/usr/local/sbin/powercast-fans": no such file' in done.stderr
        done = sandbox.sh("powercast", "config", "check", "/etc/powercast/relay.toml")
        assert done.stdout.startswith("/etc/powercast/relay.toml: ok (relay")  # the conffile


class TestUnitFiles:
    @pytest.mark.parametrize("unit", UNITS)
    def test_verify(self, sandbox: Sandbox, unit: str) -> None:
        """systemd-analyze verify finds nothing to say about the installed unit."""
        done = sandbox.sh("systemd-analyze", "verify", f"/lib/systemd/system/{unit}", check=False)
        assert (done.returncode, done.stdout + done.stderr) == (0, "")

    @pytest.mark.parametrize("unit", UNITS)
    def test_security_exposure(self, sandbox: Sandbox, unit: str) -> None:
        """systemd-analyze security rates the unit at exposure 1.0 or lower."""
        done = sandbox.sh(
            "systemd-analyze", "security", "--no-pager", "--threshold=10", unit, check=False
        )
        overall = done.stdout.strip().splitlines()[-1]
        assert done.returncode == 0, overall
        print(overall)


class TestControllerUnit:
    def test_start_waits_for_ready(self, box: Sandbox) -> None:
        """systemctl start returns once the daemon sent READY=1: active, with its STATUS=."""
        cursor = box.cursor()
        started = time.monotonic()
        box.sh("systemctl", "start", CONTROLLER)
        took = time.monotonic() - started
        # READY=1 and STATUS= come in one notification, after the group was joined.
        assert box.prop(CONTROLLER, "ActiveState") == "active"
        assert box.prop(CONTROLLER, "StatusText").startswith("failsafe: ")
        exec_at = int(box.prop(CONTROLLER, "ExecMainStartTimestampMonotonic"))
        active_at = int(box.prop(CONTROLLER, "ActiveEnterTimestampMonotonic"))
        assert active_at - exec_at > 50_000  # us: Python started and joined first
        listening = box.event(CONTROLLER, "listening", after=cursor)
        ready = box.event(CONTROLLER, "ready", after=cursor)
        assert listening["_PID"] == ready["_PID"] == box.prop(CONTROLLER, "MainPID")
        print(
            f"systemctl start took {took:.2f} s, exec to READY {(active_at - exec_at) / 1e6:.2f} s"
        )

    def test_credentials(self, box: Sandbox) -> None:
        """The keys reach the daemon as credentials only it can read."""
        box.sh("systemctl", "start", CONTROLLER)
        stat = box.sh(
            "stat", "-c", "%n %a %U", f"/run/credentials/{CONTROLLER}/powercast_1.key"
        ).stdout.split()
        assert stat == [f"/run/credentials/{CONTROLLER}/powercast_1.key", "400", "powercast"]

    def test_journal_fields(self, box: Sandbox) -> None:
        """Transitions reach journald with POWERCAST_* fields, PRIORITY and a readable MESSAGE."""
        cursor = box.cursor()
        box.sh("systemctl", "start", CONTROLLER, PUBLISHER)
        box.set_reading("on_battery")
        entry = box.event(CONTROLLER, "transition", "POWERCAST_STATE=shedding", after=cursor)
        # The operator's query finds it:
        argv = ["journalctl", "-u", "powercast-controller", "-o", "json", "--no-pager"]
        matches = ["POWERCAST_EVENT=transition", "POWERCAST_STATE=shedding"]
        found = [json.loads(line) for line in box.sh(*argv, *matches).stdout.splitlines()]
        assert entry["__CURSOR"] in [e["__CURSOR"] for e in found]
        assert {(e["POWERCAST_EVENT"], e["POWERCAST_STATE"]) for e in found} == {
            ("transition", "shedding")
        }
        assert entry["PRIORITY"] == "6"
        assert entry["SYSLOG_IDENTIFIER"] == "powercast"
        assert entry["_TRANSPORT"] == "journal"
        assert entry["POWERCAST_PREVIOUS"] == "on_battery"
        assert entry["POWERCAST_FANS"] == "off"
        assert entry["POWERCAST_POWER"] == "on_battery"
        assert entry["POWERCAST_SOURCES"] == '["ups-test"]'
        assert entry["MESSAGE"].startswith("transition ")
        assert " previous=on_battery state=shedding " in entry["MESSAGE"]
        action = box.event(CONTROLLER, "action", "POWERCAST_STATE=shedding", after=cursor)
        assert action["POWERCAST_RESULT"] == "ok", action  # actions run inside the sandbox
        assert action["POWERCAST_OUTPUT"].strip() == "fans off"
        assert box.prop(CONTROLLER, "StatusText").startswith("shedding: ")

    def test_reload_valid_config(self, box: Sandbox) -> None:
        """systemctl reload with a valid config: reloaded by the same process, still active."""
        box.sh("systemctl", "start", CONTROLLER)
        pid = box.prop(CONTROLLER, "MainPID")
        cursor = box.cursor()
        box.write(
            "/etc/powercast/controller.toml", tomli_w.dumps(controller_config(temp_high_c=40.0))
        )
        box.sh("systemctl", "reload", CONTROLLER)
        box.event(CONTROLLER, "reloaded", after=cursor)
        assert box.prop(CONTROLLER, "MainPID") == pid
        assert box.prop(CONTROLLER, "ActiveState") == "active"

    def test_reload_invalid_config(self, box: Sandbox) -> None:
        """systemctl reload with a bad config: reload_failed names file and key; still active."""
        box.sh("systemctl", "start", CONTROLLER)
        pid = box.prop(CONTROLLER, "MainPID")
        cursor = box.cursor()
        bad = tomli_w.dumps(controller_config(temp_hihg_c=40.0))
        box.write("/etc/powercast/controller.toml", bad)
        box.sh("systemctl", "reload", CONTROLLER)
        failed = box.event(CONTROLLER, "reload_failed", after=cursor)
        assert failed["PRIORITY"] == "3"
        assert failed["POWERCAST_ERROR"].startswith("/etc/powercast/controller.toml: policy")
        assert "temp_hihg_c" in failed["POWERCAST_ERROR"]
        assert box.prop(CONTROLLER, "MainPID") == pid
        assert box.prop(CONTROLLER, "ActiveState") == "active"

    def test_no_controller_means_fans_on(self, box: Sandbox) -> None:
        """A fan PWM shed by the controller goes back on at `systemctl stop` (the daemon,
        then ExecStopPost's failsafe) and after a SIGKILL (the failsafe alone); with the
        leave-fans marker a stop leaves it shed."""
        pwm = "/var/lib/powercast/pwm1"
        config = controller_config()
        config["actuators"] = [{"kind": "hwmon", "path": pwm, "on_value": 255, "off_value": 0}]
        box.write("/etc/powercast/controller.toml", tomli_w.dumps(config))
        box.sh("install", "-d", "-m", "0750", "-o", "powercast", "/var/lib/powercast")
        box.sh("install", "-m", "0644", "-o", "powercast", "/dev/null", pwm)

        def reads(value: str) -> Callable[[], bool]:
            return lambda: box.sh("cat", pwm).stdout.strip() == value

        def shed() -> None:
            box.set_reading("on_battery")
            box.sh("systemctl", "start", CONTROLLER, PUBLISHER)
            box.wait_for("the fans shed", reads("0"), CONTROLLER)

        shed()
        cursor = box.cursor()
        box.sh("systemctl", "stop", CONTROLLER)
        assert reads("255")()
        box.event(CONTROLLER, "stopping_fans_on", after=cursor)
        said = [e.get("MESSAGE", "") for e in box.journal(CONTROLLER, after=cursor)]
        assert "powercast failsafe: 1 of 1 actuators set to fans on" in said, said

        shed()
        cursor = box.cursor()
        box.sh("systemctl", "kill", "--kill-who=main", "--signal=SIGKILL", CONTROLLER)
        box.wait_for("the failsafe after a kill", reads("255"), CONTROLLER, timeout=5.0)
        said = [e.get("MESSAGE", "") for e in box.journal(CONTROLLER, after=cursor)]
        assert "powercast failsafe: 1 of 1 actuators set to fans on" in said, said
        box.wait_for("the restarted controller sheds again", reads("0"), CONTROLLER)

        box.sh("sh", "-c", "echo maintenance > /run/powercast/controller.leave-fans")
        box.sh("systemctl", "stop", CONTROLLER)
        assert reads("0")()
        box.sh("systemctl", "stop", PUBLISHER)
        box.sh("rm", "-f", "/run/powercast/controller.leave-fans", pwm)

    def test_watchdog_restarts_hung_loop(self, box: Sandbox) -> None:
        """A stopped event loop misses its watchdog pings: killed (SIGABRT) and restarted."""
        # The unit's 10 s, shortened for the test; the daemon pings at half of what it gets.
        drop_in = box.units / DROP_IN_DIR / "test-watchdog.conf"
        drop_in.parent.mkdir(exist_ok=True)
        drop_in.write_text("[Service]\nWatchdogSec=2s\nRestartSec=0.5s\n")
        try:
            box.sh("systemctl", "daemon-reload")
            box.sh("systemctl", "start", CONTROLLER)
            pid = box.prop(CONTROLLER, "MainPID")
            restarts = int(box.prop(CONTROLLER, "NRestarts"))
            cursor = box.cursor()
            started = time.monotonic()
            box.sh("systemctl", "kill", "--kill-who=main", "--signal=SIGSTOP", CONTROLLER)

            def restarted() -> bool:
                return (
                    int(box.prop(CONTROLLER, "NRestarts")) == restarts + 1
                    and box.prop(CONTROLLER, "ActiveState") == "active"
                )

            box.wait_for("a restart", restarted, CONTROLLER)
            took = time.monotonic() - started
            assert box.prop(CONTROLLER, "MainPID") != pid
            said = [e.get("MESSAGE", "") for e in box.journal(CONTROLLER, after=cursor)]
            assert any("Watchdog timeout" in m for m in said), said
            assert any("SIGABRT" in m for m in said), said
            assert any("Failed with result 'watchdog'" in m for m in said), said
            print(f"hung loop killed and restarted in {took:.1f} s (WatchdogSec=2s)")
        finally:
            drop_in.unlink()
            box.sh("systemctl", "daemon-reload")

    def test_config_error_is_not_restarted(self, box: Sandbox) -> None:
        """A bad config at start exits 78, logged at error priority, and is not restarted;
        the failsafe after it says it had no config to act on."""
        box.write(
            "/etc/powercast/controller.toml", 'role = "controller"\n[policy]\ntemp_high_c = "hot"\n'
        )
        cursor = box.cursor()
        started = box.sh("systemctl", "start", CONTROLLER, check=False)
        assert started.returncode != 0
        assert box.prop(CONTROLLER, "ExecMainStatus") == "78"
        time.sleep(2.5)  # past RestartSec=2s: a restart would have happened by now
        assert box.prop(CONTROLLER, "NRestarts") == "0"
        assert box.prop(CONTROLLER, "ActiveState") == "failed"
        lines = [
            e for e in box.journal(CONTROLLER, after=cursor) if e.get("_TRANSPORT") == "stdout"
        ]
        assert {e["PRIORITY"] for e in lines} == {"3"}
        assert "policy.temp_high_c" in lines[0]["MESSAGE"]
        assert "powercast failsafe: " in lines[-1]["MESSAGE"]  # it ran, with what it had

    def test_missing_keys_directory(self, box: Sandbox) -> None:
        """Without /etc/powercast/keys systemd 252 fails the unit; the README's drop-in helps."""
        drop_in = box.units / DROP_IN_DIR / "no-credentials.conf"
        drop_in.parent.mkdir(exist_ok=True)
        box.sh("mv", "/etc/powercast/keys", "/etc/powercast/keys.away")
        try:
            box.write(
                "/etc/powercast/controller.toml",
                tomli_w.dumps({**controller_config(), "auth": {"mode": "off"}}),
            )
            assert box.sh("systemctl", "start", CONTROLLER, check=False).returncode != 0
            assert box.prop(CONTROLLER, "ExecMainStatus") == "243"  # EXIT_CREDENTIALS
            box.sh("systemctl", "reset-failed", CONTROLLER)
            drop_in.write_text("[Service]\nLoadCredential=\n")
            box.sh("systemctl", "daemon-reload")
            box.sh("systemctl", "start", CONTROLLER)
            assert box.prop(CONTROLLER, "ActiveState") == "active"
        finally:
            drop_in.unlink()
            box.sh("systemctl", "daemon-reload")
            box.sh("mv", "/etc/powercast/keys.away", "/etc/powercast/keys")

    def test_ipv6_group_on_interface_address(self, box: Sandbox) -> None:
        """The sandbox allows what an IPv6 group needs: AF_INET6 and the interface table."""
        ipv6 = {
            **controller_config(),
            "network": {"group": "ff15::42", "port": 5001, "interface": "::1"},
        }
        box.write("/etc/powercast/controller.toml", tomli_w.dumps(ipv6))
        box.sh("systemctl", "start", CONTROLLER)
        assert box.prop(CONTROLLER, "ActiveState") == "active"


class TestPublisherUnit:
    def test_start_waits_for_ready(self, box: Sandbox) -> None:
        """systemctl start returns once the publisher is announcing; STATUS= says what."""
        cursor = box.cursor()
        box.sh("systemctl", "start", PUBLISHER)
        assert box.prop(PUBLISHER, "ActiveState") == "active"
        assert box.prop(PUBLISHER, "StatusText").startswith("announcing ")
        ready = box.event(PUBLISHER, "ready", after=cursor)
        assert ready["POWERCAST_ROLE"] == "publisher"

    def test_reading_reaches_journal(self, box: Sandbox) -> None:
        """A changed reading is logged with its fields, under the publisher's unit."""
        cursor = box.cursor()
        box.sh("systemctl", "start", PUBLISHER)
        box.set_reading("on_battery", inlet=26.0)
        entry = box.event(PUBLISHER, "reading_changed", "POWERCAST_POWER=on_battery", after=cursor)
        assert entry["POWERCAST_TEMP_INLET"] == "26.0"

    def test_runtime_directory_outlives_one_unit(self, box: Sandbox) -> None:
        """Stopping one unit leaves /run/powercast, which the other unit uses too."""
        box.sh("systemctl", "start", PUBLISHER, CONTROLLER)
        box.sh("systemctl", "stop", CONTROLLER)
        assert box.sh("test", "-f", READING, check=False).returncode == 0
        assert box.prop(PUBLISHER, "ActiveState") == "active"


class TestRelayUnit:
    def test_ready_without_broker(self, box: Sandbox) -> None:
        """READY=1 does not wait for the broker: active at once, broker_unreachable logged
        and shown in STATUS= and on the control socket (in the shared /run/powercast)."""
        box.write("/etc/powercast/relay.toml", tomli_w.dumps(relay_config()))
        cursor = box.cursor()
        box.sh("systemctl", "start", RELAY)
        assert box.prop(RELAY, "ActiveState") == "active"
        ready = box.event(RELAY, "ready", after=cursor)
        assert ready["POWERCAST_ROLE"] == "relay"
        down = box.event(RELAY, "broker_unreachable", after=cursor)
        assert down["POWERCAST_BROKER"] == f"{UNREACHABLE}:1883"
        assert down["PRIORITY"] == "4"
        assert int(down["__MONOTONIC_TIMESTAMP"]) >= int(ready["__MONOTONIC_TIMESTAMP"])
        assert "broker unreachable" in box.prop(RELAY, "StatusText")
        status = box.sh("powercast", "status", "--config", "/etc/powercast/relay.toml").stdout
        assert "UNREACHABLE" in status, status
        assert (box.prop(RELAY, "ActiveState"), box.prop(RELAY, "NRestarts")) == ("active", "0")

    def test_reload_reaches_a_broker(self, box: Sandbox) -> None:
        """systemctl reload points the running relay at a broker, which it reaches through
        its sandbox (TCP to loopback): broker_recovered, by the same process."""
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(mosquitto).is_file():
            skip_or_fail("needs mosquitto: apt-get install mosquitto, or run .ci/run")
        box.write("/etc/powercast/relay.toml", tomli_w.dumps(relay_config()))
        box.write(
            "/run/mosquitto-test.conf",
            "listener 18830 127.0.0.1\nallow_anonymous true\npersistence false\n",
        )
        broker = "powercast-test-mosquitto"
        box.sh(
            "systemd-run",
            "--collect",
            f"--unit={broker}",
            mosquitto,
            "-c",
            "/run/mosquitto-test.conf",
        )
        try:
            cursor = box.cursor()
            box.sh("systemctl", "start", RELAY)
            pid = box.prop(RELAY, "MainPID")
            box.event(RELAY, "broker_unreachable", after=cursor)
            box.write("/etc/powercast/relay.toml", tomli_w.dumps(relay_config("127.0.0.1", 18830)))
            box.sh("systemctl", "reload", RELAY)
            back = box.event(RELAY, "broker_recovered", after=cursor)
            assert back["POWERCAST_BROKER"] == "127.0.0.1:18830"
            assert box.prop(RELAY, "MainPID") == pid
            assert "broker connected" in box.prop(RELAY, "StatusText")
        finally:
            box.sh("systemctl", "stop", broker, check=False)
