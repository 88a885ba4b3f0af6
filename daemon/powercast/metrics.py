"""The optional Prometheus endpoint: ``[metrics] listen = "127.0.0.1:9301"``, off by default.

Nothing is counted for it. At each scrape a custom collector reads the daemon's public
``snapshot()`` (the status document: the controller core's datagram counters, its
sessions and zones, the runtime's tally, the actuators), so the datagram path does no
extra work whether metrics are on or off, and this module knows no daemon. The registry
is the daemon's own (no process or platform collectors, nothing global).

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
from collections.abc import Callable, Iterable
from typing import Any, Final

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
from powercast.pacing import LOG_EVERY_S
from powercast.states import State
from powercast.wire import Reject

Snapshot = Callable[[], dict[str, Any]]
"""A daemon's ``snapshot``: its status document, read at each scrape."""

MAX_HEADER: Final = 8192
MAX_SCRAPERS: Final = 4
"""Scrapes served at once; more get 503 and are closed at once."""
BACKLOG: Final = 64
"""Connections the kernel queues for us to accept (each is accepted at once, served or
refused): a burst of scrapers waits in the queue instead of having its SYNs dropped."""
VERDICTS: Final = ("new", "news", "repeat", "duplicate")
POSITIONS: Final = ("on", "off", "unknown")


def open_listener(listen: str) -> socket.socket:
    """A listening TCP socket for ``host:port``; OSError (port in use, no such address)."""
    host, port = listen_address(listen)
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.create_server(address[:2], family=family, backlog=BACKLOG)
    sock.setblocking(False)
    return sock


def registry_for(role: str, snapshot: Snapshot) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    collector = {
        "controller": ControllerCollector,
        "relay": RelayCollector,
        "publisher": PublisherCollector,
    }[role]
    registry.register(collector(snapshot))
    return registry


def _common(doc: dict[str, Any]) -> Iterable[Metric]:
    info = GaugeMetricFamily(
        "powercast_info", "The daemon's role and version.", labels=["role", "version"]
    )
    info.add_metric([doc["role"], __version__], 1.0)
    yield info
    yield GaugeMetricFamily(
        "powercast_config_loaded_timestamp_seconds",
        "When the running config was loaded (Unix time).",
        value=doc["config"]["loaded_at"],
    )
    yield CounterMetricFamily(
        "powercast_log_lines_dropped",
        "Log lines dropped because the log stream (journald) did not read.",
        value=doc.get("log_lines_dropped", 0),
    )


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        doc = self.snapshot()
        yield from _common(doc)
        yield from self.metrics(doc)

    def metrics(self, doc: dict[str, Any]) -> Iterable[Metric]:
        raise NotImplementedError


class ControllerCollector(_SnapshotCollector):
    """A controller's counters and state, from its snapshot at scrape time."""

    def metrics(self, doc: dict[str, Any]) -> Iterable[Metric]:
        yield from _datagrams(doc["datagrams"])
        yield from _publishers(doc["publishers"])
        yield from _zones(doc["zones"])
        yield from _actions(doc)
        yield from _actuators(doc["zones"])


def _datagrams(datagrams: dict[str, Any]) -> Iterable[Metric]:
    yield CounterMetricFamily(
        "powercast_datagrams_received",
        "Datagrams received on the group, whatever became of them.",
        value=datagrams["received"],
    )
    accepted = CounterMetricFamily(
        "powercast_datagrams_accepted",
        "Datagrams accepted, by what they meant for their publisher's session.",
        labels=["verdict"],
    )
    for verdict in VERDICTS:
        accepted.add_metric([verdict], datagrams["accepted"].get(verdict, 0))
    yield accepted
    rejected = CounterMetricFamily(
        "powercast_datagrams_rejected",
        "Datagrams dropped, by reason (magic, tag, bad_tag, replay, unlisted, ...).",
        labels=["reason"],
    )
    seen = datagrams["rejected"]
    # Every reason from the first scrape, at 0 until seen, so that rate() works at once.
    for reason in sorted({*Reject, *seen}):
        rejected.add_metric([reason], seen.get(reason, 0))
    yield rejected
    unverified = CounterMetricFamily(
        "powercast_datagrams_unverified",
        "Datagrams accepted without a good tag (auth.mode permissive), by problem.",
        labels=["problem"],
    )
    for problem, n in sorted(datagrams["unverified"].items()):
        unverified.add_metric([problem], n)
    yield unverified
    yield GaugeMetricFamily(
        "powercast_sources_blocked",
        "Source addresses whose datagrams the kernel drops now (a flood of rejected ones).",
        value=len(datagrams.get("blocked_sources", ())),
    )


