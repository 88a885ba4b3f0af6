"""An operator's override: "fans on" always wins, "fans off" never beats heat or blindness.

Policy-level tests feed situations directly; the controller tests run the real core with
signed datagrams (tests/fakes.py); persistence goes through persist.snapshot/restore.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from powercast import persist
from powercast.config import ControllerConfig, PolicySettings
from powercast.controller import Controller
from powercast.policy import FANS_ON, Override, Policy, Situation
from powercast.wire import PowerStatus

from fakes import WALL, FakePublisher, make_keyring

pytestmark = pytest.mark.unit

ONLINE = PowerStatus.ONLINE
ON_BATTERY = PowerStatus.ON_BATTERY
UNKNOWN = PowerStatus.UNKNOWN
HIGH = 35.0
SETTINGS = PolicySettings(temp_high_c=HIGH, shed_after_s=5.0, restore_after_s=10.0)


def seen(power: PowerStatus, temperature: float | None) -> Situation:
    """What one fresh publisher says."""
    hottest = None if temperature is None else "ups/inlet"
    return Situation(power, temperature, hottest, sources=("ups",))


NOTHING_FRESH = Situation(UNKNOWN, None, stale=("ups",))


def policy_in(state: str) -> tuple[Policy, Situation, float]:
    """A policy brought to ``state`` by the rules; its situation and the time."""
    p = Policy(SETTINGS)
    story = {
        "failsafe": [(0.0, NOTHING_FRESH)],
        "normal": [(0.0, seen(ONLINE, 25.0))],
        "on_battery": [(0.0, seen(ON_BATTERY, 25.0))],
        "shedding": [(0.0, seen(ON_BATTERY, 25.0)), (5.0, seen(ON_BATTERY, 25.0))],
        "thermal_override": [(0.0, seen(ON_BATTERY, 40.0))],
    }[state]
    for now, situation in story:
        p.evaluate(situation, now)
    assert p.state == state
    return p, story[-1][1], story[-1][0]


def fans_on(until: float, who: str = "alice", why: str = "filter change") -> Override:
    return Override(fans_on=True, until=until, who=who, why=why)


def fans_off(until: float, who: str = "bob", why: str = "noise test") -> Override:
    return Override(fans_on=False, until=until, who=who, why=why)


class TestFansOnOverride:
    @pytest.mark.parametrize("state", ["normal", "on_battery", "shedding", "thermal_override"])
    def test_wins_over_any_state(self, state: str) -> None:
        """A "fans on" override moves any state with fresh data to manual_on, logged."""
        p, _, now = policy_in(state)
        decisions = p.set_override(fans_on(now + 60.0), now)
        assert [d.state for d in decisions] == ["manual_on"]
        assert FANS_ON[p.state]
        assert p.reason == "override by alice: fans on (filter change)"

    def test_without_fresh_data_fans_run_in_failsafe(self) -> None:
        """Without fresh data the zone stays in failsafe: fans on either way."""
        p, _, now = policy_in("failsafe")
        p.set_override(fans_on(now + 60.0), now)
        assert p.state == "failsafe"
        assert FANS_ON[p.state]

    def test_holds_through_an_outage(self) -> None:
        """While "fans on" holds, a long outage never sheds."""
        p, situation, now = policy_in("on_battery")
        p.set_override(fans_on(now + 100.0), now)
        for t in range(1, 100):
            p.evaluate(situation, now + t)
            assert p.state == "manual_on"

    def test_expires_by_itself(self) -> None:
        """The override's end is a deadline; at it the rules take over again (here: shed)."""
        p, situation, now = policy_in("on_battery")
        p.set_override(fans_on(now + 30.0), now)
        assert p.deadline() == now + 30.0
        assert p.evaluate(situation, now + 29.9) == []
        decisions = p.evaluate(situation, now + 30.0)
        assert [d.state for d in decisions] == ["on_battery", "shedding"]
        assert p.override is None

    def test_clearing_returns_to_the_rules_at_once(self) -> None:
        """Clearing an override applies the rules at once."""
        p, _, now = policy_in("normal")
        p.set_override(fans_on(now + 600.0), now)
        decisions = p.set_override(None, now + 1.0)
        assert [d.state for d in decisions] == ["normal"]
        assert p.override is None
        assert p.deadline() is None


