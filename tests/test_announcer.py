"""The publisher's core: which readings are news, the announcement schedule, and merge()."""

from __future__ import annotations

import pytest

from powercast import wire
from powercast.announcer import EARLY, Announcer, merge
from powercast.config import FileSource, PowerReading, PublisherConfig, Reading
from powercast.wire import Power, PowerStatus

pytestmark = pytest.mark.unit

ONLINE = Power(PowerStatus.ONLINE)
ON_BATTERY = Power(PowerStatus.ON_BATTERY)


def announcer(**overrides: float) -> Announcer:
    """An announcer for 'ups-a' with a 1 s heartbeat, tal factor 3 and a 0.5 °C deadband."""
    fields = {"heartbeat_s": 1.0, "tal_factor": 3.0, "temp_deadband_c": 0.5, **overrides}
    return Announcer(PublisherConfig(id="ups-a", **fields), epoch=42)


def two_sources() -> Announcer:
    """An announcer for 'ups-a' reading two sources: 0, the UPS, and 1, the hall inlet."""
    sources = [FileSource(path="/run/ups.json"), FileSource(path="/run/hall.json")]
    return Announcer(PublisherConfig(id="ups-a", sources=sources), epoch=42)


def reading(status: str | None = None, **temperatures: float) -> Reading:
    """A source's reading: a power status (or none) and some sensors."""
    power = None if status is None else PowerReading(status=status)  # type: ignore[arg-type]
    return Reading(power=power, temperatures=temperatures)


