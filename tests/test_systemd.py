"""Notifier against a real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from powercast.systemd import (
    Notifier,
    credentials_directory,
    runtime_directory,
    state_directory,
)


class Receiver:
    """The service manager's end: a bound datagram socket and what arrives on it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(2.0)

    def recv(self) -> str:
        """The next datagram, decoded as systemd does (UTF-8)."""
        return self.sock.recv(4096).decode("utf-8")

    def pending(self) -> list[bytes]:
        """Every datagram waiting right now, without blocking."""
        self.sock.setblocking(False)
        out: list[bytes] = []
        try:
            while True:
                out.append(self.sock.recv(4096))
        except BlockingIOError:
            return out
        finally:
            self.sock.settimeout(2.0)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    """A receiving socket bound to a path in tmp_path."""
    r = Receiver(str(tmp_path / "notify"))
    yield r
    r.sock.close()


@pytest.fixture
def notifier(receiver: Receiver) -> Iterator[Notifier]:
    """A Notifier whose NOTIFY_SOCKET is the receiver."""
    n = Notifier({"NOTIFY_SOCKET": receiver.address})
    yield n
    n.close()


@pytest.mark.system
class TestNotifier:
    def test_ready_sends_ready(self, notifier: Notifier, receiver: Receiver) -> None:
        """ready() sends READY=1 alone when no status is given."""
        notifier.ready()
        assert receiver.recv() == "READY=1"

    def test_ready_with_status(self, notifier: Notifier, receiver: Receiver) -> None:
        """ready(status) sends READY=1 and STATUS= in one datagram."""
        notifier.ready("serving 2 zones")
        assert receiver.recv() == "READY=1\nSTATUS=serving 2 zones"

    def test_ready_status_counts_as_sent(self, notifier: Notifier, receiver: Receiver) -> None:
        """status() with the text ready() just sent sends nothing more."""
        notifier.ready("serving")
        notifier.status("serving")
        assert receiver.recv() == "READY=1\nSTATUS=serving"
        assert receiver.pending() == []

    def test_reloading_carries_monotonic_usec(self, notifier: Notifier, receiver: Receiver) -> None:
        """reloading() sends RELOADING=1 and the CLOCK_MONOTONIC time in microseconds."""
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        first, second = receiver.recv().split("\n")
        assert first == "RELOADING=1"
        key, _, value = second.partition("=")
        assert key == "MONOTONIC_USEC"
        assert before <= int(value) <= after

    def test_stopping(self, notifier: Notifier, receiver: Receiver) -> None:
        """stopping() sends STOPPING=1."""
        notifier.stopping()
        assert receiver.recv() == "STOPPING=1"

    def test_watchdog(self, notifier: Notifier, receiver: Receiver) -> None:
        """watchdog() sends WATCHDOG=1."""
        notifier.watchdog()
        assert receiver.recv() == "WATCHDOG=1"

    def test_status_non_latin1_arrives(self, notifier: Notifier, receiver: Receiver) -> None:
        """A status with characters outside latin-1 arrives, as UTF-8, instead of vanishing."""
        notifier.status("shedding → z1")
        assert receiver.recv() == "STATUS=shedding → z1"

    def test_status_lone_surrogate_arrives(self, notifier: Notifier, receiver: Receiver) -> None:
        """A status UTF-8 cannot encode still arrives, the bad character replaced."""
        notifier.status("bad \udcff byte")
        assert receiver.recv() == "STATUS=bad ? byte"

    def test_repeated_status_sent_once(self, notifier: Notifier, receiver: Receiver) -> None:
        """An identical status is sent once; a different one is sent again."""
        notifier.status("idle")
        notifier.status("idle")
        notifier.status("busy")
        notifier.status("idle")
        got = [receiver.recv() for _ in range(3)]
        assert got == ["STATUS=idle", "STATUS=busy", "STATUS=idle"]
        assert receiver.pending() == []

    def test_status_newline_cannot_inject(self, notifier: Notifier, receiver: Receiver) -> None:
        """A newline in a status stays inside STATUS= rather than starting another assignment."""
        notifier.status("ok\nSTOPPING=1")
        assert receiver.recv() == "STATUS=ok STOPPING=1"

    def test_abstract_socket(self) -> None:
        """An "@name" NOTIFY_SOCKET reaches the abstract socket of that name."""
        receiver = Receiver(f"@powercast-test-{os.getpid()}-{uuid.uuid4().hex}")
        notifier = Notifier({"NOTIFY_SOCKET": receiver.address})
        try:
            notifier.ready()
            assert receiver.recv() == "READY=1"
        finally:
            notifier.close()
            receiver.sock.close()

    def test_enabled_when_socket_set(self, notifier: Notifier) -> None:
        """enabled is True when NOTIFY_SOCKET is set."""
        assert notifier.enabled

    def test_unset_is_noop(self) -> None:
        """Without NOTIFY_SOCKET the Notifier is disabled and every call does nothing."""
        notifier = Notifier({})
        assert not notifier.enabled
        notifier.ready("x")
        notifier.reloading()
        notifier.status("y")
        notifier.watchdog()
        notifier.stopping()
        notifier.close()

    def test_missing_socket_is_reported(self, tmp_path: Path) -> None:
        """A NOTIFY_SOCKET nobody listens on is logged once at warning and never raises."""
        with structlog.testing.capture_logs() as logs:
            notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "absent")})
            notifier.ready()
            notifier.status("a")
        assert [e["log_level"] for e in logs] == ["warning"]
        assert logs[0]["notify_socket"] == str(tmp_path / "absent")

    def test_send_failure_logged_once(self, tmp_path: Path) -> None:
        """When the socket goes away, sends fail quietly after one warning."""
        receiver = Receiver(str(tmp_path / "notify"))
        notifier = Notifier({"NOTIFY_SOCKET": receiver.address})
        receiver.sock.close()
        os.unlink(receiver.address)
        with structlog.testing.capture_logs() as logs:
            notifier.watchdog()
            notifier.status("a")
            notifier.stopping()
        notifier.close()
        assert [e["log_level"] for e in logs] == ["warning"]
        assert logs[0]["notification"] == "WATCHDOG=1"

    def test_full_queue_does_not_block(self, notifier: Notifier, receiver: Receiver) -> None:
        """With the manager's queue full a status fails at once, and is sent on the next call."""
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        filler.connect(receiver.address)
        filler.setblocking(False)
        with pytest.raises(BlockingIOError):  # noqa: PT012  # fill until the kernel refuses
            while True:
                filler.send(b"X")
        filler.close()
        with structlog.testing.capture_logs() as logs:
            notifier.status("busy")
        assert [e["log_level"] for e in logs] == ["warning"]
        assert set(receiver.pending()) == {b"X"}
        notifier.status("busy")
        assert receiver.recv() == "STATUS=busy"


