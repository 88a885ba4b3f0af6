"""The fan policy: from what the publishers say to whether a zone's fans may be shed.

Everything that decides a state lives in this file, in three parts read top to bottom:

1. :class:`FanChart`, the python-statemachine chart: the only moves between the states
   (declared, with whether their fans run, in :mod:`powercast.states`), as data. A rule
   that asks for any other move is a bug and raises.
2. :func:`combine`, which folds the fresh publishers' readings into one
   :class:`Situation` per zone: the power vote and the zone temperature.
3. :meth:`Policy.evaluate`, the rules: given a situation and ``now``, which state is
   right. The rules are plain Python, cheap enough for every datagram that brings
   news; the chart only moves when the answer changes.

The one principle: **when in doubt, the fans run**. The fans go off in ``shedding``,
reached only from ``on_battery`` after the debounce, with fresh data of every kind the
decision needs (a power vote that says battery, a fresh temperature below the limit),
and in ``manual_off``, an operator's override, which never beats stale data or heat.
How far ``shedding`` slows them is its *stage* (:mod:`powercast.staging`), chosen from
the announced runtime, charge and time on battery: every other state runs them at 100 %.

No clocks and no I/O: ``now`` comes in as an argument (monotonic seconds).
"""

from __future__ import annotations

import fnmatch
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from statemachine import StateMachine
from statemachine.exceptions import TransitionNotAllowed
from statemachine.states import States

from powercast import staging
from powercast.config import PolicySettings, Stage
from powercast.states import FANS_ON, INITIAL, State
from powercast.wire import Power, PowerStatus


class FanChart(StateMachine):
    """The allowed moves between the states of :class:`~powercast.states.State`. Each event
    is named after its target state."""

    s = States.from_enum(State, initial=INITIAL)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._plain = self._without_callbacks()

    def add_listener(self, *listeners: object) -> FanChart:
        super().add_listener(*listeners)  # type: ignore[no-untyped-call]
        self._plain = self._without_callbacks()
        return self

    def _without_callbacks(self) -> bool:
        """The library resolves every callback (guards, actions, entry and exit, the
        class's own or a listener's) into this registry; with none, a move only changes
        the state, and move() may do that without the library's event engine."""
        return not any(list(calls) for calls in self._callbacks._registry.values())

    def move(self, event: str) -> None:
        """``send(event)`` for this chart, at a tenth of its cost: the move is checked
        against the chart's own transitions (:data:`MOVES`) and raises the library's
        ``TransitionNotAllowed`` for one it does not allow, leaving the state alone. A
        chart given callbacks (a listener, ``on_enter_...``) takes ``send`` so they run."""
        if not self._plain:
            self.send(event)
            return
        target = MOVES.get((self.current_state_value, event))
        if target is None:
            raise TransitionNotAllowed(getattr(self, event), self.configuration)
        self.current_state_value = target

    to_normal = (
        s.failsafe.to(s.normal)
        | s.on_battery.to(s.normal)
        | s.shedding.to(s.normal)
        | s.thermal_override.to(s.normal)
        | s.manual_on.to(s.normal)
        | s.manual_off.to(s.normal)
    )
    to_on_battery = (
        s.failsafe.to(s.on_battery)
        | s.normal.to(s.on_battery)
        | s.thermal_override.to(s.on_battery)
        | s.manual_on.to(s.on_battery)
        | s.manual_off.to(s.on_battery)
    )
    # The policy sheds only after the debounce in on_battery, or when a hot spell ends.
    to_shedding = s.on_battery.to(s.shedding) | s.thermal_override.to(s.shedding)
    to_thermal_override = (
        s.failsafe.to(s.thermal_override)
        | s.normal.to(s.thermal_override)
        | s.on_battery.to(s.thermal_override)
        | s.shedding.to(s.thermal_override)
        | s.manual_on.to(s.thermal_override)
        | s.manual_off.to(s.thermal_override)
    )
    to_failsafe = (
        s.normal.to(s.failsafe)
        | s.on_battery.to(s.failsafe)
        | s.shedding.to(s.failsafe)
        | s.thermal_override.to(s.failsafe)
        | s.manual_on.to(s.failsafe)
        | s.manual_off.to(s.failsafe)
    )
    to_manual_on = (
        s.failsafe.to(s.manual_on)
        | s.normal.to(s.manual_on)
        | s.on_battery.to(s.manual_on)
        | s.shedding.to(s.manual_on)
        | s.thermal_override.to(s.manual_on)
        | s.manual_off.to(s.manual_on)
    )
    to_manual_off = (
        s.normal.to(s.manual_off)
        | s.on_battery.to(s.manual_off)
        | s.shedding.to(s.manual_off)
        | s.thermal_override.to(s.manual_off)
        | s.failsafe.to(s.manual_off)
        | s.manual_on.to(s.manual_off)
    )


