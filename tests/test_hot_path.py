"""The datagram path's shortcuts keep its behaviour: the controller's timer aims at current
expiries only, a heartbeat taken at a glance is judged as its full decode would be, the
receiver drains a burst in batches without losing or reordering, and a daemon that is the
whole process puts what start-up made out of the collector's reach."""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import structlog.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from powercast import wire
from powercast.auth import Keyring
from powercast.config import ControllerAuth, ControllerConfig, PolicySettings, PublisherConfig
from powercast.controller import SUPERSEDED_KEPT, Controller
from powercast.runtime import RECEIVE_BATCH, Daemon, Receiver
from powercast.runtime.receiver import QUIET_S
from powercast.secrets import keygen, load_keyring

WALL = 1_700_000_000.0


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    directory: Path = tmp_path_factory.mktemp("keys")
    keygen(1, directory / "1.key")
    return load_keyring(directory)


def datagram(keyring: Keyring, publisher: str, seq: int, now: float, tal: float = 3.0) -> bytes:
    message = wire.Announcement(
        publisher=publisher,
        epoch=1,
        seq=seq,
        change=1,
        sent=WALL + now,
        tal=tal,
        power=wire.Power(wire.PowerStatus.ONLINE),
        temperatures={"inlet": 22.0},
    )
    return wire.encode(message, key_id=1, sign=keyring.signer(1))


def controller(keyring: Keyring, skew: float = 0.0) -> Controller:
    config = ControllerConfig(
        auth=ControllerAuth(max_clock_skew_s=skew),
        policy=PolicySettings(startup_grace_s=0.0),
    )
    core = Controller(config, keyring)
    core.start(0.0)
    return core


