"""Native journald logging against a real AF_UNIX datagram socket standing in for journald."""

from __future__ import annotations

import array
import errno
import fcntl
import io
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from powercast import logs


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Leave structlog's global configuration (and the module's journal socket) as found."""
    yield
    structlog.reset_defaults()
    logs._journal_sender(None)


def parse_entry(data: bytes) -> dict[str, str]:
    """Decode one native-protocol entry, both the NAME=value and the binary-safe form."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = end + 1
        else:
            name = line
            size = int.from_bytes(data[end + 1 : end + 9], "little")
            value = data[end + 9 : end + 9 + size]
            assert data[end + 9 + size : end + 10 + size] == b"\n"
            pos = end + 10 + size
        assert name.decode() not in fields
        fields[name.decode()] = value.decode()
    return fields


class Journal:
    """journald's end: a bound datagram socket, and the entries that arrive on it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(2.0)

    def entry(self) -> dict[str, str]:
        """The next entry, read from the datagram or from the memfd passed with it."""
        fds = array.array("i")
        data, ancdata, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, payload in ancdata:
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if fds:
            assert data == b""
            (fd,) = fds
            with os.fdopen(fd, "rb") as memfd:
                self.seals = fcntl.fcntl(memfd.fileno(), fcntl.F_GET_SEALS)
                data = os.pread(memfd.fileno(), 1 << 24, 0)  # the sender's offset is shared
        return parse_entry(data)

    def empty(self) -> bool:
        """True when nothing is waiting."""
        self.sock.setblocking(False)
        try:
            self.sock.recv(1)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2.0)
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    """A socket bound in a temporary directory, as journald's would be."""
    j = Journal(tmp_path / "journal.sock")
    yield j
    j.close()


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[TextIO]:
    """A real file to stand in for the stderr that systemd connects to the journal."""
    with (tmp_path / "stderr").open("w+") as f:
        yield f


def under_systemd(stream: TextIO) -> dict[str, str]:
    """The environment systemd gives a service whose stderr is this stream."""
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def written(stream: TextIO) -> str:
    """Everything written to the stream so far."""
    stream.flush()
    stream.seek(0)
    return stream.read()


@pytest.mark.unit
class TestJournalFieldName:
    def test_upper_cased_with_prefix(self) -> None:
        """A structlog key becomes POWERCAST_ and the key upper-cased."""
        assert logs.journal_field_name("state") == "POWERCAST_STATE"
        assert logs.journal_field_name("temperature_c") == "POWERCAST_TEMPERATURE_C"

    def test_invalid_characters_replaced(self) -> None:
        """Characters journald refuses in names become "_"."""
        assert logs.journal_field_name("temp_inlet-2.a") == "POWERCAST_TEMP_INLET_2_A"

    def test_cut_to_64(self) -> None:
        """A name longer than journald's limit of 64 characters is cut."""
        assert len(logs.journal_field_name("x" * 100)) == 64


@pytest.mark.unit
class TestJournalFields:
    def test_transition(self) -> None:
        """MESSAGE reads event then logfmt; each key is a POWERCAST_ field, priority is PRIORITY."""
        fields = logs.journal_fields(
            {
                "event": "transition",
                "level": "info",
                "priority": 6,
                "state": "shedding",
                "fans": "off",
                "temperature_c": 24.5,
                "stale": ["a"],
                "hottest": None,
            }
        )
        assert fields == [
            (
                "MESSAGE",
                'transition state=shedding fans=off temperature_c=24.5 stale=["a"] hottest=null',
            ),
            ("PRIORITY", "6"),
            ("SYSLOG_IDENTIFIER", "powercast"),
            ("POWERCAST_EVENT", "transition"),
            ("POWERCAST_LEVEL", "info"),
            ("POWERCAST_STATE", "shedding"),
            ("POWERCAST_FANS", "off"),
            ("POWERCAST_TEMPERATURE_C", "24.5"),
            ("POWERCAST_STALE", '["a"]'),
            ("POWERCAST_HOTTEST", "null"),
        ]

    def test_event_dict_unchanged(self) -> None:
        """Building the entry leaves the event dict as it was (the fallback renders it)."""
        event = {"event": "x", "priority": 4, "a": 1}
        logs.journal_fields(event)
        assert event == {"event": "x", "priority": 4, "a": 1}


