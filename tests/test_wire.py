"""Wire format v1: the documented vectors, round trips, limits and hostile input."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from powercast import wire
from powercast.auth import Keyring, public_key
from powercast.wire import (
    MAX_DATAGRAM,
    SIGNATURE_SIZE,
    TAG_SIZE,
    Announcement,
    DecodeError,
    EncodeError,
    Frame,
    Power,
    PowerStatus,
)

from strategies import KEY, frame, sign

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parent.parent / "docs" / "wire-format.md"
LOGS = DOC.parent / "deploy.md"
REASONS = {"size", "truncated", "magic", "version", "tag", "length", "body"}


@dataclass(frozen=True)
class Vector:
    title: str
    data: bytes
    meaning: dict[str, Any]


def _vectors() -> list[Vector]:
    """Every ``#### title`` under "## Test vectors", each with one hex and one json block."""
    section = DOC.read_text(encoding="utf-8").split("\n## Test vectors\n", 1)[1]
    vectors = []
    for chunk in re.split(r"^#### ", section, flags=re.MULTILINE)[1:]:
        title = chunk.splitlines()[0].strip()
        hexes = re.findall(r"^```hex\n(.*?)\n```$", chunk, flags=re.MULTILINE | re.DOTALL)
        jsons = re.findall(r"^```json\n(.*?)\n```$", chunk, flags=re.MULTILINE | re.DOTALL)
        assert len(hexes) == len(jsons) == 1, f"{title}: expected one hex and one json block"
        assert "\n" not in hexes[0], f"{title}: the hex must be on one line"
        vectors.append(Vector(title, bytes.fromhex(hexes[0]), json.loads(jsons[0])))
    return vectors


VECTORS = _vectors()
DOC_TEXT = DOC.read_text(encoding="utf-8")
ED25519_VECTOR_RING = Keyring.from_keys({}, Path("."), private={2: bytes(range(32))})
"""Ed25519 key id 2, the private key 0x00..0x1f, as vector V8 is signed."""
VALID = [v for v in VECTORS if "error" not in v.meaning]
INVALID = [v for v in VECTORS if "error" in v.meaning]


def _ids(vectors: list[Vector]) -> list[str]:
    return [v.title.split(":")[0] for v in vectors]


def _meaning(frame: Frame) -> dict[str, Any]:
    """A frame as the doc's json shows it: fields by name, enums as their value."""
    message = msgspec.structs.asdict(frame.message)
    message["power"] = msgspec.structs.asdict(frame.message.power)
    return {"key_id": frame.key_id, "tag": frame.tag.hex(), "message": msgspec.to_builtins(message)}


def _announcement(meaning: dict[str, Any]) -> Announcement:
    """Build the message a vector's json describes (from the json, not from the bytes)."""
    fields = dict(meaning["message"])
    power = dict(fields.pop("power"))
    power["status"] = PowerStatus(power["status"])
    return Announcement(**fields, power=Power(**power))


def announcement(**changes: Any) -> Announcement:
    """A valid announcement with every field set, changed as asked."""
    fields: dict[str, Any] = {
        "publisher": "rack-a.ups",
        "epoch": 0x1234_5678_9ABC_DEF0,
        "seq": 42,
        "change": 3,
        "sent": 1_767_225_600.25,
        "tal": 15.0,
        "power": Power(PowerStatus.ON_BATTERY, 87.5, 1260.0, 31.0, 230.0),
        "temperatures": {"cpu": 48.5, "inlet": 22.0},
    }
    return Announcement(**(fields | changes))


def body(**changes: Any) -> list[Any]:
    """The MessagePack body of ``announcement(**changes)`` as a plain list, unchecked."""
    value: list[Any] = msgspec.to_builtins(announcement(**changes))
    return value


def power(**changes: Any) -> Power:
    """A power reading with every value set, changed as asked."""
    return msgspec.structs.replace(Power(PowerStatus.ONLINE, 100.0, 3600.0, 25.0, 230.0), **changes)


