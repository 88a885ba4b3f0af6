"""The SNMP source (UPS-MIB) against a real agent: snmpsim, run by the tests.

snmpsim serves ``<community>.snmprec`` to that community (and to the SNMPv3 context of the
same name) and reloads a file when its whole-second mtime changes: each write gets a
newer one and replaces the file at once (shared notes/snmp.md).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from powercast.config import ConfigError, PublisherConfig, Reading, SnmpSource, parse
from powercast.sources import SourceError, make_reader

with warnings.catch_warnings():  # pysnmp imports pysmi's old names when pysmi is there
    warnings.simplefilter("ignore", DeprecationWarning)
    from powercast.sources.snmp import OIDS, SnmpReader, power_status, to_reading

from harness import end, free_port

# pysnmp calls pysmi's old names when pysmi is installed (snmpsim needs it): not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.* is deprecated:DeprecationWarning")

RESPONDER = Path(sys.prefix) / "bin" / "snmpsim-command-responder"
ONLINE = {
    "upsBatteryStatus": 2,
    "upsSecondsOnBattery": 0,
    "upsEstimatedMinutesRemaining": 30,
    "upsEstimatedChargeRemaining": 100,
    "upsBatteryTemperature": 25,
    "upsInputVoltage": 230,
    "upsOutputSource": 3,
    "upsOutputPercentLoad": 30,
}
V3 = {"user": "powercast", "auth_key": "authkey123", "priv_key": "privkey123"}


def _oid_key(oid: str) -> list[int]:
    return [int(part) for part in oid.split(".")]


class Agent:
    """snmpsim on 127.0.0.1 with one data file per community."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        (directory / "data").mkdir()
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self._mtime = 0
        self.engine_id = "auto"
        """Its snmpEngineID in hex (SNMPv3 traps are keyed to it), or auto."""

    def set(
        self, community: str, values: dict[str, Any], tags: dict[str, int] | None = None
    ) -> None:
        """Serve ``values`` (UPS-MIB object name -> value) to ``community``; INTEGER unless
        ``tags`` says otherwise (4: OCTET STRING)."""
        rows = sorted(((OIDS[k], v) for k, v in values.items()), key=lambda r: _oid_key(r[0]))
        names = {oid: name for name, oid in OIDS.items()}
        path = self.dir / "data" / f"{community}.snmprec"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            "".join(f"{oid}|{(tags or {}).get(names[oid], 2)}|{value}\n" for oid, value in rows)
        )
        self._mtime = max(int(time.time()), self._mtime + 1)
        os.utime(tmp, (self._mtime, self._mtime))
        tmp.replace(path)

    def start(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                str(RESPONDER),
                f"--v3-engine-id={self.engine_id}",
                f"--v3-user={V3['user']}",
                f"--v3-auth-key={V3['auth_key']}",
                "--v3-auth-proto=SHA",
                f"--v3-priv-key={V3['priv_key']}",
                "--v3-priv-proto=AES",
                f"--data-dir={self.dir / 'data'}",
                f"--cache-dir={self.dir / 'cache'}",
                f"--agent-udpv4-endpoint=127.0.0.1:{self.port}",
            ],
            env={**os.environ, "SNMPSIM_ALLOW_ROOT": "true"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "Listening at UDP/IPv4 endpoint" in line:
                # It logs every request on stderr: keep draining the pipe.
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()
                return
        raise RuntimeError(f"snmpsim exited with status {self.proc.wait()}")

    def stop(self) -> None:
        end(self.proc)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    if not RESPONDER.exists():
        pytest.skip("needs snmpsim: pip install -e '.[test]', or run tests/run")
    a = Agent(tmp_path_factory.mktemp("snmp"))
    for community in ("public", "changing", "garbage", "partial"):
        a.set(community, ONLINE)
    a.set("garbage", {**ONLINE, "upsOutputSource": "battery"}, {"upsOutputSource": 4})
    partial = {k: v for k, v in ONLINE.items() if k != "upsOutputSource"}
    a.set("partial", {**partial, "upsSecondsOnBattery": 42})
    try:
        a.start()
        yield a
    finally:
        a.stop()


def source(port: int, **options: Any) -> SnmpSource:
    return SnmpSource(host="127.0.0.1", port=port, **{"community": "public", **options})


def read_once(config: SnmpSource) -> Reading:
    """One read by a new reader, closed in its own event loop."""

    async def main() -> Reading:
        reader = make_reader(config, 0, 0.0)
        assert isinstance(reader, SnmpReader)
        try:
            return await reader.read()
        finally:
            reader.close()

    return asyncio.run(main())


def status(reading: Reading) -> str | None:
    return reading.power.status if reading.power else None


def config_error(toml: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(f'role = "publisher"\n[[sources]]\nkind = "snmp"\n{toml}', "p.toml")
    return str(info.value)


@pytest.mark.unit
class TestSnmpConfig:
    def test_v2c_and_v3(self) -> None:
        """v2c needs a community; v3 a user and keys (8 characters or more)."""
        got = parse(
            'role = "publisher"\n[[sources]]\nkind = "snmp"\nhost = "ups1"\ncommunity = "c"',
            "p.toml",
        )
        assert isinstance(got, PublisherConfig)
        snmp = got.sources[0]
        assert isinstance(snmp, SnmpSource)
        assert (snmp.port, snmp.version, snmp.sensor, snmp.timeout_s) == (
            161,
            "2c",
            "ups.battery",
            1.0,
        )
        assert config_error('host = "ups1"') == (
            "p.toml: sources[0].community: expected community or community_file for version 2c,"
            " got neither"
        )
        assert config_error('host = "ups1"\nversion = "3"') == (
            "p.toml: sources[0].user: expected an SNMPv3 user name for version 3, got none"
        )
        assert config_error('host = "ups1"\nversion = "3"\nuser = "u"\nauth_key = "short"') == (
            "p.toml: sources[0].auth_key: expected at least 8 characters, got 5"
        )
        assert config_error('host = "ups1"\nversion = "3"\nuser = "u"\nauth_protocol = "none"') == (
            'p.toml: sources[0].priv_protocol: expected "none" when auth_protocol is "none",'
            " got 'aes'"
        )
        assert config_error('host = "bad host"\ncommunity = "c"') == (
            "p.toml: sources[0].host: expected a host name or IP address, got 'bad host'"
        )


@pytest.mark.unit
class TestPowerStatus:
    @pytest.mark.parametrize(
        ("values", "expected"),
        [
            ({"upsOutputSource": 3}, "online"),
            ({"upsOutputSource": 4}, "online"),  # bypass: mains feeds the load
            ({"upsOutputSource": 6}, "online"),
            ({"upsOutputSource": 5}, "on_battery"),
            ({"upsOutputSource": 5, "upsBatteryStatus": 3}, "low_battery"),
            ({"upsOutputSource": 5, "upsBatteryStatus": 4}, "low_battery"),
            ({"upsOutputSource": 3, "upsBatteryStatus": 3}, "online"),  # recharging
            ({"upsOutputSource": 1}, "unknown"),
            ({"upsOutputSource": 2}, "unknown"),
            ({"upsOutputSource": 99}, "unknown"),
            ({"upsSecondsOnBattery": 42}, "on_battery"),
            ({"upsSecondsOnBattery": 0}, "online"),
            ({"upsSecondsOnBattery": 42, "upsBatteryStatus": 3}, "low_battery"),
            ({}, "unknown"),
        ],
    )
    def test_mapping(self, values: dict[str, int], expected: str) -> None:
        """upsOutputSource decides, upsBatteryStatus refines, upsSecondsOnBattery stands in."""
        assert power_status(values) == expected


@pytest.mark.unit
class TestToReading:
    def test_scaling_and_sensor(self) -> None:
        """Minutes become seconds; the battery temperature is the configured sensor."""
        got = to_reading(ONLINE, "ups.a", "snmp h:161")
        assert got.power is not None
        assert (got.power.charge_pct, got.power.runtime_s) == (100.0, 1800.0)
        assert (got.power.load_pct, got.power.input_v) == (30.0, 230.0)
        assert got.temperatures == {"ups.a": 25.0}

    def test_out_of_bounds_is_refused(self) -> None:
        """A value outside the announcement's bounds fails the reading, naming the key."""
        with pytest.raises(SourceError, match=r"^snmp h:161: power.charge_pct: expected"):
            to_reading({**ONLINE, "upsEstimatedChargeRemaining": 255}, "b", "snmp h:161")


@pytest.mark.system
class TestSnmpReader:
    def test_reads_the_ups_mib(self, agent: Agent) -> None:
        """SNMP v2c: status, charge, runtime, load, voltage and battery temperature."""
        got = read_once(source(agent.port, sensor="ups1.battery"))
        assert got == Reading(power=got.power, temperatures={"ups1.battery": 25.0})
        assert got.power is not None
        assert (got.power.status, got.power.charge_pct, got.power.runtime_s) == (
            "online",
            100.0,
            1800.0,
        )

    def test_values_changed_by_the_test_are_read(self, agent: Agent) -> None:
        """On battery, then battery low, then back: each read sees the agent's new values."""

        async def main() -> list[Reading]:
            reader = make_reader(source(agent.port, community="changing"), 0, 0.0)
            seen = []
            try:
                for values, expected in (
                    ({"upsOutputSource": 5, "upsEstimatedMinutesRemaining": 12}, "on_battery"),
                    ({"upsOutputSource": 5, "upsBatteryStatus": 3}, "low_battery"),
                    ({}, "online"),
                ):
                    agent.set("changing", {**ONLINE, **values})
                    deadline = time.monotonic() + 5.0
                    while status(got := await reader.read()) != expected:
                        assert time.monotonic() < deadline, f"still {got}"
                        await asyncio.sleep(0.1)
                    seen.append(got)
            finally:
                reader.close()
            return seen

        on_battery, low, online = asyncio.run(main())
        assert on_battery.power is not None
        assert on_battery.power.runtime_s == 720.0
        assert status(low) == "low_battery"
        assert status(online) == "online"

    def test_agent_without_output_source(self, agent: Agent) -> None:
        """An agent lacking upsOutputSource is judged by upsSecondsOnBattery."""
        assert status(read_once(source(agent.port, community="partial"))) == "on_battery"

    def test_not_an_integer(self, agent: Agent) -> None:
        """A string where the MIB has an INTEGER fails the read, naming the object."""
        with pytest.raises(
            SourceError, match=r"upsOutputSource: expected an integer, got 'battery'"
        ):
            read_once(source(agent.port, community="garbage"))

    def test_wrong_community_times_out(self, agent: Agent) -> None:
        """An agent ignores a wrong community: no answer within the timeout, said so."""
        started = time.monotonic()
        with pytest.raises(SourceError) as info:
            read_once(source(agent.port, community="nope", timeout_s=0.2, retries=0))
        assert str(info.value) == (
            f"snmp 127.0.0.1:{agent.port}: no answer within 0.2 s, 1 tries"
            " (agent down, or wrong community?)"
        )
        assert time.monotonic() - started < 2.0

    def test_community_file(self, agent: Agent, tmp_path: Path) -> None:
        """The community may come from a file others cannot read."""
        path = tmp_path / "community"
        path.write_text("public\n")
        path.chmod(0o600)
        got = read_once(source(agent.port, community=None, community_file=str(path)))
        assert status(got) == "online"

    def test_v3_auth_and_privacy(self, agent: Agent) -> None:
        """SNMPv3 with SHA and AES reads the same; a wrong key is named, not a timeout."""
        config = source(agent.port, community=None, version="3", context="public", **V3)
        assert status(read_once(config)) == "online"
        wrong = source(
            agent.port,
            community=None,
            version="3",
            context="public",
            **{**V3, "auth_key": "not-the-key"},
        )
        with pytest.raises(SourceError, match=r"Wrong SNMP PDU digest$"):
            read_once(wrong)

    def test_no_agent(self) -> None:
        """Nothing listening on the port: no answer within the timeout."""
        port = free_port()
        with pytest.raises(SourceError, match=rf"^snmp 127.0.0.1:{port}: no answer within 0.2 s"):
            read_once(source(port, timeout_s=0.2, retries=0))
