"""Redundant publishers and zones: k-of-n power votes, zone temperatures, zones side by side.

combine() is tested on plain readings; the zone tests run a real Controller core fed with
signed datagrams (tests/fakes.py) on a fake clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from powercast import persist
from powercast.auth import Keyring
from powercast.config import ConfigError, ControllerConfig, PolicySettings, Zone, parse
from powercast.controller import Controller
from powercast.policy import FANS_ON, Decision, Policy, Reading, combine
from powercast.wire import PowerStatus

from fakes import WALL, FakePublisher, make_keyring

pytestmark = pytest.mark.unit

ONLINE = PowerStatus.ONLINE
ON_BATTERY = PowerStatus.ON_BATTERY
LOW_BATTERY = PowerStatus.LOW_BATTERY
UNKNOWN = PowerStatus.UNKNOWN


def said(**power: PowerStatus) -> dict[str, Reading]:
    """Readings with power only: ``said(a=ON_BATTERY)``."""
    return {name: (status, {}) for name, status in power.items()}


class TestVoting:
    def test_two_of_three_on_battery_is_believed_with_quorum_two(self) -> None:
        """Two of three publishers saying on battery reach a quorum of two."""
        s = combine(said(a=ON_BATTERY, b=ON_BATTERY, c=UNKNOWN), (), quorum=2)
        assert s.power is ON_BATTERY

    def test_one_of_three_on_battery_is_not_believed_with_quorum_two(self) -> None:
        """One publisher on battery is not enough for a quorum of two: power is unknown."""
        s = combine(said(a=ON_BATTERY, b=UNKNOWN, c=UNKNOWN), (), quorum=2)
        assert s.power is UNKNOWN

    def test_quorum_counts_low_battery_and_says_low_battery(self) -> None:
        """on_battery and low_battery both count towards the quorum; low_battery is reported."""
        s = combine(said(a=ON_BATTERY, b=LOW_BATTERY), (), quorum=2)
        assert s.power is LOW_BATTERY

    def test_any_online_vetoes_battery(self) -> None:
        """A single fresh "online" outvotes any number on battery: the fans keep running."""
        readings = {
            "a": (ON_BATTERY, {"inlet": 20.0}),
            "b": (ON_BATTERY, {"inlet": 20.0}),
            "c": (ONLINE, {"inlet": 20.0}),
        }
        s = combine(readings, (), quorum=2)
        assert s.power is ONLINE
        policy = Policy(PolicySettings(shed_after_s=0.0))
        policy.evaluate(s, 0.0)
        assert policy.state == "normal"
        assert FANS_ON[policy.state]

    def test_votes_list_which_publishers_decided(self) -> None:
        """Each voting publisher and what it said is in the situation and its log fields."""
        s = combine(said(b=ON_BATTERY, a=ONLINE, c=UNKNOWN), ("d",), quorum=2)
        assert s.votes == (("a", "online"), ("b", "on_battery"), ("c", "unknown"))
        fields = s.describe()
        assert fields["votes"] == {"a": "online", "b": "on_battery", "c": "unknown"}
        assert fields["stale"] == ["d"]

    def test_only_the_zones_publishers_vote(self) -> None:
        """A publisher outside power_from neither votes nor vetoes."""
        readings = said(a=ON_BATTERY, b=ONLINE)
        s = combine(readings, (), power_from=frozenset({"a"}))
        assert s.power is ON_BATTERY
        assert s.votes == (("a", "on_battery"),)

    def test_stale_publishers_do_not_vote(self, tmp_path: Path) -> None:
        """A publisher whose data ran out neither vetoes nor counts: the fresh two decide."""
        bench = Bench(tmp_path, zones=[Zone(name="hall", power_quorum=2)])
        a, b, c = (bench.publisher(n) for n in ("ups-a", "ups-b", "ups-c"))
        bench.send(c.say(0.0, ONLINE, inlet=20.0), 0.0)
        bench.send(a.say(0.5, ON_BATTERY, inlet=20.0), 0.5)
        bench.send(b.say(0.5, ON_BATTERY, inlet=20.0), 0.5)
        assert bench.ctrl.situation(0.5).power is ONLINE  # c still fresh: its veto holds
        bench.send(a.heartbeat(2.5), 2.5)
        bench.send(b.heartbeat(2.5), 2.5)
        moved = bench.tick(3.0)  # c's TAL (3 s) runs out
        situation = bench.ctrl.situation(3.0)
        assert situation.power is ON_BATTERY
        assert situation.stale == ("ups-c",)
        assert situation.votes == (("ups-a", "on_battery"), ("ups-b", "on_battery"))
        assert [d.state for d in moved] == ["on_battery"]


class TestZoneTemperature:
    READINGS: dict[str, Reading] = {  # noqa: RUF012  # read-only test data
        "ups-a": (ON_BATTERY, {"inlet": 22.0, "inlet2": 26.0, "cpu": 60.0}),
        "ups-b": (ON_BATTERY, {"inlet": 24.0, "cpu": 70.0}),
        "room": (UNKNOWN, {"ceiling": 30.0}),
    }

    def test_globs_select_publisher_slash_sensor(self) -> None:
        """Sensor globs match "publisher/sensor": only the selected sensors count."""
        s = combine(self.READINGS, (), sensors=("ups-a/inlet*", "ups-b/inlet"))
        assert s.temperature == 26.0
        assert s.hottest == "ups-a/inlet2"

    def test_globs_may_pick_sensors_of_publishers_that_do_not_vote(self) -> None:
        """A room sensor can count for a zone whose power comes from other publishers."""
        s = combine(
            self.READINGS, (), power_from=frozenset({"ups-a"}), sensors=("*/inlet", "room/*")
        )
        assert s.votes == (("ups-a", "on_battery"),)
        assert s.temperature == 30.0
        assert s.hottest == "room/ceiling"

    def test_without_globs_the_voting_publishers_sensors_count(self) -> None:
        """No globs: every sensor of the zone's power publishers, and no other."""
        s = combine(self.READINGS, (), power_from=frozenset({"ups-a"}))
        assert s.temperature == 60.0
        assert s.hottest == "ups-a/cpu"

    def test_max_is_the_hottest(self) -> None:
        """temperature = "max" (the default): the hottest selected sensor."""
        s = combine(self.READINGS, (), sensors=("*/inlet*",))
        assert s.temperature == 26.0

    def test_mean_is_the_average(self) -> None:
        """temperature = "mean": the average of the selected sensors; hottest still named."""
        s = combine(self.READINGS, (), sensors=("*/inlet*",), temperature="mean")
        assert s.temperature == pytest.approx((22.0 + 26.0 + 24.0) / 3)
        assert s.hottest == "ups-a/inlet2"

    def test_no_selected_sensor_is_no_temperature(self) -> None:
        """Globs that match nothing fresh give no temperature (the policy fails safe)."""
        s = combine(self.READINGS, (), sensors=("ups-c/*",))
        assert s.temperature is None
        assert s.hottest is None


