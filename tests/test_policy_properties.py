"""Properties of the fan policy over any sequence of situations and time steps.

Strategies live in tests/strategies.py; example counts come from the hypothesis profile
(tests/conftest.py).
"""

from __future__ import annotations

import pytest
from hypothesis import given

from powercast.config import PolicySettings
from powercast.policy import FANS_ON, Policy, Situation
from powercast.wire import PowerStatus

from strategies import histories, policy_settings

pytestmark = pytest.mark.unit

BATTERY = (PowerStatus.ON_BATTERY, PowerStatus.LOW_BATTERY)
START = 258944.81682009774
"""A plausible monotonic time, where sums of seconds round."""


def safe_to_shed(s: Situation, high: float) -> bool:
    """What the situation must say for the fans to be turned off."""
    return (
        bool(s.sources)
        and s.power in BATTERY
        and s.temperature is not None
        and s.temperature < high
    )


class TestPolicyProperties:
    @given(cfg=policy_settings, history=histories)
    def test_shedding_only_entered_safely(
        self, cfg: PolicySettings, history: list[tuple[float, Situation]]
    ) -> None:
        """Shedding is entered only from on_battery/thermal_override, on battery, fresh and cool."""
        p = Policy(cfg)
        now = START
        for dt, situation in history:
            now += dt
            before = p.state
            decisions = p.evaluate(situation, now)
            chain = [before] + [d.state for d in decisions]
            assert [d.previous for d in decisions] == chain[:-1]
            assert chain[-1] == p.state
            for d in decisions:
                assert d.fans_on is FANS_ON[d.state]
                if d.state == "shedding":
                    assert d.previous in ("on_battery", "thermal_override")
                    assert safe_to_shed(situation, cfg.temp_high_c), d.reason

    @given(cfg=policy_settings, history=histories)
    def test_shedding_never_held_blind_or_hot(
        self, cfg: PolicySettings, history: list[tuple[float, Situation]]
    ) -> None:
        """After any evaluate that leaves it shedding, power is known and it is fresh and cool."""
        p = Policy(cfg)
        now = START
        for dt, situation in history:
            now += dt
            p.evaluate(situation, now)
            if p.state == "shedding":
                # Power may be back (the restore wait), but never unknown or sourceless.
                assert situation.sources
                assert situation.power is not PowerStatus.UNKNOWN
                assert situation.temperature is not None
                assert situation.temperature < cfg.temp_high_c

    @given(cfg=policy_settings, history=histories)
    def test_evaluate_is_stable(
        self, cfg: PolicySettings, history: list[tuple[float, Situation]]
    ) -> None:
        """Evaluating the same situation again at the same time never moves."""
        p = Policy(cfg)
        now = START
        for dt, situation in history:
            now += dt
            p.evaluate(situation, now)
            assert p.evaluate(situation, now) == []

    @given(cfg=policy_settings, history=histories)
    def test_deadline_always_brings_a_move(
        self, cfg: PolicySettings, history: list[tuple[float, Situation]]
    ) -> None:
        """Evaluated at deadline() with nothing new, as the runtime timer does, the policy moves."""
        p = Policy(cfg)
        now = START
        for dt, situation in history:
            later = now + dt
            for _ in range(len(FANS_ON)):
                due = p.deadline()
                if due is None or due > later:
                    break
                assert due >= now
                assert p.evaluate(p.situation, due) != [], p.reason
                now = due
            now = later
            p.evaluate(situation, now)
