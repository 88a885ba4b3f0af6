"""Pacing: the log-line limiter (the retry schedule is tested in test_source_base)."""

from __future__ import annotations

import pytest

from powercast.pacing import Backoff, Pacer
from powercast.sources.base import Backoff as SourcesBackoff

pytestmark = pytest.mark.unit


class TestPacer:
    def test_first_line_passes_then_quiet_for_the_interval(self) -> None:
        """A key's first line passes; more within every_s are held back."""
        pacer = Pacer(10.0)
        assert pacer.admit("bad", 100.0) == 0
        assert [pacer.admit("bad", 100.0 + i) for i in range(1, 10)] == [None] * 9

    def test_next_line_after_the_interval_counts_the_held_ones(self) -> None:
        """The first line after the interval says how many were held back, then the count resets."""
        pacer = Pacer(10.0)
        pacer.admit("bad", 0.0)
        for i in range(499):
            pacer.admit("bad", i / 100)
        assert pacer.fields("bad", 10.0) == {"similar_not_logged": 499}
        assert pacer.fields("bad", 20.0) == {}

    def test_keys_are_paced_apart(self) -> None:
        """Lines of one key do not hold back another key's."""
        pacer = Pacer(10.0)
        assert pacer.admit("a", 0.0) == 0
        assert pacer.admit("b", 1.0) == 0
        assert pacer.admit("a", 2.0) is None
        assert pacer.fields("b", 2.0) is None

    def test_backoff_still_importable_from_sources(self) -> None:
        """Backoff moved to pacing; sources.base still offers the same class."""
        assert SourcesBackoff is Backoff
