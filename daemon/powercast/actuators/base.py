"""The actuator interface and the worker that drives one actuator.

Positions are fan levels in percent: 100 full speed (every actuator's safe state), 0 off.
A device takes the levels it can: a PWM or a register its range (:class:`Scale`), a
switch only on and off (:func:`switch`), off at level 0 alone, so that any level above 0
runs the fans.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

import structlog

from powercast.pacing import Backoff
from powercast.tally import Durations

log = structlog.get_logger("powercast.actuators")

SAFE_POSITION: Final = 100
"""Every actuator's safe state: fans at full speed."""


class DriverError(Exception):
    """An actuator could not be moved or read; ``str()`` names it and says why."""


class Driver(Protocol):
    name: str
    timeout_s: float

    def position(self, level: int) -> int:
        """The level this device really takes when asked for ``level`` (what a read back
        says after it): a switch takes 0 or 100."""
        ...

    async def apply(self, level: int) -> None: ...

    async def read(self) -> int | None:
        """The level now, or None when the device cannot tell."""
        ...


def checked(level: int) -> int:
    """``level`` itself; a bool is refused, since True would be 1 %, not "on"."""
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"expected a level in percent (an int 0..100), got {level!r}")
    return level


def switch(level: int) -> bool:
    """For a device that is on or off: off only at level 0."""
    return checked(level) > 0


@dataclass(frozen=True)
class Scale:
    """Levels onto a device's range, linearly: 0 is ``off``, 100 is ``on`` (either may be
    the larger). A level between rounds towards ``on``, so only level 0 writes ``off``;
    a value read back between them is a level between 1 and 99."""

    off: int
    on: int

    def value(self, level: int) -> int:
        checked(level)
        span = self.on - self.off
        if level <= 0 or span == 0:
            return self.off if level <= 0 else self.on
        if level >= 100:
            return self.on
        step = math.ceil(abs(span) * level / 100)
        return self.off + (step if span > 0 else -step)

    def level(self, value: int) -> int:
        if value == self.on:
            return 100
        if value == self.off:
            return 0
        share = (value - self.off) / (self.on - self.off)
        if share <= 0:
            return 0
        if share >= 1:
            return 100
        return max(1, min(99, round(share * 100)))

    def position(self, level: int) -> int:
        return self.level(self.value(level))


@runtime_checkable
class Closing(Protocol):
    """A driver that holds a connection or socket: closed when its worker ends."""

    def close(self) -> None: ...


