"""What the commands share: how one is added, and the flags that say where the group is.

Every subcommand is added with :func:`command`, which binds its handler, a function
``(args) -> int`` giving the exit status; ``cli.main`` calls that handler and nothing else.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from powercast import config as cfg
from powercast.auth import Keyring
from powercast.secrets import ALL_KINDS, keys_dir, load_keyring

Handler = Callable[[argparse.Namespace], int]
"""Runs one command; the exit status. An error an operator can act on is raised, as a
PowercastError, for ``main`` to print."""

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # no public name
"""The subcommands of a parser: where :func:`command` adds one."""


def command(
    commands: Commands, name: str, run: Handler, text: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """Add the subcommand ``name``, described by ``text`` in the list of commands, run by
    ``run``; its flags are then added to the parser returned."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=text, **kwargs)
    parser.set_defaults(run=run)
    return parser


def group_flags(parser: argparse.ArgumentParser, *, sending: bool) -> None:
    """--config, --group, --port, --interface and --keys-dir; for a command that sends,
    also --ttl and --key-id. :meth:`Group.from_args` reads them."""
    taken = "group, port, interface, ttl and keys" if sending else "group, port, interface and keys"
    parser.add_argument("--config", type=Path, help=f"take {taken} from it")
    parser.add_argument("--group", help="multicast group (default: from --config, or 239.1.1.1)")
    parser.add_argument("--port", type=int, help="UDP port (default: from --config, or 5001)")
    parser.add_argument(
        "--interface", help="interface name or address (default: from --config, or 127.0.0.1)"
    )
    if sending:
        parser.add_argument("--ttl", type=int, help="multicast TTL (default: from --config, or 1)")
    parser.add_argument("--keys-dir", help="directory of key files (default: as the daemons)")
    if sending:
        parser.add_argument(
            "--key-id",
            type=int,
            help="key to sign with; 0: unsigned (default: the config's, else the lowest found)",
        )


@dataclass(frozen=True, slots=True)
class Group:
    """The group to join or send to, and the keys to verify or sign with: each flag of
    :func:`group_flags` over the value in --config, over the default."""

    config: cfg.Config | None
    address: str
    port: int
    interface: str
    keyring: Keyring

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Group:
        config = cfg.load(args.config) if args.config is not None else None
        network = config.network if config is not None else cfg.Network()
        configured = ""
        if config is not None:
            configured = config.auth.keys_dir
        directory = keys_dir(args.keys_dir if args.keys_dir is not None else configured)
        return cls(
            config=config,
            address=args.group or network.group,
            port=args.port or network.port,
            interface=args.interface or network.interface,
            keyring=load_keyring(directory, ALL_KINDS),
        )

    def ttl(self, flag: int | None) -> int:
        """--ttl, else a publisher config's, else 1 (this link only)."""
        if flag is not None:
            return flag
        return self.config.network.ttl if isinstance(self.config, cfg.PublisherConfig) else 1

    def key_id(self, flag: int | None) -> int:
        """--key-id, else a publisher config's, else the lowest in the keyring that can
        sign (a shared or private key, not a public one); 0 for unsigned. KeyringError,
        naming the directory, for a key that is not there."""
        key_id = flag
        if key_id is None:
            if isinstance(self.config, cfg.PublisherConfig):
                key_id = self.config.auth.key_id
            else:
                signing = self.keyring.signing_ids
                key_id = signing[0] if signing else 0
        if key_id:
            self.keyring.signer(key_id)
        return key_id
