"""The plan: effects of start, state changes, reload and stop, without sockets or processes."""

from __future__ import annotations

import pytest

from powercast import config as cfg
from powercast.plan import (
    LogDryRun,
    Notify,
    Plan,
    ReleaseActuator,
    RunActions,
    Save,
    SetActuator,
    StartActuator,
)
from powercast.policy import NO_DATA, Decision, FanChart, Policy

pytestmark = pytest.mark.unit

PWM_A = cfg.HwmonActuator(path="/sys/class/hwmon/hwmon0/pwm1")
PWM_B = cfg.HwmonActuator(path="/sys/class/hwmon/hwmon0/pwm2")
FANS = cfg.CommandActuator(on_argv=["fans", "on"], off_argv=["fans", "off"])
PAGE = cfg.Action(on="shedding", argv=["page", "shed"])


def zone(name: str, *actuators: cfg.Actuator, actions: tuple[cfg.Action, ...] = ()) -> cfg.Zone:
    return cfg.Zone(name=name, actuators=list(actuators), actions=list(actions))


def zones(*zs: cfg.Zone) -> dict[str, cfg.Zone]:
    return {z.name: z for z in zs}


def policy(name: str, state: str | None = None) -> Policy:
    p = Policy(cfg.PolicySettings(), zone=name)
    if state is not None:
        p.chart = FanChart(start_value=state)
    p.settled = True
    return p


def decision(name: str, state: str, previous: str = "normal") -> Decision:
    return Decision(1.0, previous, state, "because", NO_DATA, name)


class TestStart:
    def test_one_worker_per_actuator_and_nothing_moves(self) -> None:
        plan = Plan(zones(zone("a", PWM_A, PWM_B), zone("b", FANS)))
        assert plan.start() == [
            StartActuator("a/0", "a", PWM_A),
            StartActuator("a/1", "a", PWM_B),
            StartActuator("b/0", "b", FANS),
        ]

    def test_a_zone_settles_once_its_actuators_set_and_its_actions_replayed(self) -> None:
        """A restored shed confirmed by data: actuators off, the shed's commands again."""
        plan = Plan(zones(zone("a", PWM_A, actions=(PAGE,))))
        plan.start()
        waiting = Policy(cfg.PolicySettings(), zone="a")  # not evaluated yet: nothing
        assert plan.reconcile({"a": waiting}) == []
        effects = plan.reconcile({"a": policy("a", "shedding")})
        assert effects[0] == SetActuator("a/0", 0)
        run = effects[1]
        assert isinstance(run, RunActions)
        assert (run.replay, run.actions, run.decision.state) == (True, (PAGE,), "shedding")
        assert effects[2:] == [Save(), Notify()]
        assert plan.reconcile({"a": policy("a", "shedding")}) == []  # once

    def test_failsafe_after_the_grace_sets_fans_on(self) -> None:
        plan = Plan(zones(zone("a", FANS)))
        effects = plan.reconcile({"a": policy("a")})  # the chart starts in failsafe
        assert effects[0] == SetActuator("a/0", 100)


class TestDecisions:
    def test_a_change_moves_the_zone_and_runs_its_actions(self) -> None:
        plan = Plan(zones(zone("a", PWM_A, actions=(PAGE,)), zone("b", PWM_B)))
        effects = plan.decided([decision("a", "shedding")])
        assert effects[0] == SetActuator("a/0", 0)
        assert isinstance(effects[1], RunActions)
        assert not effects[1].replay
        assert effects[2:] == [Save(), Notify()]
        assert plan.settled == {"a"}

    def test_dry_run_logs_instead_of_running(self) -> None:
        plan = Plan(zones(zone("a", PWM_A, actions=(PAGE,))), dry_run=True)
        effects = plan.decided([decision("a", "shedding")])
        assert isinstance(effects[1], LogDryRun)
        assert not any(isinstance(e, RunActions) for e in effects)


