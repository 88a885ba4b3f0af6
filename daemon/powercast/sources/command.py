"""A program that prints one JSON reading; killed if it runs past its timeout."""

from __future__ import annotations

import asyncio
import contextlib

from powercast.config import CommandSource, Reading
from powercast.sources.base import SourceError, parse_reading


class CommandReader:
    def __init__(self, name: str, config: CommandSource) -> None:
        self.name = name
        self.interval_s = config.interval_s
        self._argv = config.argv
        self._timeout = config.timeout_s

    def close(self) -> None:
        """Nothing is kept open between reads."""

    async def read(self) -> Reading:
        program = self._argv[0]
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as err:
            raise SourceError(f"{program}: cannot run: {err.strerror or err}") from None
        try:
            async with asyncio.timeout(self._timeout):
                out, err_out = await proc.communicate()
        except TimeoutError:
            proc.kill()
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
            raise SourceError(f"{program}: no answer within {self._timeout:g} s (killed)") from None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            tail = err_out.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise SourceError(f"{program}: exited with status {proc.returncode} {tail[0]}".rstrip())
        return parse_reading(out, f"{program} output")
