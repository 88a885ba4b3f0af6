"""SNMP traps and informs wake the snmp source's poll.

Real notifications from net-snmp's ``snmptrap``/``snmpinform`` (apt package ``snmp``) on
loopback to the source's listener; a real agent, snmpsim, whose values the test changes
(one data file per community, see test_source_snmp). The poll interval is long, so a
reading that changes within a second was brought forward by the trap. Without the tools
the tests skip with the reason; under POWERCAST_SNMP_TESTS=require (.ci/run) they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time
import urllib.request
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from powercast.config import ConfigError, SnmpSource, SnmpTraps, parse
from powercast.sources import SourceError, make_reader
from powercast.sources.base import pauser

with warnings.catch_warnings():  # pysnmp imports pysmi's old names when pysmi is there
    warnings.simplefilter("ignore", DeprecationWarning)
    from powercast.sources.snmp import SnmpReader
    from powercast.sources.snmptrap import TrapGate, classify, normal_address

from test_operator import powercast
from test_source_snmp import ONLINE, RESPONDER, V3, Agent

from harness import controller_config, free_port, make_keys, publisher_config, running, write_toml

pytestmark = pytest.mark.filterwarnings("ignore:.* is deprecated:DeprecationWarning")

ENGINE_ID = "8000000001020304"
"""The agent's snmpEngineID: SNMPv3 traps are keyed to it (the agent is authoritative)."""
ON_BATTERY = {**ONLINE, "upsOutputSource": 5, "upsSecondsOnBattery": 30}
LOW = {**ON_BATTERY, "upsBatteryStatus": 3}
UPS_ON_BATTERY = "1.3.6.1.2.1.33.2.1"
COMMUNITIES = ("basic", "forged", "v1", "alarm", "v3", "inform", "flood", "busy", "e2e", "reload")
SLOW_POLL_S = 30.0
"""The poll interval: a change seen within a few seconds was brought forward by a trap."""


def tools_or_skip() -> None:
    missing = [t for t in ("snmptrap", "snmpinform") if shutil.which(t) is None]
    if missing:
        absent = ", ".join(missing)
        reason = f"needs net-snmp's snmptrap: {absent} missing (apt-get install snmp, or .ci/run)"
        if os.environ.get("POWERCAST_SNMP_TESTS") == "require":
            pytest.fail(f"{reason}, and POWERCAST_SNMP_TESTS=require")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    tools_or_skip()
    if not RESPONDER.exists():
        pytest.skip("needs snmpsim: pip install -e '.[test]', or sh tests/run")
    a = Agent(tmp_path_factory.mktemp("snmptrap"))
    a.engine_id = ENGINE_ID
    for community in COMMUNITIES:
        a.set(community, ONLINE)
    try:
        a.start()
        yield a
    finally:
        a.stop()


@pytest.fixture
def netsnmp_env(tmp_path: Path) -> dict[str, str]:
    """net-snmp's tools without MIB files and with their state in the test's directory."""
    return {**os.environ, "MIBS": "", "SNMP_PERSISTENT_DIR": str(tmp_path / "netsnmp")}


def trap_source(agent: Agent, community: str, trap_port: int, **traps: Any) -> SnmpSource:
    return SnmpSource(
        host="127.0.0.1",
        port=agent.port,
        community=community,
        interval_s=SLOW_POLL_S,
        traps=SnmpTraps(listen=f"127.0.0.1:{trap_port}", **traps),
    )


def v3_source(agent: Agent, trap_port: int, **v3: Any) -> SnmpSource:
    return SnmpSource(
        host="127.0.0.1",
        port=agent.port,
        version="3",
        context="v3",  # snmpsim: the v3 context is the data file's name
        interval_s=SLOW_POLL_S,
        traps=SnmpTraps(listen=f"127.0.0.1:{trap_port}", engine_id=ENGINE_ID),
        **{**V3, **v3},
    )


class Poller:
    """The publisher's poll loop for one reader (read, then pause), its readings kept."""

    def __init__(self, config: SnmpSource) -> None:
        reader = make_reader(config, 0, 0.0)
        assert isinstance(reader, SnmpReader)
        self.reader = reader
        self.statuses: list[str] = []
        self._changed = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                reading = await self.reader.read()
                status = reading.power.status if reading.power else "none"
            except SourceError as err:
                status = f"error: {err}"
            self.statuses.append(status)
            self._changed.set()
            await pauser(self.reader)(self.reader.interval_s)

    async def wait_for(self, status: str, timeout: float = 3.0) -> float:
        """Seconds until a read gives ``status``."""
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            while not self.statuses or self.statuses[-1] != status:
                self._changed.clear()
                await self._changed.wait()
        return time.monotonic() - started

    @property
    def traps(self) -> dict[str, Any]:
        status = self.reader.trap_status()
        assert status is not None
        return status


