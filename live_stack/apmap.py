"""Where a stack is weak: a map of its alignment points, as a picture and as numbers.

For each AP, the number of frames stacked there and the number of its local shifts that
could not be trusted and fell back (:func:`live_stack.local.resolve`): an AP whose
shifts mostly fell back was stacked on its neighbours' or the global shifts, so it is
as sharp as they allow and no sharper. :func:`ap_map_image` draws the APs' boxes over
the stack, coloured from green (every shift measured) to red (every shift fell back),
with the frame count written in boxes that hold fewer frames than asked;
:func:`ap_map_records` gives the same as plain numbers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from live_stack.pipeline import PipelineResult

#: Longest side of the map picture, pixels (the stack is shrunk to it).
MAP_SIDE = 800
#: Opacity of the boxes' fill over the stack.
FILL_ALPHA = 0.35
#: Colours (BGR, as OpenCV draws) of a box with no shift and with every shift fallen back.
GOOD_BGR = np.array([80.0, 200.0, 60.0])
BAD_BGR = np.array([40.0, 40.0, 230.0])


@dataclass(frozen=True)
class APMap:
    """Per-AP figures of one stack.

    Attributes
    ----------
    centres : numpy.ndarray
        int ``(m, 2)`` AP centres ``(y, x)`` in the stack image's pixels.
    size : int
        AP box side, pixels.
    cell : int
        Side of the square drawn for each AP (the grid's spacing: the part of the stack
        nearest to the AP, so the squares do not overlap), pixels.
    frames : numpy.ndarray
        int ``(m,)`` frames stacked at each AP.
    fell_back : numpy.ndarray
        int ``(m,)`` of each AP's measured shifts, how many fell back.
    measured : numpy.ndarray
        int ``(m,)`` shifts measured at each AP.
    asked : int
        Frames per AP the stack was asked for.
    """

    centres: np.ndarray
    size: int
    cell: int
    frames: np.ndarray
    fell_back: np.ndarray
    measured: np.ndarray
    asked: int

    def __post_init__(self) -> None:
        m = len(self.centres)
        if self.centres.shape != (m, 2):
            raise ValueError(f"centres must be (m, 2), got {self.centres.shape}")
        for name in ("frames", "fell_back", "measured"):
            if np.shape(getattr(self, name)) != (m,):
                raise ValueError(f"{name} must hold one count per AP ({m}), got shape "
                                 f"{np.shape(getattr(self, name))}")
        if min(self.size, self.cell, self.asked) < 1:
            raise ValueError(f"size, cell and asked must be >= 1, got {self.size}, "
                             f"{self.cell}, {self.asked}")

    def as_dict(self) -> dict[str, Any]:
        """Plain values (for a summary or JSON); :meth:`from_dict` reads them back."""
        return {"centres": self.centres.tolist(), "size": int(self.size),
                "cell": int(self.cell), "frames": self.frames.tolist(),
                "fell_back": self.fell_back.tolist(), "measured": self.measured.tolist(),
                "asked": int(self.asked)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> APMap:
        """The map of :meth:`as_dict`'s values (ValueError if they do not fit)."""
        centres = np.asarray(values["centres"], dtype=np.intp).reshape(-1, 2)
        return cls(centres=centres, size=int(values["size"]), cell=int(values["cell"]),
                   frames=np.asarray(values["frames"], dtype=np.int64),
                   fell_back=np.asarray(values["fell_back"], dtype=np.int64),
                   measured=np.asarray(values["measured"], dtype=np.int64),
                   asked=int(values["asked"]))

    def share(self) -> np.ndarray:
        """Share of each AP's measured shifts that fell back (0 where none measured)."""
        measured = np.maximum(self.measured, 1)
        return np.where(self.measured > 0, self.fell_back / measured, 0.0)


