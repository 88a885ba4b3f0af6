"""Sources: file, command and simulated readings, and their errors."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from powercast.config import (
    CommandSource,
    FileSource,
    PowerReading,
    Reading,
    SimulatedSource,
    Step,
)
from powercast.sources import SourceError, make_reader
from powercast.sources.simulated import SimulatedReader


def read(source: FileSource | CommandSource | SimulatedSource) -> Reading:
    return asyncio.run(make_reader(source, 0, time.monotonic()).read())


@pytest.mark.unit
class TestFile:
    def test_json_and_toml(self, tmp_path: Path) -> None:
        """A JSON or TOML file (by suffix) gives its reading."""
        j = tmp_path / "r.json"
        j.write_text(
            '{"power": {"status": "on_battery", "charge_pct": 80}, "temperatures": {"a": 1}}'
        )
        t = tmp_path / "r.toml"
        t.write_text('power = { status = "online" }\n[temperatures]\nb = 2.5\n')
        got = read(FileSource(path=str(j)))
        assert got.power is not None
        assert got.power.status == "on_battery"
        assert got.power.charge_pct == 80
        assert read(FileSource(path=str(t))).temperatures == {"b": 2.5}

    def test_schema_error_names_file_and_key(self, tmp_path: Path) -> None:
        """A bad value names the file, the key and the value."""
        j = tmp_path / "r.json"
        j.write_text('{"power": {"status": "offline"}}')
        with pytest.raises(SourceError) as info:
            read(FileSource(path=str(j)))
        assert str(info.value) == (
            f"{j}: power.status: expected one of 'online', 'on_battery', 'low_battery',"
            " 'unknown', got \"offline\""
        )

    def test_missing_and_garbage(self, tmp_path: Path) -> None:
        """A missing file or one that is not JSON is a SourceError naming it."""
        with pytest.raises(SourceError, match="cannot read: No such file"):
            read(FileSource(path=str(tmp_path / "none.json")))
        j = tmp_path / "g.json"
        j.write_bytes(b"\xff{")
        with pytest.raises(SourceError, match=f"{j}: not valid JSON"):
            read(FileSource(path=str(j)))


@pytest.mark.system
class TestCommand:
    def test_prints_json(self) -> None:
        """A program's JSON output is the reading."""
        argv = [sys.executable, "-c", 'print(\'{"temperatures": {"cpu": 51.5}}\')']
        assert read(CommandSource(argv=argv)).temperatures == {"cpu": 51.5}

    def test_timeout_kills(self) -> None:
        """A hung program is killed at its timeout and reported."""
        argv = [sys.executable, "-c", "import time; time.sleep(30)"]
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"no answer within 0.3 s \(killed\)"):
            read(CommandSource(argv=argv, timeout_s=0.3))
        assert time.monotonic() - started < 3

    def test_failure_and_missing_program(self) -> None:
        """A non-zero exit and a program that does not exist are SourceErrors."""
        argv = [sys.executable, "-c", "import sys; sys.exit('sensor bus error')"]
        with pytest.raises(SourceError, match="exited with status 1 sensor bus error"):
            read(CommandSource(argv=argv))
        with pytest.raises(SourceError, match="/nonexistent/x: cannot run"):
            read(CommandSource(argv=["/nonexistent/x"]))

    def test_wrong_shape_output(self) -> None:
        """Output that is JSON but not a reading names the key."""
        argv = [sys.executable, "-c", 'print(\'{"temperatures": {"cpu": "hot"}}\')']
        with pytest.raises(SourceError, match=r"output: temperatures.\*: expected a number$"):
            read(CommandSource(argv=argv))


@pytest.mark.unit
class TestSimulated:
    def test_timeline(self) -> None:
        """The reading at a time is the last step already reached; repeat wraps around."""
        steps = [
            Step(at_s=0, power=PowerReading(status="online")),
            Step(at_s=2, power=PowerReading(status="on_battery")),
            Step(at_s=4, power=PowerReading(status="online")),
        ]
        reader = make_reader(SimulatedSource(timeline=steps), 0, 0.0)
        assert isinstance(reader, SimulatedReader)
        statuses = [reader.at(t).power for t in (0, 1.9, 2, 5)]
        assert statuses == [
            PowerReading(status=s) for s in ("online", "online", "on_battery", "online")
        ]
        looping = make_reader(SimulatedSource(timeline=steps, repeat=True), 0, 0.0)
        assert isinstance(looping, SimulatedReader)
        assert looping.at(6.5).power == PowerReading(status="on_battery")
