"""Keys and tags: HMAC-SHA256 over each datagram as sent.

Keys live in a directory, one file per key, named ``<id>.key`` (or ``<prefix>_<id>.key``,
which is how systemd names files loaded with ``LoadCredential=powercast:/etc/powercast/keys``).
A file holds the key as hex on one line, as ``powercast keygen`` writes it. Several keys
may be present at once: receivers accept any of them, the publisher signs with the one
its config names, so keys rotate without a flag day (add the new key everywhere, switch
publishers to it, then remove the old one; a reload picks up the change).

A key file that others may read is refused: a leaked key lets anyone stop the fans.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from powercast.config import ControllerConfig, PublisherConfig, RelayConfig
from powercast.errors import EX_CONFIG, PowercastError
from powercast.wire import TAG_SIZE, Envelope, Frame, Reject

KEY_FILE: Final = re.compile(r"^(?:.*_)?(\d{1,5})\.key$")
DEFAULT_DIR: Final = Path("/etc/powercast/keys")
MIN_KEY_BYTES: Final = 16


class KeyringError(PowercastError):
    """A key or key directory that must not be used; ``str()`` names the file."""

    exit_code = EX_CONFIG


def keys_dir(configured: str, environ: dict[str, str] | None = None) -> Path:
    """The directory to read: as configured, else systemd's credentials, else /etc."""
    if configured:
        return Path(configured)
    env = os.environ if environ is None else environ
    credentials = env.get("CREDENTIALS_DIRECTORY")
    return Path(credentials) if credentials else DEFAULT_DIR


@dataclass
class Keyring:
    """The keys this process may verify with, pre-keyed so a tag costs one copy and update."""

    directory: Path
    _macs: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> Keyring:
        """Read every key file in ``directory``; any bad one fails the whole load."""
        ring = cls(directory)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return ring
        except OSError as err:
            raise KeyringError(f"{directory}: cannot list keys: {err.strerror}") from None
        for name in names:
            match = KEY_FILE.match(name)
            if match is None:
                continue
            key_id = int(match[1])
            if not 1 <= key_id <= 65535:
                raise KeyringError(f"{directory / name}: key id must be 1..65535, got {key_id}")
            if key_id in ring._macs:
                raise KeyringError(f"{directory / name}: a second file for key id {key_id}")
            ring._macs[key_id] = hmac.new(read_key(directory / name), digestmod="sha256")
        return ring

    @property
    def ids(self) -> list[int]:
        return sorted(self._macs)

    def signer(self, key_id: int) -> Callable[[bytes], bytes]:
        """A function that tags bytes with key ``key_id``."""
        try:
            mac = self._macs[key_id]
        except KeyError:
            have = ", ".join(map(str, self.ids)) or "none"
            raise KeyringError(
                f"{self.directory}: no key {key_id} to sign with (keys found: {have});"
                f" create one with: powercast keygen {key_id} {_home(self.directory)}/{key_id}.key"
            ) from None

        def sign(data: bytes) -> bytes:
            h = mac.copy()
            h.update(data)
            return bytes(h.digest())

        return sign

    def verify(self, frame: Frame | Envelope) -> Reject | None:
        """None when the tag is good, else why not: ``unsigned``, ``unknown_key``, ``bad_tag``."""
        if frame.key_id == 0:
            return Reject.unsigned
        mac = self._macs.get(frame.key_id)
        if mac is None:
            return Reject.unknown_key
        h = mac.copy()
        h.update(frame.signed)
        return None if hmac.compare_digest(h.digest(), frame.tag) else Reject.bad_tag


def _home(directory: Path) -> Path:
    """Where an operator creates keys: systemd's credentials directory is only a copy."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    return DEFAULT_DIR if credentials and directory == Path(credentials) else directory


def read_key(path: Path) -> bytes:
    """One key file: hex, not readable by group or others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise KeyringError(f"{path}: cannot read key: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise KeyringError(
                f"{path}: key is readable by others (mode {stat.S_IMODE(mode):04o},"
                f" expected 0600 or 0400): chmod 600 {path}"
            )
        text = f.read(4096).decode("ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyringError(
            f"{path}: expected the key as hex digits, got {text[:12]!r}..."
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise KeyringError(f"{path}: key has {len(key)} bytes, expected at least {MIN_KEY_BYTES}")
    return key


def keygen(key_id: int, path: Path) -> None:
    """Write a new random 32-byte key with mode 0600; never overwrite an existing file."""
    if not 1 <= key_id <= 65535:
        raise KeyringError(f"key id must be 1..65535, got {key_id}")
    match = KEY_FILE.match(path.name)
    if match is None or int(match[1]) != key_id:
        raise KeyringError(
            f"{path}: the file must be named {key_id}.key (or <prefix>_{key_id}.key)"
            " so that the daemons find it by its id"
        )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise KeyringError(f"{path}: already exists; not overwriting a key") from None
    except OSError as err:
        raise KeyringError(f"{path}: cannot create: {err.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(TAG_SIZE) + "\n")


def load_keys(config: PublisherConfig | ControllerConfig | RelayConfig) -> Keyring:
    """The keys a daemon with ``config`` needs, or a KeyringError saying what is missing."""
    if isinstance(config, RelayConfig):  # a relay carries datagrams as they are: no keys
        return Keyring(keys_dir(""))
    directory = keys_dir(config.auth.keys_dir)
    ring = Keyring.load(directory)
    if isinstance(config, PublisherConfig):
        if config.auth.key_id:
            ring.signer(config.auth.key_id)  # fails now, not at the first announcement
    elif config.auth.mode != "off" and not ring.ids:
        raise KeyringError(
            f"{directory}: no key files (*.key) for auth.mode = {config.auth.mode!r}:"
            f" create one with: powercast keygen 1 {_home(directory)}/1.key"
        )
    return ring
