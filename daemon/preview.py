"""Previews of the raw frames for the viewer: the newest frame, decimated, with its levels.

The daemon's publisher sends a ``preview`` message every
:attr:`PreviewParams.interval` seconds when a new frame has arrived
(docs/protocol.md): the newest frame received, averaged down by a whole factor until its
pixels fit :attr:`PreviewParams.max_bytes`, with the histogram and the share of clipped
pixels of each colour channel, measured on the full frame (a Bayer mosaic's sites
separately). The ingest thread only keeps a reference to the newest frame; all the work
is done here, in the publisher's thread, at most ``1 / interval`` times a second, so
previews never slow the ingest down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon import protocol

#: Most pixels per channel the levels are measured on (a regular subsample beyond that):
#: a quarter megapixel, plenty for a histogram and for a clipped share of a thousandth
#: (the warning's threshold), and a 4k frame costs little more than a VGA one.
LEVEL_SAMPLES = 1 << 18

#: Position of each colour's sites in a 2x2 Bayer cell, by pattern: (row, column) pairs.
BAYER_SITES = {
    pattern: {
        colour: [(i // 2, i % 2) for i, c in enumerate(pattern) if c == colour]
        for colour in "RGB"
    }
    for pattern in ("RGGB", "GRBG", "GBRG", "BGGR")
}


@dataclass(frozen=True)
class PreviewParams:
    """How often previews are made and how large they may be."""

    interval: float = 0.2  # seconds between two previews (5 a second, as a live view wants)
    # most bytes of a preview's pixels: 256 KiB five times a second is 1.3 MB/s, which a
    # Wi-Fi link to the telescope carries beside the stacks (a 640x480 mono frame fits whole)
    max_bytes: int = 256 * 1024
    bins: int = 64  # histogram bins over each channel's range (0 to full scale)

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {self.interval!r}")
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) \
                or self.max_bytes < 64 * 64:
            raise ValueError(f"max_bytes must be an integer >= 4096, got {self.max_bytes!r}")
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {self.bins!r}")


def full_scale(dtype: np.dtype, bit_depth: Any = None) -> float:
    """The value a clipped pixel has: ``2**bit_depth - 1`` for integer frames when the
    source says its bit depth (a 12-bit camera in 16-bit words), else the dtype's
    largest value; 1.0 for float frames."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return 1.0
    top = float(np.iinfo(dtype).max)
    if isinstance(bit_depth, int) and not isinstance(bit_depth, bool) \
            and 1 <= bit_depth <= dtype.itemsize * 8:
        return float(2 ** bit_depth - 1)
    return top


def colour_planes(frame: np.ndarray, layout: str) -> dict[str, list[np.ndarray]]:
    """The frame's pixels by colour, as 2-D views (no copy): ``L`` (mono), ``R``/``G``/
    ``B`` (an RGB frame's planes, or a Bayer mosaic's sites: G has two)."""
    if layout == "mono":
        return {"L": [frame]}
    if layout == "rgb":
        return {c: [frame[..., i]] for i, c in enumerate("RGB")}
    if layout not in BAYER_SITES:
        raise ValueError(f"layout must be mono, rgb or a Bayer pattern, got {layout!r}")
    return {c: [frame[r::2, k::2] for r, k in sites] for c, sites in BAYER_SITES[layout].items()}


