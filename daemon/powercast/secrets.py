"""Secrets on disk: key files, password and community files, and where systemd put them.

Every secret a daemon reads from a file is read here; :mod:`powercast.auth` only computes
with the keys it is given. A secret file is opened without following a symbolic link (it
could point anywhere), and one that others may read is refused with the chmod that fixes it.

Keys live in a directory, one file per key, named ``<id>.key`` (or ``<prefix>_<id>.key``,
which is how systemd names files loaded with ``LoadCredential=powercast:/etc/powercast/keys``).
A file holds the key as hex on one line, as ``powercast keygen`` writes it. Several keys
may be present at once: receivers accept any of them, the publisher signs with the one
its config names, so keys rotate without a flag day (add the new key everywhere, switch
publishers to it, then remove the old one; a reload picks up the change).

A key file that others may read is refused: a leaked key lets anyone stop the fans.
Passwords and community strings (NUT, SNMP, the relay's broker) are the first line of a
file that others can neither read nor write; the group may read it. A file that cannot be
used is a :class:`SecretError`, which the source or relay reading it reports as its own
failure (this module sits below the sources, so it cannot raise theirs).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Final

from powercast.auth import Keyring, KeyringError, fingerprint
from powercast.config import ControllerConfig, PublisherConfig, RelayConfig
from powercast.systemd import credentials_directory
from powercast.wire import TAG_SIZE

KEY_FILE: Final = re.compile(r"^(?:.*_)?(\d{1,5})\.key$")
DEFAULT_DIR: Final = Path("/etc/powercast/keys")
MIN_KEY_BYTES: Final = 16


class SecretError(Exception):
    """A password or community file that cannot be used; ``str()`` names who wanted it."""


# --- keys ------------------------------------------------------------------------------------


def keys_dir(configured: str, environ: dict[str, str] | None = None) -> Path:
    """The directory to read: as configured, else systemd's credentials, else /etc."""
    if configured:
        return Path(configured)
    return credentials_directory(environ) or DEFAULT_DIR


def _home(directory: Path) -> Path:
    """Where an operator creates keys: systemd's credentials directory is only a copy."""
    return DEFAULT_DIR if directory == credentials_directory() else directory


def load_keyring(directory: Path) -> Keyring:
    """Read every key file in ``directory``; any bad one fails the whole load."""
    keys: dict[int, bytes] = {}
    files: dict[int, Path] = {}
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        names = []
    except OSError as err:
        raise KeyringError(f"{directory}: cannot list keys: {err.strerror}") from None
    for name in names:
        match = KEY_FILE.match(name)
        if match is None:
            continue
        key_id = int(match[1])
        if not 1 <= key_id <= 65535:
            raise KeyringError(f"{directory / name}: key id must be 1..65535, got {key_id}")
        if key_id in keys:
            raise KeyringError(f"{directory / name}: a second file for key id {key_id}")
        keys[key_id] = read_key(directory / name)
        files[key_id] = directory / name
    return Keyring.from_keys(keys, directory, _home(directory), files)


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


def keygen(key_id: int, path: Path) -> str:
    """Write a new random 32-byte key with mode 0600; never overwrite an existing file.
    Returns its fingerprint (:func:`powercast.auth.fingerprint`)."""
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
    key = os.urandom(TAG_SIZE)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return fingerprint(key)


def load_keys(config: PublisherConfig | ControllerConfig | RelayConfig) -> Keyring:
    """The keys a daemon with ``config`` needs, or a KeyringError saying what is missing."""
    if isinstance(config, RelayConfig):  # a relay carries datagrams as they are: no keys
        directory = keys_dir("")
        return Keyring.from_keys({}, directory, _home(directory))
    directory = keys_dir(config.auth.keys_dir)
    ring = load_keyring(directory)
    if isinstance(config, PublisherConfig):
        if config.auth.key_id:
            ring.signer(config.auth.key_id)  # fails now, not at the first announcement
    elif config.auth.mode != "off" and not ring.ids:
        raise KeyringError(
            f"{directory}: no key files (*.key) for auth.mode = {config.auth.mode!r}:"
            f" create one with: powercast keygen 1 {_home(directory)}/1.key"
        )
    return ring


# --- passwords and communities ---------------------------------------------------------------


def read_secret(path: str, origin: str) -> str:
    """The first line of a password or community file that others cannot read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise SecretError(f"{origin}: {path}: cannot read: {err.strerror or err}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            raise SecretError(
                f"{origin}: {path}: readable or writable by others"
                f" (mode {stat.S_IMODE(mode):04o}); chmod o-rw it"
            )
        data = f.read(4096)
    lines = data.decode("utf-8", errors="replace").splitlines()
    if not lines or not lines[0].strip():
        raise SecretError(f"{origin}: {path}: empty (expected the secret on its first line)")
    return lines[0].strip()
