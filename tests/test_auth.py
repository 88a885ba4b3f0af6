"""Keys, key files and tags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from powercast import wire
from powercast.auth import Keyring, KeyringError, keygen, keys_dir, load_keys
from powercast.config import ControllerAuth, ControllerConfig, PublisherAuth, PublisherConfig

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


class TestKeygen:
    @pytest.mark.unit
    def test_writes_a_private_random_key(self, tmp_path: Path) -> None:
        """keygen writes 32 random bytes as hex, mode 0600."""
        keygen(1, tmp_path / "1.key")
        keygen(2, tmp_path / "2.key")
        one, two = ((tmp_path / f"{i}.key").read_text().strip() for i in (1, 2))
        assert len(bytes.fromhex(one)) == 32
        assert one != two
        assert (tmp_path / "1.key").stat().st_mode & 0o777 == 0o600

    @pytest.mark.unit
    def test_refuses_to_overwrite(self, tmp_path: Path) -> None:
        """An existing key is never overwritten."""
        keygen(1, tmp_path / "1.key")
        before = (tmp_path / "1.key").read_text()
        with pytest.raises(KeyringError, match="already exists"):
            keygen(1, tmp_path / "1.key")
        assert (tmp_path / "1.key").read_text() == before

    @pytest.mark.unit
    def test_file_name_must_carry_the_id(self, tmp_path: Path) -> None:
        """The daemons find keys by file name, so the name must match the id."""
        with pytest.raises(KeyringError, match=r"must be named 3.key"):
            keygen(3, tmp_path / "key.txt")

    @pytest.mark.system
    def test_command_line(self, tmp_path: Path) -> None:
        """`powercast keygen ID FILE` works, and refuses a second time with exit 78."""
        argv = [sys.executable, "-m", "powercast", "keygen", "7", str(tmp_path / "7.key")]
        first = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert first.returncode == 0
        second = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert second.returncode == 78
        assert (
            second.stderr
            == f"powercast: {tmp_path / '7.key'}: already exists; not overwriting a key\n"
        )


@pytest.mark.unit
class TestKeyring:
    def test_loads_every_key_and_systemd_credential_names(self, tmp_path: Path) -> None:
        """Files <id>.key and <prefix>_<id>.key are keys; other files are ignored."""
        keygen(1, tmp_path / "1.key")
        keygen(2, tmp_path / "powercast_2.key")
        (tmp_path / "README").write_text("not a key")
        assert Keyring.load(tmp_path).ids == [1, 2]

    def test_key_readable_by_others_is_refused(self, tmp_path: Path) -> None:
        """A key file that group or others can read is an error naming the file and mode."""
        keygen(1, tmp_path / "1.key")
        os.chmod(tmp_path / "1.key", 0o644)
        with pytest.raises(KeyringError) as info:
            Keyring.load(tmp_path)
        assert str(info.value) == (
            f"{tmp_path / '1.key'}: key is readable by others (mode 0644, expected 0600 or 0400):"
            f" chmod 600 {tmp_path / '1.key'}"
        )

    def test_bad_key_contents(self, tmp_path: Path) -> None:
        """Not hex, or too short, is refused with the file named."""
        bad = tmp_path / "1.key"
        fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"zz not hex")
        os.close(fd)
        with pytest.raises(KeyringError, match=r"1.key: expected the key as hex digits"):
            Keyring.load(tmp_path)
        bad.write_text("00ff")
        with pytest.raises(KeyringError, match=r"key has 2 bytes, expected at least 16"):
            Keyring.load(tmp_path)

    def test_verify_reasons(self, tmp_path: Path) -> None:
        """Good tag -> None; unsigned, unknown key id and a wrong tag each have a reason."""
        keygen(1, tmp_path / "1.key")
        ring = Keyring.load(tmp_path)
        signed = wire.encode(MESSAGE, key_id=1, sign=ring.signer(1))
        assert ring.verify(wire.decode(signed)) is None
        assert ring.verify(wire.decode(wire.encode(MESSAGE))) == "unsigned"
        other = tmp_path / "other"
        other.mkdir()
        keygen(9, other / "9.key")
        stranger = Keyring.load(other)
        assert ring.verify(
            wire.decode(wire.encode(MESSAGE, key_id=9, sign=stranger.signer(9)))
        ) == ("unknown_key")
        for where in (-33, -1):  # the last byte of the body (a temperature), of the tag
            tampered = bytearray(signed)
            tampered[where] ^= 1
            assert ring.verify(wire.decode(bytes(tampered))) == "bad_tag"

    def test_rotation_accepts_old_and_new(self, tmp_path: Path) -> None:
        """With keys 1 and 2 present, datagrams signed with either verify."""
        keygen(1, tmp_path / "1.key")
        keygen(2, tmp_path / "2.key")
        ring = Keyring.load(tmp_path)
        for key_id in (1, 2):
            frame = wire.decode(wire.encode(MESSAGE, key_id=key_id, sign=ring.signer(key_id)))
            assert ring.verify(frame) is None


@pytest.mark.unit
class TestLoadKeys:
    def test_credentials_directory_is_the_default(self, tmp_path: Path) -> None:
        """Unset keys_dir means $CREDENTIALS_DIRECTORY, else /etc/powercast/keys."""
        assert keys_dir("", {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == tmp_path
        assert keys_dir("", {}) == Path("/etc/powercast/keys")
        assert keys_dir("/k", {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == Path("/k")

    def test_publisher_needs_its_signing_key(self, tmp_path: Path) -> None:
        """A publisher whose key_id has no file fails with how to create it."""
        config = PublisherConfig(auth=PublisherAuth(keys_dir=str(tmp_path), key_id=4))
        with pytest.raises(
            KeyringError, match=rf"create one with: powercast keygen 4 {tmp_path}/4.key"
        ):
            load_keys(config)

    def test_enforcing_controller_needs_a_key(self, tmp_path: Path) -> None:
        """A controller that enforces with no keys would drop everything: refused at start."""
        config = ControllerConfig(auth=ControllerAuth(keys_dir=str(tmp_path)))
        with pytest.raises(KeyringError, match="no key files"):
            load_keys(config)
        off = ControllerConfig(auth=ControllerAuth(keys_dir=str(tmp_path), mode="off"))
        assert load_keys(off).ids == []