class TestAnnouncer:
    def test_first_known_reading_is_news(self) -> None:
        """The first reading with a known status bumps the change number and is due now."""
        a = announcer()
        a.next_at = 50.0
        assert a.update(ONLINE, {"cpu": 30.0}, 10.0) is True
        assert (a.change, a.next_at) == (1, 10.0)

    def test_same_reading_is_not_news(self) -> None:
        """The same reading again leaves the change number and the schedule alone."""
        a = announcer()
        a.update(ONLINE, {"cpu": 30.0}, 10.0)
        a.announce(10.0, 1e9)
        due = a.next_at
        assert a.update(ONLINE, {"cpu": 30.0}, 10.001) is False
        assert (a.change, a.next_at) == (1, due)

    def test_status_change_is_news(self) -> None:
        """A change of power status is news."""
        a = announcer()
        a.update(ONLINE, {"cpu": 30.0}, 10.0)
        assert a.update(ON_BATTERY, {"cpu": 30.0}, 11.0) is True
        assert a.change == 2

    def test_analogue_power_values_alone_are_not_news(self) -> None:
        """A new charge or load with the same status rides on the next heartbeat."""
        a = announcer()
        a.update(ON_BATTERY, {}, 10.0)
        drained = Power(PowerStatus.ON_BATTERY, charge_pct=40.0, load_pct=12.0)
        assert a.update(drained, {}, 11.0) is False
        assert a.change == 1
        assert a.announce(11.0, 1e9).power == drained

    def test_analogue_power_move_beyond_deadband_is_news(self) -> None:
        """Charge or load moving 5 points, runtime 60 s or input 10 V since the last news: news."""
        start = Power(PowerStatus.ON_BATTERY, 90.0, 1200.0, 40.0, 0.0)
        for moved in (
            Power(PowerStatus.ON_BATTERY, 85.0, 1200.0, 40.0, 0.0),
            Power(PowerStatus.ON_BATTERY, 90.0, 1140.0, 40.0, 0.0),
            Power(PowerStatus.ON_BATTERY, 90.0, 1200.0, 45.0, 0.0),
            Power(PowerStatus.ON_BATTERY, 90.0, 1200.0, 40.0, 10.0),
        ):
            a = announcer()
            a.update(start, {}, 10.0)
            assert a.update(moved, {}, 11.0) is True, moved
            assert a.change == 2

    def test_analogue_power_jitter_is_not_news(self) -> None:
        """Moves below the deadbands ride on the heartbeat; drift that adds up is news."""
        a = announcer()
        a.update(Power(PowerStatus.ON_BATTERY, 90.0, 1200.0), {}, 10.0)
        assert a.update(Power(PowerStatus.ON_BATTERY, 87.0, 1150.0), {}, 11.0) is False
        assert a.update(Power(PowerStatus.ON_BATTERY, 91.0, 1250.0), {}, 12.0) is False
        assert a.update(Power(PowerStatus.ON_BATTERY, 85.0, 1200.0), {}, 13.0) is True
        # Measured from 85 now, the value of the last news.
        assert a.update(Power(PowerStatus.ON_BATTERY, 81.0, 1200.0), {}, 14.0) is False
        assert a.change == 2

    def test_value_that_appears_is_measured_from_there(self) -> None:
        """A value first seen after the news is the base of later comparisons."""
        a = announcer()
        a.update(ON_BATTERY, {}, 10.0)
        assert a.update(Power(PowerStatus.ON_BATTERY, charge_pct=60.0), {}, 11.0) is False
        assert a.update(Power(PowerStatus.ON_BATTERY, charge_pct=57.0), {}, 12.0) is False
        assert a.update(Power(PowerStatus.ON_BATTERY, charge_pct=55.0), {}, 13.0) is True

    def test_sensor_appearing_or_going_is_news(self) -> None:
        """A sensor that appears or disappears is news, even at the same values."""
        a = announcer()
        a.update(ONLINE, {"cpu": 30.0}, 10.0)
        assert a.update(ONLINE, {"cpu": 30.0, "disk": 25.0}, 11.0) is True
        assert a.update(ONLINE, {"disk": 25.0}, 12.0) is True
        assert a.change == 3

    def test_temperature_within_deadband_is_not_news(self) -> None:
        """A move of at most temp_deadband_c is not news; beyond it, it is."""
        a = announcer()
        a.update(ONLINE, {"cpu": 30.0}, 10.0)
        assert a.update(ONLINE, {"cpu": 30.5}, 11.0) is False
        assert a.update(ONLINE, {"cpu": 29.5}, 12.0) is False
        assert a.update(ONLINE, {"cpu": 30.51}, 13.0) is True
        assert a.change == 2

    def test_drift_beyond_deadband_is_news(self) -> None:
        """Small steps that add up beyond the deadband since the last news are news."""
        a = announcer()
        a.update(ONLINE, {"cpu": 30.0}, 10.0)
        assert a.update(ONLINE, {"cpu": 30.3}, 11.0) is False
        assert a.update(ONLINE, {"cpu": 30.6}, 12.0) is True
        # The next comparison is against 30.6, the value announced as news.
        assert a.update(ONLINE, {"cpu": 30.9}, 13.0) is False
        assert a.update(ONLINE, {"cpu": 31.2}, 14.0) is True
        assert a.change == 3

    def test_zero_deadband_any_move_is_news(self) -> None:
        """With temp_deadband_c = 0 any temperature change is news."""
        a = announcer(temp_deadband_c=0.0)
        a.update(ONLINE, {"cpu": 30.0}, 10.0)
        assert a.update(ONLINE, {"cpu": 30.01}, 11.0) is True

    def test_latest_values_ride_on_the_heartbeat(self) -> None:
        """A reading that is not news is still what the next announcement carries."""
        a = announcer()
        a.update(ONLINE, {"cpu": 30.0}, 10.0)
        a.update(ONLINE, {"cpu": 30.2}, 10.5)
        assert a.announce(11.0, 1e9).temperatures == {"cpu": 30.2}

    def test_announce_increments_seq_and_schedules_heartbeat(self) -> None:
        """Without news each announcement takes the next seq and puts the next heartbeat_s later."""
        a = announcer(heartbeat_s=2.0)
        assert a.update(Power(PowerStatus.UNKNOWN), {}, 10.0) is False  # nothing new yet
        first = a.announce(10.0, 1_700_000_000.0)
        assert (first.seq, first.change, a.next_at) == (1, 0, 12.0)
        second = a.announce(12.0, 1_700_000_002.0)
        assert (second.seq, second.change, a.next_at) == (2, 0, 14.0)

    def test_news_is_repeated_at_doubling_gaps_then_heartbeat(self) -> None:
        """After news, repeats follow at retransmit_first_gap_s, doubling until the heartbeat."""
        a = announcer(heartbeat_s=1.0, retransmit_first_gap_s=0.1)
        a.update(ONLINE, {"cpu": 30.0}, 10.0)
        now, gaps, seqs = 10.0, [], []
        for _ in range(6):
            seqs.append(a.announce(now, 1e9).seq)
            gaps.append(round(a.next_at - now, 9))
            now = a.next_at
        assert gaps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
        assert seqs == [1, 2, 3, 4, 5, 6]

    def test_a_heartbeat_may_go_a_little_early_a_retransmission_may_not(self) -> None:
        """A plain heartbeat may ride on a wake-up up to EARLY of its period before it is
        due; the repeats of news keep their times, and nothing goes before every source
        was tried."""
        a = announcer(heartbeat_s=2.0, retransmit_first_gap_s=0.1)
        for source in range(len(a.latest)):
            a.read(source, reading("online"), 10.0)
        now = 10.0
        while a.gap is not None or now == 10.0:  # the first announcement's repeats first
            a.announce(now, 1e9)
            now = a.next_at
        due, early = a.next_at, 2.0 * EARLY
        assert a.may_send(due - early - 0.01) is False
        assert a.may_send(due - early) is True
        a.update(ON_BATTERY, {"cpu": 30.0}, due)
        a.announce(due, 1e9)  # news: its first repeat is due 0.1 s later, not before
        assert a.may_send(due + 0.09) is False
        assert a.may_send(due + 0.1) is True
        waiting = two_sources()
        assert waiting.due is None
        assert waiting.may_send(1e9) is False

    def test_news_during_a_burst_starts_a_new_one(self) -> None:
        """News in the middle of a burst is due at once and its repeats start from the first gap."""
        a = announcer(heartbeat_s=1.0, retransmit_first_gap_s=0.1)
        a.update(ONLINE, {"cpu": 30.0}, 10.0)
        a.announce(10.0, 1e9)
        a.announce(10.1, 1e9)  # next gap would be 0.4
        assert a.update(ON_BATTERY, {"cpu": 30.0}, 10.2) is True
        assert a.next_at == 10.2
        msg = a.announce(10.2, 1e9)
        assert (msg.change, round(a.next_at - 10.2, 9)) == (2, 0.1)

    def test_tal_covers_the_longest_gap(self) -> None:
        """No gap between announcements, burst or heartbeat, is longer than tal / tal_factor."""
        a = announcer(heartbeat_s=0.5, tal_factor=3.0, retransmit_first_gap_s=0.004)
        a.update(ONLINE, {}, 0.0)
        now = 0.0
        for _ in range(20):
            tal = a.announce(now, 1e9).tal
            assert a.next_at - now <= tal / 3.0
            now = a.next_at

    def test_announcement_fields(self) -> None:
        """It carries id, epoch, change, wall time and tal = heartbeat_s * tal_factor."""
        a = announcer(heartbeat_s=2.0, tal_factor=4.0)
        a.update(ON_BATTERY, {"cpu": 30.0}, 10.0)
        msg = a.announce(10.0, 1_700_000_000.5)
        assert (msg.publisher, msg.epoch, msg.change) == ("ups-a", 42, 1)
        assert (msg.sent, msg.tal) == (1_700_000_000.5, 8.0)
        assert (msg.power, msg.temperatures) == (ON_BATTERY, {"cpu": 30.0})

    def test_announcement_owns_its_temperatures(self) -> None:
        """Changing the reading's dict afterwards does not change a sent announcement."""
        a = announcer()
        temps = {"cpu": 30.0}
        a.update(ONLINE, temps, 10.0)
        msg = a.announce(10.0, 1e9)
        temps["cpu"] = 99.0
        assert msg.temperatures == {"cpu": 30.0}

    def test_announcement_survives_the_wire(self) -> None:
        """An announcement encodes and decodes to itself."""
        a = announcer()
        a.update(ON_BATTERY, {"cpu": 30.0}, 10.0)
        msg = a.announce(10.0, 1e9)
        assert wire.decode(wire.encode(msg)).message == msg

    def test_first_announcement_due_at_once(self) -> None:
        """A new announcer is due at time 0, i.e. immediately."""
        assert announcer().next_at == 0.0


