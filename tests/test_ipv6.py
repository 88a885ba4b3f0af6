"""IPv6 groups end to end: a publisher and a controller in two network namespaces.

Loopback carries no IPv6 multicast on Linux (lo has no MULTICAST flag), so this runs
over a veth pair on the test bed's bridge, with addresses the test gives (no DAD wait).
Needs root; skipped with the reason otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import netbed
import pytest
from netbed import Bed, NetDaemon

from harness import controller_config, make_keys, publisher_config, set_reading, write_toml

pytestmark = pytest.mark.system

GROUP6 = "ff15::4242"
PORT = 5101


@pytest.fixture
def bed() -> Iterator[Bed]:
    reason = netbed.unavailable()
    if reason is not None:
        pytest.skip(reason)
    netbed.sweep()
    with Bed() as made:
        yield made
    assert made.leftovers() == []


class TestIPv6:
    def test_outage_over_an_ipv6_group(self, bed: Bed, tmp_path: Path) -> None:
        """A site-local IPv6 group, joined by interface name: the controller sheds and restores."""
        hosts = [bed.add_host("pub6"), bed.add_host("ctl6")]
        for i, host in enumerate(hosts, 1):
            host.run("ip", "-6", "addr", "add", f"fd77::{i}/64", "dev", "eth0", "nodad")
        keys = make_keys(tmp_path / "keys")
        source = tmp_path / "ups.json"
        set_reading(source, "online")
        network = {"group": GROUP6, "port": PORT, "interface": "eth0"}
        controller = write_toml(
            tmp_path / "c.toml",
            controller_config(network, keys, policy={"shed_after_s": 0.2, "restore_after_s": 0.2}),
        )
        publisher = write_toml(
            tmp_path / "p.toml",
            publisher_config({**network, "loop": False}, keys, source, id="ups-v6"),
        )
        ctl = NetDaemon(bed, hosts[1], "control", "--config", str(controller))
        ctl.wait_for("ready", timeout=10)
        NetDaemon(bed, hosts[0], "publish", "--config", str(publisher)).wait_for(
            "ready", timeout=10
        )
        assert ctl.wait_for("transition", timeout=5, state="normal")["sources"] == ["ups-v6"]
        set_reading(source, "on_battery")
        ctl.wait_for("transition", timeout=5, state="shedding")
        set_reading(source, "online")
        ctl.wait_for("transition", timeout=5, state="normal")
