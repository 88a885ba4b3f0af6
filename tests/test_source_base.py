"""What all sources share: the retry schedule and validated readings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from powercast.config import PublisherConfig, parse
from powercast.sources import Backoff, SourceError
from powercast.sources.base import make_reading

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
