"""The asyncio runtime around the pure cores: sockets, clocks, signals, processes.

Both daemons share one lifecycle (:class:`Daemon`): load the config, open the socket,
tell systemd READY=1, ping the watchdog from the event loop, reload on SIGHUP (keeping
the running config when the new one is bad), stop cleanly on SIGTERM. Every task has
an owner: the TaskGroup in :meth:`Daemon.run`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import structlog

from powercast import config as cfg
from powercast import control, net, persist, wire
from powercast import status as report
from powercast.actions import ActionQueue
from powercast.actuators import Worker, make_driver
from powercast.actuators.base import SAFE_POSITION
from powercast.announcer import Announcer, merge
from powercast.auth import Keyring, KeyringError, load_keys
from powercast.config import ControllerConfig, PublisherConfig, Reading, RelayConfig
from powercast.controller import Controller
from powercast.policy import FANS_ON, Decision, Override
from powercast.sources import Reader, SourceError, make_reader
from powercast.systemd import Notifier
from powercast.tally import Tally

log = structlog.get_logger("powercast")

C = TypeVar("C", PublisherConfig, ControllerConfig, RelayConfig)


class _Stopping(Exception):
    """Raised inside the TaskGroup to end it on SIGTERM."""


class Daemon(Generic[C]):
    """Lifecycle shared by the publisher and the controller."""

    role: cfg.Role

    def __init__(
        self, path: Path, config: C, keyring: Keyring, notifier: Notifier | None = None
    ) -> None:
        self.path = path
        self.config: C = config
        self.keyring = keyring
        self.loaded_at = time.time()
        self.notifier = notifier or Notifier()
        self._reload = asyncio.Event()
        self._stop = asyncio.Event()
        self.tally = Tally()
        self.control_path: Path | None = None
        self.metrics_address: str | None = None

    # Subclasses fill these in.
    async def start(self, tg: asyncio.TaskGroup) -> None:
        raise NotImplementedError

    async def apply(self, new: C, keyring: Keyring) -> None:
        """Switch to ``new``; raise (NetworkError) to keep the running config."""
        raise NotImplementedError

    def close(self) -> None:
        """Release sockets; runs on every exit path."""

    def status(self) -> str:
        raise NotImplementedError

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:
            async with asyncio.TaskGroup() as tg:
                await self.start(tg)
                self.start_tools(tg)
                self.notifier.ready(self.status())
                log.info("ready", role=self.role, config=str(self.path), pid=os.getpid())
                tg.create_task(self._watchdog(), name="watchdog")
                tg.create_task(self._reloader(), name="reloader")
                await self._stop.wait()
                self.notifier.stopping()
                log.info("stopping", role=self.role)
                raise _Stopping
        except* _Stopping:
            pass
        finally:
            self.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _watchdog(self) -> None:
        """Pinging from the loop itself: a hung loop stops the pings and systemd acts."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _reloader(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            self.notifier.reloading()
            log.info("reloading", config=str(self.path))
            try:
                new = cfg.load(self.path, self.role)
                keyring = load_keys(new)
                await self.apply(new, keyring)  # type: ignore[arg-type]  # load() gave this role
            except (cfg.ConfigError, KeyringError, net.NetworkError) as err:
                log.error("reload_failed", error=str(err), keeping="running config")
            else:
                self.config = new  # type: ignore[assignment]
                self.keyring = keyring
                self.loaded_at = time.time()
                log.info("reloaded", config=str(self.path))
            self.notifier.ready(self.status())

    # --- operator tools (issue 8): control socket and metrics endpoint ------------------

    def describe(self) -> dict[str, Any]:
        """The status document that `powercast status --json` prints (status.py); a role
        without its own gives the fields every daemon has."""
        return report.of_daemon(self, str(self.control_path))

    def control_handlers(self) -> dict[str, control.Handler]:
        """Requests the control socket answers."""
        return {"status": lambda request, peer: {"status": self.describe()}}

    def start_tools(self, tg: asyncio.TaskGroup) -> None:
        """The control socket and, when configured, the metrics endpoint, as tasks of ``tg``.

        Neither failing stops the daemon (the fans matter more than a status line): it
        logs why, at error, and runs on. Both are set up at start; changing
        ``control.socket`` or ``metrics.listen`` takes a restart.
        """
        path = control.socket_path(self.config.control.socket, self.role)
        try:
            sock = control.open_socket(path)
        except control.ControlError as err:
            log.error(
                "control_unavailable",
                error=str(err),
                hint="set control.socket, or RuntimeDirectory=powercast in the unit",
            )
        else:
            self.control_path = path
            server = control.Server(self.control_handlers())
            tg.create_task(server.serve(sock, path), name="control")
            log.info("control_listening", socket=str(path))
        listen = self.config.metrics.listen
        if not listen:
            return
        from powercast import metrics  # noqa: PLC0415  # prometheus-client only when asked

        try:
            msock = metrics.open_listener(listen)
        except OSError as err:
            log.error("metrics_unavailable", listen=listen, error=err.strerror or str(err))
            return
        tg.create_task(metrics.serve(msock, metrics.registry_for(self)), name="metrics")
        host, port = msock.getsockname()[:2]
        self.metrics_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.info("metrics_listening", address=self.metrics_address)