def _decode_or_reason(data: bytes) -> Frame | str:
    """Decode ``data``; a DecodeError becomes its reason, any other exception fails the test."""
    try:
        return wire.decode(data)
    except DecodeError as err:
        reason = err.reason
    assert reason in REASONS
    return reason


class TestVectors:
    """docs/wire-format.md: its vectors are what the code does."""

    def test_doc_has_the_promised_vectors(self) -> None:
        """The doc has at least 5 valid and 6 invalid vectors, covering every reason."""
        assert len(VALID) >= 5
        assert len(INVALID) >= 6
        assert {v.meaning["error"] for v in INVALID} == REASONS
        assert any(v.meaning["key_id"] != 0 for v in VALID)

    @pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
    def test_valid_vector_decodes_to_its_json(self, vector: Vector) -> None:
        """Each valid vector decodes to exactly the fields its json block gives."""
        assert _meaning(wire.decode(vector.data)) == vector.meaning

    @pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
    def test_valid_vector_reencodes_to_its_bytes(self, vector: Vector) -> None:
        """Encoding the message the json describes gives the vector's bytes exactly."""
        key_id = vector.meaning["key_id"]
        tag_size = len(vector.meaning["tag"]) // 2
        signer = {0: None, TAG_SIZE: sign, SIGNATURE_SIZE: ED25519_VECTOR_RING.signer(2)}
        data = wire.encode(
            _announcement(vector.meaning), key_id=key_id, sign=signer[tag_size], tag_size=tag_size
        )
        assert data == vector.data

    @pytest.mark.parametrize("vector", INVALID, ids=_ids(INVALID))
    def test_invalid_vector_is_rejected_with_its_reason(self, vector: Vector) -> None:
        """Each invalid vector raises DecodeError with the reason its json block gives."""
        with pytest.raises(DecodeError) as caught:
            wire.decode(vector.data)
        assert caught.value.reason == vector.meaning["error"]

    def test_ed25519_vector_is_signed_by_the_documented_key(self) -> None:
        """V8's tag is the Ed25519 signature over all but the tag by the private key
        0x00..0x1f, checked with the public key the doc gives (cryptography, not our code)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        (vector,) = [v for v in VALID if len(v.meaning["tag"]) == 2 * SIGNATURE_SIZE]
        public = re.search(r"its public key, all a receiver holds, is `([0-9a-f]{64})`", DOC_TEXT)
        assert public is not None
        decoded = wire.decode(vector.data)
        assert decoded.signed == vector.data[:-SIGNATURE_SIZE]
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public[1]))
        key.verify(decoded.tag, decoded.signed)  # raises InvalidSignature if not
        assert public[1] == public_key(bytes(range(32))).hex()
        assert ED25519_VECTOR_RING.verify(decoded) is None
        tampered = bytearray(vector.data)
        tampered[20] ^= 1
        assert ED25519_VECTOR_RING.verify(wire.decode(bytes(tampered))) == "bad_tag"

    def test_signed_vector_tag_is_hmac_sha256_over_header_and_body(self) -> None:
        """The signed vector's tag is HMAC-SHA256 with key 0x00..0x1f over all but the tag."""
        (vector,) = [v for v in VALID if v.meaning["key_id"] == 1]
        decoded = wire.decode(vector.data)
        assert decoded.signed == vector.data[:-TAG_SIZE]
        assert decoded.tag == vector.data[-TAG_SIZE:]
        expected = hmac.new(bytes(range(32)), decoded.signed, hashlib.sha256).digest()
        assert hmac.compare_digest(decoded.tag, expected)
        assert bytes(range(32)) == KEY


