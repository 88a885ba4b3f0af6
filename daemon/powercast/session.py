"""Per-publisher tracking: which announcements are news, and whose data is still fresh.

Pure: the receiver's monotonic ``now`` comes in as an argument. Freshness is judged by
the receiver's clock at arrival plus the announcement's time-allowed-to-live, so a
publisher whose clock is wrong cannot keep its data alive, and one that goes quiet goes
stale after exactly the time it promised.

A sensor does not vanish by going quiet: every sensor seen from the publisher in its
current epoch stays in :attr:`Session.temperatures`, as None (unknown) while the latest
announcement carries it as failed or leaves it out. A new epoch (a restart, or a reload
that changed the publisher's sources) starts a fresh set.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field

import msgspec

from powercast.wire import Announcement, Glance


class Verdict(enum.Enum):
    """What one announcement means for its publisher's session."""

    NEW = "new"
    """First from this publisher, or from a new epoch (the publisher restarted)."""
    NEWS = "news"
    """The announced state changed."""
    REPEAT = "repeat"
    """A newer datagram with the same state: a heartbeat or a retransmission."""
    DUPLICATE = "duplicate"
    """The very datagram seen last (same epoch and sequence)."""
    OLD = "old"
    """Older than what was seen: reordered, or an epoch that has ended."""


@dataclass
class Session:
    """What is known of one publisher."""

    message: Announcement
    received_at: float
    expires_at: float
    max_tal: float = math.inf
    """The receiver's cap on any announcement's TAL: a publisher cannot stay fresh for a day."""
    ended_epochs: deque[int] = field(default_factory=lambda: deque(maxlen=16))
    seen: set[str] = field(init=False)
    """Every sensor named by this publisher in the current epoch."""
    temperatures: dict[str, float | None] = field(init=False)
    """The latest temperatures, with every sensor seen in this epoch but not read now as None."""

    source: str | None = None
    """The address the latest datagram taken came from (None: no address, a broker)."""
    glance: Glance | None = None
    """The current announcement at a glance, when it was read so: a later heartbeat that
    repeats its readings is taken from it by :meth:`heartbeat`, without a decode."""

    def __post_init__(self) -> None:
        self.seen = set()
        self._take_temperatures()

    @classmethod
    def first(cls, message: Announcement, now: float, max_tal: float = math.inf) -> Session:
        """The session opened by a publisher's first accepted announcement."""
        return cls(message, now, now + min(message.tal, max_tal), max_tal)

    @property
    def publisher(self) -> str:
        return self.message.publisher

    def fresh(self, now: float) -> bool:
        return now < self.expires_at

    def offer(self, message: Announcement, now: float) -> Verdict:
        """Judge ``message`` and, unless it is old or a duplicate, take it as current."""
        last = self.message
        if message.epoch != last.epoch:
            # A restart is later in time: an epoch that ended, or one sent before the last
            # datagram taken while that one is still fresh, is a replay. Once the session
            # is stale, a restart with a clock set back is accepted (the receiver's clock
            # window still bounds it).
            if message.epoch in self.ended_epochs or (
                message.sent <= last.sent and now < self.expires_at
            ):
                return Verdict.OLD
            self.ended_epochs.append(last.epoch)
            self.seen = set()
            verdict = Verdict.NEW
        elif message.seq == last.seq:
            return Verdict.DUPLICATE
        elif message.seq < last.seq:
            return Verdict.OLD
        elif message.change != last.change:
            verdict = Verdict.NEWS
        else:
            verdict = Verdict.REPEAT
        self.message = message
        self.received_at = now
        tal, cap = message.tal, self.max_tal
        self.expires_at = now + (tal if tal < cap else cap)
        self._take_temperatures()
        return verdict

    def heartbeat(self, glance: Glance, now: float) -> bool:
        """Take ``glance`` if it is a newer datagram of the current epoch and change with
        the very readings of the current one (the usual datagram); False, taking nothing,
        for anything else, which :meth:`offer` judges from the whole announcement."""
        last, current = self.message, self.glance
        if (
            current is None
            or glance.seq <= last.seq
            or glance.epoch != last.epoch
            or glance.change != last.change
            or glance.temperatures != current.temperatures
            or glance.power != current.power
            or glance.tal != current.tal
        ):
            return False
        self.message = msgspec.structs.replace(last, seq=glance.seq, sent=glance.sent)
        self.received_at = now
        tal, cap = last.tal, self.max_tal
        self.expires_at = now + (tal if tal < cap else cap)
        return True

    def _take_temperatures(self) -> None:
        """:attr:`temperatures` of the current message; the message's own dict when it
        names every sensor seen (the usual case: no copy per datagram)."""
        current = self.message.temperatures
        seen = self.seen
        if not current.keys() <= seen:
            seen.update(current)
        if len(current) == len(seen):
            self.temperatures = current
        else:
            self.temperatures = {
                **current,
                **dict.fromkeys(sorted(self.seen.difference(current))),
            }