class Bench:
    """A Controller with zones, its keyring, and a fake clock."""

    def __init__(self, tmp_path: Path, zones: list[Zone], **policy: Any) -> None:
        self.keyring: Keyring = make_keyring(tmp_path / "keys")
        settings = PolicySettings(**{"shed_after_s": 5.0, "restore_after_s": 10.0, **policy})
        self.ctrl = Controller(ControllerConfig(policy=settings, zones=zones), self.keyring)

    def publisher(self, name: str) -> FakePublisher:
        return FakePublisher.signed(name, self.keyring)

    def send(self, data: bytes, now: float) -> list[Decision]:
        return self.ctrl.receive(data, now, WALL + now)

    def tick(self, now: float) -> list[Decision]:
        return self.ctrl.tick(now)

    def states(self) -> dict[str, str]:
        return {name: policy.state for name, policy in self.ctrl.zones.items()}


def two_halls(tmp_path: Path) -> Bench:
    """Hall A on ups-a with its inlet sensors; hall B on ups-b, hotter limit, no debounce."""
    return Bench(
        tmp_path,
        zones=[
            Zone(name="hall-a", publishers=["ups-a"], sensors=["ups-a/inlet*"]),
            Zone(
                name="hall-b",
                publishers=["ups-b"],
                sensors=["ups-b/*", "room/*"],
                policy=PolicySettings(temp_high_c=30.0, shed_after_s=0.0),
            ),
        ],
    )


