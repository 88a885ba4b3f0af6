"""The fan policy: from what the publishers say to whether the fans may be shed.

Everything that decides a state lives in this file, in two parts read top to bottom:

1. :class:`FanChart`, the python-statemachine chart: the states and the only moves
   between them, as data. A rule that asks for any other move is a bug and raises.
2. :meth:`Policy.evaluate`, the rules: given a :class:`Situation` and ``now``, which
   state is right. The rules are plain Python, cheap enough for every datagram that
   brings news; the chart (about 80 µs a move) only runs when the answer changes.

The one principle: **when in doubt, the fans run**. Only ``shedding`` turns them off,
and it is reached only from ``on_battery`` after the debounce, with fresh data from
every kind the decision needs: a known power status that says battery, and a fresh
temperature below the limit. Stale, missing or unknown data means ``failsafe``.

No clocks and no I/O: ``now`` comes in as an argument (monotonic seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

from statemachine import State, StateMachine

from powercast.config import Policy as PolicySettings
from powercast.wire import PowerStatus

FANS_ON: Final = {
    "normal": True,
    "on_battery": True,
    "shedding": False,
    "thermal_override": True,
    "failsafe": True,
}


class FanChart(StateMachine):
    """States and allowed moves. Each event is named after its target state."""

    failsafe = State(initial=True)
    normal = State()
    on_battery = State()
    shedding = State()
    thermal_override = State()

    to_normal = (
        failsafe.to(normal)
        | on_battery.to(normal)
        | shedding.to(normal)
        | thermal_override.to(normal)
    )
    to_on_battery = (
        failsafe.to(on_battery) | normal.to(on_battery) | thermal_override.to(on_battery)
    )
    # Fans go off only after the debounce in on_battery, or when a hot spell ends.
    to_shedding = on_battery.to(shedding) | thermal_override.to(shedding)
    to_thermal_override = (
        failsafe.to(thermal_override)
        | normal.to(thermal_override)
        | on_battery.to(thermal_override)
        | shedding.to(thermal_override)
    )
    to_failsafe = (
        normal.to(failsafe)
        | on_battery.to(failsafe)
        | shedding.to(failsafe)
        | thermal_override.to(failsafe)
    )


@dataclass(frozen=True)
class Situation:
    """What the fresh data says, already combined across publishers."""

    power: PowerStatus
    temperature: float | None
    """The hottest fresh sensor, or None when no fresh publisher reports one."""
    hottest: str | None = None
    """Which sensor that is, as ``publisher/sensor``."""
    sources: tuple[str, ...] = ()
    """The fresh publishers the situation was built from."""
    stale: tuple[str, ...] = ()
    """Publishers that were heard but whose data has run out."""

    def describe(self) -> dict[str, object]:
        """The readings as log fields."""
        return {
            "power": self.power.value,
            "temperature_c": self.temperature,
            "hottest": self.hottest,
            "sources": list(self.sources),
            "stale": list(self.stale),
        }


NO_DATA: Final = Situation(power=PowerStatus.UNKNOWN, temperature=None)


@dataclass(frozen=True)
class Decision:
    """A change of state, with everything the log and the actions need."""

    at: float
    previous: str
    state: str
    reason: str
    situation: Situation

    @property
    def fans_on(self) -> bool:
        return FANS_ON[self.state]


@dataclass
class Policy:
    """The rules, the chart, and the two timers the rules need."""

    settings: PolicySettings
    chart: FanChart = field(default_factory=FanChart)
    since: float = 0.0
    """When the current state was entered."""
    reason: str = "starting: no data yet"
    situation: Situation = NO_DATA
    battery_since: float | None = None
    """Since when fresh data has said 'on battery' without a break."""
    online_since: float | None = None
    """Since when fresh data has said 'online' without a break."""

    @property
    def state(self) -> str:
        return str(self.chart.current_state_value)

    def evaluate(self, situation: Situation, now: float) -> list[Decision]:
        """Apply the rules until the state is stable; return the moves made (often none)."""
        self._track(situation, now)
        self.situation = situation
        decisions = []
        for _ in range(len(FANS_ON)):  # each rule pass moves at most once; never loops forever
            target, reason = self._rule(situation, now)
            if target == self.state:
                self.reason = reason  # the why may change without a move (status shows it)
                break
            decisions.append(Decision(now, self.state, target, reason, situation))
            self.chart.send(f"to_{target}")
            self.since, self.reason = now, reason
        return decisions

    def deadline(self) -> float | None:
        """When the rules must run again even if no datagram brings news."""
        if self.state == "on_battery" and self.battery_since is not None:
            return self.battery_since + self.settings.shed_after_s
        if self.state == "shedding" and self.online_since is not None:
            return self.online_since + self.settings.restore_after_s
        return None

    def _track(self, situation: Situation, now: float) -> None:
        on_battery = situation.power in (PowerStatus.ON_BATTERY, PowerStatus.LOW_BATTERY)
        online = situation.power is PowerStatus.ONLINE
        if not on_battery:
            self.battery_since = None
        elif self.battery_since is None:
            self.battery_since = now
        if not online:
            self.online_since = None
        elif self.online_since is None:
            self.online_since = now

    def _rule(self, s: Situation, now: float) -> tuple[str, str]:
        """The state the situation calls for, and why, in words for the log."""
        cfg = self.settings
        state = self.state
        if not s.sources:
            stale = f" (stale: {', '.join(s.stale)})" if s.stale else ""
            return "failsafe", f"no fresh data from any publisher{stale}"
        if s.power is PowerStatus.UNKNOWN:
            return "failsafe", "power status unknown"
        temp = s.temperature
        hot = temp is not None and temp >= cfg.temp_high_c

        if s.power is PowerStatus.ONLINE:
            since = now if self.online_since is None else self.online_since
            waited = now - since
            if state != "shedding":
                return "normal", "power online"
            if hot or temp is None:
                return "normal", f"power back and {'too hot' if hot else 'no fresh temperature'}"
            if now < since + cfg.restore_after_s:  # the same sum as deadline(), to the bit
                left = cfg.restore_after_s - waited
                return "shedding", f"power back, restoring fans in {left:.1f} s"
            return "normal", f"power back for {waited:.1f} s"

        # On battery (or low battery) from here on.
        if temp is None:
            return (
                "failsafe",
                "on battery but no fresh temperature: cannot tell that shedding is safe",
            )
        if hot:
            return (
                "thermal_override",
                f"on battery but {_where(s)} is {temp:g} °C >= {cfg.temp_high_c:g}",
            )
        if state == "thermal_override" and temp > cfg.temp_high_c - cfg.temp_hysteresis_c:
            return "thermal_override", f"{_where(s)} still {temp:g} °C, within hysteresis"
        since = now if self.battery_since is None else self.battery_since
        elapsed = now - since
        status = s.power.value.replace("_", " ")
        if state == "shedding":
            return "shedding", f"{status}, {_where(s)} {temp:g} °C"
        if state in ("on_battery", "thermal_override") and now >= since + cfg.shed_after_s:
            return "shedding", (
                f"{status} for {elapsed:.1f} s, {_where(s)} {temp:g} °C < {cfg.temp_high_c:g}"
            )
        left = max(0.0, cfg.shed_after_s - elapsed)
        return "on_battery", f"{status}, shedding in {left:.1f} s unless power returns"


def _where(s: Situation) -> str:
    return s.hottest or "temperature"


def combine(
    readings: dict[str, tuple[PowerStatus, dict[str, float]]], stale: tuple[str, ...]
) -> Situation:
    """Fold fresh publishers' readings into one situation, leaning to the safe side.

    Power: ``online`` if any publisher says so (fans may run), else ``low_battery`` or
    ``on_battery`` when every publisher that knows says so, else ``unknown``.
    Temperature: the hottest fresh sensor.
    """
    statuses = {status for status, _ in readings.values()} - {PowerStatus.UNKNOWN}
    if PowerStatus.ONLINE in statuses:
        power = PowerStatus.ONLINE
    elif PowerStatus.LOW_BATTERY in statuses:
        power = PowerStatus.LOW_BATTERY
    elif PowerStatus.ON_BATTERY in statuses:
        power = PowerStatus.ON_BATTERY
    else:
        power = PowerStatus.UNKNOWN
    hottest, top = None, -math.inf
    for publisher, (_, temperatures) in readings.items():
        for sensor, value in temperatures.items():
            if value > top:
                hottest, top = f"{publisher}/{sensor}", value
    return Situation(
        power=power,
        temperature=None if hottest is None else top,
        hottest=hottest,
        sources=tuple(sorted(readings)),
        stale=stale,
    )
