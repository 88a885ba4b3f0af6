"""``powercast ping``: does multicast get through between these nodes, both ways, and how fast?

In the spirit of omping: run it on every node at about the same time, with the same group
and port. Each node multicasts a small ping every ``--interval``, answers every ping it
hears with a multicast pong, keeps answering for ``--timeout`` after its own last ping,
and then reports per peer: whether it was heard, the loss of its pings on the way here,
and the round trip of our pings (loss, p50/p99) from its pongs. RTTs are measured on our
own monotonic clock (the pong echoes our sequence number), so clocks need not agree.
When nothing is heard at all it says so plainly, with the usual causes.

A ping is not an announcement: its datagrams start with :data:`MAGIC` (``PWRP``, not the
announcements' ``PWRC``), so controllers on the same group count them as rejected for
``magic`` and ignore them, and ``powercast tap`` shows them as not_ours. The layout is the
wire format's (header, MessagePack body, HMAC-SHA256 tag or Ed25519 signature over
both), signed when a key is at hand; a peer with other keys shows as ``bad_tag`` or ``unknown_key``.
"""

from __future__ import annotations

import math
import secrets
import select
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

import msgspec

from powercast import net, wire
from powercast.auth import Keyring

MAGIC: Final = b"PWRP"
VERSION: Final = 1