@dataclass
class Worker:
    """Moves one actuator to the desired position and knows where it really is.

    ``known`` is the last position read back (or, for a device that cannot be read, the
    last one applied successfully); None means unknown. ``dry_run`` decides and logs but
    touches nothing.
    """

    driver: Driver
    zone: str
    known: int | None = None
    """The level last read back (or applied, for a device that cannot be read)."""
    desired: int | None = None
    """The level asked for, as the device can take it (:meth:`Driver.position`)."""
    status: str = "idle"
    """idle, applying, ok, failed, dry_run."""
    error: str = ""
    attempts: int = 0
    last_applied_at: float | None = None
    last_verified_at: float | None = None
    last_duration_s: float | None = None
    durations: Durations = field(default_factory=Durations)
    """How long each attempt to move it took (apply and read back), failed ones too."""
    dry_run: bool = False
    min_backoff_s: float = 1.0
    """The first wait after a failed step; it doubles on each failure, up to max_backoff_s."""
    max_backoff_s: float = 30.0
    refresh_s: float | None = None
    """A device-side lease: the wanted position is written again after this long without
    a write, even when known to be right, so a device with its own timeout (a BMS timeout
    that turns the fans back on) keeps it only while this worker runs. It must be below the
    device's timeout, with room for a failed write and one retry."""
    on_change: Callable[[Worker], None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _written_at: float | None = None
    """When (monotonic) the last successful write began: the lease runs from there."""

    def want(self, level: int) -> None:
        """Ask for a level; the worker gets there when it can (latest wish wins)."""
        self.desired = self.driver.position(max(0, min(100, checked(level))))
        self._wake.set()

    async def probe(self) -> None:
        """Learn the real position at start, so nothing that is right gets toggled."""
        try:
            async with asyncio.timeout(self.driver.timeout_s):
                position = await self.driver.read()
        except Exception as err:  # a driver's bug must not end the daemon
            log.warning("actuator_unreadable", actuator=self.driver.name, error=_why(err))
            return
        if position is not None:
            self.known = position
            self.last_verified_at = time.time()
            self._changed()  # status, the state file, a release waiting for "on" learn it

    async def run(self) -> None:
        """The worker's task: learn the position, then follow the wishes (and renew the
        lease); the driver's connection is closed when the task ends."""
        try:
            await self._run()
        finally:
            if isinstance(self.driver, Closing):
                self.driver.close()

    async def _run(self) -> None:
        await self.probe()
        self._wake.set()  # a wish made during the probe is acted on now
        backoff = Backoff(self.min_backoff_s, self.max_backoff_s)
        while True:
            await self._idle()
            if self._lease_due():
                assert self.desired is not None
                await self._step(self.desired, renewal=True)
            while self.desired is not None and self.desired != self.known:
                if await self._step(self.desired):
                    backoff.delay(ok=True)
                    continue
                try:  # a new wish ends the wait early
                    async with asyncio.timeout(backoff.delay(ok=False)):
                        await self._wake.wait()
                        self._wake.clear()
                except TimeoutError:
                    pass

    async def _idle(self) -> None:
        """Until a wish, or until the lease is due for renewal."""
        due = self._lease_left()
        if due is None:
            await self._wake.wait()
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(due):
                    await self._wake.wait()
        self._wake.clear()

    def _lease_left(self) -> float | None:
        """Seconds until the lease must be renewed; None without one to renew."""
        if self.refresh_s is None or self.dry_run or self.desired is None:
            return None
        if self._written_at is None or self.desired != self.known:
            return 0.0
        return max(0.0, self._written_at + self.refresh_s - time.monotonic())

    def _lease_due(self) -> bool:
        return self.desired == self.known and self._lease_left() == 0.0

    async def _step(self, level: int, renewal: bool = False) -> bool:
        name = self.driver.name
        if self.dry_run:
            would = "on" if switch(level) else "off"
            log.info(
                "actuator_dry_run", actuator=name, zone=self.zone, would_set=would, fan_level=level
            )
            self.known, self.status = level, "dry_run"
            self._changed()
            return True
        quiet = renewal and self.status == "ok"  # a renewed lease is news to no one
        if not quiet:  # a write under way: the position is the old one or the new one
            self.known, self.status = None, "applying"
        self.attempts += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.driver.timeout_s):
                await self.driver.apply(level)
                readback = await self.driver.read()
        except Exception as err:  # a driver's bug is a failed actuator, not a dead daemon
            self.durations.observe(time.monotonic() - started)
            self.known, self.status = None, "failed"
            self.error = (
                f"{name}: no answer within {self.driver.timeout_s:g} s"
                if isinstance(err, TimeoutError)
                else f"{name}: {_why(err)}"
                if not isinstance(err, DriverError)
                else str(err)
            )
            log.error(
                "actuator_failed",
                actuator=name,
                zone=self.zone,
                wanted=level,
                attempt=self.attempts,
                error=self.error,
                position="unknown",
            )
            self._changed()
            return False
        self.last_duration_s = time.monotonic() - started
        self.durations.observe(self.last_duration_s)
        self._written_at = started
        self.last_applied_at = time.time()
        if readback is not None and readback != level:
            self.known, self.status = readback, "failed"
            self.error = f"{name}: set {level} % but reads back {readback} %"
            log.error("actuator_failed", actuator=name, zone=self.zone, error=self.error)
            self._changed()
            return False
        if readback is not None:
            self.last_verified_at = self.last_applied_at
        self.known, self.status, self.error, self.attempts = level, "ok", "", 0
        if quiet:
            log.debug("actuator_renewed", actuator=name, fan_level=level)
            return True
        log.info(
            "actuator_set",
            actuator=name,
            zone=self.zone,
            fan_level=level,
            position="on" if switch(level) else "off",
            verified=readback is not None,
            duration_s=round(self.last_duration_s, 4),
        )
        self._changed()
        return True

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)


def _why(err: Exception) -> str:
    """One line for an error: a DriverError's own words, else its type and message."""
    if isinstance(err, DriverError):
        return str(err)
    if isinstance(err, TimeoutError):
        return "timeout"
    return f"{type(err).__name__}: {err}"
