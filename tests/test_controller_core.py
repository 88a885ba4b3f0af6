"""The controller's pure core: encoded datagrams and a fake clock in, decisions out.

Datagrams are built with wire.encode and signed with a key made in a temporary
directory, as the default config (auth.mode = "enforce") requires. Time is two plain
floats: monotonic ``now`` and wall-clock ``WALL + now``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from powercast import controller as controller_module
from powercast import wire
from powercast.auth import Keyring
from powercast.config import ControllerAuth, ControllerConfig, PolicySettings
from powercast.controller import LOG_EVERY_S, Controller
from powercast.policy import Decision
from powercast.secrets import keygen, load_keyring
from powercast.wire import PowerStatus

from fakes import KEY_ID, WALL, FakePublisher, make_keyring

pytestmark = pytest.mark.unit

ONLINE = PowerStatus.ONLINE
ON_BATTERY = PowerStatus.ON_BATTERY
"""The wall clock at monotonic time 0."""


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    """A keyring holding one fresh key, id 1."""
    directory: Path = tmp_path_factory.mktemp("keys")
    keygen(KEY_ID, directory / f"{KEY_ID}.key")
    return load_keyring(directory)


@dataclass
class Bench:
    """A controller and the publishers that talk to it, on one fake clock."""

    ctrl: Controller
    keyring: Keyring

    def publisher(self, name: str = "ups-a", **kw: Any) -> FakePublisher:
        """A publisher holding the controller's key."""
        return FakePublisher(name, self.keyring.signer(KEY_ID), **kw)

    def receive(self, data: bytes, now: float) -> list[Decision]:
        """Deliver ``data`` at monotonic ``now`` (wall clock in step)."""
        return self.ctrl.receive(data, now, WALL + now)

    def say(self, pub: FakePublisher, now: float, power: PowerStatus, **t: float) -> list[str]:
        """``pub`` announces news at ``now``; the states moved to."""
        return states(self.receive(pub.say(now, power, **t), now))

    def beat(self, pub: FakePublisher, now: float, **t: float) -> list[str]:
        """``pub`` sends a heartbeat at ``now``, then the runtime ticks; the states moved to."""
        moved = states(self.receive(pub.heartbeat(now, **t), now))
        return moved + states(self.ctrl.tick(now))


def config(*, auth: str = "enforce", **policy: Any) -> ControllerConfig:
    """5 s shedding debounce, 10 s restore wait, ``policy`` overrides, auth ``auth``."""
    settings = {"shed_after_s": 5.0, "restore_after_s": 10.0, **policy}
    return ControllerConfig(
        policy=PolicySettings(**settings),
        auth=ControllerAuth(mode=auth),  # type: ignore[arg-type]
    )


@pytest.fixture
def make(keyring: Keyring) -> Callable[..., Bench]:
    """Build a bench: ``make(**policy)``, with ``auth=`` for another auth mode."""

    def build(**kw: Any) -> Bench:
        return Bench(Controller(config(**kw), keyring=keyring), keyring)

    return build


def states(decisions: list[Decision]) -> list[str]:
    """The states moved to, in order."""
    return [d.state for d in decisions]


def to_shedding(bench: Bench, pub: FakePublisher) -> float:
    """Drive the bench from nothing to shedding on ``pub``'s outage; return the time."""
    assert bench.say(pub, 0.0, ONLINE, cpu=25.0) == ["normal"]
    assert bench.say(pub, 1.0, ON_BATTERY, cpu=25.0) == ["on_battery"]
    for now in (2.0, 3.0, 4.0, 5.0):
        assert bench.beat(pub, now) == []
    assert states(bench.ctrl.tick(6.0)) == ["shedding"]
    return 6.0


def bad_body() -> bytes:
    """A well-framed datagram whose body is not an announcement."""
    body = b"\x93\x01\x02\x03"
    return wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, 0, len(body)) + body


