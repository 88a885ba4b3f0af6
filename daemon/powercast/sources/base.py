"""What every source shares: the reader protocol, its error, reading validation and the
retry schedule of a failing source (:class:`~powercast.pacing.Backoff`). Password and
community files are read by :func:`powercast.secrets.read_secret`."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import msgspec

from powercast.config import Reading, explain
from powercast.pacing import Backoff  # a source's retry schedule, as the sources package names it

__all__ = [
    "Backoff",
    "Reader",
    "SourceError",
    "Woken",
    "make_reading",
    "parse_reading",
    "pauser",
]


class SourceError(Exception):
    """A source could not be read; ``str()`` says which source and why."""


class Reader(Protocol):
    """What the publisher needs of a source."""

    name: str
    interval_s: float

    async def read(self) -> Reading: ...

    def close(self) -> None:
        """Release what the reader keeps open between reads (a connection); may read again."""


@runtime_checkable
class Woken(Protocol):
    """A reader that news can wake before its interval (an SNMP trap): the poller waits
    in its ``pause`` instead of sleeping, and shows its ``trap_status``."""

    async def pause(self, delay_s: float) -> None: ...

    def trap_status(self) -> dict[str, Any] | None: ...


def pauser(reader: Reader) -> Callable[[float], Awaitable[None]]:
    """How to wait until ``reader`` is to be read again: for ``delay_s``, or less if news
    wakes it (its own ``pause``). Decided once per reader: checking a Protocol costs
    microseconds, every poll."""
    if isinstance(reader, Woken):
        return reader.pause
    return asyncio.sleep


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


def make_reading(raw: dict[str, Any], origin: str) -> Reading:
    """Validate a reading built from a protocol's values, with every bound of the schema.

    Structs built directly skip msgspec's checks; a value out of bounds would then only
    fail when the announcement is encoded, and stop every announcement. ``origin`` names
    the source in the error.
    """
    try:
        return msgspec.convert(raw, type=Reading, strict=True)
    except msgspec.ValidationError as err:
        raise SourceError(f"{origin}: {explain(str(err), raw, Reading)}") from None


def _raw(data: bytes, fmt: str) -> Any:
    try:
        return tomllib.loads(data.decode()) if fmt == "toml" else msgspec.json.decode(data)
    except (msgspec.DecodeError, ValueError):
        return {}
