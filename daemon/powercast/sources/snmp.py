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

With ``[sources.traps]`` the agent's traps and informs wake the poll at once
(:mod:`powercast.sources.snmptrap`): the reader is then woken, not only timed
(:meth:`SnmpReader.pause`).

pysnmp is imported only when an snmp source is configured (it takes ~0.2 s).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import structlog
from pyasn1.type import univ
from pysnmp.hlapi.v3arch import asyncio as hlapi
from pysnmp.proto import rfc1905

from powercast import snmpaccess
from powercast.config import Reading, SnmpSource
from powercast.pacing import Backoff
from powercast.secrets import SecretError, read_secret
from powercast.sources.base import SourceError, make_reading
from powercast.sources.snmptrap import TrapError, TrapListener

log = structlog.get_logger("powercast")

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
LISTEN_TIMEOUT_S: Final = 2.0
"""Starting the trap listener (the agent's name looked up, the port bound) may take this long
before the read goes on without it."""


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
        self._session = snmpaccess.Session(config, SourceError, self._origin)
        self._binds = tuple(hlapi.ObjectType(hlapi.ObjectIdentity(oid)) for oid in OIDS.values())
        """The request's objects, kept: pysnmp resolves each against its MIBs once, not at
        every GET (a fifth of a GET's CPU)."""
        self._traps: TrapListener | None = None
        if config.traps is not None:
            self._traps = TrapListener(self._origin, config.traps, self._trap)
        self._woken = asyncio.Event()
        self._listen_backoff = Backoff(1.0)
        self._listen_at = float("-inf")
        self._listen_error: str | None = None
        self._confirmed_at = float("-inf")
        self.confirms = 0
        """Reads a trap brought forward."""
        self.last_event: str | None = None

    def close(self) -> None:
        self._session.close()
        if self._traps is not None:
            self._traps.close()

    async def pause(self, delay_s: float) -> None:
        """Wait ``delay_s`` before the next read, or less: a recognised trap that came
        since the last read began ends the wait, no sooner than ``traps.confirm_gap_s``
        after the last read a trap brought forward (a flood of traps wakes the poll at
        that rate at most; a read in the meantime is one the traps share)."""
        loop = asyncio.get_running_loop()
        if self._traps is None:
            await asyncio.sleep(delay_s)
            return
        try:
            async with asyncio.timeout_at(loop.time() + delay_s):
                await self._woken.wait()
                wake = self._confirmed_at + self._traps.traps.confirm_gap_s
                if wake > loop.time():
                    await asyncio.sleep(wake - loop.time())
        except TimeoutError:
            return
        self._confirmed_at = loop.time()
        self.confirms += 1

    def trap_status(self) -> dict[str, Any] | None:
        """The trap listener's state and counts; None without ``traps``."""
        if self._traps is None:
            return None
        return {
            "listen": self._traps.traps.listen,
            "listening": self._traps.listening,
            "error": self._listen_error,
            "confirms": self.confirms,
            "last_event": self.last_event,
            **self._traps.counts(),
        }

    def _trap(self, event: str) -> None:
        self.last_event = event
        self._woken.set()

    async def read(self) -> Reading:
        self._woken.clear()  # this read answers every trap heard so far
        if self._traps is not None and not self._traps.listening:
            await self._listen(self._traps)
        values = await self._get()
        return to_reading(values, self._config.sensor, self._origin)

    async def _get(self) -> dict[str, int]:
        binds = await self._session.request(hlapi.get_cmd, self._binds, list(OIDS))
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

    async def _listen(self, traps: TrapListener) -> None:
        """Start hearing traps; a failure (port in use, no permission for port 162) is
        logged once and retried with backoff. Polling goes on regardless."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._listen_at:
            return
        config = self._config
        try:
            community: str | None = None
            if config.traps is not None and config.traps.community_file is not None:
                community = self._secret(config.traps.community_file, "traps.community")
            elif config.traps is not None and config.traps.community is not None:
                community = config.traps.community
            elif config.version == "2c":
                community = snmpaccess.credentials(self._config, SourceError).communityName
            user = (
                snmpaccess.credentials(self._config, SourceError) if config.version == "3" else None
            )
            async with asyncio.timeout(LISTEN_TIMEOUT_S):  # a name lookup that hangs
                await traps.open(config.host, community, user)
        except TimeoutError:
            where = f"{self._origin}: traps: {config.host!r}"
            self._listen_failed(loop.time(), f"{where} not resolved in {LISTEN_TIMEOUT_S:g} s")
            return
        except (TrapError, SourceError) as err:
            self._listen_failed(loop.time(), str(err))
            return
        self._listen_backoff.delay(True)
        self._listen_error = None
        log.info("traps_listening", source=self.name, listen=traps.traps.listen)

    def _listen_failed(self, now: float, error: str) -> None:
        self._listen_at = now + self._listen_backoff.delay(False)
        if error != self._listen_error:
            log.warning("traps_not_heard", source=self.name, error=error)
        self._listen_error = error

    def _secret(self, path: str, what: str) -> str:
        try:
            return read_secret(path, f"{self._origin}: {what}_file")
        except SecretError as err:
            raise SourceError(str(err)) from None
