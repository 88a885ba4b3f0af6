"""Setting up a node: ``powercast config check|init|reference`` and ``powercast keygen``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from powercast import config as cfg
from powercast.auth import ED25519, HMAC, KeyringError, describe
from powercast.cli.arguments import Commands, command
from powercast.errors import EX_CONFIG
from powercast.secrets import (
    ALL_KINDS,
    KEY_FILE,
    file_fingerprint,
    keygen,
    keys_dir,
    load_keyring,
    load_keys,
)


def add_commands(commands: Commands) -> None:
    conf = commands.add_parser("config", help="check or create configuration files")
    actions = conf.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = command(actions, "check", _check, "validate a config file; the role is read from it")
    check.add_argument(
        "files", nargs="*", type=Path, metavar="FILE", help="default: both files in /etc/powercast"
    )
    init = command(
        actions, "init", _init, "print a commented config that runs as printed, on stdout"
    )
    init.add_argument("--role", required=True, choices=["publisher", "controller", "relay"])
    command(actions, "reference", _reference, "print every key of every role, in Markdown")

    new_key = command(
        commands,
        "keygen",
        _keygen,
        "write a new random key (mode 0600; an ed25519 public key 0644 beside it; never"
        " overwrites)",
    )
    new_key.add_argument("key_id", type=int, nargs="?", metavar="ID", help="key id, 1..65535")
    new_key.add_argument(
        "file",
        type=Path,
        nargs="?",
        metavar="FILE",
        help="e.g. /etc/powercast/keys/1.key (hmac-sha256) or .../1.private (ed25519)",
    )
    new_key.add_argument(
        "--scheme",
        choices=[HMAC, ED25519],
        default=HMAC,
        help="hmac-sha256 (default): one shared key; ed25519: a private key for the"
        " publisher and its public key (FILE with .public) for controllers and relays",
    )
    new_key.add_argument(
        "--show",
        type=Path,
        nargs="?",
        const=Path(""),
        metavar="PATH",
        help="print the fingerprints of a key file or directory (default: as the daemons),"
        " to compare between nodes; writes nothing",
    )


def _init(args: argparse.Namespace) -> int:
    from powercast.cli.templates import template  # noqa: PLC0415  # the daemons start without it

    sys.stdout.write(template(args.role))
    return 0


def _reference(args: argparse.Namespace) -> int:
    from powercast import reference  # noqa: PLC0415  # the daemons start without it

    sys.stdout.write(reference.render())
    return 0


def _check(args: argparse.Namespace) -> int:
    """Each file must load, its keys must be there, and this host must have what it names
    (interfaces, addresses, programs); else 78. Every file is checked, and every problem
    reported, before the exit."""
    files = args.files or [p for p in cfg.DEFAULT_PATHS.values() if p.exists()]
    if not files:
        raise cfg.ConfigError("no config file given and none in /etc/powercast")
    status = 0
    for path in files:
        try:
            config = cfg.load(path)
            keyring = load_keys(config)
        except (cfg.ConfigError, KeyringError) as err:  # on to the next file
            print(f"powercast: {err}", file=sys.stderr)
            status = EX_CONFIG
            continue
        problems = cfg.host_problems(config)
        for problem in problems:
            print(f"powercast: {path}: {problem}", file=sys.stderr)
        if problems:
            status = EX_CONFIG
            continue
        if isinstance(config, cfg.RelayConfig) and config.auth.mode == "off":
            print(f"{path}: ok (relay; carries datagrams as they are, verifies nothing)")
            continue
        keys = keyring.describe()
        auth = config.auth
        if isinstance(auth, cfg.PublisherAuth):
            how = f"signs with key {auth.key_id} ({auth.scheme})" if auth.key_id else "UNSIGNED"
        else:
            bound = "".join(
                f"; {publisher} by key {', '.join(map(str, ids))}"
                for publisher, ids in sorted(auth.publishers.items())
            )
            how = f"auth {auth.mode}, believes {' and '.join(auth.schemes)}{bound}"
        print(f"{path}: ok ({config.role}; {how}; keys in {keyring.directory}: {keys})")
    return status


def _keygen(args: argparse.Namespace) -> int:
    if args.show is not None:
        if args.key_id is not None:
            raise KeyringError("keygen --show takes a key file or directory, not an id")
        return _show(args.show)
    if args.key_id is None or args.file is None:
        raise KeyringError(
            "keygen: expected ID and FILE (powercast keygen 1 /etc/powercast/keys/1.key)"
        )
    written = keygen(args.key_id, args.file, args.scheme)
    _, _, fp = file_fingerprint(written[-1])
    compare = "then compare fingerprints with `powercast keygen --show`"
    key = describe(args.key_id, fp)
    if args.scheme == HMAC:
        print(
            f"{written[0]}: new {HMAC} {key} (mode 0600); copy this file to every"
            f" publisher and controller, {compare}"
        )
        return 0
    print(f"{written[0]}: new {ED25519} {key} (mode 0600)")
    for public in written[1:]:
        print(
            f"{public}: its public key, {key} (mode 0644): copy it to controllers and"
            f" relays, {compare}"
        )
    return 0


_KINDS_SHOWN = {"key": HMAC, "private": f"{ED25519} private key", "public": f"{ED25519} public key"}


def _show(path: Path) -> int:
    """Each key file's id, fingerprint and scheme, never the key: what to compare between
    two nodes (an Ed25519 private key shows its public key's fingerprint)."""
    if path == Path("") or path.is_dir():
        directory = path if path != Path("") else keys_dir("")
        ring = load_keyring(directory, ALL_KINDS)  # refuses what the daemons would
        if not ring.ids:
            raise KeyringError(f"{directory}: no key files (*.key, *.private, *.public)")
        files = [directory / n for n in sorted(os.listdir(directory)) if KEY_FILE.match(n)]
    else:
        files = [path]
    for file in files:
        key_id, kind, fp = file_fingerprint(file)
        print(f"{file}: {describe(key_id, fp)} ({_KINDS_SHOWN[kind]})")
    return 0
