"""A TOML or JSON file that an operator or a test edits; read whole on every poll."""

from __future__ import annotations

from pathlib import Path

from powercast.config import FileSource, Reading
from powercast.offload import Lane, LaneBusy
from powercast.sources.base import SourceError, parse_reading

READ_TIMEOUT_S = 5.0
"""A file that takes longer to read (a FIFO nobody writes, a hung NFS mount) has failed."""


class FileReader:
    def __init__(self, name: str, config: FileSource) -> None:
        self.name = name
        self.interval_s = config.interval_s
        self._path = Path(config.path)
        self._format = "toml" if self._path.suffix == ".toml" else "json"
        self._lane = Lane(name)

    def close(self) -> None:
        """Nothing is kept open between reads."""

    async def read(self) -> Reading:
        try:
            data = await self._lane.call(self._path.read_bytes, READ_TIMEOUT_S)
        except (LaneBusy, TimeoutError) as err:
            raise SourceError(f"{self._path}: cannot read: {err or 'timed out'}") from None
        except OSError as err:
            raise SourceError(f"{self._path}: cannot read: {err.strerror or err}") from None
        return parse_reading(data, str(self._path), self._format)
