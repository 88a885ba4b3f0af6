"""The kernel filter on the controller's sockets: it drops only what the controller would
reject (wrong magic or version, a key id without a key, a forgery's repeated tag, a
flooding source), never a datagram of a configured key; and the controller blocks a
forgery it sees twice and a source that floods it with rejected datagrams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest

from powercast import sockfilter, wire
from powercast.auth import Keyring, public_key
from powercast.config import ControllerAuth, ControllerConfig, load
from powercast.controller import (
    BLOCKED_TAGS,
    SOURCE_BLOCK_S,
    SOURCE_STRIKES_PER_S,
    Controller,
)
from powercast.runtime.controller import REFILTER_EVERY_S, ControllerDaemon
from powercast.secrets import keygen, load_keyring

from harness import (
    GROUP,
    Daemon,
    controller_config,
    free_port,
    make_keys,
    publisher_config,
    running,
    set_reading,
    write_toml,
)

SEED: Final = bytes(range(32))
"""Our publisher's Ed25519 private key."""
FORGER_SEED: Final = bytes(range(100, 132))
"""Another Ed25519 key, claiming the same key id."""


def message(status: str = "online", seq: int = 1) -> wire.Announcement:
    return wire.Announcement(
        publisher="ups-a",
        epoch=7,
        seq=seq,
        change=seq,
        sent=time.time(),
        tal=3.0,
        power=wire.Power(wire.PowerStatus(status)),
        temperatures={"inlet": 24.0},
    )


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return make_keys(tmp_path / "keys", 1, 2)


@pytest.fixture
def stranger(tmp_path: Path) -> Path:
    directory = tmp_path / "stranger"
    directory.mkdir()
    keygen(1, directory / "1.key")
    keygen(9, directory / "9.key")
    return directory


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A receiver on loopback and a sender to it: real sockets, real kernel."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    try:
        yield rx, tx
    finally:
        rx.close()
        tx.close()


def through(pair: tuple[socket.socket, socket.socket], datagrams: list[bytes]) -> list[bytes]:
    """Which of ``datagrams`` the receiver gets, in order: each is followed by a marker
    the filter passes, so a missing one is known without waiting for a timeout."""
    rx, tx = pair
    marker = b"PWRC" + bytes([wire.VERSION]) + b"\x20\x00\x01" + b"end"
    got = []
    rx.settimeout(2)
    for data in datagrams:
        tx.send(data)
        tx.send(marker)
        first = rx.recv(2048)
        if first != marker:
            got.append(first)
            assert rx.recv(2048) == marker
    return got


