#!/usr/bin/env python3
"""What a relay costs: latency added by relay + broker + relay, and the rate one sustains.

    benchmarks/relay.py [--quick] [--json] [--loopback]

Two sites as network namespaces on separate bridges (root; tests/sites.py), a Mosquitto
broker in a third, one relay per site. In site 1 a sender multicasts announcements;
a receiver next to it in site 1 hears them directly (the baseline: direct multicast, in
the same run, the same datagrams), a receiver in site 2 hears them through the relays.
Every process stamps with CLOCK_MONOTONIC, which network namespaces share, so one-way
times compare directly. ``--loopback`` (no root needed) puts both "sites" on 127.0.0.1
as two groups instead.

Figures:

  latency   datagrams at 200/s: sender -> near receiver (direct multicast) and sender ->
            far receiver (relay, broker, relay); p50 and p99 of each, and of the
            difference per datagram (what the relay path adds)
  rate      steps of rising offered rate (datagrams/s) for a few seconds each: the share
            that reached site 2, and the highest step with >= 99 % delivered, which is
            the rate one relay (each side of the broker) sustains; the CPU of each relay

Datagrams are unsigned (a relay never verifies; controllers do) and carry one publisher
id with rising seq, as a publisher's would. Also run as ``relay.py send|receive ...``
inside the hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
try:
    import powercast  # noqa: F401  # installed (editable) in .venv by tests/run
except ImportError:
    if not VENV_PYTHON.exists() or Path(sys.executable) == VENV_PYTHON:
        raise
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), __file__, *sys.argv[1:]])  # noqa: S606

sys.path.insert(0, str(ROOT / "tests"))

import netbed  # noqa: E402
import sites  # noqa: E402
import tomli_w  # noqa: E402

from powercast import net, wire  # noqa: E402

from harness import Daemon, free_port  # noqa: E402

PORT = 5001
LOOP_NEAR, LOOP_FAR = "239.255.92.1", "239.255.92.2"
LATENCY_RATE = 200
RATE_STEPS = (1_000, 2_000, 5_000, 10_000, 15_000, 20_000, 30_000)


# --- inside a host: the sender and a receiver -------------------------------------------


def run_send(args: argparse.Namespace) -> int:
    """Send ``count`` announcements at ``rate``/s, seq from ``first``; print the send
    times (monotonic) as JSON on stdout."""
    sock = net.open_sender(args.group, args.port, args.interface, loop=True)
    epoch = int.from_bytes(os.urandom(7), "big")
    datagrams = [
        wire.encode(
            wire.Announcement(
                publisher="bench", epoch=epoch, seq=args.first + i, change=1, sent=time.time(),
                tal=600.0, power=wire.Power(wire.PowerStatus.ONLINE), temperatures={},
            )
        )
        for i in range(args.count)
    ]  # fmt: skip
    sent: list[float] = []
    start = time.monotonic()
    for i, data in enumerate(datagrams):
        ahead = start + i / args.rate - time.monotonic()
        if ahead > 0.001:  # no busy wait: at high rates this sends 1 ms worth at a time
            time.sleep(ahead)
        sent.append(time.monotonic())  # before the send: a receiver may run first
        try:
            sock.sendto(data, (args.group, args.port))
        except BlockingIOError:
            time.sleep(0.0005)
            sock.sendto(data, (args.group, args.port))
    json.dump({"epoch": epoch, "first": args.first, "sent": sent}, sys.stdout)
    return 0


def run_receive(args: argparse.Namespace) -> int:
    """Record (arrival time, bytes) of every datagram until SIGTERM; then write, as JSON,
    seq -> arrival for the bench publisher's datagrams."""
    sock = net.open_receiver(args.group, args.port, args.interface)
    sock.setblocking(True)
    sock.settimeout(0.2)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    got: list[tuple[float, bytes]] = []
    print("ready", flush=True)
    while not stop:
        try:
            data = sock.recv(2048)
        except TimeoutError:
            continue
        got.append((time.monotonic(), data))
    arrivals: dict[int, float] = {}
    for at, data in got:
        with contextlib.suppress(wire.DecodeError):
            m = wire.decode(data).message
            if m.publisher == "bench":
                arrivals.setdefault(m.seq, at)
    Path(args.out).write_text(json.dumps({str(k): v for k, v in arrivals.items()}))
    return 0


# --- the two topologies -----------------------------------------------------------------


class Topology:
    """Where the sender, the near and far receivers and the two relays run."""

    near_group = far_group = netbed.GROUP

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.relays: list[Daemon | netbed.NetDaemon] = []
        self.receivers: list[subprocess.Popen[str]] = []

    def script(self, *args: str) -> list[str]:
        return [sys.executable, __file__, *args]

    def receive(self, which: str, out: Path) -> subprocess.Popen[str]:
        raise NotImplementedError

    def send(self, count: int, rate: int, first: int) -> dict[str, Any]:
        raise NotImplementedError

    def collect(
        self, receivers: list[tuple[subprocess.Popen[str], Path]]
    ) -> list[dict[int, float]]:
        out = []
        for proc, path in receivers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            out.append({int(k): v for k, v in json.loads(path.read_text()).items()})
        return out

    def relay_pids(self) -> list[int]:
        return [r.proc.pid for r in self.relays]

    def summaries(self) -> list[dict[str, Any]]:
        for relay in self.relays:
            relay.stop()
        return [r.wait_for("relay_summary", timeout=3) for r in self.relays]


