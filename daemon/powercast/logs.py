"""structlog set up for where the lines go: a terminal, the journal, or a file someone parses.

Formats, one event per line in all but "console":
- console: structlog's ConsoleRenderer, coloured on a terminal, for people.
- journal: "<N>" syslog priority prefix (systemd reads it with SyslogLevelPrefix=yes), then a
  logfmt body starting with event=; no timestamp, since journald stamps every line itself.
- logfmt: ts=... level=... event=... key=value, for grep and log shippers.
- json: one object with ts, level, event and the event's fields; other tools read these keys.
"auto" picks console on a terminal; under systemd (the stream is the journal stream named by
JOURNAL_STREAM) it sends each event to journald over its native protocol when the journal's
socket exists, so that every field becomes a journal field, and writes the journal format
otherwise; logfmt everywhere else.

The native protocol (systemd.journal-fields(7), "Native Journal Protocol" in systemd's docs)
is spoken here directly, in a few lines of stdlib, rather than through a library:
systemd-python needs libsystemd-dev and a compiler to install, cysystemd bundles a
libsystemd; both drop a failed send silently and neither can be pointed at a test socket;
logging-journald is a logging.Handler, connects at construction and prefixes extra fields.
One datagram per event to /run/systemd/journal/socket: MESSAGE (a readable line), PRIORITY,
SYSLOG_IDENTIFIER=powercast and POWERCAST_<KEY> for each of the event's fields (EVENT, STATE,
...). A value holding a newline goes in the protocol's binary-safe form; an entry too big
for one datagram goes in a sealed memfd, as libsystemd does. A send that fails (journald
gone, its queue full) writes the "<N>" line to the stream instead: no event is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import select
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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

JOURNAL_SOCKET = "/run/systemd/journal/socket"
"""Where journald listens for native-protocol datagrams."""

SYSLOG_IDENTIFIER = "powercast"
FIELD_PREFIX = "POWERCAST_"
_FIELD_NAME_MAX = 64  # journald drops longer field names
_NOT_IN_FIELD_NAME = re.compile(r"[^A-Z0-9_]")
# Sealed the way journald insists on before it reads an entry passed as a file descriptor.
_MEMFD_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
_LEAD = ("event", "level")  # first among the POWERCAST_ fields; not repeated in MESSAGE


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


def journal_field_name(key: str) -> str:
    """The journal field for a structlog key: "state" -> "POWERCAST_STATE".

    journald accepts only A-Z, 0-9 and "_" in names of at most 64 characters, so anything
    else (a sensor's "temp_inlet-2") becomes "_" and a long name is cut.
    """
    return (FIELD_PREFIX + _NOT_IN_FIELD_NAME.sub("_", key.upper()))[:_FIELD_NAME_MAX]


def _journal_value(value: object) -> str:
    """A field's text: strings as they are, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def _message_value(value: object) -> str:
    """A field's text in MESSAGE: quoted (JSON string) when empty or holding a space or "="."""
    text = _journal_value(value)
    if not text or "=" in text or any(c.isspace() for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def journal_fields(event_dict: EventDict) -> list[tuple[str, str]]:
    """The journal entry for one event: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, POWERCAST_*.

    MESSAGE is what `journalctl` shows: the event name, then key=value for its fields (values
    as in the fields, quoted when they hold a space or "="). "priority" becomes PRIORITY;
    every other key, "event" and "level" included, becomes POWERCAST_<KEY>.
    event_dict is not changed.
    """
    fields = {k: v for k, v in event_dict.items() if k != "priority"}
    event = str(fields.get("event", ""))
    message = " ".join(
        [event, *(f"{k}={_message_value(v)}" for k, v in fields.items() if k not in _LEAD)]
    )
    entry = [
        ("MESSAGE", message),
        ("PRIORITY", str(event_dict.get("priority", _DEFAULT_PRIORITY))),
        ("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER),
    ]
    keys = [*(k for k in _LEAD if k in fields), *(k for k in fields if k not in _LEAD)]
    entry.extend((journal_field_name(k), _journal_value(fields[k])) for k in keys)
    return entry


def encode_journal_entry(fields: Iterable[tuple[str, str]]) -> bytes:
    r"""journald's native datagram: "NAME=value\n" per field, or, for a value holding a
    newline, "NAME\n", its length as a little-endian 64-bit integer, the value, "\n"."""
    out = bytearray()
    for name, value in fields:
        data = value.encode("utf-8", errors="backslashreplace")
        if b"\n" in data:
            out += name.encode("ascii") + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += name.encode("ascii") + b"=" + data + b"\n"
    return bytes(out)


class JournalSender:
    """A datagram socket that sends encoded entries to journald's native socket.

    Non-blocking: when journald cannot keep up the send fails (EAGAIN) rather than stalling
    the event loop, and the caller writes the entry elsewhere. Each send names the path, so
    a restarted journald is reached again without reconnecting.
    """

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    def send(self, entry: bytes) -> None:
        """Send one entry; raises OSError when journald did not take it."""
        try:
            self._sock.sendto(entry, self.path)
        except OSError as err:
            if err.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(entry)

    def _send_memfd(self, entry: bytes) -> None:
        """Too big for a datagram: pass a sealed memfd holding the entry instead."""
        fd = os.memfd_create("powercast-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(entry)
            while view:
                view = view[os.write(fd, view) :]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _MEMFD_SEALS)
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))
            self._sock.sendmsg([], [rights], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the socket."""
        self._sock.close()


class NativeJournalRenderer:
    """structlog's last processor under journald: send the event, write nothing.

    When the send fails the "<N>" journal line is returned instead, so the event still
    reaches the journal through the process's stream (with its priority, without fields).
    """

    def __init__(self, sender: JournalSender) -> None:
        self.sender = sender
        self._fallback = JournalRenderer()

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        """Send, then drop the event; or render the fallback line."""
        try:
            self.sender.send(encode_journal_entry(journal_fields(event_dict)))
        except OSError:
            return self._fallback(logger, name, event_dict)
        raise structlog.DropEvent


class SocketStream:
    """The log stream when it is a socket, as the journal's stream is under systemd: each
    line is sent without waiting (``MSG_DONTWAIT``, leaving the shared descriptor as it is).

    A journald that stops reading (hung, or flushing to a disk that hangs) would otherwise
    stop the whole daemon at its next line: fans, SIGTERM and the watchdog's ping. Lines
    the socket does not take wait in a buffer of :data:`LIMIT` bytes; past that, whole lines
    are dropped and counted, and once the socket takes lines again a ``log_lines_dropped``
    line says how many. Held lines go as soon as the socket takes them (the event loop
    watches it), and at exit :func:`drain` gives them a bounded wait.
    """

    LIMIT = 256 * 1024

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.dropped = 0
        """Lines dropped since the daemon started."""
        self.render: Callable[[EventDict], str | None] | None = None
        """Renders the ``log_lines_dropped`` line in the stream's format (set by configure)."""
        self._pending = bytearray()
        self._unreported = 0
        self._lock = threading.RLock()
        self._busy = False
        """The lock's holder is inside the stream (only its own thread can see this)."""
        self._nested: list[bytes] = []
        self._watching: asyncio.AbstractEventLoop | None = None

    def write(self, text: str) -> int:
        # As sys.stderr does: a value that is not UTF-8 (a file name as the file system
        # gives it) is escaped, never raised into the code that logs it.
        line = text.encode(errors="backslashreplace")
        with self._alone() as alone:
            if not alone:  # the line goes after the one being written
                self._nested.append(line)
                return len(text)
            if self._pending:
                self._send()  # room may have come since the last line
            self._add(line)
            self._settle()
            if self._pending:
                self._watch()
        return len(text)

    @contextlib.contextmanager
    def _alone(self) -> Iterator[bool]:
        """The stream to this caller alone; False when this very thread is inside it
        already: it logged again from within a write (the cycle collector ran a __del__
        that logs, asyncio's "exception was never retrieved", or a signal handler did),
        and waiting on the lock would wait on itself, for ever."""
        with self._lock:
            if self._busy:
                yield False
                return
            self._busy = True
            try:
                yield True
            finally:
                self._busy = False

    def _add(self, line: bytes) -> None:
        if len(self._pending) + len(line) > self.LIMIT:
            self.dropped += 1
            self._unreported += 1
        else:
            self._pending += line
            self._send()

    def _settle(self) -> None:
        """The lines written from inside this stream, then the dropped lines' note."""
        while True:
            while self._nested:
                self._add(self._nested.pop(0))
            self._say_dropped()
            if not self._nested:
                return

    def flush(self) -> None:
        """Sent in :meth:`write`: nothing is held in Python but what the socket refused."""

    def drain(self, timeout_s: float) -> None:
        """At exit: wait up to ``timeout_s`` for the socket to take what is held (a
        journald busy for a moment); past that, it is lost with the process."""
        deadline = time.monotonic() + timeout_s
        waiting = select.poll()
        waiting.register(self.sock, select.POLLOUT)
        with self._alone() as alone:
            if not alone:  # a signal handler in this thread, inside a write: not now
                return
            self._unwatch()
            while True:
                self._send()
                self._settle()
                left = deadline - time.monotonic()
                if not self._pending or left <= 0:
                    return
                waiting.poll(left * 1000)

    def _say_dropped(self) -> None:
        """Once the socket took every line held, a line saying how many were dropped."""
        if not self._unreported or self._pending or self.render is None:
            return
        count, self._unreported = self._unreported, 0
        event = {
            "event": "log_lines_dropped",
            "lines": count,
            "level": "warning",
            "hint": "the log stream (journald) did not read; the daemon went on",
        }
        try:
            note = self.render(event)
        except Exception:  # a log line must never raise into a fan's path
            note = " ".join(f"{key}={value!r}" for key, value in event.items())
        if note is not None:
            self._pending += (note + "\n").encode(errors="backslashreplace")
            self._send()

    def _watch(self) -> None:
        """Lines are held: the event loop of this thread, if one runs, sends them as soon
        as the socket takes them, not at the next line (a quiet daemon may log none for
        hours; under journald's native protocol only a failed send writes here)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop here: the next line sends them, or drain()
            return
        if self._watching is not loop:
            loop.add_writer(self.sock.fileno(), self._writable)
            self._watching = loop

    def _writable(self) -> None:
        with self._alone() as alone:
            if not alone:
                return
            self._send()
            self._settle()
            if not self._pending:
                self._unwatch()

    def _unwatch(self) -> None:
        loop, self._watching = self._watching, None
        if loop is not None and not loop.is_closed():
            loop.remove_writer(self.sock.fileno())

    def _send(self) -> None:
        while self._pending:
            try:
                sent = self.sock.send(self._pending, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the reader is gone: nothing will read these lines
                self.dropped += self._pending.count(b"\n")
                self._pending.clear()
                return
            del self._pending[:sent]


_streams: dict[tuple[int, int], SocketStream] = {}
"""Every socket this process's lines went to (the log's, and :func:`say`'s), by device and
inode: one stream per socket, with what it holds and its count, across configure() calls."""
_stream: SocketStream | None = None
"""The log stream of the current configuration, when it is a socket."""


def dropped() -> int:
    """Log lines dropped since the daemon started (the log stream did not read)."""
    return _stream.dropped if _stream is not None else 0


EXIT_DRAIN_S = 1.0
"""At a daemon's exit, how long its held log lines may wait for the stream to take them."""


def drain(timeout_s: float) -> None:
    """Send the lines every socket stream holds, waiting up to ``timeout_s`` in all (at
    exit)."""
    deadline = time.monotonic() + timeout_s
    for stream in list(_streams.values()):
        stream.drain(max(0.0, deadline - time.monotonic()))


def say(line: str, out: TextIO) -> None:
    """Print ``line`` to ``out`` as a command's report; when ``out`` is a socket (the
    journal's stream) without waiting on it, as the log stream: what it does not take is
    held for :func:`drain`, which the command calls before it ends."""
    stream = _socket_stream(out)
    if stream is None:
        print(line, file=out, flush=True)
        return
    out.flush()  # what was printed to it before goes first
    stream.write(line + "\n")


def _socket_stream(out: TextIO) -> SocketStream | None:
    """``out``'s :class:`SocketStream` when its descriptor is a socket, else None."""
    try:
        fd = out.fileno()
        st = os.fstat(fd)
    except (OSError, ValueError, AttributeError):  # a StringIO, or closed
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    key = (st.st_dev, st.st_ino)
    if key not in _streams:
        _streams[key] = SocketStream(socket.socket(fileno=os.dup(fd)))
    return _streams[key]


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


def _is_socket(path: str) -> bool:
    """True when path names a socket (journald's is absent on hosts without systemd)."""
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


_NATIVE = "journal-native"
"""The concrete format "auto" picks under systemd when journald's socket is there."""


def _resolve_format(
    fmt: str, stream: TextIO, environ: Mapping[str, str], journal_socket: str
) -> str:
    """Turn "auto" into the concrete format for this stream."""
    if fmt != "auto":
        return fmt
    if _isatty(stream):
        return "console"
    if _is_journal_stream(stream, environ):
        return _NATIVE if _is_socket(journal_socket) else "journal"
    return "logfmt"


_sender: JournalSender | None = None
"""The native journal socket of the current configuration, closed on reconfiguring."""


def _journal_sender(path: str | None) -> JournalSender | None:
    """A sender for path (kept from the last configure() when the path is the same)."""
    global _sender  # noqa: PLW0603  # one socket per process, like the structlog config
    if _sender is not None and _sender.path != path:
        _sender.close()
        _sender = None
    if path is not None and _sender is None:
        _sender = JournalSender(path)
    return _sender


def _renderer_chain(fmt: str, stream: TextIO, journal_socket: str) -> list[Processor]:
    """The format-specific tail of the processor chain, renderer last."""
    timestamp = structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts")
    exc = structlog.processors.format_exc_info
    sender = _journal_sender(journal_socket if fmt == _NATIVE else None)
    if sender is not None:
        return [exc, add_syslog_priority, NativeJournalRenderer(sender)]
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
    journal_socket: str = JOURNAL_SOCKET,
) -> None:
    """Configure structlog globally; call again to reconfigure (loggers are not cached).

    environ defaults to os.environ and is only read for JOURNAL_STREAM under fmt="auto";
    journal_socket is journald's native socket, used under fmt="auto" when it exists.
    Raises ValueError naming the bad argument and the accepted values.
    """
    if level not in _LEVELS:
        msg = f"'level' must be one of {level_names()!r} (got {level!r})"
        raise ValueError(msg)
    if fmt not in FORMATS:
        msg = f"'fmt' must be one of {FORMATS!r} (got {fmt!r})"
        raise ValueError(msg)
    out = sys.stderr if stream is None else stream
    env = os.environ if environ is None else environ
    concrete = _resolve_format(fmt, out, env, journal_socket)
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
        *_renderer_chain(concrete, out, journal_socket),
    ]
    global _stream  # noqa: PLW0603  # one per process, like the structlog config
    sink: TextIO = out
    nonblocking = _stream = _socket_stream(out)
    if nonblocking is not None:
        nonblocking.render = _renderer(processors)
        sink = nonblocking  # type: ignore[assignment]  # write and flush are all it needs
        # What the standard library logs with no handler set (asyncio's "Exception in
        # callback", a library's warning) goes the same way, never waited on either.
        last_resort = logging.StreamHandler(sink)
        last_resort.setLevel(logging.WARNING)
        logging.lastResort = last_resort
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=sink),
        cache_logger_on_first_use=False,
    )


def _renderer(processors: list[Processor]) -> Callable[[EventDict], str | None]:
    """One event through ``processors`` to its line; None when the last one sent it
    itself (journald's native protocol)."""

    def render(event: EventDict) -> str | None:
        line: object = event
        method = str(event["level"])
        try:
            for processor in processors:
                line = processor(None, method, line)  # type: ignore[arg-type]
        except structlog.DropEvent:
            return None
        return str(line)

    return render
