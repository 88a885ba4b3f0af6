"""``powercast status``: what a daemon believes and why, as JSON (stable) and as text.

Each daemon's public ``snapshot()`` builds the JSON object from its parts with the
functions here (:func:`common`, :func:`controller`, :func:`publisher`), in its event loop,
so it is one consistent moment; the control socket sends it, the metrics endpoint reads
it, and the command line renders it (:func:`render`). Nothing here knows a daemon. The
fields are documented in docs/operations.md and pinned by tests: a new field
may be added, none renamed or removed without raising ``version``.

Times are Unix seconds (wall clock) so they mean the same to every reader; ages and
durations are seconds measured on the daemon's monotonic clock.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Final

from powercast.wire import Power

if TYPE_CHECKING:
    from pathlib import Path

    from powercast.actions import ActionQueue, Outcome
    from powercast.actuators import Worker
    from powercast.announcer import Announcer
    from powercast.auth import Keyring
    from powercast.config import ControllerConfig, PublisherConfig
    from powercast.controller import Controller
    from powercast.tally import Tally

VERSION: Final = 1


def common(
    role: str,
    *,
    path: Path,
    loaded_at: float,
    control: str,
    metrics: str | None,
    wall: float,
    metrics_error: str | None = None,
    log_lines_dropped: int = 0,
) -> dict[str, Any]:
    """The fields every daemon's status has (a role adds its own)."""
    return {
        "version": VERSION,
        "role": role,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": wall,
        "config": {"path": str(path), "loaded_at": loaded_at},
        "control": control,
        "metrics": metrics,
        "metrics_error": metrics_error,
        "log_lines_dropped": log_lines_dropped,
    }


def _power(power: Power) -> dict[str, Any]:
    return {
        "status": power.status.value,
        "charge_pct": power.charge_pct,
        "runtime_s": power.runtime_s,
        "load_pct": power.load_pct,
        "input_v": power.input_v,
    }


def _outcome(outcome: Outcome) -> dict[str, Any]:
    return {
        "result": outcome.result,
        "exit_code": outcome.exit_code,
        "duration_s": round(outcome.duration_s, 4),
        "output": outcome.output,
    }


def controller(
    core: Controller,
    *,
    workers: dict[str, list[Worker]],
    actions: ActionQueue,
    tally: Tally,
    keyring: Keyring,
    config: ControllerConfig,
    now: float,
) -> dict[str, Any]:
    """The controller's own fields, in the documented version 1 form."""
    wall = time.time()
    zones = [zone(core, workers, name, now, wall) for name in core.zones]
    publishers = []
    for publisher, session in sorted(core.sessions.items()):
        m = session.message
        publishers.append(
            {
                "id": publisher,
                "fresh": session.fresh(now),
                "age_s": round(now - session.received_at, 3),
                "expires_in_s": round(session.expires_at - now, 3),
                "tal_s": m.tal,
                "epoch": m.epoch,
                "seq": m.seq,
                "change": m.change,
                "sent": m.sent,
                "power": _power(m.power),
                "temperatures": dict(m.temperatures),
            }
        )
    counters = core.counters
    running = actions.running
    return {
        "zones": zones,
        "publishers": publishers,
        "datagrams": {
            "received": counters["received"],
            "accepted": {v: counters[v] for v in ("new", "news", "repeat", "duplicate")},
            "rejected": _prefixed(counters, "rejected."),
            "unverified": _prefixed(counters, "accepted."),
            "blocked_sources": sorted(core.blocked_sources),
        },
        "actions": {
            "running": None
            if running is None
            else {"zone": running[0].zone, "state": running[0].state, "argv": running[1].argv},
            "pending": actions.pending(),
            "last": {state: _outcome(o) for state, o in sorted(actions.last.items())},
            "outcomes": {
                f"{state}/{result}": n for (state, result), n in sorted(tally.outcomes.items())
            },
            "durations": {
                state: {"buckets": hist.cumulative(), "sum": hist.total}
                for state, hist in sorted(tally.durations.items())
            },
        },
        "transitions": [
            {"zone": zone, "from": previous, "to": state, "count": n}
            for (zone, previous, state), n in sorted(tally.transitions.items())
        ],
        "rejections": rejections(core, now),
        "keys": keys(keyring, config.auth.mode, config.auth.scheme, config.auth.publishers),
        "network": _network(config.network),
    }


