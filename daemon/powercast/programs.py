"""Running programs: the one place the daemon starts a process, with every bound named.

Actions, the command actuator and the command source all come here. A program is an argv
(never a shell) with stdin on /dev/null, in its own session and process group, and with a
clean environment. Its output is read while it runs, into a bounded buffer: a chatty
program costs a few KiB of memory, never blocks on a full pipe, and never makes us wait
on a pipe that nobody reads.

Theory of operation (Linux: a pidfd tells the event loop when the program exits):

1. Start it; read stdout (and stderr) as data arrives, keeping at most the limits below
   and discarding the rest while still reading.
2. Wait for it to exit, up to its timeout. At the timeout, SIGKILL the whole group.
3. Once it exits, give its pipes DRAIN_S to reach end of file (a grandchild may hold them
   open), then SIGKILL the group anyway: nothing it started outlives it.
4. Reap it within REAP_TIMEOUT_S. A process that does not die (stuck in the kernel, D state)
   is reported as not reaped and left to a callback that reaps it whenever it does exit; the
   caller is never held longer than timeout + DRAIN_S + REAP_TIMEOUT_S.

Cancelling the caller kills the group and reaps it the same way.

What is kept: separate stdout keeps its head (a JSON reading is at the start; anything past
OUTPUT_LIMIT is reported as truncated), stderr keeps its tail (the last line says why it
failed), and stdout merged with stderr keeps its tail (messages: the end matters most).

The environment is not the daemon's: only ``PATH`` (``DEFAULT_PATH`` if the daemon has
none), ``HOME``, ``LANG``, ``LC_ALL``, ``LC_CTYPE`` and ``TZ`` are passed on when set, then
the caller's own variables (actions add POWERCAST_STATE, POWERCAST_PREVIOUS_STATE,
POWERCAST_REASON and POWERCAST_FANS). Everything else stays behind: systemd's NOTIFY_SOCKET,
WATCHDOG_*, LISTEN_*, CREDENTIALS_DIRECTORY, and whatever secrets the daemon was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import structlog

log = structlog.get_logger("powercast.programs")

OUTPUT_LIMIT: Final = 64 * 1024
"""Bytes of a program's output kept (stdout's head, or the merged output's tail)."""
ERRORS_LIMIT: Final = 4 * 1024
"""Bytes of a program's stderr kept, from its end, when read apart from stdout."""
READ_CHUNK: Final = 64 * 1024
"""Bytes read from a pipe per wake-up: one read per readiness keeps the loop fair."""
DRAIN_S: Final = 0.5
"""After the program exits, how long its pipes may stay open (held by a grandchild)."""
REAP_TIMEOUT_S: Final = 2.0
"""After SIGKILL, how long we wait for the program to die before reporting it lost."""
ALLOWED_ENV: Final = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
"""The daemon's variables a program sees, when set; see the module docstring."""
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH for programs when the daemon was started without one."""

Stderr = Literal["merge", "separate"]


@dataclass(frozen=True)
class Outcome:
    """How one program went."""

    ok: bool
    result: str
    """``ok``, ``failed`` (non-zero exit), ``timeout`` (killed) or ``error`` (could not start)."""
    exit_code: int | None
    duration_s: float
    output: str
    """stdout (merged with stderr unless asked apart), or why it could not start."""
    errors: str = ""
    """The tail of stderr, when read apart from stdout."""
    truncated: bool = False
    """More output came than was kept."""
    reaped: bool = True
    """False when the program did not die within REAP_TIMEOUT_S of its SIGKILL."""


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allowed part of the daemon's environment, then the caller's variables."""
    env = {name: os.environ[name] for name in ALLOWED_ENV if name in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(extra or {})
    return env


def check_argv(argv: Sequence[str], path: str | None = None) -> str | None:
    """Why ``argv`` cannot run, or None; ``path`` is the PATH to search (the programs' own)."""
    if not argv:
        return "empty argv"
    for index, arg in enumerate(argv):
        if "\0" in arg:
            return f"argument {index} contains a NUL byte"
    program = argv[0]
    if not program:
        return "empty program name"
    if "/" not in program:
        search = environment()["PATH"] if path is None else path
        if shutil.which(program, path=search) is None:
            return f"{program}: not found on PATH ({search})"
        return None
    if not os.path.exists(program):
        return f"{program}: no such file"
    if os.path.isdir(program):
        return f"{program}: is a directory"
    if not os.access(program, os.X_OK):
        return f"{program}: not executable"
    return None


class _Capture:
    """One pipe read without blocking into a bounded buffer; the rest is read and dropped."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, limit: int, tail: bool):
        self._loop, self._fd, self._limit, self._tail = loop, fd, limit, tail
        self._data = bytearray()
        self.seen = 0
        self.closed = asyncio.Event()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close()
            return
        self.seen += len(chunk)
        if self._tail:
            self._data += chunk
            if len(self._data) > 2 * self._limit:  # trim in batches, not per read
                del self._data[: -self._limit]
        elif len(self._data) < self._limit:
            self._data += chunk[: self._limit - len(self._data)]

    def close(self) -> None:
        """Stop reading: at end of file, or when the program's bounds are spent."""
        if not self.closed.is_set():
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self.closed.set()

    @property
    def truncated(self) -> bool:
        return self.seen > self._limit

    def text(self) -> str:
        kept = self._data[-self._limit :] if self._tail else self._data
        return bytes(kept).decode(errors="replace")


class _Child:
    """A started process and its pidfd, which says when it exits.

    It stays a zombie until :meth:`reap`: while it does, its pid cannot be reused, so
    killing its process group cannot reach anyone else's.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes]):
        self._loop, self.proc = loop, proc
        self.exited = asyncio.Event()
        self._abandoned = False
        self._pidfd = os.pidfd_open(proc.pid)
        loop.add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._pidfd)
        self.exited.set()
        if self._abandoned:
            self.reap()

    def kill_group(self) -> None:
        """SIGKILL the program's process group (its pid: it leads its own session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):  # gone; setuid
            os.killpg(self.proc.pid, signal.SIGKILL)

    def reap(self) -> None:
        """Collect the exit status of a process that has exited."""
        self.proc.poll()
        os.close(self._pidfd)

    def abandon(self) -> None:
        """Stop waiting for a process that will not die; reap it whenever it does."""
        self._abandoned = True


async def _within(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` is set within ``seconds``."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(seconds, 0.0)):
            await event.wait()
    return event.is_set()


async def _all_within(events: Sequence[asyncio.Event], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    for event in events:
        if not await _within(event, deadline - time.monotonic()):
            return False
    return True


def _spawn(
    loop: asyncio.AbstractEventLoop, argv: Sequence[str], env: dict[str, str], stderr: Stderr
) -> tuple[_Child, list[int]] | str:
    """The started program and the read ends of its pipes, or why it could not start."""
    pipes = [os.pipe()] if stderr == "merge" else [os.pipe(), os.pipe()]
    reads = [r for r, _ in pipes]
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=pipes[0][1],
            stderr=pipes[-1][1],
            env=env,
            start_new_session=True,
        )
    except (OSError, ValueError) as cannot:  # not found, not executable, NUL in an argument
        for r in reads:
            os.close(r)
        return (cannot.strerror if isinstance(cannot, OSError) else None) or str(cannot)
    finally:
        for _, w in pipes:
            os.close(w)
    try:
        return _Child(loop, proc), reads
    except OSError as no_pidfd:  # out of fds: do not leave it running unwatched
        os.killpg(proc.pid, signal.SIGKILL)
        for r in reads:
            os.close(r)
        return str(no_pidfd)


async def run(
    argv: Sequence[str],
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    *,
    stderr: Stderr = "merge",
) -> Outcome:
    """Run ``argv`` to completion or its timeout; ``env`` adds to the clean environment."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    spawned = _spawn(loop, argv, environment(env), stderr)
    if isinstance(spawned, str):
        return Outcome(False, "error", None, time.monotonic() - started, spawned)
    child, reads = spawned
    out = _Capture(loop, reads[0], OUTPUT_LIMIT, tail=stderr == "merge")
    err = _Capture(loop, reads[1], ERRORS_LIMIT, tail=True) if stderr == "separate" else None
    captures = [out] if err is None else [out, err]
    timed_out = False
    try:
        timed_out = not await _within(child.exited, timeout_s)
        if not timed_out:
            await _all_within([c.closed for c in captures], DRAIN_S)
    finally:
        child.kill_group()  # it timed out, or left something behind, or we are cancelled
        try:
            await _all_within([child.exited, *(c.closed for c in captures)], REAP_TIMEOUT_S)
        finally:
            for capture in captures:
                capture.close()
            if child.exited.is_set():
                child.reap()
            else:
                child.abandon()
                log.error("program_not_reaped", argv=list(argv), pid=child.proc.pid)
    reaped = child.exited.is_set()
    duration = time.monotonic() - started
    truncated = any(c.truncated for c in captures)
    errors = err.text() if err is not None else ""
    if timed_out:
        return Outcome(False, "timeout", None, duration, out.text(), errors, truncated, reaped)
    code = child.proc.returncode
    result = "ok" if code == 0 else "failed"
    return Outcome(code == 0, result, code, duration, out.text(), errors, truncated, reaped)
