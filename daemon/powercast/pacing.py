"""Pacing: how often to try again, and how often to say so.

- :class:`Backoff`: when to read a failing source (or reach a broker) next.
- :class:`Pacer`: at most one log line per key every ``every_s``; the lines held back are
  counted and the next line let through carries ``similar_not_logged=N``. A client that
  sends 500 bad requests a second costs the log one line per interval, not 500.

Both are pure: they take the time as an argument (``now``, any monotonic clock) and never
read a clock, sleep or log; the caller owns those.
"""

from __future__ import annotations

from typing import Final

BACKOFF_MAX_S: Final = 30.0
LOG_EVERY_S: Final = 10.0
"""The default interval between two lines of one key."""


class Backoff:
    """When to read a source next: every ``interval_s`` while it works; after a failure,
    ``interval_s`` then doubling up to ``max_s``; back to ``interval_s`` on success.

    Pure and deterministic. A source slower than ``max_s`` keeps its own interval.
    """

    def __init__(self, interval_s: float, max_s: float = BACKOFF_MAX_S) -> None:
        self.interval_s = interval_s
        self.max_s = max(max_s, interval_s)
        self.failures = 0

    def delay(self, ok: bool) -> float:
        """Seconds to wait after a read that worked (``ok``) or failed."""
        if ok:
            self.failures = 0
            return self.interval_s
        self.failures += 1
        return min(self.interval_s * 2.0 ** min(self.failures - 1, 64), self.max_s)


class Pacer:
    """At most one line per key every ``every_s``, counting the ones held back.

    Keys name a kind of line (an event, or an event and a fixed reason): they come from
    the code, never from what a peer sent, so the table stays as small as the code.
    """

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._quiet_until: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, key: str, now: float) -> int | None:
        """None: hold this line back (it is counted). Otherwise log it, with the number of
        lines of ``key`` held back since the last one let through (0 for none)."""
        if now < self._quiet_until.get(key, float("-inf")):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._quiet_until[key] = now + self.every_s
        return self._held.pop(key, 0)

    def fields(self, key: str, now: float) -> dict[str, int] | None:
        """:meth:`admit` as the fields to add to the line: None to hold it back, else
        ``{"similar_not_logged": N}`` when lines were held back, ``{}`` when none were."""
        held = self.admit(key, now)
        if held is None:
            return None
        return {"similar_not_logged": held} if held else {}