def _counts(sample: np.ndarray, full: float, bins: int) -> np.ndarray:
    """Histogram of ``sample`` over ``[0, full]`` in ``bins`` bins (values beyond in the
    last); integer samples are counted with one ``bincount``."""
    if sample.dtype.kind == "f":
        return np.histogram(np.clip(sample, 0.0, full), bins=bins, range=(0.0, full))[0]
    levels_ = int(full) + 1
    if levels_ & (levels_ - 1) == 0 and bins & (bins - 1) == 0 and bins <= levels_ \
            and levels_ <= 1 << (8 * sample.itemsize):  # powers of two: one shift
        shift = levels_.bit_length() - bins.bit_length()
        index = sample >> sample.dtype.type(shift)
        if levels_ < 1 << (8 * sample.itemsize):  # values beyond full: the last bin
            index = np.minimum(index, sample.dtype.type(bins - 1))
    else:
        index = np.minimum(sample.astype(np.uint32) * np.uint32(bins)
                           // np.uint32(levels_), np.uint32(bins - 1))
    return np.bincount(index.ravel(), minlength=bins)[:bins]


def levels(frame: np.ndarray, layout: str, *, full: float, bins: int) -> dict[str, Any]:
    """Histogram and clipped share of each channel of ``frame``, measured on at most
    :data:`LEVEL_SAMPLES` pixels per channel (a regular subsample of larger frames).

    Returns
    -------
    dict
        ``{"full": full, "edges": [bins + 1 values], "hist": {channel: counts},
        "clipped": {channel: share of pixels at or above full}}``; the edges go from 0
        to ``full + 1`` for integer frames (each bin holds whole values), to ``full``
        for float ones.
    """
    hist, clipped = {}, {}
    for name, planes in colour_planes(frame, layout).items():
        counts = np.zeros(bins, dtype=np.int64)
        at_top = total = 0
        for plane in planes:
            pixels = plane.shape[0] * plane.shape[1] * len(planes)
            step = max(1, int(np.ceil(np.sqrt(pixels / LEVEL_SAMPLES))))
            sample = plane[::step, ::step]
            counts += _counts(sample, full, bins)
            at_top += int(np.count_nonzero(sample >= full))
            total += sample.size
        hist[name] = counts.tolist()
        clipped[name] = at_top / max(1, total)
    # integer samples: bin i holds the values i * (full + 1) / bins up to the next edge
    top = full if frame.dtype.kind == "f" else full + 1
    return {"full": full, "edges": np.linspace(0.0, top, bins + 1).tolist(),
            "hist": hist, "clipped": clipped}


def viewable(frame: np.ndarray, layout: str) -> np.ndarray:
    """The frame as mono or RGB pixels: a Bayer mosaic's 2x2 cells become one RGB pixel
    each (half size; the two greens averaged); float frames become uint16."""
    if layout in BAYER_SITES:
        h, w = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
        planes = []
        for sites in colour_planes(frame[:h, :w], layout).values():
            if len(sites) == 1:
                planes.append(sites[0])
            else:  # the two greens, averaged in a wider type
                planes.append(((sites[0].astype(np.uint32) + sites[1]) // 2).astype(frame.dtype)
                              if frame.dtype.kind != "f" else (sites[0] + sites[1]) / 2)
        frame = np.dstack(planes)
    if frame.dtype.kind == "f":
        frame = protocol.stack_to_wire(frame)
    return frame


def decimate(image: np.ndarray, max_bytes: int) -> tuple[np.ndarray, int]:
    """``image`` averaged over ``k x k`` blocks (OpenCV's area resampling, which is that
    for a whole factor), the smallest whole ``k`` whose result fits ``max_bytes``;
    returns the result and ``k``."""
    import cv2

    per_pixel = image.itemsize * (image.shape[2] if image.ndim == 3 else 1)
    pixels = image.shape[0] * image.shape[1]
    k = max(1, int(np.ceil(np.sqrt(pixels * per_pixel / max_bytes))))
    while (image.shape[0] // k) * (image.shape[1] // k) * per_pixel > max_bytes:
        k += 1
    if k == 1:
        return image, 1
    h, w = image.shape[0] // k, image.shape[1] // k
    out = cv2.resize(np.ascontiguousarray(image[: h * k, : w * k]), (w, h),
                     interpolation=cv2.INTER_AREA)
    return out, k


def encode_preview(header: dict[str, Any], frame: np.ndarray, params: PreviewParams, *,
                   focus: dict[str, Any]) -> list[Any]:
    """The ``[topic, header, pixels]`` parts of a preview of one received frame.

    Parameters
    ----------
    header : dict
        The frame's checked wire header.
    frame : numpy.ndarray
        Its pixels.
    params : PreviewParams
        Size and histogram bins.
    focus : dict
        What the viewer's focus aid shows beside it (``quality`` of the newest frame
        stacked, ``best_quality`` so far, ``received_fps``), passed through in ``meta``.
    """
    layout = header["layout"]
    meta_in = header.get("meta") if isinstance(header.get("meta"), dict) else {}
    full = full_scale(frame.dtype, meta_in.get("bit_depth"))
    image, factor = decimate(viewable(frame, layout), params.max_bytes)
    meta = {
        "source": header.get("source", ""),
        "frame_width": header["width"],
        "frame_height": header["height"],
        "frame_layout": layout,
        "frame_dtype": header["dtype"],
        "decimation": factor * (2 if layout in BAYER_SITES else 1),
        "levels": levels(frame, layout, full=full, bins=params.bins),
        "frame_meta": meta_in,  # what the source said of the frame (e.g. replay's index)
        **focus,
    }
    parts = protocol.encode_image(image, kind="preview", seq=header["seq"],
                                  capture_time=header["time"],
                                  exposure=header.get("exposure"), source=header.get("source", ""),
                                  meta=meta)
    return [protocol.TOPIC_PREVIEW, *parts]
