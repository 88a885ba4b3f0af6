"""A scripted timeline: the reading of the last step whose ``at_s`` has passed."""

from __future__ import annotations

import bisect
import time

from powercast.config import Reading, SimulatedSource


class SimulatedReader:
    def __init__(self, name: str, config: SimulatedSource, start: float) -> None:
        self.name = name
        self.interval_s = config.interval_s
        self._config = config
        self._start = start
        self._times = [step.at_s for step in config.timeline]

    def at(self, elapsed: float) -> Reading:
        """The reading ``elapsed`` seconds after start (pure, for tests)."""
        steps = self._config.timeline
        if self._config.repeat:
            period = self._times[-1] or 1.0
            elapsed %= period
        index = max(0, bisect.bisect_right(self._times, elapsed) - 1)
        step = steps[index]
        return Reading(power=step.power, temperatures=step.temperatures)

    def close(self) -> None:
        """Nothing is kept open between reads."""

    async def read(self) -> Reading:
        return self.at(time.monotonic() - self._start)
