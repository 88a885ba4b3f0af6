"""The datagram path's shortcuts keep its behaviour: the controller's timer aims at current
expiries only, and the receiver drains a burst in batches without losing or reordering;
a daemon that is the whole process puts what start-up made out of the collector's reach."""

from __future__ import annotations

import asyncio
import gc
import itertools
import socket
import time
from pathlib import Path

import pytest
import structlog.testing

from powercast import wire
from powercast.auth import Keyring
from powercast.config import ControllerAuth, ControllerConfig, PolicySettings, PublisherConfig
from powercast.controller import Controller
from powercast.runtime import RECEIVE_BATCH, Daemon, Receiver
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


def controller(keyring: Keyring) -> Controller:
    config = ControllerConfig(
        auth=ControllerAuth(max_clock_skew_s=0.0),
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

    def test_rejected_datagrams_are_not_accepted(self, keyring: Keyring) -> None:
        """``accepted`` counts taken datagrams only: forged or replayed ones leave it."""
        core = controller(keyring)
        good = datagram(keyring, "ups-a", 5, 0.0)
        core.receive(good, 0.0, WALL)
        assert core.accepted == 1
        core.receive(good[:-1] + bytes([good[-1] ^ 1]), 0.1, WALL + 0.1)  # bad tag
        core.receive(datagram(keyring, "ups-a", 4, 0.2), 0.2, WALL + 0.2)  # replay
        assert core.accepted == 1


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
