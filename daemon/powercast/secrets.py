"""Secrets on disk: key files, password and community files, and where systemd put them.

Every secret a daemon reads from a file is read here; :mod:`powercast.auth` only computes
with the keys it is given. A secret file is opened without following a symbolic link (it
could point anywhere), and one that others may read is refused with the chmod that fixes it.

Keys live in a directory, one file per key, named ``<id>.<kind>`` (or
``<prefix>_<id>.<kind>``, which is how systemd names files loaded with
``LoadCredential=powercast:/etc/powercast/keys``). The kinds:

* ``.key``: a shared hmac-sha256 key, on publishers and receivers alike;
* ``.private``: an Ed25519 private key, on its publisher only;
* ``.public``: the Ed25519 public key that goes with it, on controllers and relays.

A file holds the key as hex on one line, as ``powercast keygen`` writes it (for Ed25519,
a pair: ``<id>.private`` and ``<id>.public`` beside it). A key id names one key, of one
kind. Several keys may be present at once: receivers accept any of them, the publisher
signs with the one its config names, so keys rotate without a flag day (add the new key
everywhere, switch publishers to it, then remove the old one; a reload picks up the
change). A receiver reads only the kinds its ``auth.scheme`` names, and never a private
key.

A shared or private key file that others may read is refused: a leaked key lets anyone
stop the fans. A public key may be read by anyone, but one that others may write is
refused: whoever replaces it speaks for its publisher.
Passwords and community strings (NUT, SNMP, the relay's broker) are the first line of a
file that others can neither read nor write; the group may read it. A file that cannot be
used is a :class:`SecretError`, which the source or relay reading it reports as its own
failure (this module sits below the sources, so it cannot raise theirs).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Final

from powercast.auth import (
    ED25519,
    ED25519_KEY_BYTES,
    HMAC,
    Keyring,
    KeyringError,
    fingerprint,
    public_key,
)
from powercast.config import ControllerConfig, PublisherConfig, RelayConfig
from powercast.systemd import credentials_directory
from powercast.wire import TAG_SIZE

KEY_FILE: Final = re.compile(r"^(?:.*_)?(\d{1,5})\.(key|private|public)$")
KINDS: Final = {"key": HMAC, "private": ED25519, "public": ED25519}
"""What each kind of key file holds, by its suffix."""
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


def kinds(schemes: Collection[str], signing: bool) -> frozenset[str]:
    """The kinds of key file a node of ``schemes`` reads: a publisher (``signing``) its
    shared or private keys, a receiver its shared or public keys."""
    ed = "private" if signing else "public"
    return frozenset(k for k in ("key", ed) if KINDS[k] in schemes)


ALL_KINDS: Final = frozenset(KINDS)
"""What a tool (ping, tap) reads: whatever is there, to sign and to verify."""


def load_keyring(directory: Path, wanted: Collection[str] = ("key",)) -> Keyring:
    """Read the key files of the ``wanted`` kinds in ``directory`` (``key``, ``private``,
    ``public``); any bad one fails the whole load. A private key and its public key may
    share an id (keygen writes them side by side); nothing else may."""
    found: dict[str, dict[int, bytes]] = {"key": {}, "private": {}, "public": {}}
    where: dict[int, tuple[str, str]] = {}
    """Key id -> the file read for it, and its kind."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        names = []
    except OSError as err:
        raise KeyringError(f"{directory}: cannot list keys: {err.strerror}") from None
    for name in names:
        match = KEY_FILE.match(name)
        if match is None or match[2] not in wanted:
            continue
        key_id, kind = int(match[1]), match[2]
        if not 1 <= key_id <= 65535:
            raise KeyringError(f"{directory / name}: key id must be 1..65535, got {key_id}")
        other = where.get(key_id)
        if other is not None and {kind, other[1]} != {"private", "public"}:
            raise KeyringError(
                f"{directory / name}: a second file for key id {key_id} (the other is"
                f" {other[0]}): a key id names one key"
            )
        where[key_id] = (name, kind)
        if kind == "public":
            found[kind][key_id] = read_public_key(directory / name)
        else:
            found[kind][key_id] = read_key(directory / name, exact=kind == "private")
    for key_id, secret in found["private"].items():
        public = found["public"].pop(key_id, None)
        if public is not None and public != public_key(secret):
            raise KeyringError(
                f"{directory}: {where[key_id][0]} is not the public key of the private key"
                f" {key_id} beside it"
            )
    # Names are read sorted: of a pair, the file named is the public key (what verifies).
    files = {key_id: directory / name for key_id, (name, _) in where.items()}
    return Keyring.from_keys(
        found["key"],
        directory,
        _home(directory),
        public=found["public"],
        private=found["private"],
        files=files,
    )


def file_fingerprint(path: Path) -> tuple[int, str, str]:
    """One key file's id, kind (``key``, ``private``, ``public``) and fingerprint (an
    Ed25519 private key's is its public key's), read as the daemons read it; never the
    key."""
    match = KEY_FILE.match(path.name)
    if match is None:
        raise KeyringError(
            f"{path}: expected a key file named <id>.key, <id>.private or <id>.public,"
            " or a directory of them"
        )
    key_id, kind = int(match[1]), match[2]
    if kind == "public":
        return key_id, kind, fingerprint(read_public_key(path))
    if kind == "private":
        return key_id, kind, fingerprint(public_key(read_key(path, exact=True)))
    return key_id, kind, fingerprint(read_key(path))