MOVES: Final[dict[tuple[State, str], State]] = {
    (source.value, event.id): transition.target.value
    for source in FanChart.states
    for transition in source.transitions
    for event in transition.events
}
"""The chart's moves as a table, taken from its transitions when the class is built:
(state, event) -> the state the event leads to."""


@dataclass(frozen=True)
class Situation:
    """What a zone's fresh data says, already combined across publishers."""

    power: PowerStatus
    temperature: float | None
    """The zone temperature (hottest sensor by default), or None when no fresh sensor."""
    hottest: str | None = None
    """The hottest sensor, as ``publisher/sensor``."""
    sources: tuple[str, ...] = ()
    """The fresh publishers the situation was built from."""
    stale: tuple[str, ...] = ()
    """Publishers that were heard but whose data has run out."""
    votes: tuple[tuple[str, str], ...] = ()
    """Each fresh publisher's power status: which sources decided."""
    missing: tuple[str, ...] = ()
    """Sensors counted but failed, and configured sensors with no fresh reading: the zone
    temperature is then unknown."""
    runtime_s: float | None = None
    """Runtime left as the voters that decided the power announce it (the most of them);
    None when any of them does not say."""
    charge_pct: float | None = None
    """Battery charge, likewise."""

    def describe(self) -> dict[str, object]:
        """The readings as log fields."""
        fields: dict[str, object] = {
            "power": self.power.value,
            "temperature_c": self.temperature,
            "hottest": self.hottest,
            "sources": list(self.sources),
            "stale": list(self.stale),
            "votes": dict(self.votes),
        }
        if self.missing:
            fields["missing_sensors"] = list(self.missing)
        if self.runtime_s is not None:
            fields["runtime_s"] = self.runtime_s
        if self.charge_pct is not None:
            fields["charge_pct"] = self.charge_pct
        return fields


NO_DATA: Final = Situation(power=PowerStatus.UNKNOWN, temperature=None)


MAX_OVERRIDE_S: Final = 86_400.0
"""The longest an operator's override may last: it must end by itself."""


@dataclass(frozen=True)
class Override:
    """An operator's order for a zone, until a time (monotonic)."""

    fans_on: bool
    until: float
    who: str
    why: str


@dataclass(frozen=True)
class Decision:
    """A change of state, with everything the log and the actions need."""

    at: float
    previous: State
    state: State
    reason: str
    situation: Situation
    zone: str = "default"
    stage: int = 0
    """The shedding stage entered (1 = the zone's first); 0 outside shedding."""
    shed_level: int | None = None
    """In shedding, the level its stage calls for; None: the state's own (100 or 0)."""
    previous_level: int | None = None
    """The level before, when it was known."""

    @property
    def level(self) -> int:
        """The fan level the state and stage call for, in percent."""
        if self.shed_level is not None and self.state == State.shedding:
            return self.shed_level
        return staging.FULL if FANS_ON[self.state] else staging.OFF

    @property
    def fans_on(self) -> bool:
        """Whether the fans run at all (a level above 0)."""
        return self.level > 0

    @property
    def moved(self) -> bool:
        """A change of state, not only of stage: the state's commands run."""
        return self.state != self.previous