@pytest.mark.unit
class TestControllerExpiries:
    def test_deadline_is_the_earliest_current_expiry(self, keyring: Keyring) -> None:
        """With heartbeats superseding each other, the deadline is the earliest publisher's
        latest expiry, not the expiry of a datagram already superseded."""
        core = controller(keyring)
        for second in range(5):
            for i in range(100):
                now = second + i / 100
                core.receive(datagram(keyring, f"ups-{i}", second + 1, now), now, WALL + now)
        assert core.deadline() == pytest.approx(4.0 + 3.0)
        assert core.tick(5.0) == []
        assert core.policy.state == "normal"

    def test_a_publisher_that_goes_quiet_still_expires(self, keyring: Keyring) -> None:
        """After many superseded heartbeats, silence still ends in failsafe at the TAL."""
        core = controller(keyring)
        for seq in range(1, 21):
            now = seq * 0.1
            core.receive(datagram(keyring, "ups-a", seq, now), now, WALL + now)
        assert core.policy.state == "normal"
        deadline = core.deadline()
        assert deadline == pytest.approx(2.0 + 3.0)
        assert [d.state for d in core.tick(deadline)] == ["failsafe"]
        assert core.deadline() is None

    def test_a_shorter_tal_moves_the_deadline_earlier(self, keyring: Keyring) -> None:
        """A later datagram promising less time brings the deadline forward."""
        core = controller(keyring)
        core.receive(datagram(keyring, "ups-a", 1, 0.0, tal=30.0), 0.0, WALL)
        core.receive(datagram(keyring, "ups-a", 2, 1.0, tal=2.0), 1.0, WALL + 1.0)
        assert core.deadline() == pytest.approx(3.0)
        assert [d.state for d in core.tick(3.0)] == ["failsafe"]

    def test_heartbeats_push_no_entries(self, keyring: Keyring) -> None:
        """The expiry heap holds one entry per publisher however many heartbeats came; an
        entry that comes due is moved to its session's later expiry, once per TAL."""
        core = controller(keyring)
        for seq in range(1, 51):
            for i in range(20):
                now = seq * 0.1 + i / 1000
                core.receive(datagram(keyring, f"ups-{i}", seq, now), now, WALL + now)
        assert len(core._expiries) == 20
        assert core.deadline() == pytest.approx(5.0 + 3.0)
        assert len(core._expiries) == 20

    def test_a_shorter_tal_with_the_same_readings_runs_the_rules(self, keyring: Keyring) -> None:
        """A repeat promising less time brings the deadline sooner, so the rules run: the
        runtime re-arms its timer only after they ran, and a quiet publisher would
        otherwise fail safe at the TAL it promised before."""
        core = controller(keyring)
        core.receive(datagram(keyring, "ups-a", 1, 0.0, tal=30.0), 0.0, WALL)
        evaluations = core.evaluations
        core.receive(datagram(keyring, "ups-a", 2, 1.0, tal=2.0), 1.0, WALL + 1.0)
        assert core.evaluations > evaluations
        assert core.deadline() == pytest.approx(3.0)

    def test_a_reload_lowering_max_tal_expires_quiet_publishers_at_the_new_cap(
        self, keyring: Keyring
    ) -> None:
        """After a reload lowers policy.max_tal_s, heartbeats expire at the new cap: the
        deadline follows, and a publisher that goes quiet fails safe then, not at the
        longer expiry armed before the reload."""
        core = controller(keyring)
        core.receive(datagram(keyring, "ups-a", 1, 0.0, tal=30.0), 0.0, WALL)
        config = ControllerConfig(
            auth=ControllerAuth(max_clock_skew_s=0.0),
            policy=PolicySettings(startup_grace_s=0.0, max_tal_s=5.0),
        )
        core.reconfigure(config, keyring, 1.0)
        assert core.deadline() == pytest.approx(5.0)
        core.receive(datagram(keyring, "ups-a", 2, 2.0, tal=30.0), 2.0, WALL + 2.0)
        assert core.deadline() == pytest.approx(7.0)
        assert [d.state for d in core.tick(7.0)] == ["failsafe"]

    def test_ever_shorter_tals_keep_the_heap_small(self, keyring: Keyring) -> None:
        """A publisher promising less time with every datagram pushes an entry each; the
        superseded ones are dropped, so the heap stays a few entries per publisher."""
        core = controller(keyring)
        for seq in range(1, 2001):
            now = seq * 0.001
            core.receive(datagram(keyring, "ups-a", seq, now, tal=10.0 - seq * 0.004), now, WALL)
        assert len(core._expiries) <= 2 + SUPERSEDED_KEPT
        assert core.deadline() == pytest.approx(2.0 + 10.0 - 8.0)

    def test_rejected_datagrams_are_not_accepted(self, keyring: Keyring) -> None:
        """``accepted`` counts taken datagrams only: forged or replayed ones leave it."""
        core = controller(keyring)
        good = datagram(keyring, "ups-a", 5, 0.0)
        core.receive(good, 0.0, WALL)
        assert core.accepted == 1
        core.receive(good[:-1] + bytes([good[-1] ^ 1]), 0.1, WALL + 0.1)  # bad tag
        core.receive(datagram(keyring, "ups-a", 4, 0.2), 0.2, WALL + 0.2)  # replay
        assert core.accepted == 1


_READINGS = (  # few, so that a run often repeats one
    (3.0, wire.Power(wire.PowerStatus.ONLINE, 90.0, 600.0), {"inlet": 22.0}),
    (3.0, wire.Power(wire.PowerStatus.ONLINE, 90.0, 600.0), {"inlet": 45.0}),
    (1.0, wire.Power(wire.PowerStatus.ONLINE, 90.0, 600.0), {"inlet": 22.0}),
    (1.0, wire.Power(wire.PowerStatus.ON_BATTERY, 80.0), {}),
)
_EDITS = {  # one datagram next to its publisher's previous one: (epoch, seq, change) added
    "heartbeat": (0, 1, 0),  # the same readings
    "moved": (0, 1, 0),  # the readings drawn: a move within a deadband, or a bug
    "news": (0, 1, 1),
    "duplicate": (0, 0, 0),
    "replay": (0, -1, 0),
    "restart": (1, None, 0),  # seq starts again at 1
}
_steps = st.lists(
    st.tuples(
        st.sampled_from(["ups-a", "ups-b"]),
        st.sampled_from(list(_EDITS)),
        st.sampled_from(range(len(_READINGS))),
        st.sampled_from([0.0, 50.0]),  # sent 50 s off: past the skew allowed in some runs
        st.sampled_from([0.1, 0.5, 2.5]),  # past a TAL of 1 s, not one of 3 s
    ),
    max_size=30,
)


