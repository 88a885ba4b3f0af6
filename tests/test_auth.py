"""Keys and tags: a keyring built from bytes signs and verifies."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from powercast import wire
from powercast.auth import Keyring, KeyringError, fingerprint, key_hint

pytestmark = pytest.mark.unit

MESSAGE = wire.Announcement(
    publisher="ups-a",
    epoch=1,
    seq=1,
    change=1,
    sent=1_800_000_000.0,
    tal=3.0,
    power=wire.Power(wire.PowerStatus.ON_BATTERY),
    temperatures={"inlet": 24.0},
)
KEY_1 = bytes(range(32))
KEY_2 = bytes(range(32, 64))
KEY_9 = bytes(range(64, 96))


class TestKeyring:
    def test_verify_reasons(self, tmp_path: Path) -> None:
        """Good tag -> None; unsigned, unknown key id and a wrong tag each have a reason."""
        ring = Keyring.from_keys({1: KEY_1}, tmp_path)
        signed = wire.encode(MESSAGE, key_id=1, sign=ring.signer(1))
        assert ring.verify(wire.decode(signed)) is None
        assert ring.verify(wire.decode(wire.encode(MESSAGE))) == "unsigned"
        stranger = Keyring.from_keys({9: KEY_9}, tmp_path / "other")
        assert ring.verify(
            wire.decode(wire.encode(MESSAGE, key_id=9, sign=stranger.signer(9)))
        ) == ("unknown_key")
        for where in (-33, -1):  # the last byte of the body (a temperature), of the tag
            tampered = bytearray(signed)
            tampered[where] ^= 1
            assert ring.verify(wire.decode(bytes(tampered))) == "bad_tag"

    def test_rotation_accepts_old_and_new(self, tmp_path: Path) -> None:
        """With keys 1 and 2 present, datagrams signed with either verify."""
        ring = Keyring.from_keys({1: KEY_1, 2: KEY_2}, tmp_path)
        for key_id in (1, 2):
            frame = wire.decode(wire.encode(MESSAGE, key_id=key_id, sign=ring.signer(key_id)))
            assert ring.verify(frame) is None

    def test_signing_with_a_missing_key_says_how_to_create_it(self) -> None:
        """The error names the keys found and the keygen command, in the operator's directory."""
        ring = Keyring.from_keys(
            {1: KEY_1}, Path("/run/credentials/x"), Path("/etc/powercast/keys")
        )
        with pytest.raises(KeyringError) as info:
            ring.signer(3)
        assert str(info.value) == (
            f"/run/credentials/x: no key 3 to sign with; keys found: key 1 fp"
            f" {fingerprint(KEY_1)} (hmac-sha256);"
            " create one with: powercast keygen 3 /etc/powercast/keys/3.key"
        )


