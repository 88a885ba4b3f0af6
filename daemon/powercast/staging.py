"""Staged shedding: how far a shedding zone's fans are slowed, from what the UPS announces.

The chart (:mod:`powercast.policy`) says *whether* a zone's fans may be shed: only in
``shedding``, with fresh data that says battery and cool. This module says *how far*:
a pure function of the zone's stages, its :class:`Gauges` (runtime left, charge, time
on battery), the stage it is at now, and nothing else. Kept apart so the chart keeps
its seven states and every fail-safe rule stays where it is: no stage is ever consulted
outside ``shedding``, so heat, doubt and an operator's "fans on" always mean 100 %.

A stage is an index: 0 none (full speed), ``i`` the zone's ``stages[i - 1]``. A zone
without stages has one, fans off, entered at once: shedding as it always was.

The rules:

- The zone is at the deepest stage whose trigger holds, or, for stages no deeper than
  the current one, still holds within its hysteresis: a deeper stage never waits, a
  shallower one waits for the value to come back past threshold plus hysteresis.
- A value not announced (an older publisher, a UPS that does not say) triggers
  nothing and holds nothing: in doubt, the fans run faster, never slower.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from powercast.config import PolicySettings, Stage

FULL: Final = 100
"""Full speed: the level of every state but shedding and manual_off."""
OFF: Final = 0
IMPLICIT: Final = (Stage(level=OFF),)
"""The stages of a zone that configures none: fans off, at once."""


@dataclass(frozen=True)
class Gauges:
    """What stages are entered on; None: not known now."""

    runtime_s: float | None = None
    """Runtime left, as the UPS announces it."""
    charge_pct: float | None = None
    """Battery charge, as the UPS announces it."""
    on_battery_s: float | None = None
    """How long the zone's data has said "on battery" without a break."""


def stages_of(settings: PolicySettings) -> tuple[Stage, ...]:
    """The zone's stages, shallowest first (the implicit one without any)."""
    return tuple(settings.stages) or IMPLICIT


def depth(stages: Sequence[Stage], gauges: Gauges, current: int) -> int:
    """The stage the zone should be at now, coming from ``current`` (0: none)."""
    found = 0
    for index, stage in enumerate(stages, 1):
        if _holds(stage, gauges, 0.0) or (index <= current and _holds(stage, gauges, stage.margin)):
            found = index
    return found


def level(stages: Sequence[Stage], stage: int) -> int:
    """The fan level at ``stage`` (0: full speed)."""
    return FULL if stage == 0 else stages[stage - 1].level


def next_due(stages: Sequence[Stage], battery_since: float | None, current: int) -> float | None:
    """When the next stage deeper than ``current`` keyed on time on battery is entered;
    None when there is none (the others come with datagrams, not with time)."""
    if battery_since is None:
        return None
    times = [
        battery_since + stage.threshold
        for stage in stages[current:]
        if stage.trigger == "on_battery_for_s"
    ]
    return min(times) if times else None


def describe(stage: Stage) -> str:
    """A stage's trigger in words, for a reason in the log."""
    unit = {"runtime_below_s": "runtime < {} s", "charge_below_pct": "charge < {} %"}
    key = stage.trigger
    if key is None:
        return "on battery"
    if key == "on_battery_for_s":
        return f"on battery >= {stage.threshold:g} s"
    return unit[key].format(f"{stage.threshold:g}")


def _holds(stage: Stage, g: Gauges, margin: float) -> bool:
    """Whether ``stage``'s trigger holds, ``margin`` past its threshold the other way."""
    key = stage.trigger
    if key is None:
        return True
    if key == "on_battery_for_s":
        return g.on_battery_s is not None and g.on_battery_s >= stage.threshold - margin
    value = g.runtime_s if key == "runtime_below_s" else g.charge_pct
    return value is not None and value < stage.threshold + margin
