"""Operator tools against real daemons and sockets: status, override, send, ping, metrics."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from powercast import cli, control
from powercast.secrets import load_keyring

from harness import (
    GROUP,
    Daemon,
    Notify,
    controller_config,
    free_port,
    make_keys,
    network,
    publisher_config,
    running,
    set_reading,
    write_toml,
)

RECORD = "import os, sys; open(sys.argv[1], 'a').write(os.environ['POWERCAST_STATE'] + '\\n')"

STATUS_KEYS = {
    "version", "role", "host", "pid", "time", "config", "control", "metrics",
    "metrics_error", "log_lines_dropped", "zones", "publishers", "datagrams", "rejections",
    "actions", "transitions", "keys", "network",
}  # fmt: skip
ZONE_KEYS = {
    "zone", "state", "fans", "level", "stage", "reason", "since", "for_s", "situation",
    "override", "actuators", "battery_for_s", "temp_high_c", "sheds", "flap_guard",
}  # fmt: skip
PUBLISHER_KEYS = {
    "id", "fresh", "age_s", "expires_in_s", "tal_s", "epoch", "seq", "change", "sent", "power",
    "temperatures",
}  # fmt: skip
PUBLISHER_STATUS_KEYS = {
    "version", "role", "host", "pid", "time", "config", "control", "metrics",
    "metrics_error", "log_lines_dropped", "announcing", "sources", "sent", "send_errors", "keys",
    "network",
}  # fmt: skip


def powercast(
    *args: str, user: int | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "powercast", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        user=user,
        check=False,
    )


def cli_as_nobody(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`powercast ARGV` run as user nobody (uid 65534), from a forked child: root cannot be
    refused, and nobody may not be able to run this venv's python. (status, stderr)"""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, run, leave without cleanup
        os.close(read_end)
        os.dup2(write_end, 2)
        sys.stderr = os.fdopen(2, "w")  # not pytest's capture
        code = 99
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.environ.update(env or {})
            code = cli.main(list(argv))
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        err = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


class Site:
    """Config files for one controller and one publisher on a free port, in ``root``."""

    def __init__(self, root: Path, *, metrics: bool | str = False) -> None:
        self.root = root
        self.port = free_port()
        self.keys = make_keys(root / "keys")
        self.reading = root / "ups.json"
        set_reading(self.reading, "online", 24.0, charge_pct=90.0)
        self.controller_sock = root / "controller.sock"
        self.publisher_sock = root / "publisher.sock"
        controller = controller_config(
            self.port,
            self.keys,
            persist={"state_dir": ""},
            control={"socket": str(self.controller_sock)},
            actions=[{"on": "shedding", "argv": [sys.executable, "-c", RECORD, str(root / "r")]}],
            log={"format": "json", "level": "debug"},
            metrics={"listen": metrics if isinstance(metrics, str) else "127.0.0.1:0"}
            if metrics
            else None,
        )
        self.controller = write_toml(root / "c.toml", controller)
        self.publisher = write_toml(
            root / "p.toml",
            publisher_config(
                self.port,
                self.keys,
                self.reading,
                id="ups-op",
                control={"socket": str(self.publisher_sock)},
            ),
        )

    @contextlib.contextmanager
    def both(self) -> Iterator[tuple[Daemon, Daemon]]:
        with (
            running("control", "--config", str(self.controller)) as ctl,
            running("publish", "--config", str(self.publisher)) as pub,
        ):
            ctl.wait_for("control_listening")
            pub.wait_for("control_listening")
            ctl.wait_for("transition", state="normal")
            yield ctl, pub

    def status(self, sock: Path) -> dict[str, Any]:
        done = powercast("status", "--json", "--socket", str(sock))
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


