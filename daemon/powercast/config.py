"""Configuration: the TOML schema of both roles, loading, and errors an operator can act on.

A config is decoded straight into frozen msgspec structs, so a loaded config is always a
valid one. Every error names the file, the key path, what was expected and the value
found there, e.g.::

    /etc/powercast/controller.toml: policy.temp_high_c: expected a number, got "hot"

No I/O beyond reading the one file; the daemons decide what to do with a ConfigError
(refuse to start, or keep the running config on reload). ``host_problems`` is apart: it
asks this host for what a config names (interfaces, addresses, programs), for
`config check`.
"""

from __future__ import annotations

import enum
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import socket
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from powercast import net, wire
from powercast.errors import EX_CONFIG, PowercastError
from powercast.states import State

DEFAULT_PATHS: Final = {
    "publisher": Path("/etc/powercast/publisher.toml"),
    "controller": Path("/etc/powercast/controller.toml"),
    "relay": Path("/etc/powercast/relay.toml"),
}


def _wire_max(field: str) -> float:
    """The upper bound wire.py puts on an announcement field."""
    hint = typing.get_type_hints(wire.Announcement, include_extras=True)[field]
    bound = typing.get_args(hint)[1].le
    assert isinstance(bound, int | float)
    return float(bound)


MAX_TAL_S: Final = _wire_max("tal")
"""The longest time-allowed-to-live an announcement can carry (docs/wire-format.md)."""

Role = Literal["publisher", "controller", "relay"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["auto", "console", "logfmt", "json", "journal"]
PowerStatusName = Literal["online", "on_battery", "low_battery", "unknown"]

Timeout = Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)]
"""How long a program, request or connection may take: finite (not inf or nan), at most an
hour, so a hung action cannot hold back the ones after it for ever."""
Interval = Annotated[float, msgspec.Meta(gt=0.0, le=86_400.0)]
"""How often a source is read: finite, at most a day."""
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Argv = Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]
PublisherId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*\Z")
]
SensorName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*\Z")
]
Celsius = Annotated[float, msgspec.Meta(ge=-273.15, le=1000.0)]


class _Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every table: unknown keys are errors, not silently ignored typos."""


class Network(_Table, frozen=True):
    """Where announcements travel. ``interface`` is a name (eth0) or one of its addresses."""

    group: str = "239.1.1.1"
    """The multicast group, IPv4 or IPv6; 239.0.0.0/8 stays inside the organisation."""
    port: Port = 5001
    """The UDP port of the group."""
    interface: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    """Send and join on this interface, by name or address: the control network (the
    default, loopback, reaches no other host)."""

    def __post_init__(self) -> None:
        try:
            multicast = ipaddress.ip_address(self.group).is_multicast
        except ValueError:
            multicast = False
        if not multicast:
            raise ValueError(
                f"group: expected an IPv4 or IPv6 multicast address such as 239.1.1.1,"
                f" got {self.group!r}"
            )


class PublisherNetwork(Network, frozen=True):
    ttl: Annotated[int, msgspec.Meta(ge=1, le=255)] = 1
    """Multicast TTL: 1 stays on the segment; more crosses that many routers."""
    loop: bool = True
    """Deliver to listeners on this host too (a controller beside the publisher)."""
    unicast_peers: Annotated[list[str], msgspec.Meta(max_length=64)] = []
    """Also send each announcement to these "address:port" (networks that block multicast)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for peer in self.unicast_peers:
            udp_address(peer, "unicast_peers")


class ControllerNetwork(Network, frozen=True):
    unicast_listen: str = ""
    """Also take datagrams sent to this "address:port" (or address, on ``port``); empty: off."""
    kernel_filter: bool = False
    """Drop datagrams with a wrong magic or version, or (auth enforced) a key id we have no
    key for, in the kernel: a flood of them costs nothing, but they are not counted by reason."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unicast_listen:
            udp_address(self.unicast_listen, "unicast_listen", listen_port=self.port)


class RelayNetwork(Network, frozen=True):
    """The segment a relay bridges: it listens and re-sends on group, port and interface."""

    ttl: Annotated[int, msgspec.Meta(ge=1, le=255)] = 1
    """Multicast TTL of what the relay re-sends on its segment."""
    loop: bool = True
    """Let controllers on the relay's own host hear what it re-sends."""


def udp_address(text: str, key: str, listen_port: int | None = None) -> tuple[str, int]:
    """``"10.0.0.5:5001"`` or ``"[fd00::5]:5001"`` -> (address, port). To listen on
    (``listen_port`` given), a bare address means that port and ``0.0.0.0`` is allowed.
    IP addresses only: no name lookup stands between power news and the fans."""
    expected = "an IP address and port such as 10.0.0.5:5001 or [fd00::5]:5001"
    host, port = text, listen_port
    try:
        ipaddress.ip_address(text)
    except ValueError:
        host, sep, digits = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            host = ""  # an IPv6 address with a port needs brackets
        port = int(digits) if sep and digits.isdigit() and 1 <= int(digits) <= 65535 else None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if (
        address is None
        or port is None
        or address.is_multicast
        or (address.is_unspecified and listen_port is None)
    ):
        raise ValueError(f"{key}: expected {expected}, got {text!r}")
    return str(address), port


Scheme = Literal["hmac-sha256", "ed25519"]


class PublisherAuth(_Table, frozen=True):
    """How announcements are signed."""

    keys_dir: str = ""
    """Key files ``<id>.key`` (or ``<id>.private``); empty: $CREDENTIALS_DIRECTORY, else
    /etc/powercast/keys."""
    key_id: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 1
    """The key to sign with; 0 sends unsigned (only while controllers are not enforcing)."""
    scheme: Scheme = "hmac-sha256"
    """hmac-sha256: a tag made with the shared key ``<key_id>.key``; ed25519: a signature
    made with the private key ``<key_id>.private`` (receivers hold only its public key)."""


class VerifyAuth(_Table, frozen=True):
    """What a receiver (controller or relay) verifies tags with."""

    keys_dir: str = ""
    """Key files: ``<id>.key`` (hmac-sha256), ``<id>.public`` (ed25519); empty:
    $CREDENTIALS_DIRECTORY, else /etc/powercast/keys."""
    scheme: Scheme | Annotated[list[Scheme], msgspec.Meta(min_length=1, max_length=2)] = (
        "hmac-sha256"
    )
    """The tags believed: "hmac-sha256", "ed25519", or both as a list while moving from one
    to the other (only the keys of these schemes are read)."""
    publishers: dict[str, list[int]] = {}
    """Which key ids may speak for which publisher, e.g. ``{ups-a = [1], ups-b = [2]}``;
    with it, a publisher not named has no key; empty: any key for any publisher."""
    verify_rate: Annotated[float, msgspec.Meta(ge=1.0, le=100_000.0)] = 50.0
    """Ed25519 signatures checked per second for one publisher (two seconds' worth saved);
    beyond, its datagrams are dropped unchecked (over_budget) and its data goes stale."""
    source_verify_rate: Annotated[float, msgspec.Meta(ge=1.0, le=1_000_000.0)] = 1000.0
    """The same for one source address (a relay carries many publishers)."""

    @property
    def schemes(self) -> tuple[Scheme, ...]:
        """``scheme`` as a tuple."""
        return (self.scheme,) if isinstance(self.scheme, str) else tuple(self.scheme)

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, str) and len(set(self.scheme)) != len(self.scheme):
            raise ValueError(f"scheme: expected distinct schemes, got {self.scheme}")
        for publisher, ids in self.publishers.items():
            if not _PUBLISHER_ID.match(publisher) or len(publisher) > 64:
                raise ValueError(
                    "publishers: expected publisher ids of letters, digits and . _ : @ - that"
                    f" start with a letter or digit, got {json.dumps(publisher)}"
                )
            if not ids or not all(1 <= key_id <= 65535 for key_id in ids):
                raise ValueError(
                    f"publishers: expected a list of key ids from 1 to 65535 for"
                    f" {json.dumps(publisher)}, got {ids}"
                )


