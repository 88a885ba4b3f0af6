"""Trust beyond one hall: keys bound to publishers, signatures no receiver can forge, and
verify budgets, in the controller's pure core (signed datagrams on a fake clock)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from powercast import wire
from powercast.auth import Gate, Keyring, KeyringError, public_key
from powercast.budget import NEWCOMERS, Budgets, TokenBucket
from powercast.config import ControllerAuth, ControllerConfig, PolicySettings, Zone
from powercast.controller import Controller
from powercast.policy import Decision
from powercast.secrets import keygen, load_keys
from powercast.states import FANS_ON

from fakes import WALL, FakePublisher

pytestmark = pytest.mark.unit

ONLINE = wire.PowerStatus.ONLINE
ON_BATTERY = wire.PowerStatus.ON_BATTERY
SEED_1 = bytes(range(32))
SEED_2 = bytes(range(32, 64))


def publishers_ring() -> Keyring:
    """What the publishers hold between them: Ed25519 private keys 1 (ups-a), 2 (ups-b)."""
    return Keyring.from_keys({}, Path("pub"), private={1: SEED_1, 2: SEED_2})


def controllers_ring() -> Keyring:
    """What a controller holds: the public keys 1 and 2, nothing that signs."""
    public = {1: public_key(SEED_1), 2: public_key(SEED_2)}
    return Keyring.from_keys({}, Path("ctl"), public=public)


def hall(bindings: dict[str, list[int]], **auth: Any) -> ControllerConfig:
    """One zone powered by ups-a and ups-b, believed on battery only when both say so."""
    return ControllerConfig(
        policy=PolicySettings(shed_after_s=5.0, restore_after_s=10.0),
        auth=ControllerAuth(scheme="ed25519", publishers=bindings, **auth),
        zones=[Zone(name="hall", publishers=["ups-a", "ups-b"], power_quorum=2)],
    )


def publisher(name: str, key_id: int, ring: Keyring, **kw: Any) -> FakePublisher:
    return FakePublisher(name, ring.signer(key_id), key_id=key_id, **kw)


def run_theft(ctrl: Controller, ring: Keyring | None = None) -> list[str]:
    """Both publishers say online; then a thief holding only ups-a's key announces ups-a
    and ups-b on battery (a new epoch each, as a restart would) for 30 s, while the real
    ups-b keeps saying online for 10 s and then falls silent. Every state entered.
    ``ring``: the publishers' keys (default: their Ed25519 private keys)."""
    ring = ring or publishers_ring()
    a, b = publisher("ups-a", 1, ring), publisher("ups-b", 2, ring)
    thief_a = publisher("ups-a", 1, ring, epoch=99)
    thief_b = publisher("ups-b", 1, ring, epoch=99)
    entered: list[Decision] = []
    entered += ctrl.receive(a.say(0.0, ONLINE, inlet=20.0), 0.0, WALL)
    entered += ctrl.receive(b.say(0.0, ONLINE, inlet=20.0), 0.0, WALL)
    for step in range(1, 61):
        now = step / 2
        lies = (thief_a.say(now, ON_BATTERY, inlet=20.0), thief_b.say(now, ON_BATTERY, inlet=20.0))
        for data in lies:
            entered += ctrl.receive(data, now, WALL + now)
        if now <= 10:
            entered += ctrl.receive(b.heartbeat(now), now, WALL + now)
        entered += ctrl.tick(now)
    return [d.state for d in entered]


