"""The controller's core: datagrams and timers in, decisions out.

No sockets, no clocks, no processes: the runtime passes each datagram with the
monotonic ``now`` to :meth:`Controller.receive`, calls :meth:`Controller.tick` at
:meth:`Controller.deadline`, and carries out the decisions that come back.

The datagram path is kept short: decode, verify, look up the publisher, and for a
heartbeat that repeats the same readings, only move its expiry. The situation is rebuilt
and the rules consulted when something changed: news, a reading that moved within the
publisher's deadband (it may still cross a threshold here), a new or returning
publisher, or expiry. The chart itself runs only when the state changes.
"""

from __future__ import annotations

import fnmatch
import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from powercast import wire
from powercast.auth import ED25519, HMAC, Gate, Keyring, describe, key_hint
from powercast.budget import SOURCES_KEPT, Budgets
from powercast.config import ControllerConfig, Zone
from powercast.pacing import Pacer
from powercast.policy import Decision, Override, Policy, Reading, Situation, combine
from powercast.session import Session, Verdict

NOTHING: Final[list[Decision]] = []
_COUNTED: Final = {verdict: verdict.value for verdict in Verdict}
"""Counter names by verdict: Enum.value is a Python-level property, too dear per datagram."""
MAX_PUBLISHERS: Final = 4096
"""Sessions kept at most: with authentication off, made-up publisher ids must not grow
memory and the work of every decision without bound."""
_push: Final = heapq.heappush
SUPERSEDED_KEPT: Final = 16
"""Expiry entries beyond two per live one kept before the superseded ones are dropped."""
LOG_EVERY_S: Final = 10.0
"""At most one log line per kind of rejected datagram in this many seconds."""
BLOCKED_TAGS: Final = 64
"""Forged tags dropped by the kernel's filter at most, the oldest leaving first. A flood
repeating a forgery costs nothing once its tag is here; one varying its tags, a check each."""
FORGED_KEPT: Final = 1024
"""Tags rejected as ``bad_tag`` remembered, to tell a repeated forgery when it comes again."""


SOURCE_STRIKES_PER_S: Final = 100.0
"""Datagrams a second that a source address may send and have rejected before the kernel
drops all of its datagrams (a publisher sends a few a second, news bursts included);
twice as many may come at once. Only rejections made before a datagram is believed count
(a bad header or body, a tag that fails or is not checked), and never from an address
that sent data that was taken: a flood varying its forgeries costs the controller that
many checks, then nothing."""
SOURCE_BLOCK_S: Final = 60.0
"""How long a source is blocked; it is blocked again if it goes on."""
MAX_BLOCKED_SOURCES: Final = 64
"""Sources blocked at most, the one whose block ends first leaving first."""
PROTECTED_EVERY_S: Final = 1.0
"""How often the addresses that may not be blocked (those publishers' data came from) are
gathered anew, at most: once per block, not once per rejection."""
_STRIKES: Final = frozenset(
    {
        wire.Reject.size, wire.Reject.truncated, wire.Reject.magic, wire.Reject.version,
        wire.Reject.tag, wire.Reject.length, wire.Reject.body, wire.Reject.unsigned,
        wire.Reject.unknown_key, wire.Reject.over_budget, wire.Reject.bad_tag,
        wire.Reject.wrong_key,
    }
)  # fmt: skip

MAX_SOURCES: Final = 256
"""Senders whose last rejection is kept for status; the oldest is forgotten first."""
JUDGE_EVERY_S: Final = 1.0
"""At most one rejected datagram a second is judged anew (whose is it, what to do): a
flood of forgeries costs its check and a lookup each, not a hint written each."""


@dataclass
class Rejection:
    """The last datagram rejected from one sender (an address), for status."""

    reason: str
    detail: str
    at: float
    count: int = 1
    publisher: str | None = None
    """The publisher id it claimed (judged at most once a second), or sent good data as."""
    hint: str | None = None
    """What to do, for datagrams that failed authentication."""
    ours: bool | None = None
    """Judged to be one of ours (see Controller._diagnose); None: not judged yet."""


