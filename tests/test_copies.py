"""The failsafe's copies: written off the loop, in order, the latest of each."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest
import structlog

from powercast import config as cfg
from powercast import failsafe, logs
from powercast.runtime.copies import Copies

pytestmark = pytest.mark.unit

RUNNING, RELEASED = failsafe.RUNNING_CONFIG, failsafe.RELEASED


def named(tag: str) -> cfg.ControllerConfig:
    """A config told apart by its one actuator's program."""
    text = f'[[actuators]]\nkind = "command"\non_argv = ["/bin/true", "{tag}"]\n'
    text += 'off_argv = ["/bin/true"]\n'
    config = cfg.parse(text, "<test>", "controller")
    assert isinstance(config, cfg.ControllerConfig)
    return config


def written(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


async def settle(copies: Copies) -> None:
    await copies.flush(2.0)


class TestCopies:
    def test_the_latest_of_each_is_written(self, tmp_path: Path) -> None:
        async def main() -> None:
            copies = Copies(tmp_path)
            task = asyncio.create_task(copies.run())
            copies.keep(RUNNING, named("one"))
            copies.keep(RUNNING, named("two"))
            copies.keep(RELEASED, named("dropped"))
            await settle(copies)
            assert "two" in (written(tmp_path / RUNNING) or "")
            assert "dropped" in (written(tmp_path / RELEASED) or "")
            copies.keep(RELEASED, None)  # none left: no copy
            await settle(copies)
            assert not (tmp_path / RELEASED).exists()
            task.cancel()

        asyncio.run(main())

    def test_the_running_copy_waits_for_the_released_one(self, tmp_path: Path) -> None:
        """While the released copy cannot be written (a directory in its place), the running
        copy keeps its old content; both are written once the way is clear."""

        async def main() -> None:
            copies = Copies(tmp_path)
            copies.keep(RUNNING, named("old"))
            assert await copies._write_pending()
            (tmp_path / RELEASED).mkdir()
            copies.keep(RELEASED, named("dropped"))
            copies.keep(RUNNING, named("new"))
            assert not await copies._write_pending()
            assert "old" in (written(tmp_path / RUNNING) or "")
            (tmp_path / RELEASED).rmdir()
            assert await copies._write_pending()
            assert "dropped" in (written(tmp_path / RELEASED) or "")
            assert "new" in (written(tmp_path / RUNNING) or "")

        asyncio.run(main())

    def test_a_release_made_during_a_write_goes_before_the_running_copy(
        self, tmp_path: Path
    ) -> None:
        """A reload drops another actuator while the released copy is being written: its
        newer released copy is written before the running copy, which no longer names it.
        Here the newer released copy cannot be written (a directory in its place): the
        running copy keeps its old content. Before, the running copy was written right
        after the older released copy, and nothing named the second actuator."""

        async def main() -> None:
            copies = Copies(tmp_path)
            copies.keep(RUNNING, named("old"))
            assert await copies._write_pending()
            copies.keep(RELEASED, named("first"))
            writing = asyncio.create_task(copies._write_pending())
            await asyncio.sleep(0)  # the first released copy is on its thread now
            deadline = time.monotonic() + 5.0
            while "first" not in (written(tmp_path / RELEASED) or ""):  # the loop waits here
                assert time.monotonic() < deadline
                time.sleep(0.001)
            copies.keep(RELEASED, named("second"))  # a reload, before the write is taken
            copies.keep(RUNNING, named("new"))
            (tmp_path / RELEASED).unlink()
            (tmp_path / RELEASED).mkdir()  # the second released copy cannot be written
            assert not await writing
            assert "old" in (written(tmp_path / RUNNING) or "")

        asyncio.run(main())

    def test_a_missing_directory_says_how_to_set_one_up(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """No state directory and no runtime directory (a controller run by hand): the
        error names the file and says how to give it a directory."""
        logs.configure(level="info", fmt="json", stream=sys.stderr)

        async def main() -> None:
            copies = Copies(tmp_path / "absent")
            copies.keep(RUNNING, named("one"))
            assert not await copies._write_pending()

        try:
            asyncio.run(main())
        finally:
            structlog.reset_defaults()
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert line["event"] == "failsafe_copy_failed"
        assert line["file"] == str(tmp_path / "absent" / RUNNING)
        assert "persist.state_dir" in line["hint"]
