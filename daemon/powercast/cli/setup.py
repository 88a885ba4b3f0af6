"""Setting up a node: ``powercast config check|init|reference`` and ``powercast keygen``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from powercast import config as cfg
from powercast import reference
from powercast.auth import KeyringError, describe, fingerprint
from powercast.cli.arguments import Commands, command
from powercast.cli.templates import template
from powercast.errors import EX_CONFIG
from powercast.secrets import KEY_FILE, keygen, keys_dir, load_keyring, load_keys, read_key


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
        commands, "keygen", _keygen, "write a new random key file (mode 0600; never overwrites)"
    )
    new_key.add_argument("key_id", type=int, nargs="?", metavar="ID", help="key id, 1..65535")
    new_key.add_argument(
        "file", type=Path, nargs="?", metavar="FILE", help="e.g. /etc/powercast/keys/1.key"
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
    sys.stdout.write(template(args.role))
    return 0


def _reference(args: argparse.Namespace) -> int:
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
        if isinstance(config, cfg.RelayConfig):
            print(f"{path}: ok (relay; carries datagrams as they are, needs no keys)")
        else:
            signs = ""
            if isinstance(config, cfg.PublisherConfig):
                signs = f", signs with key {config.auth.key_id}" if config.auth.key_id else ""
            print(
                f"{path}: ok ({config.role}; keys in {keyring.directory}:"
                f" {keyring.describe()}{signs})"
            )
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
    fp = keygen(args.key_id, args.file)
    print(
        f"{args.file}: new {describe(args.key_id, fp)} (mode 0600); copy this file to every"
        " publisher and controller, then compare fingerprints with `powercast keygen --show`"
    )
    return 0


def _show(path: Path) -> int:
    """Each key's id and fingerprint, never the key: what to compare between two nodes."""
    if path == Path("") or path.is_dir():
        ring = load_keyring(path if path != Path("") else keys_dir(""))
        if not ring.ids:
            raise KeyringError(f"{ring.directory}: no key files (*.key)")
        for key_id in ring.ids:
            print(f"{ring.file(key_id)}: {describe(key_id, ring.fingerprints[key_id])}")
        return 0
    match = KEY_FILE.match(path.name)
    if match is None:
        raise KeyringError(f"{path}: expected a key file named <id>.key, or a directory of them")
    print(f"{path}: {describe(int(match[1]), fingerprint(read_key(path)))}")
    return 0