def zone(
    core: Controller, workers: dict[str, list[Worker]], name: str, now: float, wall: float
) -> dict[str, Any]:
    """One zone's entry in ``zones``: its state, why, the data behind it, override, actuators."""
    policy = core.zones[name]
    s = policy.situation
    override = policy.override

    def wall_of(mono: float) -> float:
        return wall - (now - mono)

    return {
        "zone": name,
        "state": policy.state,
        "fans": "on" if policy.level > 0 else "off",
        "level": policy.level,
        "stage": policy.stage,
        "reason": policy.reason,
        "since": wall_of(policy.since),
        "for_s": round(now - policy.since, 3),
        "battery_for_s": round(policy.battery_for(now), 3),
        "temp_high_c": policy.settings.temp_high_c,
        "sheds": policy.sheds_total,
        "flap_guard": {
            "holding": policy.flap_holding,
            "holds": policy.flap_holds,
            "recent_sheds": sum(1 for t in policy.sheds if t > now - policy.settings.flap_window_s),
            "max_sheds": policy.settings.flap_max_sheds,
            "window_s": policy.settings.flap_window_s,
        },
        "situation": {
            "power": s.power.value,
            "temperature_c": s.temperature,
            "hottest": s.hottest,
            "sources": list(s.sources),
            "stale": list(s.stale),
        },
        "override": None
        if override is None
        else {
            "fans": "on" if override.fans_on else "off",
            "until": wall_of(override.until),
            "left_s": round(max(0.0, override.until - now), 3),
            "who": override.who,
            "why": override.why,
        },
        "actuators": [
            {
                "name": w.driver.name,
                "position": _position(w.known),
                "desired": _position(w.desired),
                "level": w.known,
                "desired_level": w.desired,
                "status": w.status,
                "error": w.error or None,
                "attempts": w.attempts,
                "last_applied_at": w.last_applied_at,
                "last_verified_at": w.last_verified_at,
                "apply_durations": {"buckets": w.durations.cumulative(), "sum": w.durations.total},
            }
            for w in workers.get(name, [])
        ],
    }


def publisher(
    announcer: Announcer,
    *,
    config: PublisherConfig,
    sources: list[dict[str, Any]],
    sent: int,
    send_errors: int,
    keyring: Keyring,
    now: float,
) -> dict[str, Any]:
    """The publisher's own fields, in the documented version 1 form; ``sources`` as the
    publisher sees them (name, kind, ok, error, has_reading; traps for an snmp source
    with a trap listener)."""
    a = announcer
    return {
        "announcing": {
            "id": config.id,
            "epoch": a.epoch,
            "seq": a.seq,
            "change": a.change,
            "heartbeat_s": config.heartbeat_s,
            "tal_s": config.heartbeat_s * config.tal_factor,
            "next_in_s": round(max(0.0, a.next_at - now), 3),
            "power": _power(a.power),
            "temperatures": dict(a.temperatures),
        },
        "sources": sources,
        "sent": sent,
        "send_errors": send_errors,
        "keys": {
            "dir": str(keyring.directory),
            "ids": keyring.ids,
            "schemes": {str(i): scheme for i, scheme in keyring.schemes().items()},
            "fingerprints": _fingerprints(keyring),
            "key_id": config.auth.key_id,
            "scheme": config.auth.scheme,
        },
        "network": {**_network(config.network), "ttl": config.network.ttl},
    }