class TestFansOffOverride:
    def test_cool_and_fresh_turns_fans_off(self) -> None:
        """A "fans off" override with a fresh temperature below the limit is obeyed."""
        p, _, now = policy_in("normal")
        decisions = p.set_override(fans_off(now + 60.0), now)
        assert [d.state for d in decisions] == ["manual_off"]
        assert not FANS_ON[p.state]
        assert "override by bob: fans off (noise test)" in p.reason

    @pytest.mark.parametrize("power", [ONLINE, ON_BATTERY, UNKNOWN])
    @pytest.mark.parametrize("temperature", [HIGH, HIGH + 0.1, 60.0])
    def test_never_beats_heat(self, power: PowerStatus, temperature: float) -> None:
        """At or above temp_high_c the fans run whatever the power says."""
        p = Policy(SETTINGS)
        p.set_override(fans_off(100.0), 0.0)
        p.evaluate(seen(power, temperature), 1.0)
        assert FANS_ON[p.state], p.state

    def test_heat_arriving_ends_manual_off(self) -> None:
        """A zone in manual_off that heats up to the limit turns its fans on at once."""
        p, _, now = policy_in("normal")
        p.set_override(fans_off(now + 600.0), now)
        decisions = p.evaluate(seen(ONLINE, HIGH), now + 1.0)
        assert [d.state for d in decisions] == ["normal"]
        assert "ignored" in p.reason
        assert p.override is not None  # still there: obeyed again once it cools
        assert [d.state for d in p.evaluate(seen(ONLINE, 30.0), now + 2.0)] == ["manual_off"]

    def test_never_beats_stale_data(self) -> None:
        """Without fresh data "fans off" is not obeyed: failsafe."""
        p, _, now = policy_in("normal")
        p.set_override(fans_off(now + 600.0), now)
        p.evaluate(NOTHING_FRESH, now + 1.0)
        assert p.state == "failsafe"

    @pytest.mark.parametrize("power", [ONLINE, ON_BATTERY])
    def test_never_beats_a_missing_temperature(self, power: PowerStatus) -> None:
        """Fresh power but no fresh temperature: "fans off" is ignored, fans run."""
        p = Policy(SETTINGS)
        decisions = p.set_override(fans_off(100.0), 0.0)
        assert decisions == []  # nothing fresh yet: stays failsafe
        p.evaluate(seen(power, None), 1.0)
        assert p.state == "failsafe"
        assert "no fresh temperature" in p.reason

    def test_expires_by_itself(self) -> None:
        """At its end, manual_off goes back to what the rules say (online: normal)."""
        p, situation, now = policy_in("normal")
        p.set_override(fans_off(now + 10.0), now)
        assert p.state == "manual_off"
        assert [d.state for d in p.evaluate(situation, now + 10.0)] == ["normal"]


class TestOverrideInController:
    def test_set_and_expire_by_tick(self, tmp_path: Path) -> None:
        """Controller.set_override applies to one zone now; its tick at the end expires it."""
        keyring = make_keyring(tmp_path / "keys")
        ctrl = Controller(ControllerConfig(policy=SETTINGS), keyring)
        pub = FakePublisher.signed("ups", keyring, tal=1000.0)
        ctrl.receive(pub.say(0.0, ONLINE, inlet=25.0), 0.0, WALL)
        decisions = ctrl.set_override("default", fans_off(20.0), 1.0)
        assert [d.state for d in decisions] == ["manual_off"]
        assert ctrl.deadline() == 20.0
        assert ctrl.tick(19.0) == []
        assert [d.state for d in ctrl.tick(20.0)] == ["normal"]

    def test_override_ending_in_the_grace_waits_for_the_grace(self, tmp_path: Path) -> None:
        """A restored override that ends while its zone waits for data sets no timer of
        its own (it would fire again and again): the grace's end decides the zone."""
        saved = Policy(SETTINGS)
        saved.evaluate(seen(ONLINE, 25.0), 0.0)
        saved.set_override(fans_on(0.5), 0.0)
        record = persist.snapshot({"default": saved}, {}, 0.0, WALL)
        ctrl = Controller(ControllerConfig(policy=SETTINGS), make_keyring(tmp_path / "keys"))
        assert persist.restore(record, ctrl.zones, 10.0, WALL + 1.0) == ["default"]
        ctrl.start(10.0)  # startup_grace_s: 3 s
        assert ctrl.policy.deadline() == pytest.approx(9.5)  # already past
        assert ctrl.deadline() == 13.0
        assert [d.state for d in ctrl.tick(13.0)] == ["failsafe"]
        assert ctrl.policy.override is None
        assert ctrl.deadline() is None


class TestOverridePersistence:
    def test_survives_snapshot_and_restore(self) -> None:
        """An override outlives a restart with its who, why and remaining time."""
        p, situation, now = policy_in("on_battery")
        p.set_override(fans_on(now + 300.0, who="carol", why="drill"), now)
        record = persist.snapshot({"default": p}, {}, now, WALL + now)
        # Restarted 20 s later, on a monotonic clock that starts anew.
        later = Policy(SETTINGS)
        restart_mono, restart_wall = 5.0, WALL + now + 20.0
        assert persist.restore(record, {"default": later}, restart_mono, restart_wall) == [
            "default"
        ]
        assert later.state == "manual_on"
        assert later.override is not None
        assert (later.override.who, later.override.why) == ("carol", "drill")
        assert later.override.until == pytest.approx(restart_mono + 280.0)
        assert later.deadline() == pytest.approx(restart_mono + 280.0)
        assert later.evaluate(situation, restart_mono + 279.0) == []
        assert later.state == "manual_on"
        moved = later.evaluate(situation, restart_mono + 280.0)
        assert [d.state for d in moved][-1] == "shedding"  # battery since before the restart

    def test_survives_the_state_file(self, tmp_path: Path) -> None:
        """An override written with persist.save is read back by persist.load."""
        p, _, now = policy_in("normal")
        p.set_override(fans_off(now + 60.0), now)
        persist.save(tmp_path, persist.snapshot({"default": p}, {"default/0": False}, now, WALL))
        record = persist.load(tmp_path)
        assert record is not None
        later = Policy(SETTINGS)
        persist.restore(record, {"default": later}, now, WALL)
        assert later.state == "manual_off"
        assert later.override == fans_off(now + 60.0)
        assert record.actuators == {"default/0": False}