@asynccontextmanager
async def polling(config: SnmpSource) -> AsyncIterator[Poller]:
    """A poller, read once and listening for traps; always stopped and closed."""
    poller = Poller(config)
    task = asyncio.create_task(poller.run())
    try:
        await poller.wait_for("online", timeout=10.0)
        yield poller
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        poller.reader.close()


async def run(argv: list[str], env: dict[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), 10.0)


def v2c(port: int, community: str, trap_oid: str, *more: str, tool: str = "snmptrap") -> list[str]:
    return [tool, "-v2c", "-c", community, *more, f"127.0.0.1:{port}", "", trap_oid]


def v3_args(auth_key: str = V3["auth_key"], priv_key: str = V3["priv_key"]) -> list[str]:
    return [
        *("-v3", "-u", V3["user"], "-l", "authPriv", "-a", "SHA", "-A", auth_key),
        *("-x", "AES", "-X", priv_key),
    ]


@pytest.mark.unit
class TestClassify:
    @pytest.mark.parametrize(
        ("binds", "event"),
        [
            ({"1.3.6.1.6.3.1.1.4.1.0": "1.3.6.1.2.1.33.2.1"}, "on_battery"),
            ({"1.3.6.1.6.3.1.1.4.1.0": "1.3.6.1.4.1.318.0.5"}, "on_battery"),
            ({"1.3.6.1.6.3.1.1.4.1.0": "1.3.6.1.4.1.318.0.7"}, "low_battery"),
            ({"1.3.6.1.6.3.1.1.4.1.0": "1.3.6.1.4.1.318.0.9"}, "restored"),
            ({"1.3.6.1.6.3.1.1.4.1.0": "1.3.6.1.4.1.318.0.11"}, "restored"),
            ({"1.3.6.1.6.3.1.1.4.1.0": "1.3.6.1.4.1.318.0.1"}, "comm_lost"),
            ({"1.3.6.1.6.3.1.1.4.1.0": "1.3.6.1.4.1.318.0.8"}, "comm_restored"),
            (
                {
                    "1.3.6.1.6.3.1.1.4.1.0": "1.3.6.1.2.1.33.2.3",
                    "1.3.6.1.2.1.33.1.6.2.1.2.7": "1.3.6.1.2.1.33.1.6.3.3",
                },
                "low_battery",
            ),
            (
                {
                    "1.3.6.1.6.3.1.1.4.1.0": "1.3.6.1.2.1.33.2.4",
                    "1.3.6.1.2.1.33.1.6.2.1.2.7": "1.3.6.1.2.1.33.1.6.3.2",
                },
                "restored",
            ),
            (
                {
                    "1.3.6.1.6.3.1.1.4.1.0": "1.3.6.1.2.1.33.2.3",
                    "1.3.6.1.2.1.33.1.6.2.1.2.1": "1.3.6.1.2.1.33.1.6.3.20",
                },
                "comm_lost",
            ),
            ({"1.3.6.1.6.3.1.1.4.1.0": "1.3.6.1.2.1.33.2.3"}, None),  # alarm without descr
            ({"1.3.6.1.6.3.1.1.4.1.0": "1.3.6.1.6.3.1.1.5.1"}, None),  # coldStart
            ({}, None),
        ],
    )
    def test_events(self, binds: dict[str, str], event: str | None) -> None:
        """UPS-MIB and PowerNet traps, alarms by their description, others not recognised."""
        assert classify(binds) == event


@pytest.mark.unit
class TestTrapGate:
    def test_unknown_sender_and_rate(self) -> None:
        """Only the agent's addresses pass, at most max_per_s a second; each drop counted."""
        gate = TrapGate(frozenset({"10.0.0.5"}), max_per_s=3)
        assert not gate.admit("10.0.0.6", 0.0)
        assert [gate.admit("10.0.0.5", 0.0) for _ in range(4)] == [True, True, True, False]
        assert gate.admit("10.0.0.5", 0.34)  # one more token a third of a second later
        assert not gate.admit("10.0.0.5", 0.34)
        assert gate.admit("::ffff:10.0.0.5", 10.0)  # IPv4-mapped, from a [::] listener
        assert gate.dropped == {"unknown_sender": 1, "rate_limited": 2}
        assert normal_address("fe80::1%eth0") == "fe80::1"


