"""A UPS's SNMP agent, read with the standard UPS-MIB (RFC 1628), SNMP v2c or v3.

One GET per poll asks for every object below; an object the agent lacks
(noSuchObject/noSuchInstance) is left out of the reading.

=================================  ===============================  ========================
object                              OID                              announced as
=================================  ===============================  ========================
upsBatteryStatus                    1.3.6.1.2.1.33.1.2.1.0           low(3)/depleted(4) on
                                                                     battery: low_battery
upsSecondsOnBattery                 1.3.6.1.2.1.33.1.2.2.0           status, only without
                                                                     upsOutputSource
upsEstimatedMinutesRemaining        1.3.6.1.2.1.33.1.2.3.0           runtime_s (x 60)
upsEstimatedChargeRemaining         1.3.6.1.2.1.33.1.2.4.0           charge_pct
upsBatteryTemperature               1.3.6.1.2.1.33.1.2.7.0           sensor (``sensor`` key)
upsInputVoltage, line 1             1.3.6.1.2.1.33.1.3.3.1.3.1       input_v
upsOutputSource                     1.3.6.1.2.1.33.1.4.1.0           status
upsOutputPercentLoad, line 1        1.3.6.1.2.1.33.1.4.4.1.5.1       load_pct
=================================  ===============================  ========================

pysnmp is imported only when an snmp source is configured (it takes ~0.2 s).
"""

from __future__ import annotations

from typing import Any, Final

from pyasn1.type import univ
from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch import asyncio as hlapi
from pysnmp.proto import rfc1905

from powercast import snmpaccess
from powercast.config import Reading, SnmpSource
from powercast.snmpaccess import first_line
from powercast.sources.base import SourceError, make_reading

UPS_MIB: Final = "1.3.6.1.2.1.33.1"
OIDS: Final = {
    "upsBatteryStatus": f"{UPS_MIB}.2.1.0",
    "upsSecondsOnBattery": f"{UPS_MIB}.2.2.0",
    "upsEstimatedMinutesRemaining": f"{UPS_MIB}.2.3.0",
    "upsEstimatedChargeRemaining": f"{UPS_MIB}.2.4.0",
    "upsBatteryTemperature": f"{UPS_MIB}.2.7.0",
    "upsInputVoltage": f"{UPS_MIB}.3.3.1.3.1",
    "upsOutputSource": f"{UPS_MIB}.4.1.0",
    "upsOutputPercentLoad": f"{UPS_MIB}.4.4.1.5.1",
}

OUTPUT_ONLINE: Final = frozenset({3, 4, 6, 7})  # normal, bypass, booster, reducer
OUTPUT_BATTERY: Final = 5
BATTERY_LOW: Final = frozenset({3, 4})  # batteryLow, batteryDepleted


def power_status(values: dict[str, int]) -> str:
    """The announced status from upsOutputSource, refined by upsBatteryStatus.

    battery(5) is ``on_battery`` (``low_battery`` if the battery is low or depleted);
    normal(3), bypass(4), booster(6), reducer(7) are ``online`` (a low battery while
    mains is there is recharging, not an outage); other(1), none(2) are ``unknown``.
    An agent without upsOutputSource is judged by upsSecondsOnBattery (RFC 1628: zero
    when not on battery).
    """
    source = values.get("upsOutputSource")
    low = values.get("upsBatteryStatus") in BATTERY_LOW
    if source is None:
        seconds = values.get("upsSecondsOnBattery")
        if seconds is None:
            return "unknown"
        source = OUTPUT_BATTERY if seconds > 0 else 3
    if source == OUTPUT_BATTERY:
        return "low_battery" if low else "on_battery"
    if source in OUTPUT_ONLINE:
        return "online"
    return "unknown"


def to_reading(values: dict[str, int], sensor: str, origin: str) -> Reading:
    """A reading from the objects found; bounds checked, so garbage is an error."""
    power: dict[str, Any] = {"status": power_status(values)}
    for obj, key, scale in (
        ("upsEstimatedChargeRemaining", "charge_pct", 1),
        ("upsEstimatedMinutesRemaining", "runtime_s", 60),
        ("upsOutputPercentLoad", "load_pct", 1),
        ("upsInputVoltage", "input_v", 1),
    ):
        if obj in values:
            power[key] = values[obj] * scale
    temperatures = {}
    if "upsBatteryTemperature" in values:
        temperatures[sensor] = values["upsBatteryTemperature"]
    return make_reading({"power": power, "temperatures": temperatures}, origin)


class SnmpReader:
    """One SnmpEngine for the reader's life: its first request stalls the event loop for
    ~0.3 s (pysnmp loads its MIB tables), later ones take milliseconds. After a failure
    the target and the credentials (secret files re-read) are set up anew."""

    def __init__(self, name: str, config: SnmpSource) -> None:
        self.name = name
        self.interval_s = config.interval_s
        self._config = config
        self._origin = snmpaccess.origin(config)
        self._engine: Any = None
        self._target: Any = None
        self._auth: Any = None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close_dispatcher()
        self._engine = self._target = self._auth = None

    async def read(self) -> Reading:
        try:
            values = await self._get()
        except BaseException:
            self._target = self._auth = None  # a late answer to a lost request is dropped
            raise
        return to_reading(values, self._config.sensor, self._origin)

    async def _get(self) -> dict[str, int]:
        config = self._config
        if self._engine is None:
            self._engine = hlapi.SnmpEngine()
        if self._target is None:
            self._auth = snmpaccess.credentials(config, SourceError)
            self._target = await snmpaccess.target(config, SourceError)
        try:
            error, status, index, binds = await hlapi.get_cmd(
                self._engine,
                self._auth,
                self._target,
                hlapi.ContextData(contextName=config.context),
                *[hlapi.ObjectType(hlapi.ObjectIdentity(oid)) for oid in OIDS.values()],
                lookupMib=False,
            )
        except PySnmpError as err:
            raise SourceError(f"{self._origin}: {first_line(err)}") from None
        if error:
            raise SourceError(f"{self._origin}: {snmpaccess.explain(config, error)}")
        if status:
            at = list(OIDS)[int(index) - 1] if 0 < int(index) <= len(OIDS) else "?"
            raise SourceError(f"{self._origin}: agent answered {status.prettyPrint()} at {at}")
        values: dict[str, int] = {}
        for obj, (oid, value) in zip(OIDS, binds, strict=True):
            if str(oid) != OIDS[obj]:
                raise SourceError(f"{self._origin}: answer for {oid}, expected {OIDS[obj]}")
            if isinstance(value, rfc1905.NoSuchObject | rfc1905.NoSuchInstance):
                continue
            if not isinstance(value, univ.Integer):
                raise SourceError(
                    f"{self._origin}: {obj}: expected an integer, got {value.prettyPrint()[:40]!r}"
                )
            values[obj] = int(value)
        return values
