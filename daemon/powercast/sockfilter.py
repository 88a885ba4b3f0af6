"""A classic BPF program on the controller's receiving sockets: the kernel drops what the
controller would reject anyway, before it takes a place in the receive buffer.

Why: under a flood the receive buffer is full and the kernel drops at random whatever
arrives next, real news included (measured: with one sender at full rate, 43 % of all
datagrams dropped at the socket, so a change got through only on its third or fourth
retransmission). Rejecting faster in Python cannot win against a sender whose loop is as
cheap as our read; dropping in the kernel costs the sender's CPU, not ours.

Two parts, each only ever dropping what the controller would reject:

* **shape** (``network.kernel_filter``): the magic, a version in :data:`wire.VERSIONS`,
  and, with authentication enforced, a key id the keyring holds. Off by default: such
  datagrams are then not counted by reason, only in the socket's drops.
* **blocked sources** (IPv4 sockets): the source addresses of :attr:`Controller.blocked_sources`,
  which had datagrams rejected faster than any publisher sends and sent none that was
  taken; read from the IPv4 header, before the UDP header (``SKF_NET_OFF``).
* **blocked tags**: the last 32 bytes (an HMAC) or 64 bytes (an Ed25519 signature) of
  datagrams the controller checked, rejected as ``bad_tag`` and then saw again
  (:attr:`Controller.blocked`). A datagram ending in such a tag is that forgery or
  another: the tag failed under our key, so a datagram of a configured key cannot be
  dropped by it (short of an HMAC-SHA256 collision, or a forger who could sign anyway).
  A datagram dropped over its verify budget was never checked and never blocks its tag.

On a UDP socket the program sees the UDP header first: the payload starts at byte 8.
An out-of-bounds load ends a classic program with "drop", so every load is behind a
length check.
"""

from __future__ import annotations

import array
import socket
import struct
from collections.abc import Collection, Iterable
from typing import Final, NamedTuple

from powercast import wire

SO_ATTACH_FILTER: Final = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_DETACH_FILTER: Final = getattr(socket, "SO_DETACH_FILTER", 27)
PAYLOAD: Final = 8
"""Where the datagram starts, after the UDP header."""
SOURCE_ADDRESS: Final = -0x100000 + 12
"""``SKF_NET_OFF`` + 12: the source address in the IPv4 header."""
MAX_KEY_IDS: Final = 100
"""More key ids than this are not checked by the kernel (jumps are 8-bit): all pass."""

# Opcodes (linux/filter.h)
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LD_W_IND, _LD_W_LEN = 0x40, 0x80
_ALU_SUB_K, _TAX = 0x14, 0x07
_JA, _JEQ_K, _JGE_K = 0x05, 0x15, 0x35
_RET_K = 0x06
ACCEPT: Final = 0xFFFF_FFFF
"""Keep the whole datagram."""
DROP: Final = 0


class Insn(NamedTuple):
    """One ``struct sock_filter``: jt and jf skip that many instructions forward."""

    code: int
    jt: int
    jf: int
    k: int


def program(
    *,
    versions: Collection[int] | None = None,
    key_ids: Collection[int] | None = None,
    blocked: Iterable[bytes] = (),
    sources: Iterable[str] = (),
) -> list[Insn]:
    """The filter: shape checks when ``versions`` is given (and key ids when ``key_ids``
    is), then the blocked ``sources`` (IPv4 addresses: for an IPv4 socket only), then the
    blocked tags. With none, it accepts everything."""
    out: list[Insn] = []
    if versions is not None:
        out += _shape(sorted(versions), None if key_ids is None else sorted(key_ids))
    addresses = sorted({int.from_bytes(socket.inet_aton(a), "big") for a in sources})
    if addresses:
        out += _sources(addresses)
    tags = list(blocked)
    # Shorter tags first: a datagram too short for one size is too short for the next.
    for size in (wire.TAG_SIZE, wire.SIGNATURE_SIZE):
        sized = [t for t in tags if len(t) == size]
        if sized:
            out += _blocked(sized, size)
    out.append(Insn(_RET_K, 0, 0, ACCEPT))
    return out


def _shape(versions: list[int], key_ids: list[int] | None) -> list[Insn]:
    """Drop unless magic, version and (when given) key id are ours; fall through if so."""
    magic = int.from_bytes(wire.MAGIC, "big")
    body: list[Insn] = []
    # Each check jumps over the rest of its own block when it passes, else to the
    # shared drop at the block's end.
    body.append(Insn(_LD_W_LEN, 0, 0, 0))
    body.append(Insn(_JGE_K, 1, 0, PAYLOAD + wire.HEADER.size))
    body.append(Insn(_RET_K, 0, 0, DROP))
    body.append(Insn(_LD_W_ABS, 0, 0, PAYLOAD))
    body.append(Insn(_JEQ_K, 1, 0, magic))
    body.append(Insn(_RET_K, 0, 0, DROP))
    body += _one_of(_LD_B_ABS, PAYLOAD + 4, versions)
    if key_ids is not None and len(key_ids) <= MAX_KEY_IDS:
        body += _one_of(_LD_H_ABS, PAYLOAD + 6, key_ids)
    return body


def _one_of(load: int, offset: int, values: list[int]) -> list[Insn]:
    """Load the field; any of ``values`` jumps past the drop that ends the block."""
    out = [Insn(load, 0, 0, offset)]
    for i, value in enumerate(values):
        out.append(Insn(_JEQ_K, len(values) - i, 0, value))
    out.append(Insn(_RET_K, 0, 0, DROP))
    return out


def _sources(addresses: list[int]) -> list[Insn]:
    """Drop a datagram from one of ``addresses``; else fall through."""
    out = [Insn(_LD_W_ABS, 0, 0, SOURCE_ADDRESS & 0xFFFF_FFFF)]
    for i, address in enumerate(addresses):
        out.append(Insn(_JEQ_K, len(addresses) - i, 0, address))  # to the drop
    out.append(Insn(_JA, 0, 0, 1))  # none of them: past the drop
    out.append(Insn(_RET_K, 0, 0, DROP))
    return out


def _blocked(tags: list[bytes], size: int) -> list[Insn]:
    """Drop a datagram whose last ``size`` bytes are one of ``tags``; else fall through
    to what follows (the next size's tags), or accept one too short to carry such a tag."""
    words = size // 4
    per_tag = 2 * words + 1
    out = [
        Insn(_LD_W_LEN, 0, 0, 0),
        Insn(_JGE_K, 1, 0, PAYLOAD + wire.HEADER.size + size),
        Insn(_RET_K, 0, 0, ACCEPT),  # too short to carry a tag: nothing to compare
        Insn(_ALU_SUB_K, 0, 0, size),
        Insn(_TAX, 0, 0, 0),
    ]
    for tag in tags:
        for j, (word,) in enumerate(struct.iter_unpack("!I", tag)):
            left = per_tag - 2 * j  # instructions from this load to the next tag's block
            out.append(Insn(_LD_W_IND, 0, 0, 4 * j))
            out.append(Insn(_JEQ_K, 0, left - 2, word))
        out.append(Insn(_RET_K, 0, 0, DROP))
    return out


def attach(sock: socket.socket, insns: list[Insn]) -> None:
    """Put ``insns`` on ``sock`` (replacing any filter it had); raises OSError."""
    fields = [field for insn in insns for field in insn]
    raw = array.array("B", struct.pack("HBBI" * len(insns), *fields))
    address, _ = raw.buffer_info()
    # struct sock_fprog: unsigned short len; struct sock_filter *filter (native padding)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HP", len(insns), address))
