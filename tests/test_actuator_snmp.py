"""The snmp actuator against a real agent that keeps what is written: snmpsim with its
``writecache`` variation module, serving APC's rPDUOutletControlOutletCommand.1-4 (1 on,
2 off) to community "public" and to the SNMPv3 context "public" (shared
notes/bacnet-snmp-traps.md 3). writecache keys on the OID alone, so every test writes its
own outlets.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from devices import COMMAND, STATUS, PduAgent, pdu_agent
from test_actuators import run, running, until
from test_source_snmp import RESPONDER, V3

from powercast import config as cfg
from powercast import failsafe
from powercast.actuators import DriverError, Worker, actuator_name, make_driver
from powercast.config import SnmpActuator

with warnings.catch_warnings():  # pysnmp imports pysmi's old names when pysmi is there
    warnings.simplefilter("ignore", DeprecationWarning)
    from powercast.actuators.snmp import SnmpDriver, command_value

pytestmark = pytest.mark.filterwarnings("ignore:.* is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def pdu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PduAgent]:
    if not RESPONDER.exists():
        pytest.skip("needs snmpsim: pip install -e '.[test]', or sh tests/run")
    with pdu_agent(tmp_path_factory.mktemp("pdu")) as agent:
        yield agent


def snmp(port: int, **kw: Any) -> SnmpDriver:
    options = {"community": "public"} if kw.get("version", "2c") == "2c" else {}
    table = {"timeout_s": 0.5, "retries": 0, **options, **kw}
    config = SnmpActuator(host="127.0.0.1", port=port, **table)
    driver = make_driver(config, "racks/0(snmp)")
    assert isinstance(driver, SnmpDriver)
    return driver


@contextlib.asynccontextmanager
async def closing(driver: SnmpDriver) -> AsyncIterator[SnmpDriver]:
    try:
        yield driver
    finally:
        driver.close()


async def outlet(port: int, n: int) -> int | None:
    """What the agent holds for outlet n, read by a driver of its own."""
    async with closing(snmp(port, oid=f"{COMMAND}.{n}")) as reader:
        return await reader.read()


@pytest.mark.system
class TestSnmpDriver:
    def test_v2c_outlet_off_and_on_is_kept_by_the_agent(self, pdu: PduAgent) -> None:
        """2 then 1 are written to outlet 1; a separate reader sees each; outlet 2 untouched."""

        async def go() -> list[Any]:
            seen: list[Any] = []
            async with closing(snmp(pdu.port, oid=f"{COMMAND}.1")) as d:
                for level in (0, 100):
                    await d.apply(level)
                    seen.append((await d.read(), await outlet(pdu.port, 1)))
            seen.append(await outlet(pdu.port, 2))
            return seen

        assert run(go()) == [(0, 0), (100, 100), 100]

    def test_any_level_above_0_switches_the_outlet_on(self, pdu: PduAgent) -> None:
        """An outlet is on or off: a staged level (30 %) writes on (1), read back as 100."""

        async def go() -> tuple[int, int | None, int | None]:
            async with closing(snmp(pdu.port, oid=f"{COMMAND}.1")) as d:
                await d.apply(0)
                await d.apply(30)
                return d.position(30), await d.read(), await outlet(pdu.port, 1)

        assert run(go()) == (100, 100, 100)

    def test_v3_outlet_group_in_one_set(self, pdu: PduAgent) -> None:
        """SNMPv3 authPriv (SHA/AES), context "public": outlets 3 and 4 together."""

        async def go() -> tuple[int | None, list[int | None]]:
            oids = [f"{COMMAND}.3", f"{COMMAND}.4"]
            driver = snmp(pdu.port, version="3", context="public", oid=oids, **V3)
            async with closing(driver) as d:
                await d.apply(0)
                return await d.read(), [await outlet(pdu.port, n) for n in (3, 4)]

        assert run(go()) == (0, [0, 0])

    def test_outlets_that_disagree_are_an_error(self, pdu: PduAgent) -> None:
        """One outlet of the group off, the other on: neither position, an error."""

        async def go() -> str:
            async with closing(snmp(pdu.port, oid=f"{COMMAND}.5")) as one:
                await one.apply(0)
            async with closing(snmp(pdu.port, oid=[f"{COMMAND}.5", f"{COMMAND}.6"])) as both:
                with pytest.raises(DriverError) as caught:
                    await both.read()
            return str(caught.value)

        assert run(go()).endswith(f"outlets disagree: {COMMAND}.5=2, {COMMAND}.6=1")

    def test_refused_set_is_an_error_naming_the_oid(self, pdu: PduAgent) -> None:
        """A read-only OID: the agent answers the SET with noSuchInstance, not a change."""

        async def go() -> str:
            async with closing(snmp(pdu.port, oid=f"{STATUS}.1")) as d:
                with pytest.raises(DriverError) as caught:
                    await d.apply(0)
            return str(caught.value)

        message = run(go())
        assert message == (
            f"racks/0(snmp): snmp 127.0.0.1:{pdu.port}: set 2: agent answered"
            f" No Such Instance currently exists at this OID at {STATUS}.1"
        )

    def test_status_oid_with_another_value_is_named(self, pdu: PduAgent) -> None:
        """Read back through a status OID that reads 3 (neither 1 nor 2): an error."""

        async def go() -> str:
            config = {"oid": f"{COMMAND}.7", "status_oid": f"{STATUS}.8"}
            async with closing(snmp(pdu.port, **config)) as d:
                await d.apply(100)
                with pytest.raises(DriverError) as caught:
                    await d.read()
            return str(caught.value)

        assert run(go()).endswith(f"{STATUS}.8 reads 3, expected 1 (on) or 2 (off)")

    def test_wrong_community_fails_the_actuator_not_the_others(self, pdu: PduAgent) -> None:
        """snmpsim does not answer an unknown community: that worker fails with "no answer"
        while a worker with the right community sets its outlet."""

        async def go() -> tuple[Worker, Worker]:
            bad = snmp(pdu.port, oid=f"{COMMAND}.8", community="nobody", timeout_s=0.3)
            dead = Worker(bad, "racks", known=100, min_backoff_s=10.0)
            live = Worker(snmp(pdu.port, oid=f"{COMMAND}.2"), "racks", known=100)
            async with running(dead), running(live):
                dead.want(0)
                live.want(0)
                await until(live, lambda w: w.status == "ok", timeout=5.0)
                await until(dead, lambda w: w.status == "failed", timeout=5.0)
            return dead, live

        dead, live = run(go())
        assert (dead.known, live.known) == (None, 0)
        assert "set 2: no answer within 0.3 s, 1 tries (agent down, or wrong community?)" in (
            dead.error
        )
        assert run(outlet(pdu.port, 8)) == 100  # untouched
        asyncio.run(_restore(pdu.port, 2))

    def test_failsafe_drives_outlets_on(self, pdu: PduAgent) -> None:
        """The failsafe's path (apply on, read back) for an snmp actuator."""

        async def go() -> failsafe.Report:
            async with closing(snmp(pdu.port, oid=f"{COMMAND}.6")) as d:
                await d.apply(0)
            config = cfg.ControllerConfig(
                actuators=[
                    SnmpActuator(host="127.0.0.1", port=pdu.port, community="public",
                                 oid=f"{COMMAND}.6")
                ]
            )  # fmt: skip
            return await failsafe.to_safe_state([config])

        report = run(go())
        assert (report.moved, report.failures) == (1, [])
        assert run(outlet(pdu.port, 6)) == 100


