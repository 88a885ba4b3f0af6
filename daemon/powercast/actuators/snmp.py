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
from pysnmp.hlapi.v3arch import asyncio as hlapi
from pysnmp.proto import rfc1902, rfc1905

from powercast import snmpaccess
from powercast.actuators.base import DriverError, switch
from powercast.config import SnmpActuator


def command_value(config: SnmpActuator, level: int) -> int:
    """The integer written for a level: an outlet is off only at level 0."""
    return config.on_value if switch(level) else config.off_value


class SnmpDriver:
    """One SnmpEngine for the driver's life (its first request loads pysnmp's MIB tables,
    ~0.3 s); after a failure the target and credentials are set up anew."""

    def __init__(self, name: str, config: SnmpActuator) -> None:
        self.name = name
        self._config = config
        self.timeout_s = 2 * config.timeout_s * (config.retries + 1) + 1.0
        """A SET and a GET, each with its tries; and the first request's MIB load."""
        self._origin = snmpaccess.origin(config)
        self._session = snmpaccess.Session(config, DriverError, f"{name}: {self._origin}")

    def position(self, level: int) -> int:
        """An outlet is on (100) or off (0)."""
        return 100 if switch(level) else 0

    async def apply(self, level: int) -> None:
        value = command_value(self._config, level)
        binds = [
            hlapi.ObjectType(hlapi.ObjectIdentity(oid), rfc1902.Integer32(value))
            for oid in self._config.oids
        ]
        await self._request(hlapi.set_cmd, binds, self._config.oids, f"set {value}")

    async def read(self) -> int | None:
        c = self._config
        binds = [hlapi.ObjectType(hlapi.ObjectIdentity(oid)) for oid in c.status_oids]
        values = await self._request(hlapi.get_cmd, binds, c.status_oids, "get")
        positions = set()
        for oid, value in zip(c.status_oids, values, strict=True):
            if value == c.on_value:
                positions.add(100)
            elif value == c.off_value:
                positions.add(0)
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
        self._session.close()

    async def _request(
        self, command: Any, binds: list[Any], oids: list[str], what: str
    ) -> list[int]:
        where = f"{self.name}: {self._origin}"
        answer = await self._session.request(command, binds, oids, what)
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
