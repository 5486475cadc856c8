"""Decoding of the image BLOBs an INDI camera driver sends: pure functions, no INDI.

A CCD driver sends its frames in the ``CCD1`` BLOB property. The BLOB's *format* says
what the bytes are:

- ``.fits`` (also ``.fit``, ``.fts``): a FITS file with its header (``EXPTIME``,
  ``BAYERPAT`` with ``XBAYROFF``/``YBAYROFF``, ``DATE-OBS``, ``ROWORDER``);
- ``.fits.fz`` / ``.fz``: a tile-compressed FITS file (fpack), read by astropy;
- ``.stream``: a raw video-stream frame (the ``RAW`` stream encoder). It has no header:
  its width and height are those of ``CCD_STREAM_FRAME`` (binned pixels), and the bytes
  per pixel follow from the length (1 = mono 8-bit, 2 = mono 16-bit little-endian,
  3 = RGB 8-bit, 6 = RGB 16-bit). The Bayer pattern, if any, comes from ``CCD_CFA``.
  INDI's stream manager scales frames deeper than 8 bits down to 8 bits (through a
  gamma table) before it sends them;
- ``.bin``: the driver's native raw frame (``CCD_TRANSFER_FORMAT`` = native), laid out
  like a raw stream frame;
- any of those with ``.z`` appended: zlib-compressed (``CCD_COMPRESSION``), or ``.gz``:
  gzip-compressed;
- ``.stream_jpg``, ``.jpg``/``.jpeg``, ``.png``, ``.tif``/``.tiff``: an encoded image
  (the ``MJPEG`` stream encoder, or a native format), decoded with OpenCV.

The BLOB may hold more bytes than its content (indiserver 1.9 sends the whole memory
buffer of a compressed FITS file): trailing bytes after a complete zlib stream or FITS
file are ignored.

Every function raises :class:`BlobDecodeError` (a ``ValueError``) naming what is wrong.
"""

from __future__ import annotations

import io
import re
import warnings
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

#: Bayer patterns the wire format knows.
BAYER_PATTERNS = ("RGGB", "GRBG", "GBRG", "BGGR")

#: Raw frame bytes per pixel -> (channels, little-endian dtype).
RAW_LAYOUTS: dict[int, tuple[int, np.dtype]] = {
    1: (1, np.dtype("<u1")),
    2: (1, np.dtype("<u2")),
    3: (3, np.dtype("<u1")),
    6: (3, np.dtype("<u2")),
}

#: Base formats (after the compression suffix is removed) and how they are decoded.
FITS_FORMATS = ("fits", "fit", "fts", "fits.fz", "fz")
RAW_FORMATS = ("stream", "bin", "raw")
ENCODED_FORMATS = ("stream_jpg", "jpg", "jpeg", "png", "tif", "tiff")

#: Largest uint16 value, the ceiling for integer FITS data converted to uint16.
_UINT16_MAX = 65535

_DATE_RE = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?)?\s*(?:Z|UTC)?\s*$"
)
_TIME_RE = re.compile(r"^\s*(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?\s*$")


class BlobDecodeError(ValueError):
    """A BLOB that cannot be turned into an image; the message says why."""


@dataclass(frozen=True)
class RawGeometry:
    """What a header-less raw frame (``.stream``, ``.bin``) looks like."""

    width: int  # frame width in (binned) pixels, from CCD_STREAM_FRAME or CCD_FRAME
    height: int  # frame height in (binned) pixels
    bayer: str | None = None  # Bayer pattern of the mosaic (from CCD_CFA), None if mono

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.bayer is not None and self.bayer not in BAYER_PATTERNS:
            raise ValueError(f"bayer must be one of {BAYER_PATTERNS} or None, got {self.bayer!r}")


