"""One lifecycle for every daemon: load the config, open sockets, tell systemd READY=1,
ping the watchdog from the event loop, reload on SIGHUP (keeping the running config when
the new one is bad), stop cleanly on SIGTERM. Every task has an owner: the TaskGroup in
:meth:`Daemon.run`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import structlog

from powercast import config as cfg
from powercast import control, logs, net
from powercast import status as report
from powercast.auth import Keyring, KeyringError
from powercast.config import ControllerConfig, PublisherConfig, RelayConfig
from powercast.pacing import Backoff
from powercast.secrets import load_keys
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
        self.metrics_error: str | None = None
        """Why the metrics endpoint is not listening (it retries), or None."""
        self.own_process = False
        """The daemon is the whole process (as its unit runs it), not a part of another."""

    # Subclasses fill these in.
    async def start(self, tg: asyncio.TaskGroup) -> None:
        raise NotImplementedError

    async def apply(self, new: C, keyring: Keyring) -> None:
        """Switch to ``new``; raise (NetworkError) to keep the running config."""
        raise NotImplementedError

    def close(self) -> None:
        """Release sockets; runs on every exit path."""

    def loaded(self) -> None:
        """A config was loaded and is now running (at start and after each reload)."""

    async def shutdown(self) -> None:
        """Last work before the tasks are cancelled at a stop; bounded by the daemon."""

    def status(self) -> str:
        raise NotImplementedError

    def status_line(self) -> str:
        """systemd's STATUS=: the role's own line, and what of the daemon's tools is down."""
        text = self.status()
        if self.metrics_error is not None:
            text += f"; metrics: error {self.metrics_error} (retrying)"
        return text

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:
            async with asyncio.TaskGroup() as tg:
                await self.start(tg)
                self.loaded()
                self.start_tools(tg)
                self.notifier.ready(self.status_line())
                log.info("ready", role=self.role, config=str(self.path), pid=os.getpid())
                if self.own_process:
                    # What start-up made (modules, config, chart, sockets) lives as long
                    # as the daemon: out of the collector's reach, a full collection no
                    # longer walks it, which took 3 to 4 ms in the way of a decision.
                    gc.freeze()
                tg.create_task(self._watchdog(), name="watchdog")
                tg.create_task(self._reloader(), name="reloader")
                await self._stop.wait()
                self.notifier.stopping()
                log.info("stopping", role=self.role)
                await self.shutdown()
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
                self.loaded()
                log.info("reloaded", config=str(self.path))
            self.notifier.ready(self.status_line())

    # --- operator tools: control socket and metrics endpoint ---------------------------

    def snapshot(self) -> dict[str, Any]:
        """The status document (`powercast status --json`, the metrics endpoint): one
        consistent moment, built in the event loop from the daemon's parts."""
        return self.common()

    def common(self) -> dict[str, Any]:
        """The fields every daemon's snapshot has."""
        return report.common(
            self.role,
            path=self.path,
            loaded_at=self.loaded_at,
            control=str(self.control_path),
            metrics=self.metrics_address,
            metrics_error=self.metrics_error,
            log_lines_dropped=logs.dropped(),
            wall=time.time(),
        )

    def control_handlers(self) -> dict[str, control.Handler]:
        """Requests the control socket answers."""
        return {"status": lambda request, peer: {"status": self.snapshot()}}

    def start_tools(self, tg: asyncio.TaskGroup) -> None:
        """The control socket and, when configured, the metrics endpoint, as tasks of ``tg``.

        Neither failing stops the daemon (the fans matter more than a status line): it
        logs why, at error, and runs on. A metrics endpoint that cannot listen (its port
        in use) says so in status and systemd's STATUS= and is tried again, backing off,
        until it listens. Both are set up at start; changing ``control.socket`` or
        ``metrics.listen`` takes a restart.
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
            self._metrics_failed(listen, err, attempts=1)
            tg.create_task(self._metrics_retry(tg, listen), name="metrics retry")
            return
        self._metrics_serve(tg, msock)

    def _metrics_serve(self, tg: asyncio.TaskGroup, msock: socket.socket) -> None:
        from powercast import metrics  # noqa: PLC0415  # prometheus-client only when asked

        tg.create_task(
            metrics.serve(msock, metrics.registry_for(self.role, self.snapshot)), name="metrics"
        )
        host, port = msock.getsockname()[:2]
        self.metrics_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.metrics_error = None
        log.info("metrics_listening", address=self.metrics_address)

    def _metrics_failed(self, listen: str, err: OSError, attempts: int) -> None:
        """Say why, once per new reason (retries of the same one stay quiet)."""
        why = os.strerror(err.errno) if err.errno else str(err)  # not create_server's wording
        error = f"{listen}: {why[:1].lower()}{why[1:]}"
        if error != self.metrics_error:
            log.error(
                "metrics_unavailable",
                listen=listen,
                error=why,
                attempts=attempts,
                hint="another process holds the port (ss -ltnp); retrying until it is free,"
                " or set another metrics.listen and restart",
            )
            self.metrics_error = error
            self.notifier.status(self.status_line())

    async def _metrics_retry(self, tg: asyncio.TaskGroup, listen: str) -> None:
        """Try the endpoint again, backing off to METRICS_RETRY_MAX_S, until it listens."""
        from powercast import metrics  # noqa: PLC0415  # prometheus-client only when asked

        backoff = Backoff(METRICS_RETRY_S, METRICS_RETRY_MAX_S)
        attempts = 1
        while True:
            await asyncio.sleep(backoff.delay(ok=False))
            attempts += 1
            try:
                msock = metrics.open_listener(listen)
            except OSError as err:
                self._metrics_failed(listen, err, attempts)
                continue
            self._metrics_serve(tg, msock)
            log.info("metrics_recovered", address=self.metrics_address, attempts=attempts)
            self.notifier.status(self.status_line())
            return


METRICS_RETRY_S: Final = 1.0
METRICS_RETRY_MAX_S: Final = 30.0
"""A metrics endpoint that cannot listen is tried again after 1 s, doubling up to 30 s."""
