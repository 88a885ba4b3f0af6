"""The publisher daemon: sources read on their intervals, announcements on the group."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from powercast import config as cfg
from powercast import net, wire
from powercast import status as report
from powercast.announcer import Announcer
from powercast.auth import Keyring
from powercast.config import PublisherConfig, Reading
from powercast.pacing import Backoff
from powercast.runtime.lifecycle import Daemon
from powercast.sources import Reader, SourceError, make_reader
from powercast.sources.base import Woken, pauser
from powercast.systemd import Notifier

log = structlog.get_logger("powercast")


class PublisherDaemon(Daemon[PublisherConfig]):
    role = "publisher"

    def __init__(
        self,
        path: Path,
        config: PublisherConfig,
        keyring: Keyring,
        notifier: Notifier | None = None,
    ):
        super().__init__(path, config, keyring, notifier)
        self.loop = asyncio.get_running_loop()
        self.announcer = Announcer(config)
        self._sock: socket.socket | None = None
        self._peers: list[tuple[socket.socket, tuple[str, int]]] = []
        self.peer_errors: dict[str, int] = {}
        self._readers: list[Reader] = []
        self._failing: dict[int, str] = {}
        self._pollers: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._sign = _signer(config, keyring)
        self.sent = 0
        self.send_errors = 0

    async def start(self, tg: asyncio.TaskGroup) -> None:
        self._tg = tg
        self._sock = self._open(self.config.network)
        self._peers = _open_peers(self.config.network)
        self._start_sources(self.config)
        tg.create_task(self._sender(), name="sender")

    def _open(self, network: cfg.PublisherNetwork) -> socket.socket:
        sock = net.open_sender(
            network.group, network.port, network.interface, ttl=network.ttl, loop=network.loop
        )
        log.info(
            "sending",
            group=network.group,
            port=network.port,
            interface=network.interface,
            ttl=network.ttl,
        )
        return sock

    def _start_sources(self, config: PublisherConfig) -> None:
        assert self._tg is not None
        for task in self._pollers:
            task.cancel()
        start = time.monotonic()
        self._readers = [make_reader(s, i, start) for i, s in enumerate(config.sources)]
        self._failing = {}
        self._pollers = [
            self._tg.create_task(self._poll(i, reader), name=reader.name)
            for i, reader in enumerate(self._readers)
        ]

    async def apply(self, new: PublisherConfig, keyring: Keyring) -> None:
        if new.network != self.config.network:
            sock = self._open(new.network)
            if self._sock is not None:
                self._sock.close()
            self._sock = sock
            _close_peers(self._peers)
            self._peers = _open_peers(new.network)
        self._sign = _signer(new, keyring)
        if new.sources != self.config.sources:
            # A new epoch: receivers forget the sensors of the old sources with it.
            self.announcer = Announcer(new)
            self._start_sources(new)
        else:
            self.announcer.config = new
        self._wake.set()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        _close_peers(self._peers)

    @property
    def _latest(self) -> list[Reading | None]:
        """Each source's last reading (None: failed or not read yet)."""
        return self.announcer.latest

    def status(self) -> str:
        a = self.announcer
        n = self.config.network
        return (
            f"announcing {a.power.status.value}, {len(a.temperatures)} temperatures"
            f" to {n.group}:{n.port} every {self.config.heartbeat_s:g} s"
        )

    async def _poll(self, index: int, reader: Reader) -> None:
        """Read one source on its interval; a failure is logged once, with its reason, and
        retried with backoff (interval_s doubling up to 30 s; back to interval_s once it
        reads again). No failure of a source ends the daemon; the reader is closed when
        its poller ends (reload, stop)."""
        backoff = Backoff(reader.interval_s)
        pause = pauser(reader)
        try:
            while True:
                try:
                    async with asyncio.timeout(max(reader.interval_s, 1.0) * 5):
                        reading: Reading | None = await reader.read()
                except Exception as err:  # SourceError, TimeoutError, or a bug: log it, go on
                    reading = None
                    if isinstance(err, SourceError):
                        reason = str(err)
                    elif isinstance(err, TimeoutError):
                        reason = f"{reader.name}: no answer (timed out)"
                    else:
                        reason = f"{reader.name}: {type(err).__name__}: {err}"
                    if self._failing.get(index) != reason:
                        log.warning("source_failed", source=reader.name, error=reason)
                    self._failing[index] = reason
                else:
                    if self._failing.pop(index, None) is not None:
                        log.info("source_recovered", source=reader.name)
                untried = self.announcer.due is None
                news = self.announcer.read(index, reading, self.loop.time())
                if news:
                    a = self.announcer
                    log.info(
                        "reading_changed",
                        power=a.power.status.value,
                        change=a.change,
                        **{f"temp_{k}": v for k, v in a.temperatures.items()},
                    )
                    self.notifier.status(self.status_line())
                if news or (untried and self.announcer.due is not None):
                    self._wake.set()  # news, or the attempt the first announcement waited for
                elif self.announcer.may_send(self.loop.time()):
                    self._wake.set()  # a heartbeat due soon goes with this wake-up
                await pause(backoff.delay(reading is not None))
        finally:
            reader.close()

    async def _sender(self) -> None:
        while True:
            due = self.announcer.due  # None until every source has been tried once
            now = self.loop.time()
            delay = None if due is None else due - now
            if delay is None or not self.announcer.may_send(now):
                self._wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            self._send(self.announcer.announce(self.loop.time(), time.time()))

    def _send(self, message: wire.Announcement) -> None:
        assert self._sock is not None
        n = self.config.network
        try:
            data = wire.encode(message, key_id=self.config.auth.key_id, sign=self._sign)
        except wire.EncodeError as err:
            self.send_errors += 1
            log.error("send_failed", error=str(err))
            return
        try:
            self._sock.sendto(data, (n.group, n.port))
        except OSError as err:
            self.send_errors += 1
            if self.send_errors == 1 or self.send_errors % 100 == 0:
                log.error("send_failed", error=str(err), errors=self.send_errors, **_where(n))
        else:
            self.sent += 1
        for sock, peer in self._peers:  # network.unicast_peers: the same bytes, each peer
            try:
                sock.sendto(data, peer)
            except OSError as err:
                name = f"{peer[0]}:{peer[1]}"
                errors = self.peer_errors[name] = self.peer_errors.get(name, 0) + 1
                if errors == 1 or errors % 100 == 0:
                    log.error("send_failed", peer=name, error=str(err), errors=errors)

    # --- operator tools --------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        latest, failing = self._latest, self._failing
        sources = [
            {
                "name": reader.name,
                "kind": source.__struct_config__.tag,
                "ok": index not in failing,
                "error": failing.get(index),
                "has_reading": index < len(latest) and latest[index] is not None,
                **_traps(reader),
            }
            for index, (reader, source) in enumerate(
                zip(self._readers, self.config.sources, strict=False)
            )
        ]
        own = report.publisher(
            self.announcer,
            config=self.config,
            sources=sources,
            sent=self.sent,
            send_errors=self.send_errors,
            keyring=self.keyring,
            now=self.loop.time(),
        )
        return {**self.common(), **own}


