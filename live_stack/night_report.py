"""The report of a batch of recordings: one row per recording, and a contact sheet.

``live-stack reprocess --report night.csv`` (or ``.json``) writes one row per input with
:data:`REPORT_COLUMNS`; ``--contact-sheet night.png`` writes a grid of small previews of
the stacks with their names and seeing, so that the good recordings of a night show at
once. The rows come from :class:`Outcome` records, one per recording, which the task
that stacked it returns (or which describe an output found up to date, or a failure).

The seeing estimate is :func:`seeing_index`: how sharp the typical frame is against the
best ones, from the frames' quality distribution. Absolute frame quality depends on the
target (a disk on black sky has far less detail energy than the lunar surface), its
spread does not: in steady air most frames are nearly as sharp as the best, in poor
seeing few are.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Outcome",
    "STATUSES",
    "REPORT_COLUMNS",
    "REPORT_SUFFIXES",
    "SheetParams",
    "seeing_index",
    "preview",
    "report_row",
    "write_report",
    "contact_sheet",
    "write_contact_sheet",
]

#: What became of a recording: stacked now, skipped because its outputs were up to date
#: (made from the same input with the same parameters), or failed (with its error).
STATUSES = ("stacked", "skipped", "failed")

#: Columns of the report, in order (the JSON report has the same keys).
REPORT_COLUMNS = (
    "input",  # the recording as given on the command line
    "status",  # one of STATUSES
    "mode",  # global alignment mode used: surface or planet
    "frames",  # frames in the recording
    "width",  # frame width, pixels
    "height",  # frame height, pixels
    "duration_s",  # capture time from the first to the last frame (timestamps or fps)
    "seeing",  # seeing_index of the frames' quality: 1 = every frame as sharp as the best
    "frames_stacked",  # frames stacked per AP, one value per stack size (";"-separated)
    "aps",  # alignment points used
    "seconds",  # time spent stacking it (0 when skipped)
    "outputs",  # the images written, ";"-separated
    "error",  # why it failed ("" otherwise)
)

#: Report formats, by file suffix.
REPORT_SUFFIXES = (".csv", ".json")

#: Percentile of the frames' quality that stands for "the best frames" in
#: :func:`seeing_index` (a high percentile rather than the maximum, which one lucky or
#: glitched frame would set).
BEST_PERCENTILE = 95.0


@dataclass(frozen=True)
class Outcome:
    """What became of one recording of a batch.

    Attributes
    ----------
    input : str
        The recording as given.
    status : str
        One of :data:`STATUSES`.
    outputs : tuple of str
        The images written (or found up to date), one per stack size.
    summary : dict
        The stacking summary (``frames``, ``mode``, ``aps``, ``stacks``, ``input_size``,
        ``duration_seconds``, ``seeing``, ``total_seconds``, ...), as stored in the
        output's metadata; empty for a failure.
    error : str
        The one-line error of a failed recording.
    preview : numpy.ndarray or None
        A small uint8 preview of the first stack (:func:`preview`), when asked for.
    """

    input: str
    status: str
    outputs: tuple[str, ...] = ()
    summary: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""
    preview: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if (self.status == "failed") != bool(self.error):
            raise ValueError(f"error must be given exactly for a failed outcome, got status "
                             f"{self.status!r} with error {self.error!r}")


def seeing_index(quality: np.ndarray) -> float:
    """How sharp the typical frame is against the best: median over high percentile.

    Parameters
    ----------
    quality : numpy.ndarray
        The frames' global quality (:attr:`live_stack.quality.Ranking.quality`).

    Returns
    -------
    float
        In ``[0, 1]``: near 1 in steady air (most frames as sharp as the best), lower as
        the seeing gets worse; ``nan`` for no frames or no detail at all.

    On simulated captures of the Moon, a planet and the Sun, with the simulator's
    ``good``, ``normal`` and ``poor`` seeing, it falls from about 0.8 to 0.6 to 0.3
    whatever the target.
    """
    q = np.asarray(quality, dtype=np.float64)
    if q.ndim != 1:
        raise ValueError(f"quality must be one value per frame, got shape {q.shape}")
    q = q[np.isfinite(q)]
    if not len(q):
        return float("nan")
    best = float(np.percentile(q, BEST_PERCENTILE))
    if best <= 0:
        return float("nan")
    return float(np.clip(np.median(q) / best, 0.0, 1.0))


@dataclass(frozen=True)
class SheetParams:
    """Layout of the contact sheet."""

    tile: int = 200  # side of the square a preview is fitted into, pixels
    columns: int = 5  # tiles per row (fewer when there are fewer stacks)
    caption: int = 34  # height of the two caption lines under each tile, pixels
    gap: int = 6  # space between tiles and around the sheet, pixels

    def __post_init__(self) -> None:
        if not 32 <= self.tile <= 2048:
            raise ValueError(f"tile must be 32..2048 pixels, got {self.tile}")
        if not 1 <= self.columns <= 100:
            raise ValueError(f"columns must be 1..100, got {self.columns}")
        if not 20 <= self.caption <= 200:
            raise ValueError(f"caption must be 20..200 pixels, got {self.caption}")
        if not 0 <= self.gap <= 100:
            raise ValueError(f"gap must be 0..100 pixels, got {self.gap}")


#: Percentiles of a stack's brightness mapped to black and white in its preview (a dim
#: planet fills the range as the bright Moon does).
PREVIEW_STRETCH = (0.1, 99.9)


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` shrunk (area average) so that its longest side is at most ``size``."""
    import cv2

    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    h, w = image.shape[:2]
    scale = size / max(h, w)
    if scale >= 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA)