class ControllerAuth(VerifyAuth, frozen=True):
    """Which announcements are believed."""

    mode: Literal["enforce", "permissive", "off"] = "enforce"
    """enforce: drop unsigned or badly signed datagrams; permissive: accept, warn and count."""
    max_clock_skew_s: Annotated[float, msgspec.Meta(ge=0.0, le=86_400.0)] = 10.0
    """Drop datagrams sent further than this from our clock (replays of unseen epochs); 0: off."""


class RelayAuth(VerifyAuth, frozen=True):
    """Which datagrams a relay carries."""

    mode: Literal["enforce", "off"] = "off"
    """enforce: carry only datagrams whose tag verifies with these keys (a forgery goes
    no further); off: carry every datagram that decodes, and let controllers verify."""


class Log(_Table, frozen=True):
    """What the daemon logs, and how."""

    level: LogLevel = "info"
    """The least severe event logged."""
    format: LogFormat = "auto"
    """auto: the journal under systemd, console on a terminal, else logfmt."""


class ControlSettings(_Table, frozen=True):
    """The operator's control socket (`powercast status`, `powercast override`)."""

    socket: str = ""
    """A Unix socket path; empty: <role>.sock in $RUNTIME_DIRECTORY, else in /run/powercast."""


class MetricsSettings(_Table, frozen=True):
    """The optional Prometheus endpoint."""

    listen: str = ""
    """``host:port`` (``[::1]:9301`` for IPv6) to serve /metrics on; empty: off."""

    def __post_init__(self) -> None:
        if self.listen:
            listen_address(self.listen)


def listen_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9301"`` -> ("127.0.0.1", 9301); ``"[::1]:9301"`` -> ("::1", 9301)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535 or "[" in host:
        raise ValueError(
            f"listen: expected host:port such as 127.0.0.1:9301 or [::1]:9301, got {text!r}"
        )
    return host, int(port)


class PowerReading(_Table, frozen=True):
    """Power as a source reports it (file, command output, simulated step)."""

    status: PowerStatusName = "unknown"
    """What the UPS says of mains power; unknown fails safe."""
    charge_pct: Annotated[float, msgspec.Meta(ge=0.0, le=100.0)] | None = None
    """Battery charge in percent."""
    runtime_s: Annotated[float, msgspec.Meta(ge=0.0, le=1e9)] | None = None
    """Bounded as on the wire (docs/wire-format.md)."""
    load_pct: Annotated[float, msgspec.Meta(ge=0.0, le=1000.0)] | None = None
    """Output load in percent of the UPS's rating."""
    input_v: Annotated[float, msgspec.Meta(ge=0.0, le=100_000.0)] | None = None
    """Input (mains) voltage."""


class Reading(_Table, frozen=True):
    """What one source read: either part may be absent."""

    power: PowerReading | None = None
    temperatures: Annotated[dict[SensorName, Celsius], msgspec.Meta(max_length=24)] = {}
    """Sensor name = degrees Celsius; at most 24."""


class Step(Reading, frozen=True):
    """One point of a simulated timeline: from ``at_s`` seconds after start, read this."""

    at_s: Annotated[float, msgspec.Meta(ge=0.0, le=1e9)] = 0.0
    """Seconds after start; steps must come in order of at_s."""


class SimulatedSource(_Table, frozen=True, tag="simulated", tag_field="kind"):
    """A scripted timeline, for demos and drills."""

    timeline: Annotated[list[Step], msgspec.Meta(min_length=1)]
    repeat: bool = False
    """Start again from the first step after the last."""
    interval_s: Interval = 0.1
    """How often the timeline is looked at."""

    def __post_init__(self) -> None:
        times = [step.at_s for step in self.timeline]
        if times != sorted(times):
            raise ValueError(f"timeline: expected steps in order of at_s, got at_s {times}")


class FileSource(_Table, frozen=True, tag="file", tag_field="kind"):
    """A TOML or JSON file (by its suffix) that an operator or a test edits."""

    path: str
    """The file; a reading as in [[sources]] kind = "simulated"'s steps, less at_s."""
    interval_s: Interval = 1.0
    """How often the file is read."""


class CommandSource(_Table, frozen=True, tag="command", tag_field="kind"):
    """A program that prints one JSON reading on stdout."""

    argv: Argv
    """The program and its arguments, run without a shell."""
    interval_s: Interval = 5.0
    """How often it is run."""
    timeout_s: Timeout = 5.0
    """Killed (with its process group) after this long: the source fails."""


MIN_STATUS_INTERVAL_S: Final = 0.01
"""The fastest a NUT source asks upsd for a status: 100 requests a second."""

UpsName = Annotated[str, msgspec.Meta(min_length=1, max_length=20)]
"""A NUT UPS name; short enough that "<ups>.temperature" is a sensor name."""
Host = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
FilePath = Annotated[str, msgspec.Meta(min_length=1)]
Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
_PUBLISHER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*\Z")
_UPS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_HOST = re.compile(r"[A-Za-z0-9._:%-]+\Z")
_ENGINE_ID = re.compile(r"(0x)?([0-9A-Fa-f]{2}){5,32}\Z")
_TOKEN_TEXT = re.compile(r"[!-~]+\Z")  # printable ASCII, no spaces or quotes to escape


def _one_of(value: object, other: object, name: str, other_name: str) -> None:
    if value is not None and other is not None:
        raise ValueError(f"{name}: expected either {name} or {other_name}, got both")


def _check_host(host: str) -> None:
    if not _HOST.match(host):
        raise ValueError(f"host: expected a host name or IP address, got {host!r}")


def _check_tokens(table: object, *names: str) -> None:
    """User names and inline secrets go on protocol lines: printable ASCII, no spaces."""
    for name in names:
        value = getattr(table, name)
        if value is not None and (not _TOKEN_TEXT.match(value) or '"' in value):
            raise ValueError(
                f"{name}: expected printable ASCII without spaces or quotes,"
                " got other characters (value not shown)"
            )


class NutSource(_Table, frozen=True, tag="nut", tag_field="kind"):
    """UPSes behind a NUT upsd, read over the NUT network protocol (TCP, optional STARTTLS).

    Power comes from the first UPS named, a ``<ups>.temperature`` sensor from each.
    """

    ups: UpsName | Annotated[list[UpsName], msgspec.Meta(min_length=1, max_length=8)]
    """The UPS name upsd knows (``upsc -l``), or several (at most 8)."""
    host: Host = "127.0.0.1"
    """upsd's host name or IP address."""
    port: Port = 3493
    """upsd's TCP port."""
    username: Secret | None = None
    """Sent to upsd when set (upsd checks it only at LOGIN, which powercast never sends)."""
    password: Secret | None = None
    """The password, inline; prefer password_file."""
    password_file: FilePath | None = None
    """A file holding the password on its first line; others must not be able to read it."""
    tls: Literal["off", "try", "required"] = "off"
    """STARTTLS: "try" uses it if upsd has it configured, "required" refuses plain text."""
    ca_file: FilePath | None = None
    """CA certificates (PEM) that upsd's certificate must chain to; default: the system's."""
    interval_s: Interval = 1.0
    """How often every variable of every UPS is read."""
    status_interval_s: Interval = 0.05
    """How often, between those, the first UPS's ups.status is asked (one short request on
    the kept connection): a change of power is announced this long after upsd knows it.
    At least 0.01 s; at or above interval_s only full reads are made."""
    timeout_s: Timeout = 2.0
    """For the connection and for each request."""

    @property
    def ups_names(self) -> list[str]:
        return [self.ups] if isinstance(self.ups, str) else list(self.ups)

    def __post_init__(self) -> None:
        names = self.ups_names
        for name in names:
            if not _UPS_NAME.match(name):
                raise ValueError(
                    f"ups: expected UPS names of letters, digits and . _ - that start with a"
                    f" letter or digit, got {name!r}"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"ups: expected distinct UPS names, got {names}")
        if self.status_interval_s < MIN_STATUS_INTERVAL_S:
            raise ValueError(
                f"status_interval_s: expected at least {MIN_STATUS_INTERVAL_S:g} s (each is a"
                f" request to upsd), got {self.status_interval_s!r}"
            )
        _check_host(self.host)
        _check_tokens(self, "username", "password")
        _one_of(self.password, self.password_file, "password", "password_file")
        has_password = self.password is not None or self.password_file is not None
        if has_password and self.username is None:
            raise ValueError("username: expected a user name to go with the password, got none")


class HwmonSource(_Table, frozen=True, tag="hwmon", tag_field="kind"):
    """Temperatures the kernel exposes: /sys/class/hwmon/*/temp*_input (sensor
    ``<name>.<label>``, or ``<name>.temp<N>`` without a label) and
    /sys/class/thermal/thermal_zone*/temp (sensor ``<type>``)."""

    sensors: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=128)]],
        msgspec.Meta(min_length=1),
    ] = msgspec.field(default_factory=lambda: ["*"])
    """Sensor names or globs (``coretemp.*``); each must match at least one sensor."""
    rename: dict[str, SensorName] = {}
    """Announce a sensor under another name: ``{"coretemp.Package_id_0" = "cpu"}``."""
    root: FilePath = "/"
    """Where sysfs is mounted, less ``sys/``: tests point it at a tree of their own."""
    interval_s: Interval = 2.0
    """How often the sensors are read."""


