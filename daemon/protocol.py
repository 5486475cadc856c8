"""The live-stack wire format, shared by the daemon, the sources and the viewer.

A message that carries an image is a multipart ZeroMQ message::

    [topic?] [header] [pixels]

- ``topic`` (PUB/SUB only): ``b"stack"``, ``b"preview"`` or ``b"status"``;
- ``header``: a msgpack map (see :data:`IMAGE_KEYS`);
- ``pixels``: the raw C-ordered buffer, ``height * width * channels * itemsize`` bytes,
  little-endian. It is sent with ``copy=False`` and decoded without a copy.

Status messages and control requests/replies are a single msgpack map. Nothing is ever
pickled. See ``docs/protocol.md`` for the full description.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

#: Version of this protocol; a receiver rejects a header with another major version.
PROTOCOL_VERSION = 1

TOPIC_STACK = b"stack"
TOPIC_STATUS = b"status"
TOPIC_PREVIEW = b"preview"  # decimated raw frames for a live view (daemon/preview.py)

#: dtypes allowed on the wire (little-endian).
WIRE_DTYPES = {"uint8": np.dtype("<u1"), "uint16": np.dtype("<u2"), "float32": np.dtype("<f4")}

#: Colour layouts: "mono", "rgb", or a Bayer pattern.
LAYOUTS = ("mono", "rgb", "RGGB", "GRBG", "GBRG", "BGGR")

#: Keys every image header carries (others are allowed and passed through in "meta").
IMAGE_KEYS = ("v", "kind", "seq", "time", "width", "height", "dtype", "layout")

#: Smallest and largest width and height of a frame, in pixels.
MIN_SIDE, MAX_SIDE = 8, 16384

#: Largest frame accepted: 16384 x 16384 x 3 channels of uint16.
MAX_PIXELS = 16384 * 16384 * 3


class ProtocolError(ValueError):
    """A message that does not follow the wire format; the text says what is wrong."""


def pack(obj: dict[str, Any]) -> bytes:
    """Encode a map as msgpack."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes | memoryview, *, what: str = "message") -> dict[str, Any]:
    """Decode a msgpack map, raising :class:`ProtocolError` on anything else."""
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"{what} is not valid msgpack: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} must be a msgpack map, got {type(obj).__name__}")
    return obj


def layout_of(array: np.ndarray, bayer: str | None = None) -> str:
    """Return the wire layout name of an array (``bayer`` names a raw mosaic's pattern)."""
    if array.ndim == 3:
        return "rgb"
    if bayer:
        if bayer not in LAYOUTS[2:]:
            raise ValueError(f"bayer must be one of {LAYOUTS[2:]}, got {bayer!r}")
        return bayer
    return "mono"


def encode_image(
    array: np.ndarray,
    *,
    kind: str = "frame",
    seq: int = 0,
    capture_time: float | None = None,
    bayer: str | None = None,
    exposure: float | None = None,
    source: str = "",
    meta: dict[str, Any] | None = None,
) -> list[bytes | memoryview]:
    """Encode an image as ``[header, pixels]``.

    Parameters
    ----------
    array : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` array of uint8, uint16 or float32.
    kind : str
        ``"frame"`` for camera frames, ``"stack"`` for published stacks.
    seq : int
        Sequence number given by the sender (frames) or the daemon (stacks).
    capture_time : float, optional
        Capture time, seconds since the Unix epoch; now if not given.
    bayer : str, optional
        Bayer pattern of a raw mosaic frame.
    exposure : float, optional
        Exposure time in seconds.
    source : str
        Identifier of the sender.
    meta : dict, optional
        Further msgpack-serialisable metadata.

    Returns
    -------
    list
        The two message parts; the pixel part is a memoryview on ``array`` (no copy).
    """
    arr = np.ascontiguousarray(array)
    name = arr.dtype.newbyteorder("<").name if arr.dtype.byteorder == ">" else arr.dtype.name
    if name not in WIRE_DTYPES:
        raise ValueError(f"array dtype {arr.dtype} is not one of {sorted(WIRE_DTYPES)}")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(WIRE_DTYPES[name])
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"array must have shape (H, W) or (H, W, 3), got {arr.shape}")
    header = {
        "v": PROTOCOL_VERSION,
        "kind": kind,
        "seq": int(seq),
        "time": float(time.time() if capture_time is None else capture_time),
        "width": int(arr.shape[1]),
        "height": int(arr.shape[0]),
        "dtype": name,
        "layout": layout_of(arr, bayer),
        "exposure": None if exposure is None else float(exposure),
        "source": str(source),
        "meta": dict(meta or {}),
    }
    return [pack(header), memoryview(arr).cast("B")]