def _publishers(publishers: list[dict[str, Any]]) -> Iterable[Metric]:
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
    expires = GaugeMetricFamily(
        "powercast_publisher_expires_in_seconds",
        "Seconds until the publisher's data runs out (its TAL after the last accepted"
        " datagram); negative once stale.",
        labels=["publisher"],
    )
    tal = GaugeMetricFamily(
        "powercast_publisher_tal_seconds",
        "The time-allowed-to-live the publisher announces (capped by policy.max_tal_s).",
        labels=["publisher"],
    )
    temps = GaugeMetricFamily(
        "powercast_publisher_temperature_celsius",
        "Temperatures in the publisher's last accepted datagram (a failed sensor: none).",
        labels=["publisher", "sensor"],
    )
    for p in publishers:
        age.add_metric([p["id"]], p["age_s"])
        fresh.add_metric([p["id"]], 1.0 if p["fresh"] else 0.0)
        expires.add_metric([p["id"]], p["expires_in_s"])
        tal.add_metric([p["id"]], p["tal_s"])
        for sensor, value in sorted(p["temperatures"].items()):
            if value is not None:
                temps.add_metric([p["id"], sensor], value)
    yield from (age, fresh, expires, tal, temps)


def _zones(zones: list[dict[str, Any]]) -> Iterable[Metric]:
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
    level = GaugeMetricFamily(
        "powercast_fan_level_percent",
        "The fan level the zone's state and stage call for: 100 full speed, 0 off.",
        labels=["zone"],
    )
    stage = GaugeMetricFamily(
        "powercast_stage",
        "The zone's shedding stage (1 = the first); 0 outside shedding.",
        labels=["zone"],
    )
    battery = GaugeMetricFamily(
        "powercast_on_battery_seconds",
        "Seconds the zone's fresh data has said 'on battery' without a break (0 when not).",
        labels=["zone"],
    )
    temperature = GaugeMetricFamily(
        "powercast_zone_temperature_celsius",
        "The zone temperature the rules compare with the limit (none while unknown).",
        labels=["zone"],
    )
    limit = GaugeMetricFamily(
        "powercast_temperature_limit_celsius",
        "The zone's policy.temp_high_c: at or above it the fans run.",
        labels=["zone"],
    )
    sheds = CounterMetricFamily(
        "powercast_sheds", "Times the zone entered shedding (fans off).", labels=["zone"]
    )
    holding = GaugeMetricFamily(
        "powercast_flap_guard_holding",
        "1 while the flap guard keeps the fans on past the debounce, else 0.",
        labels=["zone"],
    )
    holds = CounterMetricFamily(
        "powercast_flap_guard_holds",
        "Times the flap guard began to hold the fans on.",
        labels=["zone"],
    )
    recent = GaugeMetricFamily(
        "powercast_flap_guard_recent_sheds",
        "Sheds within the last policy.flap_window_s.",
        labels=["zone"],
    )
    allowed = GaugeMetricFamily(
        "powercast_flap_guard_max_sheds",
        "policy.flap_max_sheds: sheds allowed per window before the guard holds.",
        labels=["zone"],
    )
    for z in zones:
        name = z["zone"]
        for s in State:
            state.add_metric([name, s], 1.0 if s == z["state"] else 0.0)
        in_state.add_metric([name], z["for_s"])
        fans.add_metric([name], 1.0 if z["fans"] == "on" else 0.0)
        override.add_metric([name], 0.0 if z["override"] is None else 1.0)
        level.add_metric([name], float(z["level"]))
        stage.add_metric([name], float(z["stage"]))
        battery.add_metric([name], z["battery_for_s"])
        if (celsius := z["situation"]["temperature_c"]) is not None:
            temperature.add_metric([name], celsius)
        limit.add_metric([name], z["temp_high_c"])
        sheds.add_metric([name], z["sheds"])
        guard = z["flap_guard"]
        holding.add_metric([name], float(guard["holding"]))
        holds.add_metric([name], guard["holds"])
        recent.add_metric([name], guard["recent_sheds"])
        allowed.add_metric([name], guard["max_sheds"])
    yield from (state, in_state, fans, override, level, stage, battery, temperature, limit)
    yield from (sheds, holding, holds, recent, allowed)


