"""``powercast tap``: print every datagram on a group, decoded, with what a controller
would make of it (good, unsigned, bad_tag, unknown_key, replay, duplicate, clock, or why
it does not decode). For operators checking a new node, and for scripts.
"""

from __future__ import annotations

import json
import select
import time
from dataclasses import dataclass
from typing import Any, Final, TextIO

import msgspec

from powercast import net, wire
from powercast.auth import Keyring
from powercast.session import Session, Verdict


@dataclass
class Tap:
    """Classifies datagrams the way a controller would, keeping per-publisher order."""

    keyring: Keyring
    max_clock_skew_s: float = 10.0
    sessions: dict[str, Session] | None = None

    def classify(self, data: bytes, now: float, wall: float) -> tuple[str, wire.Frame | None, str]:
        """(result, frame or None, detail)."""
        sessions = self.sessions if self.sessions is not None else {}
        self.sessions = sessions
        try:
            frame = wire.decode(data)
        except wire.DecodeError as err:
            return ("not_ours" if err.reason is wire.Reject.magic else err.reason), None, err.detail
        problem = self.keyring.verify(frame)
        if problem is not None:
            return problem, frame, f"key id {frame.key_id}"
        message = frame.message
        skew = message.sent - wall
        if self.max_clock_skew_s and abs(skew) > self.max_clock_skew_s:
            return wire.Reject.clock, frame, f"sent {skew:+.1f} s from our clock"
        session = sessions.get(message.publisher)
        if session is None:
            sessions[message.publisher] = Session(message, now, now + message.tal)
            return "good", frame, "first from this publisher"
        verdict = session.offer(message, now)
        if verdict is Verdict.OLD:
            return wire.Reject.replay, frame, "older than a datagram already seen"
        if verdict is Verdict.DUPLICATE:
            return "duplicate", frame, "same epoch and sequence as the last"
        return "good", frame, verdict.value


def render(
    result: str, frame: wire.Frame | None, detail: str, *, source: str, wall: float, as_json: bool
) -> str:
    """One line of tap output: text for people, or a JSON object."""
    message = frame.message if frame else None
    if as_json:
        record: dict[str, Any] = {"time": wall, "from": source, "result": result, "detail": detail}
        if frame is not None and message is not None:
            record["key_id"] = frame.key_id
            record["message"] = msgspec.to_builtins(
                {
                    "publisher": message.publisher,
                    "epoch": message.epoch,
                    "seq": message.seq,
                    "change": message.change,
                    "sent": message.sent,
                    "tal": message.tal,
                    "power": {
                        f: getattr(message.power, f) for f in message.power.__struct_fields__
                    },
                    "temperatures": message.temperatures,
                }
            )
        return json.dumps(record)
    stamp = time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall % 1 * 1000):03d}"
    if message is None:
        return f"{stamp} {source} {result}: {detail}"
    power = message.power
    extras = " ".join(
        f"{name}={value:g}"
        for name, value in (
            ("charge_pct", power.charge_pct),
            ("runtime_s", power.runtime_s),
            ("load_pct", power.load_pct),
            ("input_v", power.input_v),
        )
        if value is not None
    )
    temps = " ".join(
        f"{k}={'failed' if v is None else format(v, 'g')}" for k, v in message.temperatures.items()
    )
    return (
        f"{stamp} {source} {result} {message.publisher} seq={message.seq}"
        f" change={message.change} power={power.status.value} {extras}"
        f" temps[{temps}] tal={message.tal:g} key={frame.key_id if frame else 0}"
        + (f" ({detail})" if result != "good" else "")
    )


HINTS: Final = (
    "no publisher (or relay) is running on this segment: systemctl status"
    " powercast-publisher on the UPS hosts",
    "another group or port: the publisher's network.group and network.port must be these"
    " (tap --config /etc/powercast/controller.toml reads them from the controller's file)",
    "wrong interface: --interface (network.interface) must name the control network the"
    " publishers send on; loopback hears only this host",
    "a publisher on this very host with network.loop = false: its datagrams are not looped"
    " back to local listeners",
    "IGMP snooping on a switch without an IGMP querier: joins age out after a few minutes"
    " and the switch stops forwarding the group (enable a querier on the VLAN)",
    "TTL too low: with a router between the nodes, the publisher's network.ttl must exceed"
    " the number of hops",
    "a firewall drops the group's UDP port here (nft list ruleset / iptables -L)",
    "`powercast ping` on this node and a publisher's host tests multicast both ways",
)
"""Why a tap hears nothing, most likely first."""


def nothing_heard(group: str, port: int, interface: str, seconds: float) -> str:
    """What tap says when its window closed on silence: where it listened, and why."""
    where = f"[{group}]" if ":" in group else group
    lines = [f"NOTHING HEARD on {where}:{port} via {interface} in {seconds:g} s", "Likely causes:"]
    return "\n".join([*lines, *(f"  - {hint}" for hint in HINTS)])


def run_tap(
    group: str,
    port: int,
    interface: str,
    tap: Tap,
    out: TextIO,
    *,
    as_json: bool = False,
    count: int | None = None,
    timeout: float | None = None,
) -> int:
    """Print datagrams until ``count`` were seen or ``timeout`` passed; 0 if any arrived,
    else 1 after saying NOTHING HEARD, where, and the likely causes."""
    sock = net.open_receiver(group, port, interface)
    sock.setblocking(False)
    seen = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while count is None or seen < count:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                break
            readable, _, _ = select.select([sock], [], [], wait)
            if not readable:
                continue
            data, addr = sock.recvfrom(65535)
            wall = time.time()
            result, frame, detail = tap.classify(data, time.monotonic(), wall)
            print(
                render(
                    result, frame, detail, source=f"{addr[0]}:{addr[1]}", wall=wall, as_json=as_json
                ),
                file=out,
            )
            out.flush()
            seen += 1
    finally:
        sock.close()
    if seen:
        return 0
    seconds = 0.0 if timeout is None else timeout
    if as_json:
        record = {
            "result": "nothing_heard",
            "group": group,
            "port": port,
            "interface": interface,
            "seconds": seconds,
            "hints": list(HINTS),
        }
        print(json.dumps(record), file=out)
    else:
        print(nothing_heard(group, port, interface, seconds), file=out)
    return 1
