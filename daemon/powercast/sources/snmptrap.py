"""SNMP notifications from a UPS's agent: a trap or inform wakes the snmp source's poll.

A trap says something happened; the GET that follows says what is true now. A trap
never changes a reading: a recognised one from the configured agent, with good
credentials, makes the source's poller read at once (those reads at least
``traps.confirm_gap_s`` apart, however many traps come), and the regular poll keeps the
truth in between: UPS-MIB has no "back on mains" trap, and traps are lost like any UDP.

=====================================  ====================================  =============
notification                           snmpTrapOID (v1: enterprise.0.N)      event
=====================================  ====================================  =============
UPS-MIB upsTrapOnBattery               1.3.6.1.2.1.33.2.1                    on_battery
UPS-MIB upsTrapAlarmEntryAdded /       1.3.6.1.2.1.33.2.3 / .2.4, by its     on_battery /
Removed                                upsAlarmDescr: OnBattery (.6.3.2),    low_battery /
                                       LowBattery (.3), DepletedBattery      comm_lost;
                                       (.4), CommunicationsLost (.20)        removed: restored,
                                                                             comm_restored
PowerNet communicationLost             1.3.6.1.4.1.318.0.1                   comm_lost
PowerNet upsOnBattery                  1.3.6.1.4.1.318.0.5                   on_battery
PowerNet lowBattery                    1.3.6.1.4.1.318.0.7                   low_battery
PowerNet communicationEstablished      1.3.6.1.4.1.318.0.8                   comm_restored
PowerNet powerRestored,                1.3.6.1.4.1.318.0.9, .0.11            restored
returnFromLowBattery
=====================================  ====================================  =============

Anything else from the agent is counted as ``other`` and wakes nothing. Dropped and
counted, by reason: ``unknown_sender`` (not from one of the agent's addresses) and
``rate_limited`` (beyond ``traps.max_per_s``), both before any decoding, so a flood costs
an address check a datagram; then pysnmp's own standard counters (RFC 3418, RFC 3414):
``bad_community``, ``unknown_user``, ``unknown_engine_id`` (also counts an inform
sender's normal discovery), ``wrong_digest``, ``decryption_error``,
``not_in_time_window``, ``unsupported_sec_level``, ``parse_error``, ``bad_version``.
Informs are acknowledged by pysnmp once they pass.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from typing import Any, Final

from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config as snmp_config
from pysnmp.entity import engine as snmp_engine
from pysnmp.entity.rfc3413 import ntfrcv
from pysnmp.error import PySnmpError
from pysnmp.proto.api import v2c

from powercast.config import SnmpTraps, udp_address

TRAP_OID: Final = "1.3.6.1.6.3.1.1.4.1.0"  # SNMPv2-MIB::snmpTrapOID.0
UPS_TRAPS: Final = "1.3.6.1.2.1.33.2"
ALARM_ADDED: Final = f"{UPS_TRAPS}.3"
ALARM_REMOVED: Final = f"{UPS_TRAPS}.4"
ALARM_DESCR: Final = "1.3.6.1.2.1.33.1.6.2.1.2."  # upsAlarmDescr.<upsAlarmId>
WELL_KNOWN: Final = "1.3.6.1.2.1.33.1.6.3"  # upsWellKnownAlarms
APC: Final = "1.3.6.1.4.1.318.0"  # PowerNet-MIB traps (enterprise apc, v1 specific N)

EVENTS: Final = {
    f"{UPS_TRAPS}.1": "on_battery",
    f"{APC}.1": "comm_lost",
    f"{APC}.5": "on_battery",
    f"{APC}.7": "low_battery",
    f"{APC}.8": "comm_restored",
    f"{APC}.9": "restored",
    f"{APC}.11": "restored",
}
ALARMS: Final = {  # upsAlarmDescr value -> (event when added, event when removed)
    f"{WELL_KNOWN}.2": ("on_battery", "restored"),
    f"{WELL_KNOWN}.3": ("low_battery", "restored"),
    f"{WELL_KNOWN}.4": ("low_battery", "restored"),
    f"{WELL_KNOWN}.20": ("comm_lost", "comm_restored"),
}
RECOGNISED: Final = ("on_battery", "low_battery", "restored", "comm_lost", "comm_restored")

_ENGINE_COUNTERS: Final = {  # reason -> (MIB module, object) kept by pysnmp
    "bad_community": ("__SNMPv2-MIB", "snmpInBadCommunityNames"),
    "unknown_user": ("__SNMP-USER-BASED-SM-MIB", "usmStatsUnknownUserNames"),
    "unknown_engine_id": ("__SNMP-USER-BASED-SM-MIB", "usmStatsUnknownEngineIDs"),
    "wrong_digest": ("__SNMP-USER-BASED-SM-MIB", "usmStatsWrongDigests"),
    "decryption_error": ("__SNMP-USER-BASED-SM-MIB", "usmStatsDecryptionErrors"),
    "not_in_time_window": ("__SNMP-USER-BASED-SM-MIB", "usmStatsNotInTimeWindows"),
    "unsupported_sec_level": ("__SNMP-USER-BASED-SM-MIB", "usmStatsUnsupportedSecLevels"),
    "parse_error": ("__SNMPv2-MIB", "snmpInASNParseErrs"),
    "bad_version": ("__SNMPv2-MIB", "snmpInBadVersions"),
}


def classify(var_binds: dict[str, str]) -> str | None:
    """The event a notification means (see the table), from its varbinds as dotted
    OID -> value text; None for one not recognised."""
    trap = var_binds.get(TRAP_OID)
    if trap in EVENTS:
        return EVENTS[trap]
    if trap in (ALARM_ADDED, ALARM_REMOVED):
        for oid, value in var_binds.items():
            if oid.startswith(ALARM_DESCR) and value in ALARMS:
                return ALARMS[value][trap == ALARM_REMOVED]
    return None


def normal_address(text: str) -> str:
    """An IP address as compared with the agent's: IPv4-mapped IPv6 as plain IPv4."""
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class TrapGate:
    """Which datagrams reach the decoder: those from the agent's addresses, at most
    ``max_per_s`` a second (a token bucket holding one second's worth). Pure: the
    caller passes the time."""

    def __init__(self, senders: frozenset[str], max_per_s: int) -> None:
        self.senders = senders
        self.rate = float(max_per_s)
        self._tokens = self.rate
        self._at: float | None = None
        self.dropped = {"unknown_sender": 0, "rate_limited": 0}

    def admit(self, sender: str, now: float) -> bool:
        if normal_address(sender) not in self.senders:
            self.dropped["unknown_sender"] += 1
            return False
        if self._at is not None:
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            self.dropped["rate_limited"] += 1
            return False
        self._tokens -= 1.0
        return True