@pytest.mark.system
class TestFilterOnARealSocket:
    def test_shape_passes_good_and_drops_bad_magic_version_and_unknown_key(
        self, pair: tuple[socket.socket, socket.socket], keys: Path, stranger: Path
    ) -> None:
        """With enforced keys 1 and 2: datagrams of both pass; wrong magic, version 2, key 9
        and unsigned ones are dropped by the kernel."""
        ours, theirs = load_keyring(keys), load_keyring(stranger)
        good1 = wire.encode(message(), key_id=1, sign=ours.signer(1))
        good2 = wire.encode(message(seq=2), key_id=2, sign=ours.signer(2))
        bad_magic = b"PWRX" + good1[4:]
        version2 = good1[:4] + b"\x02" + good1[5:]
        unknown = wire.encode(message(), key_id=9, sign=theirs.signer(9))
        unsigned = wire.encode(message())
        sockfilter.attach(pair[0], sockfilter.program(versions=wire.VERSIONS, key_ids=ours.ids))
        got = through(pair, [good1, bad_magic, version2, unknown, unsigned, b"", good2])
        assert got == [good1, good2]

    def test_shape_without_key_ids_passes_any_key(
        self, pair: tuple[socket.socket, socket.socket], stranger: Path
    ) -> None:
        """Not enforcing: unsigned and unknown keys pass (the controller counts them);
        the magic and the version still decide."""
        theirs = load_keyring(stranger)
        unknown = wire.encode(message(), key_id=9, sign=theirs.signer(9))
        unsigned = wire.encode(message())
        sockfilter.attach(pair[0], sockfilter.program(versions=wire.VERSIONS))
        got = through(pair, [unknown, unsigned, b"not powercast at all"])
        assert got == [unknown, unsigned]

    def test_blocked_tags_drop_that_forgery_only(
        self, pair: tuple[socket.socket, socket.socket], keys: Path, stranger: Path
    ) -> None:
        """A blocked tag drops the forgery ending in it; good datagrams of the same key,
        other forgeries and datagrams too short for a tag pass."""
        ours, theirs = load_keyring(keys), load_keyring(stranger)
        forged = [
            wire.encode(message("on_battery", seq=100 + i), key_id=1, sign=theirs.signer(1))
            for i in range(BLOCKED_TAGS + 1)
        ]
        blocked = [f[-wire.TAG_SIZE :] for f in forged[:BLOCKED_TAGS]]
        good = [wire.encode(message(seq=i), key_id=1, sign=ours.signer(1)) for i in range(20)]
        sockfilter.attach(pair[0], sockfilter.program(blocked=blocked))
        short = b"PWRC\x01"
        got = through(pair, [forged[0], *good, forged[-2], forged[-1], short])
        assert got == [*good, forged[-1], short]

    def test_blocked_sources_drop_that_address_only(
        self, pair: tuple[socket.socket, socket.socket], keys: Path
    ) -> None:
        """A blocked source's datagrams are dropped, good ones included; the same
        datagrams from another address pass."""
        ours = load_keyring(keys)
        good = [wire.encode(message(seq=i), key_id=1, sign=ours.signer(1)) for i in range(5)]
        rx, _ = pair
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.bind(("127.0.0.2", 0))
            sockfilter.attach(rx, sockfilter.program(sources=["127.0.0.2", "10.9.9.9"]))
            for data in good:
                other.sendto(data, rx.getsockname())
            got = through(pair, good)  # from 127.0.0.1, each with its marker
        assert got == good  # and nothing from 127.0.0.2 came before them

    def test_blocked_ed25519_signatures_drop_that_forgery_only(
        self, pair: tuple[socket.socket, socket.socket], keys: Path, stranger: Path
    ) -> None:
        """Blocked 64-byte signatures and 32-byte HMAC tags side by side: each drops its
        own forgery; good datagrams of either scheme and other forgeries pass."""
        ours = Keyring.from_keys({}, Path("ours"), private={3: SEED})
        forger = Keyring.from_keys({}, Path("forger"), private={3: FORGER_SEED})
        hmac_ours, hmac_theirs = load_keyring(keys), load_keyring(stranger)
        forged = [
            wire.encode(message("on_battery", seq=100 + i), key_id=3, sign=forger.signer(3))
            for i in range(3)
        ]
        forged_hmac = wire.encode(message("on_battery"), key_id=1, sign=hmac_theirs.signer(1))
        good = [wire.encode(message(seq=i), key_id=3, sign=ours.signer(3)) for i in range(10)]
        good_hmac = wire.encode(message(seq=11), key_id=1, sign=hmac_ours.signer(1))
        blocked = [
            forged[0][-wire.SIGNATURE_SIZE :],
            forged_hmac[-wire.TAG_SIZE :],
            forged[1][-wire.SIGNATURE_SIZE :],
        ]
        sockfilter.attach(pair[0], sockfilter.program(blocked=blocked))
        short = b"PWRC\x01" + bytes(40)  # long enough for an HMAC tag, not a signature
        sent = [forged[0], *good, forged_hmac, good_hmac, forged[1], forged[2], short]
        assert through(pair, sent) == [*good, good_hmac, forged[2], short]

    def test_shape_passes_ed25519_public_key_ids(
        self, pair: tuple[socket.socket, socket.socket], keys: Path, stranger: Path
    ) -> None:
        """A controller holding HMAC keys 1, 2 and Ed25519 public key 3 (key files, as
        deployed): datagrams signed by either scheme pass the shape filter; key 9 is dropped."""
        keygen(3, keys / "3.private", scheme="ed25519")
        ours = load_keyring(keys, ("key", "public"))
        assert ours.ids == [1, 2, 3]
        publisher = load_keyring(keys, ("private",))
        signed = wire.encode(message(), key_id=3, sign=publisher.signer(3))
        tagged = wire.encode(message(seq=2), key_id=1, sign=load_keyring(keys).signer(1))
        unknown = wire.encode(message(seq=3), key_id=9, sign=load_keyring(stranger).signer(9))
        sockfilter.attach(pair[0], sockfilter.program(versions=wire.VERSIONS, key_ids=ours.ids))
        assert through(pair, [signed, unknown, tagged]) == [signed, tagged]

    def test_no_filter_part_passes_everything(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        """Neither shape nor blocked tags: the program accepts every datagram."""
        sockfilter.attach(pair[0], sockfilter.program())
        assert through(pair, [b"x", b"PWRX" + bytes(40)]) == [b"x", b"PWRX" + bytes(40)]


def enforcing(tmp_path: Path, keys: Path) -> Controller:
    path = write_toml(tmp_path / "c.toml", controller_config(5001, keys))
    config = load(path, "controller")
    assert isinstance(config, ControllerConfig)
    return Controller(config, load_keyring(keys))


@pytest.mark.unit
class TestBlocking:
    def test_a_forgery_seen_twice_is_blocked(
        self, tmp_path: Path, keys: Path, stranger: Path
    ) -> None:
        """The second sighting of a bad tag blocks it, once, with a notice; good ones never."""
        ctrl = enforcing(tmp_path, keys)
        ours, theirs = load_keyring(keys), load_keyring(stranger)
        forged = wire.encode(message("on_battery", 50), key_id=1, sign=theirs.signer(1))
        for seq in range(1, 4):
            ctrl.receive(wire.encode(message(seq=seq), key_id=1, sign=ours.signer(1)), 1.0, 0)
        ctrl.receive(forged, 1.0, time.time())
        assert ctrl.blocked == {}
        ctrl.receive(forged, 1.0, time.time())
        ctrl.receive(forged, 1.0, time.time())
        assert list(ctrl.blocked) == [forged[-32:]]
        assert ctrl.blocked_changed
        assert ctrl.counters["rejected.bad_tag"] == 3
        assert [n.event for n in ctrl.notices if n.event == "forgery_blocked"] == [
            "forgery_blocked"
        ]

    def test_a_source_flooding_forgeries_is_blocked_then_released(
        self, tmp_path: Path, keys: Path, stranger: Path
    ) -> None:
        """Forgeries that all differ, faster than SOURCE_STRIKES_PER_S from one address:
        the address is blocked, with a notice, until SOURCE_BLOCK_S later; a slower
        trickle of them never is."""
        ctrl = enforcing(tmp_path, keys)
        theirs = load_keyring(stranger)
        forged = [
            wire.encode(message("on_battery", 100 + i), key_id=1, sign=theirs.signer(1))
            for i in range(int(3 * SOURCE_STRIKES_PER_S))
        ]
        for i, data in enumerate(forged):
            ctrl.receive(data, 1.0 + i / (10 * SOURCE_STRIKES_PER_S), time.time(), "10.0.0.9")
            ctrl.receive(data, 1.0 + i / 2, time.time(), "10.0.0.8")  # two a second
        assert list(ctrl.blocked_sources) == ["10.0.0.9"]
        assert ctrl.blocked_changed
        assert [n.event for n in ctrl.notices].count("source_blocked") == 1
        until = ctrl.blocked_sources["10.0.0.9"]
        assert 1.0 + SOURCE_BLOCK_S <= until <= 1.5 + SOURCE_BLOCK_S
        assert ctrl.deadline() == until
        ctrl.blocked_changed = False
        ctrl.tick(until)
        assert ctrl.blocked_sources == {}
        assert ctrl.blocked_changed

    def test_a_source_that_sent_good_data_is_never_blocked(
        self, tmp_path: Path, keys: Path, stranger: Path
    ) -> None:
        """Rejections from an address good data came from may be another's, sent in its
        name: that address is never blocked, so a forger cannot silence a publisher."""
        ctrl = enforcing(tmp_path, keys)
        ours, theirs = load_keyring(keys), load_keyring(stranger)
        ctrl.receive(
            wire.encode(message(), key_id=1, sign=ours.signer(1)), 1.0, time.time(), "10.0.0.1"
        )
        for i in range(int(3 * SOURCE_STRIKES_PER_S)):
            forged = wire.encode(message("on_battery", 100 + i), key_id=1, sign=theirs.signer(1))
            ctrl.receive(forged, 1.0, time.time(), "10.0.0.1")
            ctrl.receive(b"garbage", 1.0, time.time(), "fd00::9")  # IPv6: not blockable
        assert ctrl.blocked_sources == {}

    def test_the_first_of_many_publishers_is_never_blocked(
        self, tmp_path: Path, keys: Path, stranger: Path
    ) -> None:
        """Three hundred publishers, each on its own address, then only heartbeats (read
        at a glance, which note no address): the first one heard is still known as good
        when forgeries come in its name."""
        ctrl = enforcing(tmp_path, keys)
        ours, theirs = load_keyring(keys), load_keyring(stranger)
        for i in range(300):
            own = msgspec.structs.replace(message(), publisher=f"ups-{i}")
            ctrl.receive(
                wire.encode(own, key_id=1, sign=ours.signer(1)),
                1.0,
                time.time(),
                f"10.0.{i // 250}.{i % 250}",
            )
        for i in range(int(3 * SOURCE_STRIKES_PER_S)):
            forged = wire.encode(message("on_battery", 100 + i), key_id=1, sign=theirs.signer(1))
            ctrl.receive(forged, 1.0, time.time(), "10.0.0.0")
        assert ctrl.blocked_sources == {}

    def test_no_source_is_blocked_before_publishers_had_the_time_to_be_heard(
        self, tmp_path: Path, keys: Path
    ) -> None:
        """Just started, a flood in some publisher's name could otherwise come before that
        publisher's first datagram: nothing is blocked within the start-up grace."""
        ctrl = enforcing(tmp_path, keys)
        ctrl.start(0.0)
        opens = ctrl.config.policy.startup_grace_s
        for i in range(int(3 * SOURCE_STRIKES_PER_S)):
            ctrl.receive(b"garbage", opens - 1.0 + i / 1e4, time.time(), "10.0.0.9")
        assert ctrl.blocked_sources == {}
        for i in range(int(3 * SOURCE_STRIKES_PER_S)):
            ctrl.receive(b"garbage", opens + i / 1e4, time.time(), "10.0.0.9")
        assert list(ctrl.blocked_sources) == ["10.0.0.9"]

    def test_a_block_ends_when_data_from_that_address_is_taken(
        self, tmp_path: Path, keys: Path
    ) -> None:
        """Blocked, then a good datagram from that address read before the filter was on
        (at a glance or whole): the block is lifted, the filter rebuilt, and the address is
        not blocked again."""
        ctrl = enforcing(tmp_path, keys)
        ours = load_keyring(keys)
        for i in range(int(3 * SOURCE_STRIKES_PER_S)):
            ctrl.receive(b"garbage", 1.0 + i / 1e4, time.time(), "10.0.0.9")
        assert list(ctrl.blocked_sources) == ["10.0.0.9"]
        ctrl.blocked_changed = False
        ctrl.receive(
            wire.encode(message(), key_id=1, sign=ours.signer(1)), 1.1, time.time(), "10.0.0.9"
        )
        assert ctrl.blocked_sources == {}
        assert ctrl.blocked_changed
        for i in range(int(3 * SOURCE_STRIKES_PER_S)):
            ctrl.receive(b"garbage", 2.0 + i / 1e4, time.time(), "10.0.0.9")
        assert ctrl.blocked_sources == {}

    def test_blocks_end_with_a_reload_and_spoofed_floods_log_once(
        self, tmp_path: Path, keys: Path
    ) -> None:
        """Many flooding addresses make one paced log line, not one each (the pacer's keys
        never come from what a peer sent); a reload (new keys may explain the rejections)
        lifts every block."""
        ctrl = enforcing(tmp_path, keys)
        for address in range(50):
            for i in range(int(3 * SOURCE_STRIKES_PER_S)):
                ctrl.receive(b"garbage", 1.0 + i / 1e4, time.time(), f"10.1.0.{address}")
        assert len(ctrl.blocked_sources) == 50
        assert [n.event for n in ctrl.notices].count("source_blocked") == 1
        ctrl.blocked_changed = False
        ctrl.reconfigure(ctrl.config, load_keyring(keys), 2.0)
        assert ctrl.blocked_sources == {}
        assert ctrl.blocked_changed

    def test_unknown_keys_and_unsigned_are_not_blocked(
        self, tmp_path: Path, keys: Path, stranger: Path
    ) -> None:
        """Only tags that failed under a key we hold are blocked."""
        ctrl = enforcing(tmp_path, keys)
        theirs = load_keyring(stranger)
        unknown = wire.encode(message(), key_id=9, sign=theirs.signer(9))
        for _ in range(3):
            ctrl.receive(unknown, 1.0, time.time())
            ctrl.receive(wire.encode(message()), 1.0, time.time())
        assert ctrl.blocked == {}

    def test_blocked_is_bounded_and_cleared_by_new_keys(
        self, tmp_path: Path, keys: Path, stranger: Path
    ) -> None:
        """At most BLOCKED_TAGS, the oldest leaving first; a reload forgets them all."""
        ctrl = enforcing(tmp_path, keys)
        theirs = load_keyring(stranger)
        forged = [
            wire.encode(message(seq=10 + i), key_id=1, sign=theirs.signer(1))
            for i in range(BLOCKED_TAGS + 5)
        ]
        for data in forged:
            ctrl.receive(data, 1.0, time.time())
            ctrl.receive(data, 1.0, time.time())
        assert list(ctrl.blocked) == [f[-32:] for f in forged[5:]]
        ctrl.blocked_changed = False
        ctrl.reconfigure(ctrl.config, load_keyring(keys), 2.0)
        assert ctrl.blocked == {}
        assert ctrl.blocked_changed


def forged_signature(seq: int = 50) -> bytes:
    """ups-a on battery under key id 3, with 64 random bytes for a signature."""
    body = wire.encode(message("on_battery", seq))[wire.HEADER.size :]
    header = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.SIGNATURE_SIZE, 3, len(body))
    return header + body + os.urandom(wire.SIGNATURE_SIZE)


