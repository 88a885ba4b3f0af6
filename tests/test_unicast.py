"""Unicast peers, for networks that block multicast: a publisher also sends each
announcement to ``network.unicast_peers``; a controller with ``network.unicast_listen``
takes datagrams sent to it directly through the same path as the group's."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netbed
import pytest
from netbed import Bed, NetDaemon

from powercast import config as cfg
from powercast import net

from harness import free_port, make_keys, running, set_reading, write_toml

HEARTBEAT_S = 0.2
NEWS_S = 1.0
BOOT_S = 10.0


@pytest.mark.unit
class TestUdpAddress:
    def test_addresses_with_ports(self) -> None:
        """IPv4 and bracketed IPv6 with a port; a bare address only where one listens."""
        assert cfg.udp_address("10.0.0.5:5001", "k") == ("10.0.0.5", 5001)
        assert cfg.udp_address("[fd00::5]:5002", "k") == ("fd00::5", 5002)
        assert cfg.udp_address("0.0.0.0", "k", listen_port=5001) == ("0.0.0.0", 5001)
        assert cfg.udp_address("::", "k", listen_port=7) == ("::", 7)
        assert cfg.udp_address("127.0.0.1:9", "k", listen_port=7) == ("127.0.0.1", 9)

    def test_refused_with_the_key(self) -> None:
        """Names, missing or bad ports, multicast, a peer of 0.0.0.0: refused, key named."""
        for text in ("ups.example:5001", "10.0.0.5", "10.0.0.5:0", "10.0.0.5:70000",
                     "fd00::5:5001", "239.1.1.1:5001", "0.0.0.0:5001", ""):  # fmt: skip
            with pytest.raises(ValueError, match=r"^peers: expected an IP address and port"):
                cfg.udp_address(text, "peers")

    def test_config_keys(self) -> None:
        """The publisher's peer list and the controller's listener are checked at load."""
        pub = cfg.parse(
            'role = "publisher"\n[network]\nunicast_peers = ["10.0.0.5:5001", "[::1]:5001"]\n',
            "p.toml",
        )
        assert isinstance(pub, cfg.PublisherConfig)
        assert pub.network.unicast_peers == ["10.0.0.5:5001", "[::1]:5001"]
        with pytest.raises(cfg.ConfigError, match=r"network.unicast_peers: expected an IP"):
            cfg.parse('role = "publisher"\n[network]\nunicast_peers = ["ups:1"]\n', "p.toml")
        with pytest.raises(cfg.ConfigError, match=r"network.unicast_listen: expected an IP"):
            cfg.parse('role = "controller"\n[network]\nunicast_listen = "any"\n', "c.toml")
        ctl = cfg.parse('role = "controller"\n[network]\nunicast_listen = "0.0.0.0"\n', "c.toml")
        assert isinstance(ctl, cfg.ControllerConfig)
        assert ctl.network.unicast_listen == "0.0.0.0"


@pytest.mark.system
class TestOpenUnicastReceiver:
    def test_takes_unicast_not_the_group_on_the_same_port(self) -> None:
        """Bound to the wildcard on the group's port, it gets datagrams sent to the host,
        and not the group's (those are the multicast receiver's alone)."""
        port = free_port()
        unicast = net.open_unicast_receiver("0.0.0.0", port)
        group = net.open_receiver("239.255.44.9", port, "127.0.0.1")
        sender = net.open_sender("239.255.44.9", port, "127.0.0.1")
        try:
            sender.sendto(b"to the group", ("239.255.44.9", port))
            sender.sendto(b"to the host", ("127.0.0.1", port))
            time.sleep(0.1)
            assert _all(unicast) == [b"to the host"]
            assert _all(group) == [b"to the group"]
        finally:
            for sock in (unicast, group, sender):
                sock.close()

    def test_errors_name_the_key(self) -> None:
        """An address this host does not have, a port taken: one line naming the key."""
        with pytest.raises(net.NetworkError, match=r"^network.unicast_listen: no interface"):
            net.open_unicast_receiver("192.0.2.77", free_port())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            with pytest.raises(net.NetworkError, match=r"already taken"):
                net.open_unicast_receiver("127.0.0.1", port)


def _all(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(2048))
        except BlockingIOError:
            return got


# --- daemons ---------------------------------------------------------------------------------


def publisher_config(keys: Path, reading: Path, network: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": "publisher",
        "id": "ups-uni",
        "heartbeat_s": HEARTBEAT_S,
        "network": network,
        "auth": {"keys_dir": str(keys), "key_id": 1},
        "sources": [{"kind": "file", "path": str(reading), "interval_s": 0.02}],
        "control": {"socket": str(reading.parent / "p.sock")},
        "log": {"format": "json"},
    }


def controller_config(keys: Path, network: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": "controller",
        "network": network,
        "auth": {"keys_dir": str(keys)},
        "policy": {"shed_after_s": 0.3, "restore_after_s": 0.3},
        "control": {"socket": str(keys.parent / "c.sock")},
        "log": {"format": "json"},
    }


@pytest.mark.system
class TestUnicastPeers:
    def test_outage_over_unicast_only(self, tmp_path: Path) -> None:
        """The publisher's group reaches nobody; its unicast copy alone makes the controller
        (listening on a group nobody sends to) shed and restore."""
        keys = make_keys(tmp_path / "keys")
        reading = tmp_path / "ups.json"
        set_reading(reading, "online")
        port, peer_port = free_port(), free_port()
        pub = publisher_config(
            keys,
            reading,
            {
                "group": "239.255.44.1",
                "port": port,
                "interface": "127.0.0.1",
                "unicast_peers": [f"127.0.0.1:{peer_port}"],
            },
        )
        ctl = controller_config(
            keys,
            {
                "group": "239.255.44.2",
                "port": peer_port,
                "interface": "127.0.0.1",
                "unicast_listen": "127.0.0.1",
            },
        )
        pub_path = write_toml(tmp_path / "p.toml", pub)
        ctl_path = write_toml(tmp_path / "c.toml", ctl)
        with running("control", "--config", str(ctl_path)) as c:
            c.wait_for("listening_unicast", timeout=BOOT_S, port=peer_port)
            with running("publish", "--config", str(pub_path)) as p:
                p.wait_for("sending_unicast", timeout=BOOT_S, peers=[f"127.0.0.1:{peer_port}"])
                c.wait_for("transition", timeout=BOOT_S, state="normal")
                set_reading(reading, "on_battery")
                c.wait_for("transition", timeout=NEWS_S, state="on_battery")
                c.wait_for("transition", timeout=0.3 + NEWS_S, state="shedding")
                set_reading(reading, "online")
                c.wait_for("transition", timeout=0.3 + NEWS_S, state="normal")

    def test_unreachable_peer_is_logged_and_the_group_goes_on(self, tmp_path: Path) -> None:
        """A peer that cannot be sent to is logged (once, then every 100th) and the next
        peer still gets every announcement."""
        keys = make_keys(tmp_path / "keys")
        reading = tmp_path / "ups.json"
        set_reading(reading, "online")
        port, peer_port = free_port(), free_port()
        network = {
            "group": "239.255.44.3",
            "port": port,
            "interface": "127.0.0.1",
            # broadcast without SO_BROADCAST: sendto fails at once (EACCES), nothing leaves
            "unicast_peers": ["255.255.255.255:9", f"127.0.0.1:{peer_port}"],
        }
        pub_path = write_toml(tmp_path / "p.toml", publisher_config(keys, reading, network))
        ctl = controller_config(
            keys,
            {"group": "239.255.44.4", "port": peer_port, "unicast_listen": "127.0.0.1"},
        )
        ctl_path = write_toml(tmp_path / "c.toml", ctl)
        with running("control", "--config", str(ctl_path)) as c:
            c.wait_for("listening_unicast", timeout=BOOT_S)
            with running("publish", "--config", str(pub_path)) as p:
                failed = p.wait_for("send_failed", timeout=BOOT_S)
                assert failed["errors"] == 1
                c.wait_for("transition", timeout=BOOT_S, state="normal")
                time.sleep(5 * HEARTBEAT_S)
                p.stop()
                assert [e["event"] for e in p.seen].count("send_failed") == 1


# --- across hosts, multicast blocked -----------------------------------------------------------


@pytest.fixture
def bed() -> Iterator[Bed]:
    reason = netbed.unavailable() or netbed.no_iptables()
    if reason is not None:
        if os.environ.get("POWERCAST_RELAY_TESTS") == "require":
            pytest.fail(f"{reason}, and POWERCAST_RELAY_TESTS=require")
        pytest.skip(reason)
    netbed.sweep()
    with Bed() as made:
        yield made
    assert made.leftovers() == []


@pytest.mark.system
class TestUnicastAcrossHosts:
    def test_multicast_blocked_unicast_carries_it(self, bed: Bed, tmp_path: Path) -> None:
        """Between two hosts whose network drops all multicast, the publisher's unicast
        copies make the controller shed and restore; the group itself stays silent."""
        pub_host, ctl_host = bed.add_host("pub"), bed.add_host("ctl")
        for host in (pub_host, ctl_host):  # the network blocks multicast, both ways
            host.run("iptables", "-A", "INPUT", "-d", "224.0.0.0/4", "-j", "DROP")
            host.run("iptables", "-A", "OUTPUT", "-d", "224.0.0.0/4", "-j", "DROP")
        keys = make_keys(tmp_path / "keys")
        reading = tmp_path / "ups.json"
        set_reading(reading, "online")
        group = {"group": netbed.GROUP, "port": netbed.PORT}
        pub = publisher_config(
            keys,
            reading,
            {
                **group,
                "interface": pub_host.address,
                "unicast_peers": [f"{ctl_host.address}:{netbed.PORT}"],
            },
        )
        ctl = controller_config(
            keys, {**group, "interface": ctl_host.address, "unicast_listen": "0.0.0.0"}
        )
        pub_path = write_toml(tmp_path / "p.toml", pub)
        ctl_path = write_toml(tmp_path / "c.toml", ctl)
        c = NetDaemon(bed, ctl_host, "control", "--config", str(ctl_path))
        p = NetDaemon(bed, pub_host, "publish", "--config", str(pub_path))
        try:
            c.wait_for("transition", timeout=BOOT_S, state="normal")
            tap = ctl_host.run(
                sys.executable, "-m", "powercast", "tap", "--group", netbed.GROUP,
                "--port", str(netbed.PORT), "--interface", ctl_host.address,
                "--count", "1", "--timeout", "1", check=False,
            )  # fmt: skip
            assert tap.returncode == 1, tap.stdout  # nothing on the group
            set_reading(reading, "on_battery")
            c.wait_for("transition", timeout=NEWS_S, state="on_battery")
            c.wait_for("transition", timeout=0.3 + NEWS_S, state="shedding")
            set_reading(reading, "online")
            c.wait_for("transition", timeout=0.3 + NEWS_S, state="normal")
        finally:
            p.stop()
            c.stop()