ROUND_TRIP = [
    announcement(),
    announcement(power=Power(), temperatures={}),
    announcement(power=Power(PowerStatus.LOW_BATTERY, 3.0, 45.0, None, None)),
    announcement(power=Power(PowerStatus.ONLINE, None, None, None, 0.0)),
    announcement(epoch=0, seq=0, change=0, sent=0.0, tal=1e-9),
    announcement(epoch=2**63 - 1, seq=2**63 - 1, change=2**63 - 1, sent=1e11, tal=86_400.0),
    announcement(publisher="a"),
    announcement(publisher="Z" * 64),
    announcement(publisher="host-1.example.org:ups@rack_7"),
    announcement(temperatures={"cold": -273.15, "hot": 1000.0, "x": 0.0, "y": -0.0}),
    announcement(temperatures={f"hwmon{i}:temp{i}": 20.0 + i / 7 for i in range(16)}),
    announcement(temperatures={"s" * 32: 21.0, "0": 5e-324}),
    announcement(power=Power(PowerStatus.ON_BATTERY, 1000.0, 1e9, 1000.0, 100_000.0)),
    announcement(sent=1_767_225_600.123456789, tal=2.5),
]


class TestRoundTrip:
    """encode then decode gives back the same announcement."""

    @pytest.mark.parametrize("message", ROUND_TRIP)
    def test_unsigned_round_trip(self, message: Announcement) -> None:
        """An unsigned datagram decodes to the same message, key id 0 and no tag."""
        data = wire.encode(message)
        decoded = wire.decode(data)
        assert decoded == Frame(message=message, key_id=0, tag=b"", signed=data)

    @pytest.mark.parametrize("key_id", [1, 2, 0xFFFF])
    @pytest.mark.parametrize("message", ROUND_TRIP)
    def test_signed_round_trip(self, message: Announcement, key_id: int) -> None:
        """A signed datagram decodes to the same message, its key id and a valid tag."""
        data = wire.encode(message, key_id=key_id, sign=sign)
        decoded = wire.decode(data)
        assert decoded.message == message
        assert decoded.key_id == key_id
        assert decoded.signed + decoded.tag == data
        assert hmac.compare_digest(decoded.tag, sign(decoded.signed))

    def test_decode_takes_bytearray_and_memoryview(self) -> None:
        """decode accepts any bytes-like buffer, as socket APIs hand them out."""
        data = wire.encode(announcement())
        assert wire.decode(bytearray(data)) == wire.decode(memoryview(data)) == wire.decode(data)


class TestEncodeArguments:
    """encode refuses calls that could not make a valid datagram."""

    def test_key_id_without_signer(self) -> None:
        """A key id other than 0 without a signer is a ValueError."""
        with pytest.raises(ValueError, match="key id"):
            wire.encode(announcement(), key_id=1)

    def test_signer_without_key_id(self) -> None:
        """A signer with key id 0 is a ValueError."""
        with pytest.raises(ValueError, match="key id"):
            wire.encode(announcement(), sign=sign)

    @pytest.mark.parametrize("key_id", [-1, 0x10000])
    def test_key_id_out_of_range(self, key_id: int) -> None:
        """A key id that does not fit in 16 bits is a ValueError, not a struct.error."""
        with pytest.raises(ValueError, match=r"key id must be in 0\.\.65535"):
            wire.encode(announcement(), key_id=key_id, sign=sign)

    def test_signer_returning_wrong_size(self) -> None:
        """A signer that returns other than 32 bytes is a ValueError."""
        with pytest.raises(ValueError, match="signer returned 16 bytes"):
            wire.encode(announcement(), key_id=1, sign=lambda data: sign(data)[:16])


def _sensors(count: int) -> dict[str, float]:
    return {f"sensor-{i:02d}": 20.0 + i for i in range(count)}