class SnmpTraps(_Table, frozen=True):
    """Notifications (traps, informs) from the UPS's agent. Each one recognised wakes the
    source's poll at once: the GET that follows decides, never the trap itself."""

    listen: str = "0.0.0.0:162"
    """IP address and UDP port to receive on (a bare address: port 162, which needs root
    or CAP_NET_BIND_SERVICE)."""
    community: Secret | None = None
    """v1/v2c notifications: their community; default: the source's (v2c only)."""
    community_file: FilePath | None = None
    """The same, from a file's first line; others must not be able to read it."""
    engine_id: str | None = None
    """SNMPv3 traps: the agent's snmpEngineID in hex; without it, only v3 informs are heard."""
    confirm_gap_s: Annotated[float, msgspec.Meta(ge=0.0, le=60.0)] = 0.1
    """Trap-triggered GETs are at least this far apart; the traps in between share one."""
    max_per_s: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 50
    """Datagrams from the agent decoded per second; beyond, dropped and counted."""

    def __post_init__(self) -> None:
        udp_address(self.listen, "listen", 162)
        if self.engine_id is not None and not _ENGINE_ID.match(self.engine_id):
            raise ValueError(
                "engine_id: expected the agent's snmpEngineID, 5 to 32 bytes in hex such as"
                f" 8000000001020304, got {self.engine_id!r}"
            )
        _check_tokens(self, "community")
        _one_of(self.community, self.community_file, "community", "community_file")


class SnmpAccess(_Table, frozen=True):
    """How to reach an SNMP agent, v2c or v3: shared by the snmp source and actuator."""

    host: Host
    """The agent's host name or IP address."""
    port: Port = 161
    """The agent's UDP port."""
    version: Literal["2c", "3"] = "2c"
    """SNMP v2c (a community) or v3 (a user, with authentication and privacy)."""
    community: Secret | None = None
    """The v2c community, inline; prefer community_file."""
    community_file: FilePath | None = None
    """A file holding the v2c community on its first line; others must not be able to read it."""
    user: Secret | None = None
    """SNMPv3 user name."""
    auth_protocol: Literal["none", "md5", "sha", "sha224", "sha256", "sha384", "sha512"] = "sha"
    """SNMPv3 authentication."""
    auth_key: Secret | None = None
    """SNMPv3 authentication key (at least 8 characters), inline; prefer auth_key_file."""
    auth_key_file: FilePath | None = None
    """A file holding the authentication key on its first line, not readable by others."""
    priv_protocol: Literal["none", "des", "aes", "aes192", "aes256"] = "aes"
    """SNMPv3 privacy (encryption); needs the cryptography package."""
    priv_key: Secret | None = None
    """SNMPv3 privacy key (at least 8 characters), inline; prefer priv_key_file."""
    priv_key_file: FilePath | None = None
    """A file holding the privacy key on its first line, not readable by others."""
    context: Annotated[str, msgspec.Meta(max_length=32)] = ""
    """SNMPv3 context name; most agents serve their MIBs in the default, empty one."""
    timeout_s: Timeout = 1.0
    """For each try of a request."""
    retries: Annotated[int, msgspec.Meta(ge=0, le=5)] = 1
    """Tries after the first, each within timeout_s."""

    def __post_init__(self) -> None:
        _check_host(self.host)
        _check_tokens(self, "community", "user", "auth_key", "priv_key")
        _one_of(self.community, self.community_file, "community", "community_file")
        _one_of(self.auth_key, self.auth_key_file, "auth_key", "auth_key_file")
        _one_of(self.priv_key, self.priv_key_file, "priv_key", "priv_key_file")
        if self.version == "2c":
            if self.community is None and self.community_file is None:
                raise ValueError(
                    "community: expected community or community_file for version 2c, got neither"
                )
            return
        if self.user is None:
            raise ValueError("user: expected an SNMPv3 user name for version 3, got none")
        if self.auth_protocol == "none" and self.priv_protocol != "none":
            raise ValueError(
                f'priv_protocol: expected "none" when auth_protocol is "none",'
                f" got {self.priv_protocol!r}"
            )
        for proto, key, key_file, name in (
            (self.auth_protocol, self.auth_key, self.auth_key_file, "auth_key"),
            (self.priv_protocol, self.priv_key, self.priv_key_file, "priv_key"),
        ):
            if proto != "none" and key is None and key_file is None:
                raise ValueError(f"{name}: expected {name} or {name}_file, got neither")
            if key is not None and len(key) < 8:
                raise ValueError(f"{name}: expected at least 8 characters, got {len(key)}")

    def secret_files(self) -> list[tuple[str, str]]:
        """(key, path) of each secret kept in a file."""
        keys = ("community_file", "auth_key_file", "priv_key_file")
        return [(key, path) for key in keys if (path := getattr(self, key)) is not None]


class SnmpSource(SnmpAccess, frozen=True, tag="snmp", tag_field="kind"):
    """A UPS's SNMP agent, read with the standard UPS-MIB (RFC 1628), v2c or v3."""

    sensor: SensorName = "ups.battery"
    """The name under which upsBatteryTemperature is announced."""
    interval_s: Interval = 1.0
    """How often the agent is read (a trap brings the next read forward)."""
    traps: SnmpTraps | None = None
    """Listen for the agent's traps and informs (absent: poll only)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.version == "2c" and self.traps is not None and self.traps.engine_id is not None:
            raise ValueError(
                'traps: expected engine_id only with version = "3" (SNMPv3 traps), got'
                f' engine_id = "{self.traps.engine_id}" with version = "2c"'
            )


Source = SimulatedSource | FileSource | CommandSource | NutSource | HwmonSource | SnmpSource


def host_id() -> str:
    """This host's name, trimmed to what an id on the group may hold (a publisher's, a
    pinging node's); empty when nothing of it is left."""
    return re.sub(r"[^A-Za-z0-9._:@-]", "-", socket.gethostname())[:64].lstrip("._:@-")


def _default_id() -> str:
    return host_id() or "publisher"