class TestStolenKey:
    def test_one_stolen_publisher_key_cannot_shed_a_two_publisher_zone(self) -> None:
        """With ups-a = [1] and ups-b = [2], a thief with key 1 speaks only for ups-a: its
        ups-b datagrams are wrong_key, the quorum of two is never reached, fans stay on."""
        ctrl = Controller(hall({"ups-a": [1], "ups-b": [2]}), controllers_ring())
        states = run_theft(ctrl)
        assert states[0] == "normal"
        assert "shedding" not in states
        assert all(FANS_ON[state] for state in states)
        assert ctrl.counters["rejected.wrong_key"] == 60
        assert ctrl.sessions["ups-b"].message.epoch == 1  # the real ups-b, never the thief
        assert ctrl.zones["hall"].state != "shedding"

    def test_bindings_hold_for_shared_hmac_keys_too(self) -> None:
        """With one HMAC key per publisher, bound as above, the thief of key 1 cannot shed
        the zone either (though the controller could forge: that is what ed25519 ends)."""
        ring = Keyring.from_keys({1: SEED_1, 2: SEED_2}, Path("k"))
        config = hall({"ups-a": [1], "ups-b": [2]})
        config = msgspec.structs.replace(
            config, auth=msgspec.structs.replace(config.auth, scheme="hmac-sha256")
        )
        ctrl = Controller(config, ring)
        states = run_theft(ctrl, ring)
        assert "shedding" not in states
        assert all(FANS_ON[state] for state in states)
        assert ctrl.counters["rejected.wrong_key"] == 60

    def test_without_bindings_the_same_key_sheds_the_zone(self) -> None:
        """The same theft with any key allowed for any publisher takes over ups-b too and
        sheds the zone: what the binding above prevents."""
        ctrl = Controller(hall({}), controllers_ring())
        assert "shedding" in run_theft(ctrl)
        assert ctrl.counters["rejected.wrong_key"] == 0

    def test_a_publisher_not_bound_has_no_key(self) -> None:
        """With bindings, a publisher id not listed is wrong_key whatever key signs it."""
        ctrl = Controller(hall({"ups-a": [1], "ups-b": [2]}), controllers_ring())
        stranger = publisher("ups-z", 1, publishers_ring())
        assert ctrl.receive(stranger.say(0.0, ON_BATTERY), 0.0, WALL) == []
        assert ctrl.counters["rejected.wrong_key"] == 1
        assert "ups-z" not in ctrl.sessions

    def test_wrong_key_is_said_only_of_a_good_tag(self) -> None:
        """A bad signature by a key not allowed for the publisher is bad_tag, not wrong_key:
        wrong_key always means that key's holder really spoke for another publisher."""
        ctrl = Controller(hall({"ups-a": [1], "ups-b": [2]}), controllers_ring())
        data = bytearray(publisher("ups-b", 1, publishers_ring()).say(0.0, ON_BATTERY))
        data[-1] ^= 1
        ctrl.receive(bytes(data), 0.0, WALL)
        assert (ctrl.counters["rejected.bad_tag"], ctrl.counters["rejected.wrong_key"]) == (1, 0)

    def test_wrong_key_says_the_keys_bound_to_that_publisher(self) -> None:
        """A good signature by key 1 claiming ups-b (bound to key 2): one keys_differ
        warning of reason wrong_key names the publisher, the key that verified and the
        keys bound to ups-b; status keeps the sender's rejection with the same hint."""
        ctrl = Controller(hall({"ups-a": [1], "ups-b": [2]}), controllers_ring())
        thief = publisher("ups-b", 1, publishers_ring())
        for step in range(5):
            ctrl.receive(thief.say(step / 10, ON_BATTERY), step / 10, WALL, "10.0.0.9")
        (notice,) = [n.fields for n in ctrl.notices if n.event == "keys_differ"]
        fp = ctrl.keyring.fingerprints[1]
        assert (notice["reason"], notice["publisher"], notice["bound"]) == (
            "wrong_key",
            "ups-b",
            [2],
        )
        assert notice["this_node"] == f"key 1 fp {fp}"
        assert notice["hint"].startswith(
            f"key 1 fp {fp} verifies, but auth.publishers allows only key 2 for 'ups-b'"
        )
        last = ctrl.rejections["10.0.0.9"]
        assert (last.reason, last.publisher, last.count) == ("wrong_key", "ups-b", 5)
        assert last.hint == notice["hint"]
        assert "ups-b" not in ctrl.sessions

    def test_permissive_counts_wrong_key_and_takes_it(self) -> None:
        """auth.mode = permissive takes a wrong_key datagram, counted as accepted.wrong_key."""
        ctrl = Controller(hall({"ups-a": [1]}, mode="permissive"), controllers_ring())
        ctrl.receive(publisher("ups-b", 1, publishers_ring()).say(0.0, ONLINE), 0.0, WALL)
        assert ctrl.counters["accepted.wrong_key"] == 1
        assert "ups-b" in ctrl.sessions


