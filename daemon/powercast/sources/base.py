"""What every source shares: the reader protocol, its error, and reading validation."""

from __future__ import annotations

import tomllib
from typing import Any, Protocol

import msgspec

from powercast.config import Reading, explain


class SourceError(Exception):
    """A source could not be read; ``str()`` says which source and why."""


class Reader(Protocol):
    """What the publisher needs of a source."""

    name: str
    interval_s: float

    async def read(self) -> Reading: ...


_reading_json = msgspec.json.Decoder(Reading)


def parse_reading(data: bytes, origin: str, fmt: str = "json") -> Reading:
    """Validate a reading in JSON or TOML; errors name ``origin`` and the key."""
    try:
        if fmt == "toml":
            return msgspec.convert(tomllib.loads(data.decode()), type=Reading, strict=True)
        return _reading_json.decode(data)
    except msgspec.ValidationError as err:
        raise SourceError(f"{origin}: {explain(str(err), _raw(data, fmt), Reading)}") from None
    except (msgspec.DecodeError, ValueError) as err:  # TOMLDecodeError, UnicodeError: ValueError
        raise SourceError(f"{origin}: not valid {fmt.upper()}: {err}") from None


def _raw(data: bytes, fmt: str) -> Any:
    try:
        return tomllib.loads(data.decode()) if fmt == "toml" else msgspec.json.decode(data)
    except (msgspec.DecodeError, ValueError):
        return {}