@pytest.mark.system
class TestStatus:
    def test_controller_status_json_has_the_documented_keys(self, site: Site) -> None:
        """`status --json` of a controller: version 1, the documented keys, what it believes."""
        with site.both():
            status = site.status(site.controller_sock)
        assert set(status) == STATUS_KEYS
        assert status["version"] == 1
        assert status["role"] == "controller"
        assert status["config"]["path"] == str(site.controller)
        assert status["control"] == str(site.controller_sock)
        (zone,) = status["zones"]
        assert set(zone) == ZONE_KEYS
        assert (zone["zone"], zone["state"], zone["fans"]) == ("default", "normal", "on")
        assert zone["reason"] == "power online"
        assert zone["situation"]["sources"] == ["ups-op"]
        (publisher,) = status["publishers"]
        assert set(publisher) == PUBLISHER_KEYS
        assert publisher["fresh"] is True
        assert 0 <= publisher["age_s"] < 1.0
        assert publisher["power"]["status"] == "online"
        assert publisher["power"]["charge_pct"] == 90.0
        assert publisher["temperatures"] == {"inlet": 24.0}
        assert status["datagrams"]["received"] > 0
        fp = load_keyring(site.keys).fingerprints[1]
        assert status["keys"] == {
            "dir": str(site.keys),
            "ids": [1],
            "schemes": {"1": "hmac-sha256"},
            "fingerprints": {"1": fp},
            "mode": "enforce",
            "scheme": "hmac-sha256",
            "publishers": {},
        }
        assert {"zone": "default", "from": "failsafe", "to": "normal", "count": 1} in status[
            "transitions"
        ]

    def test_rejects_and_actions_show(self, site: Site) -> None:
        """Rejected datagrams by reason, and a command's last outcome, are in the status."""
        with site.both() as (ctl, _):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
                )
                for _ in range(5):
                    s.sendto(b"hello, not ours", (GROUP, site.port))
            set_reading(site.reading, "on_battery", 24.0, charge_pct=90.0)
            ctl.wait_for("action", state="shedding")
            status = site.status(site.controller_sock)
            text = powercast("status", "--socket", str(site.controller_sock)).stdout
        assert status["datagrams"]["rejected"] == {"magic": 5}
        assert status["actions"]["last"]["shedding"]["result"] == "ok"
        assert status["actions"]["outcomes"] == {"shedding/ok": 1}
        assert status["zones"][0]["state"] == "shedding"
        assert "zone default: SHEDDING (fans off)" in text
        assert "rejected magic 5" in text
        assert "ups-op  fresh" in text

    def test_publisher_status(self, site: Site) -> None:
        """A publisher's status: what it announces, its sources' health, sent counts."""
        with site.both():
            status = site.status(site.publisher_sock)
            text = powercast("status", "--socket", str(site.publisher_sock)).stdout
        assert set(status) == PUBLISHER_STATUS_KEYS
        assert status["announcing"]["id"] == "ups-op"
        assert status["announcing"]["power"]["status"] == "online"
        assert status["sources"] == [
            {"name": status["sources"][0]["name"], "kind": "file", "ok": True, "error": None,
             "has_reading": True}
        ]  # fmt: skip
        assert status["sent"] > 0
        assert status["keys"]["key_id"] == 1
        assert "announcing as ups-op: online, 90%; inlet=24" in text
        fp = load_keyring(site.keys).fingerprints[1]
        assert status["keys"]["fingerprints"] == {"1": fp}
        assert f"signed with key 1 fp {fp} (hmac-sha256)" in text

    def test_status_finds_the_socket_in_the_config(self, site: Site) -> None:
        """`status --config FILE` reads control.socket from the file."""
        with site.both():
            done = powercast("status", "--config", str(site.publisher))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("publisher on ")


