"""Keys and tags: HMAC-SHA256 over each datagram as sent.

A :class:`Keyring` holds the keys a process may verify and sign with, built from bytes:
nothing here reads a file or the environment. :mod:`powercast.secrets` reads key files
(and says where they live, how they rotate and why a readable one is refused).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from powercast.errors import EX_CONFIG, PowercastError
from powercast.wire import Envelope, Frame, Reject

try:  # OpenSSL's HMAC object itself: copy, update and digest without hmac.HMAC's Python
    # layer around each, a third of the cost of a tag on a datagram.
    from _hashlib import hmac_new as _new_mac
except ImportError:  # a Python built without OpenSSL: the same, through the hmac module

    def _new_mac(key: bytes, digestmod: str) -> Any:  # type: ignore[misc]
        return hmac.new(key, digestmod=digestmod)


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

    @classmethod
    def from_keys(
        cls, keys: Mapping[int, bytes], directory: Path, home: Path | None = None
    ) -> Keyring:
        """A keyring of ``keys`` by id, read from ``directory``."""
        macs = {key_id: _new_mac(key, digestmod="sha256") for key_id, key in keys.items()}
        return cls(directory, home, macs)

    @property
    def ids(self) -> list[int]:
        return sorted(self._macs)

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
        key_id = frame.key_id
        if key_id == 0:
            return Reject.unsigned
        mac = self._macs.get(key_id)
        if mac is None:
            return Reject.unknown_key
        h = mac.copy()
        h.update(frame.signed)
        return None if _compare(h.digest(), frame.tag) else Reject.bad_tag


_compare: Final = hmac.compare_digest