def _staged(zone: dict[str, Any]) -> str:
    """ ", stage 2 at 50 %" for a zone shed part way or past its first stage."""
    stage, level = zone.get("stage", 0), zone.get("level", 100)
    return f", stage {stage} at {level} %" if stage and (0 < level < 100 or stage > 1) else ""


MAX_REJECTIONS_SHOWN: Final = 16


def rejections(core: Controller, now: float) -> list[dict[str, Any]]:
    """The last rejection of each sender, latest first (at most MAX_REJECTIONS_SHOWN)."""
    latest = sorted(core.rejections.items(), key=lambda item: item[1].at, reverse=True)
    return [
        {
            "source": source,
            "publisher": r.publisher,
            "reason": r.reason,
            "detail": r.detail,
            "count": r.count,
            "age_s": round(now - r.at, 3),
            "hint": r.hint,
        }
        for source, r in latest[:MAX_REJECTIONS_SHOWN]
    ]


def _fingerprints(keyring: Keyring) -> dict[str, str]:
    """Each key's fingerprint by id (as text: a JSON object's keys are strings)."""
    return {str(key_id): keyring.fingerprints[key_id] for key_id in keyring.ids}


def _keys_text(keys: dict[str, Any]) -> str:
    """``key 1 fp 3f2a9c1b (hmac-sha256), key 2 fp ... (ed25519)``, or "none"."""
    prints = keys.get("fingerprints", {})
    schemes = keys.get("schemes", {})
    return (
        ", ".join(
            f"key {i} fp {prints.get(str(i), '?')} ({schemes.get(str(i), 'hmac-sha256')})"
            for i in keys["ids"]
        )
        or "none"
    )


def _level(level: int | None) -> str:
    return "unknown" if level is None else f"{_position(level)} {level} %"


def _position(level: int | None) -> str:
    return "unknown" if level is None else ("on" if level > 0 else "off")


def _prefixed(counters: Any, prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: n for k, n in sorted(counters.items()) if k.startswith(prefix)}


def _network(network: Any) -> dict[str, Any]:
    return {"group": network.group, "port": network.port, "interface": network.interface}


# --- text for people -----------------------------------------------------------------------


def render(status: dict[str, Any]) -> str:
    """The status as lines for a terminal."""
    if status.get("role") == "publisher":
        return _render_publisher(status)
    if status.get("role") == "controller":
        return _render_controller(status)
    if status.get("role") == "relay":
        return _render_relay(status)
    return "\n".join(_header(status))


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _clock(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))


def _header(status: dict[str, Any]) -> list[str]:
    config = status["config"]
    loaded = config["loaded_at"]
    metrics = status["metrics"] or "off"
    if status.get("metrics_error"):
        metrics = f"error {json.dumps(status['metrics_error'])} (retrying)"
    return [
        f"{status['role']} on {status['host']} (pid {status['pid']})",
        f"  config   {config['path']}, loaded {_clock(loaded)}"
        f" ({_ago(status['time'] - loaded)} ago)",
        f"  control  {status['control']}; metrics {metrics}",
    ]


def _reading(power: dict[str, Any], temperatures: dict[str, float | None]) -> str:
    parts = [power["status"]]
    for key, unit in (("charge_pct", "%"), ("runtime_s", " s"), ("load_pct", "% load")):
        if power.get(key) is not None:
            parts.append(f"{power[key]:g}{unit}")
    if power.get("input_v") is not None:
        parts.append(f"{power['input_v']:g} V in")
    temps = " ".join(
        f"{k}={'failed' if v is None else format(v, 'g')}" for k, v in sorted(temperatures.items())
    )
    return ", ".join(parts) + (f"; {temps}" if temps else "")


