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
  relay_throughput
            on loopback, one relay (to_broker) and a local Mosquitto: datagrams/s that
            reach a plain MQTT subscriber through the relay, in steps of offered rate, against
            the broker's own limit in the same run: a plain paho publisher sending the same
            datagrams one per MQTT message as fast as it can, to the same subscriber

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
import paho.mqtt.client as mqtt  # noqa: E402
import sites  # noqa: E402
import tomli_w  # noqa: E402
from bench import percentile  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

from powercast import net, wire  # noqa: E402
from powercast.relay import unpack  # noqa: E402

from harness import Daemon, free_port  # noqa: E402

PORT = 5001
LOGINS = {sites.RELAY_USER: sites.RELAY_PASSWORD}
LOOP_NEAR, LOOP_FAR = "239.255.92.1", "239.255.92.2"
LATENCY_RATE = 200
RATE_STEPS = (1_000, 2_000, 5_000, 10_000, 15_000, 20_000, 30_000)
THROUGHPUT_STEPS = (25_000, 50_000, 75_000, 100_000, 150_000)
THROUGHPUT_TOPIC = "bench/throughput"


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


def _bench_datagrams(count: int) -> list[bytes]:
    epoch = int.from_bytes(os.urandom(7), "big")
    return [
        wire.encode(
            wire.Announcement(
                publisher="bench", epoch=epoch, seq=1 + i, change=1, sent=time.time(),
                tal=600.0, power=wire.Power(wire.PowerStatus.ONLINE), temperatures={},
            )
        )
        for i in range(count)
    ]  # fmt: skip


def _paho(client_id: str) -> Any:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)


def run_count(args: argparse.Namespace) -> int:
    """Subscribe to the topic and count datagrams (bare or batched) until ``idle`` s pass
    with none after the first, or ``expect`` arrive; print count, first, last (monotonic)."""
    state = {"count": 0, "messages": 0, "first": 0.0, "last": 0.0}

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        now = time.monotonic()
        got = unpack(message.payload) or []
        state["count"] += len(got)
        state["messages"] += 1
        state["first"] = state["first"] or now
        state["last"] = now

    subscribed = []
    client = _paho(f"bench-count-{os.getpid()}")
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.append(True)
    client.connect(args.host, args.port)
    client.subscribe(args.topic, options=SubscribeOptions(qos=0))
    deadline = time.monotonic() + args.timeout
    while not subscribed and time.monotonic() < deadline:
        client.loop(0.1)
    print("ready", flush=True)
    while time.monotonic() < deadline and state["count"] < args.expect:
        client.loop(0.05)
        if state["last"] and time.monotonic() - state["last"] > args.idle:
            break
    client.disconnect()
    json.dump(state, sys.stdout)
    return 0


def run_blast(args: argparse.Namespace) -> int:
    """The broker's own limit: publish ``count`` datagrams, one per MQTT message, QoS 0,
    with a plain paho client (no thread: each publish is written at once)."""
    datagrams = _bench_datagrams(args.count)
    client = _paho(f"bench-blast-{os.getpid()}")
    client.connect(args.host, args.port)
    client.loop(0.1)
    start = time.monotonic()
    for i, data in enumerate(datagrams):
        client.publish(args.topic, data, qos=0)
        if i % 500 == 499:
            client.loop(0)
    while client.want_write():
        client.loop(0.01)
    took = time.monotonic() - start
    client.disconnect()
    json.dump({"took": took}, sys.stdout)
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
            if s.pki is not None:
                config["broker"].update(sites.tls_login(s.pki, workdir))
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


def _counter(broker: sites.Mosquitto, expect: int, timeout: float) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "count", "--host", broker.address, "--port",
            str(broker.port), "--topic", THROUGHPUT_TOPIC, "--expect", str(expect),
            "--timeout", str(timeout)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("counter did not subscribe")
    return proc