@pytest.mark.system
class TestCommandErrors:
    def test_daemon_not_running_is_one_line(self, tmp_path: Path) -> None:
        """No socket, or a socket nobody listens on: one line naming the path and what to do."""
        missing = tmp_path / "controller.sock"
        done = powercast("status", "--socket", str(missing))
        assert done.returncode == 1
        assert done.stderr.splitlines() == [
            f"powercast: {missing}: no such socket: the powercast controller is not running on"
            " this host, or it listens elsewhere (start it: systemctl start powercast-controller;"
            " or give --socket PATH)"
        ]
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(missing))
        stale.close()  # the file stays, nothing listens: as after a crash
        done = powercast("override", "--socket", str(missing), "--clear")
        assert done.returncode == 1
        (line,) = done.stderr.splitlines()
        assert line.startswith(
            f"powercast: {missing}: connection refused: the powercast controller is not"
        )

    def test_permission_denied_is_one_line(self, site: Site) -> None:
        """A user the socket's or its directory's mode shuts out gets one line saying how to
        get access, whether the socket is named or found in the runtime directory."""
        shared = Path(tempfile.mkdtemp(prefix="pc-perm-"))
        try:
            shared.chmod(0o755)
            sock = shared / "controller.sock"
            path = write_toml(
                site.root / "c2.toml",
                {"role": "controller", "network": network(site.port), "persist": {"state_dir": ""},
                 "auth": {"mode": "off"}, "control": {"socket": str(sock)},
                 "log": {"format": "json"}},
            )  # fmt: skip
            with running("control", "--config", str(path)) as ctl:
                ctl.wait_for("control_listening")
                runtime = {"RUNTIME_DIRECTORY": str(shared)}
                if os.getuid() == 0:
                    named = cli_as_nobody("status", "--socket", str(sock))
                    shared.chmod(0o700)  # now nobody cannot even look into the directory
                    found = cli_as_nobody("status", env=runtime)
                else:
                    sock.chmod(0)
                    done = powercast("status", "--socket", str(sock))
                    named = done.returncode, done.stderr
                    shared.chmod(0)
                    done = subprocess.run(
                        [sys.executable, "-m", "powercast", "status"],
                        capture_output=True, text=True, timeout=20, check=False,
                        env={**os.environ, **runtime},
                    )  # fmt: skip
                    found = done.returncode, done.stderr
                    shared.chmod(0o700)
        finally:
            for child in shared.iterdir():
                child.unlink()
            shared.rmdir()
        line = (
            f"powercast: {sock}: permission denied: run as root or as a member of group"
            " powercast (sudo usermod -aG powercast $USER, then log in again)\n"
        )
        assert named == (1, line)
        assert found == (1, line)

    def test_bad_override_is_refused_with_the_reason(self, site: Site) -> None:
        """An override for a zone that does not exist comes back as one line naming the key."""
        with site.both():
            done = powercast("override", "--socket", str(site.controller_sock), "--zone", "hall-z",
                             "--fans", "on", "--for", "1m", "--reason", "test")  # fmt: skip
        assert done.returncode == 1
        assert done.stderr.strip() == (
            f"powercast: {site.controller_sock}: override: zone: expected one of default,"
            " got 'hall-z'"
        )