def keys(
    keyring: Keyring, mode: str, scheme: object, bindings: dict[str, list[int]]
) -> dict[str, Any]:
    """A receiver's ``keys`` entry: where its keys are, each id with its scheme and
    fingerprint, the schemes believed, and which keys may speak for which publisher."""
    return {
        "dir": str(keyring.directory),
        "ids": keyring.ids,
        "schemes": {str(i): s for i, s in keyring.schemes().items()},
        "fingerprints": _fingerprints(keyring),
        "mode": mode,
        "scheme": scheme,
        "publishers": bindings,
    }


def _keys_line(keys: dict[str, Any]) -> str:
    """``keys     key 1 fp 3f2a9c1b (hmac-sha256), key 2 fp ... (ed25519) in DIR (auth
    enforce, hmac-sha256; ups-a=1)``."""
    scheme = keys.get("scheme", "hmac-sha256")
    scheme = scheme if isinstance(scheme, str) else " + ".join(scheme)
    bound = keys.get("publishers") or {}
    binding = (
        "; " + " ".join(f"{p}={','.join(map(str, i))}" for p, i in sorted(bound.items()))
        if bound
        else ""
    )
    return f"keys     {_keys_text(keys)} in {keys['dir']} (auth {keys['mode']}, {scheme}{binding})"


def _render_controller(status: dict[str, Any]) -> str:
    lines = _header(status)
    network = status["network"]
    lines.append(f"  network  {network['group']}:{network['port']} on {network['interface']}")
    lines.append(f"  {_keys_line(status['keys'])}")
    for zone in status["zones"]:
        lines.append("")
        lines.append(
            f"zone {zone['zone']}: {zone['state'].upper()} (fans {zone['fans']}{_staged(zone)})"
            f" for {_ago(zone['for_s'])}"
        )
        lines.append(f"  why      {zone['reason']}")
        s = zone["situation"]
        temp = "none" if s["temperature_c"] is None else f"{s['temperature_c']:g} °C"
        hottest = f" ({s['hottest']})" if s["hottest"] else ""
        sources = ", ".join(s["sources"]) or "none"
        stale = f"; stale: {', '.join(s['stale'])}" if s["stale"] else ""
        lines.append(f"  data     power {s['power']}, temperature {temp}{hottest}")
        lines.append(f"           from {sources}{stale}")
        if (o := zone["override"]) is not None:
            lines.append(
                f"  override fans {o['fans']} until {_clock(o['until'])}"
                f" ({_ago(o['left_s'])} left) by {o['who']}: {o['why']}"
            )
        for a in zone["actuators"]:
            error = f": {a['error']}" if a["error"] else ""
            lines.append(
                f"  actuator {a['name']}: {_level(a['level'])}"
                f" (wants {_level(a['desired_level'])}),"
                f" {a['status']}{error}"
            )
    lines.append("")
    if not status["publishers"]:
        lines.append("publishers: none heard yet")
    else:
        lines.append("publishers:")
        width = max(len(p["id"]) for p in status["publishers"])
        for p in status["publishers"]:
            fresh = "fresh" if p["fresh"] else "STALE"
            lines.append(
                f"  {p['id']:<{width}}  {fresh}  age {_ago(p['age_s'])}"
                f" (TAL {p['tal_s']:g} s)  {_reading(p['power'], p['temperatures'])}"
            )
    d = status["datagrams"]
    accepted = ", ".join(f"{k} {n}" for k, n in d["accepted"].items())
    rejected = ", ".join(f"{k} {n}" for k, n in d["rejected"].items()) or "none"
    lines.append(f"datagrams: {d['received']} received; accepted {accepted}; rejected {rejected}")
    if d["unverified"]:
        unverified = ", ".join(f"{k} {n}" for k, n in d["unverified"].items())
        lines.append(f"  accepted without a good tag (auth permissive): {unverified}")
    lines += _render_rejections(status.get("rejections", []))
    actions = status["actions"]
    running = actions["running"]
    lines.append(
        f"actions: {actions['pending']} pending"
        + (f"; running {' '.join(running['argv'])} ({running['state']})" if running else "")
    )
    for state, o in actions["last"].items():
        code = "" if o["exit_code"] is None else f" exit {o['exit_code']}"
        lines.append(f"  last on {state}: {o['result']}{code} in {o['duration_s']:.2f} s")
    return "\n".join(lines)