@dataclass
class Notice:
    """Something the runtime should log: a rate-limited summary of rejected datagrams."""

    event: str
    fields: dict[str, Any]


@dataclass
class Controller:
    """All publishers' sessions feeding one policy per zone."""

    config: ControllerConfig
    keyring: Keyring = field(default_factory=lambda: Keyring(Path()))
    gate: Gate = field(init=False)
    """The tag, its budget and the key's publisher, checked before the body is read."""
    zones: dict[str, Policy] = field(init=False)
    zone_configs: dict[str, Zone] = field(init=False)
    sessions: dict[str, Session] = field(default_factory=dict)
    _counts: Counter[str] = field(default_factory=Counter)
    received: int = 0
    """Datagrams given to :meth:`receive`."""
    _glanced: int = 0
    """Repeats taken at a glance: kept apart from :attr:`counters` as a plain int, which
    costs a tenth of a Counter's item on the path every heartbeat takes."""
    notices: list[Notice] = field(default_factory=list)
    _expiries: list[tuple[float, str]] = field(default_factory=list)
    """Publishers' expiries, a heap with one live entry per publisher: the time in
    :attr:`_armed`. A heartbeat only moves its session's expiry later and pushes nothing;
    the entry, when due, is pushed again at the session's expiry if that moved."""
    _armed: dict[str, float] = field(default_factory=dict)
    _allowed: frozenset[str] = field(init=False)
    _pacer: Pacer = field(default_factory=lambda: Pacer(LOG_EVERY_S))
    blocked: dict[bytes, None] = field(default_factory=dict)
    """Tags of forgeries seen twice, oldest first: the runtime has the kernel drop
    datagrams ending in one (:mod:`powercast.sockfilter`). Only tags checked and found
    bad (an HMAC or an Ed25519 signature under a key we hold), so no datagram we would
    take can end in one; a datagram dropped over its verify budget was never checked."""
    blocked_changed: bool = False
    """Set when :attr:`blocked` changed (or the keys did); the runtime clears it."""
    _forged: dict[bytes, None] = field(default_factory=dict)
    blocked_sources: dict[str, float] = field(default_factory=dict)
    """Source addresses whose datagrams the kernel drops, with when that ends: each had
    datagrams rejected faster than SOURCE_STRIKES_PER_S and sent none that was taken.
    IPv4 only: the filter reads the source in the IPv4 header."""
    _block_from: float = float("-inf")
    """No source is blocked before the start-up grace has passed: every publisher has had
    the time to be heard, and its address to be known as one never to block."""
    _protected: frozenset[str] = frozenset()
    _protected_until: float = float("-inf")
    _strikes: Budgets = field(
        default_factory=lambda: Budgets(
            SOURCE_STRIKES_PER_S, 2 * SOURCE_STRIKES_PER_S, SOURCES_KEPT
        )
    )
    evaluations: int = 0
    """Runs of the rules: only they (and new data's expiry) can bring :meth:`deadline`
    earlier; a heartbeat that repeats its readings only moves its publisher's expiry later."""
    unsettled: bool = False
    """A datagram taken with ``evaluate=False`` changed what the rules see."""
    rejections: dict[str, Rejection] = field(default_factory=dict)
    """The last rejection by sender address (at most MAX_SOURCES), for status."""
    _good_from: dict[str, str] = field(default_factory=dict)
    """Sender addresses that sent good news, with the publisher they sent it as (at most
    MAX_PUBLISHERS: one per publisher heard, so none is forgotten while it is heard, and
    none can be blocked as a flood's source)."""
    _look_after: float = float("-inf")
    """When the next rejected datagram may be judged anew (JUDGE_EVERY_S)."""
    _named: frozenset[str] = field(init=False)
    _sensor_globs: tuple[str, ...] = field(init=False)
    accepted: int = 0
    """Datagrams taken (not rejected): while it stays put, no deadline can have moved."""
    grace_until: float = float("-inf")
    """Until then, a zone without any fresh data waits instead of failing safe: after a
    restart, the first heartbeats decide, so nothing that is right gets toggled."""

    def __post_init__(self) -> None:
        self.zone_configs = {z.name: z for z in self.config.effective_zones()}
        self.zones = {
            name: Policy(self.config.policy_for(zone), zone=name)
            for name, zone in self.zone_configs.items()
        }
        self._allowed = frozenset(self.config.policy.publishers)
        self.gate = _gate(self.config, self.keyring)
        self._name_publishers()

    def _name_publishers(self) -> None:
        """The publisher ids the config names (policy, auth.publishers, zones, zones'
        sensor globs)."""
        named = set(self.config.policy.publishers) | set(self.config.auth.publishers)
        for zone in self.config.zones:
            named.update(zone.publishers)
        self._named = frozenset(named)
        self._sensor_globs = tuple(
            glob.split("/", 1)[0] for zone in self.config.zones for glob in zone.sensors
        )

    @property
    def counters(self) -> Counter[str]:
        """Datagrams by outcome: ``received``; taken, by verdict (``new``, ``news``,
        ``repeat``, ``duplicate``); ``rejected.<reason>``; ``accepted.<problem>`` (taken,
        though not authentic, under ``auth.mode = "permissive"``)."""
        counts = Counter(self._counts)
        counts["received"] = self.received
        counts["repeat"] += self._glanced
        return counts

    @property
    def policy(self) -> Policy:
        """The first zone's policy (the only one in a config without [[zones]])."""
        return next(iter(self.zones.values()))

    def reconfigure(self, config: ControllerConfig, keyring: Keyring, now: float) -> list[Decision]:
        """Take a new config and keys, keeping the state and what is known of publishers."""
        self.config = config
        self.keyring = keyring
        self.gate = _gate(config, keyring)
        self.zone_configs = {z.name: z for z in config.effective_zones()}
        self.zones = {  # zones that stay keep their state; new ones start in failsafe
            name: self.zones.get(name) or Policy(config.policy_for(zone), zone=name)
            for name, zone in self.zone_configs.items()
        }
        for name, policy in self.zones.items():
            policy.settings = config.policy_for(self.zone_configs[name])
        self._allowed = frozenset(config.policy.publishers)
        self._name_publishers()
        if self._allowed:  # publishers no longer listed stop counting now, not at their TAL
            self.sessions = {p: s for p, s in self.sessions.items() if p in self._allowed}
        cap = config.policy.max_tal_s
        for session in self.sessions.values():
            session.max_tal = cap  # data taken under a longer cap counts no longer than this
            session.expires_at = min(session.expires_at, session.received_at + cap)
        self._rearm(now)
        self._forged.clear()  # a tag bad under the old keys may be good under the new ones
        self.blocked.clear()
        self.blocked_sources.clear()  # and a sender's rejections may have been the keys'
        self._strikes.buckets.clear()
        self.blocked_changed = True
        return self.evaluate(now)

    def evaluate(self, now: float, only: Iterable[str] | None = None) -> list[Decision]:
        """Run every zone's rules (or those named) on the current data."""
        self.evaluations += 1
        fresh, stale = self._fresh(now)
        decisions: list[Decision] = []
        for name in self.zones if only is None else only:
            situation = self._situation(name, fresh, stale)
            policy = self.zones[name]
            if not situation.sources and not policy.settled and now < self.grace_until:
                continue  # just started: wait for the first heartbeat, not failsafe at once
            decisions += policy.evaluate(situation, now)
        return decisions

    def start(self, now: float) -> None:
        """Begin the startup grace: zones wait up to policy.startup_grace_s for data."""
        self.grace_until = now + self.config.policy.startup_grace_s
        self._block_from = self.grace_until
        for policy in self.zones.values():
            policy.since = now if policy.since == 0.0 else policy.since

    def set_override(self, zone: str, override: Override | None, now: float) -> list[Decision]:
        """An operator's override for one zone (None clears it), applied at once."""
        self.zones[zone].override = override
        return self.evaluate(now, only=[zone])

    def receive(
        self,
        data: bytes,
        now: float,
        wall: float,
        source: str | None = None,
        *,
        evaluate: bool = True,
    ) -> list[Decision]:
        """One datagram, at monotonic ``now`` and wall-clock ``wall``, from address
        ``source`` (for its verify budget; rejections are kept and diagnosed by it).

        Never raises for bad input: it is counted by reason and dropped, and it cannot
        touch any publisher's session, so it cannot change a decision. With ``evaluate``
        false, the rules are not run now but noted for :meth:`settle`: a batch of
        datagrams read together is then judged once, on all of them (with a thousand
        publishers a run of the rules costs a millisecond; one per datagram fell behind).
        """
        self.received += 1
        mode = self.config.auth.mode
        try:
            envelope = wire.open_envelope(data)
            # Enforcing, the tag is checked before the body is decoded: a flood of
            # forgeries costs a check each (within its budget), and no forged byte
            # reaches the decoder beyond the publisher id it claims.
            problem = self.gate.check(envelope, source, now) if mode != "off" else None
            if problem is not None and mode == "enforce":
                self._refuse(envelope, problem, source, now)
                return NOTHING
            glance = wire.glance(envelope)
            if (
                problem is None
                and glance is not None
                and self._heartbeat(glance, now, wall, source)
            ):
                return NOTHING
            message = wire.decode_body(envelope)
        except wire.DecodeError as err:
            self._reject(err.reason, err.detail, now, source)
            return NOTHING
        publisher = message.publisher
        if problem is not None:  # permissive: taken, but counted and said
            self._counts[f"accepted.{problem}"] += 1
            detail = f"from {publisher!r} with key id {envelope.key_id}"
            self._notice(f"accepted.{problem}", "datagram_not_authentic", problem, detail, now)
        skew = self.config.auth.max_clock_skew_s
        if skew and abs(message.sent - wall) > skew:
            self._reject(
                wire.Reject.clock,
                f"from {publisher!r} sent {message.sent - wall:+.1f} s from our clock"
                f" (auth.max_clock_skew_s = {skew:g})",
                now,
                source,
            )
            return NOTHING
        if self._allowed and publisher not in self._allowed:
            self._reject(
                wire.Reject.unlisted,
                f"publisher {publisher!r} is not in policy.publishers",
                now,
                source,
            )
            return NOTHING
        session = self.sessions.get(publisher)
        if session is None:
            if len(self.sessions) >= MAX_PUBLISHERS and not self._make_room(now):
                self._reject(
                    wire.Reject.capacity,
                    f"{MAX_PUBLISHERS} publishers fresh; {publisher!r} not taken",
                    now,
                    source,
                )
                return NOTHING
            session = Session.first(message, now, self.config.policy.max_tal_s)
            self.sessions[publisher] = session
            verdict = Verdict.NEW
            was_fresh = False
            before = None
            power = None
        else:
            was_fresh = now < session.expires_at  # session.fresh(now), without the call
            before = session.message.temperatures
            power = session.message.power
            verdict = session.offer(message, now)
        if verdict is Verdict.OLD:
            self._reject(
                wire.Reject.replay,
                f"from {publisher!r} epoch {message.epoch} seq {message.seq}, older than"
                f" epoch {session.message.epoch} seq {session.message.seq}",
                now,
                source,
            )
            return NOTHING
        self._counts[_COUNTED[verdict]] += 1
        self.accepted += 1
        if verdict is Verdict.DUPLICATE:
            return NOTHING
        session.glance = glance  # taken: its readings are the session's now
        self._taken_from(session, source)
        sooner = self._arm(publisher, session.expires_at)
        if (
            verdict is Verdict.REPEAT
            and was_fresh
            and not sooner  # a shorter TAL: the rules run, so the runtime re-arms its timer
            and message.temperatures == before
            and power is not None
            and message.power.runtime_s == power.runtime_s  # a move within the deadband
            and message.power.charge_pct == power.charge_pct  # may still cross a stage
        ):
            return NOTHING  # a heartbeat with the very same readings: nothing to decide
        self._heard_from(source, publisher)
        self.unsettled = not evaluate  # evaluating now covers any datagram taken before
        return self.evaluate(now) if evaluate else NOTHING

    def _heartbeat(self, glance: wire.Glance, now: float, wall: float, source: str | None) -> bool:
        """Take an authentic datagram at a glance if it only repeats its fresh publisher's
        readings (the usual datagram: its expiry moves, nothing else); False, taking
        nothing, for anything else, which :meth:`receive` then reads whole."""
        session = self.sessions.get(glance.publisher)
        skew = self.config.auth.max_clock_skew_s
        if (
            session is None
            or now >= session.expires_at  # a returning publisher is news
            or (skew and abs(glance.sent - wall) > skew)
            or not session.heartbeat(glance, now)
        ):
            return False
        self._glanced += 1
        self.accepted += 1
        session.source = source  # _taken_from, inline on the path every heartbeat takes
        if self.blocked_sources and source in self.blocked_sources:
            self._unblock(source)
        return True

    def _taken_from(self, session: Session, source: str | None) -> None:
        """``session``'s latest datagram, taken, came from ``source``: an address that
        is never blocked, and no longer is if its block came before this datagram."""
        session.source = source
        if self.blocked_sources and source in self.blocked_sources:
            self._unblock(source)

    def settle(self, now: float) -> list[Decision]:
        """The rules run on what :meth:`receive` took without running them, if anything."""
        if not self.unsettled:
            return NOTHING
        self.unsettled = False
        return self.evaluate(now)

    def tick(self, now: float) -> list[Decision]:
        """Timers: publishers running out of time, and the policy's own deadlines; the
        end of a source's block."""
        if self.blocked_sources:
            ended = [a for a, until in self.blocked_sources.items() if until <= now]
            for address in ended:
                del self.blocked_sources[address]
            self.blocked_changed = self.blocked_changed or bool(ended)
        expired = False
        while (at := self._next_expiry()) is not None and at <= now:
            _, publisher = heapq.heappop(self._expiries)
            del self._armed[publisher]
            expired = True
        unsettled = [n for n, p in self.zones.items() if not p.settled]
        if expired or (unsettled and now >= self.grace_until):
            return self.evaluate(now)
        due = [n for n, p in self.zones.items() if (d := p.deadline()) is not None and d <= now]
        return self.evaluate(now, only=due) if due else NOTHING

    def deadline(self) -> float | None:
        """The next time :meth:`tick` has work to do."""
        # A zone waiting out the grace is not evaluated before its data or the grace's
        # end: its own timers (a restored override's end) would only fire, again and again.
        times = [p.deadline() for p in self.zones.values() if p.settled]
        times.append(self._next_expiry())
        if self.blocked_sources:
            times.append(min(self.blocked_sources.values()))
        if self.grace_until > float("-inf") and any(not p.settled for p in self.zones.values()):
            times.append(self.grace_until)
        present = [t for t in times if t is not None]
        return min(present) if present else None

    def situation(self, now: float, zone: str | None = None) -> Situation:
        """The combined view of every fresh publisher, for ``zone`` (default: the first)."""
        fresh, stale = self._fresh(now)
        return self._situation(zone or next(iter(self.zones)), fresh, stale)

    def _fresh(self, now: float) -> tuple[dict[str, Reading], tuple[str, ...]]:
        fresh: dict[str, Reading] = {}
        stale = []
        for publisher, session in self.sessions.items():
            if session.fresh(now):
                message = session.message
                fresh[publisher] = (message.power.status, session.temperatures)
            else:
                stale.append(publisher)
        return fresh, tuple(sorted(stale))

    def _situation(self, zone: str, fresh: dict[str, Reading], stale: tuple[str, ...]) -> Situation:
        config = self.zone_configs[zone]
        sessions = self.sessions
        return combine(
            fresh,
            stale,
            gauges={p: sessions[p].message.power for p in fresh},
            quorum=config.power_quorum,
            power_from=frozenset(config.publishers) if config.publishers else None,
            sensors=tuple(config.sensors),
            temperature=config.temperature,
        )

    def _arm(self, publisher: str, expires_at: float) -> bool:
        """Have :attr:`_expiries` hold ``publisher``'s entry at ``expires_at`` or before;
        True if that took a new entry (the deadline may be sooner). Superseded entries
        are dropped when they outnumber the live ones: a run of ever shorter TALs cannot
        grow the heap beyond a few entries per publisher."""
        armed = self._armed.get(publisher)
        if armed is not None and expires_at >= armed:
            return False
        self._armed[publisher] = expires_at
        expiries = self._expiries
        _push(expiries, (expires_at, publisher))
        if len(expiries) > 2 * len(self._armed) + SUPERSEDED_KEPT:
            expiries[:] = [(at, p) for p, at in self._armed.items()]
            heapq.heapify(expiries)
        return True

    def _rearm(self, now: float) -> None:
        """One entry per fresh session, at its expiry: after a reload, which may have
        forgotten sessions and brought expiries sooner (a heartbeat only moves one later)."""
        self._armed = {p: s.expires_at for p, s in self.sessions.items() if s.expires_at > now}
        self._expiries = [(at, p) for p, at in self._armed.items()]
        heapq.heapify(self._expiries)

    def _next_expiry(self) -> float | None:
        """The earliest expiry still current, at the top of :attr:`_expiries`. Entries
        that are no longer live (superseded by an earlier one, or of a forgotten session)
        are dropped, and an entry whose session's expiry moved later is pushed again at
        that time, so the timer is armed for a real expiry and fires about once per TAL
        per publisher, not once per datagram."""
        expiries, sessions, armed = self._expiries, self.sessions, self._armed
        while expiries:
            at, publisher = expiries[0]
            session = sessions.get(publisher)
            if armed.get(publisher) != at:
                heapq.heappop(expiries)  # superseded: the live entry is earlier
            elif session is None:
                heapq.heappop(expiries)  # forgotten
                del armed[publisher]
            elif session.expires_at > at:
                heapq.heapreplace(expiries, (session.expires_at, publisher))
                armed[publisher] = session.expires_at
            else:
                return at
        return None

    def _make_room(self, now: float) -> bool:
        """Forget publishers whose data ran out, so new ones fit; False if none did."""
        stale = [p for p, session in self.sessions.items() if not session.fresh(now)]
        for publisher in stale:
            del self.sessions[publisher]
        return bool(stale)

    def _refuse(
        self, envelope: wire.Envelope, problem: wire.Reject, source: str | None, now: float
    ) -> None:
        """A datagram that failed the gate, enforcing: counted, kept for status, diagnosed;
        a forgery (its tag checked and found bad) seen twice is blocked."""
        if problem is wire.Reject.bad_tag:  # checked, and found forged
            self._forged_again(bytes(envelope.tag), envelope.key_id, now)
        claimed = wire.claimed_publisher(envelope)
        self._reject(
            problem,
            f"with key id {envelope.key_id} claiming {claimed!r} from {source or '?'}",
            now,
            source,
        )
        if problem != wire.Reject.over_budget:  # unchecked: nothing to diagnose
            self._diagnose(envelope, problem, claimed, source, now)

    def _forged_again(self, tag: bytes, key_id: int, now: float) -> None:
        """A bad tag seen a second time is a forgery repeated: block it."""
        if tag in self.blocked:  # taken off the socket before the filter was on it
            return
        if tag not in self._forged:
            self._forged[tag] = None
            if len(self._forged) > FORGED_KEPT:
                del self._forged[next(iter(self._forged))]
            return
        del self._forged[tag]
        self.blocked[tag] = None
        if len(self.blocked) > BLOCKED_TAGS:
            del self.blocked[next(iter(self.blocked))]
        self.blocked_changed = True
        detail = (
            f"tag {tag[:8].hex()}... with key id {key_id} seen again: the kernel drops it"
            f" from now on ({len(self.blocked)} tags blocked)"
        )
        self._notice("blocked", "forgery_blocked", wire.Reject.bad_tag, detail, now)

    def _block_source(self, source: str, now: float) -> None:
        """``source`` had more datagrams rejected than SOURCE_STRIKES_PER_S allows: the
        kernel drops its datagrams for SOURCE_BLOCK_S. Never an address any publisher's
        data was taken from (the rejections may be another's, sent in its name), nor
        within the start-up grace, before every publisher has had the time to be heard."""
        if source in self.blocked_sources or ":" in source or now < self._block_from:
            return
        if now >= self._protected_until:
            self._protected = frozenset(
                {s.source for s in self.sessions.values() if s.source is not None}
                | self._good_from.keys()
            )
            self._protected_until = now + PROTECTED_EVERY_S
        if source in self._protected:
            return
        if len(self.blocked_sources) >= MAX_BLOCKED_SOURCES:
            first = min(self.blocked_sources.items(), key=lambda item: item[1])[0]
            del self.blocked_sources[first]
        self.blocked_sources[source] = now + SOURCE_BLOCK_S
        self.blocked_changed = True
        detail = (
            f"{source} had over {SOURCE_STRIKES_PER_S:g} datagrams a second rejected and"
            f" sent none that was taken: the kernel drops its datagrams for"
            f" {SOURCE_BLOCK_S:g} s ({len(self.blocked_sources)} sources blocked)"
        )
        self._notice("source_blocked", "source_blocked", "flood", detail, now)

    def _unblock(self, source: str) -> None:
        """Data from ``source`` was taken after all: it is no flood's."""
        del self.blocked_sources[source]
        self.blocked_changed = True
        self._protected_until = float("-inf")

    def _heard_from(self, source: str | None, publisher: str) -> None:
        """Good news came from ``source`` as ``publisher`` (taken off the path of repeats)."""
        if source is None or self._good_from.get(source) == publisher:
            return
        if len(self._good_from) >= MAX_PUBLISHERS:
            del self._good_from[next(iter(self._good_from))]
        self._good_from[source] = publisher

    def _reject(
        self, reason: wire.Reject, detail: str, now: float, source: str | None = None
    ) -> None:
        self._counts[f"rejected.{reason}"] += 1
        self._notice(reason, "datagram_rejected", reason, detail, now)
        if source is None:
            return
        if (
            reason in _STRIKES
            and (reason is not wire.Reject.over_budget or self.gate.sources.spent(source))
            and not self._strikes.take(source, now)
        ):  # over a publisher's budget is no sign of its source: a relay carries many
            self._block_source(source, now)
        last = self.rejections.get(source)
        if last is None:
            if len(self.rejections) >= MAX_SOURCES:
                del self.rejections[next(iter(self.rejections))]
            self.rejections[source] = Rejection(reason, detail, now)
        else:
            if reason != last.reason:
                last.reason, last.hint = reason, None  # a hint is for its reason
            last.detail, last.at = detail, now
            last.count += 1

    def _diagnose(
        self,
        envelope: wire.Envelope,
        problem: wire.Reject,
        claimed: str | None,
        source: str | None,
        now: float,
    ) -> None:
        """A datagram that failed authentication: whose is it, and is it ours? From an
        address that sent good news before, claiming a publisher this controller heard or
        its config names, or while nothing has verified yet, the likeliest cause is a key
        that differs: say so, with the key files and fingerprints to compare (paced). A
        good tag by a key not allowed for the publisher it names (``wrong_key``) is always
        said: the sender holds a key this node trusts. Nothing is verified here."""
        last = self.rejections.get(source) if source is not None else None
        look = now >= self._look_after  # judge anew: once a second
        if look:
            self._look_after = now + JUDGE_EVERY_S
        if last is not None and last.ours is not None and not look:
            claimed, sure = last.publisher, last.ours  # judged before: a flood stays cheap
        else:
            if claimed is None and last is not None:
                claimed = last.publisher
            known = self._good_from.get(source) if source is not None else None
            if problem == wire.Reject.wrong_key:
                ours, sure = claimed, True  # it holds our key: whom it claims is the point
            else:
                ours = known or (claimed if claimed is not None and self._ours(claimed) else None)
                sure = ours is not None
            claimed = ours or claimed
            if last is not None:
                last.publisher, last.ours, last.hint = claimed, sure, None
        if last is not None and last.hint is None:
            last.hint = self._hint(envelope, problem, claimed, sure)
        if not look or (not sure and self.accepted):
            return  # judged before, or others verify: a stranger's, counted and dropped
        if self._pacer.admit("keys_differ", now) is None:
            return  # said within LOG_EVERY_S; status counts them all
        key_id = envelope.key_id
        fp = self.keyring.fingerprints.get(key_id)
        scheme = ED25519 if len(envelope.tag) == wire.SIGNATURE_SIZE else HMAC
        fields: dict[str, Any] = {
            "reason": str(problem),
            "publisher": claimed,
            "source": source or "unknown",
            "key_id": key_id,
            "this_node": describe(key_id, fp) if fp else self.keyring.describe(),
            "key_file": str(self.keyring.home_file(key_id, scheme)),
            "hint": self._hint(envelope, problem, claimed, sure),
            "rejected": last.count if last is not None else 1,
        }
        if problem == wire.Reject.wrong_key:
            fields["bound"] = sorted(self.gate.bindings.get(claimed or "", ()))
        event = "keys_differ" if problem != wire.Reject.unsigned else "publisher_unsigned"
        self.notices.append(Notice(event, fields))

    def _hint(
        self, envelope: wire.Envelope, problem: wire.Reject, claimed: str | None, sure: bool
    ) -> str:
        return key_hint(
            self.keyring,
            envelope.key_id,
            problem,
            sure=sure,
            scheme=ED25519 if len(envelope.tag) == wire.SIGNATURE_SIZE else HMAC,
            publisher=claimed,
            bound=self.gate.bindings,
            believed=self.config.auth.schemes,
        )

    def _ours(self, publisher: str) -> bool:
        """A publisher this controller heard good news from, or that its config names."""
        return (
            publisher in self.sessions
            or publisher in self._named
            or any(fnmatch.fnmatchcase(publisher, glob) for glob in self._sensor_globs)
        )

    def _notice(self, key: str, event: str, reason: str, detail: str, now: float) -> None:
        """Queue a log line, at most one per ``key`` every LOG_EVERY_S: floods stay quiet."""
        held = self._pacer.fields(key, now)
        if held is not None:
            self.notices.append(Notice(event, {"reason": reason, "detail": detail, **held}))


def _gate(config: ControllerConfig, keyring: Keyring) -> Gate:
    auth = config.auth
    return Gate.build(
        keyring,
        auth.publishers,
        auth.verify_rate,
        auth.source_verify_rate,
        listed=frozenset(config.policy.publishers),
    )
