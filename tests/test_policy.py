"""The fan policy: the chart's allowed moves, the rules of Policy.evaluate, and combine().

Time is a plain float passed in as ``now``; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from statemachine.exceptions import TransitionNotAllowed

from powercast.config import PolicySettings
from powercast.policy import FANS_ON, NO_DATA, FanChart, Policy, Situation, combine
from powercast.states import INITIAL, State
from powercast.wire import PowerStatus

pytestmark = pytest.mark.unit

ONLINE = PowerStatus.ONLINE
ON_BATTERY = PowerStatus.ON_BATTERY
LOW_BATTERY = PowerStatus.LOW_BATTERY
UNKNOWN = PowerStatus.UNKNOWN
README = Path(__file__).parent.parent / "README.md"

SETTINGS = PolicySettings(
    temp_high_c=35.0, temp_hysteresis_c=3.0, shed_after_s=5.0, restore_after_s=10.0
)


def seen(power: PowerStatus, temp: float | None = 25.0, *, sources: tuple[str, ...] = ("ups",)):
    """A situation as combine() would build it from one fresh publisher 'ups'."""
    return Situation(
        power=power,
        temperature=temp,
        hottest=None if temp is None else "ups/cpu",
        sources=sources,
    )


def policy(**overrides: float) -> Policy:
    """A policy with SETTINGS, some of them overridden."""
    fields = {
        "temp_high_c": SETTINGS.temp_high_c,
        "temp_hysteresis_c": SETTINGS.temp_hysteresis_c,
        "shed_after_s": SETTINGS.shed_after_s,
        "restore_after_s": SETTINGS.restore_after_s,
        **overrides,
    }
    return Policy(PolicySettings(**fields))


def moves(p: Policy, situation: Situation, now: float) -> list[tuple[str, str]]:
    """Evaluate and return the moves as (previous, state) pairs."""
    return [(d.previous, d.state) for d in p.evaluate(situation, now)]


class TestFanChart:
    def test_starts_in_failsafe(self) -> None:
        """A new chart starts in failsafe, where the fans run."""
        chart = FanChart()
        assert chart.current_state_value == "failsafe"
        assert FANS_ON["failsafe"] is True

    def test_only_shedding_and_manual_off_turn_fans_off(self) -> None:
        """Shedding and an operator's manual_off are the only states with the fans off."""
        assert [state for state, on in FANS_ON.items() if not on] == ["shedding", "manual_off"]

    def test_illegal_move_raises(self) -> None:
        """Asking for shedding straight from failsafe raises and leaves the state alone."""
        chart = FanChart()
        with pytest.raises(TransitionNotAllowed):
            chart.send("to_shedding")
        assert chart.current_state_value == "failsafe"

    @pytest.mark.parametrize("source", list(State))
    def test_move_agrees_with_send(self, source: State) -> None:
        """From every state, each event moves exactly as the library's send() does, or
        raises the same error and leaves the state alone."""
        for event in FanChart._events:
            sent, moved = FanChart(start_value=source), FanChart(start_value=source)
            try:
                sent.send(event)
            except TransitionNotAllowed as err:
                with pytest.raises(TransitionNotAllowed, match=str(err)):
                    moved.move(event)
            else:
                moved.move(event)
            assert moved.current_state_value == sent.current_state_value, (source, event)

    def test_move_runs_callbacks_when_the_chart_has_them(self) -> None:
        """A chart given a listener (at its making or after) takes the library's own
        send(), so the listener's callbacks run."""
        entered: list[str] = []

        class Listener:
            def on_enter_state(self, target: object) -> None:
                entered.append(str(getattr(target, "id", "")))

        chart = FanChart(listeners=[Listener()])
        chart.move("to_normal")
        assert (chart.current_state_value, entered[-1]) == ("normal", "normal")
        later = FanChart()
        later.move("to_normal")
        later.add_listener(Listener())
        later.move("to_on_battery")
        assert (later.current_state_value, entered[-1]) == ("on_battery", "on_battery")

    def test_states_come_from_the_table(self) -> None:
        """The chart has exactly the table's states, in its order, each valued by its member."""
        assert [state.id for state in FanChart.states] == [str(s) for s in State]
        assert [state.value for state in FanChart.states] == list(State)
        assert FanChart.initial_state.value is INITIAL

    def test_readme_lists_the_table(self) -> None:
        """README's table of states names each state once, in order, with its fans."""
        section = README.read_text().split("## How it decides", 1)[1].split("\n## ", 1)[0]
        rows = re.findall(r"^\| `(\w+)` \| (?:\*\*)?(on|off)(?:\*\*)? \|", section, re.MULTILINE)
        assert rows == [(s.value, "on" if s.fans_on else "off") for s in State]

    @pytest.mark.parametrize("start", ["normal", "failsafe"])
    def test_shedding_not_reachable_from_fans_on_states(self, start: str) -> None:
        """Shedding cannot be entered from normal or failsafe, only after on_battery."""
        chart = FanChart()
        if start != "failsafe":
            chart.send(f"to_{start}")
        with pytest.raises(TransitionNotAllowed):
            chart.send("to_shedding")