class PublisherConfig(_Table, frozen=True):
    """A publisher: reads its sources and announces them on the group."""

    role: Literal["publisher"] = "publisher"
    """Which daemon the file is for."""
    id: PublisherId = msgspec.field(default_factory=_default_id)
    """The publisher's id on the group: letters, digits and ``._:@-``, at most 64."""
    heartbeat_s: Annotated[float, msgspec.Meta(ge=0.05, le=3600.0)] = 1.0
    """Announce this often when nothing changes (news goes at once)."""
    tal_factor: Annotated[float, msgspec.Meta(ge=1.5, le=100.0)] = 3.0
    """Each announcement lives this many heartbeats: two may be lost before receivers go stale."""
    temp_deadband_c: Annotated[float, msgspec.Meta(ge=0.0, le=100.0)] = 0.5
    """A temperature change smaller than this is not news (announced with the next heartbeat)."""
    retransmit_first_gap_s: Annotated[float, msgspec.Meta(ge=0.001, le=10.0)] = 0.004
    """News is repeated after this gap, then at doubling gaps until the heartbeat."""
    network: PublisherNetwork = msgspec.field(default_factory=PublisherNetwork)
    auth: PublisherAuth = msgspec.field(default_factory=PublisherAuth)
    control: ControlSettings = msgspec.field(default_factory=ControlSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    sources: Annotated[list[Source], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [
            SimulatedSource(timeline=[Step(power=PowerReading(status="online"))], repeat=False)
        ]
    )
    log: Log = msgspec.field(default_factory=Log)

    def __post_init__(self) -> None:
        tal = self.heartbeat_s * self.tal_factor
        if tal > MAX_TAL_S:
            raise ValueError(
                f"tal_factor: expected heartbeat_s * tal_factor (each announcement's TAL) at"
                f" most {MAX_TAL_S:g} s, the most the wire carries, got {self.heartbeat_s:g}"
                f" * {self.tal_factor:g} = {tal:g} s"
            )
        _check_trap_ports(self.sources)


def _check_trap_ports(sources: list[Source]) -> None:
    """One trap listener hears one agent: two on one port would fight over it."""
    seen: dict[int, tuple[int, str]] = {}
    for index, source in enumerate(sources):
        if not isinstance(source, SnmpSource) or source.traps is None:
            continue
        _, port = udp_address(source.traps.listen, "listen", 162)
        if port in seen:
            first, listen = seen[port]
            raise ValueError(
                f"sources: expected each snmp source's traps on a port of its own, got"
                f" port {port} in sources[{first}] ({listen}) and sources[{index}]"
                f" ({source.traps.listen})"
            )
        seen[port] = (index, source.traps.listen)


Level = Annotated[int, msgspec.Meta(ge=0, le=100)]
"""A fan level in percent: 100 full speed (the safe one), 0 off."""
MAX_STAGES: Final = 8


class Stage(_Table, frozen=True):
    """One step of staged shedding: the fans' level once the UPS is this far gone. A stage
    names at most one of the three triggers; one without any is entered at once (after
    shed_after_s), so only the first may lack one."""

    level: Level
    """Fan level in this stage, in percent: 100 full speed, 0 off."""
    runtime_below_s: Annotated[float, msgspec.Meta(gt=0.0, le=1e9)] | None = None
    """Entered while the UPS announces less runtime left than this (seconds)."""
    charge_below_pct: Annotated[float, msgspec.Meta(gt=0.0, le=100.0)] | None = None
    """Entered while the UPS announces less battery charge than this (percent)."""
    on_battery_for_s: Annotated[float, msgspec.Meta(ge=0.0, le=86_400.0)] | None = None
    """Entered once the zone has been on battery this long (seconds, by our clock)."""
    hysteresis: Annotated[float, msgspec.Meta(ge=0.0, le=1e9)] | None = None
    """Left only once the value is this far back past the threshold, in its unit; default:
    60 s of runtime, 5 % of charge, 0 s on battery."""

    def __post_init__(self) -> None:
        named = [k for k in TRIGGERS if getattr(self, k) is not None]
        if len(named) > 1:
            raise ValueError(
                f"{named[1]}: expected one trigger per stage, got {' and '.join(named)}"
            )
        if self.hysteresis is not None and not named:
            raise ValueError(
                f"hysteresis: expected it only with runtime_below_s, charge_below_pct or"
                f" on_battery_for_s, got {self.hysteresis:g} without any"
            )

    @property
    def trigger(self) -> str | None:
        """The key this stage is entered on; None: at once."""
        return next((k for k in TRIGGERS if getattr(self, k) is not None), None)

    @property
    def threshold(self) -> float:
        key = self.trigger
        return 0.0 if key is None else float(getattr(self, key))

    @property
    def margin(self) -> float:
        """The hysteresis, with the trigger's default."""
        if self.hysteresis is not None:
            return self.hysteresis
        return TRIGGERS[self.trigger] if self.trigger else 0.0


TRIGGERS: Final[dict[str, float]] = {
    "runtime_below_s": 60.0,
    "charge_below_pct": 5.0,
    "on_battery_for_s": 0.0,
}
"""What a stage may be entered on, with each one's default hysteresis."""

Stages = Annotated[list[Stage], msgspec.Meta(max_length=MAX_STAGES)]


def check_stages(stages: list[Stage]) -> None:
    """Stages go deeper in order: levels fall, each trigger's thresholds go deeper, and a
    deeper stage's way back (its threshold and hysteresis) stays short of the shallower
    stage's way in; only the first stage may be entered at once."""
    for i, stage in enumerate(stages):
        where = f"stages[{i}]"
        if i and stage.trigger is None:
            raise ValueError(
                f"{where}.level: expected a trigger (runtime_below_s, charge_below_pct or"
                f" on_battery_for_s) on every stage but the first, got none"
            )
        if i and stage.level >= stages[i - 1].level:
            raise ValueError(
                f"{where}.level: expected less than stages[{i - 1}]'s {stages[i - 1].level}"
                f" (stages go deeper in order), got {stage.level}"
            )
        for j, before in enumerate(stages[:i]):
            key = stage.trigger
            if key is None or before.trigger != key:
                continue
            if key == "on_battery_for_s":
                ok = stage.threshold - stage.margin > before.threshold
                bound = f"more than stages[{j}]'s {before.threshold:g} plus its hysteresis"
            else:
                ok = stage.threshold + stage.margin < before.threshold
                bound = f"less than stages[{j}]'s {before.threshold:g} less its hysteresis"
            if not ok:
                raise ValueError(
                    f"{where}.{key}: expected {bound} {stage.margin:g} (thresholds must not"
                    f" overlap), got {stage.threshold:g}"
                )


class PolicySettings(_Table, frozen=True):
    """When to shed the fans and when to bring them back."""

    publishers: list[PublisherId] = []
    """Only these publisher ids count; empty: every publisher heard."""
    temp_high_c: Celsius = 35.0
    """At or above this, fans run even on battery (thermal_override)."""
    temp_hysteresis_c: Annotated[float, msgspec.Meta(ge=0.0, le=50.0)] = 3.0
    """Leave thermal_override only once this far below temp_high_c."""
    shed_after_s: Annotated[float, msgspec.Meta(ge=0.0, le=86_400.0)] = 5.0
    """Debounce: on battery this long before the fans are shed."""
    restore_after_s: Annotated[float, msgspec.Meta(ge=0.0, le=86_400.0)] = 10.0
    """Power back this long before shed fans are restored (lets the mains settle)."""
    max_tal_s: Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)] = 30.0
    """A publisher's data counts as stale after this long, whatever TAL it announces."""
    flap_window_s: Annotated[float, msgspec.Meta(gt=0.0, le=86_400.0)] = 600.0
    """The flap guard's window: sheds are counted over this long."""
    flap_max_sheds: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    """At most this many sheds per flap_window_s; beyond, the fans stay on (logged)."""
    startup_grace_s: Annotated[float, msgspec.Meta(ge=0.0, le=600.0)] = 3.0
    """At start, wait this long for data before failing safe, so a restart does not
    toggle fans that are already right."""
    stages: Stages = []
    """Staged shedding, shallowest first; empty: one stage, fans off (level 0)."""
    min_return_runtime_s: Annotated[float, msgspec.Meta(gt=0.0, le=1e9)] | None = None
    """After power returns, shed fans wait until the UPS announces this much runtime left
    (besides restore_after_s); unknown runtime does not hold them."""
    max_return_wait_s: Annotated[float, msgspec.Meta(ge=0.0, le=86_400.0)] = 1800.0
    """The longest min_return_runtime_s holds shed fans after power returns."""

    def __post_init__(self) -> None:
        check_stages(self.stages)