@dataclass
class Policy:
    """The rules, the chart, and the timers the rules need, for one zone."""

    settings: PolicySettings
    zone: str = "default"
    chart: FanChart = field(default_factory=FanChart)
    since: float = 0.0
    """When the current state was entered."""
    reason: str = "starting: no data yet"
    situation: Situation = NO_DATA
    battery_since: float | None = None
    """Since when fresh data has said 'on battery' without a break."""
    online_since: float | None = None
    """Since when fresh data has said 'online' without a break."""
    override: Override | None = None
    sheds: deque[float] = field(default_factory=deque)
    """When shedding was entered, within the flap window."""
    settled: bool = False
    """The rules have run at least once since start (data came, or the grace ended)."""
    stage: int = 0
    """In shedding, the stage the fans are at (1 = the zone's first stage, 0 none reached
    yet); 0 in every other state."""
    checked: float = float("-inf")
    """When the rules last ran: a deadline not after it has been acted on already."""
    sheds_total: int = 0
    """Times the zone entered shedding since the daemon started (a counter for metrics)."""
    flap_holding: bool = False
    """The flap guard keeps the fans on past this battery spell's debounce, now."""
    flap_holds: int = 0
    """Times the flap guard began to hold (a counter for metrics)."""

    @property
    def state(self) -> State:
        value = self.chart.current_state_value  # a State but for a chart given a str
        return value if type(value) is State else State(value)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return staging.stages_of(self.settings)

    @property
    def level(self) -> int:
        """The fan level now, in percent: 100 but in shedding and manual_off. Shedding
        without stages is fans off; with stages, its stage's level (stage 0: none
        reached yet, full speed)."""
        if self.state is State.shedding and self.settings.stages:
            return staging.level(self.stages, min(self.stage, len(self.stages)))
        return staging.FULL if FANS_ON[self.state] else staging.OFF

    def evaluate(self, situation: Situation, now: float) -> list[Decision]:
        """Apply the rules until the state is stable; return the moves made (often none)."""
        self._track(situation, now)
        self.situation = situation
        self.settled = True
        self.checked = now
        decisions = []
        for _ in range(len(State)):  # each rule pass moves at most once; never loops forever
            target, reason = self._rule(situation, now)
            stage = self._stage_for(target, situation, now)
            if target == self.state and stage == self.stage:
                self.reason = reason  # the why may change without a move (status shows it)
                break
            before, previous = self.level, self.state
            if target != previous:
                self.chart.move(f"to_{target}")
                self.since = now
                if target is State.shedding:
                    self.sheds.append(now)
                    self.sheds_total += 1
            self.stage, self.reason = stage, reason
            decisions.append(
                Decision(
                    now, previous, target, reason, situation, self.zone, stage, self.level, before
                )
            )
        holding = self.state is State.on_battery and self._flap_held(now)
        if holding and not self.flap_holding:
            self.flap_holds += 1
        self.flap_holding = holding
        return decisions

    def set_override(self, override: Override | None, now: float) -> list[Decision]:
        """Take (or with None, clear) an operator's override and apply it at once."""
        self.override = override
        return self.evaluate(self.situation, now)

    def deadline(self) -> float | None:
        """When the rules must run again even if no datagram brings news."""
        times = []
        if self.override is not None:
            times.append(self.override.until)
        cfg = self.settings
        if self.state is State.on_battery and self.battery_since is not None:
            times.append(max(self.battery_since + cfg.shed_after_s, self._flap_free()))
        if self.state is State.shedding and self.online_since is not None:
            times.append(self.online_since + cfg.restore_after_s)
            if cfg.min_return_runtime_s is not None:
                times.append(self.online_since + max(cfg.restore_after_s, cfg.max_return_wait_s))
        if self.state is State.shedding and self.online_since is None:
            timed = staging.next_due(self.stages, self.battery_since, self.stage)
            if timed is not None:
                times.append(timed)
        later = [t for t in times if t > self.checked]
        return min(later) if later else None

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
        if self.override is not None and now >= self.override.until:
            self.override = None
        window = self.settings.flap_window_s
        while self.sheds and self.sheds[0] <= now - window:
            self.sheds.popleft()

    def _gauges(self, s: Situation, now: float) -> staging.Gauges:
        since = self.battery_since
        return staging.Gauges(s.runtime_s, s.charge_pct, None if since is None else now - since)

    def _stage_for(self, target: State, s: Situation, now: float) -> int:
        """The stage that goes with ``target``: 0 outside shedding; on mains, the one the
        fans were shed to (held until they return to full speed)."""
        if target is not State.shedding:
            return 0
        current = self.stage if self.state is State.shedding else 0
        if s.power is PowerStatus.ONLINE and self.state is State.shedding:
            return current
        return staging.depth(self.stages, self._gauges(s, now), current)

    def battery_for(self, now: float) -> float:
        """Seconds fresh data has said 'on battery' without a break (0 when it does not)."""
        return 0.0 if self.battery_since is None else now - self.battery_since

    def _flap_held(self, now: float) -> bool:
        """Whether the flap guard holds the fans on past this battery spell's debounce."""
        if self.battery_since is None:
            return False
        free = self._flap_free()
        return now < free and self.battery_since + self.settings.shed_after_s < free

    def _flap_free(self) -> float:
        """When another shed is allowed by the flap guard (-inf: now)."""
        if len(self.sheds) < self.settings.flap_max_sheds:
            return float("-inf")
        return self.sheds[0] + self.settings.flap_window_s

    def _rule(self, s: Situation, now: float) -> tuple[State, str]:
        """The state the situation calls for, and why, in words for the log."""
        if not s.sources:
            stale = f" (stale: {', '.join(s.stale)})" if s.stale else ""
            return State.failsafe, f"no fresh data from any publisher{stale}"
        if self.override is not None and (ruled := self._override_rule(s, self.override)):
            return ruled
        if s.power is PowerStatus.UNKNOWN:
            return State.failsafe, "power status unknown"
        if s.power is PowerStatus.ONLINE:
            return self._online_rule(s, now)
        return self._battery_rule(s, now)

    def _override_rule(self, s: Situation, o: Override) -> tuple[State, str] | None:
        """ "Fans on" always wins; "fans off" never beats heat or a blind zone."""
        if o.fans_on:
            return State.manual_on, f"override by {o.who}: fans on ({o.why})"
        temp = s.temperature
        if temp is None:
            return State.failsafe, f"override by {o.who} ignored: no fresh temperature"
        if temp < self.settings.temp_high_c:
            return State.manual_off, f"override by {o.who}: fans off ({o.why})"
        if s.power is PowerStatus.ONLINE:
            return State.normal, f"override by {o.who} ignored: {_where(s)} is {temp:g} °C"
        return None  # on battery and hot: the thermal rule below decides

    def _online_rule(self, s: Situation, now: float) -> tuple[State, str]:
        cfg = self.settings
        if self.state is not State.shedding:
            return State.normal, "power online"
        temp = s.temperature
        if temp is None or temp >= cfg.temp_high_c:
            return (
                State.normal,
                f"power back and {'no fresh temperature' if temp is None else 'too hot'}",
            )
        since = now if self.online_since is None else self.online_since
        waited = now - since
        if now < since + cfg.restore_after_s:  # the same sum as deadline(), to the bit
            return (
                State.shedding,
                f"power back, restoring fans in {cfg.restore_after_s - waited:.1f} s",
            )
        least, runtime = cfg.min_return_runtime_s, s.runtime_s
        agreed = all(vote == "online" for _, vote in s.votes)
        if (
            least is not None
            and runtime is not None
            and runtime < least
            and agreed  # a contradiction holds nothing: in doubt, the fans run
            and now < since + max(cfg.restore_after_s, cfg.max_return_wait_s)
        ):
            return State.shedding, (
                f"power back for {waited:.1f} s, runtime {runtime:g} s < {least:g} s:"
                f" fans stay at {self.level} % until the battery recovers"
            )
        return State.normal, f"power back for {waited:.1f} s"

    def _battery_rule(self, s: Situation, now: float) -> tuple[State, str]:
        cfg = self.settings
        state = self.state
        temp = s.temperature
        if temp is None:
            what = (
                f"no reading from {', '.join(s.missing)}" if s.missing else "no fresh temperature"
            )
            return State.failsafe, f"on battery but {what}: cannot tell that shedding is safe"
        if temp >= cfg.temp_high_c:
            limit = cfg.temp_high_c
            return State.thermal_override, f"on battery but {_where(s)} is {temp:g} °C >= {limit:g}"
        if state is State.thermal_override and temp > cfg.temp_high_c - cfg.temp_hysteresis_c:
            return State.thermal_override, f"{_where(s)} still {temp:g} °C, within hysteresis"
        since = now if self.battery_since is None else self.battery_since
        elapsed = now - since
        status = s.power.value.replace("_", " ")
        if state is State.shedding:
            return State.shedding, f"{status}, {_where(s)} {temp:g} °C{self._staged(s, now)}"
        if self._flap_held(now):  # held past the debounce: say so now
            free = self._flap_free()
            return State.on_battery, (
                f"flapping: {len(self.sheds)} sheds in {cfg.flap_window_s:g} s;"
                f" fans stay on for {free - now:.0f} s more"
            )
        if state in (State.on_battery, State.thermal_override) and now >= since + cfg.shed_after_s:
            return State.shedding, (
                f"{status} for {elapsed:.1f} s, {_where(s)} {temp:g} °C < {cfg.temp_high_c:g}"
                f"{self._staged(s, now)}"
            )
        left = max(0.0, cfg.shed_after_s - elapsed)
        return State.on_battery, f"{status}, shedding in {left:.1f} s unless power returns"

    def _staged(self, s: Situation, now: float) -> str:
        """The stage the rules lead to, in words for the reason (nothing without stages)."""
        if not self.settings.stages:
            return ""
        current = self.stage if self.state is State.shedding else 0
        depth = staging.depth(self.stages, self._gauges(s, now), current)
        if depth == 0:
            runtime = "unknown" if s.runtime_s is None else f"{s.runtime_s:g} s"
            charge = "unknown" if s.charge_pct is None else f"{s.charge_pct:g} %"
            return f"; runtime {runtime}, charge {charge}: no stage reached, fans at 100 %"
        stage = self.stages[depth - 1]
        return f"; stage {depth} ({staging.describe(stage)}): fans at {stage.level} %"