def _actions(doc: dict[str, Any]) -> Iterable[Metric]:
    transitions = CounterMetricFamily(
        "powercast_transitions",
        "State changes, by zone and move.",
        labels=["zone", "from", "to"],
    )
    for t in doc["transitions"]:
        transitions.add_metric([t["zone"], t["from"], t["to"]], t["count"])
    yield transitions
    actions = doc["actions"]
    outcomes = CounterMetricFamily(
        "powercast_actions",
        "Commands run on entering a state, by state and result (ok, failed, timeout, error).",
        labels=["state", "result"],
    )
    for key, n in actions["outcomes"].items():
        outcomes.add_metric(key.split("/", 1), n)
    yield outcomes
    durations = HistogramMetricFamily(
        "powercast_action_duration_seconds",
        "How long each state's commands took, until exit or kill.",
        labels=["state"],
    )
    for target, hist in actions["durations"].items():
        durations.add_metric([target], hist["buckets"], sum_value=hist["sum"])
    yield durations
    yield GaugeMetricFamily(
        "powercast_actions_pending", "Commands waiting to run.", value=actions["pending"]
    )


def _actuators(zones: list[dict[str, Any]]) -> Iterable[Metric]:
    position = GaugeMetricFamily(
        "powercast_actuator_position",
        "1 for the actuator's known position (read back, else last applied), 0 for others.",
        labels=["zone", "actuator", "position"],
    )
    level = GaugeMetricFamily(
        "powercast_actuator_level_percent",
        "The actuator's known level (read back, else last applied); absent while unknown.",
        labels=["zone", "actuator"],
    )
    failed = GaugeMetricFamily(
        "powercast_actuator_failed",
        "1 while the actuator's last attempt failed.",
        labels=["zone", "actuator"],
    )
    durations = HistogramMetricFamily(
        "powercast_actuator_apply_duration_seconds",
        "How long each attempt to move the actuator took (apply and read back), failed too.",
        labels=["zone", "actuator"],
    )
    for z in sorted(zones, key=lambda z: z["zone"]):
        for a in z["actuators"]:
            for name in POSITIONS:
                position.add_metric([z["zone"], a["name"], name], float(name == a["position"]))
            failed.add_metric([z["zone"], a["name"]], float(a["status"] == "failed"))
            if a.get("level") is not None:
                level.add_metric([z["zone"], a["name"]], float(a["level"]))
            hist = a["apply_durations"]
            durations.add_metric([z["zone"], a["name"]], hist["buckets"], sum_value=hist["sum"])
    yield from (position, level, failed, durations)


class PublisherCollector(_SnapshotCollector):
    """A publisher's counters and what it announces, from its snapshot at scrape time."""

    def metrics(self, doc: dict[str, Any]) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "powercast_announcements_sent", "Datagrams sent to the group.", value=doc["sent"]
        )
        yield CounterMetricFamily(
            "powercast_send_errors",
            "Announcements that could not be sent.",
            value=doc["send_errors"],
        )
        up = GaugeMetricFamily(
            "powercast_source_up", "1 while the source reads, 0 while it fails.", labels=["source"]
        )
        for source in doc["sources"]:
            up.add_metric([source["name"]], 1.0 if source["ok"] else 0.0)
        yield up
        yield from _traps(doc["sources"])
        power = GaugeMetricFamily(
            "powercast_announced_power",
            "1 for the power status being announced, 0 for the others.",
            labels=["status"],
        )
        announcing = doc["announcing"]
        current = announcing["power"]["status"]
        for status in ("online", "on_battery", "low_battery", "unknown"):
            power.add_metric([status], float(status == current))
        yield power
        temps = GaugeMetricFamily(
            "powercast_announced_temperature_celsius",
            "Temperatures being announced.",
            labels=["sensor"],
        )
        for sensor, value in sorted(announcing["temperatures"].items()):
            if value is not None:  # a failed sensor has no value to show
                temps.add_metric([sensor], value)
        yield temps


