"""The copies ``powercast failsafe`` reads, written off the event loop.

The controller keeps two files beside its state: the config it runs and the actuators a
reload dropped that are not yet back at fans on. Both are written on a thread of their
own (a :class:`~powercast.offload.Lane`), each write bounded: a state directory on a
disk that hangs (a frozen filesystem, a dead NFS server) delays only these copies, never
a decision, a fan or the watchdog's ping.

The released copy is always written before the running copy: a reload that drops an
actuator must name it in the released copy before the running copy stops naming it.
While the released copy cannot be written, the running copy is not written either, so
the old running copy, which still names the actuator, stays for the failsafe.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Final

import structlog

from powercast import config as cfg
from powercast import failsafe
from powercast.offload import Lane, LaneBusy

log = structlog.get_logger("powercast")

WRITE_TIMEOUT_S: Final = 5.0
"""A copy not written within this long is given up for now, and said."""
RETRY_S: Final = 5.0
"""A copy that could not be written is tried again after this long."""
ORDER: Final = (failsafe.RELEASED, failsafe.RUNNING_CONFIG)


class Copies:
    """The latest wanted content of each copy, written in :data:`ORDER` by :meth:`run`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lane = Lane("failsafe copies")
        self._pending: dict[str, cfg.ControllerConfig | None] = {}
        self._wanted = asyncio.Event()
        self._failing: set[str] = set()
        self._writing = False

    def keep(self, name: str, config: cfg.ControllerConfig | None) -> None:
        """Write ``config`` as the copy ``name`` (remove it for None), soon and in order;
        a newer content for the same copy replaces one not written yet."""
        self._pending[name] = config
        self._wanted.set()

    async def run(self) -> None:
        """Write what is wanted, for the life of the daemon."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            self._writing = True
            try:
                written = await self._write_pending()
            finally:
                self._writing = False
            if not written:
                await asyncio.sleep(RETRY_S)
                self._wanted.set()

    async def _write_pending(self) -> bool:
        """Write each pending copy in order; False (the rest left pending) at the first that
        fails, so that no later copy is written ahead of it. The first pending copy in
        :data:`ORDER` is taken anew after each write: a released copy wanted while another
        copy was being written goes before the running copy."""
        while name := next((n for n in ORDER if n in self._pending), None):
            config = self._pending.pop(name)
            try:
                write = partial(failsafe.write_copy, self.directory, name, config)
                await self._lane.call(write, WRITE_TIMEOUT_S)
            except (OSError, TimeoutError, LaneBusy) as err:
                self._pending.setdefault(name, config)  # unless a newer one came meanwhile
                if name not in self._failing:
                    self._failing.add(name)
                    log.error(
                        "failsafe_copy_failed",
                        file=str(self.directory / name),
                        error=str(err) or f"no answer within {WRITE_TIMEOUT_S:g} s",
                        retry_in_s=RETRY_S,
                        hint=_hint(err),
                    )
                return False
            if name in self._failing:
                self._failing.discard(name)
                log.info("failsafe_copy_kept", file=str(self.directory / name))
            if name == failsafe.RELEASED and config is not None:
                log.info(
                    "released_kept",
                    file=str(self.directory / name),
                    actuators=sum(len(z.actuators) for z in config.zones),
                )
        return True

    async def flush(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for what is pending to be written (at a stop); a copy
        not written stays as it was, and the failsafe reads that."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._pending or self._writing:
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(0.01)


def _hint(err: BaseException) -> str:
    """What to do about a copy not written: a directory that is not there is set up, not
    repaired."""
    if isinstance(err, FileNotFoundError):
        return (
            "powercast failsafe reads this copy after a crash: set persist.state_dir, or"
            " StateDirectory=powercast in the unit (as shipped)"
        )
    return "powercast failsafe reads this copy after a crash: check the disk"
