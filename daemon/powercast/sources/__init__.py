"""Where readings come from. Each source is read on its own interval by the publisher.

A source's ``read()`` returns a :class:`~powercast.config.Reading` or raises
:class:`SourceError` with a one-line reason; the publisher turns a failure into
``unknown`` for whatever that source provides. Never a stale ``online``.
"""

from __future__ import annotations

from powercast.config import (
    CommandSource,
    FileSource,
    HwmonSource,
    NutSource,
    SimulatedSource,
    SnmpSource,
    Source,
)
from powercast.sources.base import Backoff, Reader, SourceError, parse_reading
from powercast.sources.command import CommandReader
from powercast.sources.file import FileReader
from powercast.sources.hwmon import HwmonReader
from powercast.sources.nut import NutReader
from powercast.sources.simulated import SimulatedReader

__all__ = ["Backoff", "Reader", "SourceError", "make_reader", "parse_reading"]


def make_reader(config: Source, index: int, start: float) -> Reader:
    """The reader for one ``[[sources]]`` entry; ``start`` anchors simulated timelines."""
    name = f"sources[{index}]({config.__struct_config__.tag})"
    if isinstance(config, SimulatedSource):
        return SimulatedReader(name, config, start)
    if isinstance(config, FileSource):
        return FileReader(name, config)
    if isinstance(config, CommandSource):
        return CommandReader(name, config)
    if isinstance(config, NutSource):
        return NutReader(name, config)
    if isinstance(config, HwmonSource):
        return HwmonReader(name, config)
    if isinstance(config, SnmpSource):
        from powercast.sources.snmp import SnmpReader  # noqa: PLC0415  # pysnmp loads in 0.2 s

        return SnmpReader(name, config)
    raise TypeError(f"unknown source {config!r}")
