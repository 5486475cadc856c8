"""Single image files: write stacks with their metadata, read images back.

:func:`write_image` stores a float32 ``[0, 1]`` image as 16 bits per sample, choosing
the format by extension, with a metadata dict stored in the file:

=================  =========================================================================
``.tif, .tiff``    16-bit TIFF (tifffile); the metadata as JSON in the ImageDescription tag
``.png``           16-bit PNG (OpenCV); the metadata as JSON in a ``tEXt`` chunk with keyword
                   :data:`PNG_TEXT_KEYWORD`, inserted before ``IEND``
``.fits, .fit,     FITS (astropy), unsigned 16-bit (``BZERO = 32768``); colour as three
.fts``             planes (``NAXIS3 = 3``, R, G, B). The metadata as JSON in the long-string
                   card :data:`FITS_JSON_KEYWORD` (CONTINUE convention), and its scalar
                   entries also as ordinary cards: keys of up to 8 characters directly,
                   longer ones as HIERARCH cards
=================  =========================================================================

:func:`read_image` reads those formats (and 8-bit ones, and JPEG) back as float32
``[0, 1]`` with the metadata dict; :func:`read_native` returns the samples in their
stored integer type, as the image-folder source needs them.

Rows are stored top row first in every format; FITS readers that put row 0 at the
bottom show the image flipped vertically, as with most capture software's FITS files.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from live_stack.io import BAYER_PATTERNS, SourceError

__all__ = [
    "write_image",
    "read_image",
    "read_native",
    "WRITE_SUFFIXES",
    "READ_SUFFIXES",
    "PNG_TEXT_KEYWORD",
    "FITS_JSON_KEYWORD",
]

TIFF_SUFFIXES = (".tif", ".tiff")
PNG_SUFFIXES = (".png",)
FITS_SUFFIXES = (".fits", ".fit", ".fts")
JPEG_SUFFIXES = (".jpg", ".jpeg")
#: Extensions :func:`write_image` writes.
WRITE_SUFFIXES = TIFF_SUFFIXES + PNG_SUFFIXES + FITS_SUFFIXES
#: Extensions :func:`read_image` and :func:`read_native` read.
READ_SUFFIXES = WRITE_SUFFIXES + JPEG_SUFFIXES

#: Keyword of the PNG ``tEXt`` chunk that holds the metadata JSON.
PNG_TEXT_KEYWORD = "live-stack"
#: FITS keyword whose (long-string) value is the metadata JSON.
FITS_JSON_KEYWORD = "LSMETA"

#: Full scale of the 16-bit samples written.
U16_MAX = 65535
#: Maximum length of a FITS keyword written directly (longer keys use HIERARCH).
FITS_SHORT_KEY = 8
#: Longest metadata key written as a HIERARCH card (longer keys are only in the JSON),
#: leaving room on the 80-character card for the value.
FITS_MAX_HIERARCH_KEY = 40
#: FITS cards that describe the data layout and are not returned as metadata.
FITS_STRUCTURAL = re.compile(
    r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|BSCALE|BZERO|PCOUNT|GCOUNT|XTENSION|END|"
    r"COMMENT|HISTORY|CONTINUE|CHECKSUM|DATASUM|)$"
)
_FITS_SHORT_KEY_RE = re.compile(r"^[A-Z0-9_-]{1,8}$")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND"
_PNG_TEXT = b"tEXt"


# -- writing ---------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    """Make numpy scalars and arrays JSON-serialisable."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _metadata_json(metadata: Mapping[str, Any] | None) -> str:
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        # ASCII only (PNG tEXt is Latin-1; FITS cards are ASCII) and compact.
        return json.dumps(dict(metadata), default=_json_default, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata cannot be stored as JSON: {exc}") from exc


def _to_u16(image: np.ndarray) -> np.ndarray:
    """Check a float image and scale it to uint16 (clipping to [0, 1], NaN -> 0)."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype.kind != "f":
        raise ValueError(f"image must be a float array in [0, 1], got dtype {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must have shape (H, W) or (H, W, 3), got {image.shape}")
    if image.size == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    scaled = np.nan_to_num(image.astype(np.float32), nan=0.0)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    scaled *= U16_MAX
    return np.rint(scaled).astype(np.uint16)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bytes(u16: np.ndarray, text: str) -> bytes:
    import cv2

    pixels = u16 if u16.ndim == 2 else np.ascontiguousarray(u16[..., ::-1])  # RGB -> BGR
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {u16.shape} uint16 image as PNG")
    data = encoded.tobytes()
    iend = data.rfind(_PNG_IEND) - 4  # the IEND chunk starts with its 4-byte length
    if iend < len(_PNG_SIGNATURE):
        raise ValueError("OpenCV produced a PNG without an IEND chunk")
    chunk = _png_chunk(_PNG_TEXT, PNG_TEXT_KEYWORD.encode("latin-1") + b"\0" + text.encode())
    return data[:iend] + chunk + data[iend:]


def _tiff_bytes(u16: np.ndarray, text: str) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    photometric = "rgb" if u16.ndim == 3 else "minisblack"
    tifffile.imwrite(buffer, u16, photometric=photometric, description=text, metadata=None)
    return buffer.getvalue()


def _fits_value_ok(value: Any) -> bool:
    """Whether a metadata value can be a FITS card value (finite number, ASCII text)."""
    if isinstance(value, str):
        return value.isascii() and value.isprintable()
    if isinstance(value, float):
        return bool(np.isfinite(value))
    return isinstance(value, (int, bool))


def _fits_cards(metadata: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Scalar metadata entries as (keyword, value) FITS cards; others are left to the JSON."""
    cards = []
    for key, value in metadata.items():
        if isinstance(value, np.generic):
            value = value.item()
        name = str(key)
        if not name or not _fits_value_ok(value) or not _fits_value_ok(name) or "=" in name:
            continue
        upper = name.upper()
        if _FITS_SHORT_KEY_RE.match(upper) and len(upper) <= FITS_SHORT_KEY:
            if FITS_STRUCTURAL.match(upper) or upper == FITS_JSON_KEYWORD:
                continue
            cards.append((upper, value))
        elif len(name) <= FITS_MAX_HIERARCH_KEY and name.strip() == name:
            cards.append((f"HIERARCH {name}", value))
    return cards


def _fits_bytes(u16: np.ndarray, metadata: Mapping[str, Any], text: str) -> bytes:
    from astropy.io import fits

    data = u16 if u16.ndim == 2 else np.ascontiguousarray(np.moveaxis(u16, 2, 0))
    hdu = fits.PrimaryHDU(data)
    header = hdu.header
    for key, value in _fits_cards(metadata):
        try:
            header[key] = value
        except ValueError:
            pass  # not representable as a card: it is in the JSON
    header[FITS_JSON_KEYWORD] = (text, "live-stack metadata (JSON)")
    buffer = io.BytesIO()
    hdu.writeto(buffer)
    return buffer.getvalue()


def write_image(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    metadata: Mapping[str, Any] | None = None,
    atomic: bool = True,
) -> None:
    """Write a float ``[0, 1]`` image as 16-bit TIFF, PNG or FITS, by extension.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; the extension picks the format (see the module docstring).
    image : numpy.ndarray
        Float image, ``(H, W)`` or ``(H, W, 3)`` RGB; values are clipped to ``[0, 1]``
        (NaN is written as 0) and scaled to 0..65535.
    metadata : dict, optional
        JSON-serialisable values (numpy scalars and arrays are converted) stored in the
        file; :func:`read_image` returns them.
    atomic : bool
        Write to a temporary file in the same folder and rename it over ``path``, so
        that readers never see a partial file.

    Raises
    ------
    ValueError
        If the extension is not a writable format, or ``image`` or ``metadata`` is not
        valid (naming which).
    OSError
        If the file cannot be written.
    """
    p = os.fspath(path)
    suffix = os.path.splitext(p)[1].lower()
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(
            f"path has unsupported extension {suffix or '(none)'!r}; "
            f"write_image writes {', '.join(WRITE_SUFFIXES)}"
        )
    u16 = _to_u16(image)
    meta = {} if metadata is None else metadata
    text = _metadata_json(meta)
    folder = os.path.dirname(os.path.abspath(p))
    target = (
        os.path.join(folder, f".{os.path.basename(p)}.{uuid.uuid4().hex[:12]}.tmp") if atomic else p
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if atomic else os.O_TRUNC)
    if suffix in PNG_SUFFIXES:
        data = _png_bytes(u16, text)
    elif suffix in TIFF_SUFFIXES:
        data = _tiff_bytes(u16, text)
    else:
        data = _fits_bytes(u16, meta, text)
    fd = os.open(target, flags | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if atomic:
                os.fsync(f.fileno())
        if atomic:
            os.replace(target, p)
    except BaseException:
        if atomic:
            try:
                os.unlink(target)
            except FileNotFoundError:
                pass
        raise


# -- reading ---------------------------------------------------------------------------


def _parse_json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _png_text(path: str, data: bytes) -> dict[str, Any]:
    """Metadata from a PNG's tEXt chunks: ours parsed as JSON, others as strings."""
    meta: dict[str, Any] = {}
    ours: dict[str, Any] | None = None
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length or pos + 12 + length > len(data):
            raise SourceError(f"{path}: PNG chunk {kind!r} at byte {pos} is truncated")
        if kind == _PNG_TEXT:
            (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
            if crc != zlib.crc32(kind + body):
                raise SourceError(f"{path}: PNG tEXt chunk at byte {pos} has a bad CRC")
            key, _, value = body.partition(b"\0")
            text = value.decode("latin-1")
            if key.decode("latin-1") == PNG_TEXT_KEYWORD:
                ours = _parse_json(text)
                if ours is None:
                    raise SourceError(f"{path}: the {PNG_TEXT_KEYWORD!r} tEXt chunk is not JSON")
            else:
                meta[key.decode("latin-1")] = text
        if kind == _PNG_IEND:
            break
        pos += 12 + length
    return meta if ours is None else ours


def _decode_cv2(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    import cv2

    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise SourceError(f"{path}: the file is empty (0 bytes)")
    try:
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise SourceError(f"{path}: OpenCV cannot decode this image: {exc}") from None
    if arr is None:
        raise SourceError(f"{path}: OpenCV cannot decode this image (corrupt or not an image)")
    if arr.ndim == 3:
        channels = arr.shape[2]
        if channels == 1 or channels == 2:  # grey (+ alpha)
            arr = arr[..., 0]
        elif channels in (3, 4):
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB if channels == 4 else cv2.COLOR_BGR2RGB)
        else:
            raise SourceError(f"{path}: unsupported number of channels: {channels}")
    meta = _png_text(path, data) if data.startswith(_PNG_SIGNATURE) else {}
    return arr, meta


def _planes_last(path: str, arr: np.ndarray, *, planar: bool) -> np.ndarray:
    """(H, W), (H, W, C) or planar (C, H, W) -> (H, W) or (H, W, 3), dropping alpha."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and planar:
        arr = np.moveaxis(arr, 0, 2)
    if arr.ndim == 3 and arr.shape[2] in (1, 2):
        return arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return arr[..., :3]
    raise SourceError(f"{path}: unsupported image shape {arr.shape}")


def _decode_tiff(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            arr = page.asarray()
            description = page.description or ""
            planar = arr.ndim == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    except Exception as exc:  # tifffile raises many types on corrupt files
        raise SourceError(
            f"{path}: cannot read TIFF (corrupt or not a TIFF file): {type(exc).__name__}: {exc}"
        ) from exc
    meta = _parse_json(description) if description else {}
    if meta is None:
        meta = {"description": description}
    return _planes_last(path, arr, planar=planar), meta


def _decode_fits(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = next((h for h in hdul if h.is_image and h.data is not None), None)
            if hdu is None:
                raise SourceError(f"{path}: FITS file has no image data")
            arr = np.array(hdu.data)
            header = hdu.header
            meta: dict[str, Any] = {}
            for card in header.cards:
                key = card.keyword
                if FITS_STRUCTURAL.match(key) or key == FITS_JSON_KEYWORD:
                    continue
                meta[key] = card.value
            ours = _parse_json(str(header.get(FITS_JSON_KEYWORD, "")))
    except SourceError:
        raise
    except Exception as exc:  # astropy raises many types on corrupt files
        raise SourceError(f"{path}: cannot read FITS: {exc}") from exc
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    # Our own files: the JSON is the metadata (the cards only repeat part of it).
    return _planes_last(path, arr, planar=True), meta if ours is None else ours


def _decode(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode an image file: (array in the stored dtype, RGB order; metadata)."""
    p = os.fspath(path)
    suffix = os.path.splitext(p)[1].lower()
    if suffix not in READ_SUFFIXES:
        raise ValueError(
            f"path has unsupported extension {suffix or '(none)'!r}; "
            f"images are read from {', '.join(READ_SUFFIXES)}"
        )
    if not os.path.isfile(p):
        raise SourceError(f"{p}: no such file")
    try:
        if suffix in TIFF_SUFFIXES:
            return _decode_tiff(p)
        if suffix in FITS_SUFFIXES:
            return _decode_fits(p)
        return _decode_cv2(p)
    except OSError as exc:
        raise SourceError(f"{p}: cannot read: {exc}") from exc


def _float_range_check(path: str, arr: np.ndarray) -> tuple[float, float]:
    if not np.all(np.isfinite(arr)):
        raise SourceError(f"{path}: floating-point image has NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > U16_MAX:
        raise SourceError(
            f"{path}: floating-point image spans {lo:g}..{hi:g}; expected 0..1 or 0..{U16_MAX}"
        )
    return lo, hi


def read_native(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image file as uint8 or uint16 samples.

    Integer data within 0..255 stored as 8 bits stays uint8; other integer data within
    0..65535 becomes uint16. Floating-point data in ``[0, 1]`` is scaled to 0..65535,
    floating-point data within 0..65535 is rounded.

    Returns
    -------
    (numpy.ndarray, dict)
        ``(H, W)`` or ``(H, W, 3)`` RGB array, and the metadata stored in the file
        (as :func:`read_image`; a foreign Bayer FITS has ``"BAYERPAT"``).

    Raises
    ------
    SourceError
        If the file cannot be read or its values do not fit 16 bits.
    ValueError
        If the extension is not a readable format.
    """
    p = os.fspath(path)
    arr, meta = _decode(p)
    if arr.dtype in (np.uint8, np.uint16):
        return np.ascontiguousarray(arr), meta
    if arr.dtype.kind == "f":
        _, hi = _float_range_check(p, arr)
        scale = U16_MAX if hi <= 1.0 else 1.0
        return np.rint(arr.astype(np.float64) * scale).astype(np.uint16), meta
    if arr.dtype.kind in "iub" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > U16_MAX:
            raise SourceError(f"{p}: integer image spans {lo}..{hi}; expected 0..{U16_MAX}")
        return arr.astype(np.uint16), meta
    raise SourceError(f"{p}: unsupported sample type {arr.dtype}")


def read_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image file as float32 ``[0, 1]`` with its metadata.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.tif/.tiff``, ``.png``, ``.fits/.fit/.fts`` or ``.jpg/.jpeg`` file.

    Returns
    -------
    (numpy.ndarray, dict)
        The image, ``(H, W)`` or ``(H, W, 3)`` RGB float32: 8-bit samples divided by
        255, 16-bit ones by 65535, floating-point samples kept if within ``[0, 1]``
        else divided by 65535. And the metadata: the dict given to
        :func:`write_image`; for other files, the FITS header cards, the PNG ``tEXt``
        chunks, or the TIFF description (as ``"description"``) if it is not JSON.

    Raises
    ------
    SourceError
        If the file cannot be read (naming it).
    ValueError
        If the extension is not a readable format.
    """
    p = os.fspath(path)
    arr, meta = _decode(p)
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        out = arr.astype(np.float32) * np.float32(1.0 / np.iinfo(arr.dtype).max)
    elif arr.dtype.kind == "f":
        _, hi = _float_range_check(p, arr)
        out = arr.astype(np.float32) / np.float32(1.0 if hi <= 1.0 else U16_MAX)
    else:
        out, meta = read_native(p)
        out = out.astype(np.float32) / np.float32(U16_MAX)
    return np.clip(out, 0.0, 1.0, out=out), meta


def bayer_pattern(metadata: Mapping[str, Any]) -> str | None:
    """The Bayer pattern a FITS header declares (``BAYERPAT``), or None."""
    value = str(metadata.get("BAYERPAT", "")).strip().upper()
    return value if value in BAYER_PATTERNS else None
