"""The asyncio runtime around the pure cores: sockets, clocks, signals, processes.

One module per daemon (controller, publisher, relay), all over one lifecycle
(:mod:`.lifecycle`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from powercast import config as cfg
from powercast import net
from powercast.auth import Keyring
from powercast.config import ControllerConfig, RelayConfig
from powercast.runtime.controller import ControllerDaemon
from powercast.runtime.lifecycle import Daemon
from powercast.runtime.publisher import PublisherDaemon
from powercast.runtime.receiver import RECEIVE_BATCH, Receiver

__all__ = ["RECEIVE_BATCH", "ControllerDaemon", "Daemon", "PublisherDaemon", "Receiver", "serve"]


async def serve(path: Path, config: cfg.Config, keyring: Keyring, *, dry_run: bool = False) -> None:
    """Run the daemon for ``config``'s role until SIGTERM.

    A startup failure (NetworkError) comes out bare, not wrapped in an ExceptionGroup,
    so the command line can print it as one line.
    """
    daemon: Daemon[Any]
    if isinstance(config, ControllerConfig):
        daemon = ControllerDaemon(path, config, keyring, dry_run=dry_run)
    elif isinstance(config, RelayConfig):
        from powercast.runtime.relay import RelayDaemon  # noqa: PLC0415  # aiomqtt only here

        daemon = RelayDaemon(path, config, keyring)
    else:
        daemon = PublisherDaemon(path, config, keyring)
    try:
        await daemon.run()
    except* net.NetworkError as group:
        raise group.exceptions[0] from None
