"""What all sources share: the retry schedule, secret files, and validated readings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from powercast.config import PublisherConfig, parse
from powercast.sources import Backoff, SourceError
from powercast.sources.base import make_reading, read_secret

pytestmark = pytest.mark.unit


class TestExampleSources:
    def test_commented_examples_in_the_shipped_config_are_valid(self) -> None:
        """The commented-out nut, snmp and hwmon examples in config/publisher.toml validate."""
        text = (Path(__file__).parent.parent / "config" / "publisher.toml").read_text()
        blocks = re.findall(r"^# \[\[sources\]\]\n((?:# \w+ = .*\n)+)", text, re.MULTILINE)
        kinds = []
        for block in blocks:
            if not re.match(r'# kind = "(nut|snmp|hwmon)"', block):
                continue  # others span lines this simple match does not follow
            body = "".join(line[2:] + "\n" for line in block.splitlines())
            config = parse(f'role = "publisher"\n[[sources]]\n{body}', "publisher.toml")
            assert isinstance(config, PublisherConfig)
            kinds.append(config.sources[0].__struct_config__.tag)
        assert {"nut", "snmp", "hwmon"} <= set(kinds)


class TestBackoff:
    def test_doubles_from_interval_to_the_cap(self) -> None:
        """Failures wait interval_s, then twice as long each time, never more than the cap."""
        b = Backoff(1.0, max_s=30.0)
        assert [b.delay(ok=False) for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]

    def test_success_resets(self) -> None:
        """A read that works goes back to interval_s, and the next failure starts over."""
        b = Backoff(0.5, max_s=30.0)
        for _ in range(5):
            b.delay(ok=False)
        assert b.delay(ok=True) == 0.5
        assert b.delay(ok=False) == 0.5
        assert b.delay(ok=False) == 1.0

    def test_working_source_keeps_its_interval(self) -> None:
        """Without failures the delay is always interval_s."""
        b = Backoff(2.0)
        assert {b.delay(ok=True) for _ in range(10)} == {2.0}

    def test_slow_source_is_never_polled_faster(self) -> None:
        """An interval longer than the cap stays the interval, failing or not."""
        b = Backoff(60.0, max_s=30.0)
        assert [b.delay(ok=False) for _ in range(3)] == [60.0, 60.0, 60.0]

    def test_no_overflow_after_many_failures(self) -> None:
        """A source down for days still waits the cap, without overflowing."""
        b = Backoff(0.1, max_s=30.0)
        for _ in range(10_000):
            delay = b.delay(ok=False)
        assert delay == 30.0


class TestReadSecret:
    def test_first_line_of_a_private_file(self, tmp_path: Path) -> None:
        """The secret is the first line, stripped; group-readable is fine."""
        path = tmp_path / "pw"
        path.write_text("s3cret  \nignored\n")
        path.chmod(0o640)
        assert read_secret(str(path), "nut a@h:1: password_file") == "s3cret"

    def test_readable_by_others_is_refused(self, tmp_path: Path) -> None:
        """A file others can read or write is refused, naming its mode."""
        path = tmp_path / "pw"
        path.write_text("s3cret\n")
        path.chmod(0o644)
        with pytest.raises(SourceError) as info:
            read_secret(str(path), "x")
        assert (
            str(info.value)
            == f"x: {path}: readable or writable by others (mode 0644); chmod o-rw it"
        )

    def test_missing_or_empty(self, tmp_path: Path) -> None:
        """A missing or empty file is an error naming it."""
        with pytest.raises(SourceError, match="cannot read: No such file"):
            read_secret(str(tmp_path / "none"), "x")
        empty = tmp_path / "empty"
        empty.write_text("\n")
        empty.chmod(0o600)
        with pytest.raises(SourceError, match="empty"):
            read_secret(str(empty), "x")

    def test_symlink_is_refused(self, tmp_path: Path) -> None:
        """A symbolic link is not followed (it could point anywhere)."""
        target = tmp_path / "pw"
        target.write_text("s3cret\n")
        target.chmod(0o600)
        link = tmp_path / "link"
        link.symlink_to(target)
        with pytest.raises(SourceError, match="cannot read"):
            read_secret(str(link), "x")


class TestMakeReading:
    def test_bounds_are_checked(self) -> None:
        """Values out of the schema's bounds are an error naming the key, not a bad datagram."""
        with pytest.raises(SourceError, match=r"^src: temperatures\.\*: expected a number <= 1000"):
            make_reading({"temperatures": {"cpu": 5000.0}}, "src")
        with pytest.raises(SourceError, match=r"^src: power.runtime_s: expected a number >= 0"):
            make_reading({"power": {"status": "online", "runtime_s": -60}}, "src")

    def test_valid(self) -> None:
        """A valid dict becomes the Reading."""
        got = make_reading({"power": {"status": "online"}, "temperatures": {"a": 1}}, "src")
        assert got.power is not None
        assert (got.power.status, got.temperatures) == ("online", {"a": 1.0})