def _traps(reader: Reader) -> dict[str, Any]:
    """A source's trap listener in the status document (snmp with ``traps``)."""
    if isinstance(reader, Woken) and (traps := reader.trap_status()) is not None:
        return {"traps": traps}
    return {}


def _signer(config: PublisherConfig, keyring: Keyring) -> Callable[[bytes], bytes] | None:
    return keyring.signer(config.auth.key_id) if config.auth.key_id else None


def _where(network: cfg.Network) -> dict[str, Any]:
    return {"group": network.group, "port": network.port, "interface": network.interface}


def _open_peers(network: cfg.PublisherNetwork) -> list[tuple[socket.socket, tuple[str, int]]]:
    """network.unicast_peers, each with a socket of its address family (shared)."""
    peers = [cfg.udp_address(p, "network.unicast_peers") for p in network.unicast_peers]
    sockets: dict[int, socket.socket] = {}
    for address, _ in peers:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        if family not in sockets:
            sockets[family] = net.open_unicast_sender(family)
    if peers:
        log.info("sending_unicast", peers=[f"{a}:{p}" for a, p in peers])
    return [(sockets[socket.AF_INET6 if ":" in a else socket.AF_INET], (a, p)) for a, p in peers]


def _close_peers(peers: list[tuple[socket.socket, tuple[str, int]]]) -> None:
    for sock in {id(s): s for s, _ in peers}.values():
        sock.close()