@pytest.mark.system
class TestControlSocket:
    def test_mode_is_0600_without_the_group_and_0660_with_it(self, tmp_path: Path) -> None:
        """Root-only without a powercast group; group-readable with the group that exists."""
        lonely = control.open_socket(tmp_path / "a.sock", group="no-such-group-here")
        assert stat.S_IMODE((tmp_path / "a.sock").stat().st_mode) == 0o600
        mine = grp.getgrgid(os.getgid()).gr_name
        shared = control.open_socket(tmp_path / "b.sock", group=mine)
        info = (tmp_path / "b.sock").stat()
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == os.getgid()
        lonely.close()
        shared.close()

    def test_stale_socket_is_replaced_and_a_live_one_kept(self, tmp_path: Path) -> None:
        """A dead daemon's socket file is replaced; a live daemon's is never taken over."""
        path = tmp_path / "c.sock"
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(path))
        dead.close()
        live = control.open_socket(path)
        with pytest.raises(control.ControlError, match="another daemon is listening on it"):
            control.open_socket(path)
        live.close()
        path.unlink()
        path.write_text("not a socket")
        with pytest.raises(control.ControlError, match="exists and is not a socket"):
            control.open_socket(path)

    def test_stuck_oversized_and_garbage_clients_cannot_hurt_the_server(
        self, tmp_path: Path
    ) -> None:
        """A silent client is cut at the timeout, a huge or broken request gets an error,
        and meanwhile a good request is answered at once."""
        path = tmp_path / "c.sock"

        async def scenario() -> list[bytes]:
            server = control.Server({"status": lambda r, p: {"status": {"uid": p.uid}}}, 0.5)
            sock = control.open_socket(path)
            task = asyncio.create_task(server.serve(sock, path))

            async def exchange(data: bytes) -> bytes:
                reader, writer = await asyncio.open_unix_connection(str(path))
                writer.write(data)
                await writer.drain()
                answer = await reader.read()
                writer.close()
                return answer

            stuck_reader, stuck_writer = await asyncio.open_unix_connection(str(path))
            started = time.monotonic()
            good = await exchange(b'{"request": "status"}\n')
            fast = time.monotonic() - started
            huge = await exchange(b"x" * (control.MAX_REQUEST + 10))
            garbage = await exchange(b"{not json\n")
            unknown = await exchange(b'{"request": "reboot"}\n')
            cut = await asyncio.wait_for(stuck_reader.read(), 3.0)  # EOF at the timeout
            stuck_writer.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert fast < 0.4
            return [good, huge, garbage, unknown, cut]

        good, huge, garbage, unknown, cut = asyncio.run(scenario())
        assert json.loads(good) == {"ok": True, "status": {"uid": os.getuid()}}
        assert json.loads(huge)["error"] == f"request longer than {control.MAX_REQUEST} bytes"
        assert json.loads(garbage)["error"].startswith("request is not JSON")
        assert (
            json.loads(unknown)["error"] == "unknown request 'reboot' (this daemon knows: status)"
        )
        assert cut == b""
        assert not path.exists()  # removed when the server stopped


@pytest.mark.system
class TestOverride:
    def test_override_sets_logs_who_and_clears(self, site: Site) -> None:
        """Fans forced on for a while, logged with the caller's user and uid; --clear ends it."""
        with site.both() as (ctl, _):
            done = powercast("override", "--socket", str(site.controller_sock), "--fans", "on",
                             "--for", "30m", "--reason", "filter change")  # fmt: skip
            assert done.returncode == 0, done.stderr
            requested = ctl.wait_for("override_requested")
            ctl.wait_for("transition", state="manual_on")
            status = site.status(site.controller_sock)
            cleared = powercast("override", "--socket", str(site.controller_sock), "--clear")
            ctl.wait_for("transition", state="normal")
        assert done.stdout.splitlines()[0].startswith("zone default: manual_on (fans on)")
        assert requested["uid"] == os.getuid()
        assert requested["fans"] == "on"
        assert requested["for_s"] == 1800.0
        assert requested["why"] == "filter change"
        override = status["zones"][0]["override"]
        assert override["fans"] == "on"
        assert 1790 < override["left_s"] <= 1800
        assert override["why"] == "filter change"
        assert cleared.returncode == 0
        assert "override cleared" in cleared.stdout

    def test_override_needs_fans_duration_and_reason(self, tmp_path: Path) -> None:
        """Without --fans, --for or --reason nothing is sent: exit 2 and what is missing."""
        done = powercast("override", "--socket", str(tmp_path / "x.sock"), "--fans", "off")
        assert done.returncode == 2
        assert "--for, --reason needed" in done.stderr