class TestZones:
    def test_same_datagrams_different_states(self, tmp_path: Path) -> None:
        """Two zones fed the same datagrams decide each from their own publishers and sensors."""
        bench = two_halls(tmp_path)
        a, b, room = bench.publisher("ups-a"), bench.publisher("ups-b"), bench.publisher("room")
        bench.send(room.say(0.0, UNKNOWN, ceiling=24.0), 0.0)  # only hall B reads the room
        bench.send(a.say(0.0, ON_BATTERY, inlet=25.0), 0.0)
        bench.send(b.say(0.0, ONLINE, inlet=25.0), 0.0)
        assert bench.states() == {"hall-a": "on_battery", "hall-b": "normal"}
        bench.send(b.say(1.0, ON_BATTERY, inlet=25.0), 1.0)
        assert bench.states() == {"hall-a": "on_battery", "hall-b": "shedding"}
        bench.send(room.say(2.0, UNKNOWN, ceiling=31.0), 2.0)
        assert bench.states() == {"hall-a": "on_battery", "hall-b": "thermal_override"}
        for now in (3.0, 4.0):
            for pub in (a, b, room):
                bench.send(pub.heartbeat(now), now)
        moved = bench.tick(5.0)
        assert [(d.zone, d.state) for d in moved] == [("hall-a", "shedding")]
        assert moved[0].situation.hottest == "ups-a/inlet"
        assert bench.states() == {"hall-a": "shedding", "hall-b": "thermal_override"}

    def test_decisions_name_their_zone(self, tmp_path: Path) -> None:
        """Every decision carries its zone's name and that zone's votes."""
        bench = two_halls(tmp_path)
        a, b, room = bench.publisher("ups-a"), bench.publisher("ups-b"), bench.publisher("room")
        bench.send(a.say(0.0, ONLINE, inlet=25.0), 0.0)
        bench.send(room.say(0.0, UNKNOWN, ceiling=24.0), 0.0)
        moved = bench.send(b.say(0.0, ON_BATTERY, inlet=25.0), 0.0)
        assert [(d.zone, d.state) for d in moved] == [
            ("hall-b", "on_battery"),
            ("hall-b", "shedding"),
        ]
        assert moved[-1].situation.votes == (("ups-b", "on_battery"),)

    def test_zone_whose_publishers_are_silent_has_no_fresh_data(self, tmp_path: Path) -> None:
        """A zone fails safe for "no fresh data" when its own publishers are silent, even
        while another zone's publisher is fresh."""
        bench = two_halls(tmp_path)
        b = bench.publisher("ups-b")
        bench.send(b.say(0.0, ONLINE, inlet=25.0), 0.0)
        situation = bench.ctrl.situation(0.0, "hall-a")
        assert situation.sources == ()
        assert bench.ctrl.zones["hall-a"].state == "failsafe"
        assert "no fresh data" in bench.ctrl.zones["hall-a"].reason
        assert bench.ctrl.zones["hall-b"].state == "normal"

    def test_zone_waits_in_grace_for_its_own_publishers(self, tmp_path: Path) -> None:
        """After a start, a zone is not failed safe because another zone's publisher spoke
        first: it waits for its own data until the grace ends."""
        bench = two_halls(tmp_path)
        saved = persist.ZoneRecord(state="shedding", entered_at=WALL - 10.0)
        record = persist.StateRecord(version=1, saved_at=WALL, zones={"hall-a": saved})
        assert persist.restore(record, bench.ctrl.zones, 0.0, WALL) == ["hall-a"]
        bench.ctrl.start(0.0)  # startup_grace_s: 3 s
        b = bench.publisher("ups-b")
        moved = bench.send(b.say(0.5, ONLINE, inlet=25.0), 0.5)
        assert [(d.zone, d.state) for d in moved] == [("hall-b", "normal")]
        assert bench.states() == {"hall-a": "shedding", "hall-b": "normal"}
        assert bench.ctrl.zones["hall-a"].settled is False
        bench.send(b.heartbeat(2.5), 2.5)
        assert bench.ctrl.deadline() == 3.0
        moved = bench.tick(3.0)
        assert [(d.zone, d.state) for d in moved] == [("hall-a", "failsafe")]
        assert "no fresh data" in moved[0].reason


class TestRequiredSensors:
    def test_a_configured_sensor_that_goes_quiet_makes_the_temperature_unknown(self) -> None:
        """A listed sensor with no fresh reading may be the hot one: temperature unknown."""
        readings = {"ups-a": (ON_BATTERY, {"inlet": 25.0})}
        s = combine(readings, (), sensors=("ups-a/inlet", "ups-a/outlet"))
        assert s.temperature is None
        assert s.missing == ("ups-a/outlet",)
        assert s.describe()["missing_sensors"] == ["ups-a/outlet"]