def _traps(sources: list[dict[str, Any]]) -> Iterable[Metric]:
    """The SNMP trap listeners of the sources that have one."""
    heard = CounterMetricFamily(
        "powercast_source_traps",
        "SNMP notifications heard from a source's agent, by event (on_battery, other, ...).",
        labels=["source", "event"],
    )
    dropped = CounterMetricFamily(
        "powercast_source_traps_dropped",
        "Datagrams a source's trap listener dropped, by reason (unknown_sender,"
        " bad_community, wrong_digest, rate_limited, ...).",
        labels=["source", "reason"],
    )
    reads = CounterMetricFamily(
        "powercast_source_trap_reads",
        "Reads of a source that a trap brought forward.",
        labels=["source"],
    )
    listening = GaugeMetricFamily(
        "powercast_source_traps_listening",
        "1 while a source's trap listener is bound, 0 while it cannot be.",
        labels=["source"],
    )
    for source in sources:
        traps = source.get("traps")
        if traps is None:
            continue
        name = source["name"]
        for event, n in traps["events"].items():
            heard.add_metric([name, event], float(n))
        for reason, n in traps["dropped"].items():
            dropped.add_metric([name, reason], float(n))
        reads.add_metric([name], float(traps["confirms"]))
        listening.add_metric([name], float(traps["listening"]))
    yield from (heard, dropped, reads, listening)


class RelayCollector(_SnapshotCollector):
    """A relay's datagram counters and its broker connection, from its snapshot."""

    def metrics(self, doc: dict[str, Any]) -> Iterable[Metric]:
        datagrams = CounterMetricFamily(
            "powercast_relay_datagrams",
            "Datagrams by where they came from (segment, broker) and what became of them.",
            labels=["side", "outcome"],
        )
        for key, n in doc["counters"].items():
            side, _, outcome = key.partition("_")
            datagrams.add_metric([side, outcome], float(n))
        yield datagrams
        yield GaugeMetricFamily(
            "powercast_relay_broker_connected",
            "1 while connected to the broker, 0 while it is unreachable.",
            value=float(doc["broker"]["connected"]),
        )


# --- HTTP, from the event loop --------------------------------------------------------------


async def serve(
    sock: socket.socket,
    registry: CollectorRegistry,
    *,
    timeout: float = control.CLIENT_TIMEOUT_S,
    log_every_s: float = LOG_EVERY_S,
) -> None:
    """Answer scrapes on ``sock`` until cancelled.

    Each client is bounded like the control socket's: ``timeout`` for the whole exchange,
    at most MAX_SCRAPERS at once. What a client sends wrong (a bad request, a bad Accept
    header) gets a plain-text error and a log line at most every ``log_every_s``.
    """
    paced = control.PacedLog(log_every_s)

    async def scrape(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: socket.socket
    ) -> None:
        writer.write(await answer(reader))
        await writer.drain()

    async def answer(reader: asyncio.StreamReader) -> bytes:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            return _response(400, "text/plain", b"bad request\n")
        lines = head.decode("latin-1").split("\r\n")
        method, _sep, rest = lines[0].partition(" ")
        target = rest.partition(" ")[0].partition("?")[0]
        accept = ""
        for line in lines[1:]:
            name, _sep, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        if method not in ("GET", "HEAD"):
            return _response(405, "text/plain", b"only GET\n")
        if target not in ("/metrics", "/"):
            return _response(404, "text/plain", b"see /metrics\n")
        try:
            if not (accept.isascii() and accept.isprintable()):
                raise ValueError("not printable ASCII")  # it would go back in Content-Type
            encoder, content_type = choose_encoder(accept)
        except Exception as err:  # prometheus_client's parsing: TypeError on version=abc
            paced.warning("metrics_bad_accept", accept=accept[:100], error=repr(err)[:200])
            return _response(400, "text/plain", b"bad Accept header\n")
        started = time.perf_counter()
        try:
            body = encoder(registry)
        except Exception as err:  # a collector's bug: the scraper sees 500, the log says why
            paced.error("metrics_scrape_failed", error=repr(err)[:200])
            return _response(500, "text/plain", b"scrape failed; see the daemon's log\n")
        seconds = time.perf_counter() - started
        if seconds > 0.05:  # the loop was held this long: worth knowing
            paced.warning("metrics_slow_scrape", seconds=round(seconds, 3))
        return _response(200, content_type, b"" if method == "HEAD" else body)

    try:
        await control.accept(
            sock,
            scrape,
            name="metrics",
            max_clients=MAX_SCRAPERS,
            limit=MAX_HEADER,
            busy=_response(503, "text/plain", b"busy: too many scrapes at once\n"),
            timeout=timeout,
            paced=paced,
        )
    finally:
        sock.close()


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _response(code: int, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
