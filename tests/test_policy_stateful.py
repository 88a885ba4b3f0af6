"""Safety proofs: long random runs of a controller with zones, publishers, restarts, overrides.

A hypothesis RuleBasedStateMachine drives the real Controller core (signed datagrams, a
fake clock) through announcements, time passing (heartbeats, expiries and timers run in
it), publishers going silent, restarts (persist.snapshot -> JSON -> a new Controller ->
persist.restore, with the startup grace) and operator overrides. After every step, and
at every timer and heartbeat inside a pause, it checks against its own model of who is
fresh and what they said:

1. Safety: a zone's fans are never off while any of its selected fresh temperatures is
   at or above its temp_high_c (the mean, for a zone configured with mean), nor while it
   has no fresh data or no fresh temperature.
2. Liveness: on battery for longer than shed_after_s, fresh and cool, no override: the
   zone sheds, unless the flap guard holds it, and then the reason says so.
3. Flap guard: at most flap_max_sheds sheds within any flap_window_s.
4. Timers: the controller's deadline is never in the past after a tick (the runtime's
   timer would spin), and after the startup grace every zone has been decided.
5. Actuators (the plan's effects, carried out at once): an actuator is below full speed
   only while its zone's level is, which 1 allows; once a zone is decided, every
   actuator is at its zone's level; while no controller runs (a restart's down time),
   every actuator is at full speed.
6. Stages (the "staged" zone: time on battery, runtime, charge): while on battery and
   shedding, the level never rises while the stage's trigger still holds within its
   hysteresis, never falls unless the deeper stage's trigger holds, never rises while
   runtime and charge only fell (monotone), and a stage is never entered on a value not
   announced; on mains, a shed zone holds its level until it returns to full speed.

The one allowed exception to 1 is the startup grace: a zone restored from the state file
keeps its saved state until its own data comes or the grace ends.

Bounded by default (50 runs of up to 50 steps, a few seconds); HYPOTHESIS_PROFILE=long
runs more, and ``pytest -m slow`` runs a large variant.
"""

from __future__ import annotations

import fnmatch
import os
import statistics
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from powercast import persist
from powercast.auth import Keyring
from powercast.config import ControllerConfig, HwmonActuator, PolicySettings, Stage, Zone
from powercast.controller import Controller
from powercast.plan import Effect, Plan, SetActuator
from powercast.policy import Decision, Override
from powercast.wire import PowerStatus

from fakes import WALL, FakePublisher, make_keyring
from strategies import charges, override_lengths, pauses, runtimes, sensor_readings

pytestmark = pytest.mark.unit

PUBLISHERS = ("ups-a", "ups-b", "ups-c")
TAL = 3.0
HEARTBEAT_S = 1.0
EPS = 1e-6
"""Slack for times that went through the state file (monotonic -> wall clock -> back)."""
BATTERY = (PowerStatus.ON_BATTERY, PowerStatus.LOW_BATTERY)
ANNOUNCED = (*BATTERY, PowerStatus.ON_BATTERY, PowerStatus.ONLINE, PowerStatus.UNKNOWN)
"""What a publisher says, twice as often on battery as anything else."""

