"""Carrying out decisions: each state's commands, one at a time, in order, each bounded.

A command is an argv (never a shell) that learns why it runs from its environment:
POWERCAST_STATE, POWERCAST_PREVIOUS_STATE, POWERCAST_REASON and POWERCAST_FANS (on|off).
When a new decision arrives, commands of older decisions that have not started yet are
dropped as superseded: after a quick shedding -> thermal_override, only "fans on" runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog

from powercast.config import Action
from powercast.policy import Decision

log = structlog.get_logger("powercast.actions")

_PRIVATE_ENV: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
OUTPUT_LIMIT: Final = 400


@dataclass(frozen=True)
class Outcome:
    """How one command went."""

    ok: bool
    result: str
    """``ok``, ``failed`` (non-zero exit), ``timeout`` (killed) or ``error`` (could not start)."""
    exit_code: int | None
    duration_s: float
    output: str


def environment(decision: Decision) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
    env.update(
        POWERCAST_STATE=decision.state,
        POWERCAST_PREVIOUS_STATE=decision.previous,
        POWERCAST_REASON=decision.reason,
        POWERCAST_FANS="on" if decision.fans_on else "off",
    )
    return env


async def run_command(action: Action, env: dict[str, str]) -> Outcome:
    """Run one state's command with the decision in its environment."""
    return await run_argv(action.argv, action.timeout_s, env)


async def run_argv(argv: list[str], timeout_s: float, env: dict[str, str] | None = None) -> Outcome:
    """Run one program; kill its process group and reap it at its timeout."""
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as err:
        return Outcome(False, "error", None, time.monotonic() - started, err.strerror or str(err))
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        return Outcome(False, "timeout", None, time.monotonic() - started, "")
    finally:
        if proc.returncode is None:  # cancelled: leave nothing running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
    text = out.decode(errors="replace").strip()[-OUTPUT_LIMIT:]
    code = proc.returncode
    return Outcome(
        code == 0, "ok" if code == 0 else "failed", code, time.monotonic() - started, text
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
