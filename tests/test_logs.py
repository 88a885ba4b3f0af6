"""structlog configuration: each format's line shape, level filtering, format detection."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from powercast import logs

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Leave structlog's global configuration as it was found."""
    yield
    structlog.reset_defaults()


def emit(fmt: str, level: str = "debug") -> list[str]:
    """Configure fmt on a StringIO, log one warning with fields, return the lines written."""
    stream = io.StringIO()
    logs.configure(level=level, stream=stream, fmt=fmt)
    structlog.get_logger().bind(zone="z1").warning("shedding", watts=1500.5, note="a b")
    return stream.getvalue().splitlines()


class TestJournalFormat:
    def test_warning_line(self) -> None:
        """A warning is one line: "<4>", then logfmt starting with event=, no timestamp."""
        (line,) = emit("journal")
        assert line.startswith("<4>event=shedding ")
        assert 'zone=z1 watts=1500.5 note="a b"' in line
        keys = [pair.split("=", 1)[0] for pair in line[3:].split(" ")]
        assert "ts" not in keys
        assert "priority" not in keys

    @pytest.mark.parametrize(
        ("method", "prefix"),
        [
            ("critical", "<2>"),
            ("error", "<3>"),
            ("warning", "<4>"),
            ("info", "<6>"),
            ("debug", "<7>"),
        ],
    )
    def test_priorities(self, method: str, prefix: str) -> None:
        """Each level maps to its syslog priority prefix."""
        stream = io.StringIO()
        logs.configure(level="debug", stream=stream, fmt="journal")
        getattr(structlog.get_logger(), method)("x")
        assert stream.getvalue().startswith(prefix + "event=x")

    def test_exception_stays_on_one_line(self) -> None:
        """A traceback is rendered into the line with escaped newlines, at error priority."""
        stream = io.StringIO()
        logs.configure(stream=stream, fmt="journal")
        try:
            1 / 0  # noqa: B018  # raise something to log
        except ZeroDivisionError:
            structlog.get_logger().exception("boom")
        (line,) = stream.getvalue().splitlines()
        assert line.startswith("<3>event=boom ")
        assert "ZeroDivisionError" in line


class TestLogfmtFormat:
    def test_warning_line(self) -> None:
        """A line reads ts=, level=, event= first, then the fields, and no priority."""
        (line,) = emit("logfmt")
        assert line.startswith("ts=")
        rest = line.split(" ", 1)[1]
        assert rest == 'level=warning event=shedding zone=z1 watts=1500.5 note="a b"'

    def test_debug_filtered_at_info(self) -> None:
        """At level info a debug event writes nothing; info does."""
        stream = io.StringIO()
        logs.configure(level="info", stream=stream, fmt="logfmt")
        log = structlog.get_logger()
        log.debug("hidden")
        log.info("shown")
        (line,) = stream.getvalue().splitlines()
        assert "event=shown" in line

    def test_exception_rendered(self) -> None:
        """log.exception() adds the traceback as an exception= field on the same line."""
        stream = io.StringIO()
        logs.configure(stream=stream, fmt="logfmt")
        try:
            1 / 0  # noqa: B018  # raise something to log
        except ZeroDivisionError:
            structlog.get_logger().exception("boom")
        (line,) = stream.getvalue().splitlines()
        assert "level=error event=boom exception=" in line
        assert "ZeroDivisionError: division by zero" in line


class TestJsonFormat:
    def test_warning_object(self) -> None:
        """A line is a JSON object with ts, level, event and the fields, and no priority."""
        (line,) = emit("json")
        obj = json.loads(line)
        assert list(obj)[:3] == ["ts", "level", "event"]
        assert obj["level"] == "warning"
        assert obj["event"] == "shedding"
        assert obj["zone"] == "z1"
        assert obj["watts"] == 1500.5
        assert "priority" not in obj

    def test_level_filter(self) -> None:
        """At level error only error and critical events are written."""
        stream = io.StringIO()
        logs.configure(level="error", stream=stream, fmt="json")
        log = structlog.get_logger()
        log.warning("w")
        log.error("e")
        log.critical("c")
        events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
        assert events == ["e", "c"]


