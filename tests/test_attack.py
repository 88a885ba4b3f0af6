"""A running controller under forged, tampered, truncated, oversized, replayed and
wrong-key datagrams: none of them changes its state."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import msgspec
import pytest

from powercast import net, wire
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