class TrapError(Exception):
    """The listener could not start; ``str()`` names the address and why."""


class _GatedUdp(udp.UdpTransport):  # type: ignore[misc]  # pysnmp is untyped
    gate: TrapGate

    def datagram_received(self, datagram: bytes, transportAddress: Any) -> None:
        if self.gate.admit(transportAddress[0], self.loop.time()):
            super().datagram_received(datagram, transportAddress)


class _GatedUdp6(udp6.Udp6Transport):  # type: ignore[misc]  # pysnmp is untyped
    gate: TrapGate

    def datagram_received(self, datagram: bytes, transportAddress: Any) -> None:
        if self.gate.admit(transportAddress[0], self.loop.time()):
            super().datagram_received(datagram, transportAddress)


class TrapListener:
    """One pysnmp notification receiver on ``traps.listen`` for one agent.

    ``on_event(event)`` is called on the event loop for each recognised notification
    that passed the gate and the credentials. Counts are kept per event and per reason
    a datagram was dropped (:meth:`counts`).
    """

    def __init__(self, origin: str, traps: SnmpTraps, on_event: Callable[[str], None]) -> None:
        self.origin = origin
        self.traps = traps
        self.on_event = on_event
        self.events = dict.fromkeys((*RECOGNISED, "other"), 0)
        self.gate = TrapGate(frozenset(), traps.max_per_s)
        self._engine: Any = None

    async def open(self, agent_host: str, community: str | None, user: Any | None) -> None:
        """Bind and start hearing: ``community`` for v1/v2c, ``user`` (an hlapi
        UsmUserData) for v3; each may be None. Raises :class:`TrapError`."""
        host, port = udp_address(self.traps.listen, "listen", 162)
        where = f"{self.origin}: traps.listen {self.traps.listen}"
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(agent_host, None, type=socket.SOCK_DGRAM)
        except OSError as err:
            raise TrapError(f"{self.origin}: cannot resolve {agent_host!r}: {err}") from None
        self.gate.senders = frozenset(normal_address(str(info[4][0])) for info in infos)
        eng = snmp_engine.SnmpEngine()
        try:
            six = ":" in host
            transport = (_GatedUdp6 if six else _GatedUdp)(loop=loop)
            transport.gate = self.gate
            transport.open_server_mode((host, port))
            domain = udp6.DOMAIN_NAME if six else udp.DOMAIN_NAME
            snmp_config.add_transport(eng, domain, transport)
            try:
                await transport._lport  # the bind runs in a task
            except OSError as err:
                raise TrapError(f"{where}: {err.strerror or err}") from None
            if community is not None:
                snmp_config.add_v1_system(eng, "powercast-traps", community)
            if user is not None:
                engine_ids: list[Any] = [None]  # informs: our engine is authoritative
                if self.traps.engine_id is not None:  # traps: the agent's is
                    hex_id = self.traps.engine_id.removeprefix("0x")
                    engine_ids.append(v2c.OctetString(hexValue=hex_id))
                for engine_id in engine_ids:
                    snmp_config.add_v3_user(
                        eng,
                        user.userName,
                        user.authentication_protocol,
                        getattr(user, "authentication_key", None),
                        user.privacy_protocol,
                        getattr(user, "privacy_key", None),
                        securityEngineId=engine_id,
                    )
            ntfrcv.NotificationReceiver(eng, self._received)
        except PySnmpError as err:
            eng.close_dispatcher()
            raise TrapError(f"{where}: {err}") from None
        except BaseException:
            eng.close_dispatcher()
            raise
        self._engine = eng

    @property
    def listening(self) -> bool:
        return self._engine is not None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None

    def counts(self) -> dict[str, Any]:
        """Events heard, and datagrams dropped by reason."""
        dropped = dict(self.gate.dropped)
        if self._engine is not None:
            builder = self._engine.get_mib_builder()
            for reason, (module, name) in _ENGINE_COUNTERS.items():
                (counter,) = builder.import_symbols(module, name)
                dropped[reason] = int(counter.syntax)
        return {"events": dict(self.events), "dropped": dropped}

    def _received(
        self,
        _engine: Any,
        _state: Any,
        _context_engine: Any,
        _context: Any,
        var_binds: Any,
        _cb: Any,
    ) -> None:
        binds = {str(oid): _text(value) for oid, value in var_binds}
        event = classify(binds)
        self.events[event or "other"] += 1
        if event is not None:
            self.on_event(event)


def _text(value: Any) -> str:
    try:
        return str(value.prettyPrint())
    except Exception:  # a value pysnmp cannot print is just not matched
        return ""