class TestMerge:
    def test_nothing_is_unknown(self) -> None:
        """No readings give unknown power and no temperatures."""
        assert merge([]) == (Power(PowerStatus.UNKNOWN), {})

    def test_first_known_power_wins(self) -> None:
        """Sources are read in config order: the first known status is taken."""
        power, _ = merge([reading("online"), reading("on_battery")])
        assert power.status is PowerStatus.ONLINE

    def test_unknown_status_is_passed_over(self) -> None:
        """A source that reports 'unknown' lets a later source's known status through."""
        power, _ = merge([reading("unknown"), reading("on_battery")])
        assert power.status is PowerStatus.ON_BATTERY

    def test_analogue_values_come_with_the_status(self) -> None:
        """Charge, runtime, load and voltage come from the source whose status is taken."""
        full = PowerReading(
            status="on_battery", charge_pct=80.0, runtime_s=600.0, load_pct=30.0, input_v=0.0
        )
        power, _ = merge([Reading(power=full), reading("online")])
        assert power == Power(PowerStatus.ON_BATTERY, 80.0, 600.0, 30.0, 0.0)

    def test_failed_power_source_makes_power_unknown(self) -> None:
        """When the only power source failed (None), power is unknown; other sensors still count."""
        power, temperatures = merge([None, reading(cpu=40.0)])
        assert power == Power(PowerStatus.UNKNOWN)
        assert temperatures == {"cpu": 40.0}

    def test_failed_source_contributes_nothing(self) -> None:
        """A failed source (None) is skipped: it neither hides nor replaces another's power."""
        before, _ = merge([reading("on_battery"), None])
        after, _ = merge([None, reading("on_battery")])
        assert before.status is after.status is PowerStatus.ON_BATTERY

    def test_temperatures_union_first_wins(self) -> None:
        """Sensors from every source are merged; a name seen twice keeps the first value."""
        _, temperatures = merge(
            [reading("online", cpu=30.0, disk=25.0), None, reading(disk=99.0, inlet=20.0)]
        )
        assert temperatures == {"cpu": 30.0, "disk": 25.0, "inlet": 20.0}

    def test_failed_source_announces_its_sensors_as_failed(self) -> None:
        """The sensors a failed source (None) has produced are there, as None, not absent."""
        produced = [{"ups.battery"}, {"inlet"}]
        _, temperatures = merge([reading("on_battery", **{"ups.battery": 27.0}), None], produced)
        assert temperatures == {"ups.battery": 27.0, "inlet": None}

    def test_sensor_left_out_is_failed(self) -> None:
        """A sensor its source produced before but does not give now is None."""
        _, temperatures = merge([reading(cpu=30.0)], [{"cpu", "disk"}])
        assert temperatures == {"cpu": 30.0, "disk": None}

    def test_failed_sensor_comes_first_like_any_other(self) -> None:
        """A name two sources give keeps the first source's value, a failure included."""
        _, temperatures = merge([None, reading(inlet=20.0)], [{"inlet"}, {"inlet"}])
        assert temperatures == {"inlet": None}

    def test_never_produced_is_not_announced(self) -> None:
        """A source that failed before it ever read has no sensors to announce."""
        assert merge([None, None], [set(), set()]) == (Power(PowerStatus.UNKNOWN), {})


