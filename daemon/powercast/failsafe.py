"""Fans on when no controller runs: ``powercast failsafe``, run by the unit after every stop.

It drives every actuator the controller drove to its safe position (fans on), all at
once, each within its own bound, so a hung device delays only itself and the command
ends within :data:`FAILSAFE_BOUND_S`; then it runs the ``failsafe`` state's commands (a
config that moves fans with commands is still covered). It reads the config the
controller last *ran* (a copy the controller keeps at each successful load), not only
the file on disk, which may hold a typo saved after a refused reload.

An operator who wants the fans left alone for one stop (maintenance) creates
:data:`powercast.plan.LEAVE_FANS` in the runtime directory; the next start removes it.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from powercast import config as cfg
from powercast import persist
from powercast.actions import environment, run_command
from powercast.actuators import actuator_name, make_driver
from powercast.actuators.base import SAFE_POSITION, Closing
from powercast.offload import Lane
from powercast.plan import LEAVE_FANS
from powercast.policy import NO_DATA, Decision
from powercast.states import State
from powercast.systemd import runtime_directory, state_directory

RUNNING_CONFIG: Final = "controller.running.toml"
"""The copy of the config the controller runs, in its state (else runtime) directory."""
RELEASED: Final = "controller.released.toml"
"""Beside it: the actuators a reload dropped that were not yet seen at fans on, as a
config of their zones and actuators alone. Without it, a controller that dies in that
window leaves them to no one: the running copy is already the config without them."""
FAILSAFE_BOUND_S: Final = 30.0
READ_BOUND_S: Final = 3.0
"""A config or copy not read within this long is skipped, and said; the others are used."""
"""``powercast failsafe`` gives up waiting on any device or command after this long."""


def leave_fans_marker() -> Path | None:
    """Where the operator's "leave the fans" file would be."""
    return runtime_directory() / LEAVE_FANS


def released_config(released: list[tuple[str, cfg.Actuator]]) -> cfg.ControllerConfig | None:
    """The copy of the actuators a reload dropped and not yet seen at fans on, as a config
    of their zones (each actuator with its zone); None when none is left (no copy)."""
    if not released:
        return None
    zones: dict[str, list[cfg.Actuator]] = {}
    for zone, actuator in released:
        zones.setdefault(zone, []).append(actuator)
    return cfg.ControllerConfig(
        zones=[cfg.Zone(name=name, actuators=actuators) for name, actuators in zones.items()]
    )


def write_copy(directory: Path, name: str, config: cfg.ControllerConfig | None) -> None:
    """Write ``directory/name`` atomically and synced, as the state file is, or remove it
    when ``config`` is None. Raises OSError."""
    path = directory / name
    if config is None:
        path.unlink(missing_ok=True)
        return
    persist.write_atomically(path, cfg.dumps(config).encode())


def load_released(state_dir: Path | None) -> tuple[list[tuple[str, cfg.Actuator]], str | None]:
    """The actuators a controller before this one dropped and did not see at fans on,
    each with its zone (none when there is no copy); and why the copy cannot be read,
    if it cannot: the caller says so and leaves it, as the actuators it names may be off."""
    path = (state_dir or runtime_directory()) / RELEASED
    try:
        config = cfg.load(path, "controller")
    except cfg.ConfigError as err:
        return [], None if not os.path.lexists(path) else str(err)
    assert isinstance(config, cfg.ControllerConfig)
    return [(z.name, a) for z in config.effective_zones() for a in z.actuators], None


def set_aside_released(state_dir: Path | None) -> Path:
    """Move a copy of released actuators that cannot be read to ``<name>.unreadable``,
    where no later copy overwrites it; where it is now (as it was, if it cannot move)."""
    path = (state_dir or runtime_directory()) / RELEASED
    aside = path.with_name(f"{RELEASED}.unreadable")
    try:
        os.replace(path, aside)
    except OSError:
        return path
    return aside


def running_config_paths(
    configured: cfg.ControllerConfig | None, name: str = RUNNING_CONFIG
) -> list[Path]:
    """Where a copy of the running config (or of the actuators released from it) may be:
    the state directory as the controller chooses it (persist.state_dir, else the unit's
    StateDirectory=), then the other, then the runtime directory."""
    dirs = [
        Path(configured.persist.state_dir) if configured and configured.persist.state_dir else None,
        state_directory(),
        runtime_directory(),
    ]
    return list(dict.fromkeys(d / name for d in dirs if d is not None))


@dataclass
class Report:
    """What ``powercast failsafe`` did."""

    moved: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.moved + len(self.failures)


