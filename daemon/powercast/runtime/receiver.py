"""Taking datagrams off a socket in batches, for the controller and the relay."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog

from powercast.pacing import Pacer

log = structlog.get_logger("powercast")


RECEIVE_BATCH = 64
"""Datagrams taken per turn of the event loop. asyncio reads one per turn (an epoll round
each); the rest of a burst is read right after it, so a flood costs one round per batch,
and timers and the watchdog still run between batches."""


class Receiver(asyncio.DatagramProtocol):
    """Hands each datagram to ``on_datagram``; with ``on_datagram_from``, its sender's
    address too (as the socket gives it: formatting waits until someone reads it), for a
    receiver that diagnoses rejections by source."""

    def __init__(
        self,
        on_datagram: Callable[[bytes], None] | None = None,
        *,
        on_datagram_from: Callable[[bytes, Any], None] | None = None,
    ) -> None:
        self._sock: socket.socket | None = None
        self._pacer = Pacer()
        if on_datagram_from is not None:
            self.datagram_received = self._with_sources(on_datagram_from)  # type: ignore[method-assign]
            return
        assert on_datagram is not None

        def received(data: bytes, addr: object) -> None:
            on_datagram(data)
            sock = self._sock
            if sock is None:
                return
            for _ in range(RECEIVE_BATCH - 1):
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    self.error_received(exc)
                    return
                on_datagram(data)

        self.datagram_received = received  # type: ignore[method-assign]

    def _with_sources(self, on_datagram: Callable[[bytes, Any], None]) -> Callable[..., None]:
        def received(data: bytes, addr: Any) -> None:
            on_datagram(data, addr)
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
                on_datagram(data, addr)

        return received

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