def _counted(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=120)
    got: dict[str, Any] = json.loads(out)
    span = got["last"] - got["first"]
    got["per_s"] = round(got["count"] / span) if span > 0 else None
    return got


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure_throughput(workdir: Path, seconds: float) -> dict[str, Any]:
    """Broker baseline (plain publisher), then datagrams offered to one relay at rising
    rates; both counted by the same kind of plain subscriber."""
    broker = sites.Mosquitto(workdir, extra=("max_queued_messages 0",))
    broker.start()
    try:
        count = int(100_000 * seconds / 2)
        counter = _counter(broker, count, 60)
        blast = subprocess.run(
            [sys.executable, __file__, "blast", "--host", broker.address, "--port",
             str(broker.port), "--topic", THROUGHPUT_TOPIC, "--count", str(count)],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        got = _counted(counter)
        baseline = {
            "messages": count,
            "publisher_per_s": round(count / json.loads(blast.stdout)["took"]),
            "received_share": round(got["count"] / count, 4),
            "received_per_s": got["per_s"],
        }
        port = free_port()
        net_ = {"group": LOOP_NEAR, "port": port, "interface": "127.0.0.1"}
        config = sites.relay_config(
            net_, broker.address, broker.port, topic=THROUGHPUT_TOPIC,
            control={"socket": str(workdir / "relay-throughput.sock")},
        )  # fmt: skip
        config["direction"] = "to_broker"
        path = workdir / "relay-throughput.toml"
        path.write_text(tomli_w.dumps(config))
        relay = Daemon("relay", "--config", str(path))
        steps = []
        try:
            relay.wait_for("broker_connected", timeout=10)
            first = 1
            for rate in THROUGHPUT_STEPS:
                n = int(rate * seconds)
                counter = _counter(broker, n, 60)
                cpu0 = cpu_seconds(relay.proc.pid)
                t0 = time.monotonic()
                done = subprocess.run(
                    [sys.executable, __file__, "send", "--group", LOOP_NEAR, "--port",
                     str(port), "--interface", "127.0.0.1", "--count", str(n), "--rate",
                     str(rate), "--first", str(first)],
                    capture_output=True, text=True, check=True, timeout=600,
                )  # fmt: skip
                sent = json.loads(done.stdout)["sent"]
                got = _counted(counter)
                elapsed = time.monotonic() - t0
                took = sent[-1] - sent[0]
                steps.append(
                    {
                        "offered_per_s": rate,
                        "achieved_send_per_s": round(n / took) if took else None,
                        "delivered_share": round(got["count"] / n, 4),
                        "received_per_s": got["per_s"],
                        "mqtt_messages": got["messages"],
                        "relay_cpu_pct": round(
                            (cpu_seconds(relay.proc.pid) - cpu0) / elapsed * 100, 1
                        ),
                        "loadavg": _loadavg(),
                    }
                )
                first += n
                if steps[-1]["delivered_share"] < 0.5:
                    break
        finally:
            relay.stop()
        summary = relay.wait_for("relay_summary", timeout=3)
    finally:
        broker.stop()
    sustained = max((s["offered_per_s"] for s in steps if s["delivered_share"] >= 0.99), default=0)
    best = max((s["received_per_s"] or 0 for s in steps), default=0)
    return {
        "seconds_per_step": seconds,
        "baseline_broker": baseline,
        "steps": steps,
        "sustained_per_s": sustained,
        "best_received_per_s": best,
        "relay_counters": {k: v for k, v in summary.items() if k.startswith("segment_")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    send = sub.add_parser("send")
    receive = sub.add_parser("receive")
    count = sub.add_parser("count")
    blast = sub.add_parser("blast")
    for p in (count, blast):
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--topic", required=True)
    count.add_argument("--expect", type=int, required=True)
    count.add_argument("--idle", type=float, default=1.0)
    count.add_argument("--timeout", type=float, default=60.0)
    blast.add_argument("--count", type=int, required=True)
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
    parser.add_argument(
        "--only", choices=("all", "throughput"), default="all", help="throughput: that alone"
    )
    args = parser.parse_args(argv)
    if args.command == "count":
        return run_count(args)
    if args.command == "blast":
        return run_blast(args)
    if args.command == "send":
        return run_send(args)
    if args.command == "receive":
        return run_receive(args)
    return measure(args)


def measure(args: argparse.Namespace) -> int:
    if (reason := sites.mosquitto_missing()) is not None:
        print(f"relay benchmark: {reason}", file=sys.stderr)
        return 1
    loopback = args.loopback or netbed.unavailable() is not None
    count = 400 if args.quick else 3000
    seconds = 1.0 if args.quick else 3.0
    with tempfile.TemporaryDirectory(prefix="pc-relay-bench-") as tmp:
        workdir = Path(tmp)
        throughput = {"relay_throughput": measure_throughput(workdir, 1.0 if args.quick else 2.0)}
        if args.only == "throughput":
            result: dict[str, Any] = {"where": "loopback", "cpus": os.cpu_count()}
        elif loopback:
            broker = sites.Mosquitto(workdir)
            broker.start()
            try:
                topology: Topology = Loopback(workdir, broker)
                result = run(topology, count, seconds, "loopback")
            finally:
                broker.stop()
        else:
            netbed.sweep()
            with sites.Sites(workdir, pki=sites.Pki(workdir / "pki"), passwords=LOGINS) as s:
                topology = Netns(workdir, s)
                result = run(topology, count, seconds, "netns, TLS with client certificates")
        result.update(throughput)
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
    lines = [f"relay benchmark ({r['where']}, {r['cpus']} CPUs)"]
    if "latency" in r:
        lines += report_paths(r)
    t = r["relay_throughput"]
    b = t["baseline_broker"]
    lines += [
        f"relay_throughput, {t['seconds_per_step']} s per step (loopback, local Mosquitto):",
        "  baseline: plain paho publisher, one datagram per message:"
        f" sent {b['publisher_per_s']}/s,"
        f" subscriber got {b['received_per_s']}/s ({b['received_share']:.2%} of {b['messages']})",
    ]
    for s in t["steps"]:
        lines.append(
            f"  offered {s['offered_per_s']:>6}/s (sent {s['achieved_send_per_s']}/s):"
            f" delivered {s['delivered_share']:.2%} at {s['received_per_s']}/s in"
            f" {s['mqtt_messages']} MQTT messages, relay CPU {s['relay_cpu_pct']} %,"
            f" load {s['loadavg']}"
        )
    lines.append(
        f"  sustained (>= 99 % delivered): {t['sustained_per_s']} datagrams/s;"
        f" best received {t['best_received_per_s']}/s"
        f" = {t['best_received_per_s'] / (b['received_per_s'] or 1):.2f} x the broker baseline"
    )
    return "\n".join(lines)


def report_paths(r: dict[str, Any]) -> list[str]:
    lat, rate = r["latency"], r["rate"]
    lines = [
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
    return lines


if __name__ == "__main__":
    sys.exit(main())