def _datagrams(
    keyring: Keyring, steps: list[tuple[str, str, int, float, float]]
) -> Iterator[tuple[bytes, float]]:
    """The steps as signed datagrams, each with its arrival time."""
    sign = keyring.signer(1)
    last: dict[str, tuple[int, int, int, int]] = {}
    now = 0.0
    for publisher, edit, drawn, off, gap in steps:
        now += gap
        epoch, seq, change, readings = last.get(publisher, (1, 0, 1, drawn))
        d_epoch, d_seq, d_change = _EDITS[edit]
        epoch, change = epoch + d_epoch, change + d_change
        seq = 1 if d_seq is None else max(seq + d_seq, 0)
        readings = readings if edit == "heartbeat" else drawn
        last[publisher] = (epoch, seq, change, readings)
        message = wire.Announcement(
            publisher, epoch, seq, change, WALL + now + off, *_READINGS[readings]
        )
        yield wire.encode(message, key_id=1, sign=sign), now


def _view(core: Controller) -> dict[str, object]:
    """Everything a datagram can change in the core, comparable between two of them."""
    return {
        "counters": dict(core.counters),
        "accepted": core.accepted,
        "evaluations": core.evaluations,
        "deadline": core.deadline(),
        "sessions": {
            p: (msgspec.to_builtins(s.message), s.received_at, s.expires_at, s.temperatures)
            for p, s in core.sessions.items()
        },
        "zones": {n: (p.state, p.level, p.reason) for n, p in core.zones.items()},
    }


@pytest.mark.unit
class TestGlance:
    @given(steps=_steps, skew=st.sampled_from([0.0, 10.0]))
    def test_a_glance_judges_as_the_full_decode_does(
        self, keyring: Keyring, steps: list[tuple[str, str, int, float, float]], skew: float
    ) -> None:
        """Any run of datagrams (heartbeats with the same or other readings, news,
        restarts, replays, duplicates with other readings, skewed clocks, gaps past the
        TAL) leaves a controller that reads repeats at a glance exactly as one that
        decodes every datagram whole."""
        glancing, decoding = controller(keyring, skew), controller(keyring, skew)
        for data, now in _datagrams(keyring, steps):
            fast = glancing.receive(data, now, WALL + now)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(wire, "glance", lambda _envelope: None)
                whole = decoding.receive(data, now, WALL + now)
            assert [(d.zone, d.state, d.reason) for d in fast] == [
                (d.zone, d.state, d.reason) for d in whole
            ]
            assert _view(glancing) == _view(decoding)
            assert glancing.tick(now) == decoding.tick(now)

    def test_heartbeats_are_taken_without_a_decode(self, keyring: Keyring) -> None:
        """The usual datagram is read at a glance: the body decoder is not called."""
        core = controller(keyring)
        core.receive(datagram(keyring, "ups-a", 1, 0.0), 0.0, WALL)
        decoded = []
        with pytest.MonkeyPatch.context() as patch:
            whole = wire.decode_body
            patch.setattr(wire, "decode_body", lambda e: decoded.append(e) or whole(e))
            for seq in range(2, 12):
                core.receive(datagram(keyring, "ups-a", seq, seq * 0.1), seq * 0.1, WALL)
        assert decoded == []
        assert core.counters["repeat"] == 10
        assert core.sessions["ups-a"].message.seq == 11
        assert core.sessions["ups-a"].expires_at == pytest.approx(1.1 + 3.0)

    def test_a_duplicate_with_other_readings_changes_nothing(self, keyring: Keyring) -> None:
        """A datagram with the current sequence number but other readings is a duplicate,
        dropped: a later heartbeat with those readings is read whole, not taken for the
        readings already known."""
        core = controller(keyring)
        sign = keyring.signer(1)

        def message(seq: int, inlet: float) -> bytes:
            power = wire.Power(wire.PowerStatus.ONLINE)
            announcement = wire.Announcement("ups-a", 1, seq, 1, WALL, 3.0, power, {"inlet": inlet})
            return wire.encode(announcement, key_id=1, sign=sign)

        core.receive(message(1, 22.0), 0.0, WALL)
        core.receive(message(1, 45.0), 0.1, WALL)
        assert core.counters["duplicate"] == 1
        assert core.sessions["ups-a"].temperatures == {"inlet": 22.0}
        evaluations = core.evaluations
        core.receive(message(2, 45.0), 0.2, WALL)
        assert core.sessions["ups-a"].temperatures == {"inlet": 45.0}
        assert core.evaluations == evaluations + 1  # a reading moved: the rules ran