@dataclass(frozen=True)
class ReceivedBlob:
    """A BLOB as it came from the INDI server, before decoding."""

    data: bytes | bytearray | memoryview  # the received bytes (possibly with padding)
    fmt: str  # the BLOB's format, e.g. ".fits" or ".stream"
    size: int  # the announced uncompressed size in bytes (0 if unknown)
    arrival: float  # Unix time it arrived at the source
    seq: int  # the source's count of BLOBs received before this one


@dataclass(frozen=True)
class DecodedFrame:
    """An image taken out of a BLOB, with what its header said."""

    image: np.ndarray  # (H, W) or (H, W, 3) RGB; uint8, uint16 or float32, native order
    bayer: str | None  # Bayer pattern of a (H, W) mosaic, None for mono or RGB
    exposure: float | None  # exposure time in seconds, if the BLOB says
    capture_time: float | None  # start of the exposure, Unix seconds, if the BLOB says
    bit_depth: int  # bits per sample of the container (8, 16, or 32 for float)


def split_format(fmt: str) -> tuple[str, str | None]:
    """Split a BLOB format into its base format and its compression.

    Parameters
    ----------
    fmt : str
        The BLOB's format, e.g. ``".fits"``, ``".stream.z"``, ``".fits.fz"``.

    Returns
    -------
    tuple
        ``(base, compression)``: the lower-case base format without the leading dot, and
        ``"zlib"``, ``"gzip"`` or None.
    """
    base = fmt.strip().lower().lstrip(".")
    if not base:
        raise BlobDecodeError(f"BLOB format {fmt!r} is empty")
    if base.endswith(".z"):
        return base[: -len(".z")], "zlib"
    if base.endswith(".gz"):
        return base[: -len(".gz")], "gzip"
    return base, None


def inflate(data: bytes | bytearray | memoryview, *, method: str,
            expected_size: int | None = None) -> bytes:
    """Decompress a zlib or gzip BLOB, ignoring bytes after the end of the stream.

    Parameters
    ----------
    data : bytes-like
        The compressed bytes.
    method : {"zlib", "gzip"}
        The compression.
    expected_size : int, optional
        Uncompressed size the BLOB announced; checked when given and positive.
    """
    if method not in ("zlib", "gzip"):
        raise ValueError(f"method must be 'zlib' or 'gzip', got {method!r}")
    wbits = zlib.MAX_WBITS if method == "zlib" else zlib.MAX_WBITS | 16
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(bytes(data))
    except zlib.error as exc:
        raise BlobDecodeError(f"{method}-compressed BLOB does not decompress: {exc}") from None
    if not inflater.eof:
        raise BlobDecodeError(f"{method}-compressed BLOB is truncated ({len(data)} bytes)")
    if expected_size and len(out) != expected_size:
        raise BlobDecodeError(
            f"{method}-compressed BLOB inflates to {len(out)} bytes, the BLOB announced "
            f"{expected_size}"
        )
    return out


def shift_bayer(pattern: str, dx: int, dy: int) -> str:
    """Bayer pattern of a mosaic whose origin is moved by ``(dx, dy)`` pixels.

    Only the parities matter: an odd ``dx`` swaps the columns (``RGGB`` -> ``GRBG``), an
    odd ``dy`` swaps the rows (``RGGB`` -> ``GBRG``).
    """
    if pattern not in BAYER_PATTERNS:
        raise ValueError(f"pattern must be one of {BAYER_PATTERNS}, got {pattern!r}")
    cells = [[pattern[0], pattern[1]], [pattern[2], pattern[3]]]
    if dy % 2:
        cells = [cells[1], cells[0]]
    if dx % 2:
        cells = [[row[1], row[0]] for row in cells]
    return "".join(cells[0] + cells[1])


