"""Secrets on disk: key files, keygen, the keys directory, password and community files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from powercast.auth import KeyringError
from powercast.config import ControllerAuth, ControllerConfig, PublisherAuth, PublisherConfig
from powercast.secrets import SecretError, keygen, keys_dir, load_keyring, load_keys, read_secret

pytestmark = pytest.mark.unit


class TestKeygen:
    def test_writes_a_private_random_key(self, tmp_path: Path) -> None:
        """keygen writes 32 random bytes as hex, mode 0600."""
        keygen(1, tmp_path / "1.key")
        keygen(2, tmp_path / "2.key")
        one, two = ((tmp_path / f"{i}.key").read_text().strip() for i in (1, 2))
        assert len(bytes.fromhex(one)) == 32
        assert one != two
        assert (tmp_path / "1.key").stat().st_mode & 0o777 == 0o600

    def test_refuses_to_overwrite(self, tmp_path: Path) -> None:
        """An existing key is never overwritten."""
        keygen(1, tmp_path / "1.key")
        before = (tmp_path / "1.key").read_text()
        with pytest.raises(KeyringError, match="already exists"):
            keygen(1, tmp_path / "1.key")
        assert (tmp_path / "1.key").read_text() == before

    def test_file_name_must_carry_the_id(self, tmp_path: Path) -> None:
        """The daemons find keys by file name, so the name must match the id."""
        with pytest.raises(KeyringError, match=r"must be named 3.key"):
            keygen(3, tmp_path / "key.txt")

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

    def test_command_line_shows_fingerprints_to_compare(self, tmp_path: Path) -> None:
        """keygen prints the new key's fingerprint; `keygen --show` prints the same for the
        file and for its directory, and the keyring the daemons load agrees."""
        run = [sys.executable, "-m", "powercast", "keygen"]
        made = subprocess.run(
            [*run, "4", str(tmp_path / "4.key")], capture_output=True, text=True, check=False
        )
        ring = load_keyring(tmp_path)
        fp = ring.fingerprints[4]
        assert made.stdout.startswith(f"{tmp_path / '4.key'}: new key 4 fp {fp} (mode 0600)")
        assert "keygen --show" in made.stdout
        for where in (tmp_path / "4.key", tmp_path):
            shown = subprocess.run(
                [*run, "--show", str(where)], capture_output=True, text=True, check=False
            )
            assert shown.stdout == f"{tmp_path / '4.key'}: key 4 fp {fp}\n"
        assert (tmp_path / "4.key").read_text().strip() not in made.stdout


class TestLoadKeyring:
    def test_loads_every_key_and_systemd_credential_names(self, tmp_path: Path) -> None:
        """Files <id>.key and <prefix>_<id>.key are keys; other files are ignored."""
        keygen(1, tmp_path / "1.key")
        keygen(2, tmp_path / "powercast_2.key")
        (tmp_path / "README").write_text("not a key")
        assert load_keyring(tmp_path).ids == [1, 2]

    def test_key_readable_by_others_is_refused(self, tmp_path: Path) -> None:
        """A key file that group or others can read is an error naming the file and mode."""
        keygen(1, tmp_path / "1.key")
        os.chmod(tmp_path / "1.key", 0o644)
        with pytest.raises(KeyringError) as info:
            load_keyring(tmp_path)
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
            load_keyring(tmp_path)
        bad.write_text("00ff")
        with pytest.raises(KeyringError, match=r"key has 2 bytes, expected at least 16"):
            load_keyring(tmp_path)


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

    def test_keys_are_created_in_etc_not_in_the_credentials_copy(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Keys read from $CREDENTIALS_DIRECTORY are created in /etc/powercast/keys."""
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
        config = PublisherConfig(auth=PublisherAuth(key_id=4))
        with pytest.raises(KeyringError) as info:
            load_keys(config)
        assert str(info.value) == (
            f"{tmp_path}: no key 4 to sign with (keys found: none);"
            " create one with: powercast keygen 4 /etc/powercast/keys/4.key"
        )

    def test_enforcing_controller_needs_a_key(self, tmp_path: Path) -> None:
        """A controller that enforces with no keys would drop everything: refused at start."""
        config = ControllerConfig(auth=ControllerAuth(keys_dir=str(tmp_path)))
        with pytest.raises(KeyringError, match="no key files"):
            load_keys(config)
        off = ControllerConfig(auth=ControllerAuth(keys_dir=str(tmp_path), mode="off"))
        assert load_keys(off).ids == []


class TestReadSecret:
    def test_first_line_of_a_private_file(self, tmp_path: Path) -> None:
        """The secret is the first line, stripped; group-readable is fine."""
        path = tmp_path / "pw"
        path.write_text("s3cret  \nignored\n")
        path.chmod(0o640)
        assert read_secret(str(path), "nut a@h:1: password_file") == "s3cret"

    def test_readable_by_others_is_refused(self, tmp_path: Path) -> None:
        """A file others can read or write is refused, naming its mode."""
        path = tmp_path / "pw"
        path.write_text("s3cret\n")
        path.chmod(0o644)
        with pytest.raises(SecretError) as info:
            read_secret(str(path), "x")
        assert (
            str(info.value)
            == f"x: {path}: readable or writable by others (mode 0644); chmod o-rw it"
        )

    def test_missing_or_empty(self, tmp_path: Path) -> None:
        """A missing or empty file is an error naming it."""
        with pytest.raises(SecretError, match="cannot read: No such file"):
            read_secret(str(tmp_path / "none"), "x")
        empty = tmp_path / "empty"
        empty.write_text("\n")
        empty.chmod(0o600)
        with pytest.raises(SecretError, match="empty"):
            read_secret(str(empty), "x")

    def test_symlink_is_refused(self, tmp_path: Path) -> None:
        """A symbolic link is not followed (it could point anywhere)."""
        target = tmp_path / "pw"
        target.write_text("s3cret\n")
        target.chmod(0o600)
        link = tmp_path / "link"
        link.symlink_to(target)
        with pytest.raises(SecretError, match="cannot read"):
            read_secret(str(link), "x")
