"""Per-publisher session: verdicts on each announcement, and freshness by the receiver's clock."""

from __future__ import annotations

import pytest

from powercast.session import Session, Verdict
from powercast.wire import Announcement, Power, PowerStatus

pytestmark = pytest.mark.unit

WALL = 1_700_000_000.0


def ann(
    seq: int,
    change: int = 1,
    *,
    epoch: int = 7,
    tal: float = 3.0,
    sent: float = WALL,
    temperatures: dict[str, float | None] | None = None,
) -> Announcement:
    """An announcement from publisher 'ups' with the given counters, sent at wall time ``sent``."""
    return Announcement(
        publisher="ups",
        epoch=epoch,
        seq=seq,
        change=change,
        sent=sent,
        tal=tal,
        power=Power(PowerStatus.ONLINE),
        temperatures={"cpu": 30.0} if temperatures is None else temperatures,
    )


def session(first: Announcement | None = None, now: float = 100.0) -> Session:
    """A session opened by ``first`` (seq 10 of epoch 7 by default) at ``now``."""
    first = first or ann(10)
    return Session(first, now, now + first.tal)


class TestSession:
    def test_publisher_is_the_message_publisher(self) -> None:
        """The session is named after the publisher of its message."""
        assert session().publisher == "ups"

    def test_new_epoch_is_new(self) -> None:
        """A later datagram from another epoch (a restart) is NEW and taken, whatever its seq."""
        s = session()
        restarted = ann(1, change=1, epoch=8, sent=WALL + 1)
        assert s.offer(restarted, 101.0) is Verdict.NEW
        assert s.message is restarted
        assert (s.received_at, s.expires_at) == (101.0, 104.0)

    def test_changed_state_is_news(self) -> None:
        """A newer datagram with another change number is NEWS and taken."""
        s = session()
        news = ann(11, change=2)
        assert s.offer(news, 101.0) is Verdict.NEWS
        assert s.message is news

    def test_same_state_is_repeat_and_extends_freshness(self) -> None:
        """A newer datagram with the same change number is a REPEAT that moves the expiry."""
        s = session()
        heartbeat = ann(11)
        assert s.offer(heartbeat, 101.5) is Verdict.REPEAT
        assert s.message is heartbeat
        assert (s.received_at, s.expires_at) == (101.5, 104.5)

    def test_same_seq_is_duplicate_and_ignored(self) -> None:
        """The same epoch and seq again is a DUPLICATE and changes nothing."""
        s = session()
        first = s.message
        assert s.offer(ann(10, change=5), 102.0) is Verdict.DUPLICATE
        assert s.message is first
        assert (s.received_at, s.expires_at) == (100.0, 103.0)

    def test_lower_seq_is_old_and_ignored(self) -> None:
        """A reordered older datagram is OLD and does not extend freshness."""
        s = session()
        first = s.message
        assert s.offer(ann(9, change=2), 102.0) is Verdict.OLD
        assert s.message is first
        assert s.expires_at == 103.0

    def test_ended_epoch_is_old(self) -> None:
        """A datagram from an epoch that has ended (a late one from before a restart) is OLD."""
        s = session()
        assert s.offer(ann(1, epoch=8, sent=WALL + 1), 101.0) is Verdict.NEW
        assert s.offer(ann(11, epoch=7, sent=WALL + 2), 101.1) is Verdict.OLD
        assert s.message.epoch == 8

    def test_unseen_epoch_sent_earlier_is_old(self) -> None:
        """Another epoch sent no later than the current message is a replay, not a restart."""
        s = session()
        assert s.offer(ann(1, epoch=8, sent=WALL), 101.0) is Verdict.OLD
        assert s.offer(ann(1, epoch=9, sent=WALL - 5), 101.0) is Verdict.OLD
        assert s.message.epoch == 7
        assert list(s.ended_epochs) == []

    def test_ended_epochs_are_remembered_across_restarts(self) -> None:
        """Every ended epoch (up to sixteen) stays rejected after several restarts."""
        s = session(ann(1, epoch=0))
        for epoch in range(1, 10):
            assert s.offer(ann(1, epoch=epoch, sent=WALL + epoch), 100.0 + epoch) is Verdict.NEW
        for epoch in range(9):
            assert s.offer(ann(99, epoch=epoch, sent=WALL + 60), 200.0) is Verdict.OLD
        assert s.message.epoch == 9

    def test_freshness_ends_exactly_at_received_at_plus_tal(self) -> None:
        """Data is fresh before received_at + tal and stale from that instant on."""
        s = session(ann(10, tal=2.5), now=100.0)
        assert s.fresh(100.0)
        assert s.fresh(102.49)
        assert not s.fresh(102.5)
        assert not s.fresh(1000.0)

    def test_freshness_uses_latest_tal(self) -> None:
        """Each accepted datagram's own tal sets the new expiry."""
        s = session()
        s.offer(ann(11, tal=10.0), 101.0)
        assert s.expires_at == 111.0
        assert s.fresh(110.9)
        assert not s.fresh(111.0)


class TestSensorsOfTheEpoch:
    """Session.temperatures: a sensor seen in this epoch is unknown, not gone, when missing."""

    def test_temperatures_are_the_message_s(self) -> None:
        """With every sensor seen present, the temperatures are the message's own."""
        s = session(ann(10, temperatures={"cpu": 30.0, "inlet": 22.0}))
        assert s.temperatures == {"cpu": 30.0, "inlet": 22.0}

    def test_failed_sensor_is_none(self) -> None:
        """A sensor announced as failed (None) is None."""
        s = session(ann(10, temperatures={"cpu": 30.0, "inlet": 22.0}))
        s.offer(ann(11, change=2, temperatures={"cpu": 30.0, "inlet": None}), 101.0)
        assert s.temperatures == {"cpu": 30.0, "inlet": None}

    def test_sensor_gone_from_the_datagram_is_none(self) -> None:
        """A sensor seen in this epoch and left out of the latest datagram is None."""
        s = session(ann(10, temperatures={"cpu": 30.0, "inlet": 22.0}))
        s.offer(ann(11, change=2, temperatures={"cpu": 30.0}), 101.0)
        assert s.temperatures == {"cpu": 30.0, "inlet": None}
        s.offer(ann(12, change=2, temperatures={"cpu": 30.0}), 102.0)  # a heartbeat
        assert s.temperatures == {"cpu": 30.0, "inlet": None}
        s.offer(ann(13, change=3, temperatures={"cpu": 30.0, "inlet": 23.0}), 103.0)
        assert s.temperatures == {"cpu": 30.0, "inlet": 23.0}

    def test_old_or_duplicate_datagram_changes_nothing(self) -> None:
        """A datagram not taken does not move the temperatures."""
        s = session(ann(10, temperatures={"cpu": 30.0, "inlet": 22.0}))
        s.offer(ann(9, change=0, temperatures={}), 101.0)
        s.offer(ann(10, temperatures={}), 101.0)
        assert s.temperatures == {"cpu": 30.0, "inlet": 22.0}

    def test_new_epoch_starts_a_fresh_set(self) -> None:
        """After a restart (new epoch) only the new epoch's sensors count."""
        s = session(ann(10, temperatures={"cpu": 30.0, "inlet": 22.0}))
        s.offer(ann(1, epoch=8, sent=WALL + 1, temperatures={"cpu": 31.0}), 101.0)
        assert s.temperatures == {"cpu": 31.0}
        assert s.seen == {"cpu"}
