"""Running programs: real processes, bounded in time, memory, fds and what they inherit.

Each test runs its own event loop with asyncio.run. Times are only checked against
generous upper bounds (the timeout plus the module's own bounds plus a margin).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from powercast import programs
from powercast.actions import ActionQueue, environment, run_command
from powercast.config import Action, CommandSource
from powercast.policy import Decision, Situation
from powercast.sources import SourceError, make_reader
from powercast.wire import PowerStatus

T = TypeVar("T")
MARGIN_S = 1.5
"""Slack on top of a program's own bounds, for a busy two-core machine."""
BOUND_S = programs.DRAIN_S + programs.REAP_TIMEOUT_S + MARGIN_S
"""The longest a call may take past its timeout."""
RSS_GROWTH_KB = 8 * 1024
"""How much the test process may grow while a chatty program runs."""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is dead: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone_soon(pid: int, within_s: float = 2.0) -> bool:
    """Whether ``pid`` is dead within ``within_s`` (init reaps an orphan on its own time)."""
    deadline = time.monotonic() + within_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


async def wait_for(ready: Callable[[], bool], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not ready():
        assert time.monotonic() < deadline, "not ready in time"
        await asyncio.sleep(0.02)


def timed(coro: Coroutine[Any, Any, T]) -> tuple[T, float]:
    started = time.monotonic()
    result = run(coro)
    return result, time.monotonic() - started


@pytest.mark.system
class TestRun:
    def test_chatty_program_is_capped_and_killed(self) -> None:
        """`yes` is killed at its timeout; its output is capped and memory stays flat."""
        before = rss_kb()
        outcome, took = timed(programs.run(["yes"], 1.0))
        grown = rss_kb() - before
        assert outcome.result == "timeout"
        assert not outcome.ok
        assert outcome.exit_code is None
        assert outcome.truncated
        assert outcome.reaped
        assert 0 < len(outcome.output) <= programs.OUTPUT_LIMIT
        assert took < 1.0 + BOUND_S
        assert grown < RSS_GROWTH_KB, f"grew {grown} KiB"

    def test_exit_code_and_output(self) -> None:
        """A program's exit code and output are reported; only 0 is ok."""
        good = run(programs.run(sh("echo fine"), 5.0))
        assert (good.ok, good.result, good.exit_code, good.output) == (True, "ok", 0, "fine\n")
        bad = run(programs.run(sh("echo out; echo err >&2; exit 3"), 5.0))
        assert (bad.ok, bad.result, bad.exit_code) == (False, "failed", 3)
        assert bad.output == "out\nerr\n"
        apart = run(programs.run(sh("echo out; echo err >&2; exit 3"), 5.0, stderr="separate"))
        assert (apart.output, apart.errors) == ("out\n", "err\n")

    def test_cannot_start(self) -> None:
        """A missing program or a NUL byte in an argument is an error, not an exception."""
        missing = run(programs.run(["/nonexistent/x"], 5.0))
        assert (missing.result, missing.output) == ("error", "No such file or directory")
        nul = run(programs.run(["/bin/echo", "a\0b"], 5.0))
        assert nul.result == "error"
        assert "null byte" in nul.output

    def test_separate_stdout_keeps_its_head_and_stderr_its_tail(self) -> None:
        """Data (stdout) keeps its start; messages (stderr, merged output) keep their end."""
        script = (
            "import sys; sys.stdout.write('{' + 'x' * 200000);"
            " sys.stderr.write('e' * 200000 + 'last line\\n')"
        )
        apart = run(programs.run([sys.executable, "-c", script], 5.0, stderr="separate"))
        assert apart.truncated
        assert apart.output.startswith("{")
        assert len(apart.output) == programs.OUTPUT_LIMIT
        assert apart.errors.endswith("last line\n")
        assert len(apart.errors) == programs.ERRORS_LIMIT
        merged = run(programs.run([sys.executable, "-c", script], 5.0))
        assert merged.output.endswith("last line\n")
        assert len(merged.output) == programs.OUTPUT_LIMIT

    def test_grandchild_holding_the_pipe(self) -> None:
        """A program that exits while a grandchild holds its pipe returns; the grandchild dies."""
        outcome, took = timed(programs.run(sh("sleep 100 & echo $!"), 5.0))
        assert outcome.result == "ok"
        assert took < BOUND_S
        assert gone_soon(int(outcome.output))

    def test_grandchild_in_its_own_session_does_not_hold_us(self) -> None:
        """A grandchild out of reach (its own session) keeps the pipe; we still return."""
        outcome, took = timed(programs.run(sh("setsid sleep 100 & echo $!"), 5.0))
        pid = int(outcome.output)
        try:
            assert outcome.result == "ok"
            assert took < BOUND_S
        finally:
            os.kill(pid, signal.SIGKILL)

    def test_ignoring_sigterm_does_not_save_it(self) -> None:
        """A program that ignores SIGTERM is still killed at its timeout."""
        script = (
            "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print(os.getpid(), flush=True); time.sleep(30)"
        )
        outcome, took = timed(programs.run([sys.executable, "-c", script], 0.5))
        assert outcome.result == "timeout"
        assert took < 0.5 + BOUND_S
        assert not alive(int(outcome.output))

    def test_cancellation_kills_the_group(self, tmp_path: Path) -> None:
        """Cancelling the caller kills the program and its children, and reaps the program."""
        pids = tmp_path / "pids"

        async def go() -> None:
            script = f"sleep 30 & echo $$ $! > {pids}.tmp; mv {pids}.tmp {pids}; wait"
            task = asyncio.create_task(programs.run(sh(script), 30.0))
            await wait_for(pids.exists, 5.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        started = time.monotonic()
        run(go())
        assert time.monotonic() - started < 5.0 + BOUND_S
        shell, sleeper = (int(p) for p in pids.read_text().split())
        assert not alive(shell)
        assert gone_soon(sleeper)

    def test_leaves_no_fds(self) -> None:
        """Every path closes its pipes and pidfd: ok, failed, timeout, error."""

        async def go() -> None:
            await programs.run(sh("echo hi"), 5.0)
            await programs.run(sh("exit 2"), 5.0, stderr="separate")
            await programs.run(["sleep", "10"], 0.1)
            await programs.run(["/nonexistent/x"], 5.0)

        run(go())  # the loop's own fds, once
        before = fds()
        for _ in range(3):
            run(go())
        assert fds() == before


@pytest.mark.system
class TestEnvironment:
    def test_only_allowed_variables_and_the_callers(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """NOTIFY_SOCKET and secrets stay behind; PATH and the caller's POWERCAST_* pass."""
        monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/powercast")
        monkeypatch.setenv("POWERCAST_TEST_SECRET", "hunter2")
        monkeypatch.setenv("TZ", "UTC")
        situation = Situation(PowerStatus.ON_BATTERY, 25.0)
        decision = Decision(0.0, "on_battery", "shedding", "battery for 60 s", situation)
        action = Action(on="shedding", argv=["/usr/bin/env"], timeout_s=5.0)
        outcome = run(run_command(action, environment(decision)))
        seen = dict(line.split("=", 1) for line in outcome.output.splitlines())
        assert seen["POWERCAST_STATE"] == "shedding"
        assert seen["POWERCAST_PREVIOUS_STATE"] == "on_battery"
        assert seen["POWERCAST_REASON"] == "battery for 60 s"
        assert seen["POWERCAST_FANS"] == "off"
        assert seen["PATH"] == os.environ["PATH"]
        assert seen["TZ"] == "UTC"
        for private in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "CREDENTIALS_DIRECTORY"):
            assert private not in seen
        assert "hunter2" not in outcome.output

    def test_default_path(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A daemon started without PATH still finds programs in the usual places."""
        monkeypatch.delenv("PATH")
        assert programs.environment()["PATH"] == programs.DEFAULT_PATH
        assert run(programs.run(["true"], 5.0)).ok


@pytest.mark.system
class TestActionQueue:
    def test_moves_on_after_a_chatty_action_is_killed(self, tmp_path: Path) -> None:
        """A `yes` action is killed at its timeout and the next decision's action still runs."""
        marker = tmp_path / "fans-on"
        situation = Situation(PowerStatus.ONLINE, 25.0)
        shedding = Decision(0.0, "on_battery", "shedding", "battery", situation)
        normal = Decision(1.0, "shedding", "normal", "power back", situation)
        actions = [
            Action(on="shedding", argv=["yes"], timeout_s=1.0),
            Action(on="normal", argv=["/usr/bin/touch", str(marker)], timeout_s=5.0),
        ]

        async def go() -> ActionQueue:
            queue = ActionQueue()
            task = asyncio.create_task(queue.run())
            try:
                queue.submit(shedding, actions)
                await wait_for(lambda: queue.running is not None, 5.0)
                queue.submit(normal, actions)
                await wait_for(marker.exists, 1.0 + BOUND_S)
            finally:
                task.cancel()
            return queue

        before = rss_kb()
        queue = run(go())
        assert rss_kb() - before < RSS_GROWTH_KB
        assert queue.last["shedding"].result == "timeout"
        assert queue.last["shedding"].truncated
        assert len(queue.last["shedding"].output) <= 400
        assert queue.last["normal"].result == "ok"


@pytest.mark.system
class TestCommandSource:
    def test_chatty_source_fails_clearly_and_leaks_nothing(self) -> None:
        """A source running `yes` is a SourceError at its timeout; no fds or memory stay."""
        source = CommandSource(argv=["yes"], timeout_s=0.3)

        async def reads(n: int) -> list[str]:
            reader = make_reader(source, 0, time.monotonic())
            errors = []
            for _ in range(n):
                with pytest.raises(SourceError) as info:
                    await reader.read()
                errors.append(str(info.value))
            return errors

        run(reads(1))  # the loop's own fds, once
        fd_before, rss_before = fds(), rss_kb()
        errors = run(reads(3))
        assert errors == ["yes: no answer within 0.3 s (killed)"] * 3
        assert fds() == fd_before
        assert rss_kb() - rss_before < RSS_GROWTH_KB

    def test_too_much_output_is_named(self) -> None:
        """Output past the limit is reported as such, not as broken JSON."""
        script = "print('{\"temperatures\": {}, \"pad\": \"' + 'x' * 100000 + '\"}')"
        source = CommandSource(argv=[sys.executable, "-c", script])
        with pytest.raises(SourceError, match=f"output longer than {programs.OUTPUT_LIMIT} bytes"):
            run(make_reader(source, 0, time.monotonic()).read())


@pytest.mark.unit
class TestCheckArgv:
    def test_runnable(self) -> None:
        """A program on PATH or by absolute path is fine."""
        assert programs.check_argv(["sh", "-c", "true"]) is None
        assert programs.check_argv([sys.executable, "-V"]) is None

    def test_reasons(self, tmp_path: Path) -> None:
        """Each reason an argv cannot run is named."""
        plain = tmp_path / "plain"
        plain.write_text("#!/bin/sh\n")
        plain.chmod(0o644)
        assert programs.check_argv([]) == "empty argv"
        assert programs.check_argv(["echo", "a\0b"]) == "argument 1 contains a NUL byte"
        assert programs.check_argv(["no-such-program-xyz"], path="/bin") == (
            "no-such-program-xyz: not found on PATH (/bin)"
        )
        assert programs.check_argv([str(tmp_path / "none")]) == f"{tmp_path}/none: no such file"
        assert programs.check_argv([str(tmp_path)]) == f"{tmp_path}: is a directory"
        assert programs.check_argv([str(plain)]) == f"{plain}: not executable"
