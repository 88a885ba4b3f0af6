"""Carrying out decisions: each state's commands, one at a time, in order, each bounded.

A command is an argv (never a shell) that learns why it runs from its environment:
POWERCAST_STATE, POWERCAST_PREVIOUS_STATE, POWERCAST_REASON and POWERCAST_FANS (on|off).
When a new decision arrives, commands of older decisions that have not started yet are
dropped as superseded: after a quick shedding -> thermal_override, only "fans on" runs.
Each command runs through :mod:`powercast.programs`: its clean environment, bounded output,
and its process group killed at the timeout, so a hung or chatty command cannot hold up
the ones queued after it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable
from typing import Final

import structlog

from powercast import programs
from powercast.config import Action
from powercast.policy import Decision
from powercast.programs import Outcome

__all__ = ["OUTPUT_LIMIT", "ActionQueue", "Outcome", "environment", "run_command"]

log = structlog.get_logger("powercast.actions")

OUTPUT_LIMIT: Final = 400
"""Characters of a command's output kept for the log and the status: the end says most."""


def environment(decision: Decision) -> dict[str, str]:
    """The variables that tell a command why it runs (added to the programs' clean ones)."""
    return {
        "POWERCAST_STATE": decision.state,
        "POWERCAST_PREVIOUS_STATE": decision.previous,
        "POWERCAST_REASON": decision.reason,
        "POWERCAST_FANS": "on" if decision.fans_on else "off",
        "POWERCAST_FAN_LEVEL": str(decision.level),
        "POWERCAST_STAGE": str(decision.stage),
    }


async def run_command(action: Action, env: dict[str, str]) -> Outcome:
    """Run one state's command with the decision in its environment."""
    outcome = await programs.run(action.argv, action.timeout_s, env)
    text = outcome.output.strip()
    return dataclasses.replace(
        outcome,
        output=text[-OUTPUT_LIMIT:],
        truncated=outcome.truncated or len(text) > OUTPUT_LIMIT,
    )


class ActionQueue:
    """Runs queued commands in order; :meth:`run` is the task that owns them."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Decision, Action]] = deque()
        self._ready = asyncio.Event()
        self.running: tuple[Decision, Action] | None = None
        self.last: dict[str, Outcome] = {}
        self.observers: list[Callable[[Decision, Outcome], None]] = []
        """Told of every finished command (the operator tools count outcomes)."""

    def submit(self, decision: Decision, actions: list[Action]) -> None:
        for old, action in self._queue:
            log.warning(
                "action_superseded", state=old.state, argv=action.argv, by_state=decision.state
            )
        self._queue.clear()
        self._queue.extend((decision, action) for action in actions if action.on == decision.state)
        self._ready.set()

    def pending(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                decision, action = self.running = self._queue.popleft()
                outcome = await run_command(action, environment(decision))
                self.running = None
                self.last[decision.state] = outcome
                for observe in self.observers:
                    observe(decision, outcome)
                level = log.info if outcome.ok else log.error
                level(
                    "action",
                    state=decision.state,
                    argv=action.argv,
                    result=outcome.result,
                    exit_code=outcome.exit_code,
                    duration_s=round(outcome.duration_s, 3),
                    output=outcome.output,
                )