class ZonePolicy(_Table, frozen=True):
    """A zone's own thresholds and timers; a key left out keeps the top-level [policy]'s."""

    temp_high_c: Celsius | None = None
    """As [policy] temp_high_c, for this zone."""
    temp_hysteresis_c: Annotated[float, msgspec.Meta(ge=0.0, le=50.0)] | None = None
    """As [policy] temp_hysteresis_c, for this zone."""
    shed_after_s: Annotated[float, msgspec.Meta(ge=0.0, le=86_400.0)] | None = None
    """As [policy] shed_after_s, for this zone."""
    restore_after_s: Annotated[float, msgspec.Meta(ge=0.0, le=86_400.0)] | None = None
    """As [policy] restore_after_s, for this zone."""
    flap_window_s: Annotated[float, msgspec.Meta(gt=0.0, le=86_400.0)] | None = None
    """As [policy] flap_window_s, for this zone."""
    flap_max_sheds: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    """As [policy] flap_max_sheds, for this zone."""
    stages: Stages | None = None
    """The zone's own staged shedding (replaces the top-level stages; [] for fans off)."""
    min_return_runtime_s: Annotated[float, msgspec.Meta(gt=0.0, le=1e9)] | None = None
    """The zone's own runtime shed fans wait for after power returns."""
    max_return_wait_s: Annotated[float, msgspec.Meta(ge=0.0, le=86_400.0)] | None = None
    """The zone's own bound on that wait."""

    def __post_init__(self) -> None:
        if self.stages is not None:
            check_stages(self.stages)


class Action(_Table, frozen=True):
    """A command run on entering a state: argv without a shell, bounded by a timeout."""

    on: State
    """The state whose entry runs the command."""
    argv: Argv
    """The program and its arguments, run without a shell."""
    timeout_s: Timeout = 10.0
    """Killed (with its process group) after this long; the next action runs."""


class CommandActuator(_Table, frozen=True, tag="command", tag_field="kind"):
    """Fans switched by programs: one to turn them on, one to turn them off (off only at
    level 0: any level above runs them)."""

    on_argv: Argv
    """The program that turns the fans on (full speed), run without a shell."""
    off_argv: Argv
    """The program that turns the fans off, run without a shell."""
    verify_argv: Argv | None = None
    """Prints "on" or "off": the real position. Without it, success of the last command counts."""
    timeout_s: Timeout = 10.0
    """Each program is killed (with its process group) after this long: the step failed."""
    ok_exit_codes: list[int] = msgspec.field(default_factory=lambda: [0])
    """Exit codes that mean the program did its job."""


class HwmonActuator(_Table, frozen=True, tag="hwmon", tag_field="kind"):
    """A fan PWM in sysfs, e.g. /sys/class/hwmon/hwmon2/pwm1; verified by reading back."""

    path: str
    """The PWM file, e.g. /sys/class/hwmon/hwmon2/pwm1."""
    on_value: Annotated[int, msgspec.Meta(ge=0, le=255)] = 255
    """The PWM value at full speed (level 100 %); a level between is interpolated."""
    off_value: Annotated[int, msgspec.Meta(ge=0, le=255)] = 0
    """The PWM value with the fans off (level 0 %)."""
    enable_path: str | None = None
    """pwmN_enable: written with enable_value (1 = manual) before the first write."""
    enable_value: int = 1
    """Written to enable_path once, before the first write (1: manual control)."""


Refresh = Annotated[float, msgspec.Meta(ge=0.1, le=3600.0)]
"""A device-side lease: the position is written again this often even when it is known to
be right, so a device with its own watchdog (a BMS timeout that returns it to fans on when
no write comes) stays where the controller put it only while the controller runs. Must be
well below the device's timeout (a third of it leaves room for a failed write and a retry);
a dead controller host then ends the shedding by the device's own timeout."""


class ModbusActuator(_Table, frozen=True, tag="modbus", tag_field="kind"):
    """A coil or holding register on a Modbus TCP device (a fan drive); verified by reading back."""

    host: str
    """The device's host name or IP address."""
    port: Port = 502
    """The device's Modbus TCP port."""
    unit: Annotated[int, msgspec.Meta(ge=0, le=255)] = 1
    """The Modbus unit (slave) id."""
    coil: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    """A coil: on is 1, off is 0. Exactly one of coil or register."""
    register: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    """A holding register, written with on_value, off_value or a level between."""
    on_value: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 1
    """The register's value at full speed (level 100 %); a level between is interpolated.
    A coil is on at every level but 0."""
    off_value: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    """The register's value with the fans off (level 0 %)."""
    timeout_s: Timeout = 3.0
    """For the connection and for each request."""
    refresh_s: Refresh | None = None
    """Re-write the position this often, for a device with its own timeout (see Refresh)."""

    def __post_init__(self) -> None:
        if (self.coil is None) == (self.register is None):
            got = "neither" if self.coil is None else "both"
            raise ValueError(f"coil: expected exactly one of coil or register, got {got}")


BacnetObjectType = Literal["binary-output", "binary-value", "analog-output", "analog-value"]
BACNET_MAX_INSTANCE: Final = 4_194_302
"""The highest object instance number (4194303 means "none" in BACnet)."""


class BacnetActuator(_Table, frozen=True, tag="bacnet", tag_field="kind"):
    """A binary or analog output or value on a BACnet/IP device (a CRAC unit, an air
    handler), commanded at one slot of its priority array; verified by reading back."""

    host: Host
    """The device's IPv4 address (BACnet/IP)."""
    object: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    """Object type and instance: "binary-output,3", "binary-value,1", "analog-output,2",
    "analog-value,7"."""
    port: Port = 47808
    """The device's BACnet/IP UDP port (0xBAC0)."""
    priority: Annotated[int, msgspec.Meta(ge=1, le=16)] = 8
    """The priority array slot written (1 highest .. 16 lowest; 6 is reserved for minimum
    on/off time). The BMS's own commands at lower numbers win over ours."""
    on: Literal["write", "relinquish"] = "write"
    """Fans on: "write" writes on_value at our priority; "relinquish" writes NULL there, so
    the BMS's own schedule (lower-priority slots, relinquish-default) decides again."""
    on_value: float | None = None
    """Present value for fans on (level 100 %): 1 (active, the default) for binary objects;
    for analog ones it must be given (e.g. 100.0 for a speed in percent) unless on =
    "relinquish". An analog object takes a level between scaled linearly."""
    off_value: float = 0.0
    """Present value for fans off (level 0 %): 0 (inactive) for binary objects, which are
    on at every level but 0."""
    local: str = "0.0.0.0:0"
    """IPv4 address and UDP port to send from; port 0 takes a free one (answers come back
    to it). Use :47808 only when the device answers to that port alone."""
    local_device: Annotated[int, msgspec.Meta(ge=0, le=BACNET_MAX_INSTANCE)] = 4_194_302
    """The device instance this controller presents itself as."""
    timeout_s: Timeout = 3.0
    """For each request (write, read back): no retries, the worker retries with backoff."""
    refresh_s: Refresh | None = None
    """Re-write the position this often, for a device with its own timeout (see Refresh)."""

    def __post_init__(self) -> None:
        bacnet_object(self.object)
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            address = None
        if not isinstance(address, ipaddress.IPv4Address) or address.is_unspecified:
            raise ValueError(
                f"host: expected the device's IPv4 address (BACnet/IP), got {self.host!r}"
            )
        if self.priority == 6:
            raise ValueError(
                "priority: expected 1..5 or 7..16 (6 is reserved for minimum on/off time), got 6"
            )
        binary = self.object.startswith("binary")
        if binary:
            for key in ("on_value", "off_value"):
                if getattr(self, key) not in (None, 0.0, 1.0):
                    raise ValueError(
                        f"{key}: expected 0 (inactive) or 1 (active) for a binary object,"
                        f" got {getattr(self, key)!r}"
                    )
        elif self.on_value is None and self.on == "write":
            raise ValueError(
                f"on_value: expected the present value for fans on (e.g. 100.0) for"
                f" {self.object}, got none"
            )
        if self.fans_on_value == self.off_value:
            raise ValueError(
                f"off_value: expected a value other than on_value, got {self.off_value!r} for both"
            )
        host, sep, port = self.local.rpartition(":")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            sep = ""
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError(
                f"local: expected an IPv4 address and port such as 0.0.0.0:0 or"
                f" 10.0.0.5:47808, got {self.local!r}"
            )

    @property
    def fans_on_value(self) -> float:
        """on_value, or its default: 1 (active) for binary objects, 100 for analog ones
        (then only read back, in relinquish mode)."""
        if self.on_value is not None:
            return self.on_value
        return 1.0 if self.object.startswith("binary") else 100.0