class Netns(Topology):
    def __init__(self, workdir: Path, s: sites.Sites) -> None:
        super().__init__(workdir)
        self.s = s
        self.src = s.host(0, "src")
        self.near = s.host(0, "near")
        self.far = s.host(1, "far")
        self.relay_hosts = [s.relay_host(0, "relay1"), s.relay_host(1, "relay2")]
        assert s.broker is not None
        s.broker.start()
        for site, host in enumerate(self.relay_hosts):
            net_ = {"group": netbed.GROUP, "port": PORT, "interface": host.address}
            config = sites.relay_config(
                net_, sites.BROKER_ADDRESS, sites.BROKER_PORT,
                control={"socket": str(workdir / f"relay{site}.sock")},
            )  # fmt: skip
            path = workdir / f"relay{site}.toml"
            path.write_text(tomli_w.dumps(config))
            self.relays.append(
                netbed.NetDaemon(s.sites[site], host, "relay", "--config", str(path))
            )
        for relay in self.relays:
            relay.wait_for("broker_connected", timeout=10)

    def receive(self, which: str, out: Path) -> subprocess.Popen[str]:
        host, site = (self.near, 0) if which == "near" else (self.far, 1)
        argv = self.script("receive", "--group", netbed.GROUP, "--port", str(PORT),
                           "--interface", host.address, "--out", str(out))  # fmt: skip
        return self.s.sites[site].start(host, *argv, stdout=subprocess.PIPE, text=True)

    def send(self, count: int, rate: int, first: int) -> dict[str, Any]:
        argv = self.script("send", "--group", netbed.GROUP, "--port", str(PORT),
                           "--interface", self.src.address, "--count", str(count),
                           "--rate", str(rate), "--first", str(first))  # fmt: skip
        done = subprocess.run(
            self.src.argv(*argv), capture_output=True, text=True, check=True, timeout=600
        )
        result: dict[str, Any] = json.loads(done.stdout)
        return result


class Loopback(Topology):
    near_group, far_group = LOOP_NEAR, LOOP_FAR

    def __init__(self, workdir: Path, broker: sites.Mosquitto) -> None:
        super().__init__(workdir)
        self.port = free_port()
        for i, group in enumerate((LOOP_NEAR, LOOP_FAR)):
            net_ = {"group": group, "port": self.port, "interface": "127.0.0.1"}
            config = sites.relay_config(
                net_, broker.address, broker.port, topic=f"bench/{self.port}",
                control={"socket": str(workdir / f"relay{i}.sock")},
            )  # fmt: skip
            config["network"]["loop"] = True
            path = workdir / f"relay{i}.toml"
            path.write_text(tomli_w.dumps(config))
            self.relays.append(Daemon("relay", "--config", str(path)))
        for relay in self.relays:
            relay.wait_for("broker_connected", timeout=10)

    def receive(self, which: str, out: Path) -> subprocess.Popen[str]:
        group = LOOP_NEAR if which == "near" else LOOP_FAR
        argv = self.script("receive", "--group", group, "--port", str(self.port),
                           "--interface", "127.0.0.1", "--out", str(out))  # fmt: skip
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    def send(self, count: int, rate: int, first: int) -> dict[str, Any]:
        argv = self.script("send", "--group", LOOP_NEAR, "--port", str(self.port),
                           "--interface", "127.0.0.1", "--count", str(count),
                           "--rate", str(rate), "--first", str(first))  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600)
        result: dict[str, Any] = json.loads(done.stdout)
        return result


# --- measuring --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def figures(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def relay_processes(topology: Topology) -> list[int]:
    """The relay daemons' own pids (under `ip netns exec`, the child of the wrapper)."""
    pids = []
    for pid in topology.relay_pids():
        children = Path(f"/proc/{pid}/task/{pid}/children")
        kids = children.read_text().split() if children.exists() else []
        pids.append(int(kids[0]) if kids else pid)
    return pids


@contextlib.contextmanager
def listening(topology: Topology, tag: str) -> Iterator[list[tuple[subprocess.Popen[str], Path]]]:
    receivers = []
    for which in ("near", "far"):
        out = topology.workdir / f"{tag}-{which}.json"
        proc = topology.receive(which, out)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{which} receiver did not start")
        receivers.append((proc, out))
    yield receivers


def measure_latency(topology: Topology, count: int) -> dict[str, Any]:
    with listening(topology, "latency") as receivers:
        sent = topology.send(count, LATENCY_RATE, first=1)
        time.sleep(1.0)
        near, far = topology.collect(receivers)
    times = sent["sent"]
    direct, relayed, added = [], [], []
    for i, t0 in enumerate(times):
        seq = 1 + i
        if seq in near:
            direct.append((near[seq] - t0) * 1000)
        if seq in far:
            relayed.append((far[seq] - t0) * 1000)
        if seq in near and seq in far:
            added.append((far[seq] - near[seq]) * 1000)
    return {
        "datagrams": count,
        "rate_per_s": LATENCY_RATE,
        "direct": {**figures(direct), "received": len(direct)},
        "relayed": {**figures(relayed), "received": len(relayed)},
        "added": figures(added),
    }