def parse_fits_time(date_obs: str, time_obs: str | None = None) -> float | None:
    """Parse a FITS ``DATE-OBS`` (UTC, ISO 8601) into Unix seconds; None if unparseable.

    ``DATE-OBS`` may carry the time (``2024-05-01T21:03:04.125``) or only the date, in
    which case ``TIME-OBS`` (``21:03:04.125``) supplies the time.
    """
    m = _DATE_RE.match(date_obs or "")
    if not m:
        return None
    year, month, day = (int(m.group(i)) for i in (1, 2, 3))
    hms: tuple[str | None, ...] = m.group(4, 5, 6, 7)
    if hms[0] is None and time_obs:
        t = _TIME_RE.match(time_obs)
        if not t:
            return None
        hms = t.groups()
    hour, minute, second = (int(v) if v else 0 for v in hms[:3])
    fraction = float("0." + hms[3]) if hms[3] else 0.0
    try:
        stamp = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError:
        return None
    return stamp.timestamp() + fraction


def decode_raw(data: bytes | bytearray | memoryview, geometry: RawGeometry) -> DecodedFrame:
    """Decode a header-less raw frame (``.stream`` or ``.bin``).

    The bytes per pixel follow from the length: see :data:`RAW_LAYOUTS`.
    """
    buf = memoryview(data).cast("B")
    pixels = geometry.width * geometry.height
    per_pixel, remainder = divmod(len(buf), pixels)
    if remainder or per_pixel not in RAW_LAYOUTS:
        raise BlobDecodeError(
            f"raw frame of {len(buf)} bytes does not fit {geometry.width}x{geometry.height} "
            f"pixels at 1, 2, 3 or 6 bytes per pixel"
        )
    channels, dtype = RAW_LAYOUTS[per_pixel]
    shape = (geometry.height, geometry.width) + ((channels,) if channels > 1 else ())
    image = np.frombuffer(buf, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    bayer = geometry.bayer if channels == 1 else None
    return DecodedFrame(image, bayer, None, None, dtype.itemsize * 8)


def _fits_pixels(data: np.ndarray, *, what: str) -> np.ndarray:
    """Convert FITS pixel data to uint8, uint16 or float32 in native byte order."""
    dtype = data.dtype
    if dtype.kind == "u" and dtype.itemsize <= 2:
        return np.ascontiguousarray(data.astype(dtype.newbyteorder("="), copy=False))
    if dtype.kind == "f":
        return np.ascontiguousarray(data, dtype=np.float32)
    if dtype.kind in "iu":
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        if lo < 0 or hi > _UINT16_MAX:
            raise BlobDecodeError(
                f"{what}: {dtype} pixels range {lo}..{hi}, outside 0..{_UINT16_MAX}"
            )
        return np.ascontiguousarray(data, dtype=np.uint16)
    raise BlobDecodeError(f"{what}: unsupported pixel type {dtype}")


def decode_fits(data: bytes | bytearray | memoryview, *, what: str = "FITS BLOB") -> DecodedFrame:
    """Decode a FITS or tile-compressed FITS (``.fz``) BLOB with its header.

    The image is the first HDU with data; a ``(3, H, W)`` cube becomes ``(H, W, 3)`` RGB;
    ``ROWORDER = 'BOTTOM-UP'`` is flipped to top-down (INDI writes ``TOP-DOWN``). The
    Bayer pattern is ``BAYERPAT`` moved by ``XBAYROFF``/``YBAYROFF``; the exposure is
    ``EXPTIME`` (or ``EXPOSURE``); the capture time is ``DATE-OBS``.
    """
    from astropy.io import fits  # imported here: astropy is slow to import

    raw = bytes(data)
    if not raw.startswith(b"SIMPLE  ="):
        raise BlobDecodeError(f"{what} does not start with a FITS header")
    try:
        with warnings.catch_warnings():
            # indiserver 1.9 sends compressed FITS files with trailing padding, and
            # drivers write headers astropy finds non-standard: neither stops decoding.
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(raw), memmap=False) as hdul:
                hdu = next((h for h in hdul if getattr(h, "data", None) is not None), None)
                if hdu is None:
                    raise BlobDecodeError(f"{what} holds no image data")
                header = hdu.header
                pixels = np.array(hdu.data)
    except BlobDecodeError:
        raise
    except Exception as exc:  # astropy raises many types for a corrupt file
        raise BlobDecodeError(f"{what} cannot be read: {exc}") from None
    if pixels.ndim == 3 and pixels.shape[0] == 3:
        pixels = np.moveaxis(pixels, 0, -1)
    elif pixels.ndim != 2:
        raise BlobDecodeError(f"{what}: image of shape {pixels.shape} is neither 2-D nor RGB")
    if str(header.get("ROWORDER", "TOP-DOWN")).strip().upper() == "BOTTOM-UP":
        pixels = pixels[::-1]
    image = _fits_pixels(pixels, what=what)
    bayer = None
    pattern = str(header.get("BAYERPAT", "")).strip().upper()
    if image.ndim == 2 and pattern in BAYER_PATTERNS:
        bayer = shift_bayer(pattern, _int_card(header, "XBAYROFF"), _int_card(header, "YBAYROFF"))
    exposure = _float_card(header, "EXPTIME")
    if exposure is None:
        exposure = _float_card(header, "EXPOSURE")
    time_obs = header.get("TIME-OBS")
    capture = parse_fits_time(str(header.get("DATE-OBS", "")),
                              str(time_obs) if time_obs is not None else None)
    return DecodedFrame(image, bayer, exposure, capture, image.dtype.itemsize * 8)