def bacnet_object(text: str) -> tuple[str, int]:
    """``"binary-output,3"`` -> ("binary-output", 3)."""
    kind, sep, number = text.partition(",")
    kind, number = kind.strip(), number.strip()
    if (
        not sep
        or kind not in typing.get_args(BacnetObjectType)
        or not number.isdigit()
        or int(number) > BACNET_MAX_INSTANCE
    ):
        raise ValueError(
            f"object: expected type,instance with type one of"
            f" {', '.join(typing.get_args(BacnetObjectType))}"
            f" and instance 0..{BACNET_MAX_INSTANCE},"
            f' such as "binary-output,3", got {text!r}'
        )
    return kind, int(number)


Oid = Annotated[str, msgspec.Meta(min_length=1, max_length=400)]
_OID = re.compile(r"\.?[0-2](\.(0|[1-9][0-9]{0,9}))+\Z")


def _check_oids(key: str, value: str | list[str]) -> None:
    for oid in [value] if isinstance(value, str) else value:
        if not _OID.match(oid) or any(int(arc) > 2**32 - 1 for arc in oid.strip(".").split(".")):
            raise ValueError(
                f"{key}: expected numeric OIDs such as 1.3.6.1.4.1.318.1.1.12.3.3.1.1.4.3"
                f" (no MIB names), got {oid!r}"
            )


class SnmpActuator(SnmpAccess, frozen=True, kw_only=True, tag="snmp", tag_field="kind"):
    """Outlets of a switched PDU (or any integer an agent takes), switched by SNMP SET and
    read back; defaults as APC's rPDUOutletControlOutletCommand (1 on, 2 off)."""

    oid: Oid | Annotated[list[Oid], msgspec.Meta(min_length=1, max_length=32)]
    """The OID written, or several (an outlet group): all in one SET request."""
    status_oid: Oid | Annotated[list[Oid], msgspec.Meta(min_length=1, max_length=32)] | None = None
    """Read back here instead (one per oid), e.g. rPDUOutletStatusOutletState."""
    on_value: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] = 1
    """Written for fans on (every level but 0), and read back as on (APC: 1, immediateOn)."""
    off_value: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] = 2
    """Written for fans off (level 0), and read back as off (APC: 2, immediateOff)."""
    refresh_s: Refresh | None = None
    """Re-write the position this often, for a device with its own timeout (see Refresh)."""

    @property
    def oids(self) -> list[str]:
        return [self.oid] if isinstance(self.oid, str) else list(self.oid)

    @property
    def status_oids(self) -> list[str]:
        if self.status_oid is None:
            return self.oids
        return [self.status_oid] if isinstance(self.status_oid, str) else list(self.status_oid)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_oids("oid", self.oid)
        if self.status_oid is not None:
            _check_oids("status_oid", self.status_oid)
            if len(self.status_oids) != len(self.oids):
                raise ValueError(
                    f"status_oid: expected one per oid ({len(self.oids)}),"
                    f" got {len(self.status_oids)}"
                )
        if self.on_value == self.off_value:
            raise ValueError(
                f"off_value: expected a value other than on_value, got {self.off_value} for both"
            )


Actuator = CommandActuator | HwmonActuator | ModbusActuator | BacnetActuator | SnmpActuator
ZoneName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")
]


class Zone(_Table, frozen=True):
    """A fan group with its own sources, rules, state machine and actuators."""

    name: ZoneName
    """The zone's name in logs, status, metrics and ``override --zone``."""
    publishers: list[PublisherId] = []
    """Publishers whose power counts for this zone; empty: all (as policy.publishers)."""
    power_quorum: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """How many fresh publishers must say "on battery" (and none "online") to believe it."""
    sensors: list[Annotated[str, msgspec.Meta(min_length=1, max_length=100)]] = []
    """Globs over "publisher/sensor"; empty: every sensor of the zone's publishers."""
    temperature: Literal["max", "mean"] = "max"
    """How the zone's sensors combine; max is the safe choice."""
    policy: ZonePolicy | None = None
    """This zone's thresholds and timers, over the top-level [policy]."""
    actions: list[Action] = []
    actuators: list[Actuator] = []


class Persist(_Table, frozen=True):
    state_dir: str = ""
    """Where the controller keeps its state and actuator positions across restarts; empty:
    $STATE_DIRECTORY (systemd's StateDirectory=, e.g. /var/lib/powercast), else not kept."""


class ControllerConfig(_Table, frozen=True):
    """A controller: listens to the publishers and drives each zone's fans."""

    role: Literal["controller"] = "controller"
    """Which daemon the file is for."""
    network: ControllerNetwork = msgspec.field(default_factory=ControllerNetwork)
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    auth: ControllerAuth = msgspec.field(default_factory=ControllerAuth)
    control: ControlSettings = msgspec.field(default_factory=ControlSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    actions: list[Action] = []
    """Commands of the default zone (when no [[zones]] are given)."""
    actuators: list[Actuator] = []
    """Actuators of the default zone (when no [[zones]] are given)."""
    zones: list[Zone] = []
    persist: Persist = msgspec.field(default_factory=Persist)
    log: Log = msgspec.field(default_factory=Log)

    def __post_init__(self) -> None:
        names = [zone.name for zone in self.zones]
        if len(set(names)) != len(names):
            raise ValueError(f"zones: expected distinct zone names, got {names}")
        if self.zones and (self.actions or self.actuators):
            raise ValueError(
                "actions: expected actions and actuators inside [[zones]] when zones are"
                " given, got top-level ones too"
            )

    def policy_for(self, zone: Zone) -> PolicySettings:
        """The top-level [policy] with the zone's own keys over it."""
        own = zone.policy
        if own is None:
            return self.policy
        changes = {
            name: value
            for name in own.__struct_fields__
            if name not in ("publishers", "max_tal_s", "startup_grace_s")
            and (value := getattr(own, name)) is not None
        }
        return msgspec.structs.replace(self.policy, **changes)

    def effective_zones(self) -> list[Zone]:
        """The zones to run: as configured, or one "default" zone from the top level."""
        if self.zones:
            return self.zones
        return [
            Zone(
                name="default",
                publishers=self.policy.publishers,
                actions=self.actions,
                actuators=self.actuators,
            )
        ]


class Broker(_Table, frozen=True):
    """The MQTT broker relays meet at. It carries datagrams as they are; it is not trusted
    with them (they stay signed end to end), and it never stores them (QoS 0, no retain,
    a clean session each time)."""

    host: Host = "127.0.0.1"
    """The broker's host name or IP address."""
    port: Port = 1883
    """The broker's port (8883 is usual with tls)."""
    topic: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "powercast/announcements"
    """One topic per group: every relay of the group publishes and subscribes to it."""
    client_id: Annotated[str, msgspec.Meta(max_length=64)] = ""
    """Empty: ``powercast-relay-<host name>-<pid>``."""
    username: Secret | None = None
    """The user name the broker knows this relay by."""
    password_file: FilePath | None = None
    """A file holding the password on its first line; others must not be able to read it.
    A bare file name is looked up in systemd's $CREDENTIALS_DIRECTORY when that is set."""
    tls: bool = False
    """Speak TLS to the broker, verifying its certificate and host name."""
    ca_file: FilePath | None = None
    """CA certificates (PEM) the broker's certificate must chain to; default: the system's."""
    cert_file: FilePath | None = None
    """This relay's client certificate (PEM), for a broker that asks for one."""
    key_file: FilePath | None = None
    """The private key of cert_file (PEM); others must not be able to read it. A bare file
    name is looked up in $CREDENTIALS_DIRECTORY when that is set."""
    tls_server_name: Annotated[str, msgspec.Meta(max_length=253)] = ""
    """The name the broker's certificate must carry; empty: host (an IP address in host is
    then checked against the certificate's IP addresses)."""
    keepalive_s: Annotated[int, msgspec.Meta(ge=2, le=3600)] = 5
    """A silent broker is declared lost after about 1.5 times this."""
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0.0, le=300.0)] = 5.0
    """A connection (TLS included) not made within this long has failed."""
    reconnect_min_s: Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)] = 0.5
    """The first wait before reconnecting after a failure."""
    reconnect_max_s: Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)] = 30.0
    """Reconnect after reconnect_min_s, doubling up to reconnect_max_s while it fails."""

    def __post_init__(self) -> None:
        _check_host(self.host)
        _check_tokens(self, "username")
        if any(c in self.topic for c in "+#\0"):
            raise ValueError(f"topic: expected a topic without + # or NUL, got {self.topic!r}")
        if self.password_file is not None and self.username is None:
            raise ValueError("username: expected a user name to go with the password, got none")
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = ("cert_file", "key_file") if self.key_file is None else (
                "key_file", "cert_file")  # fmt: skip
            raise ValueError(f"{missing}: expected it to go with {given}, got none")
        if not self.tls:
            for key in ("ca_file", "cert_file", "key_file", "tls_server_name"):
                if getattr(self, key):
                    raise ValueError(f"tls: expected true to go with {key}, got false")