def _render_rejections(rejected: list[dict[str, Any]]) -> list[str]:
    if not rejected:
        return []
    lines = ["last rejected, by sender:"]
    for r in rejected:
        who = f" ({r['publisher']})" if r["publisher"] else ""
        lines.append(
            f"  {r['source']}{who}: {r['reason']} {r['detail']}"
            f" ({r['count']} times, last {_ago(r['age_s'])} ago)"
        )
        if r["hint"]:
            lines.append(f"    {r['hint']}")
    return lines


def _render_publisher(status: dict[str, Any]) -> str:
    lines = _header(status)
    network = status["network"]
    keys = status["keys"]
    key_id = keys["key_id"]
    if key_id:
        fp = keys.get("fingerprints", {}).get(str(key_id), "?")
        signing = f"signed with key {key_id} fp {fp} ({keys.get('scheme', 'hmac-sha256')})"
    else:
        signing = "UNSIGNED"
    lines.append(
        f"  network  {network['group']}:{network['port']} on {network['interface']}"
        f" (ttl {network['ttl']})"
    )
    lines.append(f"  keys     {signing}; have {_keys_text(keys)} in {keys['dir']}")
    a = status["announcing"]
    lines.append("")
    lines.append(f"announcing as {a['id']}: {_reading(a['power'], a['temperatures'])}")
    lines.append(
        f"  every {a['heartbeat_s']:g} s (TAL {a['tal_s']:g} s), seq {a['seq']},"
        f" change {a['change']}; sent {status['sent']}, send errors {status['send_errors']}"
    )
    lines.append("sources:")
    for s in status["sources"]:
        health = "ok" if s["ok"] else f"FAILING: {s['error']}"
        lines.append(f"  {s['name']}: {health}")
        if "traps" in s:
            lines.append(f"    {_traps(s['traps'])}")
    return "\n".join(lines)


def _traps(traps: dict[str, Any]) -> str:
    """One line for a source's SNMP trap listener."""
    where = f"traps on {traps['listen']}"
    if not traps["listening"]:
        return f"{where}: NOT LISTENING: {traps['error']}"
    heard = ", ".join(f"{k} {n}" for k, n in traps["events"].items() if n) or "none"
    dropped = ", ".join(f"{k} {n}" for k, n in traps["dropped"].items() if n) or "none"
    return f"{where}: heard {heard}; dropped {dropped}; reads brought forward {traps['confirms']}"


def _render_relay(status: dict[str, Any]) -> str:
    lines = _header(status)
    n, b = status["network"], status["broker"]
    lines.append(f"  network  {n['group']}:{n['port']} on {n['interface']} ({status['direction']})")
    where = f"{b['host']}:{b['port']} topic {b['topic']}"
    if b["connected"]:
        state = f"connected since {_clock(b['connected_since'])}"
    elif b["down_since"] is None:
        state = "connecting"
    else:
        state = (
            f"UNREACHABLE since {_clock(b['down_since'])}"
            f" ({_ago(status['time'] - b['down_since'])}, {b['attempts']} attempts): {b['error']}"
        )
    lines.append(f"  broker   {where}: {state}")
    if "keys" in status:
        lines.append(f"  {_keys_line(status['keys'])}")
    c = status["counters"]
    for side, what in (("segment", "heard here -> broker"), ("broker", "from broker -> here")):
        counts = ", ".join(
            f"{outcome} {c.get(f'{side}_{outcome}', 0)}"
            for outcome in ("received", "relayed", "seen", "expired", "undecodable", "lost")
        )
        lines.append(f"  {what}: {counts}")
    return "\n".join(lines)
