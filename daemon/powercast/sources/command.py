"""A program that prints one JSON reading; killed if it runs past its timeout."""

from __future__ import annotations

from powercast import programs
from powercast.config import CommandSource, Reading
from powercast.sources.base import SourceError, parse_reading


class CommandReader:
    def __init__(self, name: str, config: CommandSource) -> None:
        self.name = name
        self.interval_s = config.interval_s
        self._argv = config.argv
        self._timeout = config.timeout_s

    def close(self) -> None:
        """Nothing is kept open between reads."""

    async def read(self) -> Reading:
        program = self._argv[0]
        outcome = await programs.run(self._argv, self._timeout, stderr="separate")
        if outcome.result == "error":
            raise SourceError(f"{program}: cannot run: {outcome.output}")
        if outcome.result == "timeout":
            raise SourceError(f"{program}: no answer within {self._timeout:g} s (killed)")
        if outcome.exit_code != 0:
            tail = outcome.errors.strip().splitlines()[-1:] or [""]
            raise SourceError(
                f"{program}: exited with status {outcome.exit_code} {tail[0]}".rstrip()
            )
        if outcome.truncated:
            raise SourceError(f"{program}: output longer than {programs.OUTPUT_LIMIT} bytes")
        return parse_reading(outcome.output.encode(), f"{program} output")
