"""Verify budgets: how many tags a receiver checks per second for one source or publisher.

An Ed25519 signature costs about a hundred times a decode to check, so a flood of forged
signatures could keep a receiver too busy for the real ones. Before a tag is checked,
its datagram is charged to two token buckets: one for the address it came from and one
for the publisher it claims. When either is empty the datagram is dropped unchecked
(``over_budget``). A flood can thus only starve what it names: the publisher it claims
goes quiet, its data runs out at its TAL and the fans run (fail safe); it is never
believed, and every other publisher is still checked on its own budget.

The claimed publisher id is unverified, so a flood could name a new id with every
datagram: only publishers already known (configured, or with a good tag before) get a
bucket of their own; the rest share one. Address buckets are kept for the most recent
``size`` sources. Pure: ``now`` comes in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

SOURCES_KEPT: Final = 1024
"""Source addresses with a bucket of their own; the least recently heard is forgotten."""
PUBLISHERS_KEPT: Final = 4096
"""Known publishers with a bucket of their own (a controller keeps as many sessions)."""
NEWCOMERS: Final = ""
"""The bucket shared by every publisher id not known yet (not a valid publisher id)."""


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; one token per check."""

    rate: float
    burst: float
    tokens: float
    at: float

    def take(self, now: float) -> bool:
        """Spend a token if there is one."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass
class Budgets:
    """Token buckets by key (a source address, a publisher id), the least recently used
    forgotten first beyond ``size``.

    With ``newcomers_share``, a key that is neither ``configured`` nor :meth:`learn`-ed
    is charged to the one shared :data:`NEWCOMERS` bucket.
    """

    rate: float
    burst: float
    size: int
    newcomers_share: bool = False
    configured: frozenset[str] = frozenset()
    learned: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """Keys learned from a good tag, the least recently learned forgotten beyond ``size``."""
    buckets: OrderedDict[str, TokenBucket] = field(default_factory=OrderedDict)

    def spent(self, key: str) -> bool:
        """Whether ``key`` has a bucket of its own and found it empty the last time."""
        bucket = self.buckets.get(key)
        return bucket is not None and bucket.tokens < 1.0

    def take(self, key: str, now: float) -> bool:
        """Spend a token of ``key``'s bucket: False when it has none left."""
        if self.newcomers_share and key not in self.configured and key not in self.learned:
            key = NEWCOMERS
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst, self.burst, now)
            if len(self.buckets) > self.size + len(self.configured) + 1:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(key)
        return bucket.take(now)

    def learn(self, key: str) -> None:
        """A good tag named ``key``: from now on it has a bucket of its own."""
        if not self.newcomers_share or key in self.configured:
            return
        self.learned[key] = None
        self.learned.move_to_end(key)
        if len(self.learned) > self.size:
            self.learned.popitem(last=False)