_Node = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*\Z")
]
_U63 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class Probe(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A ping (``to`` = 0) or the pong answering one (``to`` = the pinger's run)."""

    kind: Literal["ping", "pong"]
    node: _Node
    run: _U63
    """Random per run of the command: tells our own datagrams, and a peer's restarts, apart."""
    seq: _U63
    """Ping: its number (1..count); pong: the number of the ping it answers."""
    count: _U63 = 0
    """Ping: how many the sender will send."""
    to: _U63 = 0


_decoder: Final = msgspec.msgpack.Decoder(Probe)
_encoder: Final = msgspec.msgpack.Encoder()


def encode(probe: Probe, keyring: Keyring | None = None, key_id: int = 0) -> bytes:
    body = _encoder.encode(probe)
    if not key_id:
        return wire.HEADER.pack(MAGIC, VERSION, 0, 0, len(body)) + body
    assert keyring is not None
    sign = keyring.signer(key_id)
    signed = wire.HEADER.pack(MAGIC, VERSION, sign.tag_size, key_id, len(body)) + body
    return signed + sign(signed)


def decode(data: bytes, keyring: Keyring) -> tuple[Probe, str] | None:
    """(probe, auth) for a ping datagram, else None. auth: ``good``, ``unsigned``,
    ``unknown_key`` or ``bad_tag``."""
    if len(data) < wire.HEADER.size or len(data) > wire.MAX_DATAGRAM:
        return None
    magic, version, tag_len, key_id, body_len = wire.HEADER.unpack_from(data)
    end = wire.HEADER.size + body_len
    if magic != MAGIC or version != VERSION or tag_len not in wire.TAG_SIZES:
        return None
    if end + tag_len != len(data) or (tag_len == 0) != (key_id == 0):
        return None
    try:
        probe = _decoder.decode(data[wire.HEADER.size : end])
    except msgspec.DecodeError:
        return None
    if key_id == 0:
        return probe, wire.Reject.unsigned
    if not keyring.holds(key_id, tag_len):
        return probe, wire.Reject.unknown_key
    good = keyring.check(key_id, data[:end], data[end:])
    return probe, "good" if good else wire.Reject.bad_tag


@dataclass
class Peer:
    """What we heard from one other node."""

    node: str
    address: str
    runs: set[int] = field(default_factory=set)
    pings: set[int] = field(default_factory=set)
    """Sequence numbers of its pings we heard."""
    rtts: dict[int, float] = field(default_factory=dict)
    """Our ping's sequence number -> its round trip (s), from the peer's pong."""
    auth: str = wire.Reject.unsigned
    key_id: int = 0

    def report(self) -> dict[str, Any]:
        expected = max(self.pings) - min(self.pings) + 1 if self.pings else 0
        asked = max(self.rtts) - min(self.rtts) + 1 if self.rtts else 0
        rtts = sorted(self.rtts.values())
        return {
            "node": self.node,
            "address": self.address,
            "heard": bool(self.pings),
            "hears_us": bool(self.rtts),
            "pings": len(self.pings),
            "expected": expected,
            "loss_pct": _pct(expected - len(self.pings), expected),
            "answers": len(self.rtts),
            "asked": asked,
            "rtt_loss_pct": _pct(asked - len(self.rtts), asked),
            "rtt_ms": None
            if not rtts
            else {
                "min": round(rtts[0] * 1000, 3),
                "p50": round(_percentile(rtts, 50) * 1000, 3),
                "p99": round(_percentile(rtts, 99) * 1000, 3),
                "max": round(rtts[-1] * 1000, 3),
            },
            "auth": self.auth,
            "key_id": self.key_id,
            "runs": len(self.runs),
        }


def _pct(lost: int, of: int) -> float | None:
    return round(100.0 * lost / of, 1) if of else None


def _percentile(ordered: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p % of the values at or below it."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Pinger:
    """One run: sends pings, answers others', keeps the tally. The caller owns the loop."""

    node: str
    keyring: Keyring
    key_id: int = 0
    count: int = 10
    run: int = field(default_factory=lambda: secrets.randbits(63) or 1)
    sent_at: dict[int, float] = field(default_factory=dict)
    peers: dict[str, Peer] = field(default_factory=dict)
    self_heard: int = 0
    announcements: int = 0
    """powercast announcements seen on the group: publishers' traffic gets here."""
    other: int = 0

    def ping(self, now: float) -> bytes:
        seq = len(self.sent_at) + 1
        self.sent_at[seq] = now
        return self._encode(Probe("ping", self.node, self.run, seq, count=self.count))

    def receive(self, data: bytes, address: str, now: float) -> bytes | None:
        """Take one datagram; return the pong to send, if it was someone's ping."""
        decoded = decode(data, self.keyring)
        if decoded is None:
            if data[:4] == wire.MAGIC:
                self.announcements += 1
            else:
                self.other += 1
            return None
        probe, auth = decoded
        if probe.run == self.run:
            self.self_heard += probe.kind == "ping"
            return None
        peer = self.peers.get(probe.node)
        if peer is None:
            peer = self.peers[probe.node] = Peer(probe.node, address)
        peer.runs.add(probe.run)
        peer.auth = auth
        peer.key_id = wire.HEADER.unpack_from(data)[3]
        if probe.kind == "ping":
            peer.pings.add(probe.seq)
            return self._encode(Probe("pong", self.node, self.run, probe.seq, to=probe.run))
        if probe.to == self.run and probe.seq in self.sent_at and probe.seq not in peer.rtts:
            peer.rtts[probe.seq] = now - self.sent_at[probe.seq]
        return None

    def _encode(self, probe: Probe) -> bytes:
        return encode(probe, self.keyring, self.key_id)


HINTS: Final = (
    "no other node ran `powercast ping` with the same group and port at the same time"
    " (start it on every node within a few seconds)",
    "wrong interface: --interface (network.interface) must name the control network on"
    " every node; loopback reaches no other host",
    "IGMP snooping on a switch without an IGMP querier: joins age out after a few minutes"
    " and the switch stops forwarding the group (enable a querier on the VLAN, or turn"
    " snooping off for it)",
    "TTL too low: with a router between the nodes, raise --ttl (network.ttl) above the"
    " number of hops; the default 1 stays on the segment",
    "a firewall drops the group's UDP port on one of the nodes (nft list ruleset /"
    " iptables -L: allow the group and port in and out)",
)


def run(
    pinger: Pinger,
    *,
    group: str,
    port: int,
    interface: str,
    interval: float,
    timeout: float,
    ttl: int = 1,
    expect: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Ping for ``count`` times ``interval`` plus ``timeout``; the report (JSON-ready)."""
    rx = net.open_receiver(group, port, interface)
    tx = net.open_sender(group, port, interface, ttl=ttl, loop=True)
    errors: list[str] = []

    def send(data: bytes) -> None:
        try:
            tx.sendto(data, (group, port))
        except OSError as err:
            if len(errors) < 5:
                errors.append(err.strerror or str(err))

    try:
        start = time.monotonic()
        next_ping, end = start, math.inf
        while (now := time.monotonic()) < end:
            if len(pinger.sent_at) < pinger.count and now >= next_ping:
                send(pinger.ping(now))
                next_ping += interval
                if len(pinger.sent_at) == pinger.count:
                    end = now + timeout
            wake = min(end, next_ping if len(pinger.sent_at) < pinger.count else end)
            readable, _, _ = select.select([rx], [], [], max(0.0, wake - time.monotonic()))
            while readable:
                try:
                    data, address = rx.recvfrom(65535)
                except BlockingIOError:
                    break
                answer = pinger.receive(data, address[0], time.monotonic())
                if answer is not None:
                    send(answer)
    finally:
        rx.close()
        tx.close()
    return report(
        pinger,
        group=group,
        port=port,
        interface=interface,
        ttl=ttl,
        expect=expect,
        send_errors=errors,
    )


def report(
    pinger: Pinger,
    *,
    group: str,
    port: int,
    interface: str,
    ttl: int,
    expect: tuple[str, ...] = (),
    send_errors: list[str] | None = None,
) -> dict[str, Any]:
    peers = [pinger.peers[n].report() for n in sorted(pinger.peers)]
    missing = [n for n in expect if n not in pinger.peers or not pinger.peers[n].pings]
    peers += [
        {"node": n, "address": None, "heard": False, "hears_us": False}
        for n in missing
        if n not in pinger.peers
    ]
    problems = []
    for p in peers:
        if not p["heard"]:
            problems.append(f"{p['node']}: not heard")
        elif not p["hears_us"]:
            problems.append(
                f"{p['node']}: heard, but it answered none of our pings: ours do not reach it"
                " (our interface or TTL, a firewall, or IGMP snooping on its side)"
            )
        elif p["auth"] != "good" and pinger.key_id:
            problems.append(f"{p['node']}: its datagrams are {p['auth']} with our keys")
    if send_errors:
        problems.append(f"sending failed: {'; '.join(send_errors)}")
    heard_any = any(p["heard"] for p in peers)
    if not pinger.self_heard:
        problems.append(
            "our own pings did not come back through the loopback: a local firewall or the"
            " interface drops the group"
        )
    return {
        "version": 1,
        "node": pinger.node,
        "group": group,
        "port": port,
        "interface": interface,
        "ttl": ttl,
        "key_id": pinger.key_id,
        "sent": len(pinger.sent_at),
        "self_heard": pinger.self_heard > 0,
        "announcements_seen": pinger.announcements,
        "peers": peers,
        "ok": heard_any and not problems,
        "problems": problems,
        "hints": [] if heard_any else list(HINTS),
    }


def render(result: dict[str, Any]) -> str:
    """The report as text for people."""
    key = f"signed with key {result['key_id']}" if result["key_id"] else "unsigned"
    lines = [
        f"ping from {result['node']} on {result['group']}:{result['port']} via"
        f" {result['interface']} (ttl {result['ttl']}), {result['sent']} pings, {key}",
        f"own pings looped back: {'yes' if result['self_heard'] else 'NO'};"
        f" powercast announcements seen: {result['announcements_seen']}",
    ]
    peers = result["peers"]
    if peers:
        header = (
            "peer",
            "address",
            "heard",
            "loss in",
            "hears us",
            "rtt loss",
            "p50",
            "p99",
            "auth",
        )
        rows = [header]
        for p in peers:
            if not p["heard"]:
                rows.append((p["node"], p["address"] or "-", "NO", "", "", "", "", "", ""))
                continue
            rtt = p["rtt_ms"]
            rows.append(
                (
                    p["node"],
                    p["address"],
                    f"{p['pings']}/{p['expected']}",
                    f"{p['loss_pct']:g}%",
                    "yes" if p["hears_us"] else "NO",
                    "" if p["rtt_loss_pct"] is None else f"{p['rtt_loss_pct']:g}%",
                    "" if rtt is None else f"{rtt['p50']:.2f} ms",
                    "" if rtt is None else f"{rtt['p99']:.2f} ms",
                    p["auth"] + (f" (key {p['key_id']})" if p["key_id"] else ""),
                )
            )
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
        lines += [
            "  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
    if not any(p["heard"] for p in peers):
        lines.append("")
        lines.append(
            "NOTHING HEARD: multicast between this node and any other is not getting through."
        )
        lines.append("Usual causes:")
        lines += [f"  - {hint}" for hint in result["hints"]]
    for problem in result["problems"]:
        lines.append(f"problem: {problem}")
    if result["ok"]:
        heard = sum(p["heard"] for p in peers)
        lines.append(f"multicast works both ways with {heard} peer{'s' if heard != 1 else ''}.")
    return "\n".join(lines)