@pytest.mark.system
class TestSend:
    def test_without_drill_nothing_goes_out(self, site: Site) -> None:
        """Without --drill, send prints what it would do, exits 2, and sends nothing."""
        with running("control", "--config", str(site.controller)) as ctl:
            ctl.wait_for("control_listening")
            done = powercast("send", "--config", str(site.publisher), "--power", "on_battery",
                             "--id", "drill-1", "--temp", "inlet=24.5")  # fmt: skip
            time.sleep(0.3)
            status = site.status(site.controller_sock)
        assert done.returncode == 2
        assert done.stdout.startswith("would send: drill-1 announces on_battery, inlet=24.5 °C")
        assert "not sent: add --drill" in done.stdout
        assert status["datagrams"]["received"] == 0

    def test_drill_is_signed_and_acted_on(self, site: Site) -> None:
        """With --drill, a signed burst under a fresh epoch reaches the controller as news."""
        with running("control", "--config", str(site.controller)) as ctl:
            ctl.wait_for("control_listening")
            done = powercast("send", "--config", str(site.publisher), "--power", "on_battery",
                             "--charge", "80", "--id", "drill-1", "--temp", "inlet=24.5",
                             "--drill")  # fmt: skip
            assert done.returncode == 0, done.stderr
            ctl.wait_for("transition", state="on_battery")
            status = site.status(site.controller_sock)
        assert done.stdout.startswith("sent 3 datagrams")
        (publisher,) = status["publishers"]
        assert publisher["id"] == "drill-1"
        assert publisher["power"]["charge_pct"] == 80.0
        assert publisher["seq"] == 3
        assert status["datagrams"]["accepted"]["new"] == 1
        assert status["datagrams"]["rejected"] == {}  # signed with the site's key

    def test_refuses_a_live_publishers_id(self, site: Site) -> None:
        """The id of the configured publisher is refused: it would lock that publisher out."""
        done = powercast("send", "--config", str(site.publisher), "--power", "online",
                         "--id", "ups-op", "--drill")  # fmt: skip
        assert done.returncode == 2
        assert "is the id of the publisher in" in done.stderr