def signing(**auth: Any) -> Controller:
    """A controller verifying Ed25519 key 3 (our publisher's public key)."""
    ring = Keyring.from_keys({}, Path("ctl"), public={3: public_key(SEED)})
    return Controller(ControllerConfig(auth=ControllerAuth(scheme="ed25519", **auth)), ring)


@pytest.mark.unit
class TestBlockingSignatures:
    def test_a_forged_signature_seen_twice_is_blocked(self) -> None:
        """An Ed25519 signature that failed under our public key, seen again, is blocked
        whole (64 bytes); our publisher's datagrams are taken throughout."""
        ctrl = signing()
        good = Keyring.from_keys({}, Path("pub"), private={3: SEED}).signer(3)
        forged = forged_signature()
        for _ in range(2):
            ctrl.receive(forged, 1.0, time.time(), "10.9.9.9")
        assert list(ctrl.blocked) == [forged[-wire.SIGNATURE_SIZE :]]
        ctrl.receive(wire.encode(message(seq=1), key_id=3, sign=good), 1.0, time.time())
        assert ctrl.accepted == 1

    def test_a_publisher_over_its_budget_does_not_block_its_source(self) -> None:
        """Signatures over the budget of the publisher they name are no sign of their
        source (a relay carries many publishers): only a source over its own budget
        counts towards its block."""
        ctrl = signing(verify_rate=1.0)
        for seq in range(int(5 * SOURCE_STRIKES_PER_S)):
            ctrl.receive(forged_signature(100 + seq), 1.0 + seq / 1e4, time.time(), "10.9.9.8")
        assert ctrl.counters["rejected.over_budget"] > 3 * SOURCE_STRIKES_PER_S
        assert ctrl.blocked_sources == {}
        spent = signing(source_verify_rate=1.0)
        for seq in range(int(5 * SOURCE_STRIKES_PER_S)):
            spent.receive(forged_signature(100 + seq), 1.0 + seq / 1e4, time.time(), "10.9.9.8")
        assert list(spent.blocked_sources) == ["10.9.9.8"]

    def test_a_forgery_over_budget_is_never_blocked(self) -> None:
        """With the source's verify budget spent, a forgery repeated a hundred times is
        dropped unchecked (over_budget) and its tag is not blocked: only a tag checked
        and found bad is."""
        ctrl = signing(source_verify_rate=20.0)
        for seq in range(40):  # the source's burst, each forgery checked once
            ctrl.receive(forged_signature(100 + seq), 1.0, time.time(), "10.9.9.9")
        assert ctrl.counters["rejected.bad_tag"] == 40
        repeated = forged_signature()
        for _ in range(100):
            ctrl.receive(repeated, 1.0, time.time(), "10.9.9.9")
        assert ctrl.counters["rejected.over_budget"] == 100
        assert ctrl.blocked == {}
        assert not ctrl.blocked_changed