def config_error(toml: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(
            f'role = "publisher"\n[[sources]]\nkind = "snmp"\nhost = "u"\n{toml}',
            "p.toml",
        )
    return str(info.value)


@pytest.mark.unit
class TestTrapConfig:
    def test_defaults_and_errors(self) -> None:
        """Port 162 on every address by default; bad keys are named with what was expected."""
        traps = msgspec.convert({}, SnmpTraps)
        assert (traps.listen, traps.confirm_gap_s, traps.max_per_s) == ("0.0.0.0:162", 0.1, 50)
        assert "sources[0].traps.listen: expected an IP address and port" in config_error(
            'community = "c"\ntraps = {listen = "ups-host:162"}'
        )
        assert config_error('community = "c"\ntraps = {engine_id = "80000001"}') == (
            "p.toml: sources[0].traps.engine_id: expected the agent's snmpEngineID, 5 to 32"
            " bytes in hex such as 8000000001020304, got '80000001'"
        )
        assert config_error('community = "c"\ntraps = {engine_id = "8000000001020304"}') == (
            'p.toml: sources[0].traps: expected engine_id only with version = "3" (SNMPv3'
            ' traps), got engine_id = "8000000001020304" with version = "2c"'
        )
        two = '[[sources]]\nkind = "snmp"\nhost = "v"\ncommunity = "c"\ntraps = {}'
        assert config_error(f'community = "c"\ntraps = {{listen = "127.0.0.1"}}\n{two}') == (
            "p.toml: sources: expected each snmp source's traps on a port of its own, got"
            " port 162 in sources[0] (127.0.0.1) and sources[1] (0.0.0.0:162)"
        )
        assert config_error(
            'community = "c"\ntraps = {community = "t", community_file = "/f"}'
        ) == (
            "p.toml: sources[0].traps.community: expected either community or"
            " community_file, got both"
        )


@pytest.mark.system
class TestTrapsWakeThePoll:
    def test_on_battery_trap_reads_at_once(self, agent: Agent, netsnmp_env: dict[str, str]) -> None:
        """UPS-MIB upsTrapOnBattery (v2c): the GET follows at once and sees the battery."""
        port = free_port()

        async def main() -> tuple[float, dict[str, Any]]:
            async with polling(trap_source(agent, "basic", port)) as poller:
                agent.set("basic", ON_BATTERY)
                assert await run(v2c(port, "basic", UPS_ON_BATTERY), netsnmp_env) == 0
                took = await poller.wait_for("on_battery")
                return took, poller.traps

        took, traps = asyncio.run(main())
        assert took < 3.0 < SLOW_POLL_S
        assert traps["listening"]
        assert traps["error"] is None
        assert (traps["events"]["on_battery"], traps["confirms"]) == (1, 1)
        assert traps["last_event"] == "on_battery"

    def test_powernet_v1_low_battery_and_restored(
        self, agent: Agent, netsnmp_env: dict[str, str]
    ) -> None:
        """PowerNet v1 traps (enterprise apc, specific 7 then 9) each bring the GET forward."""
        port = free_port()

        def apc(specific: int) -> list[str]:
            target = [f"127.0.0.1:{port}", "1.3.6.1.4.1.318", ""]  # enterprise apc, agent-addr
            return ["snmptrap", "-v1", "-c", "v1", *target, "6", str(specific), ""]

        async def main() -> dict[str, Any]:
            async with polling(trap_source(agent, "v1", port)) as poller:
                agent.set("v1", LOW)
                assert await run(apc(7), netsnmp_env) == 0
                await poller.wait_for("low_battery")
                agent.set("v1", ONLINE)
                assert await run(apc(9), netsnmp_env) == 0
                await poller.wait_for("online")
                return poller.traps

        traps = asyncio.run(main())
        assert traps["events"]["low_battery"] == traps["events"]["restored"] == 1
        assert traps["confirms"] == 2

    def test_ups_mib_alarm_added_and_removed(
        self, agent: Agent, netsnmp_env: dict[str, str]
    ) -> None:
        """UPS-MIB upsTrapAlarmEntryAdded (upsAlarmLowBattery) and ...Removed
        (upsAlarmOnBattery), told apart by their upsAlarmDescr varbind; a coldStart from
        the agent is counted as other and wakes nothing."""
        port = free_port()

        def alarm(trap: str, descr: str) -> list[str]:
            return [*v2c(port, "alarm", trap), "1.3.6.1.2.1.33.1.6.2.1.2.4", "o", descr]

        async def main() -> tuple[list[str], dict[str, Any]]:
            async with polling(trap_source(agent, "alarm", port)) as poller:
                agent.set("alarm", LOW)
                cold = v2c(port, "alarm", "1.3.6.1.6.3.1.1.5.1")
                assert await run(cold, netsnmp_env) == 0
                await asyncio.sleep(0.5)
                before = list(poller.statuses)
                low = alarm("1.3.6.1.2.1.33.2.3", "1.3.6.1.2.1.33.1.6.3.3")
                assert await run(low, netsnmp_env) == 0
                await poller.wait_for("low_battery")
                agent.set("alarm", ONLINE)
                back = alarm("1.3.6.1.2.1.33.2.4", "1.3.6.1.2.1.33.1.6.3.2")
                assert await run(back, netsnmp_env) == 0
                await poller.wait_for("online")
                return before, poller.traps

        before, traps = asyncio.run(main())
        assert before == ["online"]
        assert traps["events"]["other"] == 1
        assert traps["events"]["low_battery"] == traps["events"]["restored"] == 1
        assert traps["confirms"] == 2

    def test_bad_community_and_unknown_sender_are_counted_and_dropped(
        self, agent: Agent, netsnmp_env: dict[str, str]
    ) -> None:
        """A wrong community and a sender that is not the agent are counted and wake nothing:
        the agent's new values stay unread until a good trap comes."""
        port = free_port()

        async def main() -> tuple[list[str], dict[str, Any], list[str]]:
            async with polling(trap_source(agent, "forged", port)) as poller:
                agent.set("forged", ON_BATTERY)
                assert await run(v2c(port, "wrong", UPS_ON_BATTERY), netsnmp_env) == 0
                stranger = v2c(port, "forged", UPS_ON_BATTERY, "--clientaddr=127.0.0.2")
                assert await run(stranger, netsnmp_env) == 0
                await asyncio.sleep(1.0)
                before = list(poller.statuses)
                dropped = poller.traps
                assert await run(v2c(port, "forged", UPS_ON_BATTERY), netsnmp_env) == 0
                await poller.wait_for("on_battery")
                return before, dropped, poller.statuses

        before, dropped, after = asyncio.run(main())
        assert before == ["online"]
        assert dropped["dropped"]["bad_community"] == 1
        assert dropped["dropped"]["unknown_sender"] == 1
        assert (dropped["events"]["on_battery"], dropped["confirms"]) == (0, 0)
        assert after == ["online", "on_battery"]

    def test_v3_auth_priv_trap_and_inform(self, agent: Agent, netsnmp_env: dict[str, str]) -> None:
        """SNMPv3 authPriv (SHA, AES): a trap keyed to the agent's engine id is heard, one
        with a wrong key is counted; an inform (our engine id) is acknowledged."""
        port = free_port()
        trap = ["snmptrap", "-e", f"0x{ENGINE_ID}"]
        target = [f"127.0.0.1:{port}", ""]

        async def main() -> tuple[int, dict[str, Any]]:
            async with polling(v3_source(agent, port)) as poller:
                agent.set("v3", ON_BATTERY)
                wrong = [*trap, *v3_args(auth_key="wrongkey99"), *target, UPS_ON_BATTERY]
                assert await run(wrong, netsnmp_env) == 0
                await asyncio.sleep(1.0)
                assert poller.statuses == ["online"]
                good = [*trap, *v3_args(), *target, UPS_ON_BATTERY]
                assert await run(good, netsnmp_env) == 0
                await poller.wait_for("on_battery")
                agent.set("v3", ONLINE)
                inform = ["snmpinform", "-t", "2", "-r", "1", *v3_args(), *target]
                acknowledged = await run([*inform, "1.3.6.1.4.1.318.0.9"], netsnmp_env)
                await poller.wait_for("online")
                return acknowledged, poller.traps

        acknowledged, traps = asyncio.run(main())
        assert acknowledged == 0
        assert traps["dropped"]["wrong_digest"] == 1
        assert traps["events"]["on_battery"] == traps["events"]["restored"] == 1

    def test_v2c_inform_acknowledged_and_bad_one_not(
        self, agent: Agent, netsnmp_env: dict[str, str]
    ) -> None:
        """A v2c inform with the community is acknowledged (snmpinform exits 0); with a
        wrong one it gets no answer (snmpinform fails after its timeout) and is counted."""
        port = free_port()
        quick = ("-t", "0.5", "-r", "0")
        restored = "1.3.6.1.4.1.318.0.9"

        async def main() -> tuple[int, int, dict[str, Any]]:
            async with polling(trap_source(agent, "inform", port)) as poller:
                inform = v2c(port, "inform", restored, *quick, tool="snmpinform")
                good = await run(inform, netsnmp_env)
                wrong = v2c(port, "nope", restored, *quick, tool="snmpinform")
                bad = await run(wrong, netsnmp_env)
                return good, bad, poller.traps

        good, bad, traps = asyncio.run(main())
        assert good == 0
        assert bad != 0
        assert traps["events"]["restored"] == 1
        assert traps["dropped"]["bad_community"] == 1

    def test_a_flood_cannot_starve_the_poll(
        self, agent: Agent, netsnmp_env: dict[str, str]
    ) -> None:
        """Thousands of good traps a second: trap-triggered GETs stay confirm_gap_s apart,
        the datagrams beyond max_per_s are dropped undecoded and counted, and the regular
        poll still reads on its interval."""
        port = free_port()
        datagram = capture(v2c(0, "flood", UPS_ON_BATTERY), netsnmp_env)
        config = SnmpSource(
            host="127.0.0.1",
            port=agent.port,
            community="flood",
            interval_s=0.5,
            traps=SnmpTraps(listen=f"127.0.0.1:{port}", confirm_gap_s=0.25, max_per_s=100),
        )
        seconds = 2.0

        async def main() -> tuple[int, dict[str, Any]]:
            async with polling(config) as poller:
                reads = len(poller.statuses)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.bind(("127.0.0.1", 0))
                    sent, end = 0, time.monotonic() + seconds
                    while time.monotonic() < end:
                        for _ in range(50):
                            sock.sendto(datagram, ("127.0.0.1", port))
                        sent += 50
                        await asyncio.sleep(0.005)
                assert sent > 2000
                return len(poller.statuses) - reads, poller.traps

        reads, traps = asyncio.run(main())
        assert traps["confirms"] <= seconds / 0.25 + 2
        assert traps["dropped"]["rate_limited"] > 1000
        assert traps["events"]["on_battery"] <= 100 * seconds + 100
        assert reads >= seconds / 0.5 - 1  # at least the regular poll's reads

    def test_listen_failure_keeps_polling_and_retries(self, agent: Agent) -> None:
        """The trap port taken: the source still reads, the error is in its status, and
        once the port is free the listener comes up on its own."""
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("127.0.0.1", 0))
        port = blocker.getsockname()[1]
        config = SnmpSource(
            host="127.0.0.1",
            port=agent.port,
            community="busy",
            interval_s=0.2,
            traps=SnmpTraps(listen=f"127.0.0.1:{port}"),
        )

        async def main() -> tuple[dict[str, Any], dict[str, Any]]:
            async with polling(config) as poller:
                failing = poller.traps
                blocker.close()
                async with asyncio.timeout(6.0):
                    while not poller.traps["listening"]:
                        await asyncio.sleep(0.1)
                return failing, poller.traps

        try:
            failing, listening = asyncio.run(main())
        finally:
            blocker.close()
        assert not failing["listening"]
        assert failing["error"] == (
            f"snmp 127.0.0.1:{agent.port}: traps.listen 127.0.0.1:{port}: Address already in use"
        )
        assert listening["error"] is None