async def gather_configs(path: Path) -> tuple[list[cfg.ControllerConfig], list[str]]:
    """The running copy, the actuators a reload released from it, and the file on disk,
    whichever can be read; notes say why not."""
    configs: list[cfg.ControllerConfig] = []
    notes: list[str] = []
    on_disk: cfg.ControllerConfig | None = None
    try:
        on_disk = await _load_within(path, READ_BOUND_S)
    except cfg.ConfigError as err:
        notes.append(f"{err} (using the config the controller last ran)")
    for name in (RUNNING_CONFIG, RELEASED):
        for copy in running_config_paths(on_disk, name):
            try:
                loaded = await _load_within(copy, READ_BOUND_S, missing_ok=True)
            except cfg.ConfigError as err:
                notes.append(str(err))
                continue
            if loaded is None:
                continue
            configs.append(loaded)
            if name == RUNNING_CONFIG:
                break  # the latest; every copy of released actuators counts (on is safe)
    if on_disk is not None:
        configs.append(on_disk)
    return configs, notes


async def _load_within(
    path: Path, bound_s: float, *, missing_ok: bool = False
) -> cfg.ControllerConfig | None:
    """A controller config read on a lane of its own, waited for ``bound_s`` at most: a
    file that does not answer (a state directory on a dead NFS server, a FIFO) costs this
    file and one thread, never the fans the other files name. None for a file that is not
    there (``missing_ok``). Raises ConfigError."""

    def read() -> cfg.ControllerConfig | None:
        if missing_ok and not os.path.lexists(path):
            return None
        loaded = cfg.load(path, "controller")
        assert isinstance(loaded, cfg.ControllerConfig)
        return loaded

    try:
        return await Lane(f"read {path}").call(read, bound_s)
    except TimeoutError:
        raise cfg.ConfigError(
            f"{path}: no answer within {bound_s:g} s (a disk that hangs?); not read"
        ) from None


async def to_safe_state(configs: list[cfg.ControllerConfig]) -> Report:
    """Every actuator of ``configs`` (each once) to fans on, and the failsafe commands."""
    seen: list[object] = []
    jobs: list[tuple[str, cfg.Actuator]] = []
    actions: list[cfg.Action] = []
    for config in configs:
        for zone in config.effective_zones():
            for index, actuator in enumerate(zone.actuators):
                if actuator not in seen:
                    seen.append(actuator)
                    jobs.append((actuator_name(f"{zone.name}/{index}", actuator), actuator))
            for action in zone.actions:
                if action.on == State.failsafe and action not in actions:
                    actions.append(action)
    report = Report()
    tasks = [asyncio.create_task(_safe(name, actuator)) for name, actuator in jobs]
    commands = [asyncio.create_task(_command(action)) for action in actions]
    if tasks or commands:
        await asyncio.wait([*tasks, *commands], timeout=FAILSAFE_BOUND_S)
    for (name, _), task in zip(jobs, tasks, strict=True):
        result = _result(task, name)
        if result is None:
            report.moved += 1
        else:
            report.failures.append(result)
    for action, task in zip(actions, commands, strict=True):
        if (result := _result(task, action.argv[0])) is not None:
            report.notes.append(f"failsafe command {action.argv[0]}: {result}")
    return report


def _result(task: asyncio.Task[str | None], name: str) -> str | None:
    if not task.done():
        task.cancel()
        return f"{name}: no answer within {FAILSAFE_BOUND_S:g} s"
    return task.result()


async def _safe(name: str, actuator: cfg.Actuator) -> str | None:
    """One actuator to fans on and read back; the failure in words, or None."""
    driver = make_driver(actuator, name)
    try:
        async with asyncio.timeout(driver.timeout_s):
            await driver.apply(SAFE_POSITION)
            position = await driver.read()
    except TimeoutError:
        return f"{name}: no answer within {driver.timeout_s:g} s"
    except Exception as err:  # any driver's failure is this actuator's, not the others'
        return str(err) if str(err).startswith(name) else f"{name}: {type(err).__name__}: {err}"
    finally:
        if isinstance(driver, Closing):
            driver.close()
    if position is not None and position != SAFE_POSITION:
        return f"{name}: set to full speed but reads back {position} %"
    return None


async def _command(action: cfg.Action) -> str | None:
    decision = Decision(0.0, State.failsafe, State.failsafe, "no controller running", NO_DATA, "")
    env = environment(decision) | {"POWERCAST_PREVIOUS_STATE": "unknown"}  # no controller ran
    outcome = await run_command(action, env)
    return None if outcome.ok else f"{outcome.result} {outcome.output[-200:]}".strip()
