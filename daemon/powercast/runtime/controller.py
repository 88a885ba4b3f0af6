"""The controller daemon: datagrams to the core, decisions to actuators and actions."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import structlog

from powercast import config as cfg
from powercast import control, net, persist
from powercast import status as report
from powercast.actions import ActionQueue
from powercast.actuators import Worker, make_driver
from powercast.actuators.base import SAFE_POSITION
from powercast.auth import Keyring
from powercast.config import ControllerConfig
from powercast.controller import Controller
from powercast.policy import FANS_ON, Decision, Override
from powercast.runtime.lifecycle import Daemon
from powercast.runtime.receiver import Receiver
from powercast.systemd import Notifier

log = structlog.get_logger("powercast")


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
            lambda: Receiver(self._on_datagram), sock=sock
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
            lambda: Receiver(self._on_datagram), sock=sock
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