class TestPolicy:
    def test_full_outage_story(self) -> None:
        """failsafe, normal, on_battery, shedding, thermal_override, shedding, normal: in order."""
        p = policy()
        assert (p.state, p.deadline()) == ("failsafe", None)
        story: list[tuple[float, Situation, str]] = [
            (0.0, seen(ONLINE), "normal"),
            (100.0, seen(ON_BATTERY), "on_battery"),
            (104.9, seen(ON_BATTERY), "on_battery"),  # debounce not over
            (105.0, seen(ON_BATTERY), "shedding"),  # exactly shed_after_s on battery
            (106.0, seen(ON_BATTERY, 35.0), "thermal_override"),  # at temp_high_c
            (107.0, seen(ON_BATTERY, 34.0), "thermal_override"),  # within hysteresis
            (108.0, seen(ON_BATTERY, 32.1), "thermal_override"),  # still within
            (109.0, seen(ON_BATTERY, 31.9), "shedding"),  # below high - hysteresis
            (120.0, seen(ONLINE, 31.9), "shedding"),  # power back: wait restore_after_s
            (129.9, seen(ONLINE, 31.9), "shedding"),
            (130.0, seen(ONLINE, 31.9), "normal"),  # restored after exactly 10 s
        ]
        visited = []
        for now, situation, expected in story:
            for decision in p.evaluate(situation, now):
                visited.append(decision.state)
                assert decision.at == now
                assert decision.fans_on is FANS_ON[decision.state]
            assert p.state == expected, f"at {now}: {p.reason}"
        assert visited == [
            "normal",
            "on_battery",
            "shedding",
            "thermal_override",
            "shedding",
            "normal",
        ]

    def test_since_and_reason_follow_moves(self) -> None:
        """Each move records when the state was entered; the reason stays current in between."""
        p = policy()
        p.evaluate(seen(ONLINE), 1.0)
        p.evaluate(seen(ON_BATTERY), 2.0)
        assert "shedding in 5.0 s" in p.reason
        p.evaluate(seen(ON_BATTERY), 3.0)
        assert p.since == 2.0
        assert "shedding in 4.0 s" in p.reason

    def test_short_battery_blip_never_sheds(self) -> None:
        """Power back before shed_after_s ends the debounce: no shedding, no deadline."""
        p = policy()
        p.evaluate(seen(ONLINE), 0.0)
        assert moves(p, seen(ON_BATTERY), 100.0) == [("normal", "on_battery")]
        assert moves(p, seen(ONLINE), 104.9) == [("on_battery", "normal")]
        assert p.deadline() is None
        assert moves(p, seen(ONLINE), 200.0) == []

    def test_battery_again_restarts_the_debounce(self) -> None:
        """After a blip, a new outage waits the full shed_after_s from its own start."""
        p = policy()
        p.evaluate(seen(ONLINE), 0.0)
        p.evaluate(seen(ON_BATTERY), 100.0)
        p.evaluate(seen(ONLINE), 104.0)
        p.evaluate(seen(ON_BATTERY), 104.5)
        assert p.deadline() == 109.5
        assert moves(p, seen(ON_BATTERY), 109.0) == []
        assert moves(p, seen(ON_BATTERY), 109.5) == [("on_battery", "shedding")]

    def test_power_blip_while_shedding_does_not_flap(self) -> None:
        """Power back for less than restore_after_s, then battery again: shedding throughout."""
        p = policy()
        p.evaluate(seen(ONLINE), 0.0)
        p.evaluate(seen(ON_BATTERY), 100.0)
        p.evaluate(seen(ON_BATTERY), 105.0)
        assert p.state == "shedding"
        assert moves(p, seen(ONLINE), 110.0) == []
        assert moves(p, seen(ON_BATTERY), 119.9) == []
        assert p.deadline() is None
        # The restore wait starts over with the next return of power.
        assert moves(p, seen(ONLINE), 120.0) == []
        assert p.deadline() == 130.0
        assert moves(p, seen(ONLINE), 129.0) == []
        assert moves(p, seen(ONLINE), 130.0) == [("shedding", "normal")]

    @pytest.mark.parametrize("stale", [(), ("ups",)])
    def test_no_fresh_data_is_failsafe(self, stale: tuple[str, ...]) -> None:
        """With no fresh publisher the policy goes to failsafe and names the stale ones."""
        p = policy()
        p.evaluate(seen(ONLINE), 0.0)
        situation = Situation(power=UNKNOWN, temperature=None, stale=stale)
        assert moves(p, situation, 1.0) == [("normal", "failsafe")]
        assert p.reason.startswith("no fresh data")
        assert ("stale: ups" in p.reason) is bool(stale)

    def test_no_fresh_data_while_shedding_is_failsafe(self) -> None:
        """Losing every publisher while shedding turns the fans back on at once."""
        p = policy(shed_after_s=0.0)
        p.evaluate(seen(ON_BATTERY), 0.0)
        assert p.state == "shedding"
        assert moves(p, NO_DATA, 1.0) == [("shedding", "failsafe")]

    def test_unknown_power_is_failsafe(self) -> None:
        """A fresh publisher that cannot read its UPS gives failsafe, whatever the temperature."""
        p = policy()
        p.evaluate(seen(ON_BATTERY), 0.0)
        assert moves(p, seen(UNKNOWN, 20.0), 1.0) == [("on_battery", "failsafe")]
        assert p.reason == "power status unknown"

    def test_on_battery_without_temperature_is_failsafe_never_shedding(self) -> None:
        """On battery with no fresh temperature the fans stay on, however long it lasts."""
        p = policy()
        p.evaluate(seen(ONLINE, None), 0.0)
        assert moves(p, seen(ON_BATTERY, None), 1.0) == [("normal", "failsafe")]
        assert "no fresh temperature" in p.reason
        for now in (6.0, 50.0, 5000.0):
            assert moves(p, seen(ON_BATTERY, None), now) == []
            assert p.deadline() is None

    def test_temperature_lost_while_shedding_is_failsafe(self) -> None:
        """The temperature going missing while shedding turns the fans on."""
        p = policy(shed_after_s=0.0)
        p.evaluate(seen(ON_BATTERY), 0.0)
        assert moves(p, seen(ON_BATTERY, None), 1.0) == [("shedding", "failsafe")]

    def test_low_battery_counts_as_on_battery(self) -> None:
        """Low battery debounces and sheds exactly like on battery."""
        p = policy()
        p.evaluate(seen(ONLINE), 0.0)
        assert moves(p, seen(LOW_BATTERY), 10.0) == [("normal", "on_battery")]
        assert p.deadline() == 15.0
        assert moves(p, seen(LOW_BATTERY), 15.0) == [("on_battery", "shedding")]
        assert "low battery" in p.reason

    def test_on_battery_to_low_battery_keeps_the_debounce(self) -> None:
        """Going from on battery to low battery does not restart the shedding debounce."""
        p = policy()
        p.evaluate(seen(ON_BATTERY), 10.0)
        p.evaluate(seen(LOW_BATTERY), 12.0)
        assert p.deadline() == 15.0

    @pytest.mark.parametrize("temp", [36.0, None])
    def test_power_back_while_shedding_and_hot_or_blind_is_normal_at_once(
        self, temp: float | None
    ) -> None:
        """Power back while shedding skips the restore wait when too hot or no temperature."""
        p = policy(shed_after_s=0.0)
        p.evaluate(seen(ON_BATTERY), 0.0)
        (decision,) = p.evaluate(seen(ONLINE, temp), 1.0)
        assert (decision.previous, decision.state) == ("shedding", "normal")
        assert decision.reason.startswith("power back and")

    def test_hot_on_battery_goes_to_thermal_override_from_any_state(self) -> None:
        """At temp_high_c on battery the fans run, before and during shedding."""
        p = policy()
        assert moves(p, seen(ON_BATTERY, 35.0), 0.0) == [("failsafe", "thermal_override")]
        q = policy(shed_after_s=0.0)
        q.evaluate(seen(ON_BATTERY), 0.0)
        assert moves(q, seen(ON_BATTERY, 40.0), 1.0) == [("shedding", "thermal_override")]
        assert "ups/cpu is 40 °C >= 35" in q.reason

    def test_thermal_override_cooling_before_debounce_goes_on_battery(self) -> None:
        """Cooling below the hysteresis before shed_after_s leaves for on_battery, not shedding."""
        p = policy()
        p.evaluate(seen(ON_BATTERY, 36.0), 0.0)
        assert moves(p, seen(ON_BATTERY, 31.0), 2.0) == [("thermal_override", "on_battery")]
        assert p.deadline() == 5.0

    def test_hysteresis_boundary_leaves_thermal_override(self) -> None:
        """Exactly temp_high_c - temp_hysteresis_c is cool enough to leave thermal_override."""
        p = policy()
        p.evaluate(seen(ON_BATTERY, 36.0), 0.0)
        assert moves(p, seen(ON_BATTERY, 32.0), 10.0) == [("thermal_override", "shedding")]

    def test_thermal_override_power_back_is_normal(self) -> None:
        """Power back during thermal_override goes to normal at once."""
        p = policy()
        p.evaluate(seen(ON_BATTERY, 36.0), 0.0)
        assert moves(p, seen(ONLINE, 36.0), 1.0) == [("thermal_override", "normal")]

    def test_deadline_values(self) -> None:
        """deadline() is the debounce end on battery, the restore time while shedding on mains."""
        p = policy()
        assert p.deadline() is None  # failsafe
        p.evaluate(seen(ONLINE), 0.0)
        assert p.deadline() is None  # normal
        p.evaluate(seen(ON_BATTERY), 100.0)
        assert p.deadline() == 105.0  # on_battery: battery_since + shed_after_s
        p.evaluate(seen(ON_BATTERY), 102.0)
        assert p.deadline() == 105.0  # unchanged by repeats
        p.evaluate(seen(ON_BATTERY), 105.0)
        assert p.deadline() is None  # shedding on battery: only news moves it
        p.evaluate(seen(ONLINE), 110.0)
        assert p.deadline() == 120.0  # shedding, power back: online_since + restore_after_s
        p.evaluate(seen(ON_BATTERY, 36.0), 111.0)
        assert p.deadline() is None  # thermal_override

    def test_shed_after_zero_sheds_in_one_evaluate(self) -> None:
        """With shed_after_s = 0 one evaluate goes normal -> on_battery -> shedding."""
        p = policy(shed_after_s=0.0)
        p.evaluate(seen(ONLINE), 0.0)
        decisions = p.evaluate(seen(ON_BATTERY), 1.0)
        assert [(d.previous, d.state) for d in decisions] == [
            ("normal", "on_battery"),
            ("on_battery", "shedding"),
        ]
        assert all(d.at == 1.0 for d in decisions)
        assert p.state == "shedding"

    def test_restore_after_zero_restores_in_one_evaluate(self) -> None:
        """With restore_after_s = 0 power back while shedding restores at once."""
        p = policy(shed_after_s=0.0, restore_after_s=0.0)
        p.evaluate(seen(ON_BATTERY), 0.0)
        assert moves(p, seen(ONLINE), 1.0) == [("shedding", "normal")]

    def test_situation_is_remembered(self) -> None:
        """evaluate keeps the last situation even when nothing moves."""
        p = policy()
        p.evaluate(seen(ONLINE), 0.0)
        latest = seen(ONLINE, 30.0)
        assert p.evaluate(latest, 1.0) == []
        assert p.situation is latest

    def test_evaluate_at_shed_deadline_sheds(self) -> None:
        """Evaluating at exactly deadline() ends the debounce, even where float sums round."""
        p = policy(shed_after_s=0.3)
        start = 258944.81682009774  # a plausible monotonic time
        p.evaluate(seen(ON_BATTERY), start)
        due = p.deadline()
        assert due is not None
        assert moves(p, seen(ON_BATTERY), due) == [("on_battery", "shedding")]

    def test_evaluate_at_restore_deadline_restores(self) -> None:
        """Evaluating at exactly deadline() ends the restore wait, even where float sums round."""
        p = policy(shed_after_s=0.0, restore_after_s=0.3)
        p.evaluate(seen(ON_BATTERY), 0.0)
        start = 258944.81682009774
        p.evaluate(seen(ONLINE), start)
        due = p.deadline()
        assert due is not None
        assert moves(p, seen(ONLINE), due) == [("shedding", "normal")]