@pytest.mark.unit
class TestEncodeJournalEntry:
    def test_plain_fields(self) -> None:
        """Values without a newline are NAME=value lines."""
        data = logs.encode_journal_entry([("MESSAGE", "a b=c"), ("PRIORITY", "4")])
        assert data == b"MESSAGE=a b=c\nPRIORITY=4\n"

    def test_newline_is_binary_safe(self) -> None:
        """A value with a newline is NAME, newline, 64-bit little-endian length, value, newline."""
        data = logs.encode_journal_entry([("POWERCAST_OUTPUT", "one\ntwo"), ("PRIORITY", "6")])
        assert data == b"POWERCAST_OUTPUT\n" + (7).to_bytes(8, "little") + b"one\ntwo\nPRIORITY=6\n"
        assert parse_entry(data) == {"POWERCAST_OUTPUT": "one\ntwo", "PRIORITY": "6"}

    def test_utf8(self) -> None:
        """Text goes as UTF-8; the length counts bytes, not characters."""
        data = logs.encode_journal_entry([("MESSAGE", "on → off\n")])
        assert parse_entry(data) == {"MESSAGE": "on → off\n"}


@pytest.mark.system
class TestJournalSender:
    def test_one_datagram(self, journal: Journal) -> None:
        """An entry arrives as one datagram on the socket."""
        sender = logs.JournalSender(journal.path)
        sender.send(b"MESSAGE=hello\n")
        sender.close()
        assert journal.entry() == {"MESSAGE": "hello"}

    def test_big_entry_goes_in_a_sealed_memfd(self, journal: Journal) -> None:
        """An entry too big for a datagram is passed as a sealed memfd, as libsystemd does."""
        wmem = int(Path("/proc/sys/net/core/wmem_default").read_text())
        big = "x" * (2 * wmem + 1)
        sender = logs.JournalSender(journal.path)
        sender.send(logs.encode_journal_entry([("MESSAGE", big)]))
        sender.close()
        assert journal.entry() == {"MESSAGE": big}
        wanted = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
        assert journal.seals & wanted == wanted

    def test_no_journal_raises(self, tmp_path: Path) -> None:
        """No socket at the path: the send raises (the renderer then falls back)."""
        sender = logs.JournalSender(str(tmp_path / "absent"))
        with pytest.raises(FileNotFoundError):
            sender.send(b"MESSAGE=x\n")
        sender.close()


