"""``powercast demo``: a whole outage, played between two real daemons on loopback.

A controller and a publisher run as separate processes with their own config files and
talk over real multicast on 127.0.0.1 (a free port, TTL 1: nothing leaves the host).
The publisher plays a timeline; the demo prints the controller's decisions and actions
as they happen and fails if the expected sequence does not show up in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final, TextIO

import tomli_w

from powercast.secrets import keygen
from powercast.states import State

EXPECTED: Final = (
    State.normal,
    State.on_battery,
    State.shedding,
    State.thermal_override,
    State.shedding,
    State.normal,
)
DEADLINE_S: Final = 19.0

TIMELINE: Final = [
    {
        "at_s": 0.0,
        "power": {"status": "online", "charge_pct": 100.0},
        "temperatures": {"inlet": 24.0},
    },
    {
        "at_s": 2.0,
        "power": {"status": "on_battery", "charge_pct": 96.0},
        "temperatures": {"inlet": 24.0},
    },
    {
        "at_s": 5.0,
        "power": {"status": "on_battery", "charge_pct": 90.0},
        "temperatures": {"inlet": 37.0},
    },
    {
        "at_s": 7.0,
        "power": {"status": "on_battery", "charge_pct": 85.0},
        "temperatures": {"inlet": 29.0},
    },
    {
        "at_s": 9.0,
        "power": {"status": "online", "charge_pct": 85.0},
        "temperatures": {"inlet": 29.0},
    },
]
STORY: Final = {
    2.0: "the UPS goes on battery",
    5.0: "the hall heats up to 37 °C",
    7.0: "the hall cools down to 29 °C",
    9.0: "mains power returns",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_configs(directory: Path, port: int) -> tuple[Path, Path]:
    """The two daemons' config files, short timers so the story takes seconds."""
    keys = directory / "keys"
    keys.mkdir(mode=0o700)
    keygen(1, keys / "1.key")
    pwm = directory / "pwm1"  # stands in for /sys/class/hwmon/hwmonN/pwm1
    pwm.write_text("255\n")
    network = {"group": "239.1.1.1", "port": port, "interface": "127.0.0.1"}
    fans = [sys.executable, "-c", "import os; print('fans', os.environ['POWERCAST_FANS'])"]
    controller = {
        "role": "controller",
        "network": network,
        "policy": {
            "publishers": ["ups-demo"],
            "temp_high_c": 35.0,
            "temp_hysteresis_c": 3.0,
            "shed_after_s": 1.0,
            "restore_after_s": 1.0,
        },
        "auth": {"keys_dir": str(keys), "mode": "enforce"},
        "control": {"socket": str(directory / "controller.sock")},  # no root needed
        "actions": [
            {"on": state, "argv": fans, "timeout_s": 5.0}
            for state in (
                State.failsafe,
                State.normal,
                State.on_battery,
                State.shedding,
                State.thermal_override,
            )
        ],
        "actuators": [{"kind": "hwmon", "path": str(pwm), "on_value": 255, "off_value": 0}],
        "persist": {"state_dir": str(directory)},
        "log": {"format": "json"},
    }
    publisher = {
        "role": "publisher",
        "id": "ups-demo",
        "heartbeat_s": 0.25,
        "network": {**network, "ttl": 1, "loop": True},
        "auth": {"keys_dir": str(keys), "key_id": 1},
        "control": {"socket": str(directory / "publisher.sock")},
        "sources": [{"kind": "simulated", "interval_s": 0.05, "timeline": TIMELINE}],
        "log": {"format": "json"},
    }
    paths = directory / "controller.toml", directory / "publisher.toml"
    paths[0].write_text(tomli_w.dumps(controller))
    paths[1].write_text(tomli_w.dumps(publisher))
    return paths


class _Show:
    """Follows both daemons' JSON log lines and tells the story as it happens."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.start = time.monotonic()
        self.story_start: float | None = None
        self.story = dict(STORY)
        self.seen: list[str] = []
        self.actions: list[str] = []

    def done(self) -> bool:
        """The whole sequence seen and the last state's action carried out, or a wrong turn."""
        if self.seen != list(EXPECTED[: len(self.seen)]):
            return True
        return len(self.seen) == len(EXPECTED) and self.actions[-1:] == [EXPECTED[-1]]

    def event(self, event: dict[str, Any]) -> None:
        t = time.monotonic() - self.start
        name = event.get("event")
        if name == "sending" and self.story_start is None:
            self.story_start = time.monotonic()
        if self.story_start is not None:
            played = time.monotonic() - self.story_start
            for at in [at for at in self.story if played >= at]:
                self._line(t, "...", self.story.pop(at))
        if name == "transition":
            self.seen.append(event["state"])
            self._line(t, event["state"], f"fans {event['fans']:<3}  {event['reason']}")
        elif name == "action":
            self.actions.append(event["state"])
            said = event.get("output", "")
            self._line(t, "", f"  action for {event['state']}: {event['result']}, said {said!r}")
        elif name == "actuator_set":
            self._line(t, "", f"  fan PWM set {event['position']}, read back: {event['verified']}")
        elif event.get("level") in ("warning", "error", "critical") or name == "output":
            self._line(t, "!", str(event))

    def _line(self, t: float, state: str, text: str) -> None:
        print(f"  t+{t:5.1f}s  {state:<17} {text}", file=self.out, flush=True)


async def _follow(proc: asyncio.subprocess.Process, queue: asyncio.Queue[dict[str, Any]]) -> None:
    assert proc.stderr is not None
    async for raw in proc.stderr:
        try:
            event = json.loads(raw)
        except ValueError:
            event = {"event": "output", "text": raw.decode(errors="replace").rstrip()}
        await queue.put(event)


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0


async def _play(directory: Path, show: _Show, procs: list[asyncio.subprocess.Process]) -> None:
    """Start the controller, then the publisher once the controller is READY."""
    controller_toml, publisher_toml = write_configs(directory, free_port())
    command = [sys.executable, "-m", "powercast"]
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    followers: list[asyncio.Task[None]] = []

    async def spawn(*args: str) -> None:
        proc = await asyncio.create_subprocess_exec(*command, *args, stderr=asyncio.subprocess.PIPE)
        procs.append(proc)
        followers.append(tg.create_task(_follow(proc, queue)))

    async with asyncio.TaskGroup() as tg:
        await spawn("control", "--config", str(controller_toml))
        while not show.done():
            event = await queue.get()
            if event.get("event") == "ready" and event.get("role") == "controller":
                await spawn("publish", "--config", str(publisher_toml))
            show.event(event)
        for task in followers:  # they would end only when the daemons stop
            task.cancel()


async def _demo(out: TextIO) -> int:
    show = _Show(out)
    procs: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory(prefix="powercast-demo-") as tmp:
        print(
            "powercast demo: a publisher and a controller, signed multicast on 127.0.0.1",
            file=out,
        )
        try:
            async with asyncio.timeout(DEADLINE_S):
                await _play(Path(tmp), show, procs)
        except TimeoutError:
            print(f"powercast demo: timed out after {DEADLINE_S:g} s", file=out)
        finally:
            codes = [await _stop(p) for p in procs]
    if show.seen == list(EXPECTED) and codes == [0, 0]:
        print(f"powercast demo: ok, {len(show.seen)} decisions as expected", file=out)
        return 0
    print(
        f"powercast demo: FAILED: expected {' -> '.join(EXPECTED)},"
        f" got {' -> '.join(show.seen) or 'nothing'} (exit codes {codes})",
        file=out,
    )
    return 1


def run_demo() -> int:
    return asyncio.run(_demo(sys.stdout))