def _int_card(header, key: str) -> int:
    """An integer header card, 0 when absent or not a number."""
    try:
        return int(header.get(key, 0))
    except (TypeError, ValueError):
        return 0


def _float_card(header, key: str) -> float | None:
    """A float header card, None when absent or not a number."""
    value = header.get(key)
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def decode_encoded(data: bytes | bytearray | memoryview, *,
                   what: str = "image BLOB") -> DecodedFrame:
    """Decode a JPEG/PNG/TIFF BLOB (e.g. the ``MJPEG`` stream encoder's) with OpenCV."""
    import cv2

    array = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    image = cv2.imdecode(array, cv2.IMREAD_UNCHANGED) if array.size else None
    if image is None:
        raise BlobDecodeError(f"{what} is not a readable JPEG/PNG/TIFF image")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.dtype not in (np.uint8, np.uint16):
        raise BlobDecodeError(f"{what}: unsupported pixel type {image.dtype}")
    return DecodedFrame(np.ascontiguousarray(image), None, None, None, image.dtype.itemsize * 8)


def decode_blob(data: bytes | bytearray | memoryview, fmt: str, *, size: int | None = None,
                geometry: RawGeometry | None = None) -> DecodedFrame:
    """Decode a camera BLOB of any supported format.

    Parameters
    ----------
    data : bytes-like
        The BLOB's bytes (possibly with trailing padding).
    fmt : str
        The BLOB's format (``".fits"``, ``".stream"``, ``".stream.z"``, ...).
    size : int, optional
        The BLOB's announced uncompressed size, checked for compressed BLOBs.
    geometry : RawGeometry, optional
        Size and Bayer pattern of header-less raw frames; required for them.

    Returns
    -------
    DecodedFrame

    Raises
    ------
    BlobDecodeError
        If the format is unknown or the bytes do not decode.
    """
    base, compression = split_format(fmt)
    if len(data) == 0:
        raise BlobDecodeError(f"{fmt} BLOB is empty")
    payload = data
    if compression is not None:
        payload = inflate(data, method=compression, expected_size=size)
    if base in FITS_FORMATS:
        return decode_fits(payload, what=f"{fmt} BLOB")
    if base in RAW_FORMATS:
        if geometry is None:
            raise BlobDecodeError(f"{fmt} BLOB needs the frame size, which the device did not give")
        return decode_raw(payload, geometry)
    if base in ENCODED_FORMATS:
        return decode_encoded(payload, what=f"{fmt} BLOB")
    raise BlobDecodeError(f"unsupported BLOB format {fmt!r}")