class TestController:
    def test_outage_drives_decisions(self, make: Callable[..., Bench]) -> None:
        """A publisher's outage, heartbeats and timers take the policy through a whole outage."""
        bench = make()
        ctrl = bench.ctrl
        pub = bench.publisher()
        decisions = bench.receive(pub.say(0.0, ONLINE, cpu=25.0), 0.0)
        assert [(d.previous, d.state) for d in decisions] == [("failsafe", "normal")]
        assert decisions[0].situation.sources == ("ups-a",)
        assert bench.say(pub, 1.0, ON_BATTERY, cpu=25.0) == ["on_battery"]
        for now in (2.0, 3.0, 4.0, 5.0):
            assert bench.beat(pub, now) == []
        assert ctrl.deadline() == 6.0  # on battery since 1.0, plus shed_after_s
        decisions = ctrl.tick(6.0)
        assert states(decisions) == ["shedding"]
        assert decisions[0].fans_on is False
        assert bench.say(pub, 7.0, ONLINE, cpu=25.0) == []  # the restore wait starts
        for now in range(8, 17):
            assert bench.beat(pub, float(now)) == []
        assert ctrl.deadline() == 17.0  # power back at 7.0, plus restore_after_s
        assert ctrl.tick(16.9) == []
        assert states(ctrl.tick(17.0)) == ["normal"]
        assert (ctrl.counters["new"], ctrl.counters["news"], ctrl.counters["repeat"]) == (1, 2, 13)
        assert ctrl.counters["received"] == 16

    def test_heartbeat_without_news_does_not_touch_the_chart(
        self, make: Callable[..., Bench], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A fresh publisher's heartbeat gives no decisions and never calls the chart."""
        bench = make()
        ctrl = bench.ctrl
        pub = bench.publisher()
        bench.say(pub, 0.0, ONLINE, cpu=25.0)
        sent: list[str] = []
        monkeypatch.setattr(ctrl.policy.chart, "send", lambda event, *a, **k: sent.append(event))
        monkeypatch.setattr(ctrl.policy.chart, "move", sent.append)
        before = (ctrl.policy.state, ctrl.policy.since, ctrl.policy.reason)
        assert bench.receive(pub.heartbeat(1.0), 1.0) == []
        assert sent == []
        assert (ctrl.policy.state, ctrl.policy.since, ctrl.policy.reason) == before
        assert ctrl.counters["repeat"] == 1
        assert ctrl.sessions["ups-a"].expires_at == 4.0  # only the expiry moved

    def test_duplicate_and_replay_are_counted_and_dropped(self, make: Callable[..., Bench]) -> None:
        """The same datagram twice, or an older one, neither decides nor extends freshness."""
        bench = make()
        ctrl = bench.ctrl
        pub = bench.publisher()
        first = pub.say(0.0, ONLINE, cpu=25.0)
        bench.receive(first, 0.0)
        second = pub.heartbeat(1.0)
        bench.receive(second, 1.0)
        assert bench.receive(second, 2.0) == []
        assert bench.receive(first, 2.0) == []
        assert (ctrl.counters["duplicate"], ctrl.counters["rejected.replay"]) == (1, 1)
        assert ctrl.sessions["ups-a"].expires_at == 4.0

    def test_silent_publisher_is_stale_at_tal_and_tick_fails_safe(
        self, make: Callable[..., Bench]
    ) -> None:
        """A publisher heard last at t goes stale at exactly t + tal, and tick() gives failsafe."""
        bench = make()
        ctrl = bench.ctrl
        pub = bench.publisher(tal=3.0)
        bench.say(pub, 10.0, ONLINE, cpu=25.0)
        assert ctrl.deadline() == 13.0
        assert ctrl.tick(12.999) == []
        assert ctrl.situation(12.999).sources == ("ups-a",)
        decisions = ctrl.tick(13.0)
        assert [(d.previous, d.state) for d in decisions] == [("normal", "failsafe")]
        assert decisions[0].situation.stale == ("ups-a",)
        assert "stale: ups-a" in decisions[0].reason
        assert ctrl.deadline() is None
        assert ctrl.tick(100.0) == []

    def test_silent_publisher_while_shedding_fails_safe(self, make: Callable[..., Bench]) -> None:
        """Losing the only publisher while shedding turns the fans on when its data runs out."""
        bench = make()
        pub = bench.publisher()
        to_shedding(bench, pub)  # last datagram at 5.0, tal 3 s
        assert bench.ctrl.tick(7.9) == []
        assert states(bench.ctrl.tick(8.0)) == ["failsafe"]

    def test_returning_publisher_is_evaluated(self, make: Callable[..., Bench]) -> None:
        """A heartbeat from a publisher that had gone stale is evaluated like news."""
        bench = make()
        pub = bench.publisher()
        bench.say(pub, 0.0, ONLINE, cpu=25.0)
        assert states(bench.ctrl.tick(3.0)) == ["failsafe"]
        assert states(bench.receive(pub.heartbeat(20.0), 20.0)) == ["normal"]

    def test_publisher_restart_is_new(self, make: Callable[..., Bench]) -> None:
        """A later new epoch from a known publisher is accepted; its old epoch is then refused."""
        bench = make()
        ctrl = bench.ctrl
        old = bench.publisher(epoch=1)
        bench.say(old, 0.0, ONLINE, cpu=25.0)
        new = bench.publisher(epoch=2)
        assert bench.say(new, 1.0, ON_BATTERY, cpu=25.0) == ["on_battery"]
        assert bench.receive(old.heartbeat(1.5), 1.5) == []
        assert (ctrl.counters["new"], ctrl.counters["rejected.replay"]) == (2, 1)
        assert ctrl.sessions["ups-a"].message.epoch == 2

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"PWRC", "truncated"),
            (b"XXXX" + bytes(20), "magic"),
            (struct.pack("!4sBBHH", b"PWRC", 9, 0, 0, 0), "version"),
            (struct.pack("!4sBBHH", b"PWRC", 1, 0, 0, 5), "length"),
            (bad_body(), "unsigned"),  # enforcing: refused before its body is read
            (bytes(wire.MAX_DATAGRAM + 1), "size"),
        ],
    )
    def test_malformed_datagram_is_counted_and_dropped(
        self, make: Callable[..., Bench], data: bytes, reason: str
    ) -> None:
        """A malformed datagram is counted under rejected.<reason> and changes nothing."""
        bench = make()
        ctrl = bench.ctrl
        bench.say(bench.publisher(), 0.0, ONLINE, cpu=25.0)
        session = ctrl.sessions["ups-a"]
        before = (ctrl.policy.state, ctrl.policy.situation, session.message, session.expires_at)
        assert bench.receive(data, 1.0) == []
        assert ctrl.counters[f"rejected.{reason}"] == 1
        assert ctrl.counters["received"] == 2
        assert list(ctrl.sessions) == ["ups-a"]
        after = (ctrl.policy.state, ctrl.policy.situation, session.message, session.expires_at)
        assert after == before
        assert ctrl.notices[0].fields["reason"] == reason

    def test_signed_datagram_with_a_bad_body_is_rejected_as_body(
        self, make: Callable[..., Bench]
    ) -> None:
        """A correctly signed datagram whose body is not an announcement is a body error."""
        bench = make()
        body = b"\x93\x01\x02\x03"
        signed = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.TAG_SIZE, KEY_ID, len(body)) + body
        assert bench.receive(signed + bench.keyring.signer(KEY_ID)(signed), 1.0) == []
        assert bench.ctrl.counters["rejected.body"] == 1

    def test_forgery_is_refused_before_its_body_is_decoded(
        self, make: Callable[..., Bench]
    ) -> None:
        """A bad tag is refused as bad_tag even when the body would not decode either."""
        bench = make()
        body = b"\x93\x01\x02\x03"
        signed = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.TAG_SIZE, KEY_ID, len(body)) + body
        assert bench.receive(signed + bytes(wire.TAG_SIZE), 1.0) == []
        assert bench.ctrl.counters["rejected.bad_tag"] == 1
        assert bench.ctrl.counters["rejected.body"] == 0

    def test_rejection_notices_are_rate_limited(self, make: Callable[..., Bench]) -> None:
        """Bad datagrams within 10 s give one notice; the next one says how many went unlogged."""
        ctrl = make().ctrl
        for i in range(50):
            ctrl.receive(b"junk", 100.0 + i * 0.19, WALL)  # all within 9.5 s
        assert ctrl.counters["rejected.truncated"] == 50
        assert len(ctrl.notices) == 1
        assert ctrl.notices[0].event == "datagram_rejected"
        assert ctrl.notices[0].fields == {
            "reason": "truncated",
            "detail": "4 bytes, shorter than the header",
        }
        ctrl.notices.clear()
        ctrl.receive(b"junk", 100.0 + LOG_EVERY_S, WALL)
        assert len(ctrl.notices) == 1
        assert ctrl.notices[0].fields["similar_not_logged"] == 49
        ctrl.notices.clear()
        ctrl.receive(b"junk", 100.0 + 2 * LOG_EVERY_S, WALL)
        assert "similar_not_logged" not in ctrl.notices[0].fields

    def test_rejection_notices_are_limited_per_reason(self, make: Callable[..., Bench]) -> None:
        """Each kind of rejection has its own rate limit."""
        ctrl = make().ctrl
        ctrl.receive(b"junk", 0.0, WALL)
        ctrl.receive(b"XXXX" + bytes(20), 0.1, WALL)
        ctrl.receive(b"junk", 0.2, WALL)
        assert [n.fields["reason"] for n in ctrl.notices] == ["truncated", "magic"]

    def test_allow_list_drops_unlisted_publishers(self, make: Callable[..., Bench]) -> None:
        """With policy.publishers set, others are counted as rejected.unlisted and ignored."""
        bench = make(publishers=["ups-a"])
        ctrl = bench.ctrl
        assert bench.say(bench.publisher("ups-b"), 0.0, ON_BATTERY, cpu=20.0) == []
        assert ctrl.counters["rejected.unlisted"] == 1
        assert "ups-b" not in ctrl.sessions
        assert ctrl.notices[0].fields["detail"] == "publisher 'ups-b' is not in policy.publishers"
        assert bench.say(bench.publisher("ups-a"), 1.0, ONLINE, cpu=20.0) == ["normal"]

    def test_wall_clock_skew_is_rejected(self, make: Callable[..., Bench]) -> None:
        """A datagram sent further than auth.max_clock_skew_s from our wall clock is dropped."""
        bench = make()
        ctrl = bench.ctrl
        pub = bench.publisher()
        assert ctrl.receive(pub.say(0.0, ONLINE, cpu=25.0), 0.0, WALL + 10.5) == []
        assert ctrl.counters["rejected.clock"] == 1
        assert ctrl.sessions == {}

    def test_reconfigure_keeps_state_and_sessions(
        self, make: Callable[..., Bench], keyring: Keyring
    ) -> None:
        """A new config keeps the state and the publishers, and its settings apply from then on."""
        bench = make()
        ctrl = bench.ctrl
        pub = bench.publisher()
        now = to_shedding(bench, pub)
        policy = ctrl.policy
        assert ctrl.reconfigure(config(restore_after_s=2.0), keyring, now) == []
        assert ctrl.policy is policy
        assert ctrl.policy.state == "shedding"
        assert list(ctrl.sessions) == ["ups-a"]
        assert bench.say(pub, 7.0, ONLINE, cpu=25.0) == []
        assert ctrl.policy.deadline() == 9.0  # the new restore_after_s
        assert bench.beat(pub, 8.0) == []
        assert states(ctrl.tick(9.0)) == ["normal"]

    def test_reconfigure_applies_new_limits_at_once(
        self, make: Callable[..., Bench], keyring: Keyring
    ) -> None:
        """A lower temp_high_c takes effect in the reconfigure call itself."""
        bench = make()
        now = to_shedding(bench, bench.publisher())
        decisions = bench.ctrl.reconfigure(config(temp_high_c=20.0), keyring, now)
        assert states(decisions) == ["thermal_override"]

    def test_reconfigure_allow_list_drops_known_unlisted_publishers(
        self, make: Callable[..., Bench], keyring: Keyring
    ) -> None:
        """After reconfigure with an allow-list, a known publisher not on it stops counting."""
        bench = make()
        ctrl = bench.ctrl
        bench.say(bench.publisher("ups-a"), 0.0, ON_BATTERY)
        bench.say(bench.publisher("lab", tal=86_400.0), 0.0, ON_BATTERY, cpu=20.0)
        assert ctrl.policy.state == "on_battery"  # lab's temperature makes shedding possible
        ctrl.reconfigure(config(publishers=["ups-a"]), keyring, 1.0)
        assert ctrl.situation(1.0).sources == ("ups-a",)
        assert ctrl.policy.state == "failsafe"  # ups-a alone: on battery, no temperature

    def test_unsigned_forged_online_is_rejected(self, make: Callable[..., Bench]) -> None:
        """With auth enforced, an unsigned forged 'online' is dropped as rejected.unsigned."""
        bench = make()
        ctrl = bench.ctrl
        bench.say(bench.publisher(), 0.0, ON_BATTERY, cpu=25.0)
        forged = FakePublisher("forged", None, epoch=666)
        assert bench.say(forged, 1.0, ONLINE) == []
        assert ctrl.counters["rejected.unsigned"] == 1
        assert ctrl.policy.state == "on_battery"
        assert "forged" not in ctrl.sessions

    def test_permissive_auth_accepts_unsigned_and_says_so(self, make: Callable[..., Bench]) -> None:
        """With auth.mode = permissive an unsigned datagram counts, with a counter and a notice."""
        bench = make(auth="permissive")
        ctrl = bench.ctrl
        assert bench.say(FakePublisher("ups-a", None), 0.0, ONLINE, cpu=25.0) == ["normal"]
        assert ctrl.counters["accepted.unsigned"] == 1
        assert [n.event for n in ctrl.notices] == ["datagram_not_authentic"]

    def test_signed_unknown_publisher_claiming_online_wins_fans_on_safe_side(
        self, make: Callable[..., Bench]
    ) -> None:
        """Current behaviour: a key holder under a new name saying online wins, so fans run."""
        bench = make()
        ctrl = bench.ctrl
        real = bench.publisher("ups-a", tal=100.0)
        assert bench.say(real, 0.0, ON_BATTERY, cpu=25.0) == ["on_battery"]
        forged = bench.publisher("forged", epoch=666, tal=100.0)
        decisions = bench.receive(forged.say(1.0, ONLINE), 1.0)
        assert [(d.previous, d.state) for d in decisions] == [("on_battery", "normal")]
        assert decisions[0].fans_on is True
        assert decisions[0].situation.sources == ("forged", "ups-a")
        assert ctrl.tick(6.0) == []  # no shedding while the forged datagram is fresh

    def test_heartbeat_reaching_temp_high_while_shedding_turns_fans_on(
        self, make: Callable[..., Bench]
    ) -> None:
        """A heartbeat reaching temp_high_c while shedding gives thermal_override at once."""
        bench = make(temp_high_c=35.0)
        pub = bench.publisher()
        assert bench.say(pub, 0.0, ON_BATTERY, cpu=34.6) == ["on_battery"]
        assert bench.beat(pub, 2.5) == []
        assert states(bench.ctrl.tick(5.0)) == ["shedding"]
        # 35.0 is within the default 0.5 °C deadband of 34.6, so it rides on a heartbeat.
        assert states(bench.receive(pub.heartbeat(5.2, cpu=35.0), 5.2)) == ["thermal_override"]


