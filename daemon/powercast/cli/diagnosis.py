"""Finding out why: ``powercast tap``, ``ping``, ``demo`` and ``diagram``.

``tap`` shows what arrives on the group, ``ping`` whether multicast reaches each node,
``demo`` a power outage played on loopback, ``diagram`` the fan policy's state chart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from powercast import config as cfg
from powercast.cli.arguments import Commands, Group, command, group_flags
from powercast.errors import UsageError


def add_commands(commands: Commands) -> None:
    tap = command(
        commands,
        "tap",
        _tap,
        "print each datagram on the group, decoded, with its verification result",
    )
    group_flags(tap, sending=False)
    tap.add_argument("--json", action="store_true", help="one JSON object per line")
    tap.add_argument("--count", type=int, help="stop after N datagrams")
    tap.add_argument("--timeout", type=float, help="stop after S seconds")

    ping_p = command(
        commands,
        "ping",
        _ping,
        "multicast reachability, loss and RTT between nodes (run it on each)",
    )
    group_flags(ping_p, sending=True)
    ping_p.add_argument(
        "--id", default=cfg.host_id() or "node", help="this node's name (default: host name)"
    )
    ping_p.add_argument("--count", type=int, default=10, help="pings to send (default 10)")
    ping_p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between pings (default 1)"
    )
    ping_p.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        help="seconds to keep answering after the last ping (default 3)",
    )
    ping_p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="ID",
        help="a node expected to answer; repeat for more",
    )
    ping_p.add_argument("--json", action="store_true", help="the report as one JSON object")

    command(
        commands,
        "demo",
        _demo,
        "play a power outage between a real publisher and controller on loopback",
    )

    diagram = command(
        commands,
        "diagram",
        _diagram,
        "print the fan policy's state chart as Mermaid text, or draw it",
    )
    diagram.add_argument(
        "--output", type=Path, metavar="FILE", help="write a .png or .svg image (needs Graphviz)"
    )
    diagram.add_argument(
        "--config", type=Path, help="a controller's config: note each zone's stages (text only)"
    )


def _demo(_: argparse.Namespace) -> int:
    from powercast.demo import run_demo  # noqa: PLC0415  # the daemons start without it

    return run_demo()


def _tap(args: argparse.Namespace) -> int:
    from powercast.tap import Tap, run_tap  # noqa: PLC0415  # the daemons start without it

    where = Group.from_args(args)
    skew = 10.0
    if isinstance(where.config, cfg.ControllerConfig):
        skew = where.config.auth.max_clock_skew_s
    return run_tap(
        where.address,
        where.port,
        where.interface,
        Tap(where.keyring, max_clock_skew_s=skew),
        sys.stdout,
        as_json=args.json,
        count=args.count,
        timeout=args.timeout,
    )


def _ping(args: argparse.Namespace) -> int:
    from powercast import ping  # noqa: PLC0415  # the daemons start without it

    where = Group.from_args(args)
    ttl = where.ttl(args.ttl)
    key_id = where.key_id(args.key_id)
    if args.count < 1 or args.interval <= 0 or args.timeout < 0:
        raise UsageError("ping: --count must be at least 1, --interval above 0")
    probe = ping.encode(ping.Probe("ping", args.id, 1, 1), where.keyring, key_id)
    if ping.decode(probe, where.keyring) is None:
        raise UsageError(
            f"ping: --id: expected letters, digits and ._:@- (at most 64), got {args.id!r}"
        )
    pinger = ping.Pinger(node=args.id, keyring=where.keyring, key_id=key_id, count=args.count)
    result = ping.run(
        pinger,
        group=where.address,
        port=where.port,
        interface=where.interface,
        interval=args.interval,
        timeout=args.timeout,
        ttl=ttl,
        expect=tuple(args.peer),
    )
    print(json.dumps(result, indent=2) if args.json else ping.render(result))
    return 0 if result["ok"] else 1


def _diagram(args: argparse.Namespace) -> int:
    from powercast import diagram  # noqa: PLC0415  # only this command draws

    if args.output is None:
        config = None
        if args.config is not None:
            loaded = cfg.load(args.config)
            if not isinstance(loaded, cfg.ControllerConfig):
                raise UsageError(
                    f"{args.config}: role: expected a controller's config, got {loaded.role!r}"
                )
            config = loaded
        sys.stdout.write(diagram.mermaid(config))
        return 0
    try:
        diagram.write_image(args.output)
    except diagram.DiagramError as err:
        raise diagram.DiagramError(f"diagram: {err}") from None
    print(f"{args.output}: the fan policy's state chart")
    return 0