_NAMES = ("ups-a", "ups-b", "ups-c")
_RUNS = st.lists(
    st.one_of(
        st.tuples(
            st.just("receive"),
            st.sampled_from(_NAMES),
            st.sampled_from(  # heartbeats most: the path that pushes nothing
                ["heartbeat"] * 4 + ["news", "tal", "restart", "replay", "duplicate"]
            ),
            st.sampled_from([0.5, 3.0, 30.0]),  # the TAL a "tal" step announces
            st.sampled_from([0.0, 0.3, 1.0, 4.0]),  # the time before it
        ),
        st.tuples(
            st.just("reload"),
            st.sampled_from([1.0, 5.0, 3600.0]),  # policy.max_tal_s
            st.sampled_from([(), ("ups-a",), ("ups-b", "ups-c")]),  # policy.publishers
        ),
        st.tuples(st.just("forget")),  # _make_room, as a full table calls it
        st.tuples(st.just("tick")),  # a tick off the timer
        st.tuples(st.just("wait"), st.sampled_from([0.2, 2.0, 40.0])),
    ),
    max_size=40,
)


class _Runtime:
    """The runtime's use of the core, on a clock of its own: datagrams taken as a batch of
    one, the timer re-armed after a run of the rules or when it fired, and fired when due."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring, self.core = keyring, controller(keyring)
        self.now, self.timer_at, self.seen = 0.0, math.inf, -1
        self.evaluated_at = -math.inf  # when the rules last ran
        self.last: dict[str, tuple[int, int, int, float]] = {}  # epoch, seq, change, TAL

    def _ran(self, evaluations: int, now: float) -> None:
        if self.core.evaluations != evaluations:
            self.evaluated_at = now

    def arm(self) -> None:
        deadline = self.core.deadline()
        if deadline is not None and deadline < self.timer_at:
            self.timer_at = deadline

    def advance(self, to: float) -> None:
        for _ in range(1000):
            if self.timer_at > to:
                break
            at, self.timer_at = self.timer_at, math.inf
            evaluations = self.core.evaluations
            self.core.tick(at)
            self._ran(evaluations, at)
            self.arm()
        else:
            raise AssertionError(f"the timer spins at {self.timer_at}")
        self.now = to

    def receive(self, publisher: str, step: str, tal: float) -> None:
        epoch, seq, change, last_tal = self.last.get(publisher, (1, 0, 1, 3.0))
        if step == "restart":
            epoch, seq = epoch + 1, 1
        else:
            seq += {"replay": -1, "duplicate": 0}.get(step, 1)
        change += step == "news"
        tal = tal if step == "tal" else last_tal
        self.last[publisher] = (epoch, max(seq, 0), change, tal)
        message = wire.Announcement(
            publisher, epoch, max(seq, 0), change, WALL + self.now, tal,
            wire.Power(wire.PowerStatus.ONLINE), {"inlet": 22.0},
        )  # fmt: skip
        data = wire.encode(message, key_id=1, sign=self.keyring.signer(1))
        evaluations = self.core.evaluations
        self.core.receive(data, self.now, WALL + self.now, evaluate=False)
        self.core.settle(self.now)
        self._ran(evaluations, self.now)
        if self.core.evaluations != self.seen or self.timer_at == math.inf:
            self.seen = self.core.evaluations
            self.arm()

    def reload(self, max_tal: float, publishers: tuple[str, ...]) -> None:
        config = ControllerConfig(
            auth=ControllerAuth(max_clock_skew_s=0.0),
            policy=PolicySettings(
                startup_grace_s=0.0, max_tal_s=max_tal, publishers=list(publishers)
            ),
        )
        self.core.reconfigure(config, self.keyring, self.now)
        self.evaluated_at = self.now
        self.arm()

    def check(self) -> None:
        """Every fresh publisher's expiry has the timer armed at or before it; every
        expiry passed was seen by a run of the rules; the heap stays small."""
        core = self.core
        deadline = core.deadline()
        for publisher, session in core.sessions.items():
            if session.expires_at > self.now:
                assert deadline is not None
                assert deadline <= session.expires_at, publisher
                assert self.timer_at <= session.expires_at, publisher
            else:
                assert self.evaluated_at >= session.expires_at, publisher
        assert len(core._armed) <= len(_NAMES)
        assert len(core._expiries) <= 2 * len(_NAMES) + SUPERSEDED_KEPT


@pytest.mark.unit
class TestExpiryRuns:
    @settings(max_examples=600)  # a reload, then a heartbeat: found in most runs of 600
    @given(runs=_RUNS)
    def test_every_expiry_is_timed_and_seen(self, keyring: Keyring, runs: list[tuple]) -> None:  # type: ignore[type-arg]
        """Any run of heartbeats, news, shorter and longer TALs, restarts, replays,
        duplicates, reloads (max_tal_s lowered or raised, publishers dropped and listed
        again), sessions forgotten to make room, stray ticks and waits: every fresh
        publisher's expiry has the runtime's timer armed in time, the rules run at every
        expiry passed (fans fail safe), the timer never spins, and the heap stays small."""
        runtime = _Runtime(keyring)
        for step in runs:
            match step:
                case ("receive", publisher, kind, tal, gap):
                    runtime.advance(runtime.now + gap)
                    runtime.receive(publisher, kind, tal)
                case ("reload", max_tal, publishers):
                    runtime.reload(max_tal, publishers)
                case ("forget",):
                    runtime.core._make_room(runtime.now)
                case ("tick",):
                    evaluations = runtime.core.evaluations
                    runtime.core.tick(runtime.now)
                    runtime._ran(evaluations, runtime.now)
                    runtime.arm()
                case ("wait", gap):
                    runtime.advance(runtime.now + gap)
            runtime.check()
        runtime.advance(runtime.now + 3600.0)
        runtime.check()
        assert runtime.core._next_expiry() is None
        assert runtime.core._armed == {}


@pytest.mark.unit
class TestNestedBodies:
    @pytest.mark.parametrize("mode", ["off", "permissive", "enforce"])
    def test_a_body_nested_too_deep_is_rejected_not_raised(
        self, keyring: Keyring, mode: str
    ) -> None:
        """A body whose last fields nest a thousand arrays deep (read at a glance, or for
        the publisher it claims, they are skipped by recursion): counted and dropped, signed
        or forged, in every auth mode; never an exception out of ``receive``."""
        body = b"\x98\xa5ups-a\x01\x01\x01\xcb" + b"\x41" * 8 + b"\x91" * 1100
        header = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.TAG_SIZE, 1, len(body))
        signed = header + body
        config = ControllerConfig(auth=ControllerAuth(mode=mode, max_clock_skew_s=0.0))  # type: ignore[arg-type]
        core = Controller(config, keyring)
        for tag in (keyring.signer(1)(signed), bytes(32)):
            assert core.receive(signed + tag, 1.0, WALL, "10.0.0.1") == []
        rejected = {k: n for k, n in core.counters.items() if k.startswith("rejected.")}
        assert sum(rejected.values()) == 2, rejected
        assert core.sessions == {}


@pytest.mark.system
class TestReceiver:
    def test_a_burst_arrives_whole_and_in_order_in_batches(self) -> None:
        """300 queued datagrams reach the callback in order, at most RECEIVE_BATCH per turn
        of the loop, and each turn gives other callbacks their chance."""

        async def scenario() -> tuple[list[bytes], list[int]]:
            loop = asyncio.get_running_loop()
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.bind(("127.0.0.1", 0))
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            got: list[bytes] = []
            sources: set[str] = set()
            turns: list[int] = []

            def take(data: bytes, source: str) -> None:
                got.append(data)
                sources.add(source)

            transport, _ = await loop.create_datagram_endpoint(lambda: Receiver(take), sock=rx)

            def count_turn() -> None:
                turns.append(len(got))
                if len(got) < 300:
                    loop.call_soon(count_turn)

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                for i in range(300):
                    tx.sendto(i.to_bytes(2, "big"), rx.getsockname())
            time.sleep(0.05)  # all queued before the loop looks
            loop.call_soon(count_turn)
            deadline = loop.time() + 5
            while len(got) < 300 and loop.time() < deadline:
                await asyncio.sleep(0.001)
            transport.close()
            await asyncio.sleep(0)
            assert sources == {"127.0.0.1"}  # each with the address it came from
            return got, turns

        got, turns = asyncio.run(scenario())
        assert [int.from_bytes(d, "big") for d in got] == list(range(300))
        steps = [b - a for a, b in itertools.pairwise(turns)]
        assert max(steps) <= RECEIVE_BATCH
        assert max(steps) > 1  # batched, not one per turn


@pytest.mark.system
class TestReceiverBatches:
    def test_a_burst_is_read_in_batches_however_long_each_batch_is_judged(self) -> None:
        """Each batch's work (the rules, ``on_drained``) taking longer than QUIET_S does not
        make every read a lone one: 300 queued datagrams still come in full batches."""

        async def scenario() -> list[int]:
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            rx.bind(("127.0.0.1", 0))
            batches, taken = [], [0]

            def drained() -> None:
                batches.append(taken[0])
                taken[0] = 0
                busy = time.perf_counter() + 1.5 * QUIET_S
                while time.perf_counter() < busy:  # the rules over a thousand publishers
                    pass

            def take(data: bytes, source: str) -> None:
                taken[0] += 1

            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: Receiver(take, drained), sock=rx
            )
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                for _ in range(300):
                    tx.sendto(b"x" * 100, rx.getsockname())
            deadline = loop.time() + 5
            while sum(batches) < 300 and loop.time() < deadline:
                await asyncio.sleep(0.01)
            transport.close()
            return [b for b in batches if b]

        batches = asyncio.run(scenario())
        assert sum(batches) == 300
        assert max(batches) == RECEIVE_BATCH
        assert len(batches) <= 300 // RECEIVE_BATCH + 2  # a lone first read, then full ones


@pytest.mark.unit
class TestReceiverErrors:
    def test_socket_errors_are_logged_paced(self) -> None:
        """ICMP errors a peer can cause as fast as it likes cost one log line per interval."""
        receiver = Receiver(lambda data, source: None)
        with structlog.testing.capture_logs() as logged:
            for _ in range(500):
                receiver.error_received(ConnectionRefusedError(111, "Connection refused"))
        assert [e["event"] for e in logged] == ["socket_error"]


class _Idle(Daemon[PublisherConfig]):
    """A daemon with nothing to do: it stops as soon as it is ready."""

    role = "publisher"

    async def start(self, tg: asyncio.TaskGroup) -> None:
        self.made = [{"kept": [n]} for n in range(1000)]  # what start-up makes, kept
        asyncio.get_running_loop().call_soon(self._stop.set)

    def start_tools(self, tg: asyncio.TaskGroup) -> None:
        pass

    def status(self) -> str:
        return "idle"


@pytest.mark.unit
class TestHeap:
    @pytest.mark.parametrize("own_process", [True, False])
    def test_start_up_is_frozen_only_in_a_process_of_its_own(
        self, keyring: Keyring, own_process: bool
    ) -> None:
        """At READY a daemon that is the whole process freezes the collector's heap (no
        full collection walks it again); one inside another program leaves it alone."""

        async def go() -> None:
            daemon = _Idle(Path("idle.toml"), PublisherConfig(), keyring)
            daemon.own_process = own_process
            await daemon.run()

        gc.unfreeze()
        try:
            asyncio.run(go())
            assert (gc.get_freeze_count() > 1000) is own_process
        finally:
            gc.unfreeze()