class TestPublicKeysCannotForge:
    def test_a_controllers_key_material_makes_no_datagram_another_controller_accepts(
        self, tmp_path: Path
    ) -> None:
        """Every byte string in a controller's key directory (its public keys), used as an
        HMAC key or as an Ed25519 private key under every key id, and the controller's own
        keyring, make nothing that another controller believing both schemes accepts."""
        made = tmp_path / "publisher-keys"
        made.mkdir(mode=0o700)
        keygen(1, made / "1.private", "ed25519")
        keygen(2, made / "2.private", "ed25519")
        config = ControllerConfig(
            auth=ControllerAuth(keys_dir=str(tmp_path / "ctl"), scheme=["hmac-sha256", "ed25519"])
        )
        (tmp_path / "ctl").mkdir(mode=0o700)
        for key_id in (1, 2):
            (tmp_path / "ctl" / f"{key_id}.public").write_bytes(
                (made / f"{key_id}.public").read_bytes()
            )
        compromised = load_keys(config)
        assert compromised.schemes() == {1: "ed25519", 2: "ed25519"}
        for key_id in (1, 2):
            with pytest.raises(KeyringError, match="public key, which cannot sign"):
                compromised.signer(key_id)
        material = [
            bytes.fromhex(path.read_text()) for path in sorted((tmp_path / "ctl").iterdir())
        ]
        lie = FakePublisher("ups-a", None)
        forgeries = []
        for n, secret in enumerate(material):
            forger = Keyring.from_keys(
                {1: secret, 2: secret}, tmp_path, private={3: secret, 4: secret}
            )
            for key_id, tag_size in ((1, 32), (2, 32), (3, 64), (4, 64)):
                lie.sign, lie.key_id = forger.signer(key_id), key_id
                forgeries.append(lie.say(float(n), ON_BATTERY))
                # the same signature under the real key ids 1 and 2
                raw = bytearray(forgeries[-1])
                raw[6:8] = (1 + key_id % 2).to_bytes(2, "big")
                body_end = len(raw) - tag_size
                resigned = bytes(raw[:body_end])
                forgeries.append(resigned + forger.signer(key_id)(resigned))
        other = Controller(config, load_keys(config))
        for data in forgeries:
            assert other.receive(data, 1.0, WALL + 1.0) == []
        assert other.sessions == {}
        assert other.accepted == 0
        rejected = {k: v for k, v in other.counters.items() if k.startswith("rejected.")}
        assert sum(rejected.values()) == len(forgeries)
        assert set(rejected) <= {"rejected.unknown_key", "rejected.bad_tag"}
        genuine = load_keys_private(made)
        assert other.receive(genuine.say(2.0, ONLINE), 2.0, WALL + 2.0)[0].state == "normal"


def load_keys_private(directory: Path) -> FakePublisher:
    """ups-a signing with the private key 1 that keygen wrote in ``directory``."""
    seed = bytes.fromhex((directory / "1.private").read_text())
    return FakePublisher("ups-a", Keyring.from_keys({}, directory, private={1: seed}).signer(1))


