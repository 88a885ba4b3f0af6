"""The relay: the group <-> a topic on an MQTT broker, byte for byte, each datagram once.

The pure core first; then real daemons through a real Mosquitto on loopback (no root
needed); then two sites as network namespaces with no route between them, whose only
link is one relay each (or two) through a broker in a third namespace.

Broker tests need mosquitto, site tests root and network namespaces: they skip with the
reason otherwise, and fail instead under POWERCAST_RELAY_TESTS=require (.ci/run).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import netbed
import paho.mqtt.client as paho
import pytest
import sites
import tomli_w
from netbed import Bed, Host, NetDaemon
from sites import Mosquitto, Pki, Sites, relay_config

from powercast import config as cfg
from powercast import control, wire
from powercast import status as report
from powercast.auth import Gate, Keyring, public_key
from powercast.relay import BATCH_MAGIC, MAX_PACKET, TABLE_SIZE, WINDOW, Relay, pack, unpack
from powercast.runtime.relay import credential, tls_context
from powercast.secrets import keygen, load_keyring
from powercast.sources.base import SourceError

from harness import Daemon, free_port, make_keys, running, set_reading, write_toml

CLIENT_CERT_REFUSALS = ("unknown ca", "certificate required")
LATE_ALERT = "EOF occurred in violation of protocol"
"""What OpenSSL says of a handshake the peer closed before its alert was read."""

GROUP_A = "239.255.43.1"
GROUP_B = "239.255.43.2"
HEARTBEAT_S = 0.2
TAL_S = HEARTBEAT_S * 3
MARGIN_S = 0.6
"""Beyond the TAL: the controller's timer, a loaded machine."""
NEWS_S = 3.0
"""A reading changing at the publisher -> the transition at a controller behind two relays
(typically under 0.1 s; the rest is room for a machine busy with other tests)."""
BOOT_S = 10.0


def require(reason: str | None) -> None:
    """Skip with ``reason``; under POWERCAST_RELAY_TESTS=require, fail instead."""
    if reason is None:
        return
    if os.environ.get("POWERCAST_RELAY_TESTS") == "require":
        pytest.fail(f"{reason}, and POWERCAST_RELAY_TESTS=require")
    pytest.skip(reason)


# --- datagrams for the core ------------------------------------------------------------------


def datagram(
    seq: int,
    *,
    publisher: str = "ups-1",
    epoch: int = 7,
    sent: float | None = None,
    keyring: Keyring | None = None,
    key_id: int = 1,
) -> bytes:
    """An announcement as a publisher sends it; signed with ``key_id`` given a keyring."""
    message = wire.Announcement(
        publisher=publisher,
        epoch=epoch,
        seq=seq,
        change=1,
        sent=time.time() if sent is None else sent,
        tal=3.0,
        power=wire.Power(wire.PowerStatus.ONLINE),
        temperatures={},
    )
    if keyring is None:
        return wire.encode(message)
    return wire.encode(message, key_id=key_id, sign=keyring.signer(key_id))


