"""The publisher's core: what to announce, and when.

Pure: readings and the monotonic ``now`` come in; announcements and the time of the
next one go out. A reading that is news (power status changed, a sensor appeared,
went, failed or came back, a temperature moved by more than the deadband, an analogue
power value moved by at least its :data:`POWER_DEADBANDS`) bumps the change number and
is announced at once, then repeated after ``retransmit_first_gap_s`` and at doubling
gaps until the gap reaches the heartbeat (as IEC 61850 GOOSE does), so one lost
datagram does not delay the news by a heartbeat. Other readings ride on the next
heartbeat.

Every datagram's time-allowed-to-live is ``heartbeat_s * tal_factor``: it covers the
gap to the next datagram with a margin of at least two lost ones, burst or not, so a
lossy link delays news but does not make receivers flap to failsafe.

A sensor does not vanish when its source fails: every sensor a source has produced in
this epoch is announced, with the value None ("failed") while that source fails or
leaves it out, so a receiver sees it as unknown instead of going on with the others.
The first announcement of an epoch waits until every source has had its first read
attempt (it worked, failed or timed out), so a restarted publisher does not announce
power ``unknown`` before it has asked.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Final

import msgspec

from powercast.config import PublisherConfig, Reading
from powercast.wire import Announcement, Power, PowerStatus

POWER_DEADBANDS: Final = {"charge_pct": 5.0, "runtime_s": 60.0, "load_pct": 5.0, "input_v": 10.0}
EARLY: Final = 0.05
"""A plain heartbeat may go this share of ``heartbeat_s`` before it is due, with a source's
read that woke the daemon anyway: one wake-up a second instead of two (an idle publisher's
CPU is its wake-ups). Retransmissions of news keep their times."""
"""A move of at least this much since the last news is news: 5 points of charge or load,
a minute of runtime, 10 V of input. Less rides on the next heartbeat, so a UPS whose
runtime estimate jitters with the load does not set off a burst at every poll. A value
that appears (was unknown) is not news by itself; it becomes what later moves are
measured from."""


Temperatures = dict[str, float | None]
"""Sensor name -> °C, or None for a sensor that failed."""


def merge(
    readings: list[Reading | None], produced: list[set[str]] | None = None
) -> tuple[Power, Temperatures]:
    """Combine sources in config order: the first known power status, every sensor.

    ``None`` stands for a source that failed: it contributes no power, so power is
    ``unknown`` unless another source knows it. ``produced`` holds the sensor names each
    source has produced so far: those it does not give now (it failed, or left them
    out) are announced as None, failed. A name given by two sources keeps the first.
    """
    power: Power | None = None
    temperatures: Temperatures = {}
    for index, reading in enumerate(readings):
        if reading is not None:
            if reading.power is not None and power is None and reading.power.status != "unknown":
                p = reading.power
                power = Power(
                    PowerStatus(p.status), p.charge_pct, p.runtime_s, p.load_pct, p.input_v
                )
            for name, value in reading.temperatures.items():
                temperatures.setdefault(name, value)
        if produced is not None:
            given = reading.temperatures if reading is not None else {}
            for name in sorted(produced[index].difference(given)):
                temperatures.setdefault(name, None)
    return power or Power(PowerStatus.UNKNOWN), temperatures


@dataclass
class Announcer:
    """Sequence, change number and schedule of one publisher epoch, and what each source
    last read."""

    config: PublisherConfig
    epoch: int = field(default_factory=lambda: secrets.randbits(63))
    seq: int = 0
    change: int = 0
    power: Power = field(default_factory=lambda: Power(PowerStatus.UNKNOWN))
    temperatures: Temperatures = field(default_factory=dict)
    next_at: float = 0.0
    """Monotonic time of the next announcement once :attr:`waiting` is empty; 0 sends the
    first one at once."""
    gap: float | None = None
    """The next gap of a burst of repeats after news; None once back on the heartbeat."""
    latest: list[Reading | None] = field(init=False)
    """Each source's last reading (config order); None until it reads, and while it fails."""
    produced: list[set[str]] = field(init=False)
    """The sensor names each source has produced in this epoch."""
    waiting: set[int] = field(init=False)
    """Sources yet to make their first read attempt in this epoch: nothing is sent before."""
    _news_temperatures: Temperatures = field(default_factory=dict)
    _news_power: Power = field(default_factory=lambda: Power(PowerStatus.UNKNOWN))

    def __post_init__(self) -> None:
        count = len(self.config.sources)
        self.latest = [None] * count
        self.produced = [set() for _ in range(count)]
        self.waiting = set(range(count))

    @property
    def due(self) -> float | None:
        """When the next announcement is due; None while a source has not been tried yet."""
        return None if self.waiting else self.next_at

    def may_send(self, now: float) -> bool:
        """Whether an announcement may go at ``now``: it is due, or it is a plain heartbeat
        due within :data:`EARLY` of its period."""
        due = self.due
        if due is None:
            return False
        early = self.config.heartbeat_s * EARLY if self.gap is None else 0.0
        return now >= due - early

    def read(self, source: int, reading: Reading | None, now: float) -> bool:
        """Take source ``source``'s read attempt (None: it failed); True when that is news."""
        self.latest[source] = reading
        if reading is not None:
            self.produced[source].update(reading.temperatures)
        self.waiting.discard(source)
        power, temperatures = merge(self.latest, self.produced)
        return self.update(power, temperatures, now)

    def update(self, power: Power, temperatures: Temperatures, now: float) -> bool:
        """Take the latest merged reading; True (and an announcement due now) when it is news."""
        news = (
            power.status != self.power.status
            or self._power_moved(power)
            or temperatures.keys() != self._news_temperatures.keys()
            or any(
                self._temperature_moved(value, self._news_temperatures[name])
                for name, value in temperatures.items()
            )
        )
        self.power, self.temperatures = power, temperatures
        if news:
            self.change += 1
            self._news_temperatures = dict(temperatures)
            self._news_power = power
            self.next_at = now
            self.gap = self.config.retransmit_first_gap_s
        return news

    def _temperature_moved(self, new: float | None, old: float | None) -> bool:
        """A sensor failed or came back, or moved by more than the deadband."""
        if new is None or old is None:
            return (new is None) != (old is None)
        return abs(new - old) > self.config.temp_deadband_c

    def _power_moved(self, power: Power) -> bool:
        """An analogue value moved by its deadband since the last news (see POWER_DEADBANDS).

        Values that were unknown at the last news are measured from where they first appear.
        """
        moved = False
        for name, band in POWER_DEADBANDS.items():
            new, old = getattr(power, name), getattr(self._news_power, name)
            if old is None and new is not None:
                self._news_power = msgspec.structs.replace(self._news_power, **{name: new})
            elif new is not None and old is not None and abs(new - old) >= band:
                moved = True
        return moved

    def announce(self, now: float, wall: float) -> Announcement:
        """The announcement to send now; schedules the next heartbeat."""
        self.seq += 1
        heartbeat = self.config.heartbeat_s
        if self.gap is not None and self.gap < heartbeat:
            self.next_at = now + self.gap
            self.gap *= 2
        else:
            self.gap = None
            self.next_at = now + heartbeat
        return Announcement(
            publisher=self.config.id,
            epoch=self.epoch,
            seq=self.seq,
            change=self.change,
            sent=wall,
            tal=self.config.heartbeat_s * self.config.tal_factor,
            power=self.power,
            temperatures=dict(self.temperatures),
        )
