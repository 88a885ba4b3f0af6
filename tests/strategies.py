"""Hypothesis strategies for the wire format, kept together: announcements, bytes, mutations.

``announcements()`` draws only valid messages (every bound of wire.py respected), so a
failure to round-trip is a bug in encode or decode, never in the strategy. The byte
strategies go the other way: from noise, through noise behind a correct header, to valid
datagrams bent by one or a few edits, so that every check in ``decode`` gets reached.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgspec
from hypothesis import strategies as st

from powercast import wire
from powercast.config import PolicySettings
from powercast.policy import Situation
from powercast.wire import Announcement, Power, PowerStatus

KEY = bytes(range(32))
"""The HMAC key of the signed test vector in docs/wire-format.md."""


def sign(data: bytes, key: bytes = KEY) -> bytes:
    """HMAC-SHA256 tag of ``data``, as the wire format defines it."""
    return hmac.new(key, data, hashlib.sha256).digest()


def sign_ed25519(data: bytes) -> bytes:
    """Ed25519 signature of ``data`` by the private key of vector V8 (0x00..0x1f)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signature: bytes = Ed25519PrivateKey.from_private_bytes(KEY).sign(data)
    return signature


SIGNERS = {wire.TAG_SIZE: sign, wire.SIGNATURE_SIZE: sign_ed25519}
"""The signer for each tag length."""


def frame(body: bytes, *, tag_len: int = 0, key_id: int = 0, version: int = wire.VERSION) -> bytes:
    """``body`` behind a header that says exactly that: for bodies encode would refuse."""
    head = wire.HEADER.pack(wire.MAGIC, version, tag_len, key_id, len(body))
    return head + body + (sign(head + body) if tag_len else b"")


# -- valid announcements -------------------------------------------------------------

u63 = st.integers(min_value=0, max_value=2**63 - 1)
publisher_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}\Z", fullmatch=True)
sensor_names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,31}\Z", fullmatch=True)


def _between(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=low, max_value=high, allow_nan=False)


celsius = _between(-273.15, 1000.0)
percent = _between(0.0, 1000.0)
unix_times = _between(0.0, 1e11)
tals = st.floats(min_value=0.0, max_value=86_400.0, exclude_min=True, allow_nan=False)

powers = st.builds(
    Power,
    status=st.sampled_from(PowerStatus),
    charge_pct=st.none() | percent,
    runtime_s=st.none() | _between(0.0, 1e9),
    load_pct=st.none() | percent,
    input_v=st.none() | _between(0.0, 100_000.0),
)


def announcements(max_sensors: int = 8) -> st.SearchStrategy[Announcement]:
    """Valid announcements; with up to 8 sensors they always fit in a datagram."""
    return st.builds(
        Announcement,
        publisher=publisher_ids,
        epoch=u63,
        seq=u63,
        change=u63,
        sent=unix_times,
        tal=tals,
        power=powers,
        temperatures=st.dictionaries(sensor_names, celsius, max_size=max_sensors),
    )


key_ids = st.integers(min_value=1, max_value=0xFFFF)


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    """Valid datagrams: unsigned, or tagged (HMAC) or signed (Ed25519) with a random key id."""
    message = draw(announcements())
    tag_size = draw(st.sampled_from([0, *SIGNERS]))
    if not tag_size:
        return wire.encode(message)
    return wire.encode(message, key_id=draw(key_ids), sign=SIGNERS[tag_size], tag_size=tag_size)


# -- bytes that are mostly not valid -------------------------------------------------

raw_bytes = st.binary(max_size=1300)
"""Noise: almost always stopped by the size, length or magic check."""

_msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=70)
    | st.binary(max_size=16)
    | st.sampled_from([s.value for s in PowerStatus])
)
msgpack_values: st.SearchStrategy[Any] = st.recursive(
    _msgpack_scalars,
    lambda inner: (
        st.lists(inner, max_size=9) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=24,
)
"""Any MessagePack value: as a body it gets past the header and tests the validation."""


@st.composite
def near_announcements(draw: st.DrawFn) -> list[Any]:
    """An 8-element body whose fields are each valid or, now and then, any value at all."""
    valid = msgspec.to_builtins(draw(announcements(max_sensors=3)))
    return [draw(st.just(field) | msgpack_values) for field in valid]


framed_bodies = st.builds(
    frame,
    st.one_of(
        st.binary(max_size=200),
        msgpack_values.map(msgspec.msgpack.encode),
        near_announcements().map(msgspec.msgpack.encode),
    ),
)
"""Arbitrary bodies behind a correct header: decoded as MessagePack, then validated."""


@st.composite
def mutated_datagrams(draw: st.DrawFn) -> bytes:
    """A valid datagram after one to four random edits (flip, set, insert, delete, cut)."""
    data = bytearray(draw(datagrams()))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        # Hypothesis often draws the simplest value, 0: counting from the body's start
        # (and wrapping round to the header) keeps those edits off the magic.
        offset = draw(st.integers(min_value=0, max_value=2**16))
        at = (wire.HEADER.size + offset) % len(data) if data else 0
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=8))]
        elif kind == "truncate":
            del data[at:]
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


any_datagram = st.one_of(raw_bytes, framed_bodies, mutated_datagrams(), datagrams())
"""Everything a receiver might be sent, from noise to the real thing."""


# -- policy: settings, situations and histories (tests/test_policy_properties.py) ----

policy_settings = st.builds(
    PolicySettings,
    temp_high_c=st.sampled_from([30.0, 35.0, 40.0]),
    temp_hysteresis_c=st.sampled_from([0.0, 1.0, 3.0]),
    shed_after_s=st.sampled_from([0.0, 0.3, 5.0]),
    restore_after_s=st.sampled_from([0.0, 0.1, 10.0]),
)
"""Policy settings with thresholds the temperatures below cluster around, and timers that
do not add up exactly in floating point (0.3, 0.1)."""

policy_temperatures = st.one_of(
    st.none(),
    st.sampled_from([25.0, 27.0, 29.9, 30.0, 32.0, 34.9, 35.0, 37.0, 39.9, 40.0, 45.0]),
    st.floats(min_value=-40.0, max_value=120.0, allow_nan=False),
)
"""The hottest fresh sensor, or None; often right at a threshold of policy_settings."""


@st.composite
def situations(draw: st.DrawFn) -> Situation:
    """Any situation combine() could produce, including no fresh publisher at all."""
    sources = draw(st.sampled_from([(), ("a",), ("a", "b")]))
    power = draw(st.sampled_from(PowerStatus)) if sources else PowerStatus.UNKNOWN
    temperature = draw(policy_temperatures) if sources else None
    return Situation(
        power=power,
        temperature=temperature,
        hottest=None if temperature is None else "a/cpu",
        sources=sources,
        stale=draw(st.sampled_from([(), ("c",)])),
    )


time_steps = st.one_of(
    st.just(0.0),
    st.sampled_from([0.5, 1.0, 5.0, 10.0]),
    st.floats(min_value=0.0, max_value=30.0, allow_nan=False),
)
"""Seconds between two evaluations: often none, often exactly a debounce."""

histories = st.lists(st.tuples(time_steps, situations()), max_size=40)
"""What the policy is fed: (seconds since the previous evaluation, situation) pairs."""


# -- controller: stateful runs over zones (tests/test_policy_stateful.py) ------------

zone_temperatures = st.one_of(
    st.none(),
    st.sampled_from([20.0, 26.9, 27.0, 29.9, 30.0, 31.9, 32.0, 34.9, 35.0, 40.0]),
    st.floats(min_value=0.0, max_value=60.0, allow_nan=False),
)
"""One sensor's reading, or None when the publisher does not report it; often right at
one of the stateful zones' limits (30 and 35 °C) or their hysteresis bands."""

sensor_readings = st.fixed_dictionaries({"inlet": zone_temperatures, "cpu": zone_temperatures}).map(
    lambda readings: {name: value for name, value in readings.items() if value is not None}
)
"""What a publisher announces: an inlet and a cpu sensor, either or both may be missing."""

pauses = st.one_of(
    st.sampled_from([0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 12.0, 30.0]),
    st.floats(min_value=0.0, max_value=40.0, allow_nan=False),
)
"""Seconds of fake time between two events: heartbeats, expiries and timers run in it."""

override_lengths = st.sampled_from([0.5, 2.0, 10.0, 120.0])
"""How long an operator's override lasts, in seconds."""
