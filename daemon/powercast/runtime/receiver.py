"""Taking datagrams off a socket in batches, for the controller and the relay."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import structlog

from powercast.pacing import Pacer

log = structlog.get_logger("powercast")


RECEIVE_BATCH = 64
"""Datagrams taken per turn of the event loop. asyncio reads one per turn (an epoll round
each); the rest of a burst is read right after it, so a flood costs one round per batch,
and timers and the watchdog still run between batches."""
QUIET_S = 0.001
"""A readiness this long after the previous batch was done with (its datagrams and what
``on_drained`` made of them) reads one datagram and does not look for a second: at
heartbeat rates that look (a read that fails, and its exception) costs about as much as
the datagram's own work. Datagrams left in the socket make it ready again at once, and
that readiness, close behind, is read in batches; so is every one after a full batch."""
RECEIVE_SIZE = 65536
"""Bytes asked of each read: any UDP payload, so an oversized datagram is seen (and
rejected) at its real size. asyncio's own read asks for 256 KiB, a fresh mapping per
datagram on some allocators: the reason this receiver reads for itself."""


class Receiver(asyncio.DatagramProtocol):
    """A datagram endpoint's protocol that does its own reading: once the transport is
    made, the socket is watched by this receiver, which reads up to RECEIVE_BATCH
    datagrams per readiness and calls ``on_datagram(data, source)`` for each; ``source``
    is the sender's address (what a verify budget is kept by). ``on_drained()``, when
    given, after each batch: the socket found empty, or RECEIVE_BATCH taken (what the
    batch changed is acted on once)."""

    def __init__(
        self,
        on_datagram: Callable[[bytes, str], None],
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pacer = Pacer()
        self._on_datagram = on_datagram
        self._on_drained = on_drained
        self._done_at = float("-inf")
        """When the last batch was done with, ``on_drained`` included."""
        self._full = False
        """The last batch took RECEIVE_BATCH datagrams: more are likely waiting."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The transport's socket, duplicated: asyncio hands out a wrapper without recv.
        self._sock = transport.get_extra_info("socket").dup()
        if isinstance(transport, asyncio.ReadTransport):  # the selector loop's transports
            transport.pause_reading()  # the transport's reader stops; this one takes over
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._sock.fileno(), self._drain)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Only where the transport could not be paused: the rest of the batch follows."""
        self._on_datagram(data, addr[0])
        self._drain(RECEIVE_BATCH - 1)

    def _drain(self, batch: int = RECEIVE_BATCH) -> None:
        if not self._full and time.monotonic() - self._done_at > QUIET_S:
            batch = 1
        try:
            self._full = self._read(batch) == RECEIVE_BATCH
        finally:
            if self._on_drained is not None:
                self._on_drained()
            self._done_at = time.monotonic()

    def _read(self, batch: int) -> int:
        """Up to ``batch`` datagrams, delivered; how many."""
        sock = self._sock
        if sock is None:
            return 0
        recvfrom, deliver = sock.recvfrom, self._on_datagram
        for taken in range(batch):
            try:
                data, addr = recvfrom(RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                return taken
            except OSError as exc:
                self.error_received(exc)
                return taken
            deliver(data, addr[0])
        return batch

    def error_received(self, exc: Exception) -> None:
        """An error on the socket (an ICMP error a peer caused): logged paced."""
        held = self._pacer.fields("socket_error", time.monotonic())
        if held is not None:
            log.warning("socket_error", error=str(exc), **held)
