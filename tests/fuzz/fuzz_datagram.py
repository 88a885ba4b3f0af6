"""Fuzz target: any bytes through the controller's whole datagram path.

    python tests/fuzz/fuzz_datagram.py -max_total_time=60

Decoding, verification, the clock window, the session and the policy must never raise,
whatever arrives. With keys in the ring (HMAC key 1, Ed25519 key 2, each bound to the
publisher ``ups-a``), the fuzzer also gets correctly tagged or signed bodies to explore
(the first input byte chooses), so it reaches the code behind the tag check; the second
byte picks the source address, whose verify budget is charged.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from powercast import wire
    from powercast.auth import Keyring
    from powercast.config import ControllerAuth, ControllerConfig
    from powercast.controller import Controller
    from powercast.secrets import keygen, load_keyring

_dir = Path(tempfile.mkdtemp(prefix="powercast-fuzz-"))
keygen(1, _dir / "1.key")
_shared = bytes.fromhex((_dir / "1.key").read_text())
assert load_keyring(_dir).ids == [1]
_ring = Keyring.from_keys({1: _shared}, _dir, private={2: bytes(range(32))})
_signers = {1: _ring.signer(1), 2: _ring.signer(2)}
_auth = ControllerAuth(
    keys_dir=str(_dir),
    max_clock_skew_s=0.0,
    scheme=["hmac-sha256", "ed25519"],
    publishers={"ups-a": [1, 2]},
)
_controller = Controller(ControllerConfig(auth=_auth), _ring)
_now = [0.0]


def one(data: bytes) -> None:
    _now[0] += 0.01
    source = f"10.0.0.{data[1]}" if len(data) > 1 else None
    if data[:1] in (b"\x01", b"\x02") and len(data) > wire.HEADER.size:
        # A well-formed, correctly tagged (1) or signed (2) header around a fuzzed body.
        sign = _signers[data[0]]
        body = data[2:1050]
        header = wire.HEADER.pack(wire.MAGIC, wire.VERSION, sign.tag_size, data[0], len(body))
        data = header + body + sign(header + body)
    _controller.receive(data, _now[0], 1_800_000_000.0, source)
    _controller.tick(_now[0])
    _controller.notices.clear()


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
