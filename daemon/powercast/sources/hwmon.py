"""Temperatures the Linux kernel exposes in sysfs, chosen by name or glob.

- ``/sys/class/hwmon/hwmon*/temp<N>_input`` (millidegrees Celsius; also under the older
  ``hwmon*/device/``), named ``<name>.<label>``: ``name`` is the hwmon device's driver
  name (``coretemp``, ``nvme``, ``acpitz``), ``label`` is ``temp<N>_label`` (``Core 0``)
  or, without one, ``temp<N>``;
- ``/sys/class/thermal/thermal_zone*/temp`` (millidegrees), named by the zone's ``type``.

Characters a sensor name cannot hold become ``_`` (``coretemp.Package_id_0``); a name
that two sensors would share gets ``-2``, ``-3``... in sysfs order (which may differ
after a reboot, as hwmon numbers do: ``rename`` cannot tell such twins apart either).
Every scan reads the tree afresh, so sensors that come or go are seen at the next read.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from powercast.config import HwmonSource, Reading
from powercast.offload import Lane, LaneBusy
from powercast.sources.base import SourceError, make_reading

SCAN_TIMEOUT_S: Final = 10.0
"""A scan that takes longer (a hung sensor file) has failed; the next waits for it to return."""

MAX_SENSORS: Final = 24
NAME_LEN: Final = 32
_BAD = re.compile(r"[^A-Za-z0-9._:-]")
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class Sensor:
    name: str
    path: Path
    """The file holding millidegrees Celsius."""


def _natural(path: Path) -> list[str | int]:
    """Sort key putting hwmon10 after hwmon9, temp10 after temp9."""
    return [int(p) if p.isdigit() else p for p in _DIGITS.split(str(path))]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip() or None
    except OSError:
        return None


def clean(name: str) -> str:
    """A sensor name the announcement can carry (letters, digits, ``._:-``, 32 at most)."""
    name = _BAD.sub("_", name).lstrip("._:-")[:NAME_LEN]
    return name or "sensor"


def discover(root: Path) -> list[Sensor]:
    """Every temperature sensor under ``root``/sys, in sysfs order, with unique names."""
    found: list[tuple[str, Path]] = []
    hwmon = root / "sys" / "class" / "hwmon"
    for device in sorted(hwmon.glob("hwmon*"), key=_natural):
        driver = _text(device / "name") or _text(device / "device" / "name") or device.name
        inputs = sorted(device.glob("temp*_input"), key=_natural) or sorted(
            (device / "device").glob("temp*_input"), key=_natural
        )
        for path in inputs:
            index = path.name[: -len("_input")]  # temp<N>
            label = _text(path.with_name(f"{index}_label")) or index
            found.append((f"{clean(driver)}.{label}", path))
    thermal = root / "sys" / "class" / "thermal"
    for zone in sorted(thermal.glob("thermal_zone*"), key=_natural):
        if (zone / "temp").exists():
            found.append((_text(zone / "type") or zone.name, zone / "temp"))
    sensors: list[Sensor] = []
    seen: dict[str, int] = {}
    for raw, path in found:
        name = clean(raw)
        count = seen.get(name, 0) + 1
        seen[name] = count
        if count > 1:
            suffix = f"-{count}"
            name = name[: NAME_LEN - len(suffix)] + suffix
        sensors.append(Sensor(name, path))
    return sensors


def select(sensors: list[Sensor], patterns: list[str], origin: str) -> list[Sensor]:
    """The sensors matching any pattern, in sysfs order; a pattern matching none is an error."""
    chosen: set[str] = set()
    names = [s.name for s in sensors]
    for pattern in patterns:
        matched = fnmatch.filter(names, pattern)
        if not matched:
            have = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise SourceError(f"{origin}: no sensor matches {pattern!r} (found: {have or 'none'})")
        chosen.update(matched)
    picked = [s for s in sensors if s.name in chosen]
    if len(picked) > MAX_SENSORS:
        raise SourceError(
            f"{origin}: {len(picked)} sensors match, at most {MAX_SENSORS} fit in an"
            " announcement: name fewer in `sensors`"
        )
    return picked


def read_celsius(sensor: Sensor, origin: str) -> float:
    try:
        text = sensor.path.read_text().strip()
    except OSError as err:
        raise SourceError(f"{origin}: {sensor.path}: {err.strerror or err}") from None
    try:
        celsius = int(text) / 1000.0
    except ValueError:
        celsius = float("nan")
    if not -273.15 <= celsius <= 1000.0:  # also NaN
        raise SourceError(
            f"{origin}: {sensor.path}: expected millidegrees Celsius, got {text[:40]!r}"
        )
    return celsius


class HwmonReader:
    def __init__(self, name: str, config: HwmonSource) -> None:
        self.name = name
        self.interval_s = config.interval_s
        self._config = config
        self._root = Path(config.root)
        self._origin = f"hwmon {self._root / 'sys/class'}"
        self._lane = Lane(name)

    def close(self) -> None:
        """Nothing is kept open between reads."""

    async def read(self) -> Reading:
        # A sensor behind a slow bus (I2C, IPMI) can take a while: keep it off the loop.
        try:
            return await self._lane.call(self.scan, SCAN_TIMEOUT_S)
        except LaneBusy as err:
            raise SourceError(f"{self._origin}: {err}") from None
        except TimeoutError:
            raise SourceError(
                f"{self._origin}: no answer within {SCAN_TIMEOUT_S:g} s (a sensor file hung)"
            ) from None

    def scan(self) -> Reading:
        """Discover, select, rename and read the sensors (blocking)."""
        picked = select(discover(self._root), self._config.sensors, self._origin)
        rename = self._config.rename
        unknown = sorted(set(rename) - {s.name for s in picked})
        if unknown:
            raise SourceError(f"{self._origin}: rename: no selected sensor named {unknown[0]!r}")
        temperatures: dict[str, float] = {}
        for sensor in picked:
            name = rename.get(sensor.name, sensor.name)
            if name in temperatures:
                raise SourceError(f"{self._origin}: rename: two sensors named {name!r}")
            temperatures[name] = read_celsius(sensor, self._origin)
        return make_reading({"temperatures": temperatures}, self._origin)