class TestStages:
    def test_a_new_stage_sets_the_level_and_runs_no_commands(self) -> None:
        """Shedding to a deeper stage moves the actuators to its level; the state's
        commands ran on entering shedding and do not run again."""
        plan = Plan(zones(zone("a", PWM_A, FANS, actions=(PAGE,))))
        entered = Decision(1.0, "on_battery", "shedding", "why", NO_DATA, "a", 1, 50, 100)
        effects = plan.decided([entered])
        assert effects[:2] == [SetActuator("a/0", 50), SetActuator("a/1", 50)]
        assert isinstance(effects[2], RunActions)
        deeper = Decision(2.0, "shedding", "shedding", "why", NO_DATA, "a", 2, 0, 50)
        assert plan.decided([deeper]) == [
            SetActuator("a/0", 0),
            SetActuator("a/1", 0),
            Save(),
            Notify(),
        ]

    def test_a_restored_stage_settles_at_its_level(self) -> None:
        """A zone restored shedding at stage 2 settles with its actuators at that level."""
        settings = cfg.PolicySettings(
            stages=[cfg.Stage(level=60), cfg.Stage(level=20, runtime_below_s=300.0)]
        )
        p = Policy(settings, zone="a")
        p.chart, p.stage, p.settled = FanChart(start_value="shedding"), 2, True
        effects = Plan(zones(zone("a", PWM_A))).reconcile({"a": p})
        assert effects[0] == SetActuator("a/0", 20)

    def test_stop_and_reload_use_the_level(self) -> None:
        """A new actuator in a zone shed to 60 % is set to 60 %; a stop sets 100 %."""
        settings = cfg.PolicySettings(stages=[cfg.Stage(level=60)])
        p = Policy(settings, zone="a")
        p.chart, p.stage, p.settled = FanChart(start_value="shedding"), 1, True
        plan = Plan(zones(zone("a", PWM_A)))
        plan.reconcile({"a": p})
        effects = plan.reload(zones(zone("a", PWM_A, PWM_B)), {"a": p})
        assert effects == [StartActuator("a/1", "a", PWM_B), SetActuator("a/1", 60)]
        assert plan.stop(leave_fans=False) == [SetActuator("a/0", 100), SetActuator("a/1", 100)]


class TestReload:
    def test_the_same_actuator_keeps_its_worker_a_replaced_one_is_released(self) -> None:
        """Identity is zone, index and settings: a new device at a/0 is a new actuator."""
        plan = Plan(zones(zone("a", PWM_A), zone("b", FANS)))
        plan.decided([decision("a", "shedding"), decision("b", "shedding")])
        effects = plan.reload(
            zones(zone("a", PWM_B), zone("b", FANS)),
            {"a": policy("a", "shedding"), "b": policy("b", "shedding")},
        )
        assert effects == [
            ReleaseActuator("a/0", PWM_A),
            StartActuator("a/0", "a", PWM_B),
            SetActuator("a/0", 0),  # the zone is settled: the new one is set at once
        ]

    def test_a_new_zone_starts_its_workers_and_waits_to_settle(self) -> None:
        plan = Plan(zones(zone("a", PWM_A)))
        effects = plan.reload(zones(zone("a", PWM_A), zone("c", FANS)), {})
        assert effects == [StartActuator("c/0", "c", FANS)]
        assert "c" not in plan.settled

    def test_a_removed_zone_is_released(self) -> None:
        plan = Plan(zones(zone("a", PWM_A), zone("b", FANS)))
        assert plan.reload(zones(zone("a", PWM_A)), {}) == [ReleaseActuator("b/0", FANS)]


class TestStop:
    def test_every_actuator_on_unless_left(self) -> None:
        plan = Plan(zones(zone("a", PWM_A, PWM_B), zone("b", FANS)))
        assert plan.stop(leave_fans=False) == [
            SetActuator("a/0", 100),
            SetActuator("a/1", 100),
            SetActuator("b/0", 100),
        ]
        assert plan.stop(leave_fans=True) == []
