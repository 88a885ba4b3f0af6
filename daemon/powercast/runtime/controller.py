"""The controller daemon: datagrams to the core, decisions to actuators and actions."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any, Final

import structlog

from powercast import config as cfg
from powercast import control, failsafe, net, persist, sockfilter, wire
from powercast import status as report
from powercast.actions import ActionQueue
from powercast.actuators import Worker, actuator_name, lease, make_driver
from powercast.actuators.base import SAFE_POSITION
from powercast.auth import Keyring
from powercast.config import ControllerConfig
from powercast.controller import Controller
from powercast.offload import Lane, LaneBusy
from powercast.plan import (
    Effect,
    LogDryRun,
    Notify,
    Plan,
    ReleaseActuator,
    RunActions,
    Save,
    SetActuator,
    StartActuator,
)
from powercast.policy import Decision, Override
from powercast.runtime.copies import Copies
from powercast.runtime.lifecycle import Daemon
from powercast.runtime.receiver import Receiver
from powercast.systemd import Notifier, runtime_directory, state_directory

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
        self._unsaved: persist.StateRecord | None = None
        self._save_wanted = asyncio.Event()
        self._disk = Lane("state file")
        self.core = Controller(config, keyring)
        self.plan = Plan(dict(self.core.zone_configs), dry_run=dry_run)
        self.actions = ActionQueue()
        self.dry_run = dry_run
        self._workers: dict[str, tuple[Worker, asyncio.Task[None]]] = {}
        self._released: dict[int, tuple[Worker, asyncio.Task[None]]] = {}
        """Actuators a reload dropped, still being driven to fans on, by their worker's
        id: two reloads in a row may release two actuators of the same key and name."""
        self._released_from: dict[int, tuple[str, cfg.Actuator]] = {}
        """Each released actuator's zone and config, kept on disk for the failsafe."""
        self._tg: asyncio.TaskGroup | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._unicast: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._evaluations = 0
        self._refiltered = float("-inf")
        self._refilter_later: asyncio.TimerHandle | None = None
        """The core's count of rule runs when the timer was last armed after a batch."""
        configured = config.persist.state_dir
        self._state_dir = Path(configured) if configured else state_directory()
        self._copies = Copies(self._state_dir or runtime_directory())

    @property
    def workers(self) -> dict[str, list[Worker]]:
        """Each zone's actuator workers, in config order."""
        zones: dict[str, list[Worker]] = {name: [] for name in self.core.zone_configs}
        for key, (worker, _) in self._workers.items():
            zones.setdefault(key.split("/", 1)[0], []).append(worker)
        return zones

    async def start(self, tg: asyncio.TaskGroup) -> None:
        self._tg = tg
        # Restore and begin the grace before the sockets open: a datagram taken earlier
        # would be judged without either, and its save would overwrite the saved state.
        # Saved actuator positions are not believed: each is read back or written.
        now, wall = self.loop.time(), time.time()
        saved = persist.load(self._state_dir) if self._state_dir else None
        restored = persist.restore(saved, self.core.zones, now, wall) if saved else []
        if restored:
            log.info("state_restored", zones={z: self.core.zones[z].state.value for z in restored})
        if self._state_dir is None:
            log.info("state_not_kept", hint="set persist.state_dir, or StateDirectory= in the unit")
        leave = failsafe.leave_fans_marker()
        if leave is not None:
            leave.unlink(missing_ok=True)  # it asked for one stop to leave the fans: that was it
        self.core.start(now)
        tg.create_task(self.actions.run(), name="actions")
        tg.create_task(self._writer(), name="state writer")
        tg.create_task(self._copies.run(), name="failsafe copies")
        self._carry_out(self.plan.start())  # workers probe on their own: none waits for another
        self._resume_releases()
        self._transport = await self._listen(self.config.network)
        program = self._program(self.config, self.keyring)
        self._unicast = await self._listen_unicast(self.config.network, program)
        self._reconcile()
        self._arm()

    def loaded(self) -> None:
        """Keep a copy of the config now running, for ``powercast failsafe`` after a crash;
        say so when a zone has nothing to move its fans with."""
        for name, zone in self.core.zone_configs.items():
            if not zone.actuators:
                log.warning(
                    "no_actuators",
                    zone=name,
                    hint="this zone's fans are not moved: add an [[actuators]] table"
                    " ([[zones.actuators]] in a zone)",
                )
        if not self.dry_run:  # a dry run drives nothing the failsafe should take over
            self._copies.keep(failsafe.RUNNING_CONFIG, self.config)

    async def shutdown(self) -> None:
        """No controller will react to heat once this one is gone: fans on, bounded; then
        the last state and copies to disk."""
        await self._fans_on_at_stop()
        await self._copies.flush(COPIES_FLUSH_S)
        await self._write()

    async def _fans_on_at_stop(self) -> None:
        leave = failsafe.leave_fans_marker()
        if leave is not None and leave.exists():
            log.warning("stopping_fans_left", marker=str(leave), hint="remove it to fail safe")
            return
        if self.dry_run:
            return
        self._carry_out(self.plan.stop(leave_fans=False))
        workers = [w for w, _ in (*self._workers.values(), *self._released.values())]
        try:
            async with asyncio.timeout(SHUTDOWN_GRACE_S):
                while any(w.known != SAFE_POSITION for w in workers):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        left = [w.driver.name for w in workers if w.known != SAFE_POSITION]
        if left:
            log.error("stopping_fans_unknown", actuators=left, grace_s=SHUTDOWN_GRACE_S)
        else:
            log.info("stopping_fans_on", actuators=len(workers))

    def _carry_out(self, effects: list[Effect]) -> None:
        """The plan's effects, in order; the only place the controller touches the world."""
        for effect in effects:
            match effect:
                case SetActuator(key, level):
                    entry = self._workers.get(key)
                    if entry is not None:
                        entry[0].want(level)
                case RunActions(decision, actions, replay):
                    if replay:
                        log.info("actions_replayed", zone=decision.zone, state=decision.state)
                    self.actions.submit(decision, list(actions))
                case LogDryRun(decision, actions):
                    for action in actions:
                        log.info("action_dry_run", zone=decision.zone, argv=action.argv)
                case StartActuator(key, zone, config):
                    self._start_worker(key, zone, config)
                case ReleaseActuator(key, config):
                    self._release(key, config)
                case Save():
                    self._save()
                case Notify():
                    self.notifier.status(self.status_line())

    def _start_worker(self, key: str, zone: str, config: cfg.Actuator) -> None:
        assert self._tg is not None
        driver = make_driver(config, actuator_name(key, config))
        worker = Worker(driver, zone, dry_run=self.dry_run, refresh_s=lease(config))
        worker.on_change = self._actuator_changed
        self._workers[key] = (worker, self._tg.create_task(worker.run(), name=driver.name))

    def _release(self, key: str, config: cfg.Actuator) -> None:
        """An actuator the config no longer drives (or drives differently) is driven to its
        safe state, fans on, by a worker of its own, retried until it gets there: nothing
        else will move it again. Its worker then ends."""
        entry = self._workers.pop(key, None)
        if entry is not None:
            entry[1].cancel()
        if self._tg is None or self.dry_run:
            return
        zone = key.split("/", 1)[0]
        driver = make_driver(config, actuator_name(key, config))
        worker = Worker(driver, zone)
        worker.want(SAFE_POSITION)
        worker.on_change = self._release_changed
        self._released[id(worker)] = (worker, self._tg.create_task(worker.run(), name=driver.name))
        self._released_from[id(worker)] = (zone, config)
        self._keep_released()

    def _keep_released(self) -> None:
        released = failsafe.released_config(list(self._released_from.values()))
        self._copies.keep(failsafe.RELEASED, released)

    def _release_changed(self, worker: Worker) -> None:
        if worker.known == SAFE_POSITION:
            log.warning(
                "actuator_released",
                actuator=worker.driver.name,
                position="on",
                fan_level=SAFE_POSITION,
            )
            _, task = self._released.pop(id(worker), (None, None))
            if task is not None:
                task.cancel()
            self._released_from.pop(id(worker), None)
            self._keep_released()

    def _resume_releases(self) -> None:
        """Actuators the controller before this one released and did not see at fans on
        (it died first) are driven there now, unless this config drives them itself."""
        if self.dry_run:
            return
        driven = [a for zone in self.core.zone_configs.values() for a in zone.actuators]
        left, problem = failsafe.load_released(self._state_dir)
        if problem is not None:  # kept aside, not overwritten by the next release
            kept = failsafe.set_aside_released(self._state_dir)
            log.error(
                "released_unreadable",
                error=problem,
                kept=str(kept),
                hint="it names actuators a reload dropped that may still be off: set them"
                " on, then remove the file",
            )
            return
        for index, (zone, actuator) in enumerate(left):
            if actuator not in driven:
                self._release(f"{zone}/released-{index}", actuator)
        if self._released:
            log.warning(
                "released_actuators_resumed",
                actuators=[worker.driver.name for worker, _ in self._released.values()],
                hint="a controller died before these reached fans on; driving them there",
            )
        self._keep_released()

    async def _listen(
        self, network: cfg.ControllerNetwork, program: list[sockfilter.Insn] | None = None
    ) -> asyncio.DatagramTransport:
        sock = net.open_receiver(network.group, network.port, network.interface)
        self._filter(sock, program or self._program(self.config, self.keyring))
        transport, _ = await self.loop.create_datagram_endpoint(
            lambda: Receiver(self._take, self._on_batch), sock=sock
        )
        log.info("listening", group=network.group, port=network.port, interface=network.interface)
        return transport

    async def _listen_unicast(
        self, network: cfg.ControllerNetwork, program: list[sockfilter.Insn]
    ) -> asyncio.DatagramTransport | None:
        """network.unicast_listen (off when empty): datagrams sent to this host directly,
        taken by the very same path as the group's."""
        if not network.unicast_listen:
            return None
        where = cfg.udp_address(network.unicast_listen, "", listen_port=network.port)
        sock = net.open_unicast_receiver(*where)
        self._filter(sock, program)
        transport, _ = await self.loop.create_datagram_endpoint(
            lambda: Receiver(self._take, self._on_batch), sock=sock
        )
        log.info("listening_unicast", address=where[0], port=where[1])
        return transport

    def _program(
        self, config: ControllerConfig, keyring: Keyring, family: int | None = None
    ) -> list[sockfilter.Insn]:
        """The kernel filter for ``config`` and ``keyring``, with the tags blocked now, and
        for an IPv4 socket (``family``) the sources blocked now."""
        shape = config.network.kernel_filter
        enforce = config.auth.mode == "enforce"
        return sockfilter.program(
            versions=wire.VERSIONS if shape else None,
            key_ids=keyring.ids if shape and enforce else None,
            blocked=self.core.blocked,
            sources=self.core.blocked_sources if family == socket.AF_INET else (),
        )

    def _filter(self, sock: Any, program: list[sockfilter.Insn]) -> None:
        """Put the filter on a socket; without one, the controller rejects it all itself."""
        try:
            sockfilter.attach(sock, program)
        except OSError as err:
            log.warning("kernel_filter_failed", error=str(err), hint="datagrams are all read")

    def _refilter(self, config: ControllerConfig, keyring: Keyring) -> None:
        self.core.blocked_changed = False
        self._refiltered = self.loop.time()
        for transport in (self._transport, self._unicast):
            if transport is not None:
                sock = transport.get_extra_info("socket")
                self._filter(sock, self._program(config, keyring, sock.family))

    async def apply(self, new: ControllerConfig, keyring: Keyring) -> None:
        if new.network != self.config.network:
            program = self._program(new, keyring)
            transport = await self._listen(new.network, program)  # fails before the old closes
            try:
                unicast = await self._listen_unicast(new.network, program)
            except net.NetworkError:
                transport.close()
                raise
            for old in (self._transport, self._unicast):
                if old is not None:
                    old.close()
            self._transport, self._unicast = transport, unicast
        decisions = self.core.reconfigure(new, keyring, self.loop.time())
        self._refilter(new, keyring)
        self._carry_out(self.plan.reload(dict(self.core.zone_configs), self.core.zones))
        self._decided(decisions)
        self._arm()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._unicast is not None:
            self._unicast.close()
        if self._timer is not None:
            self._timer.cancel()
        if self._refilter_later is not None:
            self._refilter_later.cancel()

    def status(self) -> str:
        now = self.loop.time()
        fresh = sum(s.fresh(now) for s in self.core.sessions.values())
        heard = len(self.core.sessions)
        zones = self.core.zones
        if len(zones) == 1:
            policy = self.core.policy
            text = f"{policy.state}{_at(policy.level)}: {policy.reason}"
        else:
            text = "; ".join(f"{name} {p.state}{_at(p.level)}" for name, p in zones.items())
        failed = [w.driver.name for w, _ in self._workers.values() if w.status == "failed"]
        alarm = f"; ACTUATOR FAILED, position unknown: {', '.join(failed)}" if failed else ""
        return f"{text} ({fresh}/{heard} publishers fresh){alarm}"

    def _actuator_changed(self, worker: Worker) -> None:
        """Keep the state file and systemd's status line true to the actuators."""
        self._save()
        self.notifier.status(self.status_line())

    def _on_datagram(self, data: bytes, source: str) -> None:
        """One datagram on its own: taken, and acted on at once."""
        self._take(data, source)
        self._on_batch()

    def _take(self, data: bytes, source: str) -> None:
        """One datagram of a batch, from address ``source``: the rules wait for the
        batch's end."""
        self.core.receive(data, self.loop.time(), time.time(), source, evaluate=False)

    def _on_batch(self) -> None:
        """After each batch of datagrams read together: the rules run once on all of them,
        and what they decided is carried out."""
        core = self.core
        decisions = core.settle(self.loop.time())
        if decisions or len(self.plan.settled) < len(core.zones):
            self._decided(decisions)  # also reconciles zones the data just confirmed
        if core.blocked_changed:
            self._refilter_soon()  # before the log line, so the filter is on when it says so
        if core.notices:
            for notice in core.notices:
                log.warning(notice.event, **notice.fields)
            core.notices.clear()
        # Only a run of the rules can bring the next deadline earlier (a heartbeat that
        # repeats its readings moves its expiry later, a rejected datagram nothing): a
        # quiet heartbeat then touches no zone, no chart, no timer.
        if core.evaluations != self._evaluations or self._timer is None:
            self._evaluations = core.evaluations
            self._arm()

    def _refilter_soon(self) -> None:
        """What is blocked changed: a new filter now, or REFILTER_EVERY_S after the last
        one (a flood cycling through many forgeries would otherwise have a filter built,
        about a millisecond, for every batch). A source's block ends at a deadline."""
        if self._refilter_later is None:
            wait = self._refiltered + REFILTER_EVERY_S - self.loop.time()
            if wait <= 0:
                self._refilter(self.config, self.keyring)
            else:
                self._refilter_later = self.loop.call_later(wait, self._refilter_due)
        self._arm()

    def _refilter_due(self) -> None:
        self._refilter_later = None
        if self.core.blocked_changed:
            self._refilter(self.config, self.keyring)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        self._decided(self.core.tick(self.loop.time()))
        if self.core.blocked_changed:  # a source's block ended
            self._refilter_soon()
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
            if decision.moved:
                self.tally.transition(decision.zone, decision.previous, decision.state)
            log.info(
                "transition" if decision.moved else "stage",
                zone=decision.zone,
                previous=decision.previous,
                state=decision.state,
                reason=decision.reason,
                fans="on" if decision.fans_on else "off",
                stage=decision.stage,
                fan_level=decision.level,
                previous_fan_level=decision.previous_level,
                **decision.situation.describe(),
            )
        self._carry_out(self.plan.decided(decisions))
        if len(self.plan.settled) < len(self.core.zones):
            self._reconcile()

    def _reconcile(self) -> None:
        """Zones whose first evaluation moved nothing: their actuators to the state's
        position, their state's commands replayed (the plan decides which)."""
        before = set(self.plan.settled)
        effects = self.plan.reconcile(self.core.zones)
        for name in sorted(self.plan.settled - before):
            policy = self.core.zones[name]
            log.info("reconciled", zone=name, state=policy.state, reason=policy.reason)
        self._carry_out(effects)

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
        """Take the state now, in the loop (one consistent moment); the writer task puts
        the latest one on disk, off the loop, so a slow or hung disk delays no decision."""
        if self._state_dir is None or self.dry_run:  # a dry run's positions are pretend
            return
        known = {key: w.known for key, (w, _) in self._workers.items()}
        self._unsaved = persist.snapshot(self.core.zones, known, self.loop.time(), time.time())
        self._save_wanted.set()

    async def _writer(self) -> None:
        """Writes the latest state record; each write bounded by SAVE_TIMEOUT_S."""
        while True:
            await self._save_wanted.wait()
            self._save_wanted.clear()
            await self._write()

    async def _write(self) -> None:
        record, self._unsaved = self._unsaved, None
        if record is None or self._state_dir is None:
            return
        directory = self._state_dir
        try:
            await self._disk.call(lambda: persist.save(directory, record), SAVE_TIMEOUT_S)
        except (OSError, TimeoutError, LaneBusy) as err:
            if not self._save_failed:
                why = str(err) or f"no answer within {SAVE_TIMEOUT_S:g} s"
                log.error("state_not_saved", directory=str(directory), error=why)
            self._save_failed = True
        else:
            self._save_failed = False

    # --- operator tools --------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        own = report.controller(
            self.core,
            workers=self.workers,
            actions=self.actions,
            tally=self.tally,
            keyring=self.keyring,
            config=self.config,
            now=self.loop.time(),
        )
        return {**self.common(), **own}

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
        now, wall = self.loop.time(), time.time()
        return {"zone": report.zone(self.core, self.workers, order.zone, now, wall)}


def _at(level: int) -> str:
    """A level for the status line, said only when the fans run between off and full."""
    return "" if level in (0, SAFE_POSITION) else f" at {level} %"


REFILTER_EVERY_S: Final = 0.25
"""The kernel filter is rebuilt at most this often for newly blocked forgeries."""
SAVE_TIMEOUT_S: Final = 5.0
"""A state file write that takes longer (a hung disk) has failed; the next waits for it."""
SHUTDOWN_GRACE_S: Final = 10.0
"""At a stop, how long the actuators get to reach fans on (the unit allows 30 s to stop;
``powercast failsafe`` tries again after)."""
COPIES_FLUSH_S: Final = 1.0
"""At a stop, how long the failsafe's copies may take to reach the disk."""
