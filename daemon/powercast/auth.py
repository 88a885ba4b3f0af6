"""Keys and tags: who may speak for which publisher, and how a tag is checked.

Two schemes, told apart on the wire by the tag's length (docs/wire-format.md):

* ``hmac-sha256`` (32-byte tag): one shared key per id. Every node that holds it can
  check a tag and also make one, so a controller or relay holding it can speak for
  every publisher that uses it.
* ``ed25519`` (64-byte signature): a private key on the publisher, only the public key
  on controllers and relays. Nothing a receiver holds can make a datagram another
  receiver accepts.

A :class:`Keyring` holds the keys a process may verify and sign with, built from bytes:
nothing here reads a file or the environment. :mod:`powercast.secrets` reads key files
(and says where they live, how they rotate and why a readable one is refused).
A :class:`Gate` is what a receiver asks about each datagram before its body is read:
the tag, charged to a verify budget (:mod:`powercast.budget`), and whether that key may
speak for the publisher the datagram names.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from powercast.budget import PUBLISHERS_KEPT, SOURCES_KEPT, Budgets
from powercast.errors import EX_CONFIG, PowercastError
from powercast.wire import SIGNATURE_SIZE, TAG_SIZE, Envelope, Frame, Reject, claimed_publisher

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

Scheme = Literal["hmac-sha256", "ed25519"]
HMAC: Final = "hmac-sha256"
ED25519: Final = "ed25519"
TAG_SIZES: Final[dict[str, int]] = {HMAC: TAG_SIZE, ED25519: SIGNATURE_SIZE}
"""The tag length each scheme puts in the header."""
ED25519_KEY_BYTES: Final = 32
"""An Ed25519 private key (its seed) and a public key are 32 bytes each."""
FINGERPRINT_HEX: Final = 8
"""Hex digits of a key's fingerprint: enough to tell two keys apart at a glance."""
SUFFIXES: Final[dict[str, str]] = {HMAC: "key", ED25519: "public"}
"""The key file a receiver verifies each scheme with: ``<id>.key``, ``<id>.public``."""


def fingerprint(key: bytes) -> str:
    """A short name of ``key`` to compare between nodes (the first hex digits of its
    SHA-256), never the key: two nodes showing the same fingerprint hold the same key.
    An Ed25519 key is named by its public key, so that the publisher's private key and
    the receivers' public key show the same fingerprint."""
    return hashlib.sha256(key).hexdigest()[:FINGERPRINT_HEX]


def describe(key_id: int, fp: str) -> str:
    """How a key is named to operators: ``key 1 fp 3f2a9c1b``."""
    return f"key {key_id} fp {fp}"


try:  # OpenSSL's HMAC object itself: copy, update and digest without hmac.HMAC's Python
    # layer around each, a third of the cost of a tag on a datagram.
    from _hashlib import hmac_new as _new_mac
except ImportError:  # a Python built without OpenSSL: the same, through the hmac module

    def _new_mac(key: bytes, digestmod: str) -> Any:  # type: ignore[misc]
        return hmac.new(key, digestmod=digestmod)


class KeyringError(PowercastError):
    """A key or key directory that must not be used; ``str()`` names the file."""

    exit_code = EX_CONFIG


@dataclass(frozen=True)
class Signer:
    """Makes the tag of key ``key_id`` over bytes; ``tag_size`` goes in the header."""

    key_id: int
    scheme: Scheme
    tag_size: int
    sign: Callable[[bytes], bytes]

    def __call__(self, data: bytes) -> bytes:
        return self.sign(data)


def _ed25519() -> Any:
    """The cryptography package's Ed25519 module, imported only where a key needs it."""
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415  # Ed25519 only

    return ed25519


