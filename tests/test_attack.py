"""A running controller under forged, tampered, truncated, oversized, replayed and
wrong-key datagrams: none of them changes its state."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import msgspec
import pytest

from powercast import control, net, wire
from powercast.secrets import keygen, load_keyring

from harness import (
    GROUP,
    controller_config,
    free_port,
    make_keys,
    publisher_config,
    running,
    set_reading,
    write_toml,
)

pytestmark = pytest.mark.system


def capture(sock: socket.socket, status: str, timeout: float = 3.0) -> bytes:
    """A legitimate datagram announcing ``status``, taken off the wire."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(deadline - time.monotonic())
        data = sock.recv(2048)
        if wire.decode(data).message.power.status.value == status:
            return data
    raise AssertionError(f"no {status} datagram seen")


class TestAttack:
    def test_nothing_forged_or_replayed_changes_the_state(self, tmp_path: Path) -> None:
        """Every kind of bad datagram is rejected and counted by reason; the state stays."""
        port = free_port()
        keys = make_keys(tmp_path / "keys")
        reading = tmp_path / "ups.json"
        set_reading(reading, "online")
        controller = write_toml(
            tmp_path / "c.toml",
            controller_config(port, keys, policy={"shed_after_s": 0.0, "restore_after_s": 0.0}),
        )
        publisher = write_toml(tmp_path / "p.toml", publisher_config(port, keys, reading))
        listener = net.open_receiver(GROUP, port, "127.0.0.1")
        listener.setblocking(True)
        with (
            running("control", "--config", str(controller)) as ctl,
            running("publish", "--config", str(publisher)),
        ):
            ctl.wait_for("transition", state="normal")
            set_reading(reading, "on_battery")
            ctl.wait_for("transition", state="shedding")
            old_battery = capture(listener, "on_battery")
            set_reading(reading, "online")
            ctl.wait_for("transition", state="normal")
            online = capture(listener, "online")
            listener.close()

            message = wire.decode(online).message
            lie = msgspec.structs.replace(
                message,
                seq=message.seq + 1000,
                change=message.change + 1000,
                power=wire.Power(wire.PowerStatus.ON_BATTERY),
            )
            stranger_dir = tmp_path / "stranger"
            stranger_dir.mkdir()
            keygen(1, stranger_dir / "1.key")
            keygen(9, stranger_dir / "9.key")
            stranger = load_keyring(stranger_dir)
            ours = load_keyring(keys)
            tampered = bytearray(online)
            tampered[-33] ^= 0x40  # a byte of the body; the tag no longer matches
            attacks = {
                "unsigned": wire.encode(lie),
                "unknown_key": wire.encode(lie, key_id=9, sign=stranger.signer(9)),
                "bad_tag": wire.encode(lie, key_id=1, sign=stranger.signer(1)),
                "tampered": bytes(tampered),
                "truncated": online[:-5],
                "oversized": online + bytes(1300 - len(online)),
                "replay": old_battery,
                "old_format": f"ATU {time.ctime()}".encode(),
                "old_epoch_out_of_window": wire.encode(
                    msgspec.structs.replace(lie, epoch=message.epoch ^ 1, sent=message.sent - 3600),
                    key_id=1,
                    sign=ours.signer(1),
                ),
                "garbage": bytes(range(256)) * 2,
            }
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
                )
                for _ in range(50):
                    for data in attacks.values():
                        s.sendto(data, (GROUP, port))
            deadline = time.monotonic() + 3
            reasons: set[str] = set()
            expected = {
                "unsigned",
                "unknown_key",
                "bad_tag",
                "length",
                "size",
                "replay",
                "magic",
                "clock",
            }
            while not expected <= reasons and time.monotonic() < deadline:
                reasons.add(ctl.wait_for("datagram_rejected", timeout=3)["reason"])
            assert expected <= reasons
            time.sleep(0.5)  # anything accepted would have moved the state by now
            assert ctl.proc.poll() is None
            states = [e["state"] for e in ctl.seen if e.get("event") == "transition"]
            assert states == ["normal", "on_battery", "shedding", "normal"]
            warnings = [e for e in ctl.seen if e.get("event") == "datagram_rejected"]
            assert (
                len(warnings) <= len(expected) + 2
            )  # rate-limited: 500 datagrams, ~1 line per reason