class TestReads:
    """Announcer.read: one source's attempt at a time, the first announcement waiting."""

    def test_nothing_is_due_until_every_source_was_tried(self) -> None:
        """No announcement is due before each source has made its first read attempt."""
        a = two_sources()
        assert a.due is None
        a.read(0, reading("on_battery"), 10.0)
        assert a.due is None
        a.read(1, reading(inlet=22.0), 10.5)
        assert a.due == 10.5

    def test_a_failed_first_attempt_counts_as_tried(self) -> None:
        """A source whose first read failed does not hold the announcement back."""
        a = two_sources()
        a.read(1, None, 10.0)
        a.read(0, reading("online"), 10.2)
        assert a.due == 10.2
        msg = a.announce(10.2, 1e9)
        assert (msg.power.status, msg.temperatures) == (PowerStatus.ONLINE, {})

    def test_all_failed_is_announced_as_unknown(self) -> None:
        """Every source tried and failed: power unknown is due at once, not waited for."""
        a = two_sources()
        assert a.read(0, None, 10.0) is False
        assert a.read(1, None, 10.1) is False
        assert a.due == 0.0
        assert a.announce(10.1, 1e9).power.status is PowerStatus.UNKNOWN

    def test_failing_source_keeps_its_sensors_as_failed(self) -> None:
        """When a source fails, its sensors stay, as None; that is news, and so is recovery."""
        a = two_sources()
        a.read(0, reading("on_battery", **{"ups.battery": 27.0}), 10.0)
        a.read(1, reading(inlet=22.0), 10.0)
        change = a.change
        assert a.read(1, None, 11.0) is True
        assert a.temperatures == {"ups.battery": 27.0, "inlet": None}
        assert a.read(1, None, 12.0) is False  # still failed: a repeat
        assert a.read(1, reading(inlet=22.0), 13.0) is True
        assert a.temperatures == {"ups.battery": 27.0, "inlet": 22.0}
        assert a.change == change + 2

    def test_failed_sensor_survives_the_wire(self) -> None:
        """The announcement of a failed sensor encodes and decodes with the sensor as None."""
        a = two_sources()
        a.read(0, reading("on_battery"), 10.0)
        a.read(1, reading(inlet=22.0), 10.0)
        a.read(1, None, 11.0)
        msg = a.announce(11.0, 1e9)
        assert wire.decode(wire.encode(msg)).message.temperatures == {"inlet": None}
