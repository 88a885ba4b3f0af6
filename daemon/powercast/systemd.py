"""Tell the service manager how the daemon is doing: ready, reloading, stopping, status, watchdog;
and find the directories it made for us: runtime, state, credentials.

Everything here is a no-op when NOTIFY_SOCKET is unset, so the daemon runs the same outside
systemd. The environment is read once, when the Notifier is made; tests hand in a mapping
instead of touching os.environ.

sdnotify does the sending. Left to itself it swallows every error (a wrong NOTIFY_SOCKET, a
STATUS= it cannot encode), so it runs with debug=True and the errors are caught here, logged
once at warning, and never raised: losing a notification must not stop the daemon.

The directories come from RUNTIME_DIRECTORY, STATE_DIRECTORY and CREDENTIALS_DIRECTORY, read
here and nowhere else. systemd sets the first two to a colon-separated list when a unit names
several directories; ours name one, and the first entry is the one we use.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import sdnotify  # type: ignore[import-untyped]  # sdnotify 0.3.2 (2017) ships no type hints
import structlog

_log = structlog.get_logger(__name__)

RUN_DIR: Final = Path("/run/powercast")
"""The runtime directory outside systemd: the one the units' RuntimeDirectory=powercast makes."""


def _first_directory(name: str, environ: Mapping[str, str] | None) -> Path | None:
    """The first entry of the colon-separated list in ``name``, None when unset or empty."""
    env = os.environ if environ is None else environ
    first = env.get(name, "").split(":", maxsplit=1)[0]
    return Path(first) if first else None


def runtime_directory(environ: Mapping[str, str] | None = None) -> Path:
    """RuntimeDirectory= (control sockets, the leave-fans marker), else :data:`RUN_DIR`."""
    return _first_directory("RUNTIME_DIRECTORY", environ) or RUN_DIR


def state_directory(environ: Mapping[str, str] | None = None) -> Path | None:
    """StateDirectory= (what the controller keeps across restarts), None outside systemd."""
    return _first_directory("STATE_DIRECTORY", environ)


def credentials_directory(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where LoadCredential= put the unit's secrets, None when it loaded none.

    One path, never a list: it is taken whole.
    """
    env = os.environ if environ is None else environ
    credentials = env.get("CREDENTIALS_DIRECTORY", "")
    return Path(credentials) if credentials else None


def _socket_address(value: str) -> str:
    """Turn NOTIFY_SOCKET into a connect() address: a leading '@' names an abstract socket."""
    return "\0" + value[1:] if value.startswith("@") else value


class _AddressedNotifier(sdnotify.SystemdNotifier):  # type: ignore[misc]  # base is untyped
    """sdnotify's notifier connected to the address we were given.

    Upstream's __init__ reads os.environ itself, which would ignore the mapping handed to
    Notifier; this does the same connect on our address, with debug=True so that its notify()
    raises instead of dropping messages silently. The socket is non-blocking: with the
    manager's queue full a send fails (and is logged) rather than stalling the event loop.
    """

    def __init__(self, address: str) -> None:
        self.debug = True
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.socket.connect(_socket_address(address))
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise


def _one_line(text: str) -> str:
    """Keep a STATUS= text on its line: a newline in it would start another assignment."""
    return text.replace("\r", " ").replace("\n", " ")


def _wire_text(message: str) -> str:
    """The message as sdnotify must see it so that systemd receives UTF-8.

    sdnotify encodes to latin-1 and, without debug, drops anything it cannot encode (a status
    with "→" vanished). Encoding to UTF-8 here and handing over the bytes as latin-1 characters
    makes its latin-1 step reproduce exactly those bytes, and systemd wants UTF-8 anyway (it
    ignores a STATUS= that is not). Lone surrogates become "?".
    """
    return message.encode("utf-8", errors="replace").decode("latin-1")


def _parse_usec(value: str | None) -> int | None:
    """WATCHDOG_USEC as a positive integer, or None when unset, empty, malformed or 0."""
    if not value:
        return None
    try:
        usec = int(value)
    except ValueError:
        return None
    return usec if usec > 0 else None


class Notifier:
    """sd_notify(3) messages for this process, sent to NOTIFY_SOCKET when it is set."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET", "")
        self.enabled: bool = bool(self._address)
        self._watchdog_usec = _parse_usec(env.get("WATCHDOG_USEC"))
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._last_status: str | None = None
        self._warned = False
        self._sender: _AddressedNotifier | None = None
        if self.enabled:
            try:
                self._sender = _AddressedNotifier(self._address)
            except OSError as err:
                # Reported once here; every later send is then a quiet no-op.
                self._warned = True
                _log.warning(
                    "systemd notify socket unusable, notifications disabled",
                    notify_socket=self._address,
                    error=str(err),
                )

    def ready(self, status: str | None = None) -> None:
        """Startup is finished: Type=notify units count as started from here."""
        if status is None:
            self._send("READY=1")
        elif self._send(f"READY=1\nSTATUS={_one_line(status)}"):
            self._last_status = status

    def reloading(self) -> None:
        """A reload began; systemd wants the monotonic time to pair it with the READY=1 after."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Shutdown began, so systemd shows "deactivating" rather than a hang."""
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        """Show text in `systemctl status`; repeating the shown text sends nothing."""
        if text == self._last_status:
            return
        if self._send(f"STATUS={_one_line(text)}"):
            self._last_status = text

    def watchdog(self) -> None:
        """Keep-alive for WatchdogSec=; call it every watchdog_interval() seconds."""
        self._send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog() calls (half the timeout), None when no watchdog is ours.

        WATCHDOG_PID naming another process means the variables were inherited from a parent
        that systemd watches, not us.
        """
        if self._watchdog_usec is None:
            return None
        if self._watchdog_pid and self._watchdog_pid != str(os.getpid()):
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        """Release the socket; later calls are no-ops."""
        if self._sender is not None:
            self._sender.socket.close()
            self._sender = None

    def _send(self, message: str) -> bool:
        """Send one datagram; False when disabled or when it failed (logged the first time)."""
        if self._sender is None:
            return False
        try:
            self._sender.notify(_wire_text(message))
        except OSError as err:
            if not self._warned:
                self._warned = True
                _log.warning(
                    "systemd notification failed",
                    notify_socket=self._address,
                    notification=message.split("\n", 1)[0],
                    error=str(err),
                )
            return False
        return True