class TestConsoleFormat:
    def test_plain_on_non_tty(self) -> None:
        """On a stream that is not a terminal the console renderer writes no colour codes."""
        (line,) = emit("console")
        assert "shedding" in line
        assert "zone=z1" in line
        assert "\x1b[" not in line


class TestAutoFormat:
    def test_non_tty_is_logfmt(self) -> None:
        """auto on a plain stream, outside the journal, writes logfmt."""
        stream = io.StringIO()
        logs.configure(stream=stream, fmt="auto", environ={})
        structlog.get_logger().info("hello")
        assert stream.getvalue().startswith("ts=")

    def test_journal_stream_is_journal(self, tmp_path: Path) -> None:
        """auto writes the journal format when JOURNAL_STREAM names this stream's dev:inode."""
        with (tmp_path / "out").open("w+") as stream:
            st = os.fstat(stream.fileno())
            env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
            logs.configure(stream=stream, fmt="auto", environ=env)
            structlog.get_logger().info("hello")
            stream.seek(0)
            assert stream.read() == "<6>event=hello level=info\n"

    def test_other_journal_stream_is_logfmt(self, tmp_path: Path) -> None:
        """auto ignores a JOURNAL_STREAM that names another file (an inherited variable)."""
        with (tmp_path / "out").open("w+") as stream:
            st = os.fstat(stream.fileno())
            env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}
            logs.configure(stream=stream, fmt="auto", environ=env)
            structlog.get_logger().info("hello")
            stream.seek(0)
            assert stream.read().startswith("ts=")

    def test_malformed_journal_stream_is_logfmt(self, tmp_path: Path) -> None:
        """auto treats a JOURNAL_STREAM that is not "dev:inode" as absent."""
        with (tmp_path / "out").open("w+") as stream:
            logs.configure(stream=stream, fmt="auto", environ={"JOURNAL_STREAM": "x:y"})
            structlog.get_logger().info("hello")
            stream.seek(0)
            assert stream.read().startswith("ts=")


class TestConfigure:
    def test_reconfigure(self) -> None:
        """A second configure() redirects loggers already obtained (no caching)."""
        first, second = io.StringIO(), io.StringIO()
        logs.configure(stream=first, fmt="logfmt")
        log = structlog.get_logger()
        log.info("one")
        logs.configure(stream=second, fmt="logfmt")
        log.info("two")
        assert "event=one" in first.getvalue()
        assert "event=two" not in first.getvalue()
        assert "event=two" in second.getvalue()

    def test_bad_level(self) -> None:
        """An unknown level raises ValueError naming the accepted ones."""
        with pytest.raises(ValueError, match=r"'level' must be one of .*'debug'.*\(got 'loud'\)"):
            logs.configure(level="loud", stream=io.StringIO())

    def test_bad_format(self) -> None:
        """An unknown format raises ValueError naming the accepted ones."""
        with pytest.raises(ValueError, match=r"'fmt' must be one of .*'journal'.*\(got 'xml'\)"):
            logs.configure(fmt="xml", stream=io.StringIO())


class TestLevelNames:
    def test_names(self) -> None:
        """The accepted levels are debug to critical, least severe first."""
        assert logs.level_names() == ("debug", "info", "warning", "error", "critical")