@pytest.mark.system
class TestNativeJournal:
    def test_auto_under_systemd_sends_fields(self, journal: Journal, stream: TextIO) -> None:
        """auto under systemd with the journal socket present sends fields and writes nothing."""
        logs.configure(stream=stream, environ=under_systemd(stream), journal_socket=journal.path)
        structlog.get_logger().warning("transition", state="shedding", fans="off")
        entry = journal.entry()
        assert entry["MESSAGE"] == "transition state=shedding fans=off"
        assert entry["PRIORITY"] == "4"
        assert entry["SYSLOG_IDENTIFIER"] == "powercast"
        assert entry["POWERCAST_EVENT"] == "transition"
        assert entry["POWERCAST_STATE"] == "shedding"
        assert entry["POWERCAST_FANS"] == "off"
        assert written(stream) == ""

    @pytest.mark.parametrize(
        ("method", "priority"),
        [("critical", "2"), ("error", "3"), ("warning", "4"), ("info", "6"), ("debug", "7")],
    )
    def test_priorities(self, journal: Journal, stream: TextIO, method: str, priority: str) -> None:
        """Each level reaches the journal with its syslog PRIORITY."""
        logs.configure(
            level="debug", stream=stream, environ=under_systemd(stream), journal_socket=journal.path
        )
        getattr(structlog.get_logger(), method)("x")
        assert journal.entry()["PRIORITY"] == priority

    def test_level_filter(self, journal: Journal, stream: TextIO) -> None:
        """Events below the configured level are not sent."""
        logs.configure(
            level="info", stream=stream, environ=under_systemd(stream), journal_socket=journal.path
        )
        structlog.get_logger().debug("quiet")
        assert journal.empty()

    def test_exception_keeps_its_lines(self, journal: Journal, stream: TextIO) -> None:
        """A traceback goes whole into POWERCAST_EXCEPTION; MESSAGE stays one line."""
        logs.configure(stream=stream, environ=under_systemd(stream), journal_socket=journal.path)
        try:
            1 / 0  # noqa: B018  # raise something to log
        except ZeroDivisionError:
            structlog.get_logger().exception("boom")
        entry = journal.entry()
        assert entry["PRIORITY"] == "3"
        assert entry["POWERCAST_EXCEPTION"].startswith("Traceback (most recent call last):\n")
        assert entry["POWERCAST_EXCEPTION"].endswith("ZeroDivisionError: division by zero")
        assert "\n" not in entry["MESSAGE"]

    def test_no_socket_writes_lines(self, tmp_path: Path, stream: TextIO) -> None:
        """Under systemd but without the journal socket, auto writes "<N>" lines."""
        absent = str(tmp_path / "absent")
        logs.configure(stream=stream, environ=under_systemd(stream), journal_socket=absent)
        structlog.get_logger().warning("hello", a=1)
        assert written(stream) == "<4>event=hello a=1 level=warning\n"

    def test_journald_gone_falls_back(self, journal: Journal, stream: TextIO) -> None:
        """A send that fails (journald stopped, socket file left) writes the "<N>" line."""
        logs.configure(stream=stream, environ=under_systemd(stream), journal_socket=journal.path)
        journal.close()  # the path stays; connecting now gives ECONNREFUSED
        structlog.get_logger().error("still_here", state="failsafe")
        assert written(stream) == "<3>event=still_here state=failsafe level=error\n"

    def test_queue_full_falls_back(self, journal: Journal, stream: TextIO) -> None:
        """With journald's queue full the send fails at once (EAGAIN) instead of blocking."""
        logs.configure(stream=stream, environ=under_systemd(stream), journal_socket=journal.path)
        log = structlog.get_logger()
        for n in range(10_000):
            log.info("flood", n=n)
            if written(stream):
                break
        assert written(stream).startswith("<6>event=flood n=")

    def test_not_under_systemd_ignores_socket(self, journal: Journal) -> None:
        """Outside systemd (no JOURNAL_STREAM) auto writes logfmt even with the socket there."""
        out = io.StringIO()
        logs.configure(stream=out, environ={}, journal_socket=journal.path)
        structlog.get_logger().info("hello")
        assert out.getvalue().startswith("ts=")
        assert journal.empty()

    def test_explicit_journal_format_writes_lines(self, journal: Journal, stream: TextIO) -> None:
        """format = "journal" keeps the "<N>" lines, socket or not."""
        logs.configure(
            stream=stream, fmt="journal", environ=under_systemd(stream), journal_socket=journal.path
        )
        structlog.get_logger().info("hello")
        assert written(stream) == "<6>event=hello level=info\n"
        assert journal.empty()

    def test_reconfigure_closes_socket(self, journal: Journal, stream: TextIO) -> None:
        """Configuring again for another format closes the journal socket."""
        logs.configure(stream=stream, environ=under_systemd(stream), journal_socket=journal.path)
        sender = logs._journal_sender(journal.path)
        assert sender is not None
        logs.configure(stream=stream, fmt="logfmt")
        with pytest.raises(OSError, match="Bad file descriptor") as info:
            sender.send(b"MESSAGE=x\n")
        assert info.value.errno == errno.EBADF