@pytest.mark.unit
class TestWatchdogInterval:
    def test_half_of_watchdog_usec(self) -> None:
        """WATCHDOG_USEC=2000000 gives a 1.0 s ping interval."""
        assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_interval() == 1.0

    def test_own_pid(self) -> None:
        """WATCHDOG_PID naming this process keeps the interval."""
        env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
        assert Notifier(env).watchdog_interval() == 1.0

    def test_other_pid(self) -> None:
        """WATCHDOG_PID naming another process means no watchdog for us."""
        env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
        assert Notifier(env).watchdog_interval() is None

    @pytest.mark.parametrize("value", [None, "", "0", "soon", "-5"])
    def test_unset_zero_or_malformed(self, value: str | None) -> None:
        """WATCHDOG_USEC unset, empty, 0, negative or not a number gives None."""
        env = {} if value is None else {"WATCHDOG_USEC": value}
        assert Notifier(env).watchdog_interval() is None


@pytest.mark.unit
class TestDirectories:
    def test_runtime_directory(self) -> None:
        """RUNTIME_DIRECTORY's first entry, else /run/powercast when unset or empty."""
        assert runtime_directory({"RUNTIME_DIRECTORY": "/run/a:/run/b"}) == Path("/run/a")
        assert runtime_directory({"RUNTIME_DIRECTORY": ""}) == Path("/run/powercast")
        assert runtime_directory({}) == Path("/run/powercast")

    def test_state_directory(self) -> None:
        """STATE_DIRECTORY's first entry, else None: nothing is kept outside systemd."""
        assert state_directory({"STATE_DIRECTORY": "/var/lib/powercast"}) == Path(
            "/var/lib/powercast"
        )
        assert state_directory({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == Path("/var/lib/a")
        assert state_directory({}) is None

    def test_credentials_directory(self) -> None:
        """CREDENTIALS_DIRECTORY is one path, taken whole; None when unset or empty."""
        assert credentials_directory({"CREDENTIALS_DIRECTORY": "/run/credentials/x"}) == Path(
            "/run/credentials/x"
        )
        assert credentials_directory({"CREDENTIALS_DIRECTORY": ""}) is None
        assert credentials_directory({}) is None
