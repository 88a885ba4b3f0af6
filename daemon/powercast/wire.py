"""Wire format v1: one announcement per UDP datagram.

This module holds the whole format and nothing else: no sockets, no clocks. The rule
it keeps is the one every receiver relies on: :func:`decode` turns *any* bytes into a
:class:`Frame` or raises :class:`DecodeError`, never another exception, so a hostile
or broken datagram can only ever be counted and dropped.

Layout (all integers big-endian; docs/wire-format.md has test vectors)::

    offset  size  field
    0       4     magic  b"PWRC"
    4       1     version (1)
    5       1     tag length T: 0 (unsigned), 32 (HMAC-SHA256) or 64 (Ed25519)
    6       2     key id: 0 when unsigned, else the id of the key that made the tag
    8       2     body length N
    10      N     body: a MessagePack array, see :class:`Announcement`
    10+N    T     tag over bytes [0, 10+N)

The tag covers the header too, so a key id or length cannot be changed in flight. Its
length says how it was made: an HMAC (any holder of the shared key can make one) or an
Ed25519 signature (only the holder of the private key can; receivers keep public keys).
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Callable
from typing import Annotated, Final

import msgspec

MAGIC: Final = b"PWRC"
VERSION: Final = 1
VERSIONS: Final = frozenset({VERSION})
"""Every version a receiver takes: the decoder's check and the kernel filter
(:mod:`powercast.sockfilter`) both follow it."""
MAX_DATAGRAM: Final = 1200
TAG_SIZE: Final = 32
"""An HMAC-SHA256 tag."""
SIGNATURE_SIZE: Final = 64
"""An Ed25519 signature."""
TAG_SIZES: Final = (0, TAG_SIZE, SIGNATURE_SIZE)
HEADER: Final = struct.Struct("!4sBBHH")
HEADER_SIZE: Final = HEADER.size
_unpack_header: Final = HEADER.unpack_from

_U63 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""Counters and epochs stay within int64 so every MessagePack decoder reads them."""
# msgspec searches with ``re.search``, where ``$`` also matches before a final newline:
# ``\Z`` is what keeps "ups-1\n" out.
_PublisherId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*\Z")
]
_SensorName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*\Z")
]
# Bounds reject NaN and infinities too: no comparison with NaN holds.
_Celsius = Annotated[float, msgspec.Meta(ge=-273.15, le=1000.0)]
_Percent = Annotated[float, msgspec.Meta(ge=0.0, le=1000.0)]
_Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=1e9)]
_UnixTime = Annotated[float, msgspec.Meta(ge=0.0, le=1e11)]
_Volts = Annotated[float, msgspec.Meta(ge=0.0, le=100_000.0)]


class PowerStatus(enum.Enum):
    """What the UPS says about mains power. ``unknown`` means "could not read it"."""

    ONLINE = "online"
    ON_BATTERY = "on_battery"
    LOW_BATTERY = "low_battery"
    UNKNOWN = "unknown"