async def _restore(port: int, n: int) -> None:
    async with closing(snmp(port, oid=f"{COMMAND}.{n}")) as d:
        await d.apply(100)


def actuator_error(**table: Any) -> str:
    text = {"role": "controller", "actuators": [{"kind": "snmp", **table}]}
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.parse(tomli_w.dumps(text), "c.toml")
    return str(caught.value)


@pytest.mark.unit
class TestSnmpConfig:
    @pytest.mark.parametrize(
        ("table", "expected"),
        [
            ({"oid": "1.3.6.1.4"}, "c.toml: actuators[0].host: missing (this key is required)"),
            (
                {"host": "10.0.0.7", "community": "private"},
                "actuators[0].oid: missing (this key is required)",
            ),
            (
                {"host": "10.0.0.7", "community": "private", "oid": "PowerNet-MIB::outlet.3"},
                "actuators[0].oid: expected numeric OIDs such as 1.3.6.1.4.1.318.1.1.12.3.3.1.1.4.3"
                " (no MIB names), got 'PowerNet-MIB::outlet.3'",
            ),
            (
                {"host": "10.0.0.7", "community": "private", "oid": ["1.3.6.1.4", "1.3..6"]},
                "got '1.3..6'",
            ),
            (
                {"host": "10.0.0.7", "community": "private", "oid": "1.3.6.1.4.1.99999999999"},
                "got '1.3.6.1.4.1.99999999999'",
            ),
            (
                {
                    "host": "10.0.0.7",
                    "community": "private",
                    "oid": ["1.3.6.1.4.1", "1.3.6.1.4.2"],
                    "status_oid": "1.3.6.1.4.3",
                },
                "actuators[0].status_oid: expected one per oid (2), got 1",
            ),
            (
                {"host": "10.0.0.7", "oid": "1.3.6.1.4"},
                "actuators[0].community: expected community or community_file for version 2c",
            ),
            (
                {"host": "10.0.0.7", "version": "3", "oid": "1.3.6.1.4"},
                "actuators[0].user: expected an SNMPv3 user name for version 3, got none",
            ),
            (
                {"host": "10.0.0.7", "community": "c", "oid": "1.3.6", "traps": {}},
                "actuators[0]: unknown key 'traps'",
            ),
            (
                {"host": "10.0.0.7", "community": "c", "oid": "1.3.6", "on_value": 2},
                "actuators[0].off_value: expected a value other than on_value, got 2 for both",
            ),
            (
                {"host": "10.0.0.7", "community": "c", "oid": "1.3.6", "refresh_s": -1},
                "actuators[0].refresh_s: expected a number >= 0.1, got -1",
            ),
        ],
    )
    def test_bad_table_is_named(self, table: dict[str, Any], expected: str) -> None:
        """Each mistake names its key, what was expected and what was found."""
        assert expected in actuator_error(**table)

    def test_apc_defaults(self, tmp_path: Path) -> None:
        """1 on, 2 off, read back through the same OID, port 161, v2c."""
        config = SnmpActuator(host="10.0.0.7", community="private", oid="1.3.6.1.4.1.318.1")
        assert (config.on_value, config.off_value, config.port, config.version) == (
            1,
            2,
            161,
            "2c",
        )
        assert config.status_oids == config.oids == ["1.3.6.1.4.1.318.1"]