@pytest.mark.unit
class TestRelayCore:
    def test_new_datagrams_go_on_and_repeats_stop(self) -> None:
        """A datagram goes on once; the very same bytes again (a loop, an echo) are seen."""
        relay = Relay()
        now = time.time()
        one, two = datagram(1), datagram(2)
        assert relay.admit(one, "segment", now) is None
        assert relay.admit(one, "broker", now) == "seen"
        assert relay.admit(two, "broker", now) is None
        assert relay.admit(two, "segment", now) == "seen"
        assert relay.counters["segment_seen"] == 1
        assert relay.counters["broker_seen"] == 1

    def test_only_exact_repeats_stop(self) -> None:
        """An older seq, another epoch, another publisher: each goes on; judging replays
        is the controllers' work, done on datagrams they verified."""
        relay = Relay()
        now = time.time()
        assert relay.admit(datagram(5), "segment", now) is None
        assert relay.admit(datagram(4), "broker", now) is None
        assert relay.admit(datagram(1, epoch=8), "broker", now) is None
        assert relay.admit(datagram(1, publisher="ups-2"), "broker", now) is None

    def test_forged_high_seq_blocks_nothing(self) -> None:
        """Keyless, a forged seq 2^63-1 for a publisher is carried like any datagram, and
        the publisher's real datagrams after it still go on, in both directions."""
        relay = Relay()
        now = time.time()
        assert relay.admit(datagram(2**63 - 1), "broker", now) is None
        assert relay.admit(datagram(2**63 - 1, sent=now - 1), "segment", now) is None
        for seq in (1, 2, 3):
            assert relay.admit(datagram(seq), "segment", now) is None
            assert relay.admit(datagram(seq, sent=now + seq), "broker", now) is None
        assert relay.counters["segment_seen"] == relay.counters["broker_seen"] == 0

    def test_what_is_remembered_is_bounded(self) -> None:
        """At most ``window`` datagrams are remembered, oldest out first: a datagram
        is forgotten after that many others, forged or not."""
        relay = Relay(window=8)
        now = time.time()
        first = datagram(2**63 - 1)
        relay.admit(first, "broker", now)
        for seq in range(20):
            relay.admit(datagram(seq), "broker", now)
        assert len(relay.recent) == 8
        assert relay.admit(first, "broker", now) is None
        assert WINDOW >= 1024

    def test_keyed_relay_drops_what_it_cannot_verify(self, tmp_path: Path) -> None:
        """With keys, an unsigned, unknown-key or wrongly tagged datagram is dropped and
        counted under its reason, before it is remembered: the real one still goes on."""
        keyring = load_keyring(make_keys(tmp_path / "keys", 1))
        other = load_keyring(make_keys(tmp_path / "other", 1, 2))
        relay = Relay(Gate(keyring))
        now = time.time()
        real = datagram(1, keyring=keyring)
        forged = {
            "unsigned": datagram(1),
            "unknown_key": datagram(2**63 - 1, keyring=other, key_id=2),
            "bad_tag": datagram(2**63 - 1, keyring=other),
        }
        for reason, data in forged.items():
            assert relay.admit(data, "broker", now) == reason
            assert relay.counters[f"broker_{reason}"] == 1
        assert relay.admit(real[:-1] + bytes([real[-1] ^ 1]), "segment", now) == "bad_tag"
        assert len(relay.recent) == 0
        assert relay.admit(real, "segment", now) is None
        assert relay.admit(datagram(2, keyring=keyring), "broker", now) is None
        assert relay.admit(real, "broker", now) == "seen"

    def test_keyed_relay_checks_the_key_speaks_for_the_publisher(self, tmp_path: Path) -> None:
        """With [auth] publishers, a good tag by a key bound to another publisher is
        wrong_key at the relay: it goes no further and is not remembered."""
        keyring = load_keyring(make_keys(tmp_path / "keys", 1, 2))
        relay = Relay(Gate.build(keyring, {"ups-1": [1], "ups-2": [2]}, 50.0, 1000.0))
        now = time.time()
        stolen = datagram(2**63 - 1, keyring=keyring, key_id=2)  # ups-1 in key 2's words
        assert relay.admit(stolen, "broker", now) == "wrong_key"
        assert relay.counters["broker_wrong_key"] == 1
        assert len(relay.recent) == 0
        assert relay.admit(datagram(1, keyring=keyring), "broker", now) is None

    def test_forgeries_cannot_flush_a_keyed_relays_memory(self, tmp_path: Path) -> None:
        """With keys, no number of forgeries pushes a real datagram out of the window: the
        loop it cuts stays cut."""
        keyring = load_keyring(make_keys(tmp_path / "keys", 1))
        relay = Relay(Gate(keyring), window=8)
        now = time.time()
        real = datagram(1, keyring=keyring)
        assert relay.admit(real, "segment", now) is None
        stranger = load_keyring(make_keys(tmp_path / "other", 1))
        for seq in range(100):
            relay.admit(datagram(2**63 - 1 - seq, keyring=stranger), "broker", now)
        assert relay.admit(real, "broker", now) == "seen"

    def test_keyed_relay_budgets_signatures_from_the_broker(self) -> None:
        """Forged Ed25519 signatures from the broker beyond the claimed publisher's budget
        are dropped unchecked; another publisher's real ones still go on."""
        seeds = {1: bytes(range(32)), 2: bytes(range(1, 33))}
        signing = Keyring.from_keys({}, Path("p"), private=seeds)
        public = {i: public_key(seed) for i, seed in seeds.items()}
        relay = Relay(Gate.build(Keyring.from_keys({}, Path("r"), public=public), {}, 10.0, 1e6))
        now = time.time()
        assert (
            relay.admit(datagram(1, keyring=signing, key_id=2, publisher="ups-2"), "broker", now)
            is None
        )
        forger = Keyring.from_keys({}, Path("f"), private={1: bytes(32)})
        for seq in range(200):
            relay.admit(datagram(seq, keyring=forger, key_id=1), "broker", now)
        # the newcomers' two seconds' worth, less the one ups-2 spent before it was known
        assert relay.counters["broker_bad_tag"] == 19
        assert relay.counters["broker_over_budget"] == 181
        real = datagram(2, keyring=signing, key_id=2, publisher="ups-2")
        assert relay.admit(real, "broker", now) is None

    def test_oversize_is_dropped_unread(self) -> None:
        """Bytes longer than any datagram are counted as oversize and go nowhere."""
        relay = Relay()
        assert relay.admit(b"\0" * (wire.MAX_DATAGRAM + 1), "broker", time.time()) == "oversize"
        assert relay.counters["broker_oversize"] == 1
        assert MAX_PACKET >= 2 * wire.MAX_DATAGRAM

    def test_undecodable_is_counted_with_its_reason(self) -> None:
        """Bytes that do not decode go nowhere; the reason comes back and is counted."""
        relay = Relay()
        now = time.time()
        assert relay.admit(b"hello", "segment", now) == "truncated"
        assert relay.admit(b"XXXX" + datagram(1)[4:], "broker", now) == "magic"
        assert relay.admit(datagram(1)[:-1], "broker", now) == "length"
        assert relay.counters["segment_undecodable"] == 1
        assert relay.counters["broker_undecodable"] == 2
        assert len(relay.recent) == 0

    def test_expired_from_the_broker_is_dropped(self) -> None:
        """A datagram from the broker whose TAL ran out before it arrived stops there;
        from the segment, the same bytes go on (there it was just heard)."""
        relay = Relay()
        old = datagram(1, sent=time.time() - 3.5)
        assert relay.admit(old, "broker", time.time()) == "expired"
        assert relay.admit(old, "segment", time.time()) is None

    def test_publishers_are_bounded(self) -> None:
        """The publishers shown in the status keep at most TABLE_SIZE ids, oldest out."""
        relay = Relay(table_size=8)
        now = time.time()
        for n in range(20):
            relay.admit(datagram(1, publisher=f"ups-{n}"), "broker", now)
        assert len(relay.publishers) == 8
        assert "ups-19" in relay.publishers
        assert "ups-0" not in relay.publishers
        assert TABLE_SIZE >= 1024

    def test_relays_on_one_segment_do_not_ping_pong(self) -> None:
        """Four relays, two per segment, all joined by one broker, in the worst order:
        each datagram crosses the broker at most once per relay, and reaches each segment
        at most once per relay on it; then it stops."""
        relays = {name: Relay() for name in ("a1", "a2", "b1", "b2")}
        segment = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}
        now = time.time()
        published: list[tuple[str, bytes]] = []
        injected: dict[str, list[bytes]] = {"A": [], "B": []}
        heard = datagram(1)
        work = [(name, "segment", heard) for name in ("a1", "a2")]  # heard in A
        while work:
            name, side, data = work.pop()
            if relays[name].admit(data, side, now) is not None:  # type: ignore[arg-type]
                continue
            if side == "segment":  # to the broker, which gives it to every other relay
                published.append((name, data))
                work += [(other, "broker", data) for other in relays if other != name]
            else:  # onto the segment: every relay there hears it, the sender included
                injected[segment[name]].append(data)
                work += [(r, "segment", data) for r in relays if segment[r] == segment[name]]
        assert len(published) <= 4
        assert 1 <= len(injected["B"]) <= 2
        assert len(injected["A"]) <= 2  # a relay that got the broker's copy first