def ap_map_records(ap_map: APMap) -> dict[str, object]:
    """The map as plain numbers (for JSON): one record per AP, and totals."""
    share = ap_map.share()
    records = [
        {"y": int(c[0]), "x": int(c[1]), "frames": int(f), "measured": int(m),
         "fell_back": int(b), "fell_back_share": round(float(s), 4)}
        for c, f, m, b, s in zip(ap_map.centres, ap_map.frames, ap_map.measured,
                                 ap_map.fell_back, share, strict=True)
    ]
    short = int((ap_map.frames < ap_map.asked).sum())
    return {
        "ap_size": int(ap_map.size),
        "frames_asked": int(ap_map.asked),
        "aps": len(records),
        "aps_short_of_frames": short,
        "measured": int(ap_map.measured.sum()),
        "fell_back": int(ap_map.fell_back.sum()),
        "records": records,
    }


def ap_map_image(image: np.ndarray, ap_map: APMap) -> np.ndarray:
    """The APs' boxes over the stack: uint8 BGR, at most :data:`MAP_SIDE` on a side.

    Parameters
    ----------
    image : numpy.ndarray
        The stack, float ``[0, 1]``, mono ``(H, W)`` or RGB ``(H, W, 3)``.
    ap_map : APMap
        Its APs' figures, in its pixels.

    Returns
    -------
    numpy.ndarray
    """
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got {image.shape}")
    h, w = image.shape[:2]
    scale = min(1.0, MAP_SIDE / max(h, w))
    base = np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 1.0)
    base = (base * 255.0 + 0.5).astype(np.uint8)
    base = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR) if base.ndim == 2 else \
        cv2.cvtColor(base, cv2.COLOR_RGB2BGR)
    if scale < 1.0:
        base = cv2.resize(base, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA)
    fill = base.copy()
    half = ap_map.cell / 2.0
    share = ap_map.share()
    boxes = []
    for (cy, cx), s in zip(ap_map.centres, share, strict=True):
        y0, x0 = round((cy - half) * scale), round((cx - half) * scale)
        y1, x1 = round((cy + half) * scale) - 1, round((cx + half) * scale) - 1
        colour = tuple(float(v) for v in (1.0 - s) * GOOD_BGR + s * BAD_BGR)
        cv2.rectangle(fill, (x0, y0), (x1, y1), colour, thickness=-1)
        boxes.append((x0, y0, x1, y1, colour))
    out = cv2.addWeighted(fill, FILL_ALPHA, base, 1.0 - FILL_ALPHA, 0.0)
    for (x0, y0, x1, y1, colour), frames in zip(boxes, ap_map.frames, strict=True):
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thickness=1)
        if frames < ap_map.asked:
            cv2.putText(out, str(int(frames)), (x0 + 2, y1 - 3), cv2.FONT_HERSHEY_SIMPLEX,
                        0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def ap_figures(result: PipelineResult, scale: float = 1.0) -> APMap:
    """The AP map of a pipeline result's first stack, in that stack's pixels.

    Parameters
    ----------
    result : PipelineResult
        From :func:`live_stack.pipeline.run`.
    scale : float
        The output's scale over the sensor's pixels (``drizzle.scale``).
    """
    stack = result.stacks[0]
    origin = np.array(stack.box[:2])
    centres = np.rint((result.grid.centres - origin) * scale).astype(np.intp)
    return APMap(centres=centres.reshape(-1, 2), size=max(1, round(result.grid.size * scale)),
                 cell=max(1, round(result.grid.step * scale)),
                 frames=np.asarray(result.ap_frames[0], dtype=np.int64),
                 fell_back=np.asarray(result.ap_fell_back, dtype=np.int64),
                 measured=np.asarray(result.ap_measured, dtype=np.int64),
                 asked=int(stack.frames_per_ap))


def write_ap_map(path: str | os.PathLike[str], image: np.ndarray, ap_map: APMap) -> None:
    """Write the map over ``image`` as ``path`` (PNG) and its numbers beside it (``path``
    with the suffix ``.json``), each under a temporary name and renamed.

    Raises
    ------
    OSError
        If a file cannot be written.
    """
    from live_stack.frames import to_float32

    out = Path(path)
    picture = ap_map_image(to_float32(image), ap_map)
    ok, png = cv2.imencode(".png", picture)
    if not ok:
        raise OSError(f"{out}: the map could not be encoded as PNG")
    for target, data in ((out, png.tobytes()),
                         (out.with_suffix(".json"),
                          (json.dumps(ap_map_records(ap_map), indent=1) + "\n").encode())):
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