def public_key(private: bytes) -> bytes:
    """The 32-byte Ed25519 public key of a 32-byte private key."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415  # Ed25519 only

    key = _ed25519().Ed25519PrivateKey.from_private_bytes(private)
    raw: bytes = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return raw


@dataclass
class Keyring:
    """The keys this process may verify and sign with.

    HMAC keys are pre-keyed so a tag costs one copy and update. Ed25519 keys are the
    cryptography package's objects, public ones to verify, private ones to sign (a
    private key's public half is kept too).
    """

    directory: Path
    """Where the keys came from, as errors and status name it."""
    home: Path | None = None
    """Where an operator creates keys, when not ``directory`` (systemd's credentials are a copy)."""
    _macs: dict[int, Any] = field(default_factory=dict)
    _public: dict[int, Ed25519PublicKey] = field(default_factory=dict)
    _private: dict[int, Ed25519PrivateKey] = field(default_factory=dict)
    fingerprints: dict[int, str] = field(default_factory=dict)
    """Each key's :func:`fingerprint` by id (an Ed25519 key's of its public key): what
    status and logs show of a key."""
    files: dict[int, Path] = field(default_factory=dict)
    """The file each key was read from, by id (when read from a file)."""

    @classmethod
    def from_keys(
        cls,
        keys: Mapping[int, bytes],
        directory: Path,
        home: Path | None = None,
        *,
        public: Mapping[int, bytes] | None = None,
        private: Mapping[int, bytes] | None = None,
        files: Mapping[int, Path] | None = None,
    ) -> Keyring:
        """A keyring of shared HMAC ``keys``, Ed25519 ``public`` keys (to verify) and
        Ed25519 ``private`` keys (to sign), each by id, read from ``directory`` (``files``
        by id)."""
        macs = {key_id: _new_mac(key, digestmod="sha256") for key_id, key in keys.items()}
        prints = {key_id: fingerprint(key) for key_id, key in keys.items()}
        ring = cls(directory, home, macs, fingerprints=prints, files=dict(files or {}))
        if public or private:
            ed = _ed25519()
            for key_id, raw in (public or {}).items():
                ring._public[key_id] = ed.Ed25519PublicKey.from_public_bytes(raw)
                ring.fingerprints[key_id] = fingerprint(raw)
            for key_id, raw in (private or {}).items():
                key = ring._private[key_id] = ed.Ed25519PrivateKey.from_private_bytes(raw)
                if key_id not in ring._public:
                    ring._public[key_id] = key.public_key()
                    ring.fingerprints[key_id] = fingerprint(public_key(raw))
        ring.fingerprints = dict(sorted(ring.fingerprints.items()))
        return ring

    @property
    def ids(self) -> list[int]:
        """Every key id held, of either scheme."""
        return sorted({*self._macs, *self._public})

    @property
    def signing_ids(self) -> list[int]:
        """The key ids this keyring can sign with: shared keys and private keys."""
        return sorted({*self._macs, *self._private})

    def schemes(self) -> dict[int, Scheme]:
        """Each key id held and its scheme, as status and config check show them."""
        held: dict[int, Scheme] = dict.fromkeys(self._macs, HMAC)
        held.update(dict.fromkeys(self._public, ED25519))
        return dict(sorted(held.items()))

    def describe(self) -> str:
        """Every key as operators see it, ``key 1 fp 3f2a9c1b (hmac-sha256), key 2 fp
        ... (ed25519)``, or ``none``."""
        return (
            ", ".join(
                f"{describe(i, self.fingerprints[i])} ({s})" for i, s in self.schemes().items()
            )
            or "none"
        )

    def file(self, key_id: int, scheme: str | None = None) -> Path:
        """Where key ``key_id`` lives, or would: ``<id>.key`` in the directory, or
        ``<id>.public`` for an Ed25519 key (``scheme``, else the key held)."""
        found = self.files.get(key_id)
        if found is not None and scheme in (None, self.schemes().get(key_id)):
            return found
        return self.directory / f"{key_id}.{self._suffix(key_id, scheme)}"

    def home_file(self, key_id: int, scheme: str | None = None) -> Path:
        """Where an operator puts key ``key_id`` for this node: in ``home`` when the keys
        are read from a copy (systemd's credentials), else :meth:`file`."""
        if self.home is None or self.home == self.directory:
            return self.file(key_id, scheme)
        return self.home / f"{key_id}.{self._suffix(key_id, scheme)}"

    def _suffix(self, key_id: int, scheme: str | None) -> str:
        return SUFFIXES[scheme or self.schemes().get(key_id, HMAC)]

    def signer(self, key_id: int) -> Signer:
        """Something that tags bytes with key ``key_id``: an HMAC key, or an Ed25519
        private key (a public key cannot sign)."""
        mac = self._macs.get(key_id)
        if mac is not None:

            def tag(data: bytes) -> bytes:
                h = mac.copy()
                h.update(data)
                return bytes(h.digest())

            return Signer(key_id, HMAC, TAG_SIZE, tag)
        private = self._private.get(key_id)
        if private is not None:
            return Signer(key_id, ED25519, SIGNATURE_SIZE, private.sign)
        home = self.home or self.directory
        if key_id in self._public:  # a public key alone
            raise KeyringError(
                f"{self.directory}: key {key_id} is an Ed25519 public key, which cannot sign;"
                f" the publisher needs its private key {home}/{key_id}.private"
            )
        raise KeyringError(
            f"{self.directory}: no key {key_id} to sign with; keys found: {self.describe()};"
            f" create one with: powercast keygen {key_id} {home}/{key_id}.key"
        )

    def holds(self, key_id: int, tag_size: int) -> bool:
        """Whether a tag of ``tag_size`` bytes by key ``key_id`` can be checked here."""
        if tag_size == TAG_SIZE:
            return key_id in self._macs
        return tag_size == SIGNATURE_SIZE and key_id in self._public

    def check(self, key_id: int, signed: bytes | memoryview, tag: bytes | memoryview) -> bool:
        """Whether ``tag`` is key ``key_id``'s over ``signed`` (the key is held)."""
        if len(tag) == TAG_SIZE:
            h = self._macs[key_id].copy()
            h.update(signed)
            return _compare(h.digest(), tag)
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415  # loaded by now

        try:
            self._public[key_id].verify(bytes(tag), bytes(signed))
        except InvalidSignature:
            return False
        return True

    def verify(self, frame: Frame | Envelope) -> Reject | None:
        """None when the tag is good, else why not: ``unsigned``, ``unknown_key``, ``bad_tag``."""
        if frame.key_id == 0:
            return Reject.unsigned
        if not self.holds(frame.key_id, len(frame.tag)):
            return Reject.unknown_key
        return None if self.check(frame.key_id, frame.signed, frame.tag) else Reject.bad_tag


_compare: Final = hmac.compare_digest

Bindings = Mapping[str, frozenset[int]]
"""Publisher id -> the key ids that may speak for it; empty: any key for any publisher."""


@dataclass
class Gate:
    """What a receiver checks of a datagram before reading its body, in this order:
    signed at all, a key held for that id and kind of tag, the verify budgets (Ed25519
    only: an HMAC costs no more than the decode after it), the tag, and whether that key
    may speak for the publisher the datagram names. Pure: ``now`` comes in."""

    keyring: Keyring
    bindings: Bindings = field(default_factory=dict)
    sources: Budgets = field(default_factory=lambda: Budgets(1000.0, 2000.0, SOURCES_KEPT))
    publishers: Budgets = field(
        default_factory=lambda: Budgets(50.0, 100.0, PUBLISHERS_KEPT, newcomers_share=True)
    )

    @classmethod
    def build(
        cls,
        keyring: Keyring,
        bindings: Mapping[str, list[int]],
        publisher_rate: float,
        source_rate: float,
        listed: frozenset[str] = frozenset(),
    ) -> Gate:
        """A gate over ``keyring``; each budget saves up to two seconds' worth. Publishers
        ``listed`` (and bound) have a bucket of their own from the start."""
        configured = frozenset(bindings) | listed
        return cls(
            keyring,
            {publisher: frozenset(ids) for publisher, ids in bindings.items()},
            Budgets(source_rate, 2 * source_rate, SOURCES_KEPT),
            Budgets(
                publisher_rate,
                2 * publisher_rate,
                PUBLISHERS_KEPT,
                newcomers_share=True,
                configured=configured,
            ),
        )

    def check(self, envelope: Envelope, source: str | None, now: float) -> Reject | None:
        """None when the datagram may be read; else why not. ``source`` is the address it
        came from; None where there is none to tell (a broker), and no source budget."""
        key_id, tag = envelope.key_id, envelope.tag
        if len(tag) == TAG_SIZE and not self.bindings:
            # The usual datagram, first and in short: an HMAC by a key held here (key id 0
            # is never held), no budget (it costs no more than the decode after it) and no
            # publisher to read for it.
            mac = self.keyring._macs.get(key_id)  # this module's own class
            if mac is not None:
                h = mac.copy()
                h.update(envelope.signed)
                return None if _compare(h.digest(), tag) else Reject.bad_tag
        if key_id == 0:
            return Reject.unsigned
        if not self.keyring.holds(key_id, len(tag)):
            return Reject.unknown_key
        signature = len(tag) == SIGNATURE_SIZE
        # The claimed id is read only where it is used: an HMAC without bindings needs none.
        publisher = claimed_publisher(envelope) if signature or self.bindings else None
        if signature and not (
            (source is None or self.sources.take(source, now))
            and self.publishers.take(publisher or "", now)
        ):
            return Reject.over_budget
        if not self.keyring.check(key_id, envelope.signed, tag):
            return Reject.bad_tag
        if publisher is None:
            return None  # not read, or not an announcement: the body decoder says why
        if self.bindings and key_id not in self.bindings.get(publisher, ()):
            return Reject.wrong_key
        if signature:
            self.publishers.learn(publisher)
        return None


def key_hint(
    keyring: Keyring,
    key_id: int,
    problem: Reject,
    *,
    sure: bool = True,
    scheme: str = HMAC,
    publisher: str | None = None,
    bound: Bindings | None = None,
    believed: Collection[str] = (HMAC, ED25519),
) -> str:
    """What to do about datagrams signed with ``key_id`` (of ``scheme``) that fail
    ``problem`` here: which key file to copy where, which fingerprints to compare, or
    (``wrong_key``) which keys ``bound`` lets speak for ``publisher``. ``sure``: the
    sender is known to be ours (it sent good data before, or is a publisher the config
    names). ``believed``: the schemes this node reads keys of (its ``auth.scheme``)."""
    if problem == Reject.unsigned:
        why = "the sender signs nothing (auth.key_id = 0 on it)"
        todo = f"give it a key file this node has ({keyring.describe()}) and set auth.key_id"
        return f"{why}: {todo}"
    ours = describe(key_id, keyring.fingerprints.get(key_id, "?"))
    if problem == Reject.wrong_key:
        allowed = sorted((bound or {}).get(publisher or "", ()))
        if allowed:
            may = f"allows only key {', '.join(map(str, allowed))} for {publisher!r}"
            then = f"set its auth.key_id to {allowed[0]}"
        else:
            may = f"names no key for {publisher!r}"
            then = "name its key in auth.publishers here"
        return (
            f"{ours} verifies, but auth.publishers {may}: if {publisher!r} signs with key"
            f" {key_id} by design, add {key_id} to auth.publishers.{publisher} here and"
            f" reload; else key {key_id} is another publisher's: give {publisher!r} its own"
            f" key and {then}"
        )
    if scheme == ED25519:
        theirs = (
            f"{key_id}.public, written beside {key_id}.private by `powercast keygen"
            " --scheme ed25519`"
        )
    else:
        theirs = f"{key_id}.key in its auth.keys_dir, /etc/powercast/keys by default"
    if problem == Reject.unknown_key:
        why = f"this node has no {scheme} key {key_id} (it has {keyring.describe()})"
    else:
        why = (
            f"the keys differ: the datagram is signed with key {key_id}, which does not"
            f" verify with this node's {ours} ({keyring.file(key_id)})"
        )
    if not sure:
        why = f"if the sender is one of your publishers, {why}"
    also = "" if scheme in believed else f", with {scheme!r} in auth.scheme,"
    todo = (
        f"copy the publisher's key file ({theirs}) to this node's"
        f" {keyring.home_file(key_id, scheme)}{also} and reload, or compare the"
        " fingerprints `powercast keygen --show` and `powercast status` print on both nodes"
    )
    return f"{why}: {todo}"
