"""Switched PDU outlets (or any integer an agent takes) by SNMP SET, v2c or v3; read back.

Defaults are APC's rPDUOutletControlOutletCommand (1 = immediateOn, 2 = immediateOff);
a GET of that OID returns the outlet's state on a real rPDU. Several OIDs (an outlet
group) go in one SET request and are read back together: all on is on, all off is off,
a mix is an error (the worker retries). An agent refuses a SET in two ways, an error
status or a noSuchInstance/noSuchObject in the answer: both are errors here, and the
read-back catches an agent that says yes and keeps the old value.
"""

from __future__ import annotations

from typing import Any

from pyasn1.type import univ
from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch import asyncio as hlapi
from pysnmp.proto import rfc1902, rfc1905

from powercast import snmpaccess
from powercast.actuators.base import DriverError
from powercast.config import SnmpActuator


def command_value(config: SnmpActuator, on: bool) -> int:
    """The integer written for a position."""
    return config.on_value if on else config.off_value


class SnmpDriver:
    """One SnmpEngine for the driver's life (its first request loads pysnmp's MIB tables,
    ~0.3 s); after a failure the target and credentials are set up anew."""

    def __init__(self, name: str, config: SnmpActuator) -> None:
        self.name = name
        self._config = config
        self.timeout_s = 2 * config.timeout_s * (config.retries + 1) + 1.0
        """A SET and a GET, each with its tries; and the first request's MIB load."""
        self._origin = snmpaccess.origin(config)
        self._engine: Any = None
        self._target: Any = None
        self._auth: Any = None

    async def apply(self, on: bool) -> None:
        value = command_value(self._config, on)
        binds = [
            hlapi.ObjectType(hlapi.ObjectIdentity(oid), rfc1902.Integer32(value))
            for oid in self._config.oids
        ]
        await self._request(hlapi.set_cmd, binds, f"set {value}")

    async def read(self) -> bool | None:
        c = self._config
        binds = [hlapi.ObjectType(hlapi.ObjectIdentity(oid)) for oid in c.status_oids]
        values = await self._request(hlapi.get_cmd, binds, "get")
        positions = set()
        for oid, value in zip(c.status_oids, values, strict=True):
            if value == c.on_value:
                positions.add(True)
            elif value == c.off_value:
                positions.add(False)
            else:
                raise DriverError(
                    f"{self.name}: {self._origin}: {oid} reads {value},"
                    f" expected {c.on_value} (on) or {c.off_value} (off)"
                )
        if len(positions) > 1:
            shown = ", ".join(f"{o}={v}" for o, v in zip(c.status_oids, values, strict=True))
            raise DriverError(f"{self.name}: {self._origin}: outlets disagree: {shown}")
        return positions.pop()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close_dispatcher()
        self._engine = self._target = self._auth = None

    async def _request(self, command: Any, binds: list[Any], what: str) -> list[int]:
        try:
            return await self._ask(command, binds, what)
        except BaseException:
            self._target = self._auth = None  # a late answer to a lost request is dropped
            raise

    async def _ask(self, command: Any, binds: list[Any], what: str) -> list[int]:
        config = self._config
        if self._engine is None:
            self._engine = hlapi.SnmpEngine()
        if self._target is None:
            self._auth = snmpaccess.credentials(config, DriverError)
            self._target = await snmpaccess.target(config, DriverError)
        where = f"{self.name}: {self._origin}"
        try:
            error, status, index, answer = await command(
                self._engine,
                self._auth,
                self._target,
                hlapi.ContextData(contextName=config.context),
                *binds,
                lookupMib=False,
            )
        except PySnmpError as err:
            raise DriverError(f"{where}: {what}: {snmpaccess.first_line(err)}") from None
        if error:
            raise DriverError(f"{where}: {what}: {snmpaccess.explain(config, error)}")
        oids = [str(b[0]) for b in binds]
        if status:
            at = oids[int(index) - 1] if 0 < int(index) <= len(oids) else "?"
            raise DriverError(f"{where}: {what}: agent answered {status.prettyPrint()} at {at}")
        values = []
        for (oid, value), asked in zip(answer, oids, strict=True):
            if isinstance(value, rfc1905.NoSuchObject | rfc1905.NoSuchInstance):
                raise DriverError(f"{where}: {what}: agent answered {value.prettyPrint()} at {oid}")
            if not isinstance(value, univ.Integer):
                raise DriverError(
                    f"{where}: {what}: {asked}: expected an integer,"
                    f" got {value.prettyPrint()[:40]!r}"
                )
            values.append(int(value))
        return values