def _where(s: Situation) -> str:
    return s.hottest or "temperature"


Reading = tuple[PowerStatus, dict[str, float | None]]
"""A publisher's power status and temperatures; a temperature of None is a failed sensor."""


def combine(
    readings: dict[str, Reading],
    stale: tuple[str, ...],
    *,
    quorum: int = 1,
    power_from: frozenset[str] | None = None,
    sensors: tuple[str, ...] = (),
    temperature: Literal["max", "mean"] = "max",
    gauges: Mapping[str, Power] | None = None,
) -> Situation:
    """Fold fresh publishers' readings into one zone situation, leaning to the safe side.

    Power, from the publishers in ``power_from`` (all when None): ``on_battery`` (or
    ``low_battery`` if any says so) when at least ``quorum`` of them say so and none says
    ``online``; ``online`` when any says so (a contradiction keeps the fans running);
    otherwise ``unknown``. Temperature: over the sensors matching ``sensors`` (globs on
    ``publisher/sensor``; empty: every sensor of the power publishers), the hottest by
    default; unknown (None) when a sensor it counts is failed (None) or a configured one
    is not read at all, since the sensor that cannot be read may be the hot one. Sources
    and stale publishers are the zone's own: those that vote or whose sensors it reads
    (or could read), so another zone's publisher cannot stand in for them.

    Runtime and charge (from ``gauges``, each publisher's announced power): from the
    voters whose status decided the power, the most any of them announces, since a
    stage is entered on a low value and in doubt the fans run faster; unknown (None)
    when one of them does not say.
    """
    votes = tuple(
        (publisher, status.value)
        for publisher, (status, _) in sorted(readings.items())
        if power_from is None or publisher in power_from
    )
    said = [status for _, status in votes]
    battery = said.count("on_battery") + said.count("low_battery")
    if "online" in said:
        power = PowerStatus.ONLINE
    elif battery >= quorum:
        power = PowerStatus.LOW_BATTERY if "low_battery" in said else PowerStatus.ON_BATTERY
    else:
        power = PowerStatus.UNKNOWN

    values, failed = _counted(readings, power_from, sensors)
    # Every sensor counted must be read, and every configured sensor (or glob) too: a
    # sensor that failed or went quiet may be the hot one, so without it the zone
    # temperature is unknown, not the coolest of the rest.
    named = [*values, *failed]
    missing = tuple(sorted(failed)) + tuple(
        p for p in sensors if not any(fnmatch.fnmatchcase(n, p) for n in named)
    )
    hottest = max(values, key=values.__getitem__) if values and not missing else None
    if not values or missing:
        zone_temp = None
    elif temperature == "mean":
        zone_temp = math.fsum(values.values()) / len(values)  # statistics.fmean, less imports
    else:
        zone_temp = values[hottest] if hottest else None
    used = {publisher for publisher, _ in votes} | {name.split("/", 1)[0] for name in named}
    runtime = charge = None
    if gauges is not None and power is not PowerStatus.UNKNOWN:
        side = ("online",) if power is PowerStatus.ONLINE else ("on_battery", "low_battery")
        deciders = [gauges.get(p) for p, status in votes if status in side]
        runtime = _most([g.runtime_s if g else None for g in deciders])
        charge = _most([g.charge_pct if g else None for g in deciders])
    return Situation(
        power=power,
        temperature=zone_temp,
        hottest=hottest,
        sources=tuple(sorted(used)),
        stale=tuple(p for p in stale if _serves(p, power_from, sensors)),
        votes=votes,
        missing=missing,
        runtime_s=runtime,
        charge_pct=charge,
    )


