"""A fan PWM in sysfs (/sys/class/hwmon/hwmonN/pwmM), verified by reading it back."""

from __future__ import annotations

from pathlib import Path

from powercast.actuators.base import DriverError, Scale
from powercast.config import HwmonActuator
from powercast.offload import Lane, LaneBusy


class HwmonDriver:
    timeout_s = 2.0

    def __init__(self, name: str, config: HwmonActuator) -> None:
        self.name = name
        self._config = config
        self._path = Path(config.path)
        self._scale = Scale(config.off_value, config.on_value)
        self._enabled = False
        self._lane = Lane(name)
        """Its own thread: a hung file (a FIFO, a stuck bus) delays this fan only."""

    def position(self, level: int) -> int:
        return self._scale.position(level)

    async def apply(self, level: int) -> None:
        value = self._scale.value(level)  # between off_value and on_value
        try:
            await self._lane.call(lambda: self._write(value), self.timeout_s)
        except LaneBusy as err:
            raise DriverError(str(err)) from None

    def _write(self, value: int) -> None:
        try:
            if self._config.enable_path and not self._enabled:
                Path(self._config.enable_path).write_text(f"{self._config.enable_value}\n")
                self._enabled = True
            self._path.write_text(f"{value}\n")
        except OSError as err:
            raise DriverError(f"{self.name}: cannot write {err.filename}: {err.strerror}") from None

    async def read(self) -> int | None:
        try:
            text = await self._lane.call(
                lambda: self._path.read_text(errors="replace"), self.timeout_s
            )
            value = int(text.strip())
        except LaneBusy as err:
            raise DriverError(str(err)) from None
        except OSError as err:
            raise DriverError(f"{self.name}: cannot read {self._path}: {err.strerror}") from None
        except ValueError:
            raise DriverError(
                f"{self.name}: {self._path} holds {text.strip()[:20]!r}, not a number"
            ) from None
        return self._scale.level(value)
