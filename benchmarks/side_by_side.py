"""Crops of stacks of one real capture side by side, at 2x, for looking at by eye.

A real capture has no truth, so a stack is judged by looking: grain in some AP boxes and
not in others, seams, ringing. This script registers every image on the first one (by
translation, :func:`live_stack.simulate.score.register`), cuts the same squares from each
and writes them side by side, 2x nearest-neighbour, one row per square, each named above,
all on one grey scale (the first image's 1st..99th percentile)::

    python3 benchmarks/side_by_side.py OUT.png NAME=IMAGE [NAME=IMAGE ...] \
        [--at Y,X ...] [--side 160]

For example, today's stack, the previous commit's and PlanetarySystemStacker's of the
same frames (``benchmarks/pss_compare.py`` says how to run PSS)::

    python3 benchmarks/side_by_side.py docs/quality/moon_pss_short_vs_pss.png \
        new=new.tif old=old.tif PSS=moon_pss.png --at 330,600 --at 700,250

Also prints the gradient energy of each crop (higher is sharper, but noise raises it too).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from _common import named_luminances

from live_stack.simulate.score import gradient_energy, register

#: Height of the label band above each crop, pixels.
LABEL = 24


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the PNG to write")
    p.add_argument("images", nargs="+", metavar="NAME=IMAGE",
                   help="images to compare; the first is the one the others are registered on")
    p.add_argument("--at", action="append", default=None, metavar="Y,X",
                   help="top-left corner of a square in the first image (default: its centre)")
    p.add_argument("--side", type=int, default=160, help="side of each square, pixels (160)")
    args = p.parse_args()
    named = named_luminances(p, args.images)
    base = named[0][1]
    corners = [tuple(int(v) for v in a.split(",")) for a in args.at] if args.at else \
        [((base.shape[0] - args.side) // 2, (base.shape[1] - args.side) // 2)]
    lo, hi = np.percentile(base, (1, 99))
    shifts = [(0.0, 0.0)] + [register(img, base) for _, img in named[1:]]
    rows = []
    for y0, x0 in corners:
        tiles = []
        for (name, img), (sy, sx) in zip(named, shifts, strict=True):
            ty, tx = int(round(y0 - sy)), int(round(x0 - sx))
            crop = img[max(ty, 0): ty + args.side, max(tx, 0): tx + args.side]
            print(f"({y0},{x0}) {name}: gradient energy {gradient_energy(crop):.4g}")
            shown = np.clip((crop - lo) / (hi - lo), 0.0, 1.0)
            big = cv2.resize((shown * 255).astype(np.uint8), None, fx=2, fy=2,
                             interpolation=cv2.INTER_NEAREST)
            tile = np.zeros((2 * args.side + LABEL, 2 * args.side), np.uint8)
            tile[LABEL: LABEL + big.shape[0], : big.shape[1]] = big
            cv2.putText(tile, name, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, 255, 1,
                        cv2.LINE_AA)
            tiles.append(np.pad(tile, ((0, 4), (0, 4))))
        rows.append(np.hstack(tiles))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(args.out, np.vstack(rows)):
        raise SystemExit(f"side_by_side: cannot write {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