class TestFailedSensors:
    """A sensor announced as failed (None), or gone from its epoch, is unknown, not absent."""

    def test_failed_sensor_of_a_voting_publisher_makes_the_temperature_unknown(self) -> None:
        """No sensors list: a failed sensor of a power publisher leaves no zone temperature."""
        readings: dict[str, Reading] = {"ups-a": (ON_BATTERY, {"battery": 25.0, "inlet": None})}
        s = combine(readings, ())
        assert (s.temperature, s.hottest, s.missing) == (None, None, ("ups-a/inlet",))
        assert s.sources == ("ups-a",)

    def test_failed_sensor_a_glob_selects_makes_the_temperature_unknown(self) -> None:
        """A failed sensor a glob selects is missing, by its name; the glob is not repeated."""
        readings: dict[str, Reading] = {"ups-a": (ON_BATTERY, {"inlet": None, "outlet": 30.0})}
        s = combine(readings, (), sensors=("ups-a/inlet*", "ups-a/outlet"))
        assert (s.temperature, s.missing) == (None, ("ups-a/inlet",))
        s = combine(readings, (), sensors=("ups-a/*",))
        assert (s.temperature, s.missing) == (None, ("ups-a/inlet",))

    def test_failed_sensor_the_zone_does_not_count_is_ignored(self) -> None:
        """A failed sensor outside the zone's globs or power publishers does not blind it."""
        readings: dict[str, Reading] = {
            "ups-a": (ON_BATTERY, {"inlet": 25.0}),
            "ups-b": (ON_BATTERY, {"inlet": None}),
        }
        by_glob = combine(readings, (), sensors=("ups-a/*",))
        by_publisher = combine(readings, (), power_from=frozenset({"ups-a"}))
        assert by_glob.temperature == by_publisher.temperature == 25.0
        assert by_glob.missing == by_publisher.missing == ()

    def test_shedding_zone_fails_safe_when_a_sensor_fails(self, tmp_path: Path) -> None:
        """A zone without a sensors list that sheds runs its fans when a sensor fails."""
        bench = Bench(tmp_path, zones=[Zone(name="hall", publishers=["ups"])], shed_after_s=0.0)
        ups = bench.publisher("ups")
        bench.send(ups.say(0.0, ON_BATTERY, battery=27.0, inlet=22.0), 0.0)
        assert bench.states() == {"hall": "shedding"}
        moved = bench.send(ups.say(1.0, ON_BATTERY, battery=27.0, inlet=None), 1.0)
        assert [d.state for d in moved] == ["failsafe"]
        assert "no reading from ups/inlet" in moved[0].reason

    def test_sensor_gone_from_the_epoch_fails_safe_until_a_restart(self, tmp_path: Path) -> None:
        """A sensor left out of the datagram (older publisher) is unknown until a new epoch."""
        bench = Bench(tmp_path, zones=[Zone(name="hall", publishers=["ups"])], shed_after_s=0.0)
        ups = bench.publisher("ups")
        bench.send(ups.say(0.0, ON_BATTERY, battery=27.0, inlet=22.0), 0.0)
        moved = bench.send(ups.say(1.0, ON_BATTERY, battery=27.0), 1.0)
        assert [d.state for d in moved] == ["failsafe"]
        bench.send(ups.heartbeat(2.0), 2.0)
        assert bench.states() == {"hall": "failsafe"}
        ups.epoch, ups.seq = 2, 0  # restarted without the inlet sensor: forgotten
        moved = bench.send(ups.say(3.0, ON_BATTERY, battery=27.0), 3.0)
        assert [d.state for d in moved] == ["on_battery", "shedding"]


class TestZonePolicy:
    def test_zone_keys_override_the_top_level_ones(self) -> None:
        """A zone's [zones.policy] changes only the keys it gives; the rest are the top level's."""
        config = parse(
            'role = "controller"\n[policy]\ntemp_high_c = 40.0\nshed_after_s = 7.0\n'
            '[[zones]]\nname = "a"\n[zones.policy]\nshed_after_s = 1.0\n'
            '[[zones]]\nname = "b"\n',
            "c.toml",
        )
        assert isinstance(config, ControllerConfig)
        a, b = (config.policy_for(zone) for zone in config.zones)
        assert (a.temp_high_c, a.shed_after_s) == (40.0, 1.0)
        assert (b.temp_high_c, b.shed_after_s) == (40.0, 7.0)

    def test_zone_policy_refuses_top_level_only_keys(self) -> None:
        """Keys that are only read from the top level are refused in a zone, naming them."""
        with pytest.raises(ConfigError, match=r"zones\[0\].policy: unknown key 'publishers'"):
            parse(
                'role = "controller"\n[[zones]]\nname = "a"\n[zones.policy]\npublishers = []\n', "c"
            )
