"""The state file: what a restart restores, and what it refuses to believe."""

from __future__ import annotations

from pathlib import Path

import pytest

from powercast import persist
from powercast.config import PolicySettings
from powercast.policy import MAX_OVERRIDE_S, Override, Policy

pytestmark = pytest.mark.unit

WALL = 1_800_000_000.0


def restored(record: persist.StateRecord, now: float = 100.0) -> Policy:
    policy = Policy(PolicySettings(), zone="z")
    assert persist.restore(record, {"z": policy}, now, WALL) == ["z"]
    return policy


class TestRestore:
    def test_round_trip_through_the_file(self, tmp_path: Path) -> None:
        """A snapshot saved and loaded restores the state, timers and override."""
        policy = Policy(PolicySettings(), zone="z")
        policy.chart.send("to_on_battery")
        policy.since, policy.battery_since = 40.0, 40.0
        policy.override = Override(True, 70.0, "ops", "drill")
        persist.save(tmp_path, persist.snapshot({"z": policy}, {"z/0": False}, 50.0, WALL - 50.0))
        record = persist.load(tmp_path)
        assert record is not None
        back = restored(record)
        assert back.state == "on_battery"
        assert back.battery_since == 40.0  # 10 s before a save made 50 s before the restore
        assert back.override == Override(True, 70.0, "ops", "drill")
        assert record.actuators == {"z/0": False}

    def test_times_from_the_future_are_not_believed(self) -> None:
        """A file that says the outage or the state began later than now is clamped to now,
        and an override cannot outlast the longest an operator can set."""
        future = WALL + 3600.0
        record = persist.StateRecord(
            version=1,
            saved_at=WALL - 1.0,
            zones={
                "z": persist.ZoneRecord(
                    state="shedding",
                    entered_at=future,
                    online_since=future,
                    battery_since=future,
                    sheds=[future, WALL - 5.0],
                    override=persist.OverrideRecord(False, WALL + 10 * MAX_OVERRIDE_S, "x", "y"),
                )
            },
        )
        policy = restored(record, now=100.0)
        assert policy.since == 100.0
        assert policy.online_since == 100.0
        assert policy.battery_since == 100.0
        assert list(policy.sheds) == [95.0, 100.0]
        assert policy.override is not None
        assert policy.override.until == 100.0 + MAX_OVERRIDE_S

    def test_old_or_unreadable_files_are_ignored(self, tmp_path: Path) -> None:
        """A file older than MAX_AGE_S restores nothing; a garbled one reads as none."""
        old = persist.StateRecord(version=1, saved_at=WALL - persist.MAX_AGE_S - 1.0)
        assert persist.restore(old, {"z": Policy(PolicySettings())}, 100.0, WALL) == []
        (tmp_path / persist.FILE_NAME).write_text("{not json")
        assert persist.load(tmp_path) is None

    def test_deeply_nested_file_is_ignored(self, tmp_path: Path) -> None:
        """A state file nested 100,000 deep (in a key a newer version might add) reads as
        none, like any other unusable file: the controller still starts."""
        deep = "[" * 100_000 + "]" * 100_000
        zone = f'{{"state": "normal", "entered_at": 1.0, "extra": {deep}}}'
        for text in (
            f'{{"version": 1, "saved_at": 1.0, "extra": {deep}}}',
            f'{{"version": 1, "saved_at": 1.0, "zones": {{"z": {zone}}}}}',
        ):
            (tmp_path / persist.FILE_NAME).write_text(text)
            assert persist.load(tmp_path) is None