def capture(argv: list[str], env: dict[str, str]) -> bytes:
    """The datagram ``argv`` sends (its target replaced by a socket of ours)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5.0)
        port = sock.getsockname()[1]
        argv = [a.replace("127.0.0.1:0", f"127.0.0.1:{port}") for a in argv]
        assert asyncio.run(run(argv, env)) == 0
        return sock.recv(65536)


@pytest.mark.system
class TestPublisherDaemon:
    def test_trap_to_controller_transition(
        self, agent: Agent, tmp_path: Path, netsnmp_env: dict[str, str]
    ) -> None:
        """Through the daemons: on-battery traps while the agent says online move nothing
        (fans stay on); with the agent on battery, one trap and the controller's transition
        follows within a poll interval's fraction; the publisher's status counts the traps."""
        keys = make_keys(tmp_path / "keys")
        group_port, trap_port, metrics_port = free_port(), free_port(), free_port()
        sock = tmp_path / "publisher.sock"
        source = {
            "kind": "snmp",
            "host": "127.0.0.1",
            "port": agent.port,
            "community": "e2e",
            "interval_s": SLOW_POLL_S,
            "traps": {"listen": f"127.0.0.1:{trap_port}"},
        }
        pub_config = write_toml(
            tmp_path / "p.toml",
            publisher_config(
                group_port,
                keys,
                tmp_path / "unused.json",
                sources=[source],
                control={"socket": str(sock)},
                metrics={"listen": f"127.0.0.1:{metrics_port}"},
            ),
        )
        ctl_config = write_toml(
            tmp_path / "c.toml",
            controller_config(group_port, keys, policy={"shed_after_s": 3600.0}),
        )
        trap = v2c(trap_port, "e2e", UPS_ON_BATTERY)
        with (
            running("control", "--config", str(ctl_config)) as ctl,
            running("publish", "--config", str(pub_config)) as pub,
        ):
            ctl.wait_for("transition", timeout=15, state="normal")
            pub.wait_for("traps_listening", timeout=10)
            assert asyncio.run(run(trap, netsnmp_env)) == 0  # the agent still says online
            assert asyncio.run(run(v2c(trap_port, "x", UPS_ON_BATTERY), netsnmp_env)) == 0
            with pytest.raises(AssertionError, match="no transition"):  # fans stay on
                ctl.wait_for("transition", timeout=1.0, state="on_battery")
            agent.set("e2e", ON_BATTERY)
            sent = time.monotonic()
            assert asyncio.run(run(trap, netsnmp_env)) == 0
            moved = ctl.wait_for("transition", timeout=5, state="on_battery")
            done = powercast("status", "--json", "--socket", str(sock))
            text = powercast("status", "--socket", str(sock)).stdout
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as answer:
                metrics = answer.read().decode()
        assert moved["_at"] - sent < 3.0 < SLOW_POLL_S
        assert done.returncode == 0, done.stderr
        (status,) = msgspec.json.decode(done.stdout)["sources"]
        assert status["traps"]["events"]["on_battery"] == 2
        assert status["traps"]["confirms"] == 2
        assert status["traps"]["dropped"]["bad_community"] == 1
        assert (
            f"    traps on 127.0.0.1:{trap_port}: heard on_battery 2; dropped bad_community 1;"
            " reads brought forward 2\n"
        ) in text
        name = 'source="sources[0](snmp)"'
        assert f'powercast_source_traps_dropped_total{{reason="bad_community",{name}}} 1.0' in (
            metrics
        )
        assert f'powercast_source_traps_total{{event="on_battery",{name}}} 2.0' in metrics
        assert f"powercast_source_trap_reads_total{{{name}}} 2.0" in metrics

    def test_reload_keeps_hearing_on_the_same_port(
        self, agent: Agent, tmp_path: Path, netsnmp_env: dict[str, str]
    ) -> None:
        """A reload that changes the source starts a new listener on the same port at once
        (the old one is closed first): the next trap is heard."""
        keys = make_keys(tmp_path / "keys")
        trap_port = free_port()
        source = {
            "kind": "snmp",
            "host": "127.0.0.1",
            "port": agent.port,
            "community": "reload",
            "interval_s": SLOW_POLL_S,
            "traps": {"listen": f"127.0.0.1:{trap_port}"},
        }
        path, group_port = tmp_path / "p.toml", free_port()
        write_toml(path, publisher_config(group_port, keys, tmp_path / "x", sources=[source]))
        with running("publish", "--config", str(path)) as pub:
            pub.wait_for("traps_listening", timeout=10)
            source["interval_s"] = SLOW_POLL_S + 1
            write_toml(path, publisher_config(group_port, keys, tmp_path / "x", sources=[source]))
            pub.signal(signal.SIGHUP)
            pub.wait_for("traps_listening", timeout=5)
            assert "reloaded" in [e.get("event") for e in pub.seen]
            agent.set("reload", ON_BATTERY)
            assert asyncio.run(run(v2c(trap_port, "reload", UPS_ON_BATTERY), netsnmp_env)) == 0
            pub.wait_for("reading_changed", timeout=3, power="on_battery")
        assert "traps_not_heard" not in [e.get("event") for e in pub.seen]
