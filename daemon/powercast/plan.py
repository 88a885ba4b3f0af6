"""What the controller asks of the world: effects, decided here, carried out by the shell.

The controller core (:mod:`powercast.controller`) turns datagrams and timers into state
changes. This module turns state changes, the start-up, reloads and the stop into
*effects* for the runtime to carry out, in the manner of a sans-I/O protocol: set an
actuator, run a state's commands, start or release an actuator's worker, save the state,
update systemd's status line. Every ordering question (what a restart replays, which
actuator keeps its worker on reload, what is known of a position after a restart)
is answered here, without sockets, processes or clocks, and tested as such.

The rules it keeps:

- Fans are moved by actuators, reconciled: each has a desired level (100 % full speed,
  0 off; shedding's stage sets it), and its worker
  writes whenever the real position is unknown or differs. Nothing about a position is
  believed across a restart or a device change: it is read back or written.
- A zone's first evaluation after start (restored state confirmed, or failsafe after
  the grace) *settles* it: its actuators are set to the state's position and its
  state's commands run once more (replayed), so a command that moves fans and was
  interrupted by a crash or a stop is carried out again.
- An actuator keeps its worker across a reload only when it is the very same actuator
  (same zone, index and settings); any other is released to its safe position (fans on)
  and a new worker takes its place. Workers start on their own: a slow or hung device
  delays only itself.
- At a stop, every actuator goes to its safe position (fans on), unless the operator
  asked to leave them (:data:`LEAVE_FANS`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from powercast.config import Action, Actuator, Zone
from powercast.policy import Decision, Policy
from powercast.staging import FULL

LEAVE_FANS: Final = "controller.leave-fans"
"""A file of this name in the runtime directory (``/run/powercast``) asks the next stop
and ``powercast failsafe`` to leave the fans where they are, once: for maintenance."""


@dataclass(frozen=True)
class SetActuator:
    """Drive actuator ``key`` to a fan level: 100 (full speed, safe) .. 0 (off)."""

    key: str
    level: int


@dataclass(frozen=True)
class RunActions:
    """Run a state's commands with the decision in their environment."""

    decision: Decision
    actions: tuple[Action, ...]
    replay: bool = False
    """True when the state was not entered now but is being carried out again (start)."""


@dataclass(frozen=True)
class LogDryRun:
    """A dry run: say what would have run, run nothing."""

    decision: Decision
    actions: tuple[Action, ...]


@dataclass(frozen=True)
class StartActuator:
    """Make a worker for an actuator; it learns the real position by itself."""

    key: str
    zone: str
    config: Actuator


@dataclass(frozen=True)
class ReleaseActuator:
    """Stop driving an actuator the config no longer has (or replaced), leaving it on."""

    key: str
    config: Actuator


@dataclass(frozen=True)
class Save:
    """Write the state file."""


@dataclass(frozen=True)
class Notify:
    """Update systemd's status line."""


Effect = SetActuator | RunActions | LogDryRun | StartActuator | ReleaseActuator | Save | Notify


def actuator_keys(zones: Iterable[Zone]) -> dict[str, tuple[str, Actuator]]:
    """``zone/index`` -> (zone name, settings), in config order."""
    return {
        f"{zone.name}/{index}": (zone.name, actuator)
        for zone in zones
        for index, actuator in enumerate(zone.actuators)
    }


@dataclass
class Plan:
    """The effects of state changes, start, reload and stop, for one controller."""

    zones: dict[str, Zone]
    dry_run: bool = False
    settled: set[str] = field(default_factory=set)
    """Zones whose actuators and commands have been set to their state since start."""
    actuators: dict[str, tuple[str, Actuator]] = field(init=False)

    def __post_init__(self) -> None:
        self.actuators = actuator_keys(self.zones.values())

    def start(self) -> list[Effect]:
        """One worker per actuator; nothing moves until a zone settles."""
        return [StartActuator(key, zone, config) for key, (zone, config) in self.actuators.items()]

    def reload(self, zones: dict[str, Zone], policies: dict[str, Policy]) -> list[Effect]:
        """Workers for new or changed actuators, released ones for the rest. Zones that
        stay keep their state; a new actuator in a settled zone is set to its position
        at once; new zones settle when first evaluated."""
        before, after = self.actuators, actuator_keys(zones.values())
        effects: list[Effect] = [
            ReleaseActuator(key, config)
            for key, (_, config) in before.items()
            if after.get(key) != before[key]
        ]
        self.zones, self.actuators = dict(zones), after
        self.settled &= set(zones)
        for key, (zone, config) in after.items():
            if before.get(key) == after[key]:
                continue
            effects.append(StartActuator(key, zone, config))
            if zone in self.settled:
                effects.append(SetActuator(key, policies[zone].level))
        return effects

    def decided(self, decisions: list[Decision]) -> list[Effect]:
        """State changes: each zone's actuators to the new position, its commands run."""
        effects: list[Effect] = []
        for decision in decisions:
            effects += self._carry_out(decision, replay=False)
            self.settled.add(decision.zone)
        if decisions:
            effects += [Save(), Notify()]
        return effects

    def reconcile(self, policies: dict[str, Policy]) -> list[Effect]:
        """Zones evaluated for the first time without a move (a restored state the data
        confirms, failsafe after the grace, a zone a reload added): set them now."""
        effects: list[Effect] = []
        for name, policy in policies.items():
            if name in self.settled or not policy.settled or name not in self.zones:
                continue
            self.settled.add(name)
            situation, level = policy.situation, policy.level
            replay = Decision(
                0.0,
                policy.state,
                policy.state,
                policy.reason,
                situation,
                name,
                policy.stage,
                level,
                level,
            )
            effects += self._carry_out(replay, replay=True)
        if effects:
            effects += [Save(), Notify()]
        return effects

    def stop(self, *, leave_fans: bool) -> list[Effect]:
        """At a stop no controller will react to heat: every actuator to fans on."""
        if leave_fans:
            return []
        return [SetActuator(key, FULL) for key in self.actuators]

    def _carry_out(self, decision: Decision, *, replay: bool) -> list[Effect]:
        effects: list[Effect] = [
            SetActuator(key, decision.level)
            for key, (zone, _) in self.actuators.items()
            if zone == decision.zone
        ]
        zone = self.zones.get(decision.zone)
        if zone is None or not (decision.moved or replay):  # a new stage: only the level
            return effects
        actions = tuple(a for a in zone.actions if a.on == decision.state)
        if actions:
            if self.dry_run:
                effects.append(LogDryRun(decision, actions))
            else:
                effects.append(RunActions(decision, actions, replay))
        return effects