class RelayConfig(_Table, frozen=True):
    """A relay: the group on this segment <-> a topic on a broker, datagrams byte for byte."""

    role: Literal["relay"] = "relay"
    """Which daemon the file is for."""
    network: RelayNetwork = msgspec.field(default_factory=RelayNetwork)
    broker: Broker = msgspec.field(default_factory=Broker)
    direction: Literal["both", "to_broker", "from_broker"] = "both"
    """to_broker: only send this segment's announcements out; from_broker: only bring others in."""
    auth: RelayAuth = msgspec.field(default_factory=RelayAuth)
    control: ControlSettings = msgspec.field(default_factory=ControlSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    log: Log = msgspec.field(default_factory=Log)


Config = PublisherConfig | ControllerConfig | RelayConfig
_ROLES: Final[dict[str, type[PublisherConfig] | type[ControllerConfig] | type[RelayConfig]]] = {
    "publisher": PublisherConfig,
    "controller": ControllerConfig,
    "relay": RelayConfig,
}


class ConfigError(PowercastError):
    """A config that must not be used; ``str()`` is the line to show the operator."""

    exit_code = EX_CONFIG


def load(path: str | Path, role: Role | None = None) -> Config:
    """Read and validate ``path``. ``role=None`` takes the role from the file itself."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return parse(text, str(path), role)


def parse(text: str, origin: str, role: Role | None = None) -> Config:
    """Validate TOML ``text``; ``origin`` names it in errors."""
    if (deep := _too_deep(text)) is not None:
        raise ConfigError(f"{origin}: {deep}")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{origin}: TOML syntax error: {err}") from None
    except RecursionError:  # _too_deep should have said so; never a dead daemon
        raise ConfigError(f"{origin}: nested too deep for the TOML parser") from None
    if (nul := _nul_at(raw)) is not None:
        key = nul[0].replace("\0", "\\u0000")
        raise ConfigError(
            f"{origin}: {key}: expected text without NUL characters (no program, path or"
            f" protocol can carry one), got {_show(nul[1])}"
        )
    found = raw.get("role", role)
    if found not in _ROLES:
        raise ConfigError(
            f"{origin}: role: expected 'publisher', 'controller' or 'relay', got {_show(found)}"
            if "role" in raw or role is not None
            else f'{origin}: role: missing (expected role = "publisher", "controller" or "relay")'
        )
    if role is not None and found != role:
        raise ConfigError(f"{origin}: role: expected {role!r} here, got {found!r}")
    cls = _ROLES[found]
    try:
        return msgspec.convert(raw, type=cls, strict=True)
    except msgspec.ValidationError as err:
        raise ConfigError(f"{origin}: {explain(str(err), raw, cls)}") from None


MAX_NESTING: Final = 32
"""Arrays and inline tables nested deeper, or keys of more dotted parts, are refused before
parsing. tomllib recurses once per level of nesting (RecursionError, which would kill a
daemon reloading the file) and keeps every prefix of a dotted key (100,000 parts take
gigabytes). A real config nests three or four levels."""

_TOML_TOKEN: Final = re.compile(
    r'"""(?:\\.|[^\\])*?"""'  # multi-line basic string
    r"|'''.*?'''"  # multi-line literal string
    r'|"(?:\\.|[^"\\\n])*"'  # basic string
    r"|'[^'\n]*'"  # literal string
    r"|#[^\n]*"  # comment
    r"|[\[\]{}.=,\n]",
    re.DOTALL,
)


def _too_deep(text: str) -> str | None:
    """Why ``text`` nests too deep for the parser, naming the key and line; None if it
    does not. Strings and comments are skipped; a dot counts until ``=``, ``,``, a
    bracket or the end of the line (a float has one, a dotted key one per part)."""
    depth = dots = outermost = 0
    for token in _TOML_TOKEN.finditer(text):
        t = token[0]
        if t in ("[", "{"):
            outermost = token.start() if depth == 0 else outermost
            depth, dots = depth + 1, 0
            if depth > MAX_NESTING:
                line = text.count("\n", 0, outermost) + 1
                key, eq, _ = text[text.rfind("\n", 0, outermost) + 1 : outermost].partition("=")
                where = f"{key.strip()[:40]}: " if eq else f"line {line}: "
                return (
                    f"{where}nested too deep: expected arrays and inline tables at most"
                    f" {MAX_NESTING} levels deep, got more (from line {line})"
                )
        elif t in ("]", "}"):
            depth, dots = max(0, depth - 1), 0
        elif t == ".":
            dots += 1
            if dots > MAX_NESTING:
                line = text.count("\n", 0, token.start()) + 1
                return (
                    f"line {line}: nested too deep: expected keys of at most {MAX_NESTING}"
                    " dotted parts, got more"
                )
        elif t in ("=", ",", "\n"):
            dots = 0
    return None


def _nul_at(value: Any, path: str = "") -> tuple[str, str] | None:
    """The key path of the first string (or key) holding a NUL character, and that text."""
    if isinstance(value, str):
        return (path, value) if "\0" in value else None
    if not isinstance(value, dict | list):
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}".lstrip(".")
        if isinstance(key, str) and "\0" in key:
            return where, key
        if (found := _nul_at(item, where)) is not None:
            return found
    return None


def defaults(role: Role) -> Config:
    """The default config of ``role``, as `config init` prints it."""
    if role == "publisher":
        return PublisherConfig()
    if role == "relay":
        return RelayConfig()
    fans = "/usr/local/sbin/powercast-fans"
    return ControllerConfig(  # fans move by an actuator (reconciled); actions only notify
        actuators=[CommandActuator(on_argv=[fans, "on"], off_argv=[fans, "off"])]
    )


# --- what only this host can say (`config check`) ----------------------------------------


def host_problems(config: Config) -> list[str]:
    """What this host lacks for ``config``, one line each (key, expected, got): the
    interface and listen addresses it names, and each program (argv[0]) it runs.

    For `config check`, which fails on any (exit 78). A daemon refuses to start only on
    the network ones (net.NetworkConfigError); a missing program does not stop it, since
    a controller must still run its other actuators and fail safe. Programs are looked
    up as exec would: with a slash as given, else on the PATH a service gets."""
    problems = []
    network = config.network
    family = socket.AF_INET6 if ":" in network.group else socket.AF_INET
    listens = []
    if isinstance(config, ControllerConfig) and config.network.unicast_listen:
        address = udp_address(config.network.unicast_listen, "", listen_port=network.port)[0]
        listens.append((address, "network.unicast_listen"))
    if config.metrics.listen:
        listens.append((listen_address(config.metrics.listen)[0], "metrics.listen"))
    try:
        net.resolve_interface(network.interface, family, setting="network")
    except net.NetworkError as err:
        problems.append(str(err))
    for address, key in listens:
        try:
            net.check_local_address(address, key)
        except net.NetworkError as err:
            problems.append(str(err))
    for key, argv in _argvs(msgspec.to_builtins(config)):
        if (why := _program_problem(argv[0])) is not None:
            problems.append(
                f"{key}[0]: expected a program that exists and is executable (an absolute"
                f" path, or a name on PATH), got {_show(argv[0])}: {why}"
            )
    for key, table in _device_tables(config):
        problems.extend(_device_problems(key, table))
    return problems


def _device_tables(config: Config) -> list[tuple[str, Any]]:
    """Sources and actuators with their key paths."""
    if isinstance(config, PublisherConfig):
        return [(f"sources[{i}]", source) for i, source in enumerate(config.sources)]
    if isinstance(config, ControllerConfig):
        found = [(f"actuators[{i}]", a) for i, a in enumerate(config.actuators)]
        for z, zone in enumerate(config.zones):
            found += [(f"zones[{z}].actuators[{i}]", a) for i, a in enumerate(zone.actuators)]
        return found
    return []


def _device_problems(key: str, table: Any) -> list[str]:
    """What this host lacks for one source or actuator: a BACnet actuator's local
    address and its library, an SNMP table's secret files."""
    problems = []
    if isinstance(table, BacnetActuator):
        address = table.local.rpartition(":")[0]
        try:
            net.check_local_address(address, f"{key}.local")
        except net.NetworkError as err:
            problems.append(str(err))
        if importlib.util.find_spec("bacpypes3") is None:
            problems.append(
                f"{key}.kind: the bacnet actuator needs the bacpypes3 package, not installed"
                " here (pip install bacpypes3)"
            )
    if isinstance(table, SnmpAccess):
        for name, path in table.secret_files():
            if not os.access(path, os.R_OK):
                why = "no such file" if not os.path.exists(path) else "not readable"
                problems.append(
                    f"{key}.{name}: expected a file this user can read, got {_show(path)}: {why}"
                )
    return problems


def _argvs(value: Any, path: str = "") -> list[tuple[str, list[str]]]:
    """Every ``*argv`` list in a config's builtins, with its key path."""
    found: list[tuple[str, list[str]]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}".lstrip(".")
            if key.endswith("argv") and isinstance(item, list) and item:
                found.append((where, item))
            else:
                found.extend(_argvs(item, where))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found.extend(_argvs(item, f"{path}[{i}]"))
    return found


def _program_problem(program: str) -> str | None:
    """Why exec could not run ``program``, or None. A bare name is looked up on the PATH
    a service gets (the units set none), then on this shell's, to say why a program found
    here would not be found by the daemon."""
    if "/" not in program:
        from powercast.programs import DEFAULT_PATH  # noqa: PLC0415  # config check only

        if shutil.which(program, path=DEFAULT_PATH):
            return None
        here = shutil.which(program)
        if here is None:
            return "not found on PATH"
        return (
            f"found at {here} on this shell's PATH, not on a service's ({DEFAULT_PATH}):"
            " give its absolute path"
        )
    path = Path(program)
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "a directory"
    return None if os.access(path, os.X_OK) else "not executable"


def dumps(config: Config) -> str:
    """TOML text for ``config`` (None values, which TOML cannot hold, are left out)."""
    import tomli_w  # noqa: PLC0415  # the publisher and relay start without it

    return tomli_w.dumps(_strip_none(msgspec.to_builtins(config)))


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


# --- turning msgspec's messages into an operator's ---------------------------------------

_AT = re.compile(r"^(?P<what>.*) - at `\$(?P<path>[^`]*)`$")
_TOKEN = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]|\[\.\.\.\]")
_TYPE_WORDS = {
    "`float`": "a number",
    "`int`": "an integer",
    "`str`": "a string",
    "`bool`": "true or false",
    "`array`": "a list",
    "`object`": "a table",
    "`null`": "nothing",
}