# --- controller ----------------------------------------------------------------------------


RECEIVE_BATCH = 64
"""Datagrams taken per turn of the event loop. asyncio reads one per turn (an epoll round
each); the rest of a burst is read right after it, so a flood costs one round per batch,
and timers and the watchdog still run between batches."""


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes], None]) -> None:
        self._sock: socket.socket | None = None

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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The transport's socket, duplicated: asyncio hands out a wrapper without recv.
        self._sock = transport.get_extra_info("socket").dup()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def error_received(self, exc: Exception) -> None:
        log.warning("socket_error", error=str(exc))


class ControllerDaemon(Daemon[ControllerConfig]):
    role = "controller"

    def __init__(
        self,
        path: Path,
        config: ControllerConfig,
        keyring: Keyring,
        notifier: Notifier | None = None,
        *,
        dry_run: bool = False,
    ):
        super().__init__(path, config, keyring, notifier)
        self.loop = asyncio.get_running_loop()
        self._save_failed = False
        self.core = Controller(config, keyring)
        self.actions = ActionQueue()
        self.dry_run = dry_run
        self.workers: dict[str, list[Worker]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._unicast: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._settled: set[str] = set()
        state_dir = config.persist.state_dir or os.environ.get("STATE_DIRECTORY", "")
        self._state_dir = Path(state_dir.split(":")[0]) if state_dir else None

    async def start(self, tg: asyncio.TaskGroup) -> None:
        self._tg = tg
        # Restore and begin the grace before the sockets open: a datagram taken earlier
        # would be judged without either, and its save would overwrite the saved state.
        now, wall = self.loop.time(), time.time()
        saved = persist.load(self._state_dir) if self._state_dir else None
        restored = persist.restore(saved, self.core.zones, now, wall) if saved else []
        if restored:
            log.info("state_restored", zones={z: self.core.zones[z].state for z in restored})
        if self._state_dir is None:
            log.info("state_not_kept", hint="set persist.state_dir, or StateDirectory= in the unit")
        self.core.start(now)  # before the probes: datagrams may arrive while they run
        self._transport = await self._listen(self.config.network)
        self._unicast = await self._listen_unicast(self.config.network)
        tg.create_task(self.actions.run(), name="actions")
        await self._start_workers(saved.actuators if saved and restored else {})
        self._reconcile()  # decisions taken during the probes had no workers to tell
        self._arm()

    async def _start_workers(self, known: dict[str, bool | None]) -> None:
        """One worker per actuator; each learns its real position before anything moves."""
        assert self._tg is not None
        for task in self._worker_tasks:
            task.cancel()
        self.workers = {}
        for zone in self.core.zone_configs.values():
            workers = []
            for index, actuator in enumerate(zone.actuators):
                key = f"{zone.name}/{index}"
                driver = make_driver(actuator, f"{key}({actuator.__struct_config__.tag})")
                worker = Worker(driver, zone.name, known=known.get(key), dry_run=self.dry_run)
                worker.on_change = self._actuator_changed
                await worker.probe()
                workers.append(worker)
            self.workers[zone.name] = workers
        self._worker_tasks = [
            self._tg.create_task(w.run(), name=w.driver.name)
            for ws in self.workers.values()
            for w in ws
        ]
        self._settled = set()

    async def _listen(self, network: cfg.Network) -> asyncio.DatagramTransport:
        sock = net.open_receiver(network.group, network.port, network.interface)
        transport, _ = await self.loop.create_datagram_endpoint(
            lambda: _Receiver(self._on_datagram), sock=sock
        )
        log.info("listening", group=network.group, port=network.port, interface=network.interface)
        return transport

    async def _listen_unicast(
        self, network: cfg.ControllerNetwork
    ) -> asyncio.DatagramTransport | None:
        """network.unicast_listen (off when empty): datagrams sent to this host directly,
        taken by the very same path as the group's."""
        if not network.unicast_listen:
            return None
        where = cfg.udp_address(network.unicast_listen, "", listen_port=network.port)
        sock = net.open_unicast_receiver(*where)
        transport, _ = await self.loop.create_datagram_endpoint(
            lambda: _Receiver(self._on_datagram), sock=sock
        )
        log.info("listening_unicast", address=where[0], port=where[1])
        return transport

    async def apply(self, new: ControllerConfig, keyring: Keyring) -> None:
        if new.network != self.config.network:
            transport = await self._listen(new.network)  # fails before the old one is closed
            try:
                unicast = await self._listen_unicast(new.network)
            except net.NetworkError:
                transport.close()
                raise
            for old in (self._transport, self._unicast):
                if old is not None:
                    old.close()
            self._transport, self._unicast = transport, unicast
        old_zones = self.config.effective_zones()
        self._decided(self.core.reconfigure(new, keyring, self.loop.time()))
        if new.effective_zones() != old_zones:
            # A position is carried over only to the same actuator: another one in its
            # place has its own, unknown until read or written.
            before, after = (
                {f"{z.name}/{i}": a for z in zones for i, a in enumerate(z.actuators)}
                for zones in (old_zones, new.effective_zones())
            )
            known = {
                key: w.known
                for zone, ws in self.workers.items()
                for i, w in enumerate(ws)
                if (key := f"{zone}/{i}") in after and after[key] == before.get(key)
            }
            released = {k: a for k, a in before.items() if after.get(k) != a}
            await self._start_workers(known)
            self._reconcile()
            if released and self._tg is not None:
                self._tg.create_task(self._release(released), name="release")
        self._arm()

    async def _release(self, released: dict[str, cfg.Actuator]) -> None:
        """Actuators the new config no longer drives are left in their safe state, fans on:
        nothing will move them again, so they must not stay off."""
        for key, actuator in released.items():
            driver = make_driver(actuator, f"{key}({actuator.__struct_config__.tag})")
            try:
                async with asyncio.timeout(driver.timeout_s):
                    await driver.apply(SAFE_POSITION)
            except Exception as err:  # one device's failure must not end the daemon
                log.error(
                    "actuator_release_failed", actuator=driver.name, error=str(err) or repr(err)
                )
            else:
                log.warning("actuator_released", actuator=driver.name, position="on")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._unicast is not None:
            self._unicast.close()
        if self._timer is not None:
            self._timer.cancel()

    def status(self) -> str:
        now = self.loop.time()
        fresh = sum(s.fresh(now) for s in self.core.sessions.values())
        heard = len(self.core.sessions)
        zones = self.core.zones
        if len(zones) == 1:
            policy = self.core.policy
            text = f"{policy.state}: {policy.reason}"
        else:
            text = "; ".join(f"{name} {p.state}" for name, p in zones.items())
        failed = [w.driver.name for ws in self.workers.values() for w in ws if w.status == "failed"]
        alarm = f"; ACTUATOR FAILED, position unknown: {', '.join(failed)}" if failed else ""
        return f"{text} ({fresh}/{heard} publishers fresh){alarm}"

    def _actuator_changed(self, worker: Worker) -> None:
        """Keep the state file and systemd's status line true to the actuators."""
        self._save()
        self.notifier.status(self.status())

    def _on_datagram(self, data: bytes) -> None:
        accepted = self.core.accepted
        decisions = self.core.receive(data, self.loop.time(), time.time())
        if decisions or len(self._settled) < len(self.core.zones):
            self._decided(decisions)  # also reconciles zones the data just confirmed
        if self.core.notices:
            for notice in self.core.notices:
                log.warning(notice.event, **notice.fields)
            self.core.notices.clear()
        if decisions or self.core.accepted != accepted:  # a rejected datagram moves nothing
            self._arm()

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        self._decided(self.core.tick(self.loop.time()))
        if len(self._settled) < len(self.core.zones):
            self._reconcile()
        self._arm()

    def _arm(self) -> None:
        """Keep one timer, at the core's next deadline."""
        deadline = self.core.deadline()
        if deadline is None or deadline >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _decided(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            self.tally.transition(decision.zone, decision.previous, decision.state)
            log.info(
                "transition",
                zone=decision.zone,
                previous=decision.previous,
                state=decision.state,
                reason=decision.reason,
                fans="on" if decision.fans_on else "off",
                **decision.situation.describe(),
            )
            zone = self.core.zone_configs[decision.zone]
            if self.dry_run:
                for action in zone.actions:
                    if action.on == decision.state:
                        log.info("action_dry_run", zone=decision.zone, argv=action.argv)
            else:
                self.actions.submit(decision, zone.actions)
            for worker in self.workers.get(decision.zone, []):
                worker.want(decision.fans_on)
        if decisions:
            self._settled.update(d.zone for d in decisions)
            self.notifier.status(self.status())
            self._save()
        if len(self._settled) < len(self.core.zones):
            self._reconcile()

    def _reconcile(self) -> None:
        """Zones whose first evaluation moved nothing (a restored state the data confirms,
        or failsafe after the grace): set their actuators to the state's position. Workers
        only write what differs from the real position."""
        for name, policy in self.core.zones.items():
            if name in self._settled or not policy.settled:
                continue
            self._settled.add(name)
            log.info("reconciled", zone=name, state=policy.state, reason=policy.reason)
            for worker in self.workers.get(name, []):
                worker.want(FANS_ON[policy.state])
            self.notifier.status(self.status())

    def set_override(self, zone: str, override: Override | None) -> list[Decision]:
        """An operator's override for ``zone`` (None clears it), logged and applied now."""
        if override is None:
            log.warning("override_cleared", zone=zone)
        else:
            log.warning(
                "override",
                zone=zone,
                fans="on" if override.fans_on else "off",
                for_s=round(override.until - self.loop.time()),
                who=override.who,
                why=override.why,
            )
        decisions = self.core.set_override(zone, override, self.loop.time())
        self._decided(decisions)
        self._save()
        self._arm()
        return decisions

    def _save(self) -> None:
        if self._state_dir is None or self.dry_run:  # a dry run's positions are pretend
            return
        known = {f"{z}/{i}": w.known for z, ws in self.workers.items() for i, w in enumerate(ws)}
        record = persist.snapshot(self.core.zones, known, self.loop.time(), time.time())
        try:
            persist.save(self._state_dir, record)
        except OSError as err:
            if not self._save_failed:
                log.error("state_not_saved", directory=str(self._state_dir), error=str(err))
            self._save_failed = True
        else:
            self._save_failed = False

    # --- operator tools (issue 8) -----------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return report.of_controller(self, str(self.control_path))

    def control_handlers(self) -> dict[str, control.Handler]:
        return {**super().control_handlers(), "override": self._override_request}

    def start_tools(self, tg: asyncio.TaskGroup) -> None:
        self.actions.observers.append(
            lambda decision, outcome: self.tally.outcome(
                decision.state, outcome.result, outcome.duration_s
            )
        )
        super().start_tools(tg)

    def _override_request(self, request: dict[str, Any], peer: control.Peer) -> dict[str, Any]:
        """An override from the control socket, logged with the peer's uid (SO_PEERCRED)."""
        order = control.parse_override(request, list(self.core.zones))
        who = control.who(peer, request)
        log.warning(
            "override_requested",
            zone=order.zone,
            fans="clear" if order.fans_on is None else ("on" if order.fans_on else "off"),
            for_s=order.for_s,
            who=who,
            uid=peer.uid,
            pid=peer.pid,
            why=order.why,
        )
        override = None
        if order.fans_on is not None:
            override = Override(order.fans_on, self.loop.time() + order.for_s, who, order.why)
        self.set_override(order.zone, override)
        return {"zone": report.zone(self, order.zone, self.loop.time(), time.time())}


# --- publisher -----------------------------------------------------------------------------


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
        self._latest: list[Reading | None] = []
        self._failing: dict[int, str] = {}
        self._pollers: list[asyncio.Task[None]] = []
        self._news = asyncio.Event()
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
        self._latest = [None] * len(self._readers)
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
        self.announcer.config = new
        self._sign = _signer(new, keyring)
        if new.sources != self.config.sources:
            self._start_sources(new)
        self._news.set()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        _close_peers(self._peers)

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
        from powercast.sources.base import Backoff  # noqa: PLC0415  # only _poll is ours to edit

        backoff = Backoff(reader.interval_s)
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
                self._latest[index] = reading
                power, temperatures = merge(self._latest)
                if self.announcer.update(power, temperatures, self.loop.time()):
                    log.info(
                        "reading_changed",
                        power=power.status.value,
                        change=self.announcer.change,
                        **{f"temp_{k}": v for k, v in temperatures.items()},
                    )
                    self.notifier.status(self.status())
                    self._news.set()
                await asyncio.sleep(backoff.delay(reading is not None))
        finally:
            reader.close()

    async def _sender(self) -> None:
        while True:
            delay = self.announcer.next_at - self.loop.time()
            if delay > 0:
                self._news.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._news.wait()
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

    # --- operator tools (issue 8) -----------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return report.of_publisher(self, str(self.control_path))


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


async def serve(path: Path, config: cfg.Config, keyring: Keyring, *, dry_run: bool = False) -> None:
    """Run the daemon for ``config``'s role until SIGTERM.

    A startup failure (NetworkError) comes out bare, not wrapped in an ExceptionGroup,
    so the command line can print it as one line.
    """
    daemon: Daemon[Any]
    if isinstance(config, ControllerConfig):
        daemon = ControllerDaemon(path, config, keyring, dry_run=dry_run)
    elif isinstance(config, RelayConfig):
        from powercast.relay import RelayDaemon  # noqa: PLC0415  # the MQTT client only here

        daemon = RelayDaemon(path, config, keyring)
    else:
        daemon = PublisherDaemon(path, config, keyring)
    try:
        await daemon.run()
    except* net.NetworkError as group:
        raise group.exceptions[0] from None