class TestMaxSize:
    """A datagram is at most MAX_DATAGRAM bytes, tag included, both ways."""

    def test_too_many_sensors_is_encode_error(self) -> None:
        """64 sensors do not fit: encode raises EncodeError saying the size."""
        with pytest.raises(EncodeError, match=r"more than the 1200 .*\(64 temperatures\)"):
            wire.encode(announcement(temperatures=_sensors(64)))

    def test_exactly_max_size_encodes_and_decodes(self) -> None:
        """A datagram of exactly 1200 bytes is accepted by encode and decode."""
        message = _exact_size(MAX_DATAGRAM)
        data = wire.encode(message)
        assert len(data) == MAX_DATAGRAM
        assert wire.decode(data).message == message

    def test_one_byte_over_is_encode_error(self) -> None:
        """A datagram that would be 1201 bytes is an EncodeError."""
        with pytest.raises(EncodeError, match="1201 bytes"):
            wire.encode(_exact_size(MAX_DATAGRAM + 1))

    def test_tag_counts_towards_the_limit(self) -> None:
        """A message that fits unsigned at 1200 bytes does not fit with a tag."""
        message = _exact_size(MAX_DATAGRAM)
        with pytest.raises(EncodeError, match="1232 bytes"):
            wire.encode(message, key_id=1, sign=sign)
        signed = wire.encode(_exact_size(MAX_DATAGRAM - TAG_SIZE), key_id=1, sign=sign)
        assert len(signed) == MAX_DATAGRAM

    def test_over_max_size_is_decode_error_size(self) -> None:
        """decode rejects a well-formed 1201-byte datagram with reason 'size'."""
        data = frame(msgspec.msgpack.encode(msgspec.to_builtins(_exact_size(MAX_DATAGRAM + 1))))
        assert len(data) == MAX_DATAGRAM + 1
        with pytest.raises(DecodeError) as caught:
            wire.decode(data)
        assert caught.value.reason == "size"

    def test_size_is_checked_before_anything_else(self) -> None:
        """Any 1201 bytes, even noise, are rejected for their size."""
        assert _decode_or_reason(b"\xff" * (MAX_DATAGRAM + 1)) == "size"


def _exact_size(size: int) -> Announcement:
    """An announcement whose unsigned datagram would be exactly ``size`` bytes."""
    for sensors in range(64, -1, -1):
        for length in range(1, 65):
            message = announcement(publisher="p" * length, temperatures=_sensors(sensors))
            if wire.HEADER.size + len(msgspec.msgpack.encode(message)) == size:
                return message
    raise AssertionError(f"no announcement of {size} bytes")


BAD_NUMBERS = [math.nan, math.inf, -math.inf, -1.0, -1e-300]


