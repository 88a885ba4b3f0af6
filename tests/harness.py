"""Real daemons for tests: processes, their JSON log lines, and a systemd notify socket."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tomli_w

from powercast import wire
from powercast.secrets import keygen

GROUP = "239.255.42.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def end(proc: subprocess.Popen[Any] | None, timeout: float = 5.0) -> None:
    """Stop a server the test started: SIGTERM, then SIGKILL if it is still there after
    ``timeout``; nothing when it already ended."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


def network(port: int) -> dict[str, Any]:
    return {"group": GROUP, "port": port, "interface": "127.0.0.1"}


def file_reading(status: str, inlet: float = 24.0, **power: Any) -> dict[str, Any]:
    """What a publisher's file source reads: power ``status`` (and ``power`` fields such
    as charge_pct) and one temperature, ``inlet``."""
    return {"power": {"status": status, **power}, "temperatures": {"inlet": inlet}}


def set_reading(path: Path, status: str, inlet: float = 24.0, **power: Any) -> None:
    """What the publisher's file source at ``path`` reads next, replaced atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(file_reading(status, inlet, **power)))
    tmp.replace(path)


def _config(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with each top-level key of ``overrides`` replacing its own; None drops one."""
    merged = {**base, **overrides}
    return {key: value for key, value in merged.items() if value is not None}


def _network(port: int | dict[str, Any]) -> dict[str, Any]:
    return network(port) if isinstance(port, int) else dict(port)


def controller_config(
    port: int | dict[str, Any], keys: Path | str, **overrides: Any
) -> dict[str, Any]:
    """A controller for write_toml: the loopback group on ``port`` (or this [network]
    table), signed datagrams with the keys in ``keys``, shedding and restoring after 0.3 s,
    JSON logs. Each of ``overrides`` replaces that top-level key (None drops it)."""
    base = {
        "role": "controller",
        "network": _network(port),
        "auth": {"keys_dir": str(keys)},
        "policy": {"shed_after_s": 0.3, "restore_after_s": 0.3},
        "log": {"format": "json"},
    }
    return _config(base, overrides)


def publisher_config(
    port: int | dict[str, Any], keys: Path | str, reading: Path, **overrides: Any
) -> dict[str, Any]:
    """A publisher for write_toml: ``ups-a``, a heartbeat every 0.2 s on the loopback group
    on ``port`` (or this [network] table), signed with key 1 in ``keys``, reading the file
    ``reading`` (see set_reading) every 0.05 s, JSON logs. Each of ``overrides`` replaces
    that top-level key (None drops it)."""
    base = {
        "role": "publisher",
        "id": "ups-a",
        "heartbeat_s": 0.2,
        "network": {"ttl": 1, "loop": True, **_network(port)},
        "auth": {"keys_dir": str(keys), "key_id": 1},
        "sources": [{"kind": "file", "path": str(reading), "interval_s": 0.05}],
        "log": {"format": "json"},
    }
    return _config(base, overrides)


def make_keys(directory: Path, *ids: int) -> Path:
    """A key directory as `powercast keygen` makes it."""
    directory.mkdir(mode=0o700, exist_ok=True)
    for key_id in ids or (1,):
        keygen(key_id, directory / f"{key_id}.key")
    return directory


class Notify:
    """A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def wait_for(self, prefix: str, timeout: float = 5.0) -> str:
        """The next message containing a line starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(message)
            if any(line.startswith(prefix) for line in message.splitlines()):
                return message
        raise AssertionError(f"no {prefix!r} from the daemon in {timeout} s: {self.messages}")

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """``python -m powercast ARGS`` with its JSON log lines collected from stderr.

    Each event is stamped with ``_at``, the test's monotonic time when it was read.
    ``proc`` takes a process started some other way (e.g. inside a network namespace).
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        proc: subprocess.Popen[bytes] | None = None,
        name: str = "daemon",
    ) -> None:
        self.name = name
        self.proc = proc or subprocess.Popen(
            [sys.executable, "-m", "powercast", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            try:
                event = json.loads(raw)
            except ValueError:
                event = {"event": "output", "text": raw.decode(errors="replace").rstrip()}
            event["_at"] = time.monotonic()
            self.events.put(event)

    def wait_for(self, event: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """The next log event named ``event`` whose fields match ``fields``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                got = self.events.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(got)
            if got.get("event") == event and all(got.get(k) == v for k, v in fields.items()):
                return got
        raise AssertionError(
            f"{self.name}: no {event} {fields} in {timeout:.2f} s;"
            f" saw: {[e.get('event') for e in self.seen]} last: {self.seen[-5:]}"
        )

    def wait_all(self, *events: str, timeout: float = 5.0) -> None:
        """Each of ``events`` once from now on, in whatever order they come."""
        deadline, start = time.monotonic() + timeout, len(self.seen)
        for event in dict.fromkeys(events):
            if not any(e.get("event") == event for e in self.seen[start:]):
                self.wait_for(event, max(0.0, deadline - time.monotonic()))

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the daemon to exit by itself; the rest of its output is in ``events``."""
        code = self.proc.wait(timeout)
        self._reader.join(2)
        return code

    def output(self) -> list[str]:
        """Lines that were not JSON log events (e.g. errors printed before logging starts)."""
        return [e["text"] for e in list(self.events.queue) if e.get("event") == "output"]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        return self.proc.returncode


@contextlib.contextmanager
def running(*args: str, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """A daemon that is always stopped, also when the test fails."""
    daemon = Daemon(*args, env=env)
    try:
        yield daemon
    finally:
        daemon.stop()


def next_message(
    listener: socket.socket,
    until: Callable[[wire.Announcement], bool] = lambda _: True,
    timeout: float = 5.0,
) -> wire.Announcement:
    """The next announcement a receiver on the group gets for which ``until`` holds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        listener.settimeout(left)
        message = wire.decode(listener.recv(2048)).message
        if until(message):
            return message
    raise AssertionError(f"no such announcement in {timeout} s")