class TestSituation:
    def test_describe_gives_log_fields(self) -> None:
        """describe() gives the readings as plain log fields."""
        s = Situation(ON_BATTERY, 30.5, "ups/cpu", ("ups",), ("old",))
        assert s.describe() == {
            "power": "on_battery",
            "temperature_c": 30.5,
            "hottest": "ups/cpu",
            "sources": ["ups"],
            "stale": ["old"],
            "votes": {},
        }


class TestCombine:
    def test_contradictory_sources_lean_to_online(self) -> None:
        """One publisher online and one on battery combine to online: the fans-on side."""
        s = combine({"a": (ONLINE, {}), "b": (ON_BATTERY, {"cpu": 20.0})}, ())
        assert s.power is ONLINE

    def test_low_battery_wins_over_on_battery(self) -> None:
        """Low battery anywhere, and nobody online, combines to low battery."""
        s = combine({"a": (ON_BATTERY, {}), "b": (LOW_BATTERY, {})}, ())
        assert s.power is LOW_BATTERY

    def test_unknown_is_ignored_when_another_knows(self) -> None:
        """A publisher that cannot read its UPS does not hide another's on-battery status."""
        s = combine({"a": (UNKNOWN, {}), "b": (ON_BATTERY, {})}, ())
        assert s.power is ON_BATTERY

    def test_all_unknown_is_unknown(self) -> None:
        """When no fresh publisher knows the power status, it is unknown."""
        s = combine({"a": (UNKNOWN, {"cpu": 20.0}), "b": (UNKNOWN, {})}, ())
        assert s.power is UNKNOWN

    def test_hottest_sensor_with_its_name(self) -> None:
        """The hottest sensor across publishers is picked and named publisher/sensor."""
        s = combine(
            {
                "a": (ON_BATTERY, {"cpu": 30.0, "inlet": 22.0}),
                "b": (ON_BATTERY, {"gpu": 41.5, "disk": 35.0}),
            },
            (),
        )
        assert (s.temperature, s.hottest) == (41.5, "b/gpu")

    def test_no_temperatures_is_none(self) -> None:
        """Without any sensor the temperature and its name are None."""
        s = combine({"a": (ONLINE, {})}, ())
        assert (s.temperature, s.hottest) == (None, None)

    def test_sources_sorted_and_stale_kept(self) -> None:
        """Sources are the fresh publishers, sorted; stale ones are passed through."""
        s = combine({"b": (ONLINE, {}), "a": (ONLINE, {})}, ("c",))
        assert (s.sources, s.stale) == (("a", "b"), ("c",))

    def test_nothing_fresh(self) -> None:
        """No fresh readings give an unknown, sourceless situation."""
        s = combine({}, ("a",))
        assert s == Situation(UNKNOWN, None, None, (), ("a",))
