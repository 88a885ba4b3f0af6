"""UPSes behind a NUT upsd, read over the NUT network protocol (TCP port 3493).

A small client of our own rather than aionut or PyNUTClient: the protocol is a few
one-line commands, and we need what neither gives: STARTTLS, upsd's error codes kept
apart (``ERR DATA-STALE``, ``ERR DRIVER-NOT-CONNECTED``, the ``WAIT`` status), NUT's
quoting undone exactly, a timeout on the connection and on each request, and one
connection kept open across polls. Commands used (docs: NUT's net-protocol.txt)::

    STARTTLS             -> OK STARTTLS, then the TLS handshake; ERR FEATURE-NOT-CONFIGURED
    USERNAME u / PASSWORD p -> OK  (upsd checks the password only at LOGIN, which we never
                                    send: LOGIN would count us as a upsmon client)
    GET VAR ups name     -> VAR ups name "value"; ERR VAR-NOT-SUPPORTED if the UPS has none

One GET VAR per variable, each sent once the last is answered, rather than one LIST VAR:
upsd writes a list line by line, so with Nagle on its side and delayed ACKs on ours every
list took 44 ms on loopback; six GET VARs take well under a millisecond.

upsd has no push to clients, so between full reads (``interval_s``) only the first UPS's
``ups.status`` is asked, every ``status_interval_s`` (50 ms): a change is announced within
one such tick of upsd knowing it, for one short request each. The driver's own socket
pushes changes, but only to root or group nut on the driver's host, and without upsd's
staleness check, access control or TLS.

Every failure is a :class:`SourceError` whose message names the UPS as ``ups@host:port``
and says why; the publisher then announces power as ``unknown``.
"""

from __future__ import annotations

import asyncio
import math
import os
import shlex
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from powercast.config import NutSource, Reading
from powercast.secrets import SecretError, read_secret
from powercast.sources.base import SourceError, make_reading

MAX_LINE: Final = 4096
T = TypeVar("T")
VARIABLES: Final = (
    "ups.status",
    "battery.charge",
    "battery.runtime",
    "ups.load",
    "input.voltage",
    "ups.temperature",
)
"""What we read of each UPS; the status first, so a stale UPS costs one request."""

ERRORS: Final = {
    "DATA-STALE": "upsd has no fresh data from the driver",
    "DRIVER-NOT-CONNECTED": "upsd is not connected to the UPS driver",
    "UNKNOWN-UPS": "upsd serves no UPS of this name",
    "ACCESS-DENIED": "upsd denied access",
}
"""What upsd's error codes mean for us; others are shown as upsd sent them."""

STATUS_ONLINE: Final = "online"
STATUS_ON_BATTERY: Final = "on_battery"
STATUS_LOW_BATTERY: Final = "low_battery"
STATUS_UNKNOWN: Final = "unknown"


def power_status(ups_status: str | None) -> str:
    """The announced status for a ``ups.status`` value such as ``"OB DISCHRG LB"``.

    Only mains present or not, and the battery running out, matter here:

    - ``FSD`` (forced shutdown: the UPS will cut the load): ``low_battery``;
    - ``OB`` with ``LB``: ``low_battery``; ``OB``: ``on_battery``;
    - ``OL``: ``online``, also with ``LB`` (recharging after an outage: mains is there);
    - ``LB`` alone (some drivers send no OL/OB): ``low_battery``;
    - ``OL`` and ``OB`` together (contradictory), none of them, or no status: ``unknown``.

    ``CHRG``, ``DISCHRG``, ``RB``, ``BYPASS``, ``OFF``, ``CAL``, ``TRIM``, ``BOOST``... only
    qualify these and change nothing.
    """
    tokens = set((ups_status or "").split())
    online, on_battery, low = "OL" in tokens, "OB" in tokens, "LB" in tokens
    if "FSD" in tokens:
        return STATUS_LOW_BATTERY
    if online and on_battery:
        return STATUS_UNKNOWN
    if on_battery:
        return STATUS_LOW_BATTERY if low else STATUS_ON_BATTERY
    if online:
        return STATUS_ONLINE
    if low:
        return STATUS_LOW_BATTERY
    return STATUS_UNKNOWN


_POWER_VARS: Final = {
    "battery.charge": "charge_pct",
    "battery.runtime": "runtime_s",
    "ups.load": "load_pct",
    "input.voltage": "input_v",
}


