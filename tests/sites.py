"""Sites that share no network, joined only by relays through an MQTT broker.

Built from :mod:`netbed`: each site is a :class:`netbed.Bed` (a bridge of its own, hosts
on 10.77.0.0/24, no route to any other site), and a third bed, the "wan", holds the
broker's host. A relay host is an ordinary host of its site with a second veth
(``eth1``) plugged into the wan's bridge on 10.78.0.0/24, which is the only way between
sites. Mosquitto (Debian's ``mosquitto``) is started by the test inside the broker's host,
or on loopback (:class:`Mosquitto` with ``host=None``) for tests that need no root.

Everything is removed by :meth:`Sites.close` (``with Sites(...)``), on every exit path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import netbed
from netbed import Bed, Host

from harness import free_port

WAN_SUBNET = "10.78.0"
BROKER_ADDRESS = f"{WAN_SUBNET}.1"
BROKER_PORT = 1883
MOSQUITTO = "/usr/sbin/mosquitto"


def mosquitto_missing() -> str | None:
    """Why no broker can be started here, or None."""
    if shutil.which("mosquitto") is None and not os.path.exists(MOSQUITTO):
        return "needs mosquitto: apt-get install mosquitto, or run .ci/run"
    return None


def _mosquitto() -> str:
    return shutil.which("mosquitto") or MOSQUITTO


class Mosquitto:
    """A broker for one test: no persistence, anonymous, one listener; log kept on disk."""

    def __init__(self, workdir: Path, *, bed: Bed | None = None, host: Host | None = None):
        self.workdir = workdir
        self.bed, self.host = bed, host
        self.address = BROKER_ADDRESS if host is not None else "127.0.0.1"
        self.port = BROKER_PORT if host is not None else free_port_tcp()
        self.config = workdir / f"mosquitto-{self.port}.conf"
        self.config.write_text(
            f"listener {self.port} {self.address}\n"
            "allow_anonymous true\npersistence false\nlog_dest stderr\nset_tcp_nodelay true\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        self.config.chmod(0o644)
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        argv = [_mosquitto(), "-c", str(self.config)]
        with self.log.open("ab") as log:
            if self.host is not None and self.bed is not None:
                self.proc = self.bed.start(self.host, *argv, stderr=log, stdout=log)
            else:
                self.proc = subprocess.Popen(argv, stderr=log, stdout=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            if self._listening():
                return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen in {timeout} s: {self.log.read_text()}")

    def _listening(self) -> bool:
        if self.host is not None:
            probe = self.host.run(
                "python3", "-c",
                "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)",
                self.address, str(self.port), check=False,
            )  # fmt: skip
            return probe.returncode == 0
        with contextlib.suppress(OSError), socket.create_connection((self.address, self.port), 1):
            return True
        return False

    def kill(self) -> None:
        """A crash: SIGKILL, clients see their connections reset."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port_tcp() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sites:
    """``count`` sites and a wan with the broker; ``with Sites(workdir) as s:``."""

    def __init__(self, workdir: Path, count: int = 2) -> None:
        self.workdir = workdir
        self.sites: list[Bed] = []
        self.wan = Bed()
        self.uplinks: list[str] = []
        self.broker_host: Host | None = None
        self.broker: Mosquitto | None = None
        self._count = count

    def __enter__(self) -> Sites:
        try:
            self.wan.__enter__()
            for _ in range(self._count):
                self.sites.append(Bed().__enter__())
            self.broker_host = self.wan.add_host("broker")
            self.broker_host.run("ip", "addr", "add", f"{BROKER_ADDRESS}/24", "dev", "eth0")
            self.broker = Mosquitto(self.workdir, bed=self.wan, host=self.broker_host)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, site: int, name: str) -> Host:
        """A plain host in ``site`` (0-based)."""
        return self.sites[site].add_host(name)

    def relay_host(self, site: int, name: str) -> Host:
        """A host in ``site`` with a second leg (``eth1``) on the wan, where the broker is."""
        host = self.sites[site].add_host(name)
        index = len(self.uplinks) + 1
        veth = f"{self.wan.bridge}u{index}"
        address = f"{WAN_SUBNET}.{10 + index}"
        run = netbed._ip
        run("link", "add", veth, "type", "veth", "peer", "name", "eth1", "netns", host.netns)
        self.uplinks.append(veth)
        run("link", "set", veth, "master", self.wan.bridge, "up")
        run("-n", host.netns, "addr", "add", f"{address}/24", "dev", "eth1")
        run("-n", host.netns, "link", "set", "eth1", "up")
        return host

    def close(self) -> None:
        """Processes, uplinks, then every bed (their namespaces and bridges)."""
        if self.broker is not None:
            self.broker.stop()
        for bed in [*self.sites, self.wan]:
            for proc in bed.processes:
                if proc.poll() is None:
                    proc.terminate()
        for veth in self.uplinks:
            netbed._ip("link", "del", veth, check=False)
        for bed in [*self.sites, self.wan]:
            bed.close()

    def leftovers(self) -> list[str]:
        return [name for bed in [*self.sites, self.wan] for name in bed.leftovers()]


# --- configs ----------------------------------------------------------------------------


def relay_config(
    network: dict[str, Any], address: str, port: int, *, topic: str = "powercast/test", **more: Any
) -> dict[str, Any]:
    """A relay bridging ``network`` (group, port, interface) to the broker at address:port."""
    return {
        "role": "relay",
        "network": {**network, "loop": False},
        "broker": {
            "host": address,
            "port": port,
            "topic": topic,
            "keepalive_s": 2,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
        },
        "log": {"format": "json", "level": "info"},
        **more,
    }


__all__ = ["BROKER_ADDRESS", "BROKER_PORT", "Mosquitto", "Sites", "free_port", "relay_config"]