def ed25519_keys(tmp_path: Path) -> tuple[Path, Path]:
    """Publishers' private keys 1 (ups-a) and 2 (ups-b), and a controller's directory with
    only their public keys."""
    private, public = tmp_path / "publishers", tmp_path / "controller"
    private.mkdir(mode=0o700)
    public.mkdir(mode=0o755)
    for key_id in (1, 2):
        keygen(key_id, private / f"{key_id}.private", "ed25519")
        (public / f"{key_id}.public").write_bytes((private / f"{key_id}.public").read_bytes())
    return private, public


class TestSignatureFlood:
    def test_a_flood_of_forged_signatures_starves_only_its_publisher(self, tmp_path: Path) -> None:
        """Thousands of forged Ed25519 signatures a second claiming ups-a on battery, from
        another address: dropped over_budget (few are even checked) until that address is
        blocked and the kernel drops the rest; nothing forged is believed, the fans never
        shed, and ups-b stays fresh the whole time."""
        port = free_port()
        private, public = ed25519_keys(tmp_path)
        sock = tmp_path / "c.sock"
        controller = write_toml(
            tmp_path / "c.toml",
            controller_config(
                port,
                public,
                auth={
                    "keys_dir": str(public),
                    "scheme": "ed25519",
                    "publishers": {"ups-a": [1], "ups-b": [2]},
                },
                policy={"shed_after_s": 0.0, "restore_after_s": 0.0, "startup_grace_s": 0.5},
                control={"socket": str(sock)},
            ),
        )
        readings, publishers = {}, []
        for key_id, name in ((1, "ups-a"), (2, "ups-b")):
            readings[name] = tmp_path / f"{name}.json"
            set_reading(readings[name], "online")
            config = publisher_config(
                port,
                private,
                readings[name],
                id=name,
                heartbeat_s=0.1,
                tal_factor=10.0,
                auth={"keys_dir": str(private), "key_id": key_id, "scheme": "ed25519"},
            )
            publishers.append(write_toml(tmp_path / f"{name}.toml", config))
        lie = msgspec.msgpack.encode(
            ["ups-a", 7, 1, 1, time.time(), 60.0, ["on_battery", None, None, None, None], {}]
        )
        header = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.SIGNATURE_SIZE, 1, len(lie))
        with (
            running("control", "--config", str(controller)) as ctl,
            running("publish", "--config", str(publishers[0])),
            running("publish", "--config", str(publishers[1])),
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood,
        ):
            ctl.wait_for("transition", state="normal")
            time.sleep(0.5)  # past the start-up grace, when floods start being blocked
            flood.bind(("127.0.0.2", 0))  # another host, as far as the controller can tell
            flood.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
            )
            seen_b: list[bool] = []
            sent = 0
            end = time.monotonic() + 3.0
            next_look = time.monotonic() + 0.25
            while time.monotonic() < end:
                for _ in range(50):
                    flood.sendto(header + lie + os.urandom(64), (GROUP, port))
                sent += 50
                time.sleep(0.005)
                if time.monotonic() >= next_look:
                    next_look += 0.25
                    status = control.call(sock, {"request": "status"})["status"]
                    fresh = {p["id"]: p["fresh"] for p in status["publishers"]}
                    seen_b.append(fresh.get("ups-b", False))
            time.sleep(0.3)
            status = control.call(sock, {"request": "status"})["status"]
        rejected = status["datagrams"]["rejected"]
        assert sent > 3000
        assert rejected.get("over_budget", 0) > 0  # past the budget: not even checked
        assert 0 < rejected.get("bad_tag", 0) < sent // 10  # the budget's worth, checked
        assert status["datagrams"]["blocked_sources"] == ["127.0.0.2"]
        assert sum(rejected.values()) < sent // 2  # the rest never reached the controller
        assert all(seen_b), seen_b  # ups-b verified and fresh throughout
        by_id = {p["id"]: p for p in status["publishers"]}
        assert by_id["ups-a"]["power"]["status"] == "online"  # never the forgery
        assert by_id["ups-a"]["epoch"] != 7
        states = [e["state"] for e in ctl.seen if e.get("event") == "transition"]
        assert "shedding" not in states
        assert "on_battery" not in states
        assert status["zones"][0]["fans"] == "on"