class TestValueBounds:
    """Out-of-range values are refused when encoding and rejected when decoding."""

    @pytest.mark.parametrize("value", BAD_NUMBERS)
    @pytest.mark.parametrize("field", ["charge_pct", "runtime_s", "load_pct", "input_v"])
    def test_bad_power_value(self, field: str, value: float) -> None:
        """NaN, infinities and negative power values: EncodeError naming the field, 'body'."""
        bad = power(**{field: value})
        with pytest.raises(EncodeError, match=rf"'power\.{field}'"):
            wire.encode(announcement(power=bad))
        assert _decode_or_reason(frame(msgspec.msgpack.encode(body(power=bad)))) == "body"

    @pytest.mark.parametrize("value", BAD_NUMBERS)
    @pytest.mark.parametrize("field", ["sent", "tal"])
    def test_bad_time(self, field: str, value: float) -> None:
        """NaN, infinities and negative times are refused and rejected."""
        with pytest.raises(EncodeError, match=f"'{field}'"):
            wire.encode(announcement(**{field: value}))
        assert _decode_or_reason(frame(msgspec.msgpack.encode(body(**{field: value})))) == "body"

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -273.16, 1000.001])
    def test_bad_temperature(self, value: float) -> None:
        """A temperature that is NaN, infinite or outside -273.15..1000 °C is refused."""
        with pytest.raises(EncodeError, match="'temperatures'"):
            wire.encode(announcement(temperatures={"cpu": value}))
        data = frame(msgspec.msgpack.encode(body(temperatures={"cpu": value})))
        assert _decode_or_reason(data) == "body"

    @pytest.mark.parametrize("value", [-1, 2**63, 2**64 - 1])
    @pytest.mark.parametrize("field", ["epoch", "seq", "change"])
    def test_counter_out_of_range(self, field: str, value: int) -> None:
        """A negative counter, or one beyond int64, is refused and rejected."""
        with pytest.raises(EncodeError, match=f"'{field}'"):
            wire.encode(announcement(**{field: value}))
        assert _decode_or_reason(frame(msgspec.msgpack.encode(body(**{field: value})))) == "body"

    def test_zero_tal_is_refused(self) -> None:
        """tal must be more than 0: a datagram has to promise some time."""
        with pytest.raises(EncodeError, match="'tal'"):
            wire.encode(announcement(tal=0.0))

    def test_float_counter_is_rejected(self) -> None:
        """A float where an integer belongs is rejected, even when it is whole."""
        assert _decode_or_reason(frame(msgspec.msgpack.encode(body(seq=1.0)))) == "body"

    def test_failed_sensor_is_nil(self) -> None:
        """A temperature of None (a failed sensor) encodes as nil and decodes to None."""
        message = announcement(temperatures={"cpu": 48.5, "inlet": None})
        data = wire.encode(message)
        assert b"\xa5inlet\xc0" in data
        assert wire.decode(data).message.temperatures == {"cpu": 48.5, "inlet": None}

    def test_failed_sensor_is_rejected_by_a_receiver_without_nil(self) -> None:
        """A receiver that predates nil temperatures rejects the datagram: no partial read."""

        class Before(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
            publisher: str
            epoch: int
            seq: int
            change: int
            sent: float
            tal: float
            power: Power
            temperatures: dict[str, float]

        (v7,) = [v for v in VALID if v.title.startswith("V7")]
        envelope = wire.open_envelope(v7.data)
        with pytest.raises(msgspec.ValidationError, match=r"got `None` - at `\$\[7\]"):
            msgspec.msgpack.decode(envelope.body, type=Before)
        msgspec.msgpack.decode(wire.open_envelope(VALID[0].data).body, type=Before)

    def test_integer_for_float_is_accepted(self) -> None:
        """An integer where a float belongs is accepted, as the doc says."""
        decoded = wire.decode(frame(msgspec.msgpack.encode(body(sent=1_700_000_000, tal=15))))
        assert decoded.message.sent == 1_700_000_000.0
        assert decoded.message.tal == 15.0


class TestNames:
    """Publisher ids and sensor names keep to their characters and lengths."""

    @pytest.mark.parametrize(
        "publisher",
        [
            "",
            "ups 1",
            "ups-1\n",
            "\nups-1",
            "-ups",
            ".ups",
            "ups/1",
            "ups\x00",
            "üps",
            "ups;rm",
            "p" * 65,
        ],
    )
    def test_bad_publisher_id(self, publisher: str) -> None:
        """A publisher id with a bad character, a bad start or bad length is refused."""
        with pytest.raises(EncodeError, match="'publisher'"):
            wire.encode(announcement(publisher=publisher))
        data = frame(msgspec.msgpack.encode(body(publisher=publisher)))
        assert _decode_or_reason(data) == "body"

    @pytest.mark.parametrize("name", ["", "cpu 0", "cpu\n", "@cpu", "cpu@0", "c" * 33])
    def test_bad_sensor_name(self, name: str) -> None:
        """A sensor name with a bad character or bad length is refused."""
        with pytest.raises(EncodeError, match="'temperatures'"):
            wire.encode(announcement(temperatures={name: 20.0}))
        data = frame(msgspec.msgpack.encode(body(temperatures={name: 20.0})))
        assert _decode_or_reason(data) == "body"

    def test_more_than_64_sensors_rejected(self) -> None:
        """A map of 65 sensors is rejected, whatever its size."""
        data = frame(msgspec.msgpack.encode(body(temperatures={f"{i}": 1.0 for i in range(65)})))
        assert len(data) <= MAX_DATAGRAM
        assert _decode_or_reason(data) == "body"

    def test_unknown_status_rejected(self) -> None:
        """A power status outside the four known values is rejected."""
        raw = body()
        raw[6][0] = "ONLINE"
        assert _decode_or_reason(frame(msgspec.msgpack.encode(raw))) == "body"


DATAGRAMS = [
    pytest.param(wire.encode(announcement()), id="unsigned"),
    pytest.param(wire.encode(announcement(), key_id=7, sign=sign), id="signed"),
]


class TestDecodeRobustness:
    """decode raises DecodeError and nothing else, whatever part of a datagram is bent."""

    @pytest.mark.parametrize("data", DATAGRAMS)
    def test_every_truncation_is_decode_error(self, data: bytes) -> None:
        """Every proper prefix of a valid datagram is rejected as truncated or length."""
        for size in range(len(data)):
            reason = _decode_or_reason(data[:size])
            expected = "truncated" if size < wire.HEADER.size else "length"
            assert reason == expected, f"prefix of {size} bytes"

    @pytest.mark.parametrize("data", DATAGRAMS)
    def test_every_single_byte_change_is_frame_or_decode_error(self, data: bytes) -> None:
        """Replacing any one byte by any other value gives a Frame or a DecodeError."""
        reasons: set[str] = set()
        for at in range(len(data)):
            for value in range(256):
                if value == data[at]:
                    continue
                bent = data[:at] + bytes([value]) + data[at + 1 :]
                result = _decode_or_reason(bent)
                if isinstance(result, str):
                    reasons.add(result)
                else:
                    assert result.signed + result.tag == bent
        assert {"magic", "version", "tag", "length", "body"} <= reasons

    def test_decode_error_carries_reason_and_detail(self) -> None:
        """DecodeError has a reason word and a detail, both in its message."""
        with pytest.raises(DecodeError) as caught:
            wire.decode(b"PWRX" + wire.encode(announcement())[4:])
        err = caught.value
        assert err.reason == "magic"
        assert "b'PWRX'" in err.detail
        assert str(err) == f"magic: {err.detail}"


class TestRejectReasons:
    """The reasons a datagram is dropped for: declared once, in wire.Reject, and documented."""

    def test_wire_format_lists_every_reason_in_order(self) -> None:
        """docs/wire-format.md's receiver rules name each reason, in the order of the checks."""
        section = DOC.read_text().split("## Receiver rules", 1)[1].split("\n## ", 1)[0]
        documented = re.findall(r"^\| `(\w+)` +\|", section, re.MULTILINE)
        assert documented == list(wire.Reject)

    def test_log_events_list_every_reason_in_order(self) -> None:
        """The datagram_rejected log event (docs/deploy.md) names each reason, in check order."""
        row = next(
            line
            for line in LOGS.read_text().splitlines()
            if line.startswith("| `datagram_rejected` |")
        )
        listed = re.findall(r"`(\w+)`", row.split("(", 1)[1].split(")", 1)[0])
        assert listed == list(wire.Reject)

    def test_metrics_expose_every_reason_from_the_first_scrape(self) -> None:
        """Before any datagram is dropped, each reason's counter is there, at 0."""
        metrics = pytest.importorskip(
            "powercast.metrics", reason="needs prometheus-client: pip install -e ."
        )
        datagrams = {"received": 0, "accepted": {}, "rejected": {}, "unverified": {}}
        rejected = next(
            family
            for family in metrics._datagrams(datagrams)
            if family.name == "powercast_datagrams_rejected"
        )
        exposed = {sample.labels["reason"]: sample.value for sample in rejected.samples}
        assert exposed == dict.fromkeys(wire.Reject, 0)
