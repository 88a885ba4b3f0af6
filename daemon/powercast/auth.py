"""Keys and tags: HMAC-SHA256 over each datagram as sent.

A :class:`Keyring` holds the keys a process may verify and sign with, built from bytes:
nothing here reads a file or the environment. :mod:`powercast.secrets` reads key files
(and says where they live, how they rotate and why a readable one is refused).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from powercast.errors import EX_CONFIG, PowercastError
from powercast.wire import Envelope, Frame, Reject

FINGERPRINT_HEX: Final = 8
"""Hex digits of a key's fingerprint: enough to tell two keys apart at a glance."""


def fingerprint(key: bytes) -> str:
    """A short name of ``key`` to compare between nodes (the first hex digits of its
    SHA-256), never the key: two nodes showing the same fingerprint hold the same key."""
    return hashlib.sha256(key).hexdigest()[:FINGERPRINT_HEX]


def describe(key_id: int, fp: str) -> str:
    """How a key is named to operators: ``key 1 fp 3f2a9c1b``."""
    return f"key {key_id} fp {fp}"


class KeyringError(PowercastError):
    """A key or key directory that must not be used; ``str()`` names the file."""

    exit_code = EX_CONFIG


@dataclass
class Keyring:
    """The keys this process may verify with, pre-keyed so a tag costs one copy and update."""

    directory: Path
    """Where the keys came from, as errors and status name it."""
    home: Path | None = None
    """Where an operator creates keys, when not ``directory`` (systemd's credentials are a copy)."""
    _macs: dict[int, Any] = field(default_factory=dict)
    fingerprints: dict[int, str] = field(default_factory=dict)
    """Each key's :func:`fingerprint` by id: what status and logs show of a key."""
    files: dict[int, Path] = field(default_factory=dict)
    """The file each key was read from, by id (when read from a file)."""

    @classmethod
    def from_keys(
        cls,
        keys: Mapping[int, bytes],
        directory: Path,
        home: Path | None = None,
        files: Mapping[int, Path] | None = None,
    ) -> Keyring:
        """A keyring of ``keys`` by id, read from ``directory`` (``files`` by id)."""
        macs = {key_id: hmac.new(key, digestmod="sha256") for key_id, key in keys.items()}
        prints = {key_id: fingerprint(key) for key_id, key in keys.items()}
        return cls(directory, home, macs, prints, dict(files or {}))

    @property
    def ids(self) -> list[int]:
        return sorted(self._macs)

    def file(self, key_id: int) -> Path:
        """Where key ``key_id`` lives (or would: ``<id>.key`` in the directory)."""
        return self.files.get(key_id, self.directory / f"{key_id}.key")

    def home_file(self, key_id: int) -> Path:
        """Where an operator puts key ``key_id`` for this node: in ``home`` when the keys
        are read from a copy (systemd's credentials), else the file read."""
        if self.home is None or self.home == self.directory:
            return self.file(key_id)
        return self.home / f"{key_id}.key"

    def describe(self) -> str:
        """Every key as operators see it: ``key 1 fp 3f2a9c1b, key 2 fp ...``; "none"."""
        return ", ".join(describe(i, self.fingerprints[i]) for i in self.ids) or "none"

    def signer(self, key_id: int) -> Callable[[bytes], bytes]:
        """A function that tags bytes with key ``key_id``."""
        try:
            mac = self._macs[key_id]
        except KeyError:
            have = ", ".join(map(str, self.ids)) or "none"
            home = self.home or self.directory
            raise KeyringError(
                f"{self.directory}: no key {key_id} to sign with (keys found: {have});"
                f" create one with: powercast keygen {key_id} {home}/{key_id}.key"
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


def key_hint(keyring: Keyring, key_id: int, problem: Reject, *, sure: bool = True) -> str:
    """What to do about datagrams signed with ``key_id`` that fail ``problem`` here: which
    key file to copy where, and which fingerprints to compare. ``sure``: the sender is
    known to be ours (it sent good data before, or is a publisher the config names)."""
    theirs = f"{key_id}.key in its auth.keys_dir, /etc/powercast/keys by default"
    if problem == Reject.unsigned:
        why = "the sender signs nothing (auth.key_id = 0 on it)"
        todo = f"give it the key file this node has ({keyring.describe()}) and set auth.key_id"
        return f"{why}: {todo}"
    if problem == Reject.unknown_key:
        why = f"this node has no key {key_id} (it has {keyring.describe()})"
    else:
        ours = describe(key_id, keyring.fingerprints.get(key_id, "?"))
        why = (
            f"the keys differ: the datagram is signed with key {key_id}, which does not"
            f" verify with this node's {ours} ({keyring.file(key_id)})"
        )
    if not sure:
        why = f"if the sender is one of your publishers, {why}"
    todo = (
        f"copy the publisher's key file ({theirs}) to this node's {keyring.home_file(key_id)}"
        " and reload, or compare the fingerprints `powercast keygen --show` and"
        " `powercast status` print on both nodes"
    )
    return f"{why}: {todo}"
