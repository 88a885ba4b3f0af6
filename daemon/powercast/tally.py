"""Counts for the operator tools: transitions, and how each action went and how long it took.

Kept by the runtime off the datagram path (a decision or a finished command is rare next
to a heartbeat) and read by ``powercast status`` and the metrics endpoint. Datagram
counters are not here: the controller core already keeps them, and a scrape reads them.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

DURATION_BUCKETS_S: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds of the action duration histogram (a command's timeout is 10 s by default)."""


@dataclass
class Durations:
    """A histogram: how many observations fell at or below each bound, and their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS_S) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS_S, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: ("0.01", n), ..., ("+Inf", count)."""
        out, running = [], 0
        for bound, n in zip((*map(str, DURATION_BUCKETS_S), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


@dataclass
class Tally:
    """What the runtime saw happen, since it started."""

    transitions: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(zone, previous, state) -> how many times."""
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(state, result) -> how many commands ended so."""
    durations: dict[str, Durations] = field(default_factory=dict)
    """state -> how long its commands took."""

    def transition(self, zone: str, previous: str, state: str) -> None:
        self.transitions[zone, previous, state] += 1

    def outcome(self, state: str, result: str, duration_s: float) -> None:
        self.outcomes[state, result] += 1
        self.durations.setdefault(state, Durations()).observe(duration_s)
