"""The wire format: round trips and every kind of malformed message."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from daemon import protocol
from daemon.protocol import ProtocolError


def _frame(dtype: str, layout: str, h: int = 12, w: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (h, w, 3) if layout == "rgb" else (h, w)
    if dtype == "float32":
        return rng.random(shape, dtype=np.float32)
    info = np.iinfo(dtype)
    return rng.integers(0, info.max, size=shape, dtype=dtype)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("layout", ["mono", "rgb", "RGGB", "BGGR"])
def test_image_round_trip(dtype: str, layout: str) -> None:
    arr = _frame(dtype, layout)
    bayer = layout if layout not in ("mono", "rgb") else None
    parts = protocol.encode_image(arr, seq=7, capture_time=1234.5, bayer=bayer, exposure=0.01,
                                  source="cam", meta={"gain": 3})
    header, out = protocol.decode_image([bytes(p) for p in parts])
    assert out.dtype == np.dtype(dtype) and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert header["seq"] == 7 and header["time"] == 1234.5 and header["layout"] == layout
    assert header["exposure"] == 0.01 and header["source"] == "cam"
    assert header["meta"] == {"gain": 3}
    assert header["v"] == protocol.PROTOCOL_VERSION


def test_big_endian_input_is_sent_little_endian() -> None:
    arr = np.arange(8 * 8, dtype=">u2").reshape(8, 8)
    header, out = protocol.decode_image([bytes(p) for p in protocol.encode_image(arr)])
    assert header["dtype"] == "uint16"
    np.testing.assert_array_equal(out, arr.astype("<u2"))


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.int32), np.zeros((8, 8, 2), np.uint8),
                                 np.zeros(8, np.uint8)])
def test_encode_rejects_what_the_wire_cannot_carry(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        protocol.encode_image(bad)


def _good() -> tuple[dict, bytes]:
    arr = _frame("uint16", "mono")
    header_bytes, pixels = protocol.encode_image(arr)
    return msgpack.unpackb(header_bytes), bytes(pixels)


def _with(**changes: object) -> list[bytes]:
    header, pixels = _good()
    header.update(changes)
    return [protocol.pack(header), pixels]


@pytest.mark.parametrize(
    ("parts", "words"),
    [
        pytest.param([b"\xc1\xc1junk", b"x" * 384], "not valid msgpack", id="bad-msgpack"),
        pytest.param([protocol.pack([1, 2]), b""], "map", id="header-not-a-map"),
        pytest.param([_good()[1]], "2 parts", id="one-part"),
        pytest.param([*_with(), b"extra"], "2 parts", id="three-parts"),
        pytest.param([_with()[0], b"short"], "pixel buffer has 5 bytes", id="short-buffer"),
        pytest.param([_with()[0], _good()[1] + b"xx"], "pixel buffer", id="long-buffer"),
        pytest.param(_with(dtype="int32"), "unknown dtype", id="unknown-dtype"),
        pytest.param(_with(v=99), "protocol version", id="bad-version"),
        pytest.param(_with(layout="CMYK"), "unknown layout", id="bad-layout"),
        pytest.param(_with(width=3), "out of range", id="too-small"),
        pytest.param(_with(width="16"), "'width' must be an integer", id="width-text"),
        pytest.param(_with(seq=True), "'seq' must be an integer", id="seq-bool"),
        pytest.param(_with(time="now"), "'time' must be a number", id="time-text"),
    ],
)
def test_malformed_messages_are_refused(parts: list[bytes], words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        protocol.decode_image(parts)


def test_missing_header_field_is_named() -> None:
    header, pixels = _good()
    del header["height"]
    with pytest.raises(ProtocolError, match="lacks height"):
        protocol.decode_image([protocol.pack(header), pixels])


def test_stack_wire_conversion_rounds_and_clips() -> None:
    img = np.array([[0.0, 1.0, 0.5, -0.2, 1.7, 1 / 65535 * 0.49]], np.float32)
    wire = protocol.stack_to_wire(img)
    assert wire.dtype == np.dtype("<u2")
    assert wire.tolist() == [[0, 65535, 32768, 0, 65535, 0]]
    back = protocol.stack_from_wire(wire)
    assert back.dtype == np.float32
    assert np.abs(back - np.clip(img, 0, 1)).max() <= 0.5 / 65535 + 1e-7


@pytest.mark.parametrize(
    "request_",
    [{"cmd": "status"}, {"cmd": "set", "name": "k", "value": 3},
     {"cmd": "set", "name": "k", "value": [1.5, 2]}, {"cmd": "shutdown"}],
)
def test_good_requests_pass(request_: dict) -> None:
    assert protocol.check_request(request_) is request_
    assert protocol.unpack(protocol.encode_request(**request_)) == request_


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        ([1, 2], "must be a map"),
        ({}, "'cmd' must be a string"),
        ({"cmd": 5}, "'cmd' must be a string"),
        ({"cmd": "explode"}, "unknown command 'explode'"),
        ({"cmd": "status", "extra": 1}, "takes no field"),
        ({"cmd": "set", "name": "k"}, "needs field"),
        ({"cmd": "set", "name": "", "value": 1}, "non-empty string"),
        ({"cmd": "set", "name": "k", "value": {"a": 1}}, "'value' must be"),
        ({"cmd": "set", "name": "k", "value": None}, "'value' must be"),
    ],
)
def test_bad_requests_are_refused(request_: object, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        protocol.check_request(request_)


def test_reply_decoding() -> None:
    assert protocol.decode_reply(protocol.encode_reply({"a": 1})) == {"ok": True,
                                                                     "result": {"a": 1}}
    assert protocol.decode_reply(protocol.encode_error("no"))["error"] == "no"
    with pytest.raises(ProtocolError):
        protocol.decode_reply(protocol.pack({"ok": "yes"}))
    with pytest.raises(ProtocolError):
        protocol.decode_reply(b"\xc1")