def preview(image: np.ndarray, *, size: int = SheetParams().tile) -> np.ndarray:
    """A small uint8 preview of a stack: fitted into ``size`` x ``size``, stretched.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` RGB float ``[0, 1]`` image.
    size : int
        Longest side of the preview, pixels (never enlarged).

    Returns
    -------
    numpy.ndarray
        uint8 ``(h, w)`` or ``(h, w, 3)`` RGB, ``max(h, w) <= size``.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim not in (2, 3) or img.size == 0:
        raise ValueError(f"image must be a non-empty (H, W) or (H, W, 3) array, got {img.shape}")
    img = _fit(img, size)
    lo, hi = np.percentile(img, PREVIEW_STRETCH)
    span = hi - lo if hi > lo else 1.0
    return np.clip(np.rint((img - lo) * (255.0 / span)), 0, 255).astype(np.uint8)


def _number(value: Any, digits: int) -> Any:
    """A finite number rounded, or "" (missing, NaN)."""
    if value is None or isinstance(value, str):
        return "" if value is None else value
    value = float(value)
    return round(value, digits) if np.isfinite(value) else ""


def report_row(outcome: Outcome) -> dict[str, Any]:
    """The report row of one outcome: :data:`REPORT_COLUMNS` -> value ("" when unknown)."""
    s = outcome.summary
    size = s.get("input_size") or ["", ""]
    stacks = s.get("stacks") or {}
    return {
        "input": outcome.input,
        "status": outcome.status,
        "mode": s.get("mode", ""),
        "frames": s.get("frames", ""),
        "width": size[0],
        "height": size[1],
        "duration_s": _number(s.get("duration_seconds"), 3),
        "seeing": _number(s.get("seeing"), 3),
        "frames_stacked": ";".join(str(v) for v in stacks.values()),
        "aps": s.get("aps", ""),
        "seconds": _number(s.get("total_seconds", 0.0) if outcome.status == "stacked" else 0.0,
                           3),
        "outputs": ";".join(outcome.outputs),
        "error": outcome.error,
    }


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_report(path: str | os.PathLike[str], outcomes: Sequence[Outcome]) -> None:
    """Write the report of ``outcomes``: CSV or JSON by the suffix of ``path``.

    The CSV has a header row of :data:`REPORT_COLUMNS` and one row per outcome; the JSON
    is a list of objects with the same keys (``outputs`` and ``frames_stacked`` as
    lists, numbers as numbers). The file is written under a temporary name and renamed.

    Raises
    ------
    ValueError
        If the suffix of ``path`` is not one of :data:`REPORT_SUFFIXES`.
    OSError
        If it cannot be written.
    """
    p = os.fspath(path)
    suffix = Path(p).suffix.lower()
    if suffix not in REPORT_SUFFIXES:
        raise ValueError(f"--report {p}: unknown report format {suffix or '(none)'!r}; use "
                         f"{' or '.join(REPORT_SUFFIXES)}")
    rows = [report_row(o) for o in outcomes]
    if suffix == ".csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=REPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        data = text.getvalue().encode()
    else:
        for row, outcome in zip(rows, outcomes, strict=True):
            row["outputs"] = list(outcome.outputs)
            row["frames_stacked"] = list((outcome.summary.get("stacks") or {}).values())
            for key, value in row.items():
                if value == "":
                    row[key] = None
        data = (json.dumps(rows, indent=1) + "\n").encode()
    _write_atomic(p, data)


def _caption(outcome: Outcome, width: int) -> tuple[str, str]:
    """The two caption lines of a tile: the name, then seeing, frames and stack size."""
    import cv2

    name = Path(outcome.input.rstrip("/\\")).name or outcome.input
    # shorten the name from the middle until it fits the tile
    scale = 0.4
    while len(name) > 4 and cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width:
        half = (len(name) - 2) // 2
        name = name[:half] + "~" + name[-half + 1:] if half > 1 else name[:-1]
    s = outcome.summary
    seeing = s.get("seeing")
    seeing_text = f"seeing {seeing:.2f}" if isinstance(seeing, (int, float)) and \
        np.isfinite(seeing) else "seeing ?"
    stacks = s.get("stacks") or {}
    per_ap = next(iter(stacks.values()), "?")
    return name, f"{seeing_text}  {s.get('frames', '?')} fr  {per_ap}/AP"


def contact_sheet(outcomes: Sequence[Outcome], params: SheetParams = SheetParams()) -> np.ndarray:
    """A grid of the previews of ``outcomes`` (those with one), with captions.

    Each tile is ``params.tile`` square, the preview centred in it on black, with the
    recording's name and its seeing, frames and frames per AP on two lines below.

    Returns
    -------
    numpy.ndarray
        uint8 ``(H, W, 3)`` RGB sheet.

    Raises
    ------
    ValueError
        If no outcome has a preview.
    """
    import cv2

    tiles = [o for o in outcomes if o.preview is not None]
    if not tiles:
        raise ValueError("no stack to put on a contact sheet (every recording failed)")
    cols = min(params.columns, len(tiles))
    rows = -(-len(tiles) // cols)
    cell_w, cell_h = params.tile + params.gap, params.tile + params.caption + params.gap
    sheet = np.full((params.gap + rows * cell_h, params.gap + cols * cell_w, 3), 32, np.uint8)
    for k, outcome in enumerate(tiles):
        y0 = params.gap + (k // cols) * cell_h
        x0 = params.gap + (k % cols) * cell_w
        img = _fit(outcome.preview, params.tile)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        h, w = img.shape[:2]
        tile = np.zeros((params.tile, params.tile, 3), np.uint8)
        ty, tx = (params.tile - h) // 2, (params.tile - w) // 2
        tile[ty:ty + h, tx:tx + w] = img
        sheet[y0:y0 + params.tile, x0:x0 + params.tile] = tile
        line_h = params.caption // 2
        for i, text in enumerate(_caption(outcome, params.tile)):
            cv2.putText(sheet, text, (x0 + 2, y0 + params.tile + line_h * (i + 1) - 4),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (235, 235, 235), 1, cv2.LINE_AA)
    return sheet


def write_contact_sheet(path: str | os.PathLike[str], outcomes: Sequence[Outcome],
                        params: SheetParams = SheetParams()) -> tuple[int, int]:
    """Write :func:`contact_sheet` of ``outcomes`` as an 8-bit PNG (temporary name, renamed).

    Returns
    -------
    tuple of int
        The number of tiles and of recordings left off (no stack).

    Raises
    ------
    ValueError
        If ``path`` does not end in ``.png``, or no outcome has a preview.
    OSError
        If it cannot be written.
    """
    import cv2

    p = os.fspath(path)
    if Path(p).suffix.lower() != ".png":
        raise ValueError(f"--contact-sheet {p}: the contact sheet is a .png file")
    sheet = contact_sheet(outcomes, params)
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(sheet[..., ::-1]))
    if not ok:
        raise ValueError(f"OpenCV could not encode the {sheet.shape} contact sheet as PNG")
    _write_atomic(p, encoded.tobytes())
    tiles = sum(o.preview is not None for o in outcomes)
    return tiles, len(outcomes) - tiles
