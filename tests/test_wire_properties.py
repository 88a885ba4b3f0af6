"""Properties of the wire format over generated messages and bytes.

The example counts come from the hypothesis profile (tests/conftest.py): modest by
default, ``HYPOTHESIS_PROFILE=long`` for a soak.
"""

from __future__ import annotations

import hmac

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from powercast import wire
from powercast.wire import MAX_DATAGRAM, Announcement, DecodeError, EncodeError, Frame

from strategies import (
    SIGNERS,
    announcements,
    any_datagram,
    datagrams,
    framed_bodies,
    key_ids,
    mutated_datagrams,
    raw_bytes,
    sign,
)

pytestmark = pytest.mark.unit

REASONS = {"size", "truncated", "magic", "version", "tag", "length", "body"}


def decode_or_reason(data: bytes) -> Frame | str:
    """Decode ``data``; a DecodeError becomes its reason, any other exception escapes."""
    try:
        frame = wire.decode(data)
    except DecodeError as err:
        reason = err.reason
    else:
        event("decoded")
        assert len(data) <= MAX_DATAGRAM
        assert frame.signed + frame.tag == data
        return frame
    event(f"rejected: {reason}")
    assert reason in REASONS
    return reason


class TestDecodeAnyBytes:
    """decode turns any bytes into a Frame or a DecodeError, never anything else."""

    @given(raw_bytes)
    @example(b"")
    @example(b"PWRC\x01\x00\x00\x00\x00\x00")
    @example(b"PWRC\x01\x00\x00\x00\x00\x01\xc1")
    def test_noise(self, data: bytes) -> None:
        """Random bytes of 0..1300: a Frame or a DecodeError."""
        decode_or_reason(data)

    @given(framed_bodies)
    def test_any_body_behind_a_good_header(self, data: bytes) -> None:
        """Any body (noise, any MessagePack value, a bent announcement): Frame or DecodeError."""
        decode_or_reason(data)

    @given(mutated_datagrams())
    def test_mutated_valid_datagrams(self, data: bytes) -> None:
        """A valid datagram after a few random edits: a Frame or a DecodeError."""
        decode_or_reason(data)

    @given(any_datagram)
    def test_decoded_frames_reencode(self, data: bytes) -> None:
        """Whatever decodes holds a message that encode accepts: decode is no looser than encode."""
        result = decode_or_reason(data)
        if isinstance(result, Frame):
            sign_ = (lambda _: result.tag) if result.key_id else None
            made = wire.encode(
                result.message, key_id=result.key_id, sign=sign_, tag_size=len(result.tag) or None
            )
            again = wire.decode(made)
            assert again.message == result.message


class TestRoundTrip:
    """encode and decode are inverses for every valid announcement."""

    @given(announcements())
    def test_unsigned(self, message: Announcement) -> None:
        """Any valid announcement comes back equal, unsigned."""
        data = wire.encode(message)
        assert len(data) <= MAX_DATAGRAM
        assert wire.decode(data) == Frame(message=message, key_id=0, tag=b"", signed=data)

    @given(announcements(), key_ids)
    def test_signed(self, message: Announcement, key_id: int) -> None:
        """Any valid announcement comes back equal with its key id and a tag that verifies."""
        frame = wire.decode(wire.encode(message, key_id=key_id, sign=sign))
        assert frame.message == message
        assert frame.key_id == key_id
        assert hmac.compare_digest(frame.tag, sign(frame.signed))

    @given(announcements(max_sensors=64))
    def test_fits_or_encode_error(self, message: Announcement) -> None:
        """With up to 64 sensors, encode either round-trips or raises EncodeError for size."""
        try:
            data = wire.encode(message)
        except EncodeError as err:
            error = str(err)
        else:
            assert wire.decode(data).message == message
            return
        assert "more than the 1200" in error

    @given(datagrams())
    def test_valid_datagrams_reencode_to_the_same_bytes(self, data: bytes) -> None:
        """A datagram made by encode is re-made byte for byte from what decode returns."""
        frame = wire.decode(data)
        sign_ = SIGNERS[len(frame.tag)] if frame.key_id else None
        size = len(frame.tag) or None
        assert wire.encode(frame.message, key_id=frame.key_id, sign=sign_, tag_size=size) == data


@pytest.mark.parametrize("size", [0, 1, wire.HEADER.size - 1, MAX_DATAGRAM + 1, 1300])
@given(st.data())
def test_noise_of_edge_sizes(size: int, data: st.DataObject) -> None:
    """Noise of exactly the sizes at the checks' edges: a Frame or a DecodeError."""
    decode_or_reason(data.draw(st.binary(min_size=size, max_size=size)))
