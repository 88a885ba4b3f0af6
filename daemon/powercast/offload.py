"""Blocking calls (sysfs files, a FIFO, a slow I2C bus) kept off the event loop, bounded.

asyncio's shared thread pool is the wrong place for them: one hung file read occupies a
worker for good, enough of them starve every other zone's fans, and the interpreter
joins those workers at exit, so SIGTERM and ``powercast failsafe`` would never finish.

Here each device has its own :class:`Lane`: one call at a time, on a daemon thread of
its own (never joined at exit), awaited with a bound. A call that hangs past its bound
gives up waiting; the thread stays with it, and the lane refuses new calls until it
returns, so a hung device costs at most one thread and delays only itself. The thread
is started at the lane's first call and then waits for the next one: a source read
every second does not start a thread every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class LaneBusy(Exception):
    """The lane's previous call has not returned yet (the device is hung)."""


class Lane:
    """One device's blocking calls, one at a time, on the lane's own daemon thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._busy_since: float | None = None
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def hung_for(self) -> float | None:
        """Seconds the pending call has run, or None when the lane is free."""
        since = self._busy_since
        return None if since is None else time.monotonic() - since

    async def call(self, fn: Callable[[], T], timeout_s: float) -> T:
        """``fn()`` on a thread, waited for at most ``timeout_s`` (then TimeoutError).

        Raises :class:`LaneBusy` at once while an earlier call is still running.
        """
        with self._lock:
            if self._busy_since is not None:
                raise LaneBusy(
                    f"{self.name}: the previous call has not returned for"
                    f" {time.monotonic() - self._busy_since:.0f} s (device hung)"
                )
            self._busy_since = time.monotonic()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def work() -> None:
            result: T | None = None
            error: BaseException | None = None
            try:
                result = fn()
            except BaseException as exc:  # carried to the awaiting task
                error = exc
            finally:
                with self._lock:
                    self._busy_since = None
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(settle, result, error)

        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, name=f"powercast:{self.name}", daemon=True
            )
            self._thread.start()
        self._calls.put(work)
        async with asyncio.timeout(timeout_s):
            return await future

    def _serve(self) -> None:
        """The lane's thread: each call in turn, for the life of the process."""
        while True:
            self._calls.get()()