@pytest.mark.system
class TestPing:
    def ping(self, site: Site, node: str, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "powercast", "ping", "--config", str(site.publisher),
             "--id", node, "--count", "30", "--interval", "0.1", "--timeout", "0.5", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def test_three_nodes_hear_each_other_and_controllers_ignore_pings(self, site: Site) -> None:
        """Three pingers on loopback: each hears the other two both ways with RTTs; a
        controller on the same group counts the pings as not ours and changes nothing."""
        with running("control", "--config", str(site.controller)) as ctl:
            ctl.wait_for("control_listening")
            procs = {n: self.ping(site, n, "--json") for n in ("node-a", "node-b", "node-c")}
            results = {n: p.communicate(timeout=20) for n, p in procs.items()}
            status = site.status(site.controller_sock)
        for node, (out, err) in results.items():
            assert procs[node].returncode == 0, err
            report = json.loads(out)
            assert report["ok"] is True
            assert report["self_heard"] is True
            peers = {p["node"]: p for p in report["peers"]}
            assert set(peers) == {"node-a", "node-b", "node-c"} - {node}
            for peer in peers.values():
                assert peer["heard"]
                assert peer["hears_us"]
                assert peer["auth"] == "good"
                assert peer["key_id"] == 1
                assert peer["loss_pct"] == 0.0
                assert peer["answers"] >= 15  # of 30: the three may start 1.5 s apart
                assert 0 < peer["rtt_ms"]["p50"] <= peer["rtt_ms"]["p99"] < 100
        assert status["datagrams"]["rejected"]["magic"] > 0
        assert status["publishers"] == []
        assert status["zones"][0]["state"] == "failsafe"  # pings are no data

    def test_alone_says_multicast_is_broken_with_hints(self, site: Site) -> None:
        """Nobody answering: exit 1, NOTHING HEARD, the expected peer missing, the usual causes."""
        proc = self.ping(site, "node-a", "--peer", "node-b")
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 1
        assert "NOTHING HEARD" in out
        assert "node-b  -        NO" in out
        assert "IGMP snooping" in out
        assert "TTL too low" in out


@pytest.mark.system
class TestMetrics:
    def test_scrape_a_running_controller(self, tmp_path: Path) -> None:
        """The endpoint serves counters read at scrape time: datagrams, freshness, state,
        transitions, action outcomes and their durations."""
        site = Site(tmp_path, metrics=True)
        with site.both() as (ctl, _):
            listening = next(e for e in ctl.seen if e.get("event") == "metrics_listening")
            set_reading(site.reading, "on_battery", 24.0, charge_pct=90.0)
            ctl.wait_for("action", state="shedding")
            url = f"http://{listening['address']}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read().decode()
                content_type = response.headers["Content-Type"]
            status = site.status(site.controller_sock)
        assert content_type.startswith("text/plain")
        samples = dict(
            line.rsplit(" ", 1) for line in body.splitlines() if line and not line.startswith("#")
        )
        assert float(samples["powercast_datagrams_received_total"]) > 0
        assert samples['powercast_datagrams_rejected_total{reason="magic"}'] == "0.0"
        assert samples['powercast_publisher_fresh{publisher="ups-op"}'] == "1.0"
        assert float(samples['powercast_publisher_age_seconds{publisher="ups-op"}']) < 1.0
        assert samples['powercast_state{state="shedding",zone="default"}'] == "1.0"
        assert samples['powercast_state{state="normal",zone="default"}'] == "0.0"
        assert samples['powercast_fans_on{zone="default"}'] == "0.0"
        key = 'powercast_transitions_total{from="on_battery",to="shedding",zone="default"}'
        assert samples[key] == "1.0"
        assert samples['powercast_actions_total{result="ok",state="shedding"}'] == "1.0"
        assert samples['powercast_action_duration_seconds_count{state="shedding"}'] == "1.0"
        assert (
            samples['powercast_action_duration_seconds_bucket{le="+Inf",state="shedding"}'] == "1.0"
        )
        assert status["metrics"] == listening["address"]

    def test_port_in_use_is_said_and_retried_while_the_fans_are_run(self, tmp_path: Path) -> None:
        """A metrics port another process holds: the controller still decides, status and
        systemd's STATUS= say `metrics: error "<listen>: address already in use"`, and the
        endpoint comes up once the port is free."""
        with socket.create_server(("127.0.0.1", 0)) as occupied:
            listen = f"127.0.0.1:{occupied.getsockname()[1]}"
            site = Site(tmp_path, metrics=listen)
            notify = Notify(tmp_path)
            env = {"NOTIFY_SOCKET": notify.path}
            with (
                running("control", "--config", str(site.controller), env=env) as ctl,
                running("publish", "--config", str(site.publisher)),
            ):
                failed = ctl.wait_for("metrics_unavailable")
                ready = notify.wait_for("READY=1")
                ctl.wait_for("transition", state="normal")  # the control job runs on
                status = site.status(site.controller_sock)
                text = powercast("status", "--socket", str(site.controller_sock)).stdout
                occupied.close()
                ctl.wait_for("metrics_recovered", timeout=20)
                with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as response:
                    assert response.status == 200
                after = site.status(site.controller_sock)
                while "metrics: error" in notify.wait_for("STATUS="):  # older lines first
                    pass
            notify.close()
        error = f"{listen}: address already in use"
        assert failed["error"] == "Address already in use"
        assert f"metrics: error {error} (retrying)" in ready
        assert (status["metrics"], status["metrics_error"]) == (None, error)
        assert f'metrics error "{error}" (retrying)' in text
        assert (after["metrics"], after["metrics_error"]) == (listen, None)

    def test_off_by_default(self, site: Site) -> None:
        """Without [metrics] listen, no endpoint is opened."""
        with site.both() as (ctl, _):
            status = site.status(site.controller_sock)
        assert status["metrics"] is None
        assert not any(e.get("event") == "metrics_listening" for e in ctl.seen)


@pytest.mark.unit
class TestOverrideRequest:
    def test_zone_fans_duration_and_reason_are_checked(self) -> None:
        """Unknown zones, a missing zone among several, bad fans, endless or zero durations
        and missing reasons are refused, naming the key; a good request becomes an Order."""
        zones = ["hall-a", "hall-b"]
        good = {"zone": "hall-a", "fans": "off", "for_s": 600, "reason": "drill"}
        assert control.parse_override(good, zones) == control.Order("hall-a", False, 600.0, "drill")
        assert control.parse_override(
            {"clear": True, "reason": "done"}, ["default"]
        ) == control.Order("default", None, 0.0, "done")
        for change, message in (
            ({"zone": None}, "zone: expected one of hall-a, hall-b, got none"),
            ({"zone": "hall-z"}, "zone: expected one of hall-a, hall-b, got 'hall-z'"),
            ({"fans": "maybe"}, 'fans: expected "on" or "off", got \'maybe\''),
            ({"for_s": 0}, "for_s: expected 1..86400 seconds"),
            ({"for_s": 86_401}, "for_s: expected 1..86400 seconds"),
            ({"for_s": True}, "for_s: expected 1..86400 seconds"),
            ({"reason": ""}, "reason: expected a short text"),
            ({"clear": True}, "clear: expected no fans or for_s with clear"),
        ):
            request = {k: v for k, v in {**good, **change}.items() if v is not None}
            with pytest.raises(control.RequestError, match=message.replace("(", r"\(")):
                control.parse_override(request, zones)

    def test_who_names_the_kernel_user_and_sudo(self) -> None:
        """who is the peer's user from its uid, with the sudo user when it differs."""
        peer = control.Peer(pid=1, uid=0, gid=0)
        assert control.who(peer, {"user": "mallory"}) == "root"
        assert control.who(peer, {"sudo_user": "alice"}) == "root (sudo by alice)"
        assert control.who(control.Peer(1, 2_000_000_000, 0), {}) == "uid 2000000000"

    def test_who_under_private_users_takes_the_clients_word_marked(self) -> None:
        """When the daemon sees only the overflow uid (PrivateUsers=yes), the name the client
        gives is logged, marked as the client's claim."""
        hidden = control.Peer(pid=1, uid=control.OVERFLOW_UID, gid=control.OVERFLOW_UID)
        assert control.who(hidden, {"user": "alice"}) == "alice (said by the client)"
        assert control.who(hidden, {"user": "alice bob\n"}) == "alice_bob_ (said by the client)"


@pytest.mark.unit
class TestDuration:
    def test_durations(self) -> None:
        """Seconds, or units s m h d, combined: 90, 90s, 30m, 1h30m, 1d."""
        from powercast.cli.operator import duration

        assert [duration(t) for t in ("90", "90s", "30m", "1h30m", "1d", "0.5s")] == [
            90.0, 90.0, 1800.0, 5400.0, 86400.0, 0.5,
        ]  # fmt: skip
        for bad in ("", "m", "30 m", "1h-5m", "soon", "inf", "nan", "-5"):
            with pytest.raises(argparse.ArgumentTypeError, match="expected a duration"):
                duration(bad)


@pytest.mark.unit
class TestPingProtocol:
    def test_signed_pings_verify_and_are_not_announcements(self, tmp_path: Path) -> None:
        """A signed ping verifies with the same key, shows unknown_key or bad_tag otherwise,
        and is rejected by the announcement decoder for its magic."""
        from powercast import ping, wire
        from powercast.secrets import load_keyring

        ours = load_keyring(make_keys(tmp_path / "ours", 1))
        theirs = load_keyring(make_keys(tmp_path / "theirs", 2))
        data = ping.encode(ping.Probe("ping", "node-a", 7, 1, count=10), ours, 1)
        assert ping.decode(data, ours) == (ping.Probe("ping", "node-a", 7, 1, count=10), "good")
        assert ping.decode(data, theirs) is not None
        assert ping.decode(data, theirs)[1] == "unknown_key"  # type: ignore[index]
        tampered = data[:-1] + bytes([data[-1] ^ 1])
        assert ping.decode(tampered, ours)[1] == "bad_tag"  # type: ignore[index]
        assert ping.decode(b"PWRC" + data[4:], ours) is None
        with pytest.raises(wire.DecodeError) as caught:
            wire.decode(data)
        assert caught.value.reason == "magic"

    def test_ed25519_pings_verify_with_the_public_key(self) -> None:
        """A node holding an Ed25519 private key signs its pings; a node holding only the
        public key verifies them (good), and one without it says unknown_key."""
        from powercast import ping
        from powercast.auth import Keyring, public_key

        seed = bytes(range(32))
        signing = Keyring.from_keys({}, Path("a"), private={3: seed})
        verifying = Keyring.from_keys({}, Path("b"), public={3: public_key(seed)})
        probe = ping.Probe("ping", "node-a", 7, 1, count=10)
        data = ping.encode(probe, signing, 3)
        assert data[5] == 64  # the tag length: an Ed25519 signature
        assert ping.decode(data, verifying) == (probe, "good")
        assert ping.decode(data, Keyring.from_keys({3: seed}, Path("c"))) == (probe, "unknown_key")
        assert ping.decode(data[:-1] + bytes([data[-1] ^ 1]), verifying) == (probe, "bad_tag")


@pytest.mark.system
class TestKeysDiffer:
    def test_controller_with_another_key_says_which_file_to_copy(self, tmp_path: Path) -> None:
        """A controller and a publisher on loopback holding different keys with the same id:
        the controller, which lists the publisher, warns keys_differ naming it, the key id,
        its own key's fingerprint and file; its status shows the sender's last rejection
        with the hint; the publisher's status shows its own, different fingerprint; the fans stay
        as failing safe left them (every datagram counted and dropped)."""
        site = Site(tmp_path)
        controller = tomllib.loads(site.controller.read_text())
        controller["policy"]["publishers"] = ["ups-op"]
        write_toml(site.controller, controller)
        other = make_keys(tmp_path / "publisher-keys")
        write_toml(
            site.publisher,
            publisher_config(
                site.port,
                other,
                site.reading,
                id="ups-op",
                control={"socket": str(site.publisher_sock)},
            ),
        )
        ours = load_keyring(site.keys).fingerprints[1]
        theirs = load_keyring(other).fingerprints[1]
        assert ours != theirs
        with (
            running("control", "--config", str(site.controller)) as ctl,
            running("publish", "--config", str(site.publisher)) as pub,
        ):
            warning = ctl.wait_for("keys_differ", timeout=10)
            pub.wait_for("control_listening")
            status = site.status(site.controller_sock)
            text = powercast("status", "--socket", str(site.controller_sock)).stdout
            published = powercast("status", "--socket", str(site.publisher_sock)).stdout
        assert warning["level"] == "warning"
        assert warning["publisher"] == "ups-op"
        assert warning["source"] == "127.0.0.1"
        assert (warning["key_id"], warning["this_node"]) == (1, f"key 1 fp {ours}")
        assert warning["key_file"] == str(site.keys / "1.key")
        assert warning["hint"].startswith("the keys differ: the datagram is signed with key 1,")
        assert f"key 1 fp {ours} ({site.keys / '1.key'})" in warning["hint"]
        assert f"to this node's {site.keys / '1.key'}" in warning["hint"]
        assert f"signed with key 1 fp {theirs}" in published
        assert [e for e in ctl.seen if e.get("event") == "transition"] == []
        assert status["publishers"] == []
        assert status["datagrams"]["rejected"]["bad_tag"] >= 1
        (last,) = status["rejections"]
        assert (last["source"], last["publisher"]) == (warning["source"], "ups-op")
        assert (last["reason"], last["hint"]) == ("bad_tag", warning["hint"])
        assert f"{warning['source']} (ups-op): bad_tag with key id 1" in text
        assert f"keys     key 1 fp {ours} (hmac-sha256) in {site.keys}" in text
