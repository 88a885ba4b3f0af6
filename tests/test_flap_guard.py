"""The flap guard: at most flap_max_sheds sheds per flap_window_s, and the reason says so."""

from __future__ import annotations

import pytest

from powercast.config import PolicySettings
from powercast.policy import Policy, Situation
from powercast.wire import PowerStatus

pytestmark = pytest.mark.unit

SETTINGS = PolicySettings(
    shed_after_s=5.0, restore_after_s=0.0, flap_window_s=100.0, flap_max_sheds=2
)
BATTERY = Situation(PowerStatus.ON_BATTERY, 25.0, "ups/inlet", sources=("ups",))
ONLINE = Situation(PowerStatus.ONLINE, 25.0, "ups/inlet", sources=("ups",))


def outages(p: Policy, starts: list[float]) -> list[float]:
    """An outage at each start, lasting 10 s; when each shed (at its deadline), or not."""
    shed_at = []
    for start in starts:
        p.evaluate(BATTERY, start)
        while (due := p.deadline()) is not None and due <= start + 10.0:
            if any(d.state == "shedding" for d in p.evaluate(BATTERY, due)):
                shed_at.append(due)
        p.evaluate(ONLINE, start + 10.0)
    return shed_at


class TestFlapGuard:
    def test_at_most_max_sheds_per_window(self) -> None:
        """Outages every 20 s: two shed, the next ones within the window keep the fans on."""
        p = Policy(SETTINGS)
        assert outages(p, [0.0, 20.0, 40.0, 60.0]) == [5.0, 25.0]
        assert p.state == "normal"

    def test_held_outage_says_flapping_from_its_start(self) -> None:
        """An outage the guard will hold is logged as flapping when it begins, not as a
        shed that is coming (the rules do not run again at the end of the debounce)."""
        p = Policy(SETTINGS)
        outages(p, [0.0, 20.0])
        moved = p.evaluate(BATTERY, 40.0)
        assert [d.state for d in moved] == ["on_battery"]
        assert moved[0].reason == "flapping: 2 sheds in 100 s; fans stay on for 65 s more"
        assert p.deadline() == 105.0  # when the first shed leaves the window

    def test_sheds_again_once_the_oldest_shed_leaves_the_window(self) -> None:
        """A long outage held by the guard sheds at the moment the window frees a shed."""
        p = Policy(SETTINGS)
        outages(p, [0.0, 20.0])
        p.evaluate(BATTERY, 40.0)
        assert p.evaluate(BATTERY, 104.9) == []
        assert p.state == "on_battery"
        assert [d.state for d in p.evaluate(BATTERY, 105.0)] == ["shedding"]

    def test_guard_that_frees_before_the_debounce_ends_is_not_mentioned(self) -> None:
        """When the window frees a shed before the debounce is over, it is a plain debounce."""
        p = Policy(SETTINGS)
        outages(p, [0.0, 20.0])
        moved = p.evaluate(BATTERY, 101.0)
        assert moved[0].reason == "on battery, shedding in 5.0 s unless power returns"
        assert p.deadline() == 106.0


class TestCounts:
    def test_sheds_and_holds_are_counted_once_each(self) -> None:
        """Two sheds count two; a held outage counts one hold however often the rules run,
        and the holding flag falls when power returns."""
        p = Policy(SETTINGS)
        outages(p, [0.0, 20.0])
        assert (p.sheds_total, p.flap_holds, p.flap_holding) == (2, 0, False)
        p.evaluate(BATTERY, 40.0)
        p.evaluate(BATTERY, 45.0)
        p.evaluate(BATTERY, 50.0)
        assert (p.flap_holds, p.flap_holding) == (1, True)
        p.evaluate(ONLINE, 55.0)
        assert (p.flap_holds, p.flap_holding) == (1, False)
        p.evaluate(BATTERY, 60.0)
        assert (p.flap_holds, p.flap_holding) == (2, True)
        assert p.sheds_total == 2

    def test_hold_ends_when_the_window_frees_a_shed(self) -> None:
        """At the moment the guard lets the zone shed, it no longer holds; the shed counts."""
        p = Policy(SETTINGS)
        outages(p, [0.0, 20.0])
        p.evaluate(BATTERY, 40.0)
        p.evaluate(BATTERY, 105.0)
        assert (p.state, p.flap_holding, p.flap_holds, p.sheds_total) == ("shedding", False, 1, 3)

    def test_battery_time_runs_while_data_says_battery(self) -> None:
        """battery_for counts from the first battery reading and is 0 once power returns."""
        p = Policy(SETTINGS)
        assert p.battery_for(3.0) == 0.0
        p.evaluate(BATTERY, 10.0)
        p.evaluate(BATTERY, 12.0)
        assert p.battery_for(17.5) == 7.5
        p.evaluate(ONLINE, 18.0)
        assert p.battery_for(19.0) == 0.0

    def test_a_debounce_the_guard_does_not_pass_is_no_hold(self) -> None:
        """An outage whose debounce ends after the window frees a shed is not a hold."""
        p = Policy(SETTINGS)
        outages(p, [0.0, 20.0])
        p.evaluate(BATTERY, 101.0)
        assert (p.flap_holding, p.flap_holds) == (False, 0)