def read_key(path: Path, exact: bool = False) -> bytes:
    """One shared or private key file: hex, not readable by group or others. ``exact``:
    an Ed25519 private key, 32 bytes; else a shared key of at least MIN_KEY_BYTES."""
    text = _key_text(path, 0o077, "key is readable by others", "0600 or 0400", f"chmod 600 {path}")
    return _hex_key(path, text, ED25519_KEY_BYTES if exact else None)


def read_public_key(path: Path) -> bytes:
    """One Ed25519 public key file: 32 bytes as hex, not writable by group or others."""
    text = _key_text(
        path, 0o022, "public key is writable by others", "0644 or stricter", f"chmod go-w {path}"
    )
    return _hex_key(path, text, ED25519_KEY_BYTES)


def _key_text(path: Path, forbidden: int, problem: str, expected: str, fix: str) -> str:
    """A key file's text, refused when its mode has any ``forbidden`` bit (never through a
    symlink: the mode checked is the file's own)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise KeyringError(f"{path}: cannot read key: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & forbidden:
            raise KeyringError(
                f"{path}: {problem} (mode {stat.S_IMODE(mode):04o}, expected {expected}): {fix}"
            )
        return f.read(4096).decode("ascii", errors="replace").strip()


def _hex_key(path: Path, text: str, exact: int | None) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyringError(
            f"{path}: expected the key as hex digits, got {text[:12]!r}..."
        ) from None
    if exact is not None and len(key) != exact:
        raise KeyringError(f"{path}: key has {len(key)} bytes, expected {exact}")
    if len(key) < MIN_KEY_BYTES:
        raise KeyringError(f"{path}: key has {len(key)} bytes, expected at least {MIN_KEY_BYTES}")
    return key


def keygen(key_id: int, path: Path, scheme: str = HMAC) -> list[Path]:
    """Write a new random key, never overwriting a file; the files written.

    hmac-sha256: a 32-byte shared key, mode 0600, at ``path`` (``<id>.key``). ed25519: a
    private key, mode 0600, at ``path`` (``<id>.private``) and its public key, mode 0644,
    beside it (``<id>.public``), which alone goes to controllers and relays."""
    if not 1 <= key_id <= 65535:
        raise KeyringError(f"key id must be 1..65535, got {key_id}")
    kind = "private" if scheme == ED25519 else "key"
    match = KEY_FILE.match(path.name)
    if match is None or int(match[1]) != key_id or match[2] != kind:
        raise KeyringError(
            f"{path}: the file must be named {key_id}.{kind} (or <prefix>_{key_id}.{kind})"
            " so that the daemons find it by its id"
        )
    if scheme != ED25519:
        _create(path, os.urandom(TAG_SIZE), 0o600)
        return [path]
    public = path.with_name(path.name.removesuffix(".private") + ".public")
    if public.exists() or public.is_symlink():
        raise KeyringError(f"{public}: already exists; not overwriting a key")
    secret = os.urandom(ED25519_KEY_BYTES)
    _create(path, secret, 0o600)
    _create(public, public_key(secret), 0o644)
    return [path, public]


def _create(path: Path, key: bytes, mode: int) -> None:
    """A new file holding ``key`` as hex, with ``mode`` (whatever the umask)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise KeyringError(f"{path}: already exists; not overwriting a key") from None
    except OSError as err:
        raise KeyringError(f"{path}: cannot create: {err.strerror}") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), mode)
        f.write(key.hex() + "\n")


def load_keys(config: PublisherConfig | ControllerConfig | RelayConfig) -> Keyring:
    """The keys a daemon with ``config`` needs, or a KeyringError saying what is missing."""
    directory = keys_dir(config.auth.keys_dir)
    if isinstance(config, PublisherConfig):
        auth = config.auth
        ring = load_keyring(directory, kinds((auth.scheme,), signing=True))
        if auth.key_id and auth.scheme == ED25519 and auth.key_id not in ring.signing_ids:
            raise KeyringError(
                f"{directory}: no private key {auth.key_id} to sign with (auth.scheme ="
                f" 'ed25519'); keys found: {ring.describe()}; create one with: powercast"
                f" keygen --scheme ed25519 {auth.key_id} {_home(directory)}/{auth.key_id}.private"
            )
        if auth.key_id:
            signer = ring.signer(auth.key_id)  # fails now, not at the first announcement
            if signer.scheme != auth.scheme:
                raise KeyringError(
                    f"{directory}: key {auth.key_id} is {signer.scheme}, but auth.scheme is"
                    f" {auth.scheme!r}"
                )
        return ring
    if isinstance(config, RelayConfig) and config.auth.mode == "off":  # carries, verifies not
        return Keyring.from_keys({}, directory, _home(directory))
    ring = load_keyring(directory, kinds(config.auth.schemes, signing=False))
    if config.auth.mode != "off" and not ring.ids:
        files = " or ".join(f"*.{k}" for k in sorted(kinds(config.auth.schemes, False)))
        raise KeyringError(
            f"{directory}: no key files ({files}) for auth.mode = {config.auth.mode!r}"
            f" and auth.scheme = {config.auth.scheme!r}: create one with: powercast keygen"
            f" 1 {_home(directory)}/1.key (an ed25519 publisher's: --scheme ed25519"
            " .../1.private, then copy 1.public here)"
        )
    held = ring.ids
    for publisher, ids in config.auth.publishers.items():
        missing = [key_id for key_id in ids if key_id not in held]
        if missing:
            raise KeyringError(
                f"{directory}: auth.publishers names key {missing[0]} for {publisher!r},"
                f" but there is no such key of auth.scheme {config.auth.scheme!r}"
                f" (keys found: {ring.describe()})"
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
