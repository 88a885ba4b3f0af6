"""structlog set up for where the lines go: a terminal, the journal, or a file someone parses.

Formats, one event per line in all but "console":
- console: structlog's ConsoleRenderer, coloured on a terminal, for people.
- journal: "<N>" syslog priority prefix (systemd reads it with SyslogLevelPrefix=yes), then a
  logfmt body starting with event=; no timestamp, since journald stamps every line itself.
- logfmt: ts=... level=... event=... key=value, for grep and log shippers.
- json: one object with ts, level, event and the event's fields; other tools read these keys.
"auto" picks console on a terminal, journal when the stream is systemd's journal stream
(JOURNAL_STREAM), and logfmt otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

FORMATS: tuple[str, ...] = ("auto", "console", "logfmt", "json", "journal")

# syslog(3) priorities journald stores as PRIORITY=; there is no "notice" level in structlog.
_SYSLOG_PRIORITY: dict[str, int] = {
    "critical": 2,
    "error": 3,
    "warning": 4,
    "info": 6,
    "debug": 7,
}
_DEFAULT_PRIORITY = 6


def level_names() -> tuple[str, ...]:
    """The accepted level names, least to most severe, for validating configuration."""
    return tuple(_LEVELS)


def add_syslog_priority(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Add "priority", the syslog number for the event's level (needs add_log_level first)."""
    event_dict["priority"] = _SYSLOG_PRIORITY.get(event_dict.get("level", ""), _DEFAULT_PRIORITY)
    return event_dict


class JournalRenderer:
    """Render "<priority>" then logfmt, the shape journald's stream reader understands."""

    def __init__(self) -> None:
        self._body = structlog.processors.LogfmtRenderer(
            key_order=["event"], drop_missing=True, bool_as_flag=False
        )

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        """Move "priority" from the fields into the prefix; the body escapes newlines."""
        priority = event_dict.pop("priority", _DEFAULT_PRIORITY)
        return f"<{priority}>{self._body(logger, name, event_dict)}"


def _lead_with_ts_level_event(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Put ts, level and event first so a JSON line reads like the logfmt one."""
    lead = {key: event_dict.pop(key) for key in ("ts", "level", "event") if key in event_dict}
    return {**lead, **event_dict}


def _is_journal_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when systemd connected this stream to the journal (JOURNAL_STREAM is "dev:inode").

    Comparing device and inode, not just the variable's presence, tells a redirected stream
    (or a child that inherited the variable) apart from the journal's own socket.
    """
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):  # no file descriptor (StringIO), closed, or a malformed value
        return False


def _isatty(stream: TextIO) -> bool:
    """stream.isatty(), False for a closed stream."""
    try:
        return stream.isatty()
    except ValueError:
        return False


def _resolve_format(fmt: str, stream: TextIO, environ: Mapping[str, str]) -> str:
    """Turn "auto" into the concrete format for this stream."""
    if fmt != "auto":
        return fmt
    if _isatty(stream):
        return "console"
    if _is_journal_stream(stream, environ):
        return "journal"
    return "logfmt"


def _renderer_chain(fmt: str, stream: TextIO) -> list[Processor]:
    """The format-specific tail of the processor chain, renderer last."""
    timestamp = structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts")
    exc = structlog.processors.format_exc_info
    if fmt == "console":
        # ConsoleRenderer formats exceptions itself, with the traceback on its own lines.
        console = structlog.dev.ConsoleRenderer(colors=_isatty(stream), timestamp_key="ts")
        return [timestamp, console]
    if fmt == "journal":
        return [exc, add_syslog_priority, JournalRenderer()]
    if fmt == "json":
        return [timestamp, exc, _lead_with_ts_level_event, structlog.processors.JSONRenderer()]
    return [
        timestamp,
        exc,
        structlog.processors.LogfmtRenderer(
            key_order=["ts", "level", "event"], drop_missing=True, bool_as_flag=False
        ),
    ]


def configure(
    *,
    level: str = "info",
    stream: TextIO | None = None,
    fmt: str = "auto",
    environ: Mapping[str, str] | None = None,
) -> None:
    """Configure structlog globally; call again to reconfigure (loggers are not cached).

    environ defaults to os.environ and is only read for JOURNAL_STREAM under fmt="auto".
    Raises ValueError naming the bad argument and the accepted values.
    """
    if level not in _LEVELS:
        msg = f"'level' must be one of {level_names()!r} (got {level!r})"
        raise ValueError(msg)
    if fmt not in FORMATS:
        msg = f"'fmt' must be one of {FORMATS!r} (got {fmt!r})"
        raise ValueError(msg)
    out = sys.stderr if stream is None else stream
    concrete = _resolve_format(fmt, out, os.environ if environ is None else environ)
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
        *_renderer_chain(concrete, out),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
