"""The optional Prometheus endpoint: ``[metrics] listen = "127.0.0.1:9301"``, off by default.

Nothing is counted for it. At each scrape a custom collector reads what the daemon keeps
anyway (the controller core's datagram counters, its sessions and zone policies, the
runtime's :class:`~powercast.tally.Tally`), so the datagram path does no extra work
whether metrics are on or off. The registry is the daemon's own (no process or platform
collectors, nothing global).

The endpoint is served from the daemon's event loop, not from prometheus-client's thread:
a scrape reads one consistent moment without racing the loop, and each client is bounded
in size and time like the control socket's (:func:`powercast.control.accept`). This
module is imported only when metrics are configured (prometheus-client takes ~50 ms to
import).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from powercast import __version__, control
from powercast.config import listen_address
from powercast.policy import FANS_ON

if TYPE_CHECKING:
    from powercast.runtime import ControllerDaemon, Daemon, PublisherDaemon

MAX_HEADER: Final = 8192
MAX_SCRAPERS: Final = 4
VERDICTS: Final = ("new", "news", "repeat", "duplicate")
REJECTS: Final = (
    *("size", "truncated", "magic", "version", "tag", "length", "body"),  # wire.decode
    *("unsigned", "unknown_key", "bad_tag", "clock", "unlisted", "replay"),  # the controller
)
"""Reasons always exposed, at 0 until seen, so that rate() works from the first scrape."""
POSITIONS: Final = ("on", "off", "unknown")


def open_listener(listen: str) -> socket.socket:
    """A listening TCP socket for ``host:port``; OSError (port in use, no such address)."""
    host, port = listen_address(listen)
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.create_server(address[:2], family=family, backlog=MAX_SCRAPERS)
    sock.setblocking(False)
    return sock


def registry_for(daemon: Daemon[Any]) -> CollectorRegistry:
    from powercast.runtime import ControllerDaemon  # noqa: PLC0415  # runtime imports us lazily

    registry = CollectorRegistry(auto_describe=False)
    if isinstance(daemon, ControllerDaemon):
        registry.register(ControllerCollector(daemon))
    elif daemon.role == "relay":
        registry.register(RelayCollector(daemon))
    else:
        registry.register(PublisherCollector(daemon))  # type: ignore[arg-type]
    return registry


def _common(daemon: Daemon[Any]) -> Iterable[Metric]:
    info = GaugeMetricFamily(
        "powercast_info", "The daemon's role and version.", labels=["role", "version"]
    )
    info.add_metric([daemon.role, __version__], 1.0)
    yield info
    yield GaugeMetricFamily(
        "powercast_config_loaded_timestamp_seconds",
        "When the running config was loaded (Unix time).",
        value=daemon.loaded_at,
    )


class ControllerCollector(Collector):
    """Reads a controller's counters and state at scrape time."""

    def __init__(self, daemon: ControllerDaemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterable[Metric]:
        yield from _common(self.daemon)
        yield from self._datagrams()
        yield from self._publishers()
        yield from self._zones()
        yield from self._actions()
        yield from self._actuators()

    def _datagrams(self) -> Iterable[Metric]:
        counters = self.daemon.core.counters
        yield CounterMetricFamily(
            "powercast_datagrams_received",
            "Datagrams received on the group, whatever became of them.",
            value=counters["received"],
        )
        accepted = CounterMetricFamily(
            "powercast_datagrams_accepted",
            "Datagrams accepted, by what they meant for their publisher's session.",
            labels=["verdict"],
        )
        for verdict in VERDICTS:
            accepted.add_metric([verdict], counters[verdict])
        yield accepted
        rejected = CounterMetricFamily(
            "powercast_datagrams_rejected",
            "Datagrams dropped, by reason (magic, tag, bad_tag, replay, unlisted, ...).",
            labels=["reason"],
        )
        unverified = CounterMetricFamily(
            "powercast_datagrams_unverified",
            "Datagrams accepted without a good tag (auth.mode permissive), by problem.",
            labels=["problem"],
        )
        reasons = {f"rejected.{r}" for r in REJECTS} | {k for k in counters if "." in k}
        for key in sorted(reasons):
            n = counters[key]
            if key.startswith("rejected."):
                rejected.add_metric([key.removeprefix("rejected.")], n)
            elif key.startswith("accepted."):
                unverified.add_metric([key.removeprefix("accepted.")], n)
        yield rejected
        yield unverified

    def _publishers(self) -> Iterable[Metric]:
        now = self.daemon.loop.time()
        age = GaugeMetricFamily(
            "powercast_publisher_age_seconds",
            "Seconds since the publisher's last accepted datagram.",
            labels=["publisher"],
        )
        fresh = GaugeMetricFamily(
            "powercast_publisher_fresh",
            "1 while the publisher's data is within its time-allowed-to-live, else 0.",
            labels=["publisher"],
        )
        for publisher, session in sorted(self.daemon.core.sessions.items()):
            age.add_metric([publisher], now - session.received_at)
            fresh.add_metric([publisher], 1.0 if session.fresh(now) else 0.0)
        yield age
        yield fresh

    def _zones(self) -> Iterable[Metric]:
        now = self.daemon.loop.time()
        state = GaugeMetricFamily(
            "powercast_state",
            "1 for the zone's current state, 0 for the others.",
            labels=["zone", "state"],
        )
        in_state = GaugeMetricFamily(
            "powercast_state_seconds", "Seconds the zone has been in its state.", labels=["zone"]
        )
        fans = GaugeMetricFamily(
            "powercast_fans_on", "1 if the zone's state runs the fans, else 0.", labels=["zone"]
        )
        override = GaugeMetricFamily(
            "powercast_override_active", "1 while an operator override holds.", labels=["zone"]
        )
        for zone, policy in self.daemon.core.zones.items():
            current = policy.state
            for name in FANS_ON:
                state.add_metric([zone, name], 1.0 if name == current else 0.0)
            in_state.add_metric([zone], now - policy.since)
            fans.add_metric([zone], 1.0 if FANS_ON.get(current, True) else 0.0)
            override.add_metric([zone], 0.0 if policy.override is None else 1.0)
        yield from (state, in_state, fans, override)

    def _actions(self) -> Iterable[Metric]:
        d = self.daemon
        transitions = CounterMetricFamily(
            "powercast_transitions",
            "State changes, by zone and move.",
            labels=["zone", "from", "to"],
        )
        for (zone, previous, target), n in sorted(d.tally.transitions.items()):
            transitions.add_metric([zone, previous, target], n)
        yield transitions

        outcomes = CounterMetricFamily(
            "powercast_actions",
            "Commands run on entering a state, by state and result (ok, failed, timeout, error).",
            labels=["state", "result"],
        )
        for (target, result), n in sorted(d.tally.outcomes.items()):
            outcomes.add_metric([target, result], n)
        yield outcomes
        durations = HistogramMetricFamily(
            "powercast_action_duration_seconds",
            "How long each state's commands took, until exit or kill.",
            labels=["state"],
        )
        for target, hist in sorted(d.tally.durations.items()):
            durations.add_metric([target], hist.cumulative(), sum_value=hist.total)
        yield durations
        yield GaugeMetricFamily(
            "powercast_actions_pending",
            "Commands waiting to run.",
            value=d.actions.pending(),
        )

    def _actuators(self) -> Iterable[Metric]:
        position = GaugeMetricFamily(
            "powercast_actuator_position",
            "1 for the actuator's known position (read back, else last applied), 0 for others.",
            labels=["zone", "actuator", "position"],
        )
        failed = GaugeMetricFamily(
            "powercast_actuator_failed",
            "1 while the actuator's last attempt failed.",
            labels=["zone", "actuator"],
        )
        for zone, workers in sorted(self.daemon.workers.items()):
            for w in workers:
                known = "unknown" if w.known is None else ("on" if w.known else "off")
                for name in POSITIONS:
                    position.add_metric([zone, w.driver.name, name], float(name == known))
                failed.add_metric([zone, w.driver.name], float(w.status == "failed"))
        yield position
        yield failed


class PublisherCollector(Collector):
    """Reads a publisher's counters and what it announces at scrape time."""

    def __init__(self, daemon: PublisherDaemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterable[Metric]:
        d = self.daemon
        yield from _common(d)
        yield CounterMetricFamily(
            "powercast_announcements_sent", "Datagrams sent to the group.", value=d.sent
        )
        yield CounterMetricFamily(
            "powercast_send_errors", "Announcements that could not be sent.", value=d.send_errors
        )
        up = GaugeMetricFamily(
            "powercast_source_up", "1 while the source reads, 0 while it fails.", labels=["source"]
        )
        for index, reader in enumerate(d._readers):
            up.add_metric([reader.name], 0.0 if index in d._failing else 1.0)
        yield up
        power = GaugeMetricFamily(
            "powercast_announced_power",
            "1 for the power status being announced, 0 for the others.",
            labels=["status"],
        )
        current = d.announcer.power.status.value
        for status in ("online", "on_battery", "low_battery", "unknown"):
            power.add_metric([status], float(status == current))
        yield power
        temps = GaugeMetricFamily(
            "powercast_announced_temperature_celsius",
            "Temperatures being announced.",
            labels=["sensor"],
        )
        for sensor, value in sorted(d.announcer.temperatures.items()):
            if value is not None:  # a failed sensor has no value to show
                temps.add_metric([sensor], value)
        yield temps


class RelayCollector(Collector):
    """A relay's datagram counters and its broker connection, read at scrape time."""

    def __init__(self, daemon: Daemon[Any]) -> None:
        self.daemon = daemon

    def collect(self) -> Iterable[Metric]:
        d: Any = self.daemon  # a RelayDaemon (relay.py imports aiomqtt: not imported here)
        yield from _common(d)
        datagrams = CounterMetricFamily(
            "powercast_relay_datagrams",
            "Datagrams by where they came from (segment, broker) and what became of them.",
            labels=["side", "outcome"],
        )
        for key, n in sorted(d.core.counters.items()):
            side, _, outcome = key.partition("_")
            datagrams.add_metric([side, outcome], float(n))
        yield datagrams
        broker = d.broker_state()
        yield GaugeMetricFamily(
            "powercast_relay_broker_connected",
            "1 while connected to the broker, 0 while it is unreachable.",
            value=float(broker["connected"]),
        )


# --- HTTP, from the event loop --------------------------------------------------------------


async def serve(sock: socket.socket, registry: CollectorRegistry) -> None:
    """Answer scrapes on ``sock`` until cancelled."""

    async def scrape(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: socket.socket
    ) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            writer.write(_response(400, "text/plain", b"bad request\n"))
            await writer.drain()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, _sep, rest = lines[0].partition(" ")
        target = rest.partition(" ")[0].partition("?")[0]
        accept = ""
        for line in lines[1:]:
            name, _sep, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        if method not in ("GET", "HEAD"):
            writer.write(_response(405, "text/plain", b"only GET\n"))
        elif target not in ("/metrics", "/"):
            writer.write(_response(404, "text/plain", b"see /metrics\n"))
        else:
            started = time.perf_counter()
            encoder, content_type = choose_encoder(accept)
            body = encoder(registry)
            _log_slow(time.perf_counter() - started)
            writer.write(_response(200, content_type, b"" if method == "HEAD" else body))
        await writer.drain()

    try:
        await control.accept(
            sock, scrape, name="metrics", max_clients=MAX_SCRAPERS, limit=MAX_HEADER
        )
    finally:
        sock.close()


def _log_slow(seconds: float) -> None:
    if seconds > 0.05:  # the loop was held this long: worth knowing
        control.log.warning("metrics_slow_scrape", seconds=round(seconds, 3))


_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _response(code: int, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