class TestSocketStream:
    """stderr as a socket (the journal's stream): never waited on, lines past a bound are
    dropped and counted, and said once the socket reads again."""

    @pytest.fixture
    def pair(self) -> Iterator[tuple[socket.socket, socket.socket]]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        yield ours, theirs
        ours.close()
        theirs.close()

    def fill(self, sock: socket.socket) -> None:
        """What a journald that stops reading leaves: the socket full."""
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sock.send(b"#" * 4095 + b"\n")

    def drain(self, sock: socket.socket) -> list[str]:
        sock.setblocking(False)
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := sock.recv(1 << 20):
                data += chunk
        return [line for line in data.decode().splitlines() if not line.startswith("#")]

    def test_the_standard_librarys_last_resort_is_not_waited_on_either(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        """asyncio's own errors go through ``logging`` with no handler set: to its last
        resort, which wrote to stderr and waited on a full socket."""
        ours, theirs = pair
        self.fill(theirs)
        kept, root = logging.lastResort, logging.getLogger()
        handlers, root.handlers = root.handlers, []  # pytest's capture: none, as in a daemon
        try:
            with os.fdopen(os.dup(theirs.fileno()), "w") as stderr:
                logs.configure(level="info", fmt="json", stream=stderr)
                logging.getLogger("asyncio").error("Exception in callback")  # returns at once
                got = self.drain(ours)
                logs.drain(1.0)
                got += self.drain(ours)
        finally:
            logging.lastResort, root.handlers = kept, handlers
        assert "Exception in callback" in got

    def test_lines_past_the_bound_are_dropped_counted_and_said(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        ours, theirs = pair
        self.fill(theirs)
        with os.fdopen(os.dup(theirs.fileno()), "w") as stderr:
            logs.configure(level="info", fmt="json", stream=stderr)
            stream = logs._socket_stream(stderr)
            assert stream is not None
            stream.LIMIT = 1000
            log = structlog.get_logger("powercast")
            for n in range(40):  # about 60 bytes each: the first ~16 wait, the rest drop
                log.info("tick", n=n)
            assert stream.dropped > 0
            kept = self.drain(ours)
            log.info("after")
            kept += self.drain(ours)
        events = [json.loads(line) for line in kept]
        ticks = [e["n"] for e in events if e["event"] == "tick"]
        assert ticks == list(range(len(ticks)))  # the first ones, in order, none torn
        assert len(ticks) + stream.dropped == 40
        assert logs.dropped() == stream.dropped  # what status and metrics show
        note = next(e for e in events if e["event"] == "log_lines_dropped")
        assert note["lines"] == stream.dropped
        assert note["level"] == "warning"
        assert events[-1]["event"] == "after" or events[-2]["event"] == "after"

    def test_a_line_held_under_the_native_journal_reaches_it_without_another_held_line(
        self, pair: tuple[socket.socket, socket.socket], tmp_path: Path
    ) -> None:
        """Under journald's native protocol a line goes to the stream only when its datagram
        was refused: journald stopped reading both, and the stream is full too. Once it
        reads again, the held line reaches the stream while the daemon logs on natively.
        Before, it waited for the next refused datagram, which might never come."""
        ours, theirs = pair
        path = str(tmp_path / "journal.sock")
        with contextlib.ExitStack() as stack:
            journal = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
            journal.bind(path)
            other = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
            other.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:  # journald's queue full: a datagram is refused
                    other.sendto(b"MESSAGE=filler\n", path)
            self.fill(theirs)
            stderr = stack.enter_context(os.fdopen(os.dup(theirs.fileno()), "w"))
            st = os.fstat(stderr.fileno())
            logs.configure(
                level="info",
                fmt="auto",
                stream=stderr,
                environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                journal_socket=path,
            )

            async def main() -> list[str]:
                log = structlog.get_logger("powercast")
                log.warning("held", zone="a")  # refused, and the stream is full: held
                kept = self.drain(ours)  # journald reads both again
                journal.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while journal.recv(1 << 16):
                        pass
                log.info("later")  # sent as a datagram: nothing more comes to the stream
                deadline = asyncio.get_running_loop().time() + 2.0
                while not any("event=held" in line for line in kept):
                    if asyncio.get_running_loop().time() > deadline:
                        break
                    await asyncio.sleep(0.01)
                    kept += self.drain(ours)
                return kept

            kept = asyncio.run(main())
        assert [line for line in kept if "event=held" in line] == [
            "<4>event=held zone=a level=warning"
        ]
