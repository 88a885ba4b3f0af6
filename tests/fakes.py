"""Fake publishers for the controller's pure core: signed datagrams on a fake clock.

A :class:`FakePublisher` builds real wire datagrams (wire.encode), signed with a key that
``powercast.secrets.keygen`` made in a temporary directory, as the default config
(auth.mode = "enforce") requires. Time is two plain floats: monotonic ``now`` and
wall-clock ``WALL + now``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from powercast import wire
from powercast.auth import Keyring
from powercast.secrets import keygen, load_keyring
from powercast.wire import Announcement, Power, PowerStatus

WALL = 1_700_000_000.0
"""The wall clock at monotonic time 0."""
KEY_ID = 1


def make_keyring(directory: Path) -> Keyring:
    """A keyring holding one fresh key, id KEY_ID, made in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    keygen(KEY_ID, directory / f"{KEY_ID}.key")
    return load_keyring(directory)


@dataclass
class FakePublisher:
    """Just enough of a publisher: counters, the latest reading, signed datagrams."""

    name: str
    sign: Callable[[bytes], bytes] | None
    """None sends unsigned datagrams (a forger without the key)."""
    tal: float = 3.0
    epoch: int = 1
    seq: int = 0
    change: int = 0
    power: PowerStatus = PowerStatus.UNKNOWN
    temperatures: dict[str, float | None] = field(default_factory=dict)
    last: bytes = b""
    """The latest datagram, to send again."""
    key_id: int = KEY_ID
    """The key id put in the header (``sign`` makes the tag: HMAC or Ed25519)."""

    @classmethod
    def signed(cls, name: str, keyring: Keyring, tal: float = 3.0) -> FakePublisher:
        """A publisher holding ``keyring``'s key KEY_ID."""
        return cls(name, keyring.signer(KEY_ID), tal)

    def say(self, now: float, power: PowerStatus, **temperatures: float | None) -> bytes:
        """News at ``now``: a new reading with the next change number."""
        self.power, self.temperatures = power, dict(temperatures)
        self.change += 1
        return self.heartbeat(now)

    def heartbeat(self, now: float, **temperatures: float | None) -> bytes:
        """The next datagram with the same change number (temperatures may drift)."""
        self.temperatures.update(temperatures)
        self.seq += 1
        message = Announcement(
            publisher=self.name,
            epoch=self.epoch,
            seq=self.seq,
            change=self.change,
            sent=WALL + now,
            tal=self.tal,
            power=Power(self.power),
            temperatures=dict(self.temperatures),
        )
        if self.sign is None:
            self.last = wire.encode(message)
        else:
            self.last = wire.encode(message, key_id=self.key_id, sign=self.sign)
        return self.last