@pytest.mark.unit
class TestSnmpLevels:
    def test_an_outlet_is_off_only_at_level_0(self) -> None:
        """off_value at level 0, on_value at every level above; True is no level."""
        config = SnmpActuator(host="10.0.0.5", community="public", oid="1.3.6.1.4.1.1.1")
        assert [command_value(config, level) for level in (0, 1, 50, 100)] == [2, 1, 1, 1]
        with pytest.raises(TypeError):
            command_value(config, True)


@pytest.mark.unit
class TestSnmpHostProblems:
    def test_secret_file_that_cannot_be_read_is_named(self, tmp_path: Path) -> None:
        """config check: a community_file that is not there is named by its key."""
        text = (
            'role = "controller"\n[[actuators]]\nkind = "snmp"\nhost = "10.0.0.7"\n'
            f'community_file = "{tmp_path}/nope"\noid = "1.3.6.1.4.1.318.1.1.12.3.3.1.1.4.3"\n'
        )
        assert cfg.host_problems(cfg.parse(text, "c.toml")) == [
            f"actuators[0].community_file: expected a file this user can read, got"
            f' "{tmp_path}/nope": no such file'
        ]

    def test_named_in_status_and_logs_by_kind(self) -> None:
        """actuator_name carries the kind, as for every other actuator."""
        config = SnmpActuator(host="10.0.0.7", community="private", oid="1.3.6.1.4.1.318.1")
        assert actuator_name("racks/1", config) == "racks/1(snmp)"
