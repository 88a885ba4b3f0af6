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


class Receiver(asyncio.DatagramProtocol):
    """Calls ``on_datagram(data, source)`` for each datagram; ``source`` is the sender's
    address (what a verify budget is kept by)."""

    def __init__(self, on_datagram: Callable[[bytes, str], None]) -> None:
        self._sock: socket.socket | None = None
        self._pacer = Pacer()

        def received(data: bytes, addr: tuple[str, int]) -> None:
            on_datagram(data, addr[0])
            sock = self._sock
            if sock is None:
                return
            for _ in range(RECEIVE_BATCH - 1):
                try:
                    data, addr = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    self.error_received(exc)
                    return
                on_datagram(data, addr[0])

        self.datagram_received = received  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The transport's socket, duplicated: asyncio hands out a wrapper without recv.
        self._sock = transport.get_extra_info("socket").dup()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def error_received(self, exc: Exception) -> None:
        """An error on the socket (an ICMP error a peer caused): logged paced."""
        held = self._pacer.fields("socket_error", time.monotonic())
        if held is not None:
            log.warning("socket_error", error=str(exc), **held)