class Power(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Power readings; every analogue value may be missing (None)."""

    status: PowerStatus = PowerStatus.UNKNOWN
    charge_pct: _Percent | None = None
    runtime_s: _Seconds | None = None
    load_pct: _Percent | None = None
    input_v: _Volts | None = None


class Announcement(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One publisher's state at one moment.

    ``epoch`` is random per publisher start, ``seq`` counts datagrams within an epoch,
    ``change`` goes up whenever the announced state changes (so a receiver can tell a
    repeat from news), ``sent`` is the publisher's wall clock (Unix seconds) and ``tal``
    the time allowed to live: after ``tal`` seconds without a newer datagram, the
    receiver must treat this publisher's data as lost.
    """

    publisher: _PublisherId
    epoch: _U63
    seq: _U63
    change: _U63
    sent: _UnixTime
    tal: Annotated[float, msgspec.Meta(gt=0.0, le=86_400.0)]
    power: Power
    temperatures: Annotated[dict[_SensorName, _Celsius | None], msgspec.Meta(max_length=64)]
    """Sensor name -> °C; None: the sensor failed (it was read before in this epoch and
    cannot be read now), its value is unknown."""


class Frame(msgspec.Struct, frozen=True):
    """A decoded datagram: the message plus what authentication needs."""

    message: Announcement
    key_id: int
    tag: bytes
    signed: bytes
    """The bytes the tag covers (header and body)."""


class Reject(enum.StrEnum):
    """Every reason a receiver drops a datagram for, in the order the checks are made
    (docs/wire-format.md, "Receiver rules"). The value is the counter label
    (``rejected.<reason>``, ``powercast_datagrams_rejected_total{reason}``) and the log's
    ``reason``; docs/deploy.md lists each one under ``datagram_rejected``."""

    # decode(): the header, the lengths, the body
    size = "size"  # longer than MAX_DATAGRAM
    truncated = "truncated"  # shorter than the header
    magic = "magic"  # not PWRC: not an announcement (a ping, another protocol)
    version = "version"  # not version 1
    tag = "tag"  # a tag length that does not go with the key id
    length = "length"  # the header's lengths are not the datagram's
    body = "body"  # not exactly one valid announcement in MessagePack
    # auth.Gate.check(): the tag, before the body when authentication is enforced
    unsigned = "unsigned"  # key id 0
    unknown_key = "unknown_key"  # no key with that id and kind of tag
    over_budget = "over_budget"  # its source or publisher spent its verify budget: not checked
    bad_tag = "bad_tag"  # the HMAC or signature is not the tag
    wrong_key = "wrong_key"  # a good tag, by a key not allowed for that publisher
    # the controller: who sent it, when, and in what order
    clock = "clock"  # sent further than auth.max_clock_skew_s from our clock
    unlisted = "unlisted"  # a publisher not in policy.publishers
    capacity = "capacity"  # a new publisher while MAX_PUBLISHERS are fresh
    replay = "replay"  # older than a datagram already taken from that publisher


class DecodeError(Exception):
    """The datagram is not a valid v1 announcement.

    ``reason`` says which check failed, fit for a counter label; the message says more.
    """

    def __init__(self, reason: Reject, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EncodeError(ValueError):
    """The announcement cannot be sent: it does not fit in one datagram, or a value is out
    of bounds (NaN, negative, a bad publisher id...) so every receiver would reject it."""


_decoder: Final = msgspec.msgpack.Decoder(Announcement)
_encoder: Final = msgspec.msgpack.Encoder()


def encode(
    message: Announcement,
    *,
    key_id: int = 0,
    sign: Callable[[bytes], bytes] | None = None,
    tag_size: int | None = None,
) -> bytes:
    """Return the datagram for ``message``; with ``sign``, append its tag over the rest:
    ``tag_size`` bytes, else the signer's own ``tag_size`` (an :class:`auth.Signer`), else
    TAG_SIZE (an HMAC)."""
    if tag_size is None:
        tag_size = getattr(sign, "tag_size", TAG_SIZE)
    if (sign is None) != (key_id == 0):
        raise ValueError("a key id needs a signer and a signer needs a key id other than 0")
    if not 0 <= key_id <= 0xFFFF:
        raise ValueError(f"key id must be in 0..65535 (got {key_id!r})")
    if sign is not None and tag_size not in TAG_SIZES[1:]:
        raise ValueError(f"tag size must be one of {TAG_SIZES[1:]} (got {tag_size!r})")
    body = _encoder.encode(message)
    try:  # Structs do not check their bounds when built: check what a receiver would.
        _decoder.decode(body)
    except msgspec.ValidationError as err:
        raise EncodeError(f"announcement {_field(str(err), message)}") from None
    tag_len = tag_size if sign else 0
    size = HEADER.size + len(body) + tag_len
    if size > MAX_DATAGRAM:
        raise EncodeError(
            f"announcement is {size} bytes, more than the {MAX_DATAGRAM} a datagram may hold"
            f" ({len(message.temperatures)} temperatures): announce fewer sensors"
        )
    signed = HEADER.pack(MAGIC, VERSION, tag_len, key_id, len(body)) + body
    if sign is None:
        return signed
    tag = sign(signed)
    if len(tag) != tag_size:
        raise ValueError(f"signer returned {len(tag)} bytes, expected {tag_size}")
    return signed + tag


def _field(error: str, message: Announcement) -> str:
    """Say which field a validation error is about: ``$[6][1]`` is ``power.charge_pct``."""
    expected, _, where = error.partition(" - at ")
    found = re.search(r"\$\[(\d+)\](?:\[(\d+)\])?", where)
    if found is None:
        return f"is invalid: {error}"
    name = Announcement.__struct_fields__[int(found[1])]
    value = getattr(message, name)
    if name == "power" and found[2] is not None:
        sub = Power.__struct_fields__[int(found[2])]
        name, value = f"power.{sub}", getattr(value, sub)
    return f"field {name!r}: {expected} (got {value!r})"


class Envelope(msgspec.Struct, frozen=True, gc=False):
    """A datagram whose header checked out, before its body is decoded.

    Enough to check the tag, which a receiver that enforces authentication does first:
    a forgery then costs an HMAC, not a decode as well.
    """

    key_id: int
    tag: bytes
    signed: bytes
    """The bytes the tag covers (header and body)."""
    body: bytes


def open_envelope(data: bytes) -> Envelope:
    """Check the header and lengths. Raises :class:`DecodeError` and nothing else."""
    size = len(data)
    if size > MAX_DATAGRAM:
        raise DecodeError(Reject.size, f"{size} bytes, at most {MAX_DATAGRAM} allowed")
    if size < HEADER_SIZE:
        raise DecodeError(Reject.truncated, f"{size} bytes, shorter than the header")
    magic, version, tag_len, key_id, body_len = _unpack_header(data)
    if magic != MAGIC:
        raise DecodeError(Reject.magic, f"expected {MAGIC!r}, got {bytes(magic)!r}")
    if version not in VERSIONS:
        raise DecodeError(Reject.version, f"expected {VERSION}, got {version}")
    if tag_len not in TAG_SIZES or (tag_len == 0) != (key_id == 0):
        raise DecodeError(
            Reject.tag,
            f"tag length {tag_len} with key id {key_id}"
            " (expected 0 with 0, or 32 or 64 with a key)",
        )
    end = HEADER_SIZE + body_len
    if end + tag_len != size:
        raise DecodeError(Reject.length, f"header says {end + tag_len} bytes, datagram has {size}")
    # Copies, not views: at most 1,200 bytes, and cheaper than making a memoryview.
    return Envelope(key_id, data[end:], data[:end], data[HEADER_SIZE:end])


class _Head(msgspec.Struct, frozen=True, array_like=True):
    """The first field of an announcement; the rest is skipped, not checked."""

    publisher: _PublisherId


_head_decoder: Final = msgspec.msgpack.Decoder(_Head)


def claimed_publisher(envelope: Envelope) -> str | None:
    """The publisher id the body claims, read alone so that a verify budget can be
    charged to it before the tag is checked; None when it cannot be read. Unverified:
    only ever a key to a budget or to the keys allowed for it."""
    try:
        return _head_decoder.decode(envelope.body).publisher
    except (msgspec.DecodeError, RecursionError):  # skipping what is nested too deep
        return None


class Glance(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """An announcement read only as far as telling a heartbeat from news: the fields that
    order it checked, the readings kept as their bytes. A publisher's heartbeats differ
    from its last announcement in ``seq`` and ``sent`` alone, so one whose readings are
    the very bytes already decoded and checked needs no decode of its own."""

    publisher: str
    """Unchecked here: only ever compared with a publisher id already taken."""
    epoch: _U63
    seq: _U63
    change: _U63
    sent: _UnixTime
    tal: msgspec.Raw
    power: msgspec.Raw
    temperatures: msgspec.Raw


_glance_decoder: Final = msgspec.msgpack.Decoder(Glance)


def glance(envelope: Envelope) -> Glance | None:
    """The envelope's announcement at a glance; None when it cannot be read so (then the
    full decode says why, if it is bad)."""
    try:
        return _glance_decoder.decode(envelope.body)
    except (msgspec.DecodeError, RecursionError):  # skipping what is nested too deep
        return None


def decode_body(envelope: Envelope) -> Announcement:
    """The announcement in an envelope. Raises :class:`DecodeError` and nothing else."""
    try:
        return _decoder.decode(envelope.body)
    except msgspec.DecodeError as err:  # ValidationError is a subclass
        raise DecodeError(Reject.body, str(err)) from None
    except RecursionError:
        raise DecodeError(Reject.body, "nested too deep") from None


def decode(data: bytes) -> Frame:
    """Parse one datagram. Raises :class:`DecodeError` and nothing else."""
    envelope = open_envelope(data)
    return Frame(
        message=decode_body(envelope),
        key_id=envelope.key_id,
        tag=bytes(envelope.tag),
        signed=bytes(envelope.signed),
    )