CONFIG = ControllerConfig(
    policy=PolicySettings(
        shed_after_s=5.0,
        restore_after_s=3.0,
        flap_window_s=60.0,
        flap_max_sheds=3,
        startup_grace_s=3.0,
    ),
    zones=[
        # Every publisher votes, one "on battery" is enough; the hottest of all sensors.
        Zone(name="hall", actuators=[HwmonActuator(path="hall1"), HwmonActuator(path="hall2")]),
        # Both UPSes of a redundant pair must say so; their own sensors; a lower limit.
        Zone(
            name="pair",
            publishers=["ups-a", "ups-b"],
            power_quorum=2,
            sensors=["ups-a/*", "ups-b/*"],
            actuators=[HwmonActuator(path="pair1")],
            policy=PolicySettings(
                temp_high_c=30.0,
                temp_hysteresis_c=1.0,
                shed_after_s=2.0,
                restore_after_s=1.0,
                flap_window_s=20.0,
                flap_max_sheds=2,
            ),
        ),
        # One UPS; the mean of its inlet and another publisher's; no debounce at all.
        Zone(
            name="room",
            publishers=["ups-c"],
            sensors=["ups-c/inlet", "ups-a/inlet"],
            temperature="mean",
            actuators=[HwmonActuator(path="room1")],
            policy=PolicySettings(
                temp_hysteresis_c=0.0,
                shed_after_s=0.0,
                restore_after_s=0.0,
                flap_window_s=10.0,
                flap_max_sheds=1,
            ),
        ),
        # Staged: 60 % after 4 s on battery, 30 % under 600 s of runtime, 10 % under 20 %
        # of charge, off under 200 s; back on mains, full speed once 300 s are left.
        Zone(
            name="staged",
            publishers=["ups-b"],
            actuators=[HwmonActuator(path="staged1")],
            policy=PolicySettings(
                shed_after_s=2.0,
                restore_after_s=1.0,
                flap_window_s=30.0,
                flap_max_sheds=2,
                stages=[
                    Stage(level=60, on_battery_for_s=4.0),
                    Stage(level=30, runtime_below_s=600.0),
                    Stage(level=10, charge_below_pct=20.0),
                    Stage(level=0, runtime_below_s=200.0, hysteresis=100.0),
                ],
                min_return_runtime_s=300.0,
                max_return_wait_s=20.0,
            ),
        ),
    ],
)
ZONES = {zone.name: zone for zone in CONFIG.zones}

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
BOUNDED = settings(
    max_examples=1000 if LONG else 50,
    stateful_step_count=200 if LONG else 50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
LARGE = settings(
    max_examples=2000,
    stateful_step_count=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class ControllerRuns(RuleBasedStateMachine):
    """The controller core under random events; its own model of freshness beside it."""

    keyring: Keyring
    """Set on the subclass that a test makes (a key made in tmp_path)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.publishers = {n: FakePublisher.signed(n, self.keyring, TAL) for n in PUBLISHERS}
        self.silent = set(PUBLISHERS)
        """Publishers that send no heartbeats (none has spoken yet)."""
        self.next_beat: dict[str, float] = {}
        self.heard: dict[str, float] = {}
        """When the running controller last took a datagram from each publisher."""
        self.named: dict[str, set[str]] = {n: set() for n in PUBLISHERS}
        """Sensors each publisher has announced in its epoch: one gone from its latest
        datagram is unknown, not absent."""
        self.spells: dict[str, float | None] = dict.fromkeys(ZONES)
        """Since when each zone's fresh data has said "on battery" without a break."""
        self.sheds: dict[str, list[float]] = {name: [] for name in ZONES}
        self.ctrl = Controller(CONFIG, self.keyring)
        self.ctrl.start(self.now)
        self.plan = Plan(dict(ZONES))
        self.positions: dict[str, int | None] = dict.fromkeys(self.plan.actuators)
        """Each actuator's real level; None: unknown (as found at the first start)."""
        self.seen: dict[str, tuple[object, ...]] = {}
        """Each zone as the previous check found it: state, stage, level, runtime, charge,
        its battery spell."""
        self.carried: dict[str, float] = {}
        """A battery spell the state file carried over a restart, for each zone whose
        controller has not seen its end: time on battery counts from there."""
        self.carry_out(self.plan.start())

    # -- the model -----------------------------------------------------------------------

    def fresh(self, name: str) -> bool:
        return name in self.heard and self.now < self.heard[name] + TAL

    def votes(self, zone: Zone) -> list[PowerStatus]:
        voters = zone.publishers or PUBLISHERS
        return [self.publishers[n].power for n in PUBLISHERS if n in voters and self.fresh(n)]

    def on_battery(self, zone: Zone) -> bool:
        said = self.votes(zone)
        battery = sum(status in BATTERY for status in said)
        return PowerStatus.ONLINE not in said and battery >= zone.power_quorum

    def temperatures(self, zone: Zone) -> dict[str, float | None]:
        """The zone's selected fresh temperatures, by "publisher/sensor"; None for one its
        publisher announced earlier in its epoch and no longer does."""
        values: dict[str, float | None] = {}
        for name in PUBLISHERS:
            if not self.fresh(name):
                continue
            now = self.publishers[name].temperatures
            for sensor in self.named[name] | set(now):
                key = f"{name}/{sensor}"
                if zone.sensors:
                    wanted = any(fnmatch.fnmatchcase(key, glob) for glob in zone.sensors)
                else:
                    wanted = not zone.publishers or name in zone.publishers
                if wanted:
                    values[key] = now.get(sensor)
        return values

    def gauges(self, zone: Zone) -> tuple[float | None, float | None]:
        """Runtime and charge of the fresh voters on battery: the most, or None when
        one of them does not say."""
        voters = zone.publishers or PUBLISHERS
        said = [
            self.publishers[n]
            for n in PUBLISHERS
            if n in voters and self.fresh(n) and self.publishers[n].power in BATTERY
        ]
        runtime = [p.runtime_s for p in said]
        charge = [p.charge_pct for p in said]
        return (
            None if not said or None in runtime else max(r for r in runtime if r is not None),
            None if not said or None in charge else max(c for c in charge if c is not None),
        )

    def level(self, zone: Zone) -> float | None:
        """The zone temperature; None without any, while a listed sensor is quiet, or
        while a sensor it counts is unknown."""
        values = self.temperatures(zone)
        quiet = [g for g in zone.sensors if not any(fnmatch.fnmatchcase(k, g) for k in values)]
        known = [v for v in values.values() if v is not None]
        if not values or quiet or len(known) < len(values):
            return None
        if zone.temperature == "mean":
            return statistics.fmean(known)
        return max(known)

    # -- driving the controller ----------------------------------------------------------

    def deliver(self, name: str, data: bytes) -> None:
        """One datagram; the model follows it at once, as the controller does."""
        self.record(self.ctrl.receive(data, self.now, WALL + self.now))
        self.heard[name] = self.now
        self.named[name] |= set(self.publishers[name].temperatures)
        self.observe()

    def carry_out(self, effects: list[Effect]) -> None:
        """The plan's effects, as the runtime would carry them out (every write works)."""
        for effect in effects:
            if isinstance(effect, SetActuator):
                self.positions[effect.key] = effect.level

    def record(self, decisions: list[Decision]) -> None:
        self.carry_out(self.plan.decided(decisions))
        for d in decisions:
            if d.state != "shedding" or d.previous == "shedding":  # a new stage is no shed
                continue
            sheds = self.sheds[d.zone]
            sheds.append(d.at)
            cfg = self.ctrl.zones[d.zone].settings
            recent = [t for t in sheds if t > d.at - cfg.flap_window_s + EPS]
            assert len(recent) <= cfg.flap_max_sheds, (
                f"{d.zone}: {len(recent)} sheds within {cfg.flap_window_s} s: {recent}"
            )

    def observe(self) -> None:
        for name, zone in ZONES.items():
            if not self.on_battery(zone):
                self.spells[name] = None
            elif self.spells[name] is None:
                self.spells[name] = self.now

    def settle(self) -> None:
        """Run the timers that are due now, as the runtime's timer would."""
        for _ in range(20):
            due = self.ctrl.deadline()
            if due is None or due > self.now:
                return
            self.record(self.ctrl.tick(self.now))
            self.observe()
        raise AssertionError(
            f"deadline {self.ctrl.deadline()} <= now {self.now} after ticks that moved"
            f" nothing: the runtime's timer would fire again at once, forever"
        )

    def after(self) -> None:
        self.observe()
        self.settle()
        self.carry_out(self.plan.reconcile(self.ctrl.zones))
        self.check()

    # -- rules ---------------------------------------------------------------------------

    @rule(
        name=st.sampled_from(PUBLISHERS),
        power=st.sampled_from(ANNOUNCED),
        readings=sensor_readings,
        runtime=runtimes,
        charge=charges,
    )
    def announce(
        self,
        name: str,
        power: PowerStatus,
        readings: dict[str, float],
        runtime: float | None,
        charge: float | None,
    ) -> None:
        """A publisher announces news, then keeps sending heartbeats."""
        publisher = self.publishers[name]
        publisher.runtime_s, publisher.charge_pct = runtime, charge
        self.deliver(name, publisher.say(self.now, power, **readings))
        self.named[name] |= set(readings)
        self.silent.discard(name)
        self.next_beat[name] = self.now + HEARTBEAT_S
        self.after()

    @rule(power=st.sampled_from([PowerStatus.ON_BATTERY, PowerStatus.ONLINE]), data=st.data())
    def site_wide(self, power: PowerStatus, data: st.DataObject) -> None:
        """The mains fail or return for every UPS at once: all publishers announce it."""
        for name in PUBLISHERS:
            readings = data.draw(sensor_readings, label=name)
            self.deliver(name, self.publishers[name].say(self.now, power, **readings))
            self.named[name] |= set(readings)
            self.silent.discard(name)
            self.next_beat[name] = self.now + HEARTBEAT_S
        self.after()

    @rule(runtime=runtimes, charge=charges, inlet=st.sampled_from([20.0, 30.0, 36.0]))
    def staged_outage(self, runtime: float | None, charge: float | None, inlet: float) -> None:
        """The staged zone's UPS announces battery, mostly cool, with a runtime and charge."""
        publisher = self.publishers["ups-b"]
        publisher.runtime_s, publisher.charge_pct = runtime, charge
        self.deliver(
            "ups-b", publisher.say(self.now, PowerStatus.ON_BATTERY, inlet=inlet, cpu=25.0)
        )
        self.named["ups-b"] |= {"inlet", "cpu"}
        self.silent.discard("ups-b")
        self.next_beat["ups-b"] = self.now + HEARTBEAT_S
        self.after()

    @rule(name=st.sampled_from(PUBLISHERS), runtime=runtimes, charge=charges)
    def battery_drains(self, name: str, runtime: float | None, charge: float | None) -> None:
        """A heartbeat brings another runtime and charge, without news (a move within
        the publisher's deadband)."""
        publisher = self.publishers[name]
        publisher.runtime_s, publisher.charge_pct = runtime, charge
        self.deliver(name, publisher.heartbeat(self.now))
        self.silent.discard(name)
        self.next_beat[name] = self.now + HEARTBEAT_S
        self.after()

    @rule(name=st.sampled_from(PUBLISHERS))
    def go_silent(self, name: str) -> None:
        """A publisher stops sending: its data runs out at its TAL."""
        self.silent.add(name)
        self.after()

    @rule(seconds=pauses)
    def time_passes(self, seconds: float) -> None:
        """Time passes: heartbeats of the live publishers, expiries and timers, in order."""
        target = self.now + seconds
        while True:
            beats = [t for n, t in self.next_beat.items() if n not in self.silent]
            due = self.ctrl.deadline()
            step = min([*beats, target] + ([due] if due is not None else []))
            self.now = max(self.now, step)
            for name in PUBLISHERS:
                if name not in self.silent and self.next_beat[name] <= self.now:
                    self.deliver(name, self.publishers[name].heartbeat(self.now))
                    self.next_beat[name] = self.now + HEARTBEAT_S
            self.observe()
            self.record(self.ctrl.tick(self.now))
            self.after()
            if step >= target:
                return

    @rule(down_s=st.sampled_from([0.0, 0.5, 4.0, 30.0]))
    def restart(self, down_s: float) -> None:
        """The controller stops, stays down a while, and starts from its state file."""
        saved = persist.snapshot(self.ctrl.zones, {}, self.now, WALL + self.now)
        record = msgspec.json.decode(msgspec.json.encode(saved), type=persist.StateRecord)
        self.carry_out(self.plan.stop(leave_fans=False))
        for name, since in self.spells.items():
            if since is not None:
                self.carried[name] = min(self.carried.get(name, since), since)
        assert all(p == 100 for p in self.positions.values()), f"no controller: {self.positions}"
        self.now += down_s
        ctrl = Controller(CONFIG, self.keyring)
        persist.restore(record, ctrl.zones, self.now, WALL + self.now)
        ctrl.start(self.now)
        self.ctrl = ctrl
        self.plan = Plan(dict(ZONES))
        self.carry_out(self.plan.start())
        self.heard = {}
        self.named = {n: set() for n in PUBLISHERS}  # a new controller has seen nothing yet
        for name in self.next_beat:
            self.next_beat[name] = max(self.next_beat[name], self.now)
        self.after()

    @rule(zone=st.sampled_from(list(ZONES)), fans_on=st.booleans(), length=override_lengths)
    def override(self, zone: str, fans_on: bool, length: float) -> None:
        """An operator forces a zone's fans on or off for a while."""
        order = Override(fans_on, self.now + length, "drill", "stateful test")
        self.record(self.ctrl.set_override(zone, order, self.now))
        self.after()

    @rule(zone=st.sampled_from(list(ZONES)))
    def clear_override(self, zone: str) -> None:
        """An operator clears a zone's override."""
        self.record(self.ctrl.set_override(zone, None, self.now))
        self.after()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def check(self) -> None:
        for name, zone in ZONES.items():
            policy = self.ctrl.zones[name]
            cfg = policy.settings
            where = f"{name} at {self.now:g} in {policy.state} ({policy.reason})"
            waiting = not policy.settled and self.now < self.ctrl.grace_until
            if self.now >= self.ctrl.grace_until:
                assert policy.settled, f"{where}: not decided after the grace"
            level = self.level(zone)
            if policy.level < 100 and not waiting:
                assert level is not None, f"{where}: fans off without a fresh temperature"
                assert level < cfg.temp_high_c, f"{where}: fans off at {level} °C"
                if policy.state == "shedding":
                    said = self.votes(zone)
                    assert said, f"{where}: shedding without fresh power data"
                    assert self.on_battery(zone) or PowerStatus.ONLINE in said, where
                else:
                    assert policy.override is not None, where
                    assert not policy.override.fans_on, where
            for key, (zone_name, _) in self.plan.actuators.items():
                if zone_name != name:
                    continue
                position = self.positions[key]
                if position is not None and position < 100:
                    assert policy.level < 100, f"{where}: {key} at {position} %"
                    assert not waiting, f"{where}: {key} slowed before the zone is decided"
                if name in self.plan.settled:
                    assert position == policy.level, f"{where}: {key} at {position} %"
            if policy.settled:
                assert name in self.plan.settled, f"{where}: decided but not carried out"
            if "flapping" in policy.reason:
                assert len(policy.sheds) >= cfg.flap_max_sheds, where
            self.check_stages(name, zone)
            since = self.spells[name]
            due = since is not None and self.now >= since + cfg.shed_after_s + EPS
            cool = level is not None and level <= cfg.temp_high_c - cfg.temp_hysteresis_c
            if due and cool and level < cfg.temp_high_c and policy.override is None:
                held = policy.state == "on_battery" and "flapping" in policy.reason
                assert policy.state == "shedding" or held, f"{where}: should have shed"

    def check_stages(self, name: str, zone: Zone) -> None:
        """Invariant 6, against the previous check of the same zone."""
        policy = self.ctrl.zones[name]
        if not policy.settings.stages or not policy.settled:
            return  # no stages; or restored, waiting out the grace (the exception to 1)
        if policy.battery_since is None:
            self.carried.pop(name, None)
        stages = policy.settings.stages
        runtime, charge = self.gauges(zone)
        spell = self.spells[name]
        now = (policy.state, policy.stage, policy.level, runtime, charge, spell)
        before, self.seen[name] = self.seen.get(name), now
        where = f"{name} at {self.now:g} in {policy.state} stage {policy.stage} ({policy.reason})"
        battery = self.on_battery(zone)
        shed = policy.state == "shedding"
        values = {"runtime_below_s": runtime, "charge_below_pct": charge}
        start = spell if name not in self.carried or spell is None else self.carried[name]
        onbatt = None if start is None else self.now - start

        def holds(stage: Stage, margin: float) -> bool:
            if stage.on_battery_for_s is not None:
                return onbatt is not None and onbatt + EPS >= stage.on_battery_for_s - margin
            key = "runtime_below_s" if stage.runtime_below_s is not None else "charge_below_pct"
            value = values[key]
            return value is not None and value < getattr(stage, key) + margin

        if shed and battery and policy.stage:
            assert holds(stages[policy.stage - 1], stages[policy.stage - 1].margin), (
                f"{where}: at a stage whose trigger does not hold (runtime {runtime}, charge"
                f" {charge}, {onbatt} s on battery)"
            )
        if before is None or not shed or before[0] != "shedding":
            return
        _, stage, level, runtime0, charge0, spell0 = before
        assert isinstance(stage, int)
        assert isinstance(level, int)
        if battery and spell == spell0 and stage:
            kept = stages[stage - 1]
            if holds(kept, kept.margin):
                assert policy.stage >= stage, f"{where}: left stage {stage} within hysteresis"
            if policy.level < level:
                entered = stages[policy.stage - 1]
                assert holds(entered, 0.0), f"{where}: went down without its trigger"
            fell = all(
                b == a or (a is not None and b is not None and b <= a)
                for a, b in ((runtime0, runtime), (charge0, charge))
            )
            if fell:
                assert policy.level <= level, (
                    f"{where}: level rose {level} -> {policy.level} while runtime"
                    f" {runtime0} -> {runtime} and charge {charge0} -> {charge} fell"
                )
        if not battery and PowerStatus.ONLINE in self.votes(zone):
            assert policy.level == level, f"{where}: level moved on mains {level} -> {policy.level}"


class Draws:
    """Fixed draws for a rule that takes ``data``, by label: a saved run replayed by hand."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def draw(self, strategy: object, label: str) -> Any:
        return self.values[label]


def machine(keyring: Keyring) -> type[ControllerRuns]:
    return type("ControllerRuns", (ControllerRuns,), {"keyring": keyring})


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    directory: Path = tmp_path_factory.mktemp("keys")
    return make_keyring(directory)


class TestControllerStateful:
    def test_invariants_over_random_runs(self, keyring: Keyring) -> None:
        """Safety, liveness, flap and timer invariants hold over bounded random runs."""
        run_state_machine_as_test(machine(keyring), settings=BOUNDED)

    def test_a_sensor_no_longer_announced_after_a_restart_fails_safe(
        self, keyring: Keyring
    ) -> None:
        """A saved run: on battery, ups-c names inlet; the controller restarts at once and
        hears ups-c's heartbeats (inlet again) in the same epoch; then ups-c announces cpu
        alone. inlet is unknown, not absent: hall fails safe, and the model, which learns
        the sensors of each epoch anew after a restart as the controller does, agrees."""
        state = machine(keyring)()
        cool = {"ups-a": {}, "ups-b": {}, "ups-c": {"inlet": 20.0}}
        state.check()
        state.site_wide(PowerStatus.ON_BATTERY, cast(st.DataObject, Draws(cool)))
        state.restart(0.0)
        state.time_passes(7.0)
        assert state.named["ups-c"] == {"inlet"}
        moved = {**cool, "ups-c": {"cpu": 20.0}}
        state.site_wide(PowerStatus.ON_BATTERY, cast(st.DataObject, Draws(moved)))
        hall = state.ctrl.zones["hall"]
        assert (hall.state, hall.level) == ("failsafe", 100)
        assert "no reading from ups-c/inlet" in hall.reason
        assert state.level(ZONES["hall"]) is None
        state.teardown()

    @pytest.mark.slow
    def test_invariants_over_long_random_runs(self, keyring: Keyring) -> None:
        """The same invariants over 2,000 runs of up to 300 steps (pytest -m slow)."""
        run_state_machine_as_test(machine(keyring), settings=LARGE)
