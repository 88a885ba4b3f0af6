"""`powercast tap`: decoded datagrams with their verification result."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness import GROUP, free_port, make_keys, network, running, write_toml

pytestmark = pytest.mark.system


class TestTap:
    def test_prints_good_and_bad_datagrams_as_json(self, tmp_path: Path) -> None:
        """Signed announcements show as good with their fields; old scripts' text as not_ours."""
        port = free_port()
        keys = make_keys(tmp_path / "keys")
        publisher = write_toml(
            tmp_path / "p.toml",
            {
                "role": "publisher",
                "id": "ups-tap",
                "heartbeat_s": 0.1,
                "network": network(port),
                "auth": {"keys_dir": str(keys), "key_id": 1},
                "log": {"format": "json"},
            },
        )
        tap = subprocess.Popen(
            [sys.executable, "-m", "powercast", "tap", "--group", GROUP, "--port", str(port),
             "--interface", "127.0.0.1", "--keys-dir", str(keys), "--json", "--count", "4",
             "--timeout", "10"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert tap.stdout is not None
        first = ""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            for _ in range(10):  # until the tap has joined (a loaded machine starts it slowly)
                s.sendto(b"ATU 2022-02-13 10:00:00", (GROUP, port))
                if select.select([tap.stdout], [], [], 1.0)[0]:
                    first = tap.stdout.readline()
                    break
        with running("publish", "--config", str(publisher)):
            out, _ = tap.communicate(timeout=15)
        assert tap.returncode == 0
        records = [json.loads(line) for line in [first, *out.splitlines()]]
        assert len(records) == 4
        assert records[0]["result"] == "not_ours"
        good = [r for r in records[1:] if r["result"] != "not_ours"]  # a late join's repeats
        assert good
        assert {r["result"] for r in good} == {"good"}
        assert {r["message"]["publisher"] for r in good} == {"ups-tap"}
        assert all(r["key_id"] == 1 for r in good)
        assert good[0]["message"]["power"]["status"] == "online"

    def test_wrong_key_and_timeout(self, tmp_path: Path) -> None:
        """With other keys, datagrams show as unknown_key; with none at all, exit 1 on timeout."""
        port = free_port()
        keys = make_keys(tmp_path / "keys", 2)
        other = make_keys(tmp_path / "other", 3)
        publisher = write_toml(
            tmp_path / "p.toml",
            {
                "role": "publisher",
                "heartbeat_s": 0.1,
                "network": network(port),
                "auth": {"keys_dir": str(keys), "key_id": 2},
                "log": {"format": "json"},
            },
        )
        argv = [sys.executable, "-m", "powercast", "tap", "--group", GROUP, "--port", str(port),
                "--keys-dir", str(other), "--count", "1", "--timeout", "10"]  # fmt: skip
        with running("publish", "--config", str(publisher)):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
        assert done.returncode == 0
        assert " unknown_key " in done.stdout
        quiet = [*argv[:-4], "--timeout", "0.3"]
        assert subprocess.run(quiet, capture_output=True, timeout=15, check=False).returncode == 1

    def test_nothing_heard_says_where_and_why(self, tmp_path: Path) -> None:
        """A window that closes on silence: NOTHING HEARD with the group, port, interface
        and window, the likely causes, and exit 1; with --json, one record saying so."""
        port = free_port()
        argv = [sys.executable, "-m", "powercast", "tap", "--group", GROUP, "--port", str(port),
                "--interface", "127.0.0.1", "--keys-dir", str(make_keys(tmp_path / "keys")),
                "--timeout", "0.3"]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
        assert done.returncode == 1
        lines = done.stdout.splitlines()
        assert lines[0] == f"NOTHING HEARD on {GROUP}:{port} via 127.0.0.1 in 0.3 s"
        assert lines[1] == "Likely causes:"
        assert any("no publisher" in line for line in lines[2:])
        assert any("network.interface" in line for line in lines[2:])
        as_json = subprocess.run(
            [*argv, "--json"], capture_output=True, text=True, timeout=15, check=False
        )
        assert as_json.returncode == 1
        (record,) = [json.loads(line) for line in as_json.stdout.splitlines()]
        assert record["result"] == "nothing_heard"
        assert (record["group"], record["port"], record["seconds"]) == (GROUP, port, 0.3)
        assert record["hints"]
