"""How to reach an SNMP agent from an ``SnmpAccess`` table: pysnmp credentials, target and
the words for its errors, shared by the snmp source and the snmp actuator.

pysnmp is imported by whoever imports this module, only when an snmp table is configured
(it takes ~0.2 s). Errors are raised as the caller's own class (``error``), so a source's
failure stays a SourceError and an actuator's a DriverError.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any, Final

from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch import asyncio as hlapi

from powercast.config import SnmpAccess
from powercast.secrets import SecretError, read_secret

AUTH: Final = {
    "none": hlapi.usmNoAuthProtocol,
    "md5": hlapi.usmHMACMD5AuthProtocol,
    "sha": hlapi.usmHMACSHAAuthProtocol,
    "sha224": hlapi.usmHMAC128SHA224AuthProtocol,
    "sha256": hlapi.usmHMAC192SHA256AuthProtocol,
    "sha384": hlapi.usmHMAC256SHA384AuthProtocol,
    "sha512": hlapi.usmHMAC384SHA512AuthProtocol,
}
PRIV: Final = {
    "none": hlapi.usmNoPrivProtocol,
    "des": hlapi.usmDESPrivProtocol,
    "aes": hlapi.usmAesCfb128Protocol,
    "aes192": hlapi.usmAesCfb192Protocol,
    "aes256": hlapi.usmAesCfb256Protocol,
}


def origin(config: SnmpAccess) -> str:
    """How errors name the agent: ``snmp 10.0.0.7:161``."""
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"snmp {host}:{config.port}"


async def target(config: SnmpAccess, error: type[Exception]) -> Any:
    """The agent's UDP transport target, bounded by timeout_s and retries."""
    try:
        return await hlapi.UdpTransportTarget.create(
            (config.host, config.port), timeout=config.timeout_s, retries=config.retries
        )
    except PySnmpError as err:
        raise error(f"{origin(config)}: {first_line(err)}") from None


def credentials(config: SnmpAccess, error: type[Exception]) -> Any:
    """v2c community or v3 user data; secret files are read now (at each call)."""
    where = origin(config)

    def from_file(path: str, what: str) -> str:
        try:
            return read_secret(path, f"{where}: {what}_file")
        except SecretError as err:
            raise error(str(err)) from None

    if config.version == "2c":
        community = config.community
        if config.community_file is not None:
            community = from_file(config.community_file, "community")
        return hlapi.CommunityData(community, mpModel=1)  # noqa: S508  # v2c is asked for

    def secret(inline: str | None, path: str | None, what: str) -> str | None:
        if path is not None:
            value = from_file(path, what)
            if len(value) < 8:
                raise error(f"{where}: {path}: {what} shorter than 8 characters")
            return value
        return inline

    auth = config.auth_protocol
    priv = config.priv_protocol if auth != "none" else "none"
    if priv != "none" and importlib.util.find_spec("cryptography") is None:
        raise error(
            f"{where}: SNMPv3 privacy ({priv}) needs the cryptography package:"
            " pip install 'powercast[snmpv3]', or priv_protocol = \"none\""
        )
    return hlapi.UsmUserData(
        config.user,
        authKey=secret(config.auth_key, config.auth_key_file, "auth_key")
        if auth != "none"
        else None,
        privKey=secret(config.priv_key, config.priv_key_file, "priv_key")
        if priv != "none"
        else None,
        authProtocol=AUTH[auth],
        privProtocol=PRIV[priv],
    )


def explain(config: SnmpAccess, error: Any) -> str:
    """pysnmp's error indication in an operator's words (a timeout says what was tried)."""
    text = str(error)
    if "timed out" in text.lower() or type(error).__name__ == "RequestTimedOut":
        tries = config.retries + 1
        hint = " (agent down, or wrong community?)" if config.version == "2c" else ""
        return f"no answer within {config.timeout_s:g} s, {tries} tries{hint}"
    return text


def first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


class Session:
    """Requests to one agent. One SnmpEngine for the owner's life (its first request loads
    pysnmp's MIB tables, ~0.3 s; later ones take milliseconds); after a failure the target
    and the credentials (secret files re-read) are set up anew, so a late answer to a lost
    request is dropped. Errors are raised as ``error``, starting with ``where``."""

    def __init__(self, config: SnmpAccess, error: type[Exception], where: str) -> None:
        self.config = config
        self.error = error
        self.where = where
        self._engine: Any = None
        self._target: Any = None
        self._auth: Any = None

    async def request(
        self, command: Any, binds: Sequence[Any], names: Sequence[str], what: str = ""
    ) -> Any:
        """``command`` (hlapi.get_cmd, set_cmd) with ``binds``; the answer's var-binds.
        ``names`` say which object an error status points at; ``what`` follows ``where``
        in errors."""
        try:
            return await self._ask(
                command, binds, names, f"{self.where}: {what}" if what else self.where
            )
        except BaseException:
            self._target = self._auth = None
            raise

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close_dispatcher()
        self._engine = self._target = self._auth = None

    async def _ask(
        self, command: Any, binds: Sequence[Any], names: Sequence[str], where: str
    ) -> Any:
        config = self.config
        if self._engine is None:
            self._engine = hlapi.SnmpEngine()
        if self._target is None:
            self._auth = credentials(config, self.error)
            self._target = await target(config, self.error)
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
            raise self.error(f"{where}: {first_line(err)}") from None
        if error:
            raise self.error(f"{where}: {explain(config, error)}")
        if status:
            at = names[int(index) - 1] if 0 < int(index) <= len(names) else "?"
            raise self.error(f"{where}: agent answered {status.prettyPrint()} at {at}")
        return answer
