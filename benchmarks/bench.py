"""powercast benchmarks: each figure measured in this run, next to its baseline and target.

    benchmarks/run [--quick | --smoke] [--json] [--only NAME[,NAME...]] [--repeat N]

Figures (benchmarks/README.md explains each, with its goal and the latest table):

  ingest        Controller.receive on signed datagrams pre-filled in one socket buffer,
                per second, against a bare recvfrom loop draining the same buffer; also
                with auth off (no HMAC) and a recvfrom + HMAC-only loop (the ceiling)
  flood         a controller daemon under a flood of forged datagrams from one, then two
                other processes: real change at a publisher daemon -> action started,
                p99; and the largest gap between watchdog pings (late: longer than
                WATCHDOG_USEC)
  dispatch      datagram arrival -> transition logged and handed to the action queue;
                baseline: sendto -> a bare asyncio receiver's datagram_received
  e2e_loopback  source change seen by the publisher daemon -> action started at the
                controller daemon, on loopback; and -> the PWM file written by an hwmon
                actuator
  e2e_netns     the same, publisher and controller in two network namespaces (root)
  loss20        20 % random loss on each of 3 controllers' links (iptables, root):
                change at the publisher -> the last controller's transition
  idle          CPU and RSS of each daemon, 10 publishers at 1 Hz and a controller,
                against a bare asyncio receiver in the same run
  ready         exec -> READY=1 on NOTIFY_SOCKET, controller and publisher
  scale_1000    controller CPU with 1,000 synthetic signed publishers at 1 Hz, against
                the same bare receiver
  nut_detect    a real upsd + dummy-ups, OL <-> OB flips of the driver's .dev file ->
                upsd's own view (a tight GET VAR loop), the controller daemon's transition
                (publisher's nut source + controller on loopback), and NUT's upsmon
                (POLLFREQ 1) running its NOTIFYCMD; baseline: upsd's own view
  verify_cost   µs per datagram to check its tag and decode it: hmac-sha256 and ed25519
                against a bare decode; and a forged signature dropped over budget
  trap_detect   an SNMP trap sent to the publisher's snmp source -> the controller's
                transition (the trap brings the source's GET forward), against the bare
                GET round trip to the same agent
  relay_throughput  datagrams/s through one relay to a local Mosquitto, against a plain
                MQTT publisher through the same broker (benchmarks/relay.py)

--repeat N runs every figure N times, interleaved, and gives each number's median
under its own key and its worst under "worst". Goals are benchmarks/README.md's, CPU as
a multiple of the same run's bare receiver. Timestamps of daemons come from their JSON log
lines (ts, wall clock, microseconds) and from a tiny action, bash writing $EPOCHREALTIME.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hmac
import itertools
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from powercast import wire
from powercast.auth import Gate, Keyring, public_key
from powercast.budget import Budgets
from powercast.config import ControllerConfig, load
from powercast.controller import Controller
from powercast.secrets import load_keyring

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import netbed  # noqa: E402
import nutbed  # noqa: E402

import harness  # noqa: E402  # the tests' daemon runner and network bed, shared

GROUP = "239.255.91.1"
"""Loopback benchmarks use their own group and a free port: nothing else on the host hears."""
WATCHDOG_USEC = 500_000
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; the module may lack it
STATES = ("normal", "on_battery", "shedding", "thermal_override", "failsafe")

TARGETS: dict[str, str] = {
    "ingest": "ratio >= 0.30",
    "flood": "p99 <= 50 ms, no late ping",
    "dispatch": "p99 <= 1 ms",
    "e2e_loopback": "p99 <= 5 ms; hwmon p99 <= 2 ms",
    "e2e_netns": "p99 <= 5 ms",
    "loss20": "p99 <= 50 ms",
    "idle": "controller CPU <= 1.3 x bare; publishers <= 0.1 %; RSS <= 40 MB",
    "ready": "p99 <= 300 ms",
    "scale_1000": "CPU <= 1.3 x bare",
    "nut_detect": "p99 - upsd's p99 <= 100 ms, p99 < upsmon's",
    "verify_cost": "over-budget drop <= 2x decode",
    "trap_detect": "p99 <= 10 ms",
    "relay_throughput": ">= 50,000 datagrams/s through one relay, none lost",
}


# --- helpers -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list: the smallest value with at
    least q % of the values at or below it, so the p99 of 100 samples is the 99th, not the
    largest (``max_ms`` is that)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered) / 100)))
    return ordered[rank - 1]


N = TypeVar("N", int, float)


def sized(size: str, full: N, *, quick: N, smoke: N) -> N:
    """A sample count or window for ``size``: full (the figures the README quotes), quick
    (fewer samples), smoke (the fewest that still give every figure: a check that each
    benchmark runs, not a measurement to compare)."""
    return {"full": full, "quick": quick, "smoke": smoke}[size]


def latency(samples_s: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in samples_s]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "samples": len(ms),
    }


def log_time(event: dict[str, Any]) -> float:
    """A daemon's JSON log line's ts as Unix seconds."""
    return datetime.datetime.fromisoformat(event["ts"]).timestamp()


def free_port() -> int:
    return harness.free_port()


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid``: schedstat (ns) when the kernel keeps it, else
    utime + stime from /proc/PID/stat (in clock ticks, 10 ms)."""
    total = 0.0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
    except (FileNotFoundError, IndexError, ValueError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Notify:
    """A NOTIFY_SOCKET whose messages are read in a thread and stamped on arrival."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / f"notify-{time.monotonic_ns()}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.ready = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode(errors="replace")
            self.messages.append((time.monotonic(), text))
            if "READY=1" in text.splitlines():
                self.ready.set()

    def pings(self) -> list[float]:
        return [t for t, text in self.messages if "WATCHDOG=1" in text.splitlines()]

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Workdir:
    """Keys, configs and the action record of one benchmark, in a temporary directory."""

    def __init__(self, base: Path, name: str) -> None:
        self.dir = base / name
        self.dir.mkdir()
        self.keys = harness.make_keys(self.dir / "keys")
        self.keyring = load_keyring(self.keys)
        self.port = free_port()

    def write(self, name: str, data: dict[str, Any]) -> Path:
        path = self.dir / name
        path.write_text(tomli_w.dumps(data))
        return path

    def actions(self, record: Path) -> list[dict[str, Any]]:
        """A tiny action: bash appends the state and its $EPOCHREALTIME when it starts."""
        line = f'echo "$POWERCAST_STATE $EPOCHREALTIME" >> {record}'
        return [{"on": s, "argv": ["/bin/bash", "-c", line], "timeout_s": 5.0} for s in STATES]

    def controller(
        self,
        *,
        interface: str = "127.0.0.1",
        record: Path | None = None,
        group: str = GROUP,
        port: int | None = None,
        **policy: Any,
    ) -> Path:
        return self.write(
            f"controller-{time.monotonic_ns()}.toml",
            {
                "role": "controller",
                "network": {"group": group, "port": port or self.port, "interface": interface},
                "auth": {"keys_dir": str(self.keys), "mode": "enforce"},
                # Never shed: changes go normal <-> on_battery, each one transition.
                "policy": {"shed_after_s": 3600.0, "restore_after_s": 0.0, **policy},
                "actions": self.actions(record) if record else [],
                "log": {"format": "json", "level": "info"},
            },
        )

    def publisher(
        self,
        name: str,
        reading: Path,
        *,
        interface: str = "127.0.0.1",
        heartbeat_s: float = 1.0,
        interval_s: float = 0.01,
        tal_factor: float = 3.0,
        group: str = GROUP,
        port: int | None = None,
    ) -> Path:
        harness.set_reading(reading, "online")
        loop = interface == "127.0.0.1"
        return self.write(
            f"{name}.toml",
            {
                "role": "publisher",
                "id": name,
                "heartbeat_s": heartbeat_s,
                "tal_factor": tal_factor,
                "network": {
                    "group": group,
                    "port": port or self.port,
                    "interface": interface,
                    "loop": loop,
                    "ttl": 1,
                },
                "auth": {"keys_dir": str(self.keys), "key_id": 1},
                "sources": [{"kind": "file", "path": str(reading), "interval_s": interval_s}],
                "log": {"format": "json", "level": "info"},
            },
        )


def action_times(record: Path) -> list[tuple[str, float]]:
    if not record.exists():
        return []
    out = []
    for line in record.read_text().splitlines():
        state, _, stamp = line.partition(" ")
        with contextlib.suppress(ValueError):
            out.append((state, float(stamp)))
    return out


class ActionLog:
    """The tiny action's record, read in order: each call takes the next action started."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self.cursor = 0
        self.skipped: list[str] = []
        """States whose actions ran in between, unasked (failsafe under a flood...)."""

    def settle(self, timeout: float = 10.0) -> None:
        """Skip the start-up actions, which end with "normal" (a start may or may not run
        failsafe first, depending on the version's start-up grace)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = action_times(self.record)
            if done and done[-1][0] == "normal":
                self.cursor = len(done)
                return
            time.sleep(0.005)
        raise TimeoutError(f"no 'normal' action in {timeout} s: {action_times(self.record)}")

    def next(self, state: str, timeout: float = 5.0) -> float:
        """When the next action for ``state`` started (Unix seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = action_times(self.record)
            for index in range(self.cursor, len(done)):
                self.cursor = index + 1
                if done[index][0] == state:
                    return done[index][1]
                self.skipped.append(done[index][0])
            time.sleep(0.002)
        raise TimeoutError(f"no {state!r} action in {timeout} s: {action_times(self.record)}")


def announcement(
    publisher: str, epoch: int, seq: int, status: str, change: int
) -> wire.Announcement:
    return wire.Announcement(
        publisher=publisher,
        epoch=epoch,
        seq=seq,
        change=change,
        sent=time.time(),
        tal=3.0,
        power=wire.Power(wire.PowerStatus(status), 100.0, 1200.0, 30.0, 230.0),
        temperatures={"inlet": 24.0, "outlet": 31.5},
    )


def multicast_sender(interface: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    return sock


@contextlib.contextmanager
def daemons(*args_list: tuple[list[str], dict[str, str] | None]) -> Iterator[list[harness.Daemon]]:
    started: list[harness.Daemon] = []
    try:
        for args, env in args_list:
            started.append(harness.Daemon(*args, env=env))
        yield started
    finally:
        for d in started:
            d.stop()


def toggle_changes(
    n: int,
    set_status: Callable[[str], None],
    publisher: Any,
    on_change: Callable[[int, str, float], None],
    gap_s: float,
) -> None:
    """Flip the publisher's reading ``n`` times; ``on_change(k, state, t0)`` measures."""
    for k in range(n):
        status, state = ("on_battery", "on_battery") if k % 2 == 0 else ("online", "normal")
        set_status(status)
        changed = publisher.wait_for("reading_changed", timeout=5, power=status)
        on_change(k, state, log_time(changed))
        time.sleep(gap_s)


BARE_RECEIVER = """
import asyncio, socket, sys
group, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IP, 49, 0)  # IP_MULTICAST_ALL off
s.bind((group, port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
class Drop(asyncio.DatagramProtocol):
    def datagram_received(self, data, addr):
        pass
async def main():
    await asyncio.get_running_loop().create_datagram_endpoint(Drop, sock=s)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
"""The baseline of idle and scale_1000: an asyncio datagram endpoint on the same group that
drops what it gets. The controller's CPU above it is what powercast itself costs."""


WAKE_RECEIVER = """
import asyncio, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
class Stamp(asyncio.DatagramProtocol):
    def datagram_received(self, data, addr):
        print(repr(time.time() - float(data)), flush=True)
async def main():
    await asyncio.get_running_loop().create_datagram_endpoint(Stamp, sock=s)
    await asyncio.Event().wait()
asyncio.run(main())
"""
"""The baseline of dispatch: a bare asyncio receiver that says how long after it was sent
each datagram reached ``datagram_received`` (the sender's wall clock in the payload)."""


def bare_wake(samples: int, gap_s: float = 0.05) -> list[float]:
    """Seconds from ``sendto`` to a bare asyncio receiver's ``datagram_received``, each
    datagram alone (``gap_s`` apart, as dispatch's changes are): what waking any Python
    receiver costs on this machine now."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WAKE_RECEIVER], stdout=subprocess.PIPE, text=True
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert proc.stdout is not None
        to = ("127.0.0.1", int(proc.stdout.readline()))
        delays = []
        for _ in range(samples):
            time.sleep(gap_s)
            sock.sendto(repr(time.time()).encode(), to)
            delays.append(float(proc.stdout.readline()))
        return delays
    finally:
        sock.close()
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def bare_receiver(port: int) -> Iterator[int]:
    """A bare asyncio receiver process on GROUP:port; yields its pid."""
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_RECEIVER, GROUP, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the bare receiver did not start")
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


# --- figures -------------------------------------------------------------------------------


def bench_ingest(base: Path, size: str) -> dict[str, Any]:  # noqa: PLR0915  # one scenario
    """Signed datagrams pre-filled in one receive buffer, drained four ways, interleaved."""
    work = Workdir(base, "ingest")
    count = sized(size, 150_000, quick=30_000, smoke=2_000)
    rounds = sized(size, 5, quick=3, smoke=1)
    sign = work.keyring.signer(1)
    epoch = 12345
    publishers = [f"rack-{i}.ups" for i in range(10)]
    datagrams = [
        wire.encode(
            announcement(publishers[i % 10], epoch, 1 + i // 10, "online", 1),
            key_id=1,
            sign=sign,
        )
        for i in range(count)
    ]
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    want = 1 << 30
    try:
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, want)  # root only
    except PermissionError:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = rx.getsockname()
    mac = hmac.new(bytes.fromhex((work.keys / "1.key").read_text().strip()), digestmod="sha256")

    def fill() -> None:
        for data in datagrams:
            tx.sendto(data, address)
        time.sleep(0.05)

    def bare() -> int:
        recv, n = rx.recvfrom, 0
        while True:
            try:
                recv(2048)
            except BlockingIOError:
                return n
            n += 1

    def hmac_only() -> int:
        recv, n, copy, compare = rx.recvfrom, 0, mac.copy, hmac.compare_digest
        while True:
            try:
                data, _ = recv(2048)
            except BlockingIOError:
                return n
            h = copy()
            h.update(data[:-32])
            compare(h.digest(), data[-32:])
            n += 1

    def controller(mode: str) -> Callable[[], int]:
        config = load_config(work, mode)

        def drain() -> int:
            ctl = Controller(config, work.keyring)
            recv, receive, mono, wall, n = rx.recvfrom, ctl.receive, time.monotonic, time.time, 0
            while True:
                try:
                    data, _ = recv(2048)
                except BlockingIOError:
                    break
                receive(data, mono(), wall())
                n += 1
            assert ctl.counters["repeat"] == n - len(publishers), ctl.counters
            return n

        return drain

    ways: dict[str, Callable[[], int]] = {
        "bare": bare,
        "hmac_only": hmac_only,
        "controller": controller("enforce"),
        "controller_auth_off": controller("off"),
    }
    rates: dict[str, list[float]] = {name: [] for name in ways}
    drained: dict[str, int] = {}
    for _ in range(rounds):
        for name, way in ways.items():
            fill()
            started = time.perf_counter()
            n = way()
            rates[name].append(n / (time.perf_counter() - started))
            drained[name] = n
    rx.close()
    tx.close()
    median = {name: statistics.median(r) for name, r in rates.items()}
    ratio = median["controller"] / median["bare"]
    return {
        "per_s": round(median["controller"]),
        "baseline_per_s": round(median["bare"]),
        "ratio": round(ratio, 3),
        "auth_off_per_s": round(median["controller_auth_off"]),
        "hmac_only_per_s": round(median["hmac_only"]),
        "datagrams": drained["controller"],
        "filled": count,
        "rounds": rounds,
        "met": ratio >= 0.30,
    }


def load_config(work: Workdir, mode: str) -> ControllerConfig:
    """A controller config with auth ``mode``, as the config loader makes it."""
    path = work.write(
        f"auth-{mode}.toml",
        {
            "role": "controller",
            "auth": {"keys_dir": str(work.keys), "mode": mode, "max_clock_skew_s": 3600.0},
        },
    )
    config = load(path, "controller")
    assert isinstance(config, ControllerConfig)
    return config


def bench_flood(base: Path, size: str) -> dict[str, Any]:  # one scenario
    """Publisher and controller daemons; one, then two other processes flood forged
    datagrams, each at its full rate."""
    work = Workdir(base, "flood")
    record = work.dir / "actions"
    reading = work.dir / "ups.json"
    notify = Notify(work.dir)
    changes = sized(size, 40, quick=10, smoke=2)
    ctl_config = work.controller(record=record)
    pub_config = work.publisher("ups-flood", reading, heartbeat_s=0.5)
    # Forgeries: the legitimate publisher's id claiming the opposite, signed with a key
    # the controller does not have under the id it knows: an HMAC each, then dropped.
    # Each sender is another host (127.0.0.2, 127.0.0.3) and no two of its forgeries
    # share a tag: 4,096 of them, cycled.
    forger = Workdir(base, "forger")
    lie = announcement("ups-flood", 1, 10**9, "on_battery", 10**9)
    forged = wire.encode(lie, key_id=1, sign=forger.keyring.signer(1)).hex()
    flood_code = (
        "import os, signal, socket, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind((sys.argv[1], 0))\n"
        "s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton('127.0.0.1'))\n"
        f"data, to = bytes.fromhex('{forged}'), ('{GROUP}', {work.port})\n"
        "forgeries = [data[:-32] + os.urandom(32) for _ in range(4096)]\n"
        "n, start = 0, time.monotonic()\n"
        "try:\n"
        "    while True:\n"
        "        for forgery in forgeries:\n"
        "            s.sendto(forgery, to)\n"
        "        n += len(forgeries)\n"
        "except KeyboardInterrupt:\n"
        "    pass\n"
        "finally:\n"
        "    print(n / (time.monotonic() - start), flush=True)\n"
    )
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    phases: dict[int, list[float]] = {1: [], 2: []}
    """Senders -> change at the publisher -> action started, seconds."""
    transitions: list[float] = []
    started_actions = ActionLog(record)
    floods: list[subprocess.Popen[str]] = []
    rates: dict[int, float] = {}
    windows: list[tuple[float, float]] = []
    try:
        with daemons(
            (["control", "--config", str(ctl_config)], env),
            (["publish", "--config", str(pub_config)], None),
        ) as (ctl, pub):
            ctl.wait_for("transition", timeout=10, state="normal")
            started_actions.settle()
            time.sleep(3.0)  # past the start-up grace, within which no source is blocked
            for senders, samples in phases.items():
                floods = [
                    subprocess.Popen(
                        [sys.executable, "-c", flood_code, f"127.0.0.{2 + i}"],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    for i in range(senders)
                ]
                time.sleep(0.5)
                flood_started = time.monotonic()

                def measure(_: int, state: str, t0: float, samples: list[float] = samples) -> None:
                    samples.append(started_actions.next(state, timeout=10) - t0)
                    transitions.append(
                        log_time(ctl.wait_for("transition", timeout=10, state=state)) - t0
                    )

                toggle_changes(
                    changes, lambda s: harness.set_reading(reading, s), pub, measure, gap_s=0.2
                )
                windows.append((flood_started, time.monotonic()))
                for flood in floods:
                    flood.send_signal(signal.SIGINT)  # its finally prints the rate
                rates[senders] = sum(
                    float(flood.communicate(timeout=30)[0].strip() or 0) for flood in floods
                )
            alive = ctl.proc.poll() is None
    finally:
        for flood in floods:
            if flood.poll() is None:
                flood.kill()
        notify.close()
    gaps = []
    for begun, ended in windows:
        pings = [t for t in notify.pings() if begun - 1 <= t <= ended + 0.1]
        gaps += [b - a for a, b in itertools.pairwise(pings)]
    max_gap = max(gaps) if gaps else float("inf")
    late = max_gap > WATCHDOG_USEC / 1e6
    figures = latency(phases[1] + phases[2])
    one, two = latency(phases[1]), latency(phases[2])
    return {
        **figures,
        "one_sender_p99_ms": one["p99_ms"],
        "two_senders_p99_ms": two["p99_ms"],
        "transition_p99_ms": latency(transitions)["p99_ms"],
        "flood_per_s": round(rates[1]),
        "two_senders_per_s": round(rates[2]),
        "watchdog_max_gap_ms": round(max_gap * 1000, 1),
        "watchdog_interval_ms": WATCHDOG_USEC / 2000,
        "watchdog_late": late,
        "controller_alive": alive,
        "failsafe_flaps": started_actions.skipped.count("failsafe"),
        "met": figures["p99_ms"] <= 50 and not late and alive,
    }


def bench_dispatch(base: Path, size: str) -> dict[str, Any]:
    """The benchmark is the publisher: a signed change, sent at t0, to the transition."""
    work = Workdir(base, "dispatch")
    record = work.dir / "actions"
    changes = sized(size, 200, quick=30, smoke=2)
    ctl_config = work.controller(record=record)
    sign = work.keyring.signer(1)
    sock = multicast_sender()
    to = (GROUP, work.port)
    dispatch: list[float] = []
    started: list[float] = []
    with daemons((["control", "--config", str(ctl_config)], None)) as (ctl,):
        ctl.wait_for("ready", timeout=10)
        seq, change = 1, 1
        sock.sendto(
            wire.encode(announcement("ups-x", 7, seq, "online", change), key_id=1, sign=sign), to
        )
        ctl.wait_for("transition", state="normal")
        actions = ActionLog(record)
        actions.settle()
        for k in range(changes):
            status, state = ("on_battery", "on_battery") if k % 2 == 0 else ("online", "normal")
            seq, change = seq + 1, change + 1
            data = wire.encode(announcement("ups-x", 7, seq, status, change), key_id=1, sign=sign)
            time.sleep(0.02)
            t0 = time.time()
            sock.sendto(data, to)
            event = ctl.wait_for("transition", timeout=5, state=state)
            dispatch.append(log_time(event) - t0)
            started.append(actions.next(state) - t0)
            time.sleep(0.03)
    sock.close()
    figures = latency(dispatch)
    action = latency(started)
    wake = latency(bare_wake(changes))
    return {
        **figures,
        "action_started_p50_ms": action["p50_ms"],
        "action_started_p99_ms": action["p99_ms"],
        "bare_wake_p50_ms": wake["p50_ms"],
        "bare_wake_p99_ms": wake["p99_ms"],
        "met": figures["p99_ms"] <= 1.0,
    }


def bench_e2e_loopback(base: Path, size: str) -> dict[str, Any]:
    """Change -> action started (a command); and change -> fan PWM written (hwmon)."""
    work = Workdir(base, "e2e")
    record = work.dir / "actions"
    reading = work.dir / "ups.json"
    changes = sized(size, 100, quick=20, smoke=2)
    samples: list[float] = []
    with daemons(
        (["control", "--config", str(work.controller(record=record))], None),
        (["publish", "--config", str(work.publisher("ups-e2e", reading))], None),
    ) as (ctl, pub):
        ctl.wait_for("transition", timeout=10, state="normal")
        actions = ActionLog(record)
        actions.settle()

        def measure(_: int, state: str, t0: float) -> None:
            samples.append(actions.next(state) - t0)

        toggle_changes(changes, lambda s: harness.set_reading(reading, s), pub, measure, 0.05)
    figures = latency(samples)
    hwmon = latency(e2e_hwmon(work, changes))
    return {
        **figures,
        "hwmon_p50_ms": hwmon["p50_ms"],
        "hwmon_p99_ms": hwmon["p99_ms"],
        "met": figures["p99_ms"] <= 5.0 and hwmon["p99_ms"] <= 2.0,
    }


def e2e_hwmon(work: Workdir, changes: int) -> list[float]:
    """Change at the publisher -> the controller's hwmon actuator wrote the PWM file: on
    battery it sheds at once (fans off, 0), back online it restores (fans on, 255).

    A PWM attribute in sysfs lives in memory, and so does its stand-in where the host
    has a tmpfs: a file on disk pays at each rewrite what no hwmon device does (ext4
    writes a truncated file's new data back when it is closed, 0.2 to 0.35 ms here)."""
    memory = Path("/dev/shm")  # noqa: S108  # a private mkdtemp inside it
    with tempfile.TemporaryDirectory(
        prefix="powercast-pwm-", dir=memory if memory.is_dir() else work.dir
    ) as directory:
        return _e2e_hwmon(work, changes, Path(directory) / "pwm1")


def _e2e_hwmon(work: Workdir, changes: int, pwm: Path) -> list[float]:
    pwm.write_text("255\n")
    reading = work.dir / "ups-hwmon.json"
    config = work.write(
        "controller-hwmon.toml",
        {
            "role": "controller",
            "network": {"group": GROUP, "port": work.port, "interface": "127.0.0.1"},
            "auth": {"keys_dir": str(work.keys), "mode": "enforce"},
            "policy": {"shed_after_s": 0.0, "restore_after_s": 0.0, "flap_max_sheds": 1000},
            "actuators": [{"kind": "hwmon", "path": str(pwm)}],
            "log": {"format": "json", "level": "info"},
        },
    )
    samples: list[float] = []
    with (
        FileWrites(pwm) as writes,
        daemons(
            (["control", "--config", str(config)], None),
            (["publish", "--config", str(work.publisher("ups-hw", reading))], None),
        ) as (ctl, pub),
    ):
        ctl.wait_for("transition", timeout=10, state="normal")
        time.sleep(0.3)

        def measure(_: int, state: str, t0: float) -> None:
            samples.append(writes.next("0" if state == "on_battery" else "255", after=t0) - t0)

        toggle_changes(changes, lambda s: harness.set_reading(reading, s), pub, measure, 0.05)
    return samples


class FileWrites:
    """When a file was written and what it then held: inotify's IN_CLOSE_WRITE, read in a
    thread and stamped with the wall clock on arrival."""

    IN_CLOSE_WRITE = 0x8

    def __init__(self, path: Path) -> None:
        import ctypes  # noqa: PLC0415  # only this figure needs it

        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, bytes(path), self.IN_CLOSE_WRITE) < 0:
            raise OSError(ctypes.get_errno(), "inotify")
        self.path = path
        self.seen: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> FileWrites:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def _read(self) -> None:
        while True:
            try:
                os.read(self.fd, 4096)
            except OSError:
                return
            stamp = time.time()
            try:
                text = self.path.read_text().strip()
            except OSError:  # gone with its directory at the end
                return
            with self.cond:
                self.seen.append((stamp, text))
                self.cond.notify_all()

    def next(self, value: str, *, after: float, timeout: float = 5.0) -> float:
        """When the file was first closed holding ``value`` after ``after`` (Unix s)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while time.monotonic() < deadline:
                for stamp, text in self.seen:
                    if stamp >= after and text == value:
                        self.seen = [(t, v) for t, v in self.seen if t > stamp]
                        return stamp
                self.cond.wait(deadline - time.monotonic())
        raise TimeoutError(f"{self.path}: no {value!r} in {timeout} s: {self.seen}")


def bench_e2e_netns(base: Path, size: str) -> dict[str, Any]:
    reason = netbed.unavailable()
    if reason is not None:
        return {"skipped": reason, "met": None}
    work = Workdir(base, "e2e_netns")
    record = work.dir / "actions"
    reading = work.dir / "ups.json"
    changes = sized(size, 100, quick=20, smoke=2)
    samples: list[float] = []
    with netbed.Bed() as bed:
        pub_host, ctl_host = bed.add_host("pub"), bed.add_host("ctl")
        ctl_config = work.controller(
            interface=ctl_host.address, record=record, group=netbed.GROUP, port=netbed.PORT
        )
        pub_config = work.publisher(
            "ups-ns", reading, interface=pub_host.address, group=netbed.GROUP, port=netbed.PORT
        )
        ctl = netbed.NetDaemon(bed, ctl_host, "control", "--config", str(ctl_config))
        pub = netbed.NetDaemon(bed, pub_host, "publish", "--config", str(pub_config))
        try:
            ctl.wait_for("transition", timeout=10, state="normal")
            actions = ActionLog(record)
            actions.settle()

            def measure(_: int, state: str, t0: float) -> None:
                samples.append(actions.next(state) - t0)

            toggle_changes(changes, lambda s: harness.set_reading(reading, s), pub, measure, 0.05)
        finally:
            ctl.stop()
            pub.stop()
    figures = latency(samples)
    return {**figures, "met": figures["p99_ms"] <= 5.0}


def bench_loss20(base: Path, size: str) -> dict[str, Any]:
    reason = netbed.unavailable() or netbed.no_iptables()
    if reason is not None:
        return {"skipped": reason, "met": None}
    work = base / "loss20"
    work.mkdir()
    changes = sized(size, 200, quick=20, smoke=2)
    samples: list[float] = []
    with netbed.Bed() as bed:
        hall = netbed.Hall(
            bed,
            work,
            controllers=3,
            tal_factor=10.0,
            heartbeat_s=1.0,
            actions=False,
            policy={"shed_after_s": 3600.0, "restore_after_s": 0.0},
        )
        for host in hall.ctl_hosts:
            bed.loss(host, 0.2)
        try:
            hall.start()
            hall.wait_all("normal", 10)
            pub = hall.publishers["ups-a"]

            def measure(k: int, state: str, t0: float) -> None:
                seen = [c.wait_for("transition", timeout=5, state=state) for c in hall.controllers]
                samples.append(max(log_time(e) for e in seen) - t0)

            toggle_changes(changes, lambda s: hall.set("ups-a", s), pub, measure, 0.05)
            flaps = sum(s == "failsafe" for c in hall.controllers for s in c.states()[1:])
        finally:
            hall.stop()
    figures = latency(samples)
    return {**figures, "controllers": 3, "failsafe_flaps": flaps, "met": figures["p99_ms"] <= 50}


def bench_idle(base: Path, size: str) -> dict[str, Any]:
    work = Workdir(base, "idle")
    window = sized(size, 30.0, quick=6.0, smoke=1.0)
    configs = [
        work.publisher(f"ups-{i}", work.dir / f"ups-{i}.json", interval_s=1.0) for i in range(10)
    ]
    specs: list[tuple[list[str], dict[str, str] | None]] = [
        (["control", "--config", str(work.controller())], None),
        *((["publish", "--config", str(c)], None) for c in configs),
    ]
    with daemons(*specs) as started, bare_receiver(work.port) as bare:
        ctl = started[0]
        ctl.wait_for("ready", timeout=15)
        for d in started[1:]:
            d.wait_for("ready", timeout=15)
        ctl.wait_for("transition", timeout=10, state="normal")
        time.sleep(sized(size, 3.0, quick=3.0, smoke=1.0))  # every publisher heard, past start-up
        pids = [d.proc.pid for d in started] + [bare]
        before = [cpu_seconds(p) for p in pids]
        t0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        cpu = [100 * (cpu_seconds(p) - b) / elapsed for p, b in zip(pids, before, strict=True)]
        rss = [rss_mb(p) for p in pids]
    baseline = cpu.pop()
    rss.pop()
    pub_cpu, pub_rss = cpu[1:], rss[1:]
    ratio = cpu[0] / baseline if baseline > 0 else float("inf")
    return {
        "controller_cpu_pct": round(cpu[0], 3),
        "baseline_cpu_pct": round(baseline, 3),
        "controller_cpu_ratio": round(ratio, 2),
        "controller_rss_mb": round(rss[0], 1),
        "publisher_cpu_pct": round(statistics.mean(pub_cpu), 3),
        "publisher_cpu_pct_max": round(max(pub_cpu), 3),
        "publisher_rss_mb": round(max(pub_rss), 1),
        "window_s": window,
        "met": ratio <= 1.3 and max(pub_cpu) <= 0.1 and max(rss) <= 40,
    }


def compiled_package(directory: Path) -> Path:
    """A copy of the package byte-compiled the way packaging/build-deb installs it (checked-hash
    .pyc): a source checkout under PYTHONDONTWRITEBYTECODE compiles every module at each start."""
    import powercast  # noqa: PLC0415  # only to find the package being measured

    lib = directory / "lib"
    source = Path(powercast.__file__).parent
    shutil.copytree(source, lib / "powercast", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash", str(lib)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return lib


def bench_ready(base: Path, size: str) -> dict[str, Any]:
    """Exec to READY=1, as installed (byte-compiled) and from this source tree."""
    work = Workdir(base, "ready")
    runs = sized(size, 20, quick=5, smoke=1)
    reading = work.dir / "ups.json"
    lib = compiled_package(work.dir)
    configs = {
        "controller": ["control", "--config", str(work.controller())],
        "publisher": ["publish", "--config", str(work.publisher("ups-r", reading))],
    }
    forms: dict[str, dict[str, str]] = {"installed": {"PYTHONPATH": str(lib)}, "source": {}}
    times: dict[tuple[str, str], list[float]] = {
        (form, role): [] for form in forms for role in configs
    }
    for _ in range(runs):
        for form, env in forms.items():
            for role, args in configs.items():
                notify = Notify(work.dir)
                started = time.monotonic()
                daemon = harness.Daemon(*args, env={**env, "NOTIFY_SOCKET": notify.path})
                try:
                    if not notify.ready.wait(10):
                        raise TimeoutError(f"{role} ({form}): no READY=1 in 10 s")
                    at = next(t for t, m in notify.messages if "READY=1" in m.splitlines())
                    times[form, role].append(at - started)
                finally:
                    daemon.stop()
                    notify.close()
    installed = [t for (form, _), ts in times.items() if form == "installed" for t in ts]
    source = [t for (form, _), ts in times.items() if form == "source" for t in ts]
    figures = latency(installed)
    from_source = latency(source)
    return {
        **figures,
        "controller_p50_ms": latency(times["installed", "controller"])["p50_ms"],
        "publisher_p50_ms": latency(times["installed", "publisher"])["p50_ms"],
        "source_p50_ms": from_source["p50_ms"],
        "source_p99_ms": from_source["p99_ms"],
        "met": figures["p99_ms"] <= 300,
    }


def bench_scale_1000(base: Path, size: str) -> dict[str, Any]:
    """1,000 synthetic publishers, each signed heartbeats at 1 Hz, from this process."""
    work = Workdir(base, "scale")
    window = sized(size, 30.0, quick=6.0, smoke=1.0)
    publishers = 1000
    sign = work.keyring.signer(1)
    sock = multicast_sender()
    to = (GROUP, work.port)
    ids = [f"node-{i:04d}.ups" for i in range(publishers)]
    seq = [0] * publishers
    sent = 0

    def send_for(seconds: float) -> None:
        """Each publisher once a second, spread evenly: a batch of 10 every 10 ms."""
        nonlocal sent
        start = time.monotonic()
        slot = 0
        while (now := time.monotonic()) < start + seconds:
            due = start + slot * 0.01
            if due > now:
                time.sleep(due - now)
            for j in range(10):
                i = (slot * 10 + j) % publishers
                seq[i] += 1
                message = announcement(ids[i], 1000 + i, seq[i], "online", 1)
                sock.sendto(wire.encode(message, key_id=1, sign=sign), to)
                sent += 1
            slot += 1

    with (
        daemons((["control", "--config", str(work.controller())], None)) as (ctl,),
        bare_receiver(work.port) as bare,
    ):
        ctl.wait_for("ready", timeout=10)
        send_for(sized(size, 3.0, quick=3.0, smoke=1.0))  # every publisher heard: past the first
        pid = ctl.proc.pid
        before, bare_before = cpu_seconds(pid), cpu_seconds(bare)
        sent = 0
        t0 = time.monotonic()
        send_for(window)
        elapsed = time.monotonic() - t0
        cpu = 100 * (cpu_seconds(pid) - before) / elapsed
        baseline = 100 * (cpu_seconds(bare) - bare_before) / elapsed
        rss = rss_mb(pid)
    sock.close()
    ratio = cpu / baseline if baseline > 0 else float("inf")
    return {
        "cpu_pct": round(cpu, 2),
        "baseline_cpu_pct": round(baseline, 2),
        "cpu_ratio": round(ratio, 2),
        "rss_mb": round(rss, 1),
        "datagrams_per_s": round(sent / elapsed),
        "window_s": window,
        "met": ratio <= 1.3,
    }


def bench_verify_cost(base: Path, size: str) -> dict[str, Any]:
    """What checking a tag costs per datagram, by scheme, in the receivers' own gate
    (auth.Gate.check, then the body decoded), against the bare decode it precedes; and
    what a forged signature costs when its publisher's verify budget is spent (the
    target: a flood past the budget costs about what a decode does, not a signature)."""
    del base  # in-process: no files, no sockets
    count = sized(size, 4_000, quick=1_000, smoke=100)
    rounds = sized(size, 5, quick=3, smoke=1)
    seeds = {1: bytes(range(32))}
    shared = Keyring.from_keys({1: seeds[1]}, Path("bench"))
    signing = Keyring.from_keys({}, Path("bench"), private=seeds)
    public = Keyring.from_keys({}, Path("bench"), public={1: public_key(seeds[1])})
    plenty = Budgets(1e12, 1e12, 16)

    def datagrams(ring: Keyring | None) -> list[bytes]:
        return [
            wire.encode(
                announcement("rack-1.ups", 7, seq, "online", 1),
                key_id=1 if ring else 0,
                sign=ring.signer(1) if ring else None,
            )
            for seq in range(1, count + 1)
        ]

    def checked(gate: Gate, batch: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            check, now = gate.check, time.monotonic()
            for data in batch:
                envelope = wire.open_envelope(data)
                assert check(envelope, "10.0.0.1", now) is None
                wire.decode_body(envelope)

        return run

    def bare(batch: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            for data in batch:
                wire.decode_body(wire.open_envelope(data))

        return run

    forged = [data[:-64] + bytes(64) for data in datagrams(signing)]
    starved = Gate(public, publishers=Budgets(1.0, 1.0, 16, newcomers_share=True))

    def over_budget() -> None:
        check, now = starved.check, time.monotonic()
        for data in forged:
            check(wire.open_envelope(data), "10.0.0.1", now)

    ways: dict[str, Callable[[], None]] = {
        "decode": bare(datagrams(None)),
        "hmac": checked(Gate(shared, sources=plenty, publishers=plenty), datagrams(shared)),
        "ed25519": checked(Gate(public, sources=plenty, publishers=plenty), datagrams(signing)),
        "over_budget": over_budget,
    }
    micros: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            started = time.perf_counter()
            way()
            micros[name].append((time.perf_counter() - started) / count * 1e6)
    median = {name: statistics.median(m) for name, m in micros.items()}
    return {
        "decode_us": round(median["decode"], 3),
        "hmac_us": round(median["hmac"], 3),
        "ed25519_us": round(median["ed25519"], 3),
        "over_budget_us": round(median["over_budget"], 3),
        "hmac_ratio": round(median["hmac"] / median["decode"], 2),
        "ed25519_ratio": round(median["ed25519"] / median["decode"], 2),
        "over_budget_ratio": round(median["over_budget"] / median["decode"], 2),
        "datagrams": count,
        "rounds": rounds,
        "met": median["over_budget"] <= 2 * median["decode"],
    }


UPS_OUTPUT_SOURCE = "1.3.6.1.2.1.33.1.4.1.0"


def snmpd_path() -> str | None:
    """net-snmp's agent (Debian's ``snmpd``, in /usr/sbin: not on every user's PATH)."""
    return shutil.which("snmpd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin")


def get_request(community: str, oids: list[str]) -> bytes:
    """An SNMPv2c GET of ``oids``, encoded once: the agent's own answer time is timed with it."""
    from pyasn1.codec.ber import encoder  # noqa: PLC0415  # pysnmp only for this figure
    from pysnmp.proto.api import v2c as api  # noqa: PLC0415

    pdu = api.GetRequestPDU()
    api.apiPDU.set_defaults(pdu)
    api.apiPDU.set_varbinds(pdu, [(api.ObjectIdentifier(oid), api.Null("")) for oid in oids])
    message = api.Message()
    api.apiMessage.set_defaults(message)
    api.apiMessage.set_community(message, community)
    api.apiMessage.set_pdu(message, pdu)
    return bytes(encoder.encode(message))


@contextlib.contextmanager
def snmpd_agent(directory: Path) -> Iterator[tuple[int, socket.socket]]:
    """net-snmp's snmpd, a C agent as on a UPS's network card, on 127.0.0.1 at a free port,
    with its own config and persistent directory under ``directory`` (no system file read
    or written): the snmp tests' UPS-MIB on line (``test_source_snmp.ONLINE``) as
    ``override -rw`` objects, community ``public``
    read-write from 127.0.0.1. Its port, and a socket connected to it."""
    from test_source_snmp import ONLINE  # noqa: PLC0415  # pysnmp only for this figure

    from powercast.sources.snmp import OIDS  # noqa: PLC0415

    snmpd = snmpd_path()
    assert snmpd is not None
    directory.mkdir(parents=True)
    port = free_port()
    conf = directory / "snmpd.conf"
    conf.write_text(
        f"agentaddress udp:127.0.0.1:{port}\n"
        "rwcommunity public 127.0.0.1\n"
        + "".join(f"override -rw .{OIDS[k]} integer {v}\n" for k, v in ONLINE.items())
    )
    proc = subprocess.Popen(
        # -C: no system config; -I -smux: no SMUX listener on TCP port 199
        [snmpd, "-f", "-C", "-c", str(conf), "-I", "-smux", "-Lf", str(directory / "snmpd.log")],
        env={**os.environ, "MIBS": "", "SNMP_PERSISTENT_DIR": str(directory / "persist")},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # late answers die with it
            probe.connect(("127.0.0.1", port))
            probe.settimeout(0.05)
            request = get_request("public", list(OIDS.values()))
            deadline = time.monotonic() + 10
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (directory / "snmpd.log").read_text(errors="replace")[-500:]
                    raise RuntimeError(f"snmpd did not answer (exit {proc.poll()}): {log}")
                probe.send(request)
                try:
                    probe.recv(4096)
                    break
                except (TimeoutError, ConnectionRefusedError):
                    continue
        sock.connect(("127.0.0.1", port))
        sock.settimeout(2)
        yield port, sock
    finally:
        sock.close()
        harness.end(proc)


def trap_datagram(community: str, trap_oid: str) -> bytes:
    """An SNMPv2c trap as a UPS's card sends it: sysUpTime.0, snmpTrapOID.0."""
    from pyasn1.codec.ber import encoder  # noqa: PLC0415  # pysnmp only for this figure
    from pysnmp.proto.api import v2c as api  # noqa: PLC0415

    pdu = api.SNMPv2TrapPDU()
    api.apiTrapPDU.set_defaults(pdu)
    api.apiTrapPDU.set_varbinds(
        pdu,
        [
            (api.ObjectIdentifier("1.3.6.1.2.1.1.3.0"), api.TimeTicks(0)),
            (api.ObjectIdentifier("1.3.6.1.6.3.1.1.4.1.0"), api.ObjectIdentifier(trap_oid)),
        ],
    )
    message = api.Message()
    api.apiMessage.set_defaults(message)
    api.apiMessage.set_community(message, community)
    api.apiMessage.set_pdu(message, pdu)
    return bytes(encoder.encode(message))


class SnmpManager:
    """SETs and GETs to the benchmark's agent from this process (pysnmp, v2c)."""

    def __init__(self, port: int) -> None:
        import warnings  # noqa: PLC0415

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from pysnmp.hlapi.v3arch import asyncio as hlapi  # noqa: PLC0415

            from powercast.sources.snmp import OIDS  # noqa: PLC0415

        self.hlapi = hlapi
        self.loop = asyncio.new_event_loop()
        self.engine = hlapi.SnmpEngine()
        self.auth = hlapi.CommunityData("public", mpModel=1)  # noqa: S508  # the agent's
        self.target = self.loop.run_until_complete(
            hlapi.UdpTransportTarget.create(("127.0.0.1", port), timeout=2, retries=1)
        )
        self.binds = [hlapi.ObjectType(hlapi.ObjectIdentity(oid)) for oid in OIDS.values()]
        """The snmp source's request, built once as the source builds it."""

    def _run(self, command: Any, *binds: Any) -> list[Any]:
        h = self.hlapi
        error, status, _, answer = self.loop.run_until_complete(
            command(self.engine, self.auth, self.target, h.ContextData(), *binds, lookupMib=False)
        )
        if error or status:
            raise RuntimeError(f"SNMP agent: {error or status.prettyPrint()}")
        return list(answer)

    def set_output_source(self, value: int) -> None:
        h = self.hlapi
        self._run(h.set_cmd, h.ObjectType(h.ObjectIdentity(UPS_OUTPUT_SOURCE), h.Integer32(value)))

    def get(self) -> list[Any]:
        """The publisher's GET: every UPS-MIB object the snmp source asks for."""
        return self._run(self.hlapi.get_cmd, *self.binds)

    def check(self) -> None:
        """The agent serves every object the snmp source reads, as an integer."""
        from pyasn1.type import univ  # noqa: PLC0415

        bad = [
            f"{oid}: {value.prettyPrint()}"
            for oid, value in self.get()
            if not isinstance(value, univ.Integer)
        ]
        if bad:
            raise RuntimeError(f"SNMP agent lacks objects the snmp source reads: {bad}")

    def close(self) -> None:
        self.engine.close_dispatcher()
        self.loop.run_until_complete(asyncio.sleep(0))  # let its timer task see the cancel
        self.loop.close()


def bench_trap_detect(base: Path, size: str) -> dict[str, Any]:
    """An SNMP trap from the UPS's agent -> the controller's transition, through the
    publisher's trap listener and the GET it brings forward (regular poll: once a minute).
    The agent is net-snmp's snmpd (C, answering as a UPS's card does). Each cycle: the
    agent goes on battery (SET), upsTrapOnBattery; back (SET), PowerNet powerRestored;
    both transitions measured. Baselines: the bare GET round trip (pysnmp, the source's
    request) and the agent's own answer (the same GET, pre-encoded, on a plain socket)."""
    if snmpd_path() is None:
        return {
            "skipped": "needs net-snmp's snmpd: apt-get install snmpd, or .ci/run",
            "met": None,
        }
    work = Workdir(base, "trap_detect")
    cycles = sized(size, 50, quick=10, smoke=1)
    trap_port = free_port()
    on_battery = trap_datagram("public", "1.3.6.1.2.1.33.2.1")  # UPS-MIB upsTrapOnBattery
    restored = trap_datagram("public", "1.3.6.1.4.1.318.0.9")  # PowerNet powerRestored
    steps = ((5, on_battery, "on_battery"), (3, restored, "normal"))
    power = {5: "on_battery", 3: "online"}
    samples: list[float] = []
    reads: list[float] = []
    gets: list[float] = []
    answers: list[float] = []
    with snmpd_agent(work.dir / "agent") as (agent_port, agent):
        manager = SnmpManager(agent_port)
        publisher = work.write(
            "publisher.toml",
            {
                "role": "publisher",
                "id": "ups-snmp",
                "network": {"group": GROUP, "port": work.port, "interface": "127.0.0.1", "ttl": 1},
                "auth": {"keys_dir": str(work.keys), "key_id": 1},
                "sources": [
                    {
                        "kind": "snmp",
                        "host": "127.0.0.1",
                        "port": agent_port,
                        "community": "public",
                        "interval_s": 60.0,
                        "traps": {"listen": f"127.0.0.1:{trap_port}"},
                    }
                ],
                "log": {"format": "json", "level": "info"},
            },
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))  # the agent's address: the listener drops any other
        request = get_request("public", [str(oid) for oid, _ in manager.get()])
        try:
            manager.check()  # also the first GET of an engine, which loads pysnmp's MIBs
            for _ in range(sized(size, 200, quick=50, smoke=5)):
                t0 = time.perf_counter()
                manager.get()
                gets.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                agent.send(request)
                agent.recv(4096)
                answers.append(time.perf_counter() - t0)
            with daemons(
                (["control", "--config", str(work.controller())], None),
                (["publish", "--config", str(publisher)], None),
            ) as (ctl, pub):
                ctl.wait_for("transition", timeout=15, state="normal")
                pub.wait_for("traps_listening", timeout=10)
                for cycle in range(cycles + 1):  # the first: warm-up (first trap, first SET)
                    for value, datagram, state in steps:
                        manager.set_output_source(value)
                        time.sleep(0.15)  # past traps.confirm_gap_s: each trap its own GET
                        t0 = time.time()
                        sock.sendto(datagram, ("127.0.0.1", trap_port))
                        moved = ctl.wait_for("transition", timeout=5, state=state)
                        read = pub.wait_for("reading_changed", timeout=5, power=power[value])
                        if cycle:
                            samples.append(log_time(moved) - t0)
                            reads.append(log_time(read) - t0)
        finally:
            sock.close()
            manager.close()
    figures = latency(samples)
    baseline = latency(gets)
    own = latency(answers)
    return {
        **figures,
        "read_p50_ms": latency(reads)["p50_ms"],
        "read_p99_ms": latency(reads)["p99_ms"],
        "baseline_get_p50_ms": baseline["p50_ms"],
        "baseline_get_p99_ms": baseline["p99_ms"],
        "agent_p50_ms": own["p50_ms"],
        "agent_p99_ms": own["p99_ms"],
        "met": figures["p99_ms"] <= 10.0,
    }


class StatusProbe:
    """upsd's own view: ``GET VAR <ups> ups.status`` every 2 ms on one kept connection, in
    a thread; when each new value was first seen (Unix seconds)."""

    def __init__(self, port: int, ups: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lines = self.sock.makefile("rb")
        self.request = f"GET VAR {ups} ups.status\n".encode()
        self.changes: list[tuple[str, float]] = []
        self.asked = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            self.sock.sendall(self.request)
            answer = self.lines.readline().decode().strip()
            now = time.time()
            self.asked += 1
            if answer != last:
                words = shlex.split(answer) or [""]
                self.changes.append((words[-1], now))
                last = answer
            time.sleep(0.002)

    def seen(self, status: str, after: float, timeout: float = 5.0) -> float:
        """When upsd first served ``status`` after ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for value, at in reversed(self.changes):
                if at >= after and value == status:
                    return at
            time.sleep(0.002)
        raise TimeoutError(f"upsd did not serve {status!r} in {timeout} s: {self.changes[-3:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def bench_nut_detect(base: Path, size: str) -> dict[str, Any]:  # noqa: PLR0915  # one scenario
    """The same .dev flips seen by upsd, by powercast's controller and by upsmon."""
    reason = nutbed.unavailable(upsmon=True)
    if reason is not None:
        return {"skipped": reason, "met": None}
    work = Workdir(base, "nut_detect")
    flips = sized(size, 40, quick=20, smoke=2)
    ups = "bench"
    (work.dir / "nut").mkdir()
    server = nutbed.NutServer(work.dir / "nut", (ups,))
    load_before = os.getloadavg()[0]
    upsd_s: list[float] = []
    powercast_s: list[float] = []
    upsmon_s: list[float] = []
    behind_s: list[float] = []
    upsmon_behind_s: list[float] = []
    probe: StatusProbe | None = None
    upsmon: nutbed.Upsmon | None = None
    try:
        server.start()
        server.wait_status(ups, "OL")
        # upsmon polls every second from its start, the driver from its own: started right
        # after the driver's first data it would sit just behind it. A random phase instead,
        # as on a real host (upsmon_behind_upsd shows the one it got).
        time.sleep(random.uniform(0.0, 1.0))  # noqa: S311  # a phase, not a secret
        upsmon = nutbed.Upsmon(server, ups)
        publisher = work.write(
            "publisher.toml",
            {
                "role": "publisher",
                "id": "ups-nut",
                "heartbeat_s": 1.0,
                "network": {"group": GROUP, "port": work.port, "interface": "127.0.0.1"}
                | {"loop": True, "ttl": 1},
                "auth": {"keys_dir": str(work.keys), "key_id": 1},
                "sources": [{"kind": "nut", "ups": ups, "port": server.port}],
                "log": {"format": "json", "level": "info"},
            },
        )
        with daemons(
            (["control", "--config", str(work.controller())], None),
            (["publish", "--config", str(publisher)], None),
        ) as (ctl, pub):
            ctl.wait_for("transition", timeout=10, state="normal")
            upsmon.wait_logged_in()
            probe = StatusProbe(server.port, ups)
            time.sleep(1.0)
            notified = len(upsmon.notifications())
            cpu_before = {p: cpu_seconds(p) for p in (pub.proc.pid, upsmon.proc.pid)}
            started = time.monotonic()
            for k in range(flips):
                status, state, kind = (
                    ("OB DISCHRG", "on_battery", "ONBATT")
                    if k % 2 == 0
                    else ("OL", "normal", "ONLINE")
                )
                t0 = time.time()
                server.set(ups, {**nutbed.ONLINE, "ups.status": status})
                upsd_at = probe.seen(status, t0)
                powercast_at = log_time(ctl.wait_for("transition", timeout=5, state=state))
                deadline = time.monotonic() + 5
                while len(upsmon.notifications()) <= notified:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"upsmon: no {kind} in 5 s: {upsmon.notifications()}")
                    time.sleep(0.005)
                got, upsmon_at = upsmon.notifications()[notified]
                notified += 1
                if got != kind:
                    raise RuntimeError(f"upsmon notified {got}, expected {kind}")
                upsd_s.append(upsd_at - t0)
                powercast_s.append(powercast_at - t0)
                upsmon_s.append(upsmon_at - t0)
                behind_s.append(powercast_at - upsd_at)
                upsmon_behind_s.append(upsmon_at - upsd_at)
                pause = random.uniform(0.2, 1.2)  # noqa: S311  # a pause, not a secret
                time.sleep(pause)  # no fixed phase to the 1 s loops of driver and upsmon
            elapsed = time.monotonic() - started
            cpu = {p: 100 * (cpu_seconds(p) - b) / elapsed for p, b in cpu_before.items()}
            asked = probe.asked
    finally:
        if probe is not None:
            probe.close()
        if upsmon is not None:
            upsmon.stop()
        server.stop()
    upsd, powercast, nut_upsmon = latency(upsd_s), latency(powercast_s), latency(upsmon_s)
    behind, upsmon_behind = latency(behind_s), latency(upsmon_behind_s)
    lag = powercast["p99_ms"] - upsd["p99_ms"]
    return {
        **powercast,
        "upsd_p50_ms": upsd["p50_ms"],
        "upsd_p99_ms": upsd["p99_ms"],
        "upsmon_p50_ms": nut_upsmon["p50_ms"],
        "upsmon_p99_ms": nut_upsmon["p99_ms"],
        "behind_upsd_p50_ms": behind["p50_ms"],
        "behind_upsd_p99_ms": behind["p99_ms"],
        "upsmon_behind_upsd_p50_ms": upsmon_behind["p50_ms"],
        "upsmon_behind_upsd_p99_ms": upsmon_behind["p99_ms"],
        "p99_minus_upsd_p99_ms": round(lag, 3),
        "publisher_cpu_pct": round(cpu[pub.proc.pid], 3),
        "upsmon_cpu_pct": round(cpu[upsmon.proc.pid], 3),
        "probe_requests": asked,
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "met": lag <= 100 and powercast["p99_ms"] < nut_upsmon["p99_ms"],
    }


def bench_relay_throughput(base: Path, size: str) -> dict[str, Any]:
    """Datagrams through one relay to a local Mosquitto at rising rates, counted by a plain
    subscriber; baseline: the same broker fed by a plain MQTT publisher, one datagram per
    message (benchmarks/relay.py, which also measures the relay path's latency)."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        return {"skipped": "needs mosquitto: apt-get install mosquitto", "met": None}
    import relay  # noqa: PLC0415  # benchmarks/relay.py: paho, the test sites; only here

    work = Workdir(base, "relay_throughput")
    seconds = sized(size, 2.0, quick=1.0, smoke=0.1)
    r = relay.measure_throughput(work.dir, seconds)
    baseline = r["baseline_broker"]["received_per_s"]
    return {
        "sustained_per_s": r["sustained_per_s"],
        "best_received_per_s": r["best_received_per_s"],
        "baseline_received_per_s": baseline,
        "ratio": round(r["best_received_per_s"] / baseline, 2) if baseline else None,
        "steps": r["steps"],
        "met": r["sustained_per_s"] >= 50_000,
    }


BENCHMARKS: dict[str, Callable[[Path, bool], dict[str, Any]]] = {
    "ingest": bench_ingest,
    "flood": bench_flood,
    "dispatch": bench_dispatch,
    "e2e_loopback": bench_e2e_loopback,
    "e2e_netns": bench_e2e_netns,
    "loss20": bench_loss20,
    "idle": bench_idle,
    "ready": bench_ready,
    "scale_1000": bench_scale_1000,
    "nut_detect": bench_nut_detect,
    "verify_cost": bench_verify_cost,
    "trap_detect": bench_trap_detect,
    "relay_throughput": bench_relay_throughput,
}


# --- output --------------------------------------------------------------------------------


def describe(name: str, r: dict[str, Any]) -> tuple[str, str]:  # noqa: PLR0912  # one per figure
    """(measured, baseline or detail) for the table."""
    if "error" in r:
        return "error", r["error"][:60]
    if "skipped" in r:
        return "skipped", r["skipped"][:60]
    if name == "ingest":
        return (
            f"{r['per_s']:,}/s (ratio {r['ratio']:.2f})",
            f"bare recvfrom {r['baseline_per_s']:,}/s; auth off {r['auth_off_per_s']:,}/s;"
            f" recvfrom+HMAC {r['hmac_only_per_s']:,}/s",
        )
    if name == "flood":
        return (
            f"p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} ms",
            f"one sender {r['flood_per_s']:,} forged/s: p99 {r['one_sender_p99_ms']:.1f} ms;"
            f" two {r['two_senders_per_s']:,}/s: p99 {r['two_senders_p99_ms']:.1f} ms;"
            f" to the transition p99 {r['transition_p99_ms']:.1f} ms;"
            f" watchdog max gap {r['watchdog_max_gap_ms']:.0f} ms"
            f" (pings every {r['watchdog_interval_ms']:.0f} ms,"
            f" late: {'yes' if r['watchdog_late'] else 'no'});"
            f" {r['failsafe_flaps']} failsafe flaps",
        )
    if name == "dispatch":
        return (
            f"p50 {r['p50_ms']:.3f} / p99 {r['p99_ms']:.3f} ms",
            f"bare asyncio receiver woken: p50 {r['bare_wake_p50_ms']:.3f} / p99"
            f" {r['bare_wake_p99_ms']:.3f} ms; to action started: p50"
            f" {r['action_started_p50_ms']:.2f} / p99 {r['action_started_p99_ms']:.2f} ms",
        )
    if name in ("e2e_loopback", "e2e_netns", "loss20"):
        extra = f"{r['samples']} changes"
        if name == "e2e_loopback":
            extra += (
                f"; hwmon actuator: p50 {r['hwmon_p50_ms']:.2f} / p99 {r['hwmon_p99_ms']:.2f} ms"
            )
        if name == "loss20":
            extra += f", 3 controllers, {r['failsafe_flaps']} failsafe flaps"
        return f"p50 {r['p50_ms']:.2f} / p99 {r['p99_ms']:.2f} ms", extra
    if name == "idle":
        return (
            f"controller {r['controller_cpu_pct']:.3f} % ({r['controller_cpu_ratio']:.2f} x bare)"
            f" {r['controller_rss_mb']:.0f} MB;"
            f" publishers {r['publisher_cpu_pct']:.3f} % (max {r['publisher_cpu_pct_max']:.3f})"
            f" {r['publisher_rss_mb']:.0f} MB",
            f"bare asyncio receiver {r['baseline_cpu_pct']:.3f} %; over {r['window_s']:g} s",
        )
    if name == "ready":
        return (
            f"p50 {r['p50_ms']:.0f} / p99 {r['p99_ms']:.0f} ms",
            f"byte-compiled as installed; controller p50 {r['controller_p50_ms']:.0f} ms,"
            f" publisher p50 {r['publisher_p50_ms']:.0f} ms; from source (compiled at each"
            f" start) p50 {r['source_p50_ms']:.0f} / p99 {r['source_p99_ms']:.0f} ms",
        )
    if name == "scale_1000":
        return (
            f"{r['cpu_pct']:.2f} % of a core ({r['cpu_ratio']:.2f} x bare), {r['rss_mb']:.0f} MB",
            f"bare asyncio receiver {r['baseline_cpu_pct']:.2f} %;"
            f" {r['datagrams_per_s']:,} signed datagrams/s over {r['window_s']:g} s",
        )
    if name == "verify_cost":
        return (
            f"hmac {r['hmac_us']:.2f} µs (x{r['hmac_ratio']:.1f}), ed25519"
            f" {r['ed25519_us']:.1f} µs (x{r['ed25519_ratio']:.0f}) per datagram",
            f"bare decode {r['decode_us']:.2f} µs; forged signature over budget"
            f" {r['over_budget_us']:.2f} µs (x{r['over_budget_ratio']:.1f})",
        )
    if name == "relay_throughput":
        return (
            f"{r['sustained_per_s']:,}/s sustained, none lost; best {r['best_received_per_s']:,}/s",
            f"plain MQTT publisher through the same broker {r['baseline_received_per_s']:,}/s"
            f" (x{r['ratio']})",
        )
    if name == "trap_detect":
        return (
            f"p50 {r['p50_ms']:.2f} / p99 {r['p99_ms']:.2f} ms",
            f"bare GET (pysnmp) p50 {r['baseline_get_p50_ms']:.2f}"
            f" / p99 {r['baseline_get_p99_ms']:.2f} ms; snmpd's answer p50"
            f" {r['agent_p50_ms']:.2f} / p99 {r['agent_p99_ms']:.2f} ms; trap -> reading"
            f" changed p50 {r['read_p50_ms']:.2f} / p99 {r['read_p99_ms']:.2f} ms;"
            f" {r['samples']} traps",
        )
    if name == "nut_detect":
        return (
            f"p50 {r['p50_ms']:.0f} / p99 {r['p99_ms']:.0f} ms"
            f" (p99 {r['p99_minus_upsd_p99_ms']:+.0f} ms on upsd's)",
            f"upsd p50 {r['upsd_p50_ms']:.0f} / p99 {r['upsd_p99_ms']:.0f} ms; upsmon p50"
            f" {r['upsmon_p50_ms']:.0f} / p99 {r['upsmon_p99_ms']:.0f} ms; after upsd: p50"
            f" {r['behind_upsd_p50_ms']:.0f} / p99 {r['behind_upsd_p99_ms']:.0f} ms (upsmon"
            f" {r['upsmon_behind_upsd_p50_ms']:.0f} / {r['upsmon_behind_upsd_p99_ms']:.0f});"
            f" {r['samples']} flips; publisher CPU {r['publisher_cpu_pct']:.2f} %,"
            f" upsmon {r['upsmon_cpu_pct']:.2f} %; load {r['loadavg_1m'][0]:.1f}"
            f"->{r['loadavg_1m'][1]:.1f}",
        )
    return json.dumps(r), ""


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = [("figure", "measured", "baseline / detail", "target", "met")]
    for name, r in results.items():
        measured, detail = describe(name, r)
        if "worst" in r:
            worst, _ = describe(name, {**r, **r["worst"]})
            measured = f"{measured} (worst: {worst})"
        met = {True: "yes", False: "NO", None: "-"}[r.get("met")]
        rows.append((name, measured, detail, TARGETS[name], met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores, {model}, Linux {platform.release()},"
        f" Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="fewer samples: about a minute")
    sizes.add_argument(
        "--smoke",
        action="store_true",
        help="the fewest samples that still give each figure: that every benchmark runs",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object keyed by figure")
    parser.add_argument("--only", help="comma-separated figures to run (default: all)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run every figure N times (interleaved); report each one's median and worst",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat: expected a count of 1 or more, got {args.repeat}")
    size = "quick" if args.quick else "smoke" if args.smoke else "full"
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; expected some of {list(BENCHMARKS)}")
    if shutil.which("bash") is None:
        print("benchmarks/run: bash is needed for the timestamping action", file=sys.stderr)
        return 2
    if netbed.unavailable() is None:
        netbed.sweep()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for run in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="powercast-bench-") as tmp:
            for name in names:
                if not args.json:
                    which = f" ({run + 1}/{args.repeat})" if args.repeat > 1 else ""
                    print(f"running {name}{which}...", file=sys.stderr, flush=True)
                runs[name].append(run_one(name, Path(tmp), size))
    results = {name: summarize(each) for name, each in runs.items()}
    load = os.getloadavg()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(table(results))
        kind = "full run" if size == "full" else "--" + size
        if args.repeat > 1:
            kind += f", {args.repeat} runs: median (worst)"
        print(f"\n{machine()}; {kind}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


def run_one(name: str, base: Path, size: str) -> dict[str, Any]:
    """One figure, once; an exception becomes its error, so it hides no other figure."""
    started = time.monotonic()
    try:
        result = BENCHMARKS[name](base, size)
    except Exception as err:  # one figure failing must not hide the others
        result = {"error": f"{type(err).__name__}: {err}", "met": False}
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


LOWER_IS_WORSE = ("per_s",)
"""Suffixes of fields where less is worse (rates), besides ``ratio`` (ingest's share of
the bare rate); in every other number (times, CPU, its ratio to bare), more is worse."""


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run as it is; several: each number's median under its own key, and under
    ``worst`` each number's worst value, ``met`` only if every run met its target."""
    if len(runs) == 1:
        return runs[0]
    measured = [r for r in runs if "error" not in r and "skipped" not in r]
    if not measured:
        return {**runs[0], "runs": len(runs)}
    median: dict[str, Any] = dict(measured[0])
    worst: dict[str, Any] = {}
    for key, value in measured[0].items():
        if isinstance(value, bool):
            if key != "met":
                worst[key] = any(r[key] for r in measured)  # a flag: "late", "alive"...
            continue
        if not isinstance(value, int | float) or key == "seconds":
            continue
        values = [r[key] for r in measured]
        middle = statistics.median(values)
        whole = all(isinstance(v, int) for v in values)
        median[key] = round(middle) if whole else round(middle, 3)
        lower_worse = key == "ratio" or key.endswith(LOWER_IS_WORSE)
        worst[key] = min(values) if lower_worse else max(values)
    median["met"] = len(measured) == len(runs) and all(r["met"] for r in measured)
    median["worst"] = worst
    median["runs"] = len(runs)
    median["errors"] = [r["error"] for r in runs if "error" in r]
    return median


if __name__ == "__main__":
    sys.exit(main())