def check_header(header: dict[str, Any]) -> dict[str, Any]:
    """Validate an image header, raising :class:`ProtocolError` naming the bad field."""
    missing = [k for k in IMAGE_KEYS if k not in header]
    if missing:
        raise ProtocolError(f"header lacks {', '.join(missing)}")
    if header["v"] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header['v']!r} is not {PROTOCOL_VERSION}")
    for key in ("seq", "width", "height"):
        if not isinstance(header[key], int) or isinstance(header[key], bool):
            raise ProtocolError(f"header field {key!r} must be an integer, got {header[key]!r}")
    if not isinstance(header["time"], (int, float)):
        raise ProtocolError(f"header field 'time' must be a number, got {header['time']!r}")
    if header["dtype"] not in WIRE_DTYPES:
        raise ProtocolError(
            f"unknown dtype {header['dtype']!r}; expected one of {sorted(WIRE_DTYPES)}"
        )
    if header["layout"] not in LAYOUTS:
        raise ProtocolError(f"unknown layout {header['layout']!r}; expected one of {LAYOUTS}")
    check_size(header["width"], header["height"])
    return header


def check_size(width: int, height: int) -> None:
    """Raise :class:`ProtocolError` for a frame size the daemon does not take."""
    lo, hi = MIN_SIDE, MAX_SIDE
    if not (lo <= width <= hi and lo <= height <= hi):
        raise ProtocolError(f"frame size {width}x{height} is out of range ({lo}..{hi})")


def image_shape(header: dict[str, Any]) -> tuple[int, ...]:
    """Array shape described by a checked header."""
    if header["layout"] == "rgb":
        return (header["height"], header["width"], 3)
    return (header["height"], header["width"])


def decode_image(parts: Sequence[bytes | memoryview | Any]) -> tuple[dict[str, Any], np.ndarray]:
    """Decode ``[header, pixels]`` into the header and a read-only array (no copy).

    ``parts`` may hold ``bytes``, ``memoryview`` or ``zmq.Frame`` objects.

    Raises
    ------
    ProtocolError
        If the message has the wrong number of parts, a bad header, or a pixel buffer
        whose length does not match the header.
    """
    if len(parts) != 2:
        raise ProtocolError(f"an image message has 2 parts (header, pixels), got {len(parts)}")
    header = check_header(unpack(_buffer(parts[0]), what="header"))
    dtype = WIRE_DTYPES[header["dtype"]]
    shape = image_shape(header)
    expected = int(np.prod(shape)) * dtype.itemsize
    buf = _buffer(parts[1])
    if len(buf) != expected:
        raise ProtocolError(
            f"pixel buffer has {len(buf)} bytes, header says {header['width']}x{header['height']} "
            f"{header['layout']} {header['dtype']} = {expected} bytes"
        )
    array = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return header, array


def _buffer(part: Any) -> memoryview:
    """Return a memoryview of a message part (bytes, memoryview or zmq.Frame)."""
    if hasattr(part, "buffer"):  # zmq.Frame
        return part.buffer
    return memoryview(part)


# --- Published stacks ------------------------------------------------------------------

#: uint16 value of a published stack pixel that stands for 1.0.
STACK_SCALE = 65535


def stack_to_wire(image: np.ndarray) -> np.ndarray:
    """Convert a float ``[0, 1]`` stack to the uint16 pixels of a ``stack`` message.

    Values are clipped to ``[0, 1]`` and rounded to the nearest of 0..65535.
    """
    img = np.asarray(image, dtype=np.float32)
    out = np.clip(img, 0.0, 1.0)
    out = out * np.float32(STACK_SCALE) + np.float32(0.5)
    return out.astype("<u2")


def stack_from_wire(pixels: np.ndarray) -> np.ndarray:
    """Convert the uint16 pixels of a ``stack`` message back to float32 ``[0, 1]``."""
    return np.asarray(pixels, dtype=np.float32) * np.float32(1.0 / STACK_SCALE)


# --- Control requests and replies -------------------------------------------------------

#: Control commands and the fields each one takes besides ``cmd``.
CONTROL_FIELDS: dict[str, tuple[str, ...]] = {
    "status": (),
    "reset": (),
    "set": ("name", "value"),
    "set_params": ("params",),  # several at once, validated together
    "save": (),
    "pause": (),
    "resume": (),
    "shutdown": (),
    # the stack history (daemon/history.py)
    "history": (),
    "load": ("file",),
    # camera control, relayed to the source that owns the camera (daemon/camera.py)
    "camera": ("settings",),  # from a viewer
    "camera_hello": ("source", "state"),  # from a source
    "camera_result": ("id", "result"),  # from a source, answering a camera_set
}

#: Camera settings a ``camera`` request may carry (exposure in seconds, roi as
#: ``[x, y, width, height]`` in sensor pixels).
CAMERA_SETTINGS = ("exposure", "gain", "binning", "roi")

