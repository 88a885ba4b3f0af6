"""The controller's memory across restarts: each zone's state and timers, and what each
actuator's position was, in one JSON file written atomically (write, fsync, rename).

On start, a recent file lets the controller pick up where it was, so a restart during
an outage does not turn shed fans on and off again; the first fresh data still decides.
A file older than ``MAX_AGE_S``, or one that cannot be read, is ignored: the controller
then starts in failsafe, as without it. Times are stored as wall-clock seconds and
turned back into monotonic ones on load.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Final

import msgspec

from powercast.policy import MAX_OVERRIDE_S, FanChart, Override, Policy
from powercast.states import State

MAX_AGE_S: Final = 600.0
FILE_NAME: Final = "controller-state.json"


class OverrideRecord(msgspec.Struct):
    fans_on: bool
    until: float
    who: str
    why: str


class ZoneRecord(msgspec.Struct, forbid_unknown_fields=False):
    state: str
    entered_at: float
    reason: str = ""
    stage: int = 0
    """In shedding, the stage (1 = the first, 0 none reached yet); without stages, 1."""
    level: int = 100
    """The fan level the state and stage called for (for people reading the file)."""
    battery_since: float | None = None
    online_since: float | None = None
    sheds: list[float] = []
    override: OverrideRecord | None = None


class StateRecord(msgspec.Struct, forbid_unknown_fields=False):
    version: int
    saved_at: float
    zones: dict[str, ZoneRecord] = {}
    actuators: dict[str, int | bool | None] = {}
    """``zone/index`` -> the level last known (0..100), or unknown (None); older files
    hold true (on) or false (off). Never believed at start: read back or written."""


def snapshot(
    zones: dict[str, Policy], actuators: dict[str, int | None], now: float, wall: float
) -> StateRecord:
    """What to save, with monotonic times turned into wall-clock ones."""

    def to_wall(t: float | None) -> float | None:
        return None if t is None else wall - (now - t)

    records = {}
    for name, policy in zones.items():
        o = policy.override
        records[name] = ZoneRecord(
            state=policy.state,
            entered_at=wall - (now - policy.since),
            reason=policy.reason,
            stage=policy.stage,
            level=policy.level,
            battery_since=to_wall(policy.battery_since),
            online_since=to_wall(policy.online_since),
            sheds=[wall - (now - t) for t in policy.sheds],
            override=None
            if o is None
            else OverrideRecord(o.fans_on, wall - (now - o.until), o.who, o.why),
        )
    return StateRecord(version=1, saved_at=wall, zones=records, actuators=dict(actuators))


def restore(record: StateRecord, zones: dict[str, Policy], now: float, wall: float) -> list[str]:
    """Put saved zones back into ``zones``' policies; returns the names restored."""
    if record.version != 1 or not 0 <= wall - record.saved_at <= MAX_AGE_S:
        return []

    def to_mono(t: float | None) -> float | None:
        """A saved moment on the monotonic clock; never in the future (a file may lie)."""
        return None if t is None else min(now, now - (wall - t))

    restored = []
    for name, saved in record.zones.items():
        policy = zones.get(name)
        if policy is None or saved.state not in FanChart.states_map:
            continue
        policy.chart = FanChart(start_value=State(saved.state))
        policy.since = min(now, now - (wall - saved.entered_at))
        policy.reason = f"restored after restart: {saved.reason}"
        staged = len(policy.settings.stages)  # a stage beyond the config's: its deepest
        shed = saved.state == State.shedding
        policy.stage = (min(max(saved.stage, 0), staged) if staged else 1) if shed else 0
        policy.battery_since = to_mono(saved.battery_since)
        policy.online_since = to_mono(saved.online_since)
        policy.sheds.extend(sorted(min(now, now - (wall - t)) for t in saved.sheds))
        if (o := saved.override) is not None:
            until = min(now - (wall - o.until), now + MAX_OVERRIDE_S)
            policy.override = Override(o.fans_on, until, o.who, o.why)
        restored.append(name)
    return restored


def load(directory: Path) -> StateRecord | None:
    """The saved record, or None when there is none or it cannot be used (unreadable,
    not JSON, the wrong shape, or nested deeper than the decoder goes: RecursionError)."""
    try:
        return msgspec.json.decode((directory / FILE_NAME).read_bytes(), type=StateRecord)
    except (OSError, msgspec.DecodeError, RecursionError):
        return None


def save(directory: Path, record: StateRecord) -> None:
    """Replace the file atomically: readers see the old or the new one, never half."""
    write_atomically(directory / FILE_NAME, msgspec.json.encode(record))


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: written beside it, synced, renamed over it, and the
    directory synced, so that after a crash or a power cut it holds the old content or
    the new, never a part. Raises OSError."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