class TestFingerprint:
    def test_first_hex_of_sha256_never_the_key(self) -> None:
        """A fingerprint is the first 8 hex digits of the key's SHA-256: short, stable,
        different for different keys, and no part of the key itself."""
        assert fingerprint(KEY_1) == hashlib.sha256(KEY_1).hexdigest()[:8]
        assert fingerprint(KEY_1) != fingerprint(KEY_2)
        assert fingerprint(KEY_1) not in KEY_1.hex()

    def test_keyring_names_each_key_with_its_fingerprint(self, tmp_path: Path) -> None:
        """A keyring says each key as ``key N fp X``, and where its file is."""
        ring = Keyring.from_keys({2: KEY_2, 1: KEY_1}, tmp_path, files={2: tmp_path / "p_2.key"})
        assert ring.describe() == (
            f"key 1 fp {fingerprint(KEY_1)} (hmac-sha256), key 2 fp {fingerprint(KEY_2)}"
            " (hmac-sha256)"
        )
        assert ring.file(2) == tmp_path / "p_2.key"
        assert ring.file(1) == tmp_path / "1.key"
        assert Keyring.from_keys({}, tmp_path).describe() == "none"

    def test_hint_says_what_to_copy_where(self, tmp_path: Path) -> None:
        """Each failure has its own advice: a key that differs names this node's key,
        fingerprint and file; a missing id names the file to add, in the operator's
        directory (not systemd's copy); unsigned says to set auth.key_id."""
        ring = Keyring.from_keys({1: KEY_1}, tmp_path / "creds", home=tmp_path / "etc")
        differ = key_hint(ring, 1, wire.Reject.bad_tag)
        assert differ.startswith(
            f"the keys differ: the datagram is signed with key 1, which does not verify with"
            f" this node's key 1 fp {fingerprint(KEY_1)} ({tmp_path / 'creds' / '1.key'})"
        )
        assert f"to this node's {tmp_path / 'etc' / '1.key'} and reload" in differ
        missing = key_hint(ring, 2, wire.Reject.unknown_key, sure=False)
        assert missing.startswith(
            f"if the sender is one of your publishers, this node has no hmac-sha256 key 2"
            f" (it has key 1 fp {fingerprint(KEY_1)} (hmac-sha256))"
        )
        assert f"to this node's {tmp_path / 'etc' / '2.key'}" in missing
        assert "auth.key_id" in key_hint(ring, 0, wire.Reject.unsigned)

    def test_ed25519_keys_show_their_public_keys_fingerprint(self, tmp_path: Path) -> None:
        """A private key and its public key show the same fingerprint (that of the public
        key): a publisher and a controller holding the same pair agree at a glance."""
        from powercast.auth import public_key

        publisher = Keyring.from_keys({}, tmp_path, private={2: KEY_2})
        receiver = Keyring.from_keys({}, tmp_path, public={2: public_key(KEY_2)})
        fp = fingerprint(public_key(KEY_2))
        assert publisher.fingerprints == receiver.fingerprints == {2: fp}
        assert receiver.describe() == f"key 2 fp {fp} (ed25519)"
        assert receiver.file(2) == tmp_path / "2.public"

    def test_ed25519_hint_names_the_public_key_file(self, tmp_path: Path) -> None:
        """For a signature by a key this node lacks, the file to copy is <id>.public, and
        a node that does not believe ed25519 is told to add it to auth.scheme."""
        ring = Keyring.from_keys({1: KEY_1}, tmp_path)
        hint = key_hint(
            ring, 3, wire.Reject.unknown_key, scheme="ed25519", believed=["hmac-sha256"]
        )
        assert hint.startswith("this node has no ed25519 key 3")
        assert f"to this node's {tmp_path / '3.public'}, with 'ed25519' in auth.scheme," in hint
        assert "3.public, written beside 3.private" in hint

    def test_wrong_key_hint_names_the_keys_bound(self, tmp_path: Path) -> None:
        """A good tag by a key not allowed for the publisher it names: the hint says which
        keys auth.publishers binds to that publisher, and both ways out."""
        ring = Keyring.from_keys({1: KEY_1, 2: KEY_2}, tmp_path)
        bound = {"ups-a": frozenset({1}), "ups-b": frozenset({2})}
        hint = key_hint(ring, 2, wire.Reject.wrong_key, publisher="ups-a", bound=bound)
        assert hint.startswith(
            f"key 2 fp {fingerprint(KEY_2)} verifies, but auth.publishers allows only key 1"
            " for 'ups-a': if 'ups-a' signs with key 2 by design, add 2 to"
            " auth.publishers.ups-a here and reload; else key 2 is another publisher's"
        )
        assert hint.endswith("set its auth.key_id to 1")
        unnamed = key_hint(ring, 2, wire.Reject.wrong_key, publisher="ups-c", bound=bound)
        assert "auth.publishers names no key for 'ups-c'" in unnamed


class TestEd25519:
    def test_rotation_accepts_old_and_new_public_keys(self, tmp_path: Path) -> None:
        """With public keys 1 and 2 present (and both bound to the publisher), datagrams
        signed by either private key verify: keys rotate without a flag day."""
        from powercast.auth import Gate, public_key

        seeds = {1: KEY_1, 2: KEY_2}
        publisher = Keyring.from_keys({}, tmp_path, private=seeds)
        receiver = Keyring.from_keys(
            {}, tmp_path, public={i: public_key(seed) for i, seed in seeds.items()}
        )
        gate = Gate.build(receiver, {"ups-a": [1, 2]}, 50.0, 1000.0)
        for key_id in (1, 2):
            signer = publisher.signer(key_id)
            assert (signer.scheme, signer.tag_size) == ("ed25519", 64)
            data = wire.encode(MESSAGE, key_id=key_id, sign=signer)
            assert receiver.verify(wire.decode(data)) is None
            assert gate.check(wire.open_envelope(data), "10.0.0.1", 0.0) is None
        assert receiver.signing_ids == []
        assert receiver.describe() == ", ".join(
            f"key {i} fp {fingerprint(public_key(seed))} (ed25519)" for i, seed in seeds.items()
        )