def _site(
    tmp_path: Path, keys: Path, stranger: Path, *, kernel_filter: bool
) -> tuple[int, Path, Path, Path, Path, bytes]:
    """A controller (control socket, slow to shed, quick to restore) and a publisher of
    ``ups-a`` reading a file, on a fresh port; and a forgery of ``ups-a`` on battery by a
    stranger's key 1: the port, the reading, the control socket, the two configs and the
    forgery."""
    port = free_port()
    reading = tmp_path / "ups.json"
    set_reading(reading, "online")
    control = tmp_path / "ctl.sock"
    network = {"group": GROUP, "port": port, "interface": "127.0.0.1"}
    controller = write_toml(
        tmp_path / "c.toml",
        controller_config(
            port,
            keys,
            network={**network, "kernel_filter": kernel_filter},
            control={"socket": str(control)},
            policy={"shed_after_s": 3600.0, "restore_after_s": 0.0, "startup_grace_s": 0.5},
        ),
    )
    publisher = write_toml(tmp_path / "p.toml", publisher_config(port, keys, reading))
    lie = msgspec.structs.replace(message("on_battery", 10**9), publisher="ups-a")
    forged = wire.encode(lie, key_id=1, sign=load_keyring(stranger).signer(1))
    return port, reading, control, controller, publisher, forged