class TestVerifyBudget:
    def config(self, **auth: Any) -> ControllerConfig:
        return ControllerConfig(
            policy=PolicySettings(shed_after_s=0.0, restore_after_s=0.0),
            auth=ControllerAuth(scheme="ed25519", publishers={"ups-a": [1], "ups-b": [2]}, **auth),
        )

    def forged(self, name: str = "ups-a", key_id: int = 1) -> bytes:
        """An announcement of ``name`` on battery with 64 random bytes for a signature."""
        message = FakePublisher(name, None).say(0.0, ON_BATTERY)
        body = message[wire.HEADER.size :]
        header = wire.HEADER.pack(wire.MAGIC, wire.VERSION, 64, key_id, len(body))
        return header + body + os.urandom(64)

    def test_a_flood_starves_only_the_publisher_it_names(self) -> None:
        """Forged signatures for ups-a beyond its budget are dropped unchecked; ups-b is
        still checked and taken, ups-a's own data is starved and goes stale (fans on),
        and no forged word is believed."""
        ctrl = Controller(self.config(verify_rate=50.0), controllers_ring())
        ring = publishers_ring()
        a, b = publisher("ups-a", 1, ring, tal=1.0), publisher("ups-b", 2, ring, tal=1.0)
        ctrl.receive(a.say(0.0, ONLINE), 0.0, WALL)
        ctrl.receive(b.say(0.0, ONLINE), 0.0, WALL)
        states = []
        for step in range(1, 301):  # 3 s: 1000 forgeries a second, heartbeats every 0.1 s
            now = step / 100
            for _ in range(10):
                states += [
                    d.state for d in ctrl.receive(self.forged(), now, WALL + now, "10.9.9.9")
                ]
            if step % 10 == 0:
                states += [d.state for d in ctrl.receive(a.heartbeat(now), now, WALL + now)]
                states += [d.state for d in ctrl.receive(b.heartbeat(now), now, WALL + now)]
            states += [d.state for d in ctrl.tick(now)]
        checked = ctrl.counters["rejected.bad_tag"]
        assert ctrl.counters["rejected.over_budget"] > 2500
        assert checked <= 100 + 50 * 3 + 1  # the burst, then the rate
        assert ctrl.sessions["ups-b"].fresh(3.0)
        assert ctrl.counters["repeat"] >= 30  # every ups-b heartbeat (and few of ups-a's)
        assert not ctrl.sessions["ups-a"].fresh(3.0)  # starved: its data ran out
        assert ctrl.sessions["ups-a"].message.power.status is ONLINE  # never the forgery
        assert all(FANS_ON[state] for state in states)
        assert ctrl.policy.state != "shedding"

    def test_diagnosis_checks_no_signature_beyond_the_budget(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A flood of forged signatures from one address claiming ups-a: signatures are
        checked only within the budget (diagnosis adds none), what is over budget is kept
        in status as over_budget, and keys_differ is said at most once in LOG_EVERY_S."""
        checks = 0
        check = Keyring.check

        def counted(ring: Keyring, *args: Any) -> bool:
            nonlocal checks
            checks += 1
            return check(ring, *args)

        monkeypatch.setattr(Keyring, "check", counted)
        ctrl = Controller(self.config(source_verify_rate=20.0), controllers_ring())
        for step in range(1000):
            now = step / 1000
            ctrl.receive(self.forged(), now, WALL + now, "10.9.9.9")
        assert checks == ctrl.counters["rejected.bad_tag"] == 40 + 20 - 1  # burst, then rate
        assert ctrl.counters["rejected.over_budget"] == 1000 - checks
        last = ctrl.rejections["10.9.9.9"]
        assert (last.count, last.publisher) == (1000, "ups-a")
        said = [n.fields for n in ctrl.notices if n.event == "keys_differ"]
        assert [n["reason"] for n in said] == ["bad_tag"]

    def test_a_flood_from_one_source_spends_that_sources_budget_first(self) -> None:
        """Forgeries from one address beyond its budget are dropped before they touch the
        publisher's budget: ups-a, heard from another address, is still checked."""
        ctrl = Controller(self.config(source_verify_rate=20.0), controllers_ring())
        a = publisher("ups-a", 1, publishers_ring())
        for _ in range(1000):
            ctrl.receive(self.forged(), 0.5, WALL + 0.5, "10.9.9.9")
        assert ctrl.counters["rejected.bad_tag"] == 40  # the source's burst, less than ups-a's
        assert ctrl.receive(a.say(0.5, ONLINE), 0.5, WALL + 0.5, "10.0.0.1")[0].state == "normal"

    def test_unknown_publisher_ids_share_one_budget(self) -> None:
        """Forgeries naming a new publisher id each are charged to one shared budget, so
        they cannot buy checks by the thousand; known publishers keep their own."""
        ctrl = Controller(
            ControllerConfig(auth=ControllerAuth(scheme="ed25519")), controllers_ring()
        )
        for n in range(1000):
            ctrl.receive(self.forged(f"ups-{n}"), 0.0, WALL)
        assert ctrl.counters["rejected.bad_tag"] == 100  # the newcomers' burst
        assert ctrl.counters["rejected.over_budget"] == 900
        b = publisher("ups-b", 2, publishers_ring())
        assert ctrl.receive(b.say(0.0, ONLINE), 0.0, WALL) == []  # a newcomer too: starved
        assert ctrl.counters["rejected.over_budget"] == 901
        assert ctrl.receive(b.heartbeat(1.0), 1.0, WALL + 1.0)[0].state == "normal"
        for n in range(1000):  # known now: the newcomers' flood no longer reaches it
            ctrl.receive(self.forged(f"ups-x{n}"), 1.0, WALL + 1.0)
        assert ctrl.receive(b.heartbeat(1.0), 1.0, WALL + 1.0) == []
        assert ctrl.counters["repeat"] == 1

    def test_hmac_tags_are_not_budgeted(self) -> None:
        """An HMAC costs what the decode after it costs: thousands at one instant are checked."""
        ring = Keyring.from_keys({1: SEED_1}, Path("k"))
        ctrl = Controller(ControllerConfig(auth=ControllerAuth(verify_rate=1.0)), ring)
        pub = FakePublisher("ups-a", ring.signer(1))
        for _ in range(500):
            ctrl.receive(pub.heartbeat(0.0), 0.0, WALL, "10.0.0.1")
        assert ctrl.counters["rejected.over_budget"] == 0
        assert ctrl.accepted == 500


class TestGate:
    def test_a_tag_is_looked_up_by_key_id_and_length(self) -> None:
        """A 32-byte tag under an Ed25519 key id, or 64 bytes under an HMAC key id, is
        unknown_key: a key of one scheme never checks a tag of the other."""
        ring = Keyring.from_keys({1: SEED_1}, Path("k"), public={2: public_key(SEED_2)})
        gate = Gate(ring)
        hmac_by_2 = FakePublisher("ups-a", ring.signer(1), key_id=2).say(0.0, ONLINE)
        ed_by_1 = publisher("ups-a", 2, publishers_ring())
        ed_by_1.key_id = 1
        for data in (hmac_by_2, ed_by_1.say(0.0, ONLINE)):
            assert gate.check(wire.open_envelope(data), None, 0.0) == "unknown_key"

    def test_both_schemes_side_by_side(self) -> None:
        """A receiver holding an HMAC key and a public key takes datagrams of both."""
        ring = Keyring.from_keys({1: SEED_1}, Path("k"), public={2: public_key(SEED_2)})
        ctrl = Controller(
            ControllerConfig(auth=ControllerAuth(scheme=["hmac-sha256", "ed25519"])), ring
        )
        old = FakePublisher("ups-a", ring.signer(1))
        new = publisher("ups-b", 2, publishers_ring())
        ctrl.receive(old.say(0.0, ONLINE), 0.0, WALL)
        ctrl.receive(new.say(0.0, ONLINE), 0.0, WALL)
        assert set(ctrl.sessions) == {"ups-a", "ups-b"}


class TestBudgets:
    def test_a_bucket_refills_at_its_rate_up_to_its_burst(self) -> None:
        """Tokens come back at ``rate`` a second, never above ``burst``; a clock going
        back gives none."""
        bucket = TokenBucket(rate=10.0, burst=3.0, tokens=3.0, at=0.0)
        assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
        assert bucket.take(0.1)
        assert not bucket.take(0.1)
        assert not bucket.take(0.05)  # backwards: nothing added
        assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]

    def test_the_table_is_bounded(self) -> None:
        """At most ``size`` learned keys and about as many buckets: ids without end cost
        nothing beyond that."""
        budgets = Budgets(1.0, 1.0, size=8, newcomers_share=True, configured=frozenset({"a"}))
        for n in range(100):
            budgets.learn(f"p{n}")
            budgets.take(f"p{n}", 0.0)
        assert len(budgets.learned) == 8
        assert len(budgets.buckets) <= 8 + 1 + 1
        assert budgets.take("a", 0.0)  # configured: its own bucket, full
        assert budgets.take("never-seen", 0.0)
        assert not budgets.take("another-new-one", 0.0)  # the same shared bucket, now empty
        assert NEWCOMERS in budgets.buckets
