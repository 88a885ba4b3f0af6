"""A TOML or JSON file that an operator or a test edits; read whole on every poll."""

from __future__ import annotations

import asyncio
from pathlib import Path

from powercast.config import FileSource, Reading
from powercast.sources.base import SourceError, parse_reading


class FileReader:
    def __init__(self, name: str, config: FileSource) -> None:
        self.name = name
        self.interval_s = config.interval_s
        self._path = Path(config.path)
        self._format = "toml" if self._path.suffix == ".toml" else "json"

    def close(self) -> None:
        """Nothing is kept open between reads."""

    async def read(self) -> Reading:
        try:
            data = await asyncio.to_thread(self._path.read_bytes)
        except OSError as err:
            raise SourceError(f"{self._path}: cannot read: {err.strerror or err}") from None
        return parse_reading(data, str(self._path), self._format)
