"""``powercast relay``: the group on this segment <-> a topic on an MQTT broker, and back.

Many networks do not route multicast between halls or sites. A relay on each segment
joins the group, publishes every announcement it hears to one topic on a broker the
sites already share, and multicasts on its segment what other relays published there.

Theory of operation:

* **Byte for byte.** A datagram is carried as the exact bytes heard; nothing is signed,
  unsigned or rewritten, so authentication stays end to end and the broker (and the
  relay) need not be trusted: a datagram changed on the way fails its tag at the
  controller. The relay decodes only to judge freshness (``sent + tal``), and carries
  nothing that does not decode (counted as ``undecodable``, logged at most once per
  reason and side every 10 s).
* **Nothing unverified steers it.** A relay never lets a datagram it has not verified
  change what it forwards later. Given keys (``[auth] mode = "enforce"``), it checks the
  tag before anything else, within the verify budgets of the datagram's source and of the
  publisher it names, and whether that key may speak for that publisher (``[auth]
  publishers``); it drops what fails, counted under the reason (``unsigned``,
  ``unknown_key``, ``over_budget``, ``bad_tag``, ``wrong_key``). Without keys it cannot
  tell a forgery, so it carries every datagram that decodes, and keeps no per-publisher
  state that one could poison: no "highest seq seen" that a forged seq 2^63-1 would
  raise above every real one.
* **Each datagram once, no loops.** The relay remembers the digests of the last
  ``WINDOW`` datagrams it passed on, in either direction, oldest forgotten first. The
  very same bytes again are ``seen`` and go no further. So a relay never re-sends its
  own output (its own multicast heard back, its own publication echoed by the broker:
  MQTT v5's no-local keeps the latter from even arriving), and several relays on one
  segment cannot ping-pong: relay B hears what relay A multicast, finds it seen (from
  the broker) and does not publish it again. What still reaches a controller twice (two
  relays of one site each bringing the same datagram in) is the exact duplicate
  controllers already drop as ``duplicate``, before the policy. Only exact repeats
  stop: an older seq goes on, and the controllers, which verify, call it a ``replay``.
  A forgery can thus block only its own bytes, and only for the window.
* **Bounded intake.** The relay asks the broker (MQTT v5 Maximum Packet Size) for no
  packet over ``MAX_PACKET``, far above any datagram, so a huge message on the topic is
  dropped by the broker for this client and never read; anything longer than a
  datagram that arrives anyway is dropped unread as ``oversize``.
* **Nothing stored, nothing late.** QoS 0, no retain, a clean session: the broker never
  keeps a datagram for later. A datagram from the broker that its own TAL says has
  already expired (``sent + tal`` before the relay's clock) is dropped as ``expired``:
  controllers judge freshness from arrival, so a stale datagram must not arrive.
* **Several datagrams per message.** A burst heard on the segment goes to the broker as
  few MQTT messages: a *batch* is ``BATCH_MAGIC`` (``PWRB``, then the format version 1)
  followed by each datagram as a 2-byte big-endian length and its exact bytes. A lone
  datagram goes as it is (a bare datagram, ``PWRC...``), so nothing waits for a batch to
  fill, and relays that know only bare datagrams still take it; a batch they count as
  ``undecodable`` (``magic``) and never misread. What does not unpack whole (a length
  running past the end, an empty batch, an unknown version) is dropped as ``unframed``,
  and each datagram in a batch goes through every check a bare one does.
* **Broker down.** The relay reconnects with backoff (``broker.reconnect_min_s``
  doubling to ``reconnect_max_s``), logs ``broker_unreachable`` once per outage and
  ``broker_recovered`` when it is back, and shows it in its status. Announcements heard
  meanwhile are dropped (``lost``), not queued: controllers behind the relay go stale
  after the TAL and fail safe, as they would if a cable were cut.

This module is the core (:class:`Relay`), pure; the daemon that owns the sockets and
the MQTT client (aiomqtt) is :mod:`powercast.runtime.relay`, over the lifecycle of the
other daemons (Type=notify, watchdog, reload, stop).
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from typing import Any, Final, Literal

from powercast import wire
from powercast.auth import Gate

Side = Literal["segment", "broker"]
"""Where a datagram came from: heard on the group here, or received from the broker."""

WINDOW: Final = 8192
"""Datagrams passed on whose digests are remembered, to stop exact repeats (loops)."""
TABLE_SIZE: Final = 4096
"""Publisher ids kept for the status; the oldest is forgotten first."""
MAX_PACKET: Final = 64 * 1024
"""The largest MQTT packet the broker may send us; a datagram is at most
wire.MAX_DATAGRAM bytes plus the topic and a few bytes of header."""
OUTBOX_SIZE: Final = 256
"""MQTT messages waiting to be written to the broker (at most BATCH_BYTES each); beyond
that (a broker too slow) what would be queued is lost."""
BATCH_MAGIC: Final = b"PWRB\x01"
"""The head of a batch: not wire.MAGIC, so it never decodes as a datagram."""
BATCH_BYTES: Final = 32 * 1024
"""The most one batch message carries, well below MAX_PACKET."""
LOG_EVERY_S: Final = 10.0


class Relay:
    """Which datagrams go on, in each direction; pure (the wall clock comes in).

    With a ``gate``, only datagrams it passes go on (tag, budget, key for the publisher);
    without, every datagram that decodes does. Either way nothing that fails is remembered.
    """

    def __init__(
        self,
        gate: Gate | None = None,
        window: int = WINDOW,
        table_size: int = TABLE_SIZE,
    ) -> None:
        self.gate = gate
        self.window = window
        self.table_size = table_size
        self.recent: OrderedDict[bytes, None] = OrderedDict()
        """Digests of the last ``window`` datagrams passed on, oldest first."""
        self.publishers: OrderedDict[str, None] = OrderedDict()
        """Publisher ids of datagrams passed on, for the status only: never a filter."""
        self.counters: Counter[str] = Counter()
        """``<side>_<outcome>``: received, oversize, seen, expired, undecodable and, with
        keys, unsigned, unknown_key, over_budget, bad_tag, wrong_key (here); relayed,
        lost (by the runtime, once the datagram was sent on or could not be)."""

    def admit(self, data: bytes, side: Side, wall: float, source: str | None = None) -> str | None:
        """None when ``data`` goes on; else why not: ``oversize``, ``seen``,
        ``expired``, an authentication reason (``bad_tag``, ...) or the decode reason
        (``magic``, ``body``, ...; counted as ``undecodable``). ``source``: the address it
        was heard from, for its verify budget (None from the broker, which hides it);
        the budgets run on ``wall``, never backwards."""
        self.counters[f"{side}_received"] += 1
        if len(data) > wire.MAX_DATAGRAM:
            self.counters[f"{side}_oversize"] += 1
            return "oversize"
        try:
            envelope = wire.open_envelope(data)
            # The tag before the body: a forgery is never decoded, let alone remembered.
            problem = self.gate.check(envelope, source, wall) if self.gate is not None else None
            if problem is not None:
                self.counters[f"{side}_{problem}"] += 1
                return problem
            message = wire.decode_body(envelope)
        except wire.DecodeError as err:
            self.counters[f"{side}_undecodable"] += 1
            return err.reason
        if side == "broker" and wall > message.sent + message.tal:
            self.counters[f"{side}_expired"] += 1
            return "expired"
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest in self.recent:
            self.counters[f"{side}_seen"] += 1
            return "seen"
        _remember(self.recent, digest, self.window)
        _remember(self.publishers, message.publisher, self.table_size)
        return None


def pack(datagrams: list[bytes], limit: int = BATCH_BYTES) -> list[tuple[bytes, int]]:
    """MQTT payloads carrying ``datagrams`` in order, with how many each holds: a lone
    datagram as it is, more as batches of at most ``limit`` bytes."""
    out: list[tuple[bytes, int]] = []
    i = 0
    while i < len(datagrams):
        parts = [BATCH_MAGIC]
        size, start = len(BATCH_MAGIC), i
        while i < len(datagrams) and (i == start or size + 2 + len(datagrams[i]) <= limit):
            data = datagrams[i]
            parts += (len(data).to_bytes(2, "big"), data)
            size += 2 + len(data)
            i += 1
        out.append((datagrams[start], 1) if i - start == 1 else (b"".join(parts), i - start))
    return out


def unpack(payload: bytes) -> list[bytes] | None:
    """The datagrams in an MQTT payload: a bare datagram is one; a batch its parts, each
    byte for byte; None when a batch does not unpack whole."""
    if not payload.startswith(BATCH_MAGIC[:4]):
        return [payload]
    if payload[4:5] != BATCH_MAGIC[4:]:
        return None
    view = memoryview(payload)
    out: list[bytes] = []
    at, end = len(BATCH_MAGIC), len(payload)
    while at < end:
        if at + 2 > end:
            return None
        size = int.from_bytes(view[at : at + 2], "big")
        at += 2
        if size == 0 or at + size > end:
            return None
        out.append(bytes(view[at : at + size]))
        at += size
    return out or None


def _remember(table: OrderedDict[Any, None], key: object, size: int) -> None:
    """Put ``key`` last in ``table``, forgetting the first beyond ``size``."""
    table[key] = None
    table.move_to_end(key)
    if len(table) > size:
        table.popitem(last=False)
