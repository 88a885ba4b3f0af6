"""The controller's metrics read from a real status document: a real core fed signed
datagrams on a fake clock, a real actuator worker, the collector's text exposition."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from powercast import metrics
from powercast import status as report
from powercast.actions import ActionQueue
from powercast.actuators import Worker
from powercast.actuators.base import DriverError
from powercast.auth import Keyring
from powercast.config import ControllerConfig, PolicySettings
from powercast.controller import Controller
from powercast.tally import Tally
from powercast.wire import PowerStatus

from fakes import WALL, FakePublisher, make_keyring

pytestmark = pytest.mark.unit

SETTINGS = PolicySettings(
    shed_after_s=5.0, restore_after_s=0.0, flap_window_s=100.0, flap_max_sheds=1, temp_high_c=30.0
)


class Fan:
    """A fan in memory: apply takes ``delay`` seconds, or fails while ``broken``."""

    name = "fan-1"
    timeout_s = 1.0

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.broken, self.on = delay, False, True

    async def apply(self, on: bool) -> None:
        await asyncio.sleep(self.delay)
        if self.broken:
            raise DriverError("fan-1: refused")
        self.on = on

    async def read(self) -> bool | None:
        return self.on


async def move(worker: Worker, on: bool) -> None:
    """Let the worker's task try to reach ``on`` once, then stop it."""
    tried = sum(worker.durations.counts)
    task = asyncio.create_task(worker.run())
    worker.want(on)
    while sum(worker.durations.counts) == tried:
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def scrape(core: Controller, workers: dict[str, list[Worker]], keyring: Keyring, now: float) -> Any:
    """The exposition of the controller's document at ``now``, as {name: {labels: value}}."""
    doc = {
        **report.common("controller", path=Path("c.toml"), loaded_at=WALL, control="s",
                        metrics="127.0.0.1:1", wall=WALL + now),
        **report.controller(core, workers=workers, actions=ActionQueue(), tally=Tally(),
                            keyring=keyring, config=core.config, now=now),
    }  # fmt: skip
    registry = metrics.registry_for("controller", lambda: doc)
    text = generate_latest(registry).decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def one(samples: Any, name: str, **labels: str) -> float:
    value: float = samples[name][tuple(sorted(labels.items()))]
    return value


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return make_keyring(tmp_path / "keys")


class TestControllerMetrics:
    def test_battery_time_sheds_and_flap_guard(self, keyring: Keyring) -> None:
        """Seconds on battery, the shed counter and the flap guard's hold show per zone."""
        core = Controller(ControllerConfig(policy=SETTINGS), keyring=keyring)
        pub = FakePublisher.signed("ups-a", keyring, tal=3.0)

        def hear(data: bytes, now: float) -> None:
            core.receive(data, now, WALL + now)
            core.tick(now)

        hear(pub.say(0.0, PowerStatus.ONLINE, inlet=24.0), 0.0)
        hear(pub.say(1.0, PowerStatus.ON_BATTERY, inlet=24.0), 1.0)
        for now in (2.0, 4.0, 6.0):
            hear(pub.heartbeat(now), now)
        s = scrape(core, {}, keyring, 6.5)
        assert one(s, "powercast_state", zone="default", state="shedding") == 1.0
        assert one(s, "powercast_on_battery_seconds", zone="default") == 5.5
        assert one(s, "powercast_sheds_total", zone="default") == 1.0
        assert one(s, "powercast_flap_guard_recent_sheds", zone="default") == 1.0
        assert one(s, "powercast_flap_guard_max_sheds", zone="default") == 1.0
        assert one(s, "powercast_flap_guard_holding", zone="default") == 0.0
        assert one(s, "powercast_zone_temperature_celsius", zone="default") == 24.0
        assert one(s, "powercast_temperature_limit_celsius", zone="default") == 30.0
        hear(pub.say(7.0, PowerStatus.ONLINE, inlet=24.0), 7.0)
        hear(pub.say(8.0, PowerStatus.ON_BATTERY, inlet=24.0), 8.0)
        s = scrape(core, {}, keyring, 8.0)
        assert one(s, "powercast_on_battery_seconds", zone="default") == 0.0
        assert one(s, "powercast_state", zone="default", state="on_battery") == 1.0
        assert one(s, "powercast_flap_guard_holding", zone="default") == 1.0
        assert one(s, "powercast_flap_guard_holds_total", zone="default") == 1.0
        assert one(s, "powercast_sheds_total", zone="default") == 1.0

    def test_publisher_margin_tal_and_temperatures(self, keyring: Keyring) -> None:
        """Each publisher's time left before its data runs out (negative once stale), its
        TAL and its sensors; a failed sensor has no sample."""
        core = Controller(ControllerConfig(policy=SETTINGS), keyring=keyring)
        pub = FakePublisher.signed("ups-a", keyring, tal=3.0)
        core.receive(pub.say(10.0, PowerStatus.ONLINE, inlet=24.5, outlet=None), 10.0, WALL + 10)
        s = scrape(core, {}, keyring, 11.0)
        assert one(s, "powercast_publisher_expires_in_seconds", publisher="ups-a") == 2.0
        assert one(s, "powercast_publisher_tal_seconds", publisher="ups-a") == 3.0
        temps = s["powercast_publisher_temperature_celsius"]
        assert temps == {(("publisher", "ups-a"), ("sensor", "inlet")): 24.5}
        s = scrape(core, {}, keyring, 14.5)
        assert one(s, "powercast_publisher_expires_in_seconds", publisher="ups-a") == -1.5
        assert one(s, "powercast_publisher_fresh", publisher="ups-a") == 0.0
        assert "powercast_zone_temperature_celsius" not in s  # no fresh data: unknown

    def test_actuator_apply_latency_counts_failed_attempts_too(self, keyring: Keyring) -> None:
        """Each attempt to move an actuator lands in its histogram, a failed one too."""
        core = Controller(ControllerConfig(policy=SETTINGS), keyring=keyring)
        fan = Fan(delay=0.02)
        worker = Worker(fan, "default")
        asyncio.run(move(worker, False))
        fan.broken = True
        asyncio.run(move(worker, True))
        s = scrape(core, {"default": [worker]}, keyring, 1.0)
        labels = {"zone": "default", "actuator": "fan-1"}
        assert one(s, "powercast_actuator_apply_duration_seconds_count", **labels) == 2.0
        assert one(s, "powercast_actuator_apply_duration_seconds_bucket", le="0.01", **labels) == 0
        assert one(s, "powercast_actuator_apply_duration_seconds_bucket", le="1.0", **labels) == 2
        assert 0.04 <= one(s, "powercast_actuator_apply_duration_seconds_sum", **labels) < 1.0
        assert one(s, "powercast_actuator_failed", **labels) == 1.0
        assert one(s, "powercast_actuator_position", position="unknown", **labels) == 1.0
