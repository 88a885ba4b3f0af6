"""The actuator interface and the worker that drives one actuator."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

import structlog

from powercast.pacing import Backoff
from powercast.tally import Durations

log = structlog.get_logger("powercast.actuators")

SAFE_POSITION: Final = True
"""Every actuator's safe state: fans on."""


class DriverError(Exception):
    """An actuator could not be moved or read; ``str()`` names it and says why."""


class Driver(Protocol):
    name: str
    timeout_s: float

    async def apply(self, on: bool) -> None: ...

    async def read(self) -> bool | None: ...


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
    known: bool | None = None
    desired: bool | None = None
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

    def want(self, on: bool) -> None:
        """Ask for a position; the worker gets there when it can (latest wish wins)."""
        self.desired = on
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

    async def _step(self, on: bool, renewal: bool = False) -> bool:
        name = self.driver.name
        position = "on" if on else "off"
        if self.dry_run:
            log.info("actuator_dry_run", actuator=name, zone=self.zone, would_set=position)
            self.known, self.status = on, "dry_run"
            self._changed()
            return True
        quiet = renewal and self.status == "ok"  # a renewed lease is news to no one
        if not quiet:  # a write under way: the position is the old one or the new one
            self.known, self.status = None, "applying"
        self.attempts += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.driver.timeout_s):
                await self.driver.apply(on)
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
                wanted=position,
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
        if readback is not None and readback != on:
            self.known, self.status = readback, "failed"
            self.error = f"{name}: set {position} but reads back {'on' if readback else 'off'}"
            log.error("actuator_failed", actuator=name, zone=self.zone, error=self.error)
            self._changed()
            return False
        if readback is not None:
            self.last_verified_at = self.last_applied_at
        self.known, self.status, self.error, self.attempts = on, "ok", "", 0
        if quiet:
            log.debug("actuator_renewed", actuator=name, position=position)
            return True
        log.info(
            "actuator_set",
            actuator=name,
            zone=self.zone,
            position=position,
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
