"""How a stack holds up towards its edges: figures in bands by distance from the edge.

Scores that leave out a border (``score()``'s 16 pixels) cannot see a stack whose outer
pixels are the blurrier reference. This script cuts each image into bands by distance
from its edge and prints, per band, the PSNR against a truth (simulated captures) or,
without one, the gradient energy (real captures; higher is sharper, noise raises it
too)::

    python3 benchmarks/edge_bands.py NAME=IMAGE [NAME=IMAGE ...] [--truth TRUTH.tif]
        [--band 4] [--bands 12] [--inner 48]

With ``--truth`` every image is registered on it by translation and the truth moved onto
the image as ``score()`` does (:func:`live_stack.simulate.score.truth_on`), and the
distance is counted from the truth's edge (the scene's), so that images cropped
differently are compared on the same pixels of the scene; without it, from each image's
own edge. The last column is the figure inside ``--inner`` pixels of the edge.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
from _common import named_luminances, print_header

from live_stack.frames import luminance, to_float32
from live_stack.io.images import read_image
from live_stack.simulate.score import register, truth_on


def gradient_map(image: np.ndarray) -> np.ndarray:
    """Squared gradient per pixel of the luminance (Sobel, scaled to pixel units)."""
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    return gx * gx + gy * gy


def distance_to_edge(shape: tuple[int, int], origin: tuple[float, float],
                     frame: tuple[int, int]) -> np.ndarray:
    """int ``shape``: each pixel's distance (whole pixels) from the edge of a ``frame``
    whose pixel ``(0, 0)`` sits at ``-origin`` in this image's coordinates."""
    ys = np.arange(shape[0])[:, None] + origin[0]
    xs = np.arange(shape[1])[None, :] + origin[1]
    d = np.minimum(np.minimum(ys, frame[0] - 1 - ys), np.minimum(xs, frame[1] - 1 - xs))
    return np.floor(d).astype(np.int64)


def psnr_map(image: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared error against the truth moved onto ``image`` as ``score()`` moves it, and
    the distance of each pixel from the truth's edge; NaN where the truth does not cover
    the image."""
    err = (image - truth_on(image, truth)) ** 2
    return err, distance_to_edge(image.shape, register(image, truth), truth.shape)


def band_means(values: np.ndarray, dist: np.ndarray, band: int, bands: int,
               inner: int) -> list[float]:
    """Mean of ``values`` (NaN left out) in each band ``[k * band, (k + 1) * band)`` of
    distance, then beyond ``inner``."""
    out = []
    masks = [(dist >= k * band) & (dist < (k + 1) * band) for k in range(bands)]
    masks.append(dist >= inner)
    for m in masks:
        v = values[m & np.isfinite(values)]
        out.append(float(v.mean()) if v.size else math.nan)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", metavar="NAME=IMAGE")
    p.add_argument("--truth", type=Path, help="the scene's truth: PSNR per band (else "
                   "gradient energy)")
    p.add_argument("--band", type=int, default=4, help="band width, pixels (4)")
    p.add_argument("--bands", type=int, default=12, help="number of bands (12)")
    p.add_argument("--inner", type=int, default=48,
                   help="the last column: everything this far from the edge or further (48)")
    args = p.parse_args()
    if args.band < 1 or args.bands < 1 or args.inner < 0:
        p.error("--band and --bands must be >= 1, --inner >= 0")
    named = named_luminances(p, args.images)
    truth = luminance(to_float32(read_image(args.truth)[0])) if args.truth else None
    print_header("stack figures by distance from the edge")
    kind = "PSNR dB against the truth" if truth is not None else "gradient energy x 1e-5"
    edges = [f"{k * args.band}-{(k + 1) * args.band}" for k in range(args.bands)]
    print(f"\n{kind}, by distance from the "
          f"{'scene' if truth is not None else 'image'}'s edge (pixels):\n")
    print("| image | " + " | ".join(edges) + f" | >= {args.inner} |")
    print("|---|" + "---:|" * (args.bands + 1))
    for name, image in named:
        if truth is not None:
            err, dist = psnr_map(image, truth)
            means = band_means(err, dist, args.band, args.bands, args.inner)
            cells = [f"{10 * math.log10(1 / m):.2f}" if m and m == m else "-" for m in means]
        else:
            dist = distance_to_edge(image.shape, (0.0, 0.0), image.shape)
            means = band_means(gradient_map(image), dist, args.band, args.bands, args.inner)
            cells = [f"{m * 1e5:.2f}" if m == m else "-" for m in means]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