@pytest.mark.unit
class TestBatches:
    def test_a_lone_datagram_goes_bare(self) -> None:
        """One datagram is published as it is: no header, nothing for old relays to learn."""
        one = datagram(1)
        assert pack([one]) == [(one, 1)]
        assert unpack(one) == [one]

    def test_a_burst_round_trips_byte_for_byte(self) -> None:
        """Many datagrams: batches under the limit, each datagram back exactly, in order."""
        burst = [datagram(seq) for seq in range(1, 200)]
        payloads = pack(burst, limit=4096)
        assert len(payloads) > 1
        assert all(len(p) <= 4096 for p, _ in payloads)
        assert all(p.startswith(BATCH_MAGIC) for p, n in payloads if n > 1)
        assert sum(n for _, n in payloads) == len(burst)
        assert [d for p, _ in payloads for d in (unpack(p) or [])] == burst

    def test_a_batch_is_undecodable_to_a_relay_that_knows_only_datagrams(self) -> None:
        """A relay of the bare format counts a batch as undecodable (magic), never as a
        datagram."""
        burst = [datagram(seq) for seq in range(1, 4)]
        (payload, _), *_ = pack(burst)
        core = Relay()
        assert core.admit(payload, "broker", time.time()) == "magic"

    def test_what_does_not_unpack_whole_is_refused(self) -> None:
        """A length past the end, a zero length, an empty batch, an unknown version: None."""
        one = datagram(1)
        whole, _ = pack([one, one])[0]
        assert unpack(whole[:-1]) is None
        assert unpack(BATCH_MAGIC + b"\x00\x00") is None
        assert unpack(BATCH_MAGIC) is None
        assert unpack(b"PWRB\x02" + whole[5:]) is None
        assert unpack(whole + b"\x00") is None


@pytest.mark.unit
class TestBrokerFiles:
    def test_bare_names_are_systemd_credentials(self) -> None:
        """A bare file name is looked up in $CREDENTIALS_DIRECTORY when systemd set it; a
        path is taken as it is."""
        env = {"CREDENTIALS_DIRECTORY": "/run/credentials/powercast-relay.service"}
        assert credential("relay.key", env) == f"{env['CREDENTIALS_DIRECTORY']}/relay.key"
        assert credential("/etc/powercast/relay.key", env) == "/etc/powercast/relay.key"
        assert credential("relay.key", {}) == "relay.key"

    def test_tls_context_verifies_by_default(self, tmp_path: Path) -> None:
        """The context checks the certificate and the host name; a key others can read is
        refused with its file, mode and the fix."""
        pki = Pki(tmp_path / "pki")
        broker = cfg.Broker(
            tls=True,
            ca_file=pki.path("ca.crt"),
            cert_file=pki.path("client.crt"),
            key_file=pki.path("client.key"),
        )
        context = tls_context(broker)
        assert context.check_hostname is True
        assert context.verify_mode == ssl.CERT_REQUIRED
        Path(pki.path("client.key")).chmod(0o640)
        tls_context(broker)  # root:powercast 0640 is how it is deployed
        Path(pki.path("client.key")).chmod(0o604)
        with pytest.raises(SourceError, match=r"broker.key_file: .*client.key: readable or"):
            tls_context(broker)


@pytest.mark.unit
class TestRelayConfig:
    def test_defaults_and_role(self) -> None:
        """`role = "relay"` alone is a whole config; `config init` writes one back."""
        config = cfg.parse('role = "relay"\n', "r.toml")
        assert isinstance(config, cfg.RelayConfig)
        assert config.broker.port == 1883
        assert config.direction == "both"
        again = cfg.parse(cfg.dumps(cfg.defaults("relay")), "init.toml")
        assert again == config
        assert cfg.DEFAULT_PATHS["relay"] == Path("/etc/powercast/relay.toml")

    def test_bad_values_name_the_key(self) -> None:
        """A wildcard topic, an unknown direction, a password without a user: one line each."""
        cases = {
            '[broker]\ntopic = "powercast/#"': "broker.topic: expected a topic without + # or",
            'direction = "sideways"': "direction: expected one of 'both', 'to_broker'",
            '[broker]\npassword_file = "/p"': "broker.username: expected a user name",
            "[broker]\nkeepalive_s = 1": "broker.keepalive_s: expected an integer >= 2",
            '[broker]\nca_file = "/ca.crt"': "broker.tls: expected true to go with ca_file",
            '[broker]\ntls = true\ncert_file = "/c"': "broker.key_file: expected it to go with",
            '[broker]\ntls = true\nkey_file = "/k"': "broker.cert_file: expected it to go with",
        }
        for text, expected in cases.items():
            with pytest.raises(cfg.ConfigError) as err:
                cfg.parse(f'role = "relay"\n{text}\n', "r.toml")
            assert expected in str(err.value), str(err.value)


# --- real daemons through a real broker on loopback -------------------------------------------


