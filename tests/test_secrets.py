"""Secrets on disk: key files, keygen, the keys directory, password and community files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from powercast.auth import KeyringError, fingerprint, public_key
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
        assert made.stdout.startswith(
            f"{tmp_path / '4.key'}: new hmac-sha256 key 4 fp {fp} (mode 0600)"
        )
        assert "keygen --show" in made.stdout
        for where in (tmp_path / "4.key", tmp_path):
            shown = subprocess.run(
                [*run, "--show", str(where)], capture_output=True, text=True, check=False
            )
            assert shown.stdout == f"{tmp_path / '4.key'}: key 4 fp {fp} (hmac-sha256)\n"
        assert (tmp_path / "4.key").read_text().strip() not in made.stdout


class TestEd25519Keys:
    def test_keygen_writes_a_private_key_and_its_public_key(self, tmp_path: Path) -> None:
        """--scheme ed25519: <id>.private (0600) and <id>.public (0644) that go together."""
        written = keygen(5, tmp_path / "5.private", "ed25519")
        assert written == [tmp_path / "5.private", tmp_path / "5.public"]
        private = bytes.fromhex((tmp_path / "5.private").read_text())
        assert bytes.fromhex((tmp_path / "5.public").read_text()) == public_key(private)
        assert (tmp_path / "5.private").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "5.public").stat().st_mode & 0o777 == 0o644
        with pytest.raises(KeyringError, match=r"must be named 6.private"):
            keygen(6, tmp_path / "6.key", "ed25519")

    def test_keygen_never_overwrites_either_half(self, tmp_path: Path) -> None:
        """An existing public key stops keygen before a private key is written."""
        (tmp_path / "5.public").write_text("old\n")
        with pytest.raises(KeyringError, match=r"5.public: already exists"):
            keygen(5, tmp_path / "5.private", "ed25519")
        assert not (tmp_path / "5.private").exists()
        assert (tmp_path / "5.public").read_text() == "old\n"

    def test_receivers_read_public_keys_publishers_private_ones(self, tmp_path: Path) -> None:
        """A controller believing ed25519 reads *.public only, never a private key; a
        publisher signing with ed25519 reads its *.private."""
        keygen(1, tmp_path / "1.private", "ed25519")
        keygen(2, tmp_path / "2.key")
        controller = ControllerConfig(auth=ControllerAuth(keys_dir=str(tmp_path), scheme="ed25519"))
        ring = load_keys(controller)
        assert ring.schemes() == {1: "ed25519"}
        assert ring.signing_ids == []
        both = ControllerAuth(keys_dir=str(tmp_path), scheme=["hmac-sha256", "ed25519"])
        assert load_keys(ControllerConfig(auth=both)).schemes() == {1: "ed25519", 2: "hmac-sha256"}
        publisher = PublisherConfig(
            auth=PublisherAuth(keys_dir=str(tmp_path), key_id=1, scheme="ed25519")
        )
        assert load_keys(publisher).signer(1).tag_size == 64

    def test_public_key_others_may_write_is_refused(self, tmp_path: Path) -> None:
        """Whoever can replace a public key speaks for its publisher: group/other write is
        refused, naming the file, the mode and the fix; reading is fine."""
        keygen(1, tmp_path / "1.private", "ed25519")
        os.chmod(tmp_path / "1.public", 0o664)
        with pytest.raises(KeyringError) as info:
            load_keyring(tmp_path, {"public"})
        assert str(info.value) == (
            f"{tmp_path / '1.public'}: public key is writable by others (mode 0664,"
            f" expected 0644 or stricter): chmod go-w {tmp_path / '1.public'}"
        )

    def test_a_key_id_names_one_key(self, tmp_path: Path) -> None:
        """1.key beside 1.public is refused, naming both; a public key that does not go
        with the private key beside it is refused too."""
        keygen(1, tmp_path / "1.key")
        keygen(1, tmp_path / "other_1.private", "ed25519")
        with pytest.raises(KeyringError, match=r"a second file for key id 1 \(the other is 1.key"):
            load_keyring(tmp_path, {"key", "public"})
        (tmp_path / "1.key").unlink()
        keygen(2, tmp_path / "2.private", "ed25519")
        (tmp_path / "other_1.public").write_text((tmp_path / "2.public").read_text())
        with pytest.raises(KeyringError, match=r"other_1.public is not the public key"):
            load_keyring(tmp_path, {"private", "public"})

    def test_publisher_without_its_private_key_says_how_to_make_it(self, tmp_path: Path) -> None:
        """An ed25519 publisher with only a public key (or nothing) is told the keygen line."""
        keygen(3, tmp_path / "3.private", "ed25519")
        (tmp_path / "3.private").unlink()
        config = PublisherConfig(
            auth=PublisherAuth(keys_dir=str(tmp_path), key_id=3, scheme="ed25519")
        )
        with pytest.raises(KeyringError) as info:
            load_keys(config)
        assert str(info.value) == (
            f"{tmp_path}: no private key 3 to sign with (auth.scheme = 'ed25519'); keys found:"
            f" none; create one with: powercast keygen --scheme ed25519 3 {tmp_path}/3.private"
        )

    def test_bindings_must_name_keys_that_are_there(self, tmp_path: Path) -> None:
        """auth.publishers naming a key id with no key file fails at load, naming it."""
        keygen(1, tmp_path / "1.key")
        config = ControllerConfig(
            auth=ControllerAuth(keys_dir=str(tmp_path), publishers={"ups-a": [1], "ups-b": [2]})
        )
        with pytest.raises(KeyringError) as info:
            load_keys(config)
        assert str(info.value) == (
            f"{tmp_path}: auth.publishers names key 2 for 'ups-b', but there is no such key"
            " of auth.scheme 'hmac-sha256' (keys found:"
            f" key 1 fp {load_keyring(tmp_path).fingerprints[1]} (hmac-sha256))"
        )

    def test_command_line_ed25519(self, tmp_path: Path) -> None:
        """`powercast keygen --scheme ed25519 ID FILE` says where each half went, with the
        fingerprint `keygen --show` gives both halves beside a shared key."""
        argv = [sys.executable, "-m", "powercast", "keygen", "--scheme", "ed25519", "4",
                str(tmp_path / "4.private")]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        fp = fingerprint(bytes.fromhex((tmp_path / "4.public").read_text()))
        assert done.stdout == (
            f"{tmp_path / '4.private'}: new ed25519 key 4 fp {fp} (mode 0600)\n"
            f"{tmp_path / '4.public'}: its public key, key 4 fp {fp} (mode 0644): copy it to"
            " controllers and relays, then compare fingerprints with `powercast keygen --show`\n"
        )
        keygen(5, tmp_path / "5.key")
        shared = load_keyring(tmp_path).fingerprints[5]
        show = [sys.executable, "-m", "powercast", "keygen", "--show"]
        shown = subprocess.run([*show, str(tmp_path)], capture_output=True, text=True, check=True)
        assert shown.stdout == (  # both halves show the public key's fingerprint
            f"{tmp_path / '4.private'}: key 4 fp {fp} (ed25519 private key)\n"
            f"{tmp_path / '4.public'}: key 4 fp {fp} (ed25519 public key)\n"
            f"{tmp_path / '5.key'}: key 5 fp {shared} (hmac-sha256)\n"
        )


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
            f"{tmp_path}: no key 4 to sign with; keys found: none;"
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