def measure_rate(topology: Topology, seconds: float) -> dict[str, Any]:
    steps = []
    first = 1_000_000
    pids = relay_processes(topology)
    for rate in RATE_STEPS:
        count = int(rate * seconds)
        cpu0 = [cpu_seconds(p) for p in pids]
        with listening(topology, f"rate{rate}") as receivers:
            started = time.monotonic()
            sent = topology.send(count, rate, first=first)
            took = sent["sent"][-1] - sent["sent"][0] if count > 1 else 0.0
            time.sleep(1.5)
            elapsed = time.monotonic() - started
            near, far = topology.collect(receivers)
        cpu = [
            round((cpu_seconds(p) - c) / elapsed * 100, 1) for p, c in zip(pids, cpu0, strict=True)
        ]
        wanted = set(range(first, first + count))
        steps.append(
            {
                "offered_per_s": rate,
                "achieved_send_per_s": round(count / took) if took else None,
                "near_share": round(len(wanted & near.keys()) / count, 4),
                "far_share": round(len(wanted & far.keys()) / count, 4),
                "relay_cpu_pct": cpu,
            }
        )
        first += count
        if steps[-1]["far_share"] < 0.5:
            break
    sustained = max(
        (s["offered_per_s"] for s in steps if s["far_share"] >= 0.99 and s["near_share"] >= 0.99),
        default=0,
    )
    return {"seconds_per_step": seconds, "steps": steps, "sustained_per_s": sustained}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    send = sub.add_parser("send")
    receive = sub.add_parser("receive")
    for p in (send, receive):
        p.add_argument("--group", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--interface", required=True)
    send.add_argument("--count", type=int, required=True)
    send.add_argument("--rate", type=float, required=True)
    send.add_argument("--first", type=int, default=1)
    receive.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--loopback", action="store_true", help="no namespaces (no root needed)")
    args = parser.parse_args(argv)
    if args.command == "send":
        return run_send(args)
    if args.command == "receive":
        return run_receive(args)
    if (reason := sites.mosquitto_missing()) is not None:
        print(f"relay benchmark: {reason}", file=sys.stderr)
        return 1
    loopback = args.loopback or netbed.unavailable() is not None
    count = 400 if args.quick else 3000
    seconds = 1.0 if args.quick else 3.0
    with tempfile.TemporaryDirectory(prefix="pc-relay-bench-") as tmp:
        workdir = Path(tmp)
        if loopback:
            broker = sites.Mosquitto(workdir)
            broker.start()
            try:
                topology: Topology = Loopback(workdir, broker)
                result = run(topology, count, seconds, "loopback")
            finally:
                broker.stop()
        else:
            netbed.sweep()
            with sites.Sites(workdir) as s:
                topology = Netns(workdir, s)
                result = run(topology, count, seconds, "netns")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report(result))
    return 0


def run(topology: Topology, count: int, seconds: float, where: str) -> dict[str, Any]:
    try:
        latency = measure_latency(topology, count)
        rate = measure_rate(topology, seconds)
    finally:
        summaries = topology.summaries()
    keep = ("segment_relayed", "segment_lost", "broker_relayed", "broker_lost", "broker_seen")
    return {
        "where": where,
        "cpus": os.cpu_count(),
        "latency": latency,
        "rate": rate,
        "relays": [{k: s.get(k, 0) for k in keep} for s in summaries],
    }


def report(r: dict[str, Any]) -> str:
    lat, rate = r["latency"], r["rate"]
    lines = [
        f"relay benchmark ({r['where']}, {r['cpus']} CPUs)",
        f"latency, {lat['datagrams']} datagrams at {lat['rate_per_s']}/s:",
        f"  direct multicast   p50 {lat['direct']['p50_ms']} ms  p99 {lat['direct']['p99_ms']} ms"
        f"  ({lat['direct']['received']} received)",
        f"  relay+broker+relay p50 {lat['relayed']['p50_ms']} ms  p99 {lat['relayed']['p99_ms']} ms"
        f"  ({lat['relayed']['received']} received)",
        f"  added by the relay path: p50 {lat['added']['p50_ms']} ms"
        f"  p99 {lat['added']['p99_ms']} ms",
        f"rate, {rate['seconds_per_step']} s per step:",
    ]
    for s in rate["steps"]:
        lines.append(
            f"  offered {s['offered_per_s']:>6}/s (sent {s['achieved_send_per_s']}/s):"
            f" near {s['near_share']:.2%}, far {s['far_share']:.2%},"
            f" relay CPU {s['relay_cpu_pct']} %"
        )
    lines.append(f"  sustained (>= 99 % delivered): {rate['sustained_per_s']} datagrams/s")
    lines.append(f"relay counters: {r['relays']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
