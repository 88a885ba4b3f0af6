"""Staged shedding: the stage function, the policy's stages, the config that declares them,
the levels actuators take, and what the state file, status and metrics say of a stage.

Time is a plain float passed in as ``now``; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from powercast import config, logs, metrics, persist, staging
from powercast import status as report
from powercast.actions import environment
from powercast.actuators.base import Scale
from powercast.auth import Keyring
from powercast.config import ConfigError, ControllerConfig, PolicySettings, Stage, Zone
from powercast.controller import Controller
from powercast.policy import Override, Policy, Situation, combine
from powercast.secrets import keygen, load_keyring
from powercast.wire import Power, PowerStatus

from fakes import KEY_ID, WALL, FakePublisher

pytestmark = pytest.mark.unit

ONLINE = PowerStatus.ONLINE
ON_BATTERY = PowerStatus.ON_BATTERY

STAGES = [
    Stage(level=60, on_battery_for_s=30.0),
    Stage(level=30, runtime_below_s=600.0),
    Stage(level=0, runtime_below_s=200.0, hysteresis=100.0),
]
"""60 % after 30 s on battery, 30 % under 600 s of runtime, off under 200 s."""
SETTINGS = PolicySettings(
    shed_after_s=5.0,
    restore_after_s=10.0,
    stages=STAGES,
    min_return_runtime_s=300.0,
    max_return_wait_s=60.0,
)


def seen(power: PowerStatus, runtime: float | None = None, temp: float | None = 25.0) -> Situation:
    """A situation from one fresh publisher, with the runtime it announces."""
    return Situation(
        power=power,
        temperature=temp,
        hottest=None if temp is None else "ups/inlet",
        sources=("ups",),
        runtime_s=runtime,
    )


def gauges(runtime: float | None = None, charge: float | None = None, on: float | None = None):
    return staging.Gauges(runtime_s=runtime, charge_pct=charge, on_battery_s=on)


class TestDepth:
    def test_the_deepest_stage_whose_trigger_holds(self) -> None:
        """Each trigger on its own: time on battery, runtime below, deeper runtime below."""
        assert staging.depth(STAGES, gauges(1000.0, on=10.0), 0) == 0
        assert staging.depth(STAGES, gauges(1000.0, on=30.0), 0) == 1
        assert staging.depth(STAGES, gauges(599.0, on=10.0), 0) == 2
        assert staging.depth(STAGES, gauges(199.0, on=0.0), 0) == 3

    def test_a_shallower_stage_waits_for_the_hysteresis(self) -> None:
        """From stage 3 (under 200 s, hysteresis 100 s): 250 s keeps it, 300 s leaves it
        for stage 2; from stage 2 (hysteresis 60 s): 650 s keeps it, 660 s leaves it."""
        assert staging.depth(STAGES, gauges(250.0, on=40.0), 3) == 3
        assert staging.depth(STAGES, gauges(300.0, on=40.0), 3) == 2
        assert staging.depth(STAGES, gauges(650.0, on=40.0), 2) == 2
        assert staging.depth(STAGES, gauges(660.0, on=40.0), 2) == 1
        assert staging.depth(STAGES, gauges(250.0, on=40.0), 0) == 2  # no stay from afar

    def test_an_unknown_value_enters_and_holds_nothing(self) -> None:
        """A publisher that does not announce runtime: no runtime stage, in nor kept."""
        assert staging.depth(STAGES, gauges(None, on=10.0), 0) == 0
        assert staging.depth(STAGES, gauges(None, on=40.0), 3) == 1

    def test_charge_triggers(self) -> None:
        """charge_below_pct with its default hysteresis of 5 %."""
        stages = [Stage(level=50, charge_below_pct=40.0)]
        assert staging.depth(stages, gauges(charge=39.0), 0) == 1
        assert staging.depth(stages, gauges(charge=44.0), 1) == 1
        assert staging.depth(stages, gauges(charge=45.0), 1) == 0

    def test_without_stages_one_stage_off_at_once(self) -> None:
        """No stages: the implicit one, fans off, holds whatever is (not) known."""
        stages = staging.stages_of(PolicySettings())
        assert staging.depth(stages, gauges(), 0) == 1
        assert staging.level(stages, 1) == 0

    @given(
        st.lists(st.floats(0.0, 3000.0), min_size=2, max_size=12),
        st.sampled_from([0, 1, 2, 3]),
    )
    def test_monotone_in_falling_runtime(self, runtimes: list[float], start: int) -> None:
        """As runtime falls (on battery for good), the stage never gets shallower and the
        level never rises, from wherever it started."""
        first, *rest = sorted(runtimes, reverse=True)
        stage = staging.depth(STAGES, gauges(first, on=40.0), start)
        for runtime in rest:
            after = staging.depth(STAGES, gauges(runtime, on=40.0), stage)
            assert after >= stage
            assert staging.level(STAGES, after) <= staging.level(STAGES, stage)
            stage = after

    def test_next_due_is_the_next_time_stage(self) -> None:
        """Only stages keyed on time on battery have a deadline, and only deeper ones."""
        assert staging.next_due(STAGES, 100.0, 0) == 130.0
        assert staging.next_due(STAGES, 100.0, 1) is None
        assert staging.next_due(STAGES, None, 0) is None


class TestStagedPolicy:
    def test_a_whole_staged_outage(self) -> None:
        """100 -> 60 (30 s on battery) -> 30 (runtime < 600) -> 0 (runtime < 200) -> power
        back: held at 0 until 300 s of runtime are back -> 100. Only entering shedding
        and leaving it are moves of state; the rest are stages."""
        p = Policy(SETTINGS)
        story = [
            (0.0, seen(ONLINE, 1800.0), "normal", 0, 100),
            (100.0, seen(ON_BATTERY, 1500.0), "on_battery", 0, 100),
            (105.0, seen(ON_BATTERY, 1400.0), "shedding", 0, 100),  # no stage reached yet
            (130.0, seen(ON_BATTERY, 1200.0), "shedding", 1, 60),
            (200.0, seen(ON_BATTERY, 599.0), "shedding", 2, 30),
            (210.0, seen(ON_BATTERY, 640.0), "shedding", 2, 30),  # within 60 s hysteresis
            (300.0, seen(ON_BATTERY, 150.0), "shedding", 3, 0),
            (310.0, seen(ONLINE, 160.0), "shedding", 3, 0),  # restore_after_s first
            (320.0, seen(ONLINE, 200.0), "shedding", 3, 0),  # runtime still < 300 s
            (330.0, seen(ONLINE, 310.0), "normal", 0, 100),
        ]
        levels = []
        for now, situation, state, stage, level in story:
            for decision in p.evaluate(situation, now):
                levels.append((decision.level, decision.moved))
            assert (p.state, p.stage, p.level) == (state, stage, level), f"{now}: {p.reason}"
        assert levels == [
            (100, True),  # normal
            (100, True),  # on_battery
            (100, True),  # shedding, no stage yet
            (60, False),
            (30, False),
            (0, False),
            (100, True),  # normal
        ]

    def test_a_time_stage_has_a_deadline(self) -> None:
        """In shedding at stage 0, the rules must run when 30 s on battery are up."""
        p = Policy(SETTINGS)
        p.evaluate(seen(ONLINE, 1800.0), 0.0)
        p.evaluate(seen(ON_BATTERY, 1800.0), 100.0)
        p.evaluate(seen(ON_BATTERY, 1800.0), 105.0)
        assert (p.state, p.stage, p.deadline()) == ("shedding", 0, 130.0)
        p.evaluate(seen(ON_BATTERY, 1800.0), 130.0)
        assert (p.stage, p.deadline()) == (1, None)

    def test_the_return_hold_is_bounded(self) -> None:
        """A UPS whose runtime never recovers holds the fans at most max_return_wait_s."""
        p = Policy(SETTINGS)
        p.evaluate(seen(ONLINE, 1800.0), 0.0)
        p.evaluate(seen(ON_BATTERY, 100.0), 100.0)
        p.evaluate(seen(ON_BATTERY, 100.0), 105.0)
        assert (p.state, p.level) == ("shedding", 0)
        p.evaluate(seen(ONLINE, 0.0), 110.0)
        assert p.deadline() == 120.0  # restore_after_s
        p.evaluate(seen(ONLINE, 0.0), 120.0)
        assert (p.state, p.deadline()) == ("shedding", 170.0)
        assert "runtime 0 s < 300 s" in p.reason
        p.evaluate(seen(ONLINE, 0.0), 170.0)
        assert (p.state, p.level) == ("normal", 100)

    def test_a_contradiction_on_mains_does_not_hold(self) -> None:
        """One UPS says online with little runtime, another still says battery: that is
        doubt, so the fans return after restore_after_s without waiting for runtime."""
        p = Policy(SETTINGS)
        p.evaluate(seen(ON_BATTERY, 100.0), 100.0)
        p.evaluate(seen(ON_BATTERY, 100.0), 105.0)
        split = Situation(
            power=ONLINE,
            temperature=25.0,
            sources=("a", "b"),
            votes=(("a", "online"), ("b", "on_battery")),
            runtime_s=50.0,
        )
        p.evaluate(split, 110.0)
        p.evaluate(split, 120.0)
        assert (p.state, p.level) == ("normal", 100)

    def test_unknown_runtime_on_mains_does_not_hold(self) -> None:
        """Back on mains with no runtime announced: the fans return after restore_after_s."""
        p = Policy(SETTINGS)
        p.evaluate(seen(ON_BATTERY, 100.0), 100.0)
        p.evaluate(seen(ON_BATTERY, 100.0), 105.0)
        p.evaluate(seen(ONLINE, None), 110.0)
        p.evaluate(seen(ONLINE, None), 120.0)
        assert (p.state, p.level) == ("normal", 100)

    @pytest.mark.parametrize(
        ("situation", "state"),
        [
            (seen(ON_BATTERY, 100.0, temp=40.0), "thermal_override"),
            (seen(ON_BATTERY, 100.0, temp=None), "failsafe"),
            (Situation(power=ON_BATTERY, temperature=25.0, runtime_s=100.0), "failsafe"),
            (seen(PowerStatus.UNKNOWN, 100.0), "failsafe"),
        ],
        ids=["hot", "no temperature", "no fresh source", "power unknown"],
    )
    def test_heat_and_doubt_beat_every_stage(self, situation: Situation, state: str) -> None:
        """At the deepest stage, heat or any doubt runs the fans at full speed at once."""
        p = Policy(SETTINGS)
        p.evaluate(seen(ON_BATTERY, 100.0), 100.0)
        p.evaluate(seen(ON_BATTERY, 100.0), 105.0)
        assert p.level == 0
        [decision] = p.evaluate(situation, 106.0)
        assert (decision.state, decision.level, p.level, p.stage) == (state, 100, 100, 0)

    def test_an_operators_fans_on_beats_every_stage(self) -> None:
        """manual_on is full speed, whatever the stage."""
        p = Policy(SETTINGS)
        p.evaluate(seen(ON_BATTERY, 100.0), 100.0)
        p.evaluate(seen(ON_BATTERY, 100.0), 105.0)
        p.set_override(Override(True, 200.0, "op", "check"), 106.0)
        assert (p.state, p.level) == ("manual_on", 100)

    def test_without_stages_shedding_is_fans_off_as_before(self) -> None:
        """No stages: shedding means level 0 at once, whatever runtime says."""
        p = Policy(PolicySettings(shed_after_s=5.0))
        p.evaluate(seen(ON_BATTERY, 3000.0), 100.0)
        [decision] = p.evaluate(seen(ON_BATTERY, 3000.0), 105.0)
        assert (decision.state, decision.level, decision.stage, p.level) == ("shedding", 0, 1, 0)
        assert "stage" not in p.reason

    def test_commands_are_told_the_stage_and_level(self) -> None:
        """A state's commands get POWERCAST_FAN_LEVEL and POWERCAST_STAGE; POWERCAST_FANS
        says on while the fans run at any level above 0."""
        p = Policy(SETTINGS)
        p.evaluate(seen(ON_BATTERY, 500.0), 100.0)
        [decision] = p.evaluate(seen(ON_BATTERY, 500.0), 105.0)
        env = environment(decision)
        assert (env["POWERCAST_STATE"], env["POWERCAST_FANS"]) == ("shedding", "on")
        assert (env["POWERCAST_FAN_LEVEL"], env["POWERCAST_STAGE"]) == ("30", "2")

    def test_the_journal_carries_stage_and_fan_level(self) -> None:
        """A stage line's fields become POWERCAST_STAGE and POWERCAST_FAN_LEVEL; "level"
        stays the log level (PRIORITY's word)."""
        p = Policy(SETTINGS)
        p.evaluate(seen(ON_BATTERY, 500.0), 100.0)
        [decision] = p.evaluate(seen(ON_BATTERY, 500.0), 105.0)
        event = {
            "event": "transition",
            "level": "info",
            "stage": decision.stage,
            "fan_level": decision.level,
        }
        fields = dict(logs.journal_fields(event))
        assert (fields["POWERCAST_STAGE"], fields["POWERCAST_FAN_LEVEL"]) == ("2", "30")
        assert fields["POWERCAST_LEVEL"] == "info"


class TestCombineGauges:
    def test_the_most_runtime_of_the_deciders(self) -> None:
        """Two UPSes on battery: the larger runtime and charge (the fans run faster)."""
        readings = {"a": (ON_BATTERY, {}), "b": (ON_BATTERY, {}), "c": (ONLINE, {})}
        gauges = {
            "a": Power(ON_BATTERY, charge_pct=50.0, runtime_s=300.0),
            "b": Power(ON_BATTERY, charge_pct=40.0, runtime_s=900.0),
            "c": Power(ONLINE, runtime_s=10.0),
        }
        s = combine(readings, (), power_from=frozenset({"a", "b"}), gauges=gauges)
        assert (s.power, s.runtime_s, s.charge_pct) == (ON_BATTERY, 900.0, 50.0)
        assert s.describe()["runtime_s"] == 900.0

    def test_one_decider_without_runtime_makes_it_unknown(self) -> None:
        """An older publisher that does not announce runtime: no runtime for the zone."""
        readings = {"a": (ON_BATTERY, {}), "b": (ON_BATTERY, {})}
        gauges = {"a": Power(ON_BATTERY, runtime_s=300.0), "b": Power(ON_BATTERY)}
        s = combine(readings, (), gauges=gauges)
        assert (s.runtime_s, s.charge_pct) == (None, None)


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    directory: Path = tmp_path_factory.mktemp("keys")
    keygen(KEY_ID, directory / f"{KEY_ID}.key")
    return load_keyring(directory)


class TestController:
    def test_a_heartbeat_with_a_new_runtime_is_decided_on(self, keyring: Keyring) -> None:
        """Runtime moving within the publisher's deadband rides on a heartbeat (same change
        number): it may still cross a stage, so the controller decides on it."""
        ctrl = Controller(ControllerConfig(policy=SETTINGS), keyring)
        ups = FakePublisher.signed("ups", keyring, tal=30.0)
        ups.runtime_s = 1200.0
        ctrl.receive(ups.say(0.0, ON_BATTERY, inlet=25.0), 0.0, WALL)
        ctrl.tick(5.0)
        assert (ctrl.policy.state, ctrl.policy.level) == ("shedding", 100)
        ups.runtime_s = 590.0
        [decision] = ctrl.receive(ups.heartbeat(6.0), 6.0, WALL + 6.0)
        assert (decision.previous, decision.state, decision.level) == ("shedding", "shedding", 30)
        assert ctrl.counters["repeat"] == 1


def parse(text: str) -> ControllerConfig:
    loaded = config.parse('role = "controller"\n' + text, "c.toml")
    assert isinstance(loaded, ControllerConfig)
    return loaded


ZONES = '[[zones]]\nname = "a"\n[[zones]]\nname = "b"\n'


class TestConfig:
    def test_stages_per_zone_over_the_top_level(self) -> None:
        """[policy] stages apply to every zone; a zone's own replace them."""
        c = parse(
            "[[policy.stages]]\nlevel = 50\n"
            + ZONES
            + "[[zones.policy.stages]]\nlevel = 40\nruntime_below_s = 600\n"
            + "[zones.policy]\nmin_return_runtime_s = 300\n"
        )
        a, b = c.effective_zones()
        assert [s.level for s in c.policy_for(a).stages] == [50]
        assert [s.level for s in c.policy_for(b).stages] == [40]
        assert c.policy_for(b).min_return_runtime_s == 300.0

    @pytest.mark.parametrize(
        ("stages", "message"),
        [
            (
                [{"level": 50, "runtime_below_s": 600}, {"level": 60, "runtime_below_s": 300}],
                "zones[1].policy.stages[1].level: expected less than stages[0]'s 50"
                " (stages go deeper in order), got 60",
            ),
            (
                [{"level": 50, "runtime_below_s": 600}, {"level": 0, "runtime_below_s": 580}],
                "zones[1].policy.stages[1].runtime_below_s: expected less than stages[0]'s 600"
                " less its hysteresis 60 (thresholds must not overlap), got 580",
            ),
            (
                [{"level": 50, "charge_below_pct": 30}, {"level": 0, "charge_below_pct": 40}],
                "zones[1].policy.stages[1].charge_below_pct: expected less than stages[0]'s 30",
            ),
            (
                [{"level": 50, "on_battery_for_s": 60}, {"level": 0, "on_battery_for_s": 60}],
                "zones[1].policy.stages[1].on_battery_for_s: expected more than stages[0]'s 60",
            ),
            (
                [{"level": 150}],
                "zones[1].policy.stages[0].level: expected an integer <= 100, got 150",
            ),
            (
                [{"level": -1}],
                "zones[1].policy.stages[0].level: expected an integer >= 0, got -1",
            ),
            (
                [{"level": 50, "runtime_below_s": 600, "charge_below_pct": 20}],
                "zones[1].policy.stages[0].charge_below_pct: expected one trigger per stage,"
                " got runtime_below_s and charge_below_pct",
            ),
            (
                [{"level": 50}, {"level": 0}],
                "zones[1].policy.stages[1].level: expected a trigger",
            ),
            (
                [{"level": 50, "hysteresis": 10}],
                "zones[1].policy.stages[0].hysteresis: expected it only with",
            ),
            (
                [{"level": 50, "runtime_below": 600}],
                "zones[1].policy.stages[0]: unknown key 'runtime_below' (expected one of: level,",
            ),
        ],
    )
    def test_errors_name_the_zone_and_key(
        self, stages: list[dict[str, float]], message: str
    ) -> None:
        """Out of order, overlapping, out of range, two triggers, a typo: each named."""
        raw = {
            "role": "controller",
            "zones": [{"name": "a"}, {"name": "b", "policy": {"stages": stages}}],
        }
        with pytest.raises(ConfigError) as err:
            config.parse(tomli_w.dumps(raw), "c.toml")
        assert str(err.value).startswith(f"c.toml: {message}")


class TestScale:
    @given(
        st.integers(0, 65535),
        st.integers(0, 65535),
        st.integers(0, 100),
        st.integers(0, 100),
    )
    def test_levels_onto_a_range(self, off: int, on: int, low: int, high: int) -> None:
        """0 writes off, 100 writes on, any level above 0 never writes off (fail safe),
        a higher level never writes a slower value, and what is written reads back as
        position(level)."""
        scale = Scale(off, on)
        low, high = sorted((low, high))
        assert (scale.value(0), scale.value(100)) == (off, on)
        if on != off and high > 0:
            assert scale.value(high) != off
            assert scale.level(scale.value(high)) > 0
        if on >= off:
            assert scale.value(low) <= scale.value(high)
        else:
            assert scale.value(low) >= scale.value(high)
        assert scale.level(scale.value(high)) == scale.position(high)
        assert scale.position(100) == 100


class TestRecords:
    def test_the_state_file_keeps_the_stage(self) -> None:
        """A zone shed to stage 2 comes back at stage 2 after a restart."""
        zone = Zone(name="a", policy=config.ZonePolicy(stages=STAGES))
        cfg = ControllerConfig(policy=SETTINGS, zones=[zone])
        before = Controller(cfg).zones
        p = before["a"]
        p.evaluate(seen(ON_BATTERY, 500.0), 100.0)
        p.evaluate(seen(ON_BATTERY, 500.0), 105.0)
        assert (p.stage, p.level) == (2, 30)
        record = persist.snapshot(before, {"a/0": 30}, 106.0, WALL)
        record = msgspec.json.decode(msgspec.json.encode(record), type=persist.StateRecord)
        after = Controller(cfg).zones
        assert persist.restore(record, after, 10.0, WALL + 1.0) == ["a"]
        assert (after["a"].state, after["a"].stage, after["a"].level) == ("shedding", 2, 30)

    def test_an_older_state_file_reads(self) -> None:
        """A file from before stages (actuators as true/false, no stage) still restores."""
        old = b'{"version":1,"saved_at":%d,"zones":{"default":{"state":"shedding",' % int(
            WALL
        ) + b'"entered_at":%d}},"actuators":{"default/0":false}}' % int(WALL - 5)
        record = msgspec.json.decode(old, type=persist.StateRecord)
        zones = Controller(ControllerConfig()).zones
        assert persist.restore(record, zones, 10.0, WALL + 1.0) == ["default"]
        assert (zones["default"].stage, zones["default"].level) == (1, 0)

    def test_status_and_metrics_show_stage_and_level(self) -> None:
        """The zone's status entry and its metrics carry the stage and the level."""
        ctrl = Controller(ControllerConfig(policy=SETTINGS))
        ctrl.policy.evaluate(seen(ON_BATTERY, 500.0), 100.0)
        ctrl.policy.evaluate(seen(ON_BATTERY, 500.0), 105.0)
        zone = report.zone(ctrl, {}, "default", 106.0, WALL)
        assert (zone["state"], zone["stage"], zone["level"], zone["fans"]) == (
            "shedding",
            2,
            30,
            "on",
        )
        families = {m.name: m for m in metrics._zones([zone])}
        assert families["powercast_fan_level_percent"].samples[0].value == 30.0
        assert families["powercast_stage"].samples[0].value == 2.0


class TestDiagram:
    def test_the_chart_notes_each_zones_stages(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`powercast diagram --config FILE`: the chart, and beside shedding each zone's
        levels (a zone without stages: fans off)."""
        from powercast.cli import main

        raw = {
            "role": "controller",
            "zones": [
                {"name": "hall", "policy": {"stages": [
                    {"level": 50, "runtime_below_s": 600},
                    {"level": 0, "charge_below_pct": 20},
                ], "min_return_runtime_s": 300}},
                {"name": "lab"},
            ],
        }  # fmt: skip
        path = tmp_path / "c.toml"
        path.write_text(tomli_w.dumps(raw))
        assert main(["diagram", "--config", str(path)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("stateDiagram-v2\n")
        note = out.split("    note right of shedding\n", 1)[1]
        assert note == (
            "        hall: 100 %, then 50 % at runtime under 600 s, then 0 % at charge under"
            " 20 %, full again once 300 s of runtime are back\n"
            "        lab: fans off (0 %)\n"
            "    end note\n"
        )