def to_reading(variables: list[tuple[str, dict[str, str]]], origin: str) -> Reading:
    """A reading from each UPS's variables, in config order: power from the first UPS,
    ``<ups>.temperature`` from each one that reports ``ups.temperature``.

    A value that is not a number, or out of the announcement's bounds, is an error naming
    the UPS and the variable: the whole reading is refused rather than half-believed.
    """
    raw: dict[str, Any] = {"temperatures": {}}
    for i, (ups, values) in enumerate(variables):
        if i == 0:
            power: dict[str, Any] = {"status": power_status(values.get("ups.status"))}
            for var, key in _POWER_VARS.items():
                if var in values:
                    power[key] = _number(values[var], ups, var, origin)
            raw["power"] = power
        if "ups.temperature" in values:
            temp = _number(values["ups.temperature"], ups, "ups.temperature", origin)
            raw["temperatures"][f"{ups}.temperature"] = temp
    return make_reading(raw, origin)


def _number(text: str, ups: str, var: str, origin: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise SourceError(f"{origin}: {ups}: {var}: expected a number, got {text[:40]!r}")
    return value


class NutError(Exception):
    """upsd answered ``ERR <code>``: the connection is fine, the request was not."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code

    def describe(self) -> str:
        meaning = ERRORS.get(self.code)
        return f"ERR {self.code} ({meaning})" if meaning else f"ERR {self.code}"


class ProtocolError(Exception):
    """upsd's answer is not what the protocol says: the connection cannot be trusted."""


class NutConnection:
    """One TCP connection to upsd; requests one at a time, each bounded by ``timeout``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self.encrypted = False

    @classmethod
    async def open(cls, host: str, port: int, timeout: float) -> NutConnection:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
        return cls(reader, writer, timeout)

    def close(self) -> None:
        self._writer.close()

    async def command(self, line: str) -> str:
        """Send one command; its one-line answer, or NutError for ``ERR ...``."""
        async with asyncio.timeout(self._timeout):
            self._writer.write(line.encode() + b"\n")
            await self._writer.drain()
            return await self._answer()

    async def _answer(self) -> str:
        try:
            raw = await self._reader.readline()
        except ValueError:  # the line is longer than MAX_LINE
            raise ProtocolError(f"a line longer than {MAX_LINE} bytes") from None
        if not raw.endswith(b"\n"):
            raise ConnectionResetError("upsd closed the connection")
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if text.startswith("ERR "):
            raise NutError(text[4:].split(" ", 1)[0] or "?")
        return text

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """Upgrade to TLS; NutError if upsd has no TLS configured."""
        answer = await self.command("STARTTLS")
        if answer != "OK STARTTLS":
            raise ProtocolError(f"STARTTLS answered {answer[:80]!r}")
        async with asyncio.timeout(self._timeout):
            await self._writer.start_tls(context, server_hostname=server_hostname)
        self.encrypted = True

    async def login(self, username: str, password: str | None) -> None:
        lines = [f"USERNAME {username}"] + ([f"PASSWORD {password}"] if password else [])
        for line in lines:
            answer = await self.command(line)
            if not answer.startswith("OK"):
                raise ProtocolError(f"{line.split()[0]} answered {answer[:80]!r}")

    async def get_var(self, ups: str, name: str) -> str | None:
        """The value of one variable, unquoted; None if the UPS does not have it."""
        try:
            answer = await self.command(f"GET VAR {ups} {name}")
        except NutError as err:
            if err.code == "VAR-NOT-SUPPORTED":
                return None
            raise
        return _parse_var(answer, ups, name)


def _parse_var(line: str, ups: str, name: str) -> str:
    """``VAR ups name "value"`` -> value, NUT's backslash escapes undone."""
    try:
        words = shlex.split(line)
    except ValueError:  # unbalanced quotes
        words = []
    if words[:3] != ["VAR", ups, name] or len(words) != 4:
        raise ProtocolError(f"expected 'VAR {ups} {name} \"<value>\"', got {line[:80]!r}")
    return words[3]


_NO_TLS: Final = ("FEATURE-NOT-CONFIGURED", "FEATURE-NOT-SUPPORTED", "UNKNOWN-COMMAND")
"""upsd's ways of saying it does no TLS; ``tls = "try"`` then goes on in plain text."""


class NutReader:
    """Reads every configured UPS's VARIABLES over one kept connection every
    ``interval_s``, and between those the first UPS's ``ups.status`` alone. A changed
    status is followed at once by a full read, so the reading that announces it is
    coherent; an unchanged one gives the last reading again (no news for the announcer).
    """

    def __init__(self, name: str, config: NutSource) -> None:
        self.name = name
        self.interval_s = min(config.status_interval_s, config.interval_s)
        """How often the publisher calls :meth:`read`: the fast rate."""
        self._config = config
        self._names = config.ups_names
        self._where = f"{config.host}:{config.port}"
        self._origin = f"nut {self._names[0]}@{self._where}"
        self._conn: NutConnection | None = None
        self._last: tuple[str, Reading] | None = None
        """upsd's status answer that means "as at the last full read", and that read's
        reading; None after a failure (read all again). A status with characters upsd
        escapes never matches: each read is then a full one."""
        self._full_due = 0.0
        self.connections = 0
        """How many connections were opened (one while upsd stays up)."""
        self.full_reads = 0
        """How many reads asked for every variable (the others asked for the status only)."""

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def read(self) -> Reading:
        try:
            return await self._read()
        except SourceError:
            self._last = None
            raise  # the connection was closed if it cannot be trusted
        except BaseException:
            # Cancelled halfway: an answer may still be on its way, and would be read as
            # the answer to the next request. Only a fresh connection is safe.
            self._last = None
            self.close()
            raise

    async def _read(self) -> Reading:
        now = asyncio.get_running_loop().time()
        try:
            if self._last is not None and now < self._full_due:
                same, reading = self._last
                if await self._exchange(self._status_line) == same:
                    return reading
            found = await self._exchange(self._all)
        except (TimeoutError, ProtocolError, OSError) as err:
            self.close()  # the connection cannot be trusted any more
            raise SourceError(f"{self._origin}: {self._explain(err)}") from None
        reading = to_reading(found, self._origin)
        ups, status = self._names[0], found[0][1].get("ups.status")
        same = f'VAR {ups} ups.status "{status}"' if status is not None else "ERR VAR-NOT-SUPPORTED"
        self._last, self._full_due = (same, reading), now + self._config.interval_s
        self.full_reads += 1
        return reading

    def _explain(self, err: Exception) -> str:
        if isinstance(err, TimeoutError):
            return f"no answer within {self._config.timeout_s:g} s"
        if isinstance(err, ProtocolError):
            return f"not the NUT protocol: {err}"
        if isinstance(err, ssl.SSLCertVerificationError):
            return f"TLS: certificate not trusted: {err.verify_message}"
        if isinstance(err, ssl.SSLError):
            return f"TLS: {err.reason or err}"
        assert isinstance(err, OSError)
        if err.errno:  # asyncio's "Connect call failed (...)" hides "Connection refused"
            return os.strerror(err.errno)
        return str(err) or type(err).__name__

    async def _exchange(self, ask: Callable[[NutConnection], Awaitable[T]]) -> T:
        """``ask`` on the kept connection; upsd's ERR answers leave it open."""
        reused = self._conn is not None
        conn = await self._connection()
        try:
            return await ask(conn)
        except (ConnectionError, EOFError):
            if not reused:
                raise
        # upsd restarted since the last poll: one fresh try, at once.
        self.close()
        return await ask(await self._connection())

    async def _all(self, conn: NutConnection) -> list[tuple[str, dict[str, str]]]:
        """Every UPS's variables."""
        found = []
        for ups in self._names:
            values: dict[str, str] = {}
            for name in VARIABLES:
                value = await self._get(conn, ups, name)
                if value is not None:
                    values[name] = value
            found.append((ups, values))
        return found

    async def _status_line(self, conn: NutConnection) -> str:
        """upsd's answer, as sent, to ``GET VAR`` of the first UPS's ``ups.status`` (the UPS
        power is announced from); an ``ERR`` too: the full read that follows names it."""
        try:
            return await conn.command(f"GET VAR {self._names[0]} ups.status")
        except NutError as err:
            return f"ERR {err.code}"

    async def _get(self, conn: NutConnection, ups: str, name: str) -> str | None:
        try:
            value = await conn.get_var(ups, name)
        except NutError as err:
            raise SourceError(f"nut {ups}@{self._where}: {err.describe()}") from None
        if name == "ups.status" and value == "WAIT":
            raise SourceError(
                f"nut {ups}@{self._where}: WAIT (the driver has not sent its data to upsd yet)"
            )
        return value

    async def _connection(self) -> NutConnection:
        if self._conn is not None:
            return self._conn
        config = self._config
        conn = await NutConnection.open(config.host, config.port, config.timeout_s)
        self.connections += 1
        try:
            if config.tls != "off":
                await self._starttls(conn)
            if config.username is not None:
                password = config.password
                if config.password_file is not None:
                    try:
                        password = read_secret(
                            config.password_file, f"{self._origin}: password_file"
                        )
                    except SecretError as err:
                        raise SourceError(str(err)) from None
                try:
                    await conn.login(config.username, password)
                except NutError as err:
                    raise SourceError(f"{self._origin}: login: {err.describe()}") from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    async def _starttls(self, conn: NutConnection) -> None:
        config = self._config
        try:
            context = ssl.create_default_context(cafile=config.ca_file)
        except (OSError, ssl.SSLError) as err:
            raise SourceError(f"{self._origin}: ca_file {config.ca_file}: {err}") from None
        try:
            await conn.starttls(context, config.host)
        except NutError as err:
            if config.tls == "required" or err.code not in _NO_TLS:
                raise SourceError(
                    f"{self._origin}: STARTTLS refused: {err.describe()} (tls = {config.tls!r})"
                ) from None