class TestCapacity:
    def test_made_up_publishers_cannot_grow_the_table(
        self, make: Callable[..., Bench], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With auth off, publishers beyond the cap are refused until others go stale."""
        monkeypatch.setattr(controller_module, "MAX_PUBLISHERS", 3)
        bench = make(auth="off")
        for i in range(3):
            bench.say(FakePublisher(f"p{i}", None), 0.0, ONLINE, cpu=25.0)
        assert bench.receive(FakePublisher("p3", None).say(0.5, ONLINE, cpu=25.0), 0.5) == []
        assert bench.ctrl.counters["rejected.capacity"] == 1
        assert sorted(bench.ctrl.sessions) == ["p0", "p1", "p2"]
        bench.say(FakePublisher("p4", None), 10.0, ONLINE, cpu=25.0)  # the others are stale
        assert sorted(bench.ctrl.sessions) == ["p4"]


class TestKeysDiffer:
    """A datagram whose tag fails, diagnosed: whose it is, and what to copy where."""

    A = "10.0.0.5"
    B = "10.0.0.6"

    @pytest.fixture
    def stranger(self, tmp_path: Path) -> FakePublisher:
        """ups-a holding another key with the same id (a key made on another node)."""
        other = make_keyring(tmp_path / "other")
        return FakePublisher("ups-a", other.signer(KEY_ID))

    def notices(self, ctrl: Controller, event: str) -> list[dict[str, Any]]:
        found = [n.fields for n in ctrl.notices if n.event == event]
        ctrl.notices.clear()
        return found

    def test_address_that_sent_good_data_is_told_the_keys_differ(
        self, make: Callable[..., Bench], keyring: Keyring, stranger: FakePublisher
    ) -> None:
        """ups-a sent good news from A, then its key changed: one keys_differ notice names
        the key id claimed, this node's key and fingerprint, the file to copy to, and
        status keeps the last rejection from A with the same hint; nothing is decided."""
        bench = make()
        good = bench.publisher()
        bench.ctrl.receive(good.say(0.0, ONLINE), 0.0, WALL, self.A)
        state = bench.ctrl.policy.state
        stranger.epoch = 2
        assert bench.ctrl.receive(stranger.say(1.0, ON_BATTERY), 1.0, WALL + 1, self.A) == []
        (notice,) = self.notices(bench.ctrl, "keys_differ")
        fp = keyring.fingerprints[KEY_ID]
        assert notice["publisher"] == "ups-a"
        assert notice["source"] == "10.0.0.5"
        assert (notice["key_id"], notice["this_node"]) == (1, f"key 1 fp {fp}")
        assert notice["key_file"] == str(keyring.file(KEY_ID))
        assert f"this node's key 1 fp {fp} ({keyring.file(KEY_ID)})" in notice["hint"]
        assert "copy the publisher's key file (1.key" in notice["hint"]
        assert "powercast keygen --show" in notice["hint"]
        assert bench.ctrl.counters["rejected.bad_tag"] == 1
        assert bench.ctrl.policy.state == state
        last = bench.ctrl.rejections[self.A]
        assert (last.reason, last.publisher, last.count) == ("bad_tag", "ups-a", 1)
        assert last.hint == notice["hint"]

    def test_paced_one_line_per_interval(
        self, make: Callable[..., Bench], stranger: FakePublisher
    ) -> None:
        """A stream of badly signed datagrams says keys_differ once per LOG_EVERY_S, with
        the number rejected from that sender; every one is counted."""
        bench = make()
        bench.ctrl.receive(bench.publisher().say(0.0, ONLINE), 0.0, WALL, self.A)
        for i in range(20):
            now = 1.0 + i * 0.1
            bench.ctrl.receive(stranger.heartbeat(now), now, WALL + now, self.A)
        assert len(self.notices(bench.ctrl, "keys_differ")) == 1
        later = 1.0 + LOG_EVERY_S + 1
        bench.ctrl.receive(stranger.heartbeat(later), later, WALL + later, self.A)
        (again,) = self.notices(bench.ctrl, "keys_differ")
        assert again["rejected"] == 21
        assert bench.ctrl.counters["rejected.bad_tag"] == 21
        assert bench.ctrl.rejections[self.A].count == 21

    def test_listed_publisher_from_a_new_address(
        self, make: Callable[..., Bench], stranger: FakePublisher
    ) -> None:
        """A publisher the config names, never heard good, from an unknown address: the
        keys differ is said, though other publishers verify."""
        bench = make(publishers=["ups-a", "ups-b"])
        bench.ctrl.receive(bench.publisher("ups-b").say(0.0, ONLINE), 0.0, WALL, self.B)
        bench.ctrl.receive(stranger.say(1.0, ONLINE), 1.0, WALL + 1, self.A)
        (notice,) = self.notices(bench.ctrl, "keys_differ")
        assert notice["publisher"] == "ups-a"
        assert notice["hint"].startswith("the keys differ: ")

    def test_stranger_while_others_verify_is_only_counted(
        self, make: Callable[..., Bench], tmp_path: Path
    ) -> None:
        """A sender nobody knows, claiming an id the config does not name, while good
        publishers verify: counted and dropped, no keys_differ line; status still has
        its rejection, with a hint that says "if"."""
        bench = make()
        bench.ctrl.receive(bench.publisher("ups-b").say(0.0, ONLINE), 0.0, WALL, self.B)
        forger = FakePublisher("mallory", make_keyring(tmp_path / "m").signer(KEY_ID))
        bench.ctrl.receive(forger.say(1.0, ON_BATTERY), 1.0, WALL + 1, self.A)
        assert self.notices(bench.ctrl, "keys_differ") == []
        last = bench.ctrl.rejections[self.A]
        assert last.publisher == "mallory"
        assert last.hint is not None
        assert last.hint.startswith("if the sender is one of your")

    def test_nothing_verified_yet_is_said_with_an_if(
        self, make: Callable[..., Bench], stranger: FakePublisher
    ) -> None:
        """A new controller whose every datagram fails (its key is not the publishers'):
        keys_differ is said, hedged, since no publisher is known yet."""
        bench = make()
        bench.ctrl.receive(stranger.say(0.0, ONLINE), 0.0, WALL, self.A)
        (notice,) = self.notices(bench.ctrl, "keys_differ")
        assert notice["hint"].startswith("if the sender is one of your publishers, the keys")

    def test_unknown_key_names_the_file_to_add(
        self, make: Callable[..., Bench], keyring: Keyring, tmp_path: Path
    ) -> None:
        """A publisher signing with a key id this node lacks: the file to copy is <id>.key
        here, and this node's keys are listed."""
        bench = make()
        bench.ctrl.receive(bench.publisher().say(0.0, ONLINE), 0.0, WALL, self.A)
        keygen(7, tmp_path / "7.key")
        seven = load_keyring(tmp_path).signer(7)
        message = wire.decode(bench.publisher().say(1.0, ONLINE)).message
        bench.ctrl.receive(wire.encode(message, key_id=7, sign=seven), 1.0, WALL + 1, self.A)
        (notice,) = self.notices(bench.ctrl, "keys_differ")
        assert notice["reason"] == "unknown_key"
        assert notice["key_file"] == str(keyring.directory / "7.key")
        assert f"this node has no hmac-sha256 key 7 (it has {keyring.describe()})" in notice["hint"]

    def test_senders_kept_are_bounded(self, make: Callable[..., Bench]) -> None:
        """Rejections from ever new addresses keep at most MAX_SOURCES, the latest."""
        bench = make()
        n = controller_module.MAX_SOURCES + 10
        for i in range(n):
            bench.ctrl.receive(b"not ours", 0.0, WALL, f"10.1.{i // 256}.{i % 256}")
        assert len(bench.ctrl.rejections) == controller_module.MAX_SOURCES
        assert f"10.1.{(n - 1) // 256}.{(n - 1) % 256}" in bench.ctrl.rejections
        assert "10.1.0.0" not in bench.ctrl.rejections
