"""The command line: ``powercast COMMAND``, one handler per command.

``main(argv) -> int`` is the only place that prints an error or picks an exit status.
A mistake an operator can fix (a bad config, an interface that does not exist, a daemon
that is not running) is a :class:`~powercast.errors.PowercastError`: one line on stderr
and that error's ``exit_code``. Anything else is a bug: one line saying so, and a
traceback only with POWERCAST_DEBUG=1.

The commands, by who runs them:

- :mod:`.daemons`: ``control``, ``publish``, ``relay``, ``failsafe`` (the systemd units)
- :mod:`.setup`: ``config check|init``, ``keygen`` (installing a node)
- :mod:`.operator`: ``status``, ``override``, ``send`` (running a site)
- :mod:`.diagnosis`: ``tap``, ``ping``, ``demo``, ``diagram`` (finding out why)
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from powercast import __version__, logs
from powercast.cli import daemons, diagnosis, operator, setup
from powercast.cli.arguments import Handler
from powercast.errors import PowercastError

__all__ = ["build_parser", "main"]

EX_SOFTWARE = 70
"""sysexits' "internal software error": a bug, not the operator's mistake."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="powercast",
        description="Power and temperature announcements over IP multicast, and the"
        " controllers that shed or restore ventilation fans from them.",
    )
    parser.add_argument("--version", action="version", version=f"powercast {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    daemons.add_commands(commands)
    setup.add_commands(commands)
    operator.add_commands(commands)
    diagnosis.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Handler = args.run
    try:
        return run(args)
    except PowercastError as err:
        _say(f"powercast: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a bug, not a user's mistake: say so plainly
        if os.environ.get("POWERCAST_DEBUG") == "1":
            raise
        _say(f"powercast: internal error: {err!r} (run with POWERCAST_DEBUG=1 for a traceback)")
        _say(traceback.format_exc(limit=0).rstrip("\n"))
        return EX_SOFTWARE


def _say(line: str) -> None:
    """An error on stderr, never waited on: a daemon that ends on an error, its journal
    not reading, still ends (and systemd runs the failsafe after it)."""
    logs.say(line, sys.stderr)
    logs.drain(logs.EXIT_DRAIN_S)