def _datagrams(control: Path) -> dict[str, Any]:
    """The ``datagrams`` part of a running controller's ``powercast status --json``."""
    done = subprocess.run(
        [sys.executable, "-m", "powercast", "status", "--json", "--socket", str(control)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["datagrams"]  # type: ignore[no-any-return]


@contextlib.contextmanager
def _daemons(
    controller: Path, publisher: Path, sender: str | None = None
) -> Iterator[tuple[Daemon, socket.socket]]:
    """A controller and a publisher running, and a socket sending on loopback's multicast
    (from the address ``sender``, when given)."""
    with (
        running("control", "--config", str(controller)) as ctl,
        running("publish", "--config", str(publisher)),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
    ):
        if sender is not None:
            s.bind((sender, 0))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        yield ctl, s


@pytest.mark.system
class TestDaemon:
    def test_a_repeated_forgery_is_dropped_by_the_kernel_and_news_still_arrives(
        self, tmp_path: Path, keys: Path, stranger: Path
    ) -> None:
        """A controller blocks a forgery repeated 2,000 times after seeing it twice: it
        counts only the few read before the filter was on; a real change still moves it."""
        port, reading, control, controller, publisher, forged = _site(
            tmp_path, keys, stranger, kernel_filter=True
        )
        with _daemons(controller, publisher) as (ctl, s):
            ctl.wait_for("transition", state="normal")
            s.sendto(forged, (GROUP, port))
            s.sendto(forged, (GROUP, port))
            ctl.wait_for("forgery_blocked")
            for _ in range(2000):
                s.sendto(forged, (GROUP, port))
                s.sendto(b"not ours", (GROUP, port))  # the shape part drops it
            set_reading(reading, "on_battery")
            ctl.wait_for("transition", state="on_battery")
            rejected = _datagrams(control)["rejected"]
        assert rejected == {"bad_tag": 2}

    def test_a_flood_of_varied_forgeries_is_dropped_by_source_and_news_still_arrives(
        self, tmp_path: Path, keys: Path, stranger: Path
    ) -> None:
        """Forgeries that never repeat a tag, 10,000 from 127.0.0.2: the controller blocks
        that address and the kernel drops the rest; the publisher on 127.0.0.1 is never
        blocked and its change still moves the controller."""
        port, reading, control, controller, publisher, forged = _site(
            tmp_path, keys, stranger, kernel_filter=False
        )
        with _daemons(controller, publisher, sender="127.0.0.2") as (ctl, s):
            ctl.wait_for("transition", state="normal")
            time.sleep(0.5)  # past the start-up grace, when floods start being blocked

            def flood() -> None:
                for _ in range(10_000):
                    s.sendto(forged[:-32] + os.urandom(32), (GROUP, port))

            flood()
            ctl.wait_for("source_blocked")
            time.sleep(REFILTER_EVERY_S + 0.2)  # the filter is on
            before = _datagrams(control)
            flood()
            set_reading(reading, "on_battery")
            ctl.wait_for("transition", state="on_battery")
            after = _datagrams(control)
        assert before["blocked_sources"] == after["blocked_sources"] == ["127.0.0.2"]
        assert before["rejected"]["bad_tag"] > 0
        assert after["rejected"] == before["rejected"]  # the kernel dropped every one


@pytest.mark.system
class TestRefilterBound:
    def test_a_cycling_flood_rebuilds_the_filter_at_most_every_quarter_second(
        self, tmp_path: Path, keys: Path, stranger: Path
    ) -> None:
        """Forgeries that each come twice block a tag each; the filter is rebuilt once at
        the first, then once more after REFILTER_EVERY_S with all of them, not per tag."""
        path = write_toml(tmp_path / "c.toml", controller_config(free_port(), keys))
        ctl_config = load(path, "controller")
        assert isinstance(ctl_config, ControllerConfig)
        theirs = load_keyring(stranger)
        forged = [
            wire.encode(message("on_battery", seq=10 + i), key_id=1, sign=theirs.signer(1))
            for i in range(30)
        ]
        built: list[int] = []

        class Counting(ControllerDaemon):
            def _refilter(self, *args: Any) -> None:
                built.append(len(self.core.blocked))
                super()._refilter(*args)

        class Done(Exception):
            pass

        async def go() -> None:
            daemon = Counting(path, ctl_config, load_keyring(keys))
            try:
                async with asyncio.TaskGroup() as tg:
                    await daemon.start(tg)
                    for data in forged:
                        daemon._on_datagram(data, "127.0.0.1")
                        daemon._on_datagram(data, "127.0.0.1")
                    await asyncio.sleep(REFILTER_EVERY_S + 0.2)
                    raise Done
            except* Done:
                pass
            finally:
                daemon.close()

        asyncio.run(go())
        assert built == [1, 30]
