"""``powercast send``: a signed one-off announcement from the command line, for drills.

It is a real announcement: every controller on the group that accepts the publisher id
acts on it as on a UPS going on battery. So it never goes out by accident: without
``--drill`` it prints what it would send, where, and with which key, and exits 2 without
sending anything; with ``--drill`` it sends that. Other guards:

* the id defaults to ``drill-<host>``, never a real publisher's: an announcement under a
  live publisher's id with a new epoch would make controllers take it as that publisher
  restarted, and drop the real one's next datagrams as replays of an ended epoch until
  it restarts itself. An id equal to the ``id`` of the ``--config`` publisher file is
  refused for that reason;
* each send is a fresh random epoch, a burst of ``--repeat`` datagrams at the
  publisher's retransmission gaps (4, 8, 16 ms...) so one loss does not lose the drill,
  and with ``--hold S`` heartbeats every TAL/3 for S seconds (a drill of "on battery for
  longer than shed_after_s" needs that); after the last datagram the data goes stale at
  its TAL and controllers fail safe (fans on) until real data returns.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from powercast import net, wire
from powercast.config import host_id

FIRST_GAP_S = 0.004


@dataclass
class Drill:
    """One announcement to send, and where."""

    group: str
    port: int
    interface: str
    publisher: str
    power: wire.Power
    temperatures: dict[str, float] = field(default_factory=dict)
    ttl: int = 1
    tal_s: float = 3.0
    key_id: int = 0
    sign: Callable[[bytes], bytes] | None = None
    repeat: int = 3
    hold_s: float = 0.0

    def message(self, epoch: int, seq: int, wall: float) -> wire.Announcement:
        return wire.Announcement(
            publisher=self.publisher,
            epoch=epoch,
            seq=seq,
            change=1,
            sent=wall,
            tal=self.tal_s,
            power=self.power,
            temperatures=dict(self.temperatures),
        )

    def describe(self) -> str:
        """What will go out, in one line."""
        p = self.power
        parts = [p.status.value]
        for name, value, unit in (
            ("charge", p.charge_pct, "%"),
            ("runtime", p.runtime_s, " s"),
            ("load", p.load_pct, "%"),
            ("input", p.input_v, " V"),
        ):
            if value is not None:
                parts.append(f"{name} {value:g}{unit}")
        parts += [f"{k}={v:g} °C" for k, v in sorted(self.temperatures.items())]
        key = f"signed with key {self.key_id}" if self.key_id else "UNSIGNED"
        hold = f", then every {self.tal_s / 3:g} s for {self.hold_s:g} s" if self.hold_s else ""
        return (
            f"{self.publisher} announces {', '.join(parts)} (TAL {self.tal_s:g} s) to"
            f" {self.group}:{self.port} via {self.interface} (ttl {self.ttl}), {key}:"
            f" {self.repeat} datagrams{hold}"
        )


def default_id() -> str:
    return f"drill-{host_id()}"[:64]


def check(drill: Drill) -> None:
    """Raise wire.EncodeError now for a value no receiver would take (a bad id, a NaN)."""
    wire.encode(drill.message(1, 1, time.time()))


def send(drill: Drill, out: TextIO) -> int:
    """Send the burst (and heartbeats while holding); the number of datagrams sent."""
    sock = net.open_sender(drill.group, drill.port, drill.interface, ttl=drill.ttl, loop=True)
    sock.setblocking(True)
    epoch = secrets.randbits(63)
    seq = 0
    start = time.monotonic()
    try:
        times = _schedule(drill)
        for at in times:
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            seq += 1
            data = wire.encode(
                drill.message(epoch, seq, time.time()), key_id=drill.key_id, sign=drill.sign
            )
            try:
                sock.sendto(data, (drill.group, drill.port))
            except OSError as err:
                raise net.network_error(
                    err,
                    setting="network",
                    action="send",
                    group=drill.group,
                    port=drill.port,
                    interface=drill.interface,
                ) from None
    finally:
        sock.close()
    print(f"sent {seq} datagrams (epoch {epoch}): {drill.describe()}", file=out)
    return seq


def _schedule(drill: Drill) -> list[float]:
    """Send times after start: the burst at doubling gaps, then heartbeats while holding."""
    times, at, gap = [], 0.0, FIRST_GAP_S
    for _ in range(drill.repeat):
        times.append(at)
        at += gap
        gap *= 2
    heartbeat = drill.tal_s / 3
    at = heartbeat
    while at <= drill.hold_s:
        times.append(at)
        at += heartbeat
    return sorted(times)
