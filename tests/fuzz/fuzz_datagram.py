"""Fuzz target: any bytes through the controller's whole datagram path.

    python tests/fuzz/fuzz_datagram.py -max_total_time=60

Decoding, verification, the clock window, the session and the policy must never raise,
whatever arrives. With a key in the ring, the fuzzer also gets correctly signed bodies
to explore (the first input byte chooses), so it reaches the code behind the tag check.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from powercast import wire
    from powercast.config import ControllerAuth, ControllerConfig
    from powercast.controller import Controller
    from powercast.secrets import keygen, load_keyring

_dir = Path(tempfile.mkdtemp(prefix="powercast-fuzz-"))
keygen(1, _dir / "1.key")
_ring = load_keyring(_dir)
_sign = _ring.signer(1)
_controller = Controller(
    ControllerConfig(auth=ControllerAuth(keys_dir=str(_dir), max_clock_skew_s=0.0)), _ring
)
_now = [0.0]


def one(data: bytes) -> None:
    _now[0] += 0.01
    if data[:1] == b"\x01" and len(data) > wire.HEADER.size:
        # A well-formed, correctly signed header around a fuzzed body.
        body = data[1:1100]
        signed = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.TAG_SIZE, 1, len(body)) + body
        data = signed + _sign(signed)
    _controller.receive(data, _now[0], 1_800_000_000.0)
    _controller.tick(_now[0])
    _controller.notices.clear()


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