def publisher_config(
    keys: Path, reading: Path, network: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return {
        "role": "publisher",
        "id": "ups-far",
        "heartbeat_s": HEARTBEAT_S,
        "network": {"ttl": 1, "loop": True, **network},
        "auth": {"keys_dir": str(keys), "key_id": 1},
        "sources": [{"kind": "file", "path": str(reading), "interval_s": 0.02}],
        "log": {"format": "json"},
        **extra,
    }


def controller_config(keys: Path, network: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": "controller",
        "network": network,
        "auth": {"keys_dir": str(keys)},
        "policy": {"shed_after_s": 0.3, "restore_after_s": 0.3},
        "log": {"format": "json"},
    }


def states(daemon: Daemon | NetDaemon) -> list[str]:
    """States entered so far (seen events and the queue), in order."""
    while not daemon.events.empty():
        daemon.seen.append(daemon.events.get_nowait())
    return [
        e["state"]
        for e in daemon.seen
        if e.get("event") == "transition" and e.get("previous") != e["state"]
    ]


def events(daemon: Daemon | NetDaemon, name: str) -> list[dict[str, Any]]:
    while not daemon.events.empty():
        daemon.seen.append(daemon.events.get_nowait())
    return [e for e in daemon.seen if e.get("event") == name]


def summary(daemon: Daemon | NetDaemon) -> dict[str, Any]:
    """The counters a relay logs when it stops (stops it)."""
    daemon.stop()
    return daemon.wait_for("relay_summary", timeout=2)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    require(sites.mosquitto_missing())
    made = Mosquitto(tmp_path)
    made.start()
    try:
        yield made
    finally:
        made.stop()


class Loopback:
    """Segment A (GROUP_A) with a publisher and relay A; segment B (GROUP_B) with relay B
    and a controller. Only the relays and the broker join them."""

    def __init__(
        self, tmp_path: Path, broker: Mosquitto, login: dict[str, Any] | None = None
    ) -> None:
        self.port = free_port()
        self.keys = make_keys(tmp_path / "keys")
        self.reading = tmp_path / "ups.json"
        set_reading(self.reading, "online")
        a = {"group": GROUP_A, "port": self.port, "interface": "127.0.0.1"}
        b = {"group": GROUP_B, "port": self.port, "interface": "127.0.0.1"}
        self.topic = topic = f"powercast/test-{self.port}"
        where = (broker.address, broker.port)
        for name, net in (("ra", a), ("rb", b)):
            config = relay_config(net, *where, topic=topic, control=_socket(tmp_path, name))
            config["metrics"] = {"listen": "127.0.0.1:0"}
            config["broker"].update(login or {})
            write_toml(tmp_path / f"{name}.toml", _looped(config))
        self.relay_a_config, self.relay_b_config = tmp_path / "ra.toml", tmp_path / "rb.toml"
        pub = publisher_config(self.keys, self.reading, a, control=_socket(tmp_path, "p"))
        self.pub_config = write_toml(tmp_path / "p.toml", pub)
        ctl = {**controller_config(self.keys, b), "control": _socket(tmp_path, "c")}
        self.ctl_config = write_toml(tmp_path / "c.toml", ctl)


def _socket(directory: Path, name: str) -> dict[str, str]:
    """A control socket of the test's own: daemons on one host must not share one."""
    return {"socket": str(directory / f"{name}.sock")}


def _looped(config: dict[str, Any]) -> dict[str, Any]:
    """On one host, what a relay re-sends must loop back to the controller beside it."""
    config["network"]["loop"] = True
    return config


@contextlib.contextmanager
def loopback_daemons(lo: Loopback) -> Iterator[dict[str, Daemon]]:
    with (
        running("relay", "--config", str(lo.relay_a_config)) as relay_a,
        running("relay", "--config", str(lo.relay_b_config)) as relay_b,
        running("control", "--config", str(lo.ctl_config)) as ctl,
    ):
        for relay in (relay_a, relay_b):
            relay.wait_for("broker_connected", timeout=BOOT_S)
        ctl.wait_for("ready", timeout=BOOT_S)
        with running("publish", "--config", str(lo.pub_config)) as pub:
            yield {"relay_a": relay_a, "relay_b": relay_b, "ctl": ctl, "pub": pub}


@pytest.mark.system
class TestRelayDaemon:
    def test_outage_crosses_the_broker(self, tmp_path: Path, broker: Mosquitto) -> None:
        """A publisher on one group makes a controller on another shed and restore: the
        only way between them is relay -> broker -> relay."""
        lo = Loopback(tmp_path, broker)
        with loopback_daemons(lo) as d:
            d["ctl"].wait_for("transition", timeout=BOOT_S, state="normal")
            set_reading(lo.reading, "on_battery")
            d["ctl"].wait_for("transition", timeout=NEWS_S, state="on_battery")
            d["ctl"].wait_for("transition", timeout=0.3 + NEWS_S, state="shedding")
            set_reading(lo.reading, "online")
            d["ctl"].wait_for("transition", timeout=0.3 + NEWS_S, state="normal")
            assert states(d["ctl"]) == ["normal", "on_battery", "shedding", "normal"]
            a, b = summary(d["relay_a"]), summary(d["relay_b"])
        assert a["segment_relayed"] > 10
        assert b["broker_relayed"] >= a["segment_relayed"] - 2  # in flight at the stop
        assert b.get("segment_relayed", 0) == 0  # its own output, heard back, stays here
        assert b["segment_seen"] >= b["broker_relayed"] - 2

    def test_broker_down_fails_safe_then_recovers(self, tmp_path: Path, broker: Mosquitto) -> None:
        """Broker killed: the controller behind it fails safe within the TAL, each relay
        logs the outage once however often it retries, and both recover by themselves."""
        lo = Loopback(tmp_path, broker)
        with loopback_daemons(lo) as d:
            d["ctl"].wait_for("transition", timeout=BOOT_S, state="normal")
            broker.kill()
            killed = time.monotonic()
            d["ctl"].wait_for("transition", timeout=TAL_S + MARGIN_S, state="failsafe")
            assert time.monotonic() - killed <= TAL_S + MARGIN_S
            for relay in (d["relay_a"], d["relay_b"]):
                relay.wait_for("broker_unreachable", timeout=2)
            time.sleep(1.5)  # retries every 0.1 .. 0.5 s: several attempts, one log line
            down = control.call(tmp_path / "ra.sock", {"request": "status"})["status"]
            assert down["role"] == "relay"
            assert down["broker"]["connected"] is False
            assert down["broker"]["down_since"] is not None
            assert down["broker"]["attempts"] >= 3
            assert down["broker"]["error"]
            assert "broker   127.0.0.1:" in report.render(down)
            assert "UNREACHABLE since" in report.render(down)
            broker.start()
            for relay in (d["relay_a"], d["relay_b"]):
                back = relay.wait_for("broker_recovered", timeout=3)
                assert back["attempts"] >= 3
                assert len(events(relay, "broker_unreachable")) == 1
            d["ctl"].wait_for("transition", timeout=NEWS_S, state="normal")
            assert states(d["ctl"]) == ["normal", "failsafe", "normal"]
            up = control.call(tmp_path / "ra.sock", {"request": "status"})["status"]
            assert up["broker"]["connected"] is True
            assert up["broker"]["down_since"] is None
            address = events(d["relay_a"], "metrics_listening")[0]["address"]
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
                scraped = reply.read().decode()
            assert "powercast_relay_broker_connected 1.0" in scraped
            assert 'powercast_relay_datagrams_total{outcome="lost",side="segment"}' in scraped
            lost = summary(d["relay_a"])
        assert lost["segment_lost"] > 0  # heard while the broker was down: dropped, not queued

    def test_bytes_arrive_unchanged_and_garbage_stays(
        self, tmp_path: Path, broker: Mosquitto
    ) -> None:
        """What arrives on the far group is the very bytes sent on the near one; bytes that
        do not decode are not relayed, and are logged once and counted."""
        lo = Loopback(tmp_path, broker)
        far = _listener(GROUP_B, lo.port)
        with loopback_daemons(lo) as d, far:
            near = _listener(GROUP_A, lo.port)
            with near, _sender() as send:
                for _ in range(3):
                    send.sendto(b"not a powercast datagram", (GROUP_A, lo.port))
                heard_near = _drain(near, 1.0)
            heard_far = set(_drain(far, 0.5))
            d["relay_a"].wait_for("datagram_not_relayed", timeout=2, reason="magic")
            a = summary(d["relay_a"])
        ours = [x for x in heard_near if x.startswith(wire.MAGIC)]
        assert len(ours) >= 3
        assert set(ours[:-2]) <= heard_far  # byte for byte (the last may be in flight)
        assert not any(b"not a powercast" in x for x in heard_far)
        assert a["segment_undecodable"] == 3
        assert len(events(d["relay_a"], "datagram_not_relayed")) == 1


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """Mosquitto speaking TLS only, wanting a client certificate of the test CA and a login."""
    require(sites.mosquitto_missing())
    pki = Pki(tmp_path / "pki")
    made = Mosquitto(tmp_path, pki=pki, passwords={sites.RELAY_USER: sites.RELAY_PASSWORD})
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _refused_relay(tmp_path: Path, broker: Mosquitto, **broker_keys: Any) -> Path:
    assert broker.pki is not None
    net = {"group": GROUP_A, "port": free_port(), "interface": "127.0.0.1"}
    config = relay_config(net, broker.address, broker.port, control=_socket(tmp_path, "r"))
    config["broker"].update(sites.tls_login(broker.pki, tmp_path), connect_timeout_s=1.0)
    config["broker"].update(broker_keys)
    config["broker"] = {k: v for k, v in config["broker"].items() if v is not None}
    return write_toml(tmp_path / "r.toml", config)


@pytest.mark.system
class TestRelayOverTls:
    def test_tls_with_client_certificate_carries_datagrams(
        self, tmp_path: Path, tls_broker: Mosquitto
    ) -> None:
        """Relays on a TLS broker (CA checked, client certificate, password) carry an
        outage from a publisher on one group to a controller on another."""
        assert tls_broker.pki is not None
        login = sites.tls_login(tls_broker.pki, tmp_path)
        lo = Loopback(tmp_path, tls_broker, login)
        with loopback_daemons(lo) as d:
            d["ctl"].wait_for("transition", timeout=BOOT_S, state="normal")
            set_reading(lo.reading, "on_battery")
            d["ctl"].wait_for("transition", timeout=NEWS_S, state="on_battery")
            up = control.call(tmp_path / "ra.sock", {"request": "status"})["status"]
            assert up["broker"]["connected"] is True
            a, b = summary(d["relay_a"]), summary(d["relay_b"])
        assert a["segment_relayed"] >= 2  # at least the normal and the on_battery news
        assert b["broker_relayed"] >= a["segment_relayed"] - 2

    def test_server_name_override(self, tmp_path: Path, tls_broker: Mosquitto) -> None:
        """tls_server_name is the name checked: one the certificate has connects, one it
        lacks is refused as a host name mismatch."""
        good = _refused_relay(tmp_path, tls_broker, tls_server_name="broker.test")
        with running("relay", "--config", str(good)) as relay:
            relay.wait_for("broker_connected", timeout=BOOT_S)
        bad = _refused_relay(tmp_path, tls_broker, tls_server_name="elsewhere.test")
        with running("relay", "--config", str(bad)) as relay:
            down = relay.wait_for("broker_unreachable", timeout=BOOT_S)
        assert "certificate verify failed: Hostname mismatch" in down["error"]

    @pytest.mark.parametrize(
        ("case", "keys", "reason"),
        [
            # (Mosquitto sends its CA along: "self-signed certificate in certificate chain";
            # a broker sending only its own: "unable to get local issuer certificate")
            ("unknown CA", {"ca_file": "rogue-ca.crt"}, "certificate verify failed: "),
            ("no client certificate", {"cert_file": None, "key_file": None},
             "certificate required"),
            ("client certificate of another CA",
             {"cert_file": "rogue-client.crt", "key_file": "rogue-client.key"}, "unknown ca"),
            ("wrong password", {"password": "not-it"},
             "not authorised: bad user name or password"),
            ("key readable by others", {"key_mode": 0o644},
             "readable or writable by others (mode 0644)"),
        ],
    )  # fmt: skip
    def test_refused_is_a_clear_error_and_retried(
        self, tmp_path: Path, tls_broker: Mosquitto, case: str, keys: dict[str, Any], reason: str
    ) -> None:
        """Each refusal is logged once as broker_unreachable with the reason in words,
        shown by the status, and retried with backoff; the relay keeps running."""
        pki = tls_broker.pki
        assert pki is not None
        keys = dict(keys)
        if "password" in keys:
            keys.update(
                password_file=sites.tls_login(pki, tmp_path, keys.pop("password"))["password_file"]
            )
        if "key_mode" in keys:
            loose = tmp_path / "loose.key"
            loose.write_bytes(Path(pki.path("client.key")).read_bytes())
            loose.chmod(keys.pop("key_mode"))
            keys["key_file"] = str(loose)
        for k in ("ca_file", "cert_file", "key_file"):
            if isinstance(keys.get(k), str) and "/" not in keys[k]:
                keys[k] = pki.path(keys[k])
        path = _refused_relay(tmp_path, tls_broker, **keys)
        with running("relay", "--config", str(path)) as relay:
            down = relay.wait_for("broker_unreachable", timeout=BOOT_S)
            assert reason in down["error"], case
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                status = control.call(tmp_path / "r.sock", {"request": "status"})["status"]
                if status["broker"]["attempts"] >= 2:
                    break
                time.sleep(0.2)
            assert status["broker"]["attempts"] >= 2
            assert status["broker"]["connected"] is False
            # The status shows the latest attempt's error. A client certificate is refused
            # after a TLS 1.3 handshake, so a retry may read the broker's close before its
            # alert: OpenSSL then says EOF, not why.
            said = (reason, LATE_ALERT) if reason in CLIENT_CERT_REFUSALS else (reason,)
            assert any(r in status["broker"]["error"] for r in said), status["broker"]
            assert any(r in report.render(status) for r in said)
            assert relay.proc.poll() is None
            assert len(events(relay, "broker_unreachable")) == 1


@pytest.mark.system
class TestBatchesThroughTheBroker:
    def test_a_burst_goes_in_batches_and_arrives_once_each(
        self, tmp_path: Path, broker: Mosquitto
    ) -> None:
        """A burst heard on one group travels as batches and comes out on the other group
        as the very same datagrams, each once."""
        lo = Loopback(tmp_path, broker)
        seen_on_topic: list[bytes] = []
        watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        watcher.on_message = lambda _c, _u, m: seen_on_topic.append(bytes(m.payload))
        watcher.connect(broker.address, broker.port)
        watcher.subscribe(lo.topic, qos=0)
        watcher.loop_start()
        far = _listener(GROUP_B, lo.port)
        far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        burst = [datagram(seq, publisher="burst") for seq in range(1, 301)]
        try:
            with loopback_daemons(lo) as d, far:
                d["ctl"].wait_for("transition", timeout=BOOT_S, state="normal")
                with _sender() as send:
                    for data in burst:
                        send.sendto(data, (GROUP_A, lo.port))
                heard = [x for x in _drain(far, 1.5) if b"burst" in x]
                a = summary(d["relay_a"])
        finally:
            watcher.loop_stop()
            watcher.disconnect()
        assert sorted(heard) == sorted(burst)  # each once, byte for byte
        assert a["segment_relayed"] >= len(burst)
        batches = [p for p in seen_on_topic if p.startswith(BATCH_MAGIC)]
        assert batches, "a burst of 300 went one datagram per message"
        carried = [x for p in seen_on_topic for x in (unpack(p) or []) if b"burst" in x]
        assert sorted(carried) == sorted(burst)

    def test_a_broken_batch_is_dropped_and_counted(self, tmp_path: Path, broker: Mosquitto) -> None:
        """A batch whose lengths run past its end is dropped whole as unframed, logged,
        and the relay goes on relaying."""
        lo = Loopback(tmp_path, broker)
        good = datagram(1, publisher="whole")
        broken = BATCH_MAGIC + len(good).to_bytes(2, "big") + good + b"\x04\x00" + good[:10]
        far = _listener(GROUP_B, lo.port)
        with loopback_daemons(lo) as d, far:
            d["ctl"].wait_for("transition", timeout=BOOT_S, state="normal")
            _publish(broker, lo.topic, broken)
            d["relay_b"].wait_for("datagram_not_relayed", timeout=5, reason="unframed")
            heard = _drain(far, 3 * HEARTBEAT_S)
            b = summary(d["relay_b"])
        assert b["broker_unframed"] == 1
        assert not any(b"whole" in x for x in heard)  # not even the whole first part
        assert any(x.startswith(wire.MAGIC) for x in heard)  # still relaying


OVERSIZE = 64 * 1024 * 1024
"""An MQTT message no datagram could be; a relay that took it would hold it several times."""
RSS_SLACK_KB = 16 * 1024


@pytest.mark.system
class TestRelayUnderAttack:
    def test_forged_high_seq_does_not_stop_a_publisher(
        self, tmp_path: Path, broker: Mosquitto
    ) -> None:
        """Anyone on the broker publishes, without a key, a datagram claiming the real
        publisher's epoch and seq 2^63-1: both relays carry on relaying the real ones,
        and the controller behind them still follows the news."""
        lo = Loopback(tmp_path, broker)
        with loopback_daemons(lo) as d:
            d["ctl"].wait_for("transition", timeout=BOOT_S, state="normal")
            with _listener(GROUP_A, lo.port) as near:
                real = wire.decode(_drain(near, 2 * HEARTBEAT_S)[0]).message
            forged = wire.encode(msgspec.structs.replace(real, seq=2**63 - 1, sent=time.time()))
            _publish(broker, lo.topic, forged)
            time.sleep(TAL_S + 2 * MARGIN_S)  # poisoned, the controller would now fail safe
            set_reading(lo.reading, "on_battery")  # and hear no news again
            d["ctl"].wait_for("transition", timeout=NEWS_S, state="on_battery")
            a, b = summary(d["relay_a"]), summary(d["relay_b"])
        assert a["broker_relayed"] >= 1  # the forgery, carried: keyless, it cannot tell
        assert a["segment_relayed"] > (TAL_S + 2 * MARGIN_S) / HEARTBEAT_S
        assert b["broker_relayed"] >= a["segment_relayed"] - 2

    def test_relays_with_keys_carry_only_what_verifies(
        self, tmp_path: Path, broker: Mosquitto
    ) -> None:
        """Relays with [auth] mode = "enforce" and only Ed25519 public keys: forgeries put on
        the broker (unsigned, a bad signature, a good signature by a key not bound to the
        publisher), each with seq 2^63-1, never reach the far segment and stop nothing;
        the real publisher's news still crosses, and the relays cannot sign."""
        lo = Loopback(tmp_path, broker)
        private, public = tmp_path / "ed-private", tmp_path / "ed-public"
        private.mkdir(mode=0o700)
        public.mkdir(mode=0o755)
        for key_id in (1, 2):
            keygen(key_id, private / f"{key_id}.private", "ed25519")
            (public / f"{key_id}.public").write_bytes((private / f"{key_id}.public").read_bytes())
        verify = {
            "keys_dir": str(public),
            "scheme": "ed25519",
            "publishers": {"ups-far": [1], "ups-other": [2]},
        }
        _edit(lo.relay_a_config, auth={**verify, "mode": "enforce"})
        _edit(lo.relay_b_config, auth={**verify, "mode": "enforce"})
        _edit(lo.ctl_config, auth=verify)
        _edit(lo.pub_config, auth={"keys_dir": str(private), "key_id": 1, "scheme": "ed25519"})
        far = _listener(GROUP_B, lo.port)
        with loopback_daemons(lo) as d, far:
            d["ctl"].wait_for("transition", timeout=BOOT_S, state="normal")
            with _listener(GROUP_A, lo.port) as near:
                real = wire.decode(_drain(near, 2 * HEARTBEAT_S)[0]).message
            lie = msgspec.structs.replace(
                real, seq=2**63 - 1, sent=time.time(), power=wire.Power(wire.PowerStatus.ON_BATTERY)
            )
            thief = load_keyring(private, {"private"})  # key 2: ups-other's, not ups-far's
            stranger = Keyring.from_keys({}, tmp_path, private={1: bytes(32)})
            forged = [
                wire.encode(lie),
                wire.encode(lie, key_id=1, sign=stranger.signer(1)),
                wire.encode(lie, key_id=2, sign=thief.signer(2)),
            ]
            _publish(broker, lo.topic, *forged)
            heard = set(_drain(far, TAL_S + 2 * MARGIN_S))
            set_reading(lo.reading, "on_battery")
            d["ctl"].wait_for("transition", timeout=NEWS_S, state="on_battery")
            status = control.call(tmp_path / "rb.sock", {"request": "status"})["status"]
            a, b = summary(d["relay_a"]), summary(d["relay_b"])
        assert not heard & set(forged)
        assert len(heard) > 3  # the real ones kept coming
        for relay in (a, b):
            assert relay["broker_unsigned"] == relay["broker_bad_tag"] == 1
            assert relay["broker_wrong_key"] == 1
        assert b["broker_relayed"] >= a["segment_relayed"] - 2
        assert status["keys"]["schemes"] == {"1": "ed25519", "2": "ed25519"}
        prints = status["keys"]["fingerprints"]
        assert f"keys     key 1 fp {prints['1']} (ed25519), key 2 fp {prints['2']} (ed25519)" in (
            report.render(status)
        )
        relays_ring = load_keyring(public, {"key", "public"})
        assert relays_ring.signing_ids == []
        assert prints == {str(i): fp for i, fp in relays_ring.fingerprints.items()}

    def test_oversize_message_is_not_taken(self, tmp_path: Path, broker: Mosquitto) -> None:
        """A message far larger than any datagram, published on the relays' topic, is
        not delivered to them (their peak RSS stays put), goes nowhere, and they keep
        relaying; one larger than a datagram but small enough to arrive is counted."""
        lo = Loopback(tmp_path, broker)
        far = _listener(GROUP_B, lo.port)
        with loopback_daemons(lo) as d, far:
            d["ctl"].wait_for("transition", timeout=BOOT_S, state="normal")
            pids = {name: d[name].proc.pid for name in ("relay_a", "relay_b")}
            last = max(_seqs(_drain(far, 2 * HEARTBEAT_S)))
            before = {name: _memory(pid) for name, pid in pids.items()}
            _publish(broker, lo.topic, b"\0" * OVERSIZE, b"\0" * (wire.MAX_DATAGRAM + 1))
            d["relay_b"].wait_for("datagram_not_relayed", timeout=5)  # after the big one, if any
            after = {name: _memory(pid) for name, pid in pids.items()}
            print(f"relay memory (kB) before {before} after {after}")
            heard = _drain(far, 3 * HEARTBEAT_S)
            assert states(d["ctl"])[-1] == "normal"
            a, b = summary(d["relay_a"]), summary(d["relay_b"])
        for name in pids:
            assert after[name]["VmHWM"] - before[name]["VmHWM"] < RSS_SLACK_KB, (before, after)
            assert after[name]["VmRSS"] - before[name]["VmRSS"] < RSS_SLACK_KB, (before, after)
        assert all(len(x) <= wire.MAX_DATAGRAM for x in heard)
        assert max(_seqs(heard), default=0) > last  # still relaying, after
        assert a["broker_oversize"] == b["broker_oversize"] == 1  # the small one only
        assert b.get("segment_relayed", 0) == 0  # so relay A hears from the broker only ours:
        assert a["broker_received"] == 1  # the big one never reached it


def _edit(path: Path, **tables: Any) -> None:
    """Set top-level keys of the TOML file at ``path``."""
    write_toml(path, {**tomllib.loads(path.read_text()), **tables})


def _publish(broker: Mosquitto, topic: str, *payloads: bytes) -> None:
    """Publish ``payloads`` on ``topic`` as any client of the broker could, and wait
    until the broker has each (QoS 1)."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect(broker.address, broker.port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(topic, payload, qos=1).wait_for_publish(timeout=30)
    finally:
        client.disconnect()
        client.loop_stop()


def _seqs(datagrams: list[bytes]) -> list[int]:
    return [wire.decode(x).message.seq for x in datagrams]


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of process ``pid``, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def _listener(group: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, 49, 0)  # IP_MULTICAST_ALL off
    sock.bind((group, port))
    mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    return sock


def _sender() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    return sock


def _drain(sock: socket.socket, seconds: float) -> list[bytes]:
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(65535))
        except TimeoutError:
            break
    return got


# --- two sites, no route between them ----------------------------------------------------------


@pytest.fixture(scope="session")
def netns() -> None:
    require(netbed.unavailable())
    require(sites.mosquitto_missing())
    netbed.sweep()


@pytest.fixture
def two_sites(netns: None, tmp_path: Path) -> Iterator[Sites]:
    pki = Pki(tmp_path / "pki")  # the relays meet over TLS, with certificates and a login
    with Sites(tmp_path, pki=pki, passwords={sites.RELAY_USER: sites.RELAY_PASSWORD}) as made:
        yield made
    assert made.leftovers() == []


class Campus:
    """Site 1: a publisher and ``relays[0]`` relays; site 2: a controller, ``relays[1]``
    relays and a tap (``powercast tap``: every datagram on site 2's group, classified)."""

    def __init__(self, s: Sites, workdir: Path, relays: tuple[int, int] = (1, 1)) -> None:
        self.s = s
        self.keys = make_keys(workdir / "keys")
        self.reading = workdir / "ups.json"
        set_reading(self.reading, "online")
        self.pub_host = s.host(0, "pub")
        self.relay_hosts: list[list[Host]] = [
            [s.relay_host(site, f"relay{i + 1}") for i in range(relays[site])] for site in (0, 1)
        ]
        self.ctl_host = s.host(1, "ctl")
        self.tap_host = s.host(1, "tap")
        self.workdir = workdir
        assert s.broker is not None
        self.broker = s.broker
        self.relays: list[NetDaemon] = []
        self.tap: subprocess.Popen[str]

    def _write(self, name: str, data: dict[str, Any]) -> str:
        path = self.workdir / f"{name}.toml"
        path.write_text(tomli_w.dumps(data))
        return str(path)

    def _net(self, host: Host) -> dict[str, Any]:
        return {"group": netbed.GROUP, "port": netbed.PORT, "interface": host.address}

    def start(self) -> tuple[NetDaemon, NetDaemon]:
        """Broker, relays, controller, tap, then the publisher; returns (ctl, pub)."""
        self.broker.start()
        for site, hosts in enumerate(self.relay_hosts):
            for i, host in enumerate(hosts):
                name = f"relay-{site}-{i}"
                config = relay_config(
                    self._net(host),
                    sites.BROKER_ADDRESS,
                    sites.BROKER_PORT,
                    control=_socket(self.workdir, name),
                )
                if self.s.pki is not None:
                    config["broker"].update(sites.tls_login(self.s.pki, self.workdir))
                path = self._write(name, config)
                self.relays.append(NetDaemon(self._bed(site), host, "relay", "--config", path))
        for relay in self.relays:
            relay.wait_for("broker_connected", timeout=BOOT_S)
        ctl_config = controller_config(self.keys, self._net(self.ctl_host))
        ctl_config["control"] = _socket(self.workdir, "ctl")
        ctl = NetDaemon(
            self.s.sites[1], self.ctl_host, "control", "--config", self._write("ctl", ctl_config)
        )
        self.tap = self.s.sites[1].start(
            self.tap_host, sys.executable, "-m", "powercast", "tap", "--json",
            "--keys-dir", str(self.keys), "--group", netbed.GROUP, "--port", str(netbed.PORT),
            "--interface", self.tap_host.address, "--timeout", "60",
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        ctl.wait_for("ready", timeout=BOOT_S)
        pub_config = publisher_config(self.keys, self.reading, self._net(self.pub_host))
        pub_config["network"]["loop"] = False
        pub_config["control"] = _socket(self.workdir, "pub")
        pub = NetDaemon(
            self.s.sites[0], self.pub_host, "publish", "--config", self._write("pub", pub_config)
        )
        return ctl, pub

    def taps(self) -> list[dict[str, Any]]:
        """What the tap printed: one JSON object per datagram on site 2's group (stops it)."""
        self.tap.terminate()
        out, _ = self.tap.communicate(timeout=5)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def _bed(self, site: int) -> Bed:
        return self.s.sites[site]

    def stop(self, *daemons: NetDaemon) -> None:
        for daemon in [*daemons, *self.relays]:
            daemon.stop()


@pytest.mark.system
class TestAcrossSites:
    def test_outage_in_site_1_sheds_site_2(self, two_sites: Sites, tmp_path: Path) -> None:
        """Site 1's publisher, through one relay per site and the broker, makes site 2's
        controller shed and restore; site 2 shares no network with site 1."""
        campus = Campus(two_sites, tmp_path)
        ctl, pub = campus.start()
        try:
            ctl.wait_for("transition", timeout=BOOT_S, state="normal")
            set_reading(campus.reading, "on_battery")
            ctl.wait_for("transition", timeout=NEWS_S, state="on_battery")
            ctl.wait_for("transition", timeout=0.3 + NEWS_S, state="shedding")
            set_reading(campus.reading, "online")
            ctl.wait_for("transition", timeout=0.3 + NEWS_S, state="normal")
            assert states(ctl) == ["normal", "on_battery", "shedding", "normal"]
        finally:
            campus.stop(pub, ctl)

    def test_broker_killed_fails_safe_within_tal(self, two_sites: Sites, tmp_path: Path) -> None:
        """Killing the broker makes site 2's controller fail safe within the announced TAL;
        brought back, the relays reconnect and the controller follows site 1 again."""
        campus = Campus(two_sites, tmp_path)
        ctl, pub = campus.start()
        try:
            ctl.wait_for("transition", timeout=BOOT_S, state="normal")
            campus.broker.kill()
            killed = time.monotonic()
            failed = ctl.wait_for("transition", timeout=TAL_S + MARGIN_S, state="failsafe")
            assert failed["_at"] - killed <= TAL_S + MARGIN_S
            for relay in campus.relays:
                relay.wait_for("broker_unreachable", timeout=2)
            campus.broker.start()
            for relay in campus.relays:
                relay.wait_for("broker_recovered", timeout=3)
            ctl.wait_for("transition", timeout=NEWS_S, state="normal")
            assert states(ctl) == ["normal", "failsafe", "normal"]
        finally:
            campus.stop(pub, ctl)

    def test_two_relays_per_site_deliver_each_announcement_once(
        self, two_sites: Sites, tmp_path: Path
    ) -> None:
        """Two relays in each site: the controller moves exactly once per change; a
        datagram reaches site 2 at most once per relay there, a second copy being a
        `duplicate` and never a `replay`, and no relay passes any datagram on twice (no
        ping-pong); with one relay of each site stopped, the other carries on, no gap."""
        campus = Campus(two_sites, tmp_path, relays=(2, 2))
        ctl, pub = campus.start()
        cycle = ["on_battery", "shedding", "normal"]
        try:
            ctl.wait_for("transition", timeout=BOOT_S, state="normal")
            for round_ in range(2):
                if round_ == 1:  # redundancy: one relay of each site goes away
                    campus.relays[0].stop()
                    campus.relays[2].stop()
                set_reading(campus.reading, "on_battery")
                ctl.wait_for("transition", timeout=NEWS_S, state="on_battery")
                ctl.wait_for("transition", timeout=0.3 + NEWS_S, state="shedding")
                set_reading(campus.reading, "online")
                ctl.wait_for("transition", timeout=0.3 + NEWS_S, state="normal")
            time.sleep(0.5)
            assert states(ctl) == ["normal", *cycle, *cycle]  # no failsafe, nothing twice
        finally:
            campus.stop(pub, ctl)
        by_seq: dict[int, list[str]] = {}
        for record in campus.taps():
            by_seq.setdefault(record["message"]["seq"], []).append(record["result"])
        sent = max(by_seq)
        assert len(by_seq) >= sent - 2  # every datagram arrived (bar the last in flight)
        assert all(len(r) <= 2 and r[0] == "good" for r in by_seq.values()), by_seq
        assert all(set(r[1:]) <= {"duplicate"} for r in by_seq.values()), by_seq
        counters = [r.wait_for("relay_summary", timeout=2) for r in campus.relays]
        for c in counters:
            assert c.get("segment_relayed", 0) <= sent  # each at most once, each way
            assert c.get("broker_relayed", 0) <= sent
        site1 = counters[:2]
        assert all(c.get("broker_relayed", 0) <= max(2, sent // 20) for c in site1)
        assert counters[1]["segment_relayed"] >= sent - 2  # the survivor carried it all
        assert counters[3]["broker_relayed"] > 0