#: Types a ``set`` value may have on the wire.
_PARAM_VALUE_TYPES = (bool, int, float, str)


def encode_request(cmd: str, **fields: Any) -> bytes:
    """Encode a control request, checking it first (see :func:`check_request`)."""
    request = {"cmd": cmd, **fields}
    check_request(request)
    return pack(request)


def check_request(request: Any) -> dict[str, Any]:
    """Validate a decoded control request, raising :class:`ProtocolError` naming the fault.

    A request is a map with ``cmd`` (one of :data:`CONTROL_FIELDS`) and exactly the
    fields that command takes: ``set`` takes ``name`` (a non-empty string) and ``value``
    (a boolean, integer, float, string, or a list of those).
    """
    if not isinstance(request, dict):
        raise ProtocolError(f"a request must be a map, got {type(request).__name__}")
    cmd = request.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError(f"request field 'cmd' must be a string, got {cmd!r}")
    if cmd not in CONTROL_FIELDS:
        raise ProtocolError(f"unknown command {cmd!r}; expected one of {sorted(CONTROL_FIELDS)}")
    allowed = set(CONTROL_FIELDS[cmd]) | {"cmd"}
    extra = sorted(str(k) for k in request if k not in allowed)
    if extra:
        raise ProtocolError(f"command {cmd!r} takes no field(s) {', '.join(extra)}")
    missing = [k for k in CONTROL_FIELDS[cmd] if k not in request]
    if missing:
        raise ProtocolError(f"command {cmd!r} needs field(s) {', '.join(missing)}")
    if cmd == "load" and (not isinstance(request["file"], str) or not request["file"]):
        raise ProtocolError(f"request field 'file' must be a file name, got {request['file']!r}")
    if cmd == "camera":
        _check_camera_settings(request["settings"])
    elif cmd == "camera_hello":
        if not isinstance(request["source"], str) or not isinstance(request["state"], dict):
            raise ProtocolError("camera_hello needs a string 'source' and a map 'state'")
    elif cmd == "camera_result":
        if isinstance(request["id"], bool) or not isinstance(request["id"], int) \
                or not isinstance(request["result"], dict):
            raise ProtocolError("camera_result needs an integer 'id' and a map 'result'")
    if cmd == "set":
        _check_param(request["name"], request["value"])
    elif cmd == "set_params":
        params = request["params"]
        if not isinstance(params, dict) or not params:
            raise ProtocolError(f"request field 'params' must be a non-empty map of names to "
                                f"values, got {params!r}")
        for name, value in params.items():
            _check_param(name, value)
    return request


def _check_param(name: Any, value: Any) -> None:
    """Raise :class:`ProtocolError` unless ``name`` is a non-empty string and ``value`` a
    boolean, number or string (or a list of them)."""
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"request field 'name' must be a non-empty string, got {name!r}")
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, _PARAM_VALUE_TYPES) for v in values):
        raise ProtocolError(
            f"request field 'value' must be a boolean, number or string (or a list of "
            f"them), got {value!r}"
        )


def _check_camera_settings(settings: Any) -> None:
    """Raise :class:`ProtocolError` unless ``settings`` is a non-empty map of
    :data:`CAMERA_SETTINGS` to numbers (``roi``: a list of 4 integers)."""
    if not isinstance(settings, dict) or not settings:
        raise ProtocolError(f"camera 'settings' must be a non-empty map, got {settings!r}")
    for name, value in settings.items():
        if name not in CAMERA_SETTINGS:
            raise ProtocolError(f"unknown camera setting {name!r}; expected one of "
                                f"{', '.join(CAMERA_SETTINGS)}")
        if name == "roi":
            if not (isinstance(value, list) and len(value) == 4 and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value)):
                raise ProtocolError(f"camera roi must be 4 integers [x, y, width, height], "
                                    f"got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(f"camera {name} must be a number, got {value!r}")


def encode_reply(result: Any = None) -> bytes:
    """Encode a successful control reply ``{"ok": true, "result": result}``."""
    return pack({"ok": True, "result": result})


def encode_error(error: str) -> bytes:
    """Encode a failed control reply ``{"ok": false, "error": error}``."""
    return pack({"ok": False, "error": str(error)})


def decode_reply(data: bytes | memoryview) -> dict[str, Any]:
    """Decode and check a control reply, raising :class:`ProtocolError` if malformed."""
    reply = unpack(data, what="reply")
    ok = reply.get("ok")
    if ok is True:
        return reply
    if ok is False and isinstance(reply.get("error"), str):
        return reply
    raise ProtocolError(f"reply must have ok=true, or ok=false with an error string: {reply!r}")