def explain(message: str, raw: dict[str, Any], cls: type) -> str:
    """Reword msgspec's message for an operator, with the key path and the value found.

    ``Expected `float`, got `str` - at `$.policy.x``` -> ``policy.x: expected a number, got "a"``
    """
    match = _AT.match(message)
    what, path = (match["what"], match["path"]) if match else (message, "")
    tokens = list(_TOKEN.finditer(path))
    in_map = bool(tokens) and tokens[-1][0] == "[...]"  # a map value; msgspec hides its key
    keys = [m[1] if m[1] is not None else int(m[2]) for m in tokens if m[0] != "[...]"]
    dotted = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")
    value, found = _lookup(raw, keys)
    if in_map:
        dotted, found = f"{dotted}.*", False  # the message is about each value of the table

    unknown = re.match(r"Object contains unknown field `(.+)`", what)
    if unknown:
        known = _field_names(cls, raw, keys)
        where = f"{dotted}: " if dotted else ""
        hint = f" (expected one of: {', '.join(known)})" if known else ""
        return f"{where}unknown key {unknown[1]!r}{hint}"
    missing = re.match(r"Object missing required field `(.+)`", what)
    if missing:
        where = f"{dotted}.{missing[1]}" if dotted else missing[1]
        return f"{where}: missing (this key is required)"
    own = re.match(r"^([\w.\[\]]+): (expected .*, got .*)$", what)
    if own:  # raised by a __post_init__ check, which already says what it got
        return f"{dotted}.{own[1]}: {own[2]}" if dotted else f"{own[1]}: {own[2]}"
    if re.match(r"Invalid (enum )?value", what):
        options = _options(cls, raw, keys)
        if options:
            return f"{dotted}: expected one of {', '.join(map(repr, options))}, got {_show(value)}"
    text = what[0].lower() + what[1:] if what else what
    text = re.sub(r"`([^`]*)`", _type_words, text)
    text = re.sub(r", got .*$", "", text)
    text = re.sub(
        r"a string matching regex '.*'",
        "a name of letters, digits and . _ : @ - that starts with a letter or digit",
        text,
    )
    got = f", got {_show(value)}" if found else ""
    return f"{dotted or '(top level)'}: {text}{got}"


def _type_words(match: re.Match[str]) -> str:
    """``float | null`` -> "a number": an optional key is left out in TOML, never null."""
    words = [_TYPE_WORDS.get(f"`{t}`", t) for t in match[1].split(" | ") if t != "null"]
    return " or ".join(words) if words else _TYPE_WORDS["`null`"]


def _lookup(raw: Any, keys: list[str | int]) -> tuple[Any, bool]:
    value = raw
    for key in keys:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None, False
    return value, True


def _field_names(cls: type, raw: Any, keys: list[str | int]) -> list[str]:
    """The keys allowed in the table at ``keys``."""
    tp = _pick_struct(_type_at(cls, raw, keys), _lookup(raw, keys)[0])
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        names = list(tp.__struct_fields__)
        tag_field = tp.__struct_config__.tag_field
        return [tag_field, *names] if tag_field else names
    return []


def _options(cls: type, raw: Any, keys: list[str | int]) -> list[str]:
    """The values a Literal or StrEnum key (or a table's ``kind``) may take."""
    if keys and keys[-1] == "kind":  # the tag of a union of tables: its members' tags
        union = _strip(_type_at(cls, raw, keys[:-1]))
        return [str(_strip(m).__struct_config__.tag) for m in typing.get_args(union)]
    tp = _strip(_type_at(cls, raw, keys))
    if isinstance(tp, type) and issubclass(tp, enum.StrEnum):
        return [member.value for member in tp]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # "a" | ["a", "b"]
        tp = next((a for a in typing.get_args(tp) if typing.get_origin(a) is Literal), tp)
    return list(typing.get_args(tp)) if typing.get_origin(tp) is Literal else []


def _type_at(cls: type, raw: Any, keys: list[str | int]) -> Any:
    """The schema type of the key at ``keys``, found by walking the schema beside the data."""
    tp: Any = cls
    value = raw
    for key in keys:
        tp = _pick_struct(tp, value)
        if isinstance(key, int):
            tp = _element_type(tp)
        elif tp is not None and isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            hints = typing.get_type_hints(tp, include_extras=True)
            tp = hints.get(key)
        else:
            return None
        value, _ = _lookup(value, [key])
    return tp


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _element_type(tp: Any) -> Any:
    tp = _strip(tp)
    args = typing.get_args(tp)
    return args[0] if typing.get_origin(tp) is list and args else None


def _pick_struct(tp: Any, value: Any) -> Any:
    """For a union of tables (sources, optional tables), the member that ``value`` is."""
    tp = _strip(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [_strip(a) for a in typing.get_args(tp) if a is not type(None)]
        structs = [m for m in members if isinstance(m, type) and issubclass(m, msgspec.Struct)]
        if isinstance(value, dict) and "kind" in value:
            for member in structs:
                if member.__struct_config__.tag == value["kind"]:
                    return member
        if not structs and len(members) == 1:  # an optional list: ``list[...] | None``
            return members[0]
        return structs[0] if len(structs) == 1 else None
    return tp


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # quoted, control characters escaped
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)
