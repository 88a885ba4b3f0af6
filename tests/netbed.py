"""Several hosts on one machine: network namespaces on a Linux bridge, daemons inside them.

A :class:`Bed` makes one namespace per host, each with a veth whose other end sits on a
bridge of the bed's own, and runs real daemons in them with ``ip netns exec``. Faults per
link: random loss (iptables' ``statistic`` match in the receiving host), a cut (the
bridge end of its veth set down), and delay, duplication and reordering through
:func:`relay`, a small user-space UDP relay run in the publisher's namespace.

Rules this file keeps:

* Only the bed's own namespaces and bridge carry traffic: hosts send on their veth, the
  bridge has no address and no other port, so nothing leaves through the machine's real
  interfaces.
* Every name starts with :data:`PREFIX` and a suffix made of the owning process id (5
  base-36 digits) and two random ones, so concurrent runs never collide and
  :func:`sweep` can remove what a killed run left behind without touching a live run's
  hosts. Interface names stay within the kernel's 15 characters.
* :meth:`Bed.close` stops the processes, then deletes links, namespaces (their iptables
  rules go with them) and the bridge; it runs on every exit path (``with Bed(...)``).

Run as a script it is the relay, or a capture/send tool for forged datagrams:
``python netbed.py relay|capture|send ...`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import queue
import random
import select
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from harness import Daemon, make_keys, set_reading

PREFIX = "pcnb"
"""Every namespace, bridge and veth of a bed starts with this."""
GROUP = "239.255.77.1"
PORT = 5001
RELAY_GROUP = "239.255.77.2"
"""Where a relayed publisher sends, on its own loopback; the relay forwards to GROUP."""
SUBNET = "10.77.0"
_DIGITS = string.digits + string.ascii_lowercase
_PID_DIGITS = 5  # base 36: up to 60 million, above any pid_max


def _base36(n: int, width: int) -> str:
    out = ""
    while n:
        n, d = divmod(n, 36)
        out = _DIGITS[d] + out
    return out.rjust(width, "0")


def new_suffix(pid: int | None = None) -> str:
    """Owner pid in base 36, then two random characters: 7 characters."""
    pid = os.getpid() if pid is None else pid
    return _base36(pid, _PID_DIGITS) + "".join(random.choices(_DIGITS, k=2))


def _owner(name: str) -> int | None:
    """The pid encoded in a bed name, or None when the name is not a bed's."""
    digits = name[len(PREFIX) : len(PREFIX) + _PID_DIGITS]
    if not name.startswith(PREFIX) or len(digits) < _PID_DIGITS:
        return None
    try:
        return int(digits, 36)
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return "needs root and network namespaces: Linux only"
    if os.geteuid() != 0:
        return "needs root and network namespaces: run the tests as root (.ci/run does)"
    if shutil.which("ip") is None:
        return "needs iproute2: apt-get install iproute2, or run .ci/run"
    probe = f"{PREFIX}{new_suffix()}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"needs root and network namespaces: `ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def no_iptables() -> str | None:
    """Why loss cannot be made here (iptables missing), or None."""
    if shutil.which("iptables") is None:
        return "needs iptables: apt-get install iptables, or run .ci/run"
    return None


def namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def links() -> list[str]:
    out = _ip("-j", "link", "show", check=False).stdout or "[]"
    return [entry["ifname"] for entry in json.loads(out)]


def _kill_namespace_processes(netns: str) -> None:
    pids = _ip("netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _remove(netns_names: Sequence[str], link_names: Sequence[str]) -> None:
    """Processes first, then links (a veth takes its peer along), namespaces, bridges."""
    for netns in netns_names:
        _kill_namespace_processes(netns)
    for link in sorted(link_names, key=len, reverse=True):  # veths before their bridge
        _ip("link", "del", link, check=False)
    for netns in netns_names:
        _ip("netns", "del", netns, check=False)


def sweep() -> list[str]:
    """Remove namespaces and links left by beds whose owner process is gone; return them."""
    dead = [n for n in namespaces() if (pid := _owner(n)) is not None and not _alive(pid)]
    dead_links = [n for n in links() if (pid := _owner(n)) is not None and not _alive(pid)]
    _remove(dead, dead_links)
    return dead + dead_links


# --- the bed -------------------------------------------------------------------------------


@dataclass
class Host:
    """One namespace with one veth on the bed's bridge."""

    name: str
    netns: str
    veth: str
    """The bridge end, in the root namespace: set it down to cut this host off."""
    address: str

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside this host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*argv), capture_output=True, text=True, check=check, timeout=10
        )


@dataclass
class Bed:
    """A bridge and hosts on it; ``with Bed() as bed:`` always cleans up."""

    suffix: str = field(default_factory=new_suffix)
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    closed: bool = False

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.suffix}"

    def __enter__(self) -> Bed:
        try:
            _ip("link", "add", self.bridge, "type", "bridge", "mcast_snooping", "0")
            # No IPv6 link-local chatter from the bridge itself; it has no address at all.
            with contextlib.suppress(OSError):
                Path(f"/proc/sys/net/ipv6/conf/{self.bridge}/disable_ipv6").write_text("1")
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_host(self, name: str) -> Host:
        """A new namespace with ``lo`` up and ``eth0`` (a veth on the bridge) addressed."""
        index = len(self.hosts) + 1
        if index >= len(_DIGITS):
            raise ValueError(f"a bed holds at most {len(_DIGITS) - 1} hosts")
        host = Host(
            name=name,
            netns=f"{self.bridge}-{name}",
            veth=f"{self.bridge}{_DIGITS[index]}",
            address=f"{SUBNET}.{index}",
        )
        self.hosts[name] = host
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", host.veth, "master", self.bridge, "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        return host

    # -- faults ---------------------------------------------------------------------------

    def loss(self, host: Host, probability: float) -> None:
        """Drop this share of the multicast datagrams arriving at ``host``, at random."""
        host.run(
            "iptables", "-A", "INPUT", "-p", "udp", "-d", GROUP,
            "-m", "statistic", "--mode", "random", "--probability", f"{probability:.4f}",
            "-j", "DROP",
        )  # fmt: skip

    def clear_loss(self, host: Host) -> None:
        host.run("iptables", "-F", "INPUT")

    def cut(self, host: Host) -> None:
        """Unplug ``host``: its veth loses carrier, nothing goes in or out."""
        _ip("link", "set", host.veth, "down")

    def heal(self, host: Host) -> None:
        _ip("link", "set", host.veth, "up")

    # -- processes ------------------------------------------------------------------------

    def start(self, host: Host, *argv: str, **popen: Any) -> subprocess.Popen[Any]:
        """A process in ``host``, stopped (and killed if need be) when the bed closes."""
        proc: subprocess.Popen[Any] = subprocess.Popen(host.argv(*argv), **popen)
        self.processes.append(proc)
        return proc

    def relay(
        self,
        host: Host,
        *,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        copies: int = 1,
        seed: int = 0,
    ) -> subprocess.Popen[str]:
        """Forward RELAY_GROUP on ``host``'s loopback to GROUP on its veth, late, repeated
        and shuffled: each datagram goes out ``copies`` times, each copy after
        ``delay_ms`` plus a random share of ``jitter_ms`` (jitter wider than the gaps
        between datagrams reorders them). Returns once the relay listens."""
        proc = self.start(
            host, sys.executable, __file__, "relay",
            "--listen", f"{RELAY_GROUP}:{PORT}@127.0.0.1",
            "--forward", f"{GROUP}:{PORT}@{host.address}",
            "--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms),
            "--copies", str(copies), "--seed", str(seed),
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"relay in {host.netns} did not start: {line!r}")
        return proc

    def close(self) -> None:
        """Stop every process, delete every link and namespace; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc in self.processes:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        hosts = list(self.hosts.values())
        _remove([h.netns for h in hosts], [h.veth for h in hosts] + [self.bridge])

    def leftovers(self) -> list[str]:
        """Namespaces and links of this bed that still exist (empty after close)."""
        mine = [*namespaces(), *links()]
        return [name for name in mine if name.startswith(self.bridge)]


# --- daemons in hosts ----------------------------------------------------------------------


class NetDaemon(Daemon):
    """``python -m powercast ARGS`` inside a host: ``harness.Daemon`` (``wait_for``,
    ``seen``, ``stop``), plus :meth:`drain`, :meth:`states` and :meth:`kill` for a crash.
    """

    def __init__(self, bed: Bed, host: Host, *args: str, env: dict[str, str] | None = None):
        self.host = host
        proc = bed.start(
            host,
            sys.executable, "-m", "powercast", *args,
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        super().__init__(proc=proc, name=host.name)

    def drain(self) -> list[dict[str, Any]]:
        """Move every event logged so far into ``seen``; return them."""
        new = []
        while True:
            try:
                new.append(self.events.get_nowait())
            except queue.Empty:
                break
        self.seen.extend(new)
        return new

    def states(self) -> list[str]:
        """The states entered so far, in order, from the transition events; a start-up
        "failsafe to failsafe" (logged by some versions) is not a change and is left out."""
        self.drain()
        return [
            e["state"]
            for e in self.seen
            if e.get("event") == "transition" and e.get("previous") != e["state"]
        ]

    def kill(self) -> None:
        """A crash: SIGKILL, no goodbye."""
        self.proc.kill()
        self.proc.wait()
        self._reader.join(2)


# --- configs ----------------------------------------------------------------------------

ACTION_STATES = ("normal", "on_battery", "shedding", "thermal_override", "failsafe")


def record_actions(record: Path) -> list[dict[str, Any]]:
    """Actions that append ``STATE FANS`` to ``record`` on entering each state."""
    line = f'echo "$POWERCAST_STATE $POWERCAST_FANS" >> {record}'
    return [{"on": s, "argv": ["/bin/sh", "-c", line], "timeout_s": 5.0} for s in ACTION_STATES]


def controller_config(
    host: Host, keys: Path, record: Path | None = None, **policy: Any
) -> dict[str, Any]:
    """A controller listening on ``host``'s veth address, signed datagrams only."""
    return {
        "role": "controller",
        "network": {"group": GROUP, "port": PORT, "interface": host.address},
        "auth": {"keys_dir": str(keys), "mode": "enforce"},
        "policy": {"shed_after_s": 0.3, "restore_after_s": 0.3, **policy},
        "actions": record_actions(record) if record is not None else [],
        "log": {"format": "json", "level": "info"},
    }


def publisher_config(
    host: Host,
    publisher: str,
    keys: Path,
    reading: Path,
    *,
    heartbeat_s: float = 0.2,
    tal_factor: float = 3.0,
    relayed: bool = False,
) -> dict[str, Any]:
    """A publisher sending on ``host``'s veth, or to a relay on its loopback (``relayed``)."""
    if relayed:
        net = {"group": RELAY_GROUP, "port": PORT, "interface": "127.0.0.1", "loop": True}
    else:
        net = {"group": GROUP, "port": PORT, "interface": host.address, "loop": False}
    return {
        "role": "publisher",
        "id": publisher,
        "heartbeat_s": heartbeat_s,
        "tal_factor": tal_factor,
        "network": {**net, "ttl": 1},
        "auth": {"keys_dir": str(keys), "key_id": 1},
        "sources": [{"kind": "file", "path": str(reading), "interval_s": 0.02}],
        "log": {"format": "json", "level": "info"},
    }


class Hall:
    """Publishers and controllers, one host each, on a bed; real daemons throughout.

    Publisher ids are ``ups-a``, ``ups-b``...; controllers ``ctl1``... Each controller
    records the actions it runs in ``<workdir>/<ctl>.actions``.
    """

    def __init__(
        self,
        bed: Bed,
        workdir: Path,
        *,
        publishers: int = 1,
        controllers: int = 3,
        policy: dict[str, Any] | None = None,
        heartbeat_s: float = 0.2,
        tal_factor: float = 3.0,
        relay: dict[str, Any] | None = None,
        actions: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.bed = bed
        self.workdir = workdir
        self.keys = make_keys(workdir / "keys")
        self.env = env
        self.readings: dict[str, Path] = {}
        self.pub_hosts: dict[str, Host] = {}
        self.pub_configs: dict[str, Path] = {}
        self.publishers: dict[str, NetDaemon] = {}
        self.relays: dict[str, subprocess.Popen[str]] = {}
        self.ctl_hosts: list[Host] = []
        self.ctl_configs: list[Path] = []
        self.controllers: list[NetDaemon] = []
        self.relay = relay
        relayed = relay is not None
        for i in range(publishers):
            name = f"ups-{_DIGITS[10 + i]}"
            host = bed.add_host(f"pub{i + 1}")
            reading = workdir / f"{name}.json"
            set_reading(reading, "online")
            config = publisher_config(
                host, name, self.keys, reading,
                heartbeat_s=heartbeat_s, tal_factor=tal_factor, relayed=relayed,
            )  # fmt: skip
            path = workdir / f"{name}.toml"
            path.write_text(tomli_w.dumps(config))
            self.readings[name], self.pub_hosts[name], self.pub_configs[name] = reading, host, path
        for i in range(controllers):
            host = bed.add_host(f"ctl{i + 1}")
            record = workdir / f"{host.name}.actions" if actions else None
            path = workdir / f"{host.name}.toml"
            path.write_text(
                tomli_w.dumps(controller_config(host, self.keys, record, **policy or {}))
            )
            self.ctl_hosts.append(host)
            self.ctl_configs.append(path)

    def start(self) -> None:
        """Every controller, then every publisher (with its relay first when relayed);
        returns once every publisher has sent its first reading."""
        self.controllers = [self.start_controller(i) for i in range(len(self.ctl_hosts))]
        for name in self.pub_hosts:
            self.start_publisher(name)
        for ctl in self.controllers:
            ctl.wait_for("ready", timeout=10)
        for pub in self.publishers.values():
            pub.wait_for("reading_changed", timeout=10)  # its first reading, sent at once
        time.sleep(0.1)  # ...and heard: every publisher counts from here on

    def start_controller(self, index: int) -> NetDaemon:
        """Start (or restart) controller ``index``."""
        host, config = self.ctl_hosts[index], self.ctl_configs[index]
        daemon = NetDaemon(self.bed, host, "control", "--config", str(config), env=self.env)
        if index < len(self.controllers):
            self.controllers[index] = daemon
        return daemon

    def start_publisher(self, name: str) -> NetDaemon:
        host = self.pub_hosts[name]
        if self.relay is not None and name not in self.relays:
            self.relays[name] = self.bed.relay(host, **self.relay)
        daemon = NetDaemon(self.bed, host, "publish", "--config", str(self.pub_configs[name]))
        self.publishers[name] = daemon
        return daemon

    def stop(self) -> None:
        for daemon in [*self.controllers, *self.publishers.values()]:
            daemon.stop()

    def set(self, name: str, status: str, inlet: float = 24.0) -> float:
        """Change what publisher ``name`` reads; returns the monotonic time of the change."""
        set_reading(self.readings[name], status, inlet)
        return time.monotonic()

    def wait_all(
        self, state: str, within: float, since: float | None = None, only: Sequence[int] = ()
    ) -> list[float]:
        """Every controller (or those in ``only``) enters ``state`` by ``since + within``;
        returns how long after ``since`` each one logged it."""
        start = time.monotonic() if since is None else since
        took = []
        for i, ctl in enumerate(self.controllers):
            if only and i not in only:
                continue
            left = start + within - time.monotonic()
            event = ctl.wait_for("transition", timeout=max(left, 0.01), state=state)
            took.append(event["_at"] - start)
        return took

    def actions(self, index: int) -> list[str]:
        """The states whose actions controller ``index`` ran, in order, less the fans-on
        of its start (run at once or after a start-up grace, depending on the version)."""
        path = self.workdir / f"{self.ctl_hosts[index].name}.actions"
        ran = [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []
        return ran[1:] if ran[:1] == ["failsafe"] else ran

    def wait_actions(self, index: int, states: list[str], timeout: float = 3.0) -> None:
        """Controller ``index`` has run exactly the actions of ``states``, in order."""
        deadline = time.monotonic() + timeout
        while self.actions(index) != states and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.actions(index) == states, f"ctl{index + 1} ran {self.actions(index)}"


# --- the relay and the forger (run as scripts inside a host) ----------------------------


def _endpoint(text: str) -> tuple[str, int, str]:
    """``group:port@interface-address``."""
    where, _, interface = text.partition("@")
    group, _, port = where.rpartition(":")
    return group, int(port), interface


def _listener(group: str, port: int, interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, 49, 0)  # IP_MULTICAST_ALL off
    sock.bind((group, port))
    membership = socket.inet_aton(group) + socket.inet_aton(interface)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    return sock


def _sender(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    return sock


def run_relay(args: argparse.Namespace) -> int:
    """Forward datagrams after a delay, in several copies, each copy jittered."""
    rng = random.Random(args.seed)
    inbound = _listener(*_endpoint(args.listen))
    group, port, interface = _endpoint(args.forward)
    outbound = _sender(interface)
    pending: list[tuple[float, int, bytes]] = []
    order = 0
    print("ready", flush=True)
    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
        readable, _, _ = select.select([inbound], [], [], timeout)
        if readable:
            data = inbound.recv(65535)
            now = time.monotonic()
            for _ in range(args.copies):
                at = now + (args.delay_ms + rng.random() * args.jitter_ms) / 1000
                heapq.heappush(pending, (at, order, data))
                order += 1
        while pending and pending[0][0] <= time.monotonic():
            _, _, data = heapq.heappop(pending)
            outbound.sendto(data, (group, port))


def run_capture(args: argparse.Namespace) -> int:
    """Print each datagram heard on the group as hex, one a line, until the count or time."""
    sock = _listener(*_endpoint(args.listen))
    deadline = time.monotonic() + args.timeout
    for _ in range(args.count):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            print(sock.recv(65535).hex(), flush=True)
        except TimeoutError:
            break
    return 0


def run_send(args: argparse.Namespace) -> int:
    """Send each hex line of stdin to the group, ``--repeat`` times over."""
    group, port, interface = _endpoint(args.to)
    datagrams = [bytes.fromhex(line) for line in sys.stdin.read().split()]
    with _sender(interface) as sock:
        for _ in range(args.repeat):
            for data in datagrams:
                sock.sendto(data, (group, port))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay")
    relay.add_argument("--listen", required=True, help="group:port@address")
    relay.add_argument("--forward", required=True, help="group:port@address")
    relay.add_argument("--delay-ms", type=float, default=0.0)
    relay.add_argument("--jitter-ms", type=float, default=0.0)
    relay.add_argument("--copies", type=int, default=1)
    relay.add_argument("--seed", type=int, default=0)
    capture = sub.add_parser("capture")
    capture.add_argument("--listen", required=True, help="group:port@address")
    capture.add_argument("--count", type=int, default=1000)
    capture.add_argument("--timeout", type=float, default=5.0)
    send = sub.add_parser("send")
    send.add_argument("--to", required=True, help="group:port@address")
    send.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run = {"relay": run_relay, "capture": run_capture, "send": run_send}[args.command]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