def _most(values: list[float | None]) -> float | None:
    """The largest value, or None when any is unknown (or there are none)."""
    known = [v for v in values if v is not None]
    return max(known) if known and len(known) == len(values) else None


def _counted(
    readings: dict[str, Reading], power_from: frozenset[str] | None, sensors: tuple[str, ...]
) -> tuple[dict[str, float], list[str]]:
    """The zone's sensors as ``publisher/sensor``: those read, with their values, and
    those failed (None)."""
    values: dict[str, float] = {}
    failed: list[str] = []
    for publisher, (_, temperatures) in readings.items():
        for sensor, value in temperatures.items():
            name = f"{publisher}/{sensor}"
            if sensors:
                if not any(fnmatch.fnmatchcase(name, pattern) for pattern in sensors):
                    continue
            elif power_from is not None and publisher not in power_from:
                continue
            if value is None:
                failed.append(name)
            else:
                values[name] = value
    return values, failed


def _serves(publisher: str, power_from: frozenset[str] | None, sensors: tuple[str, ...]) -> bool:
    """Whether ``publisher`` votes for a zone or may have a sensor its globs select."""
    if power_from is None or publisher in power_from:
        return True
    return any(  # a glob without "/" may match across it: any publisher may serve
        fnmatch.fnmatchcase(publisher, glob.split("/", 1)[0] if "/" in glob else "*")
        for glob in sensors
    )
