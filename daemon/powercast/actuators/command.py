"""Fans switched by programs (argv, no shell); optionally a program that reports the position."""

from __future__ import annotations

from typing import Final

from powercast import programs
from powercast.actuators.base import DriverError, switch
from powercast.config import CommandActuator

MESSAGE_LIMIT: Final = 200
"""Characters of a failed program's output quoted in its error (its end)."""
ANSWER_LIMIT: Final = 40
"""Characters of an unexpected verify answer quoted in its error."""


class CommandDriver:
    def __init__(self, name: str, config: CommandActuator) -> None:
        self.name = name
        self.timeout_s = config.timeout_s * (2 if config.verify_argv else 1)
        self._config = config

    def position(self, level: int) -> int:
        """On or off: off only at level 0."""
        return 100 if switch(level) else 0

    async def apply(self, level: int) -> None:
        argv = self._config.on_argv if switch(level) else self._config.off_argv
        outcome = await programs.run(argv, self._config.timeout_s)
        if outcome.exit_code not in self._config.ok_exit_codes:
            said = outcome.output.strip()[-MESSAGE_LIMIT:]
            raise DriverError(f"{self.name}: {argv[0]} {outcome.result}: {said}")

    async def read(self) -> int | None:
        if self._config.verify_argv is None:
            return None
        outcome = await programs.run(self._config.verify_argv, self._config.timeout_s)
        answer = outcome.output.strip().lower()
        if outcome.exit_code != 0 or answer not in ("on", "off"):
            raise DriverError(
                f"{self.name}: {self._config.verify_argv[0]} should print on or off,"
                f" got {answer[:ANSWER_LIMIT]!r} ({outcome.result})"
            )
        return 100 if answer == "on" else 0
