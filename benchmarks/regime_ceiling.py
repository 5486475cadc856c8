"""How far shift-and-add can go on the regime matrix: a ceiling from the simulator's truth.

Issue 13 asks for a stack at least 0.5 dB above the mean of the globally aligned best
10 % of the frames on every cell of the regime matrix (:mod:`regime_matrix`). Whether
that is reachable depends on the seeing: where every frame is about as sharp as every
other and the image motion hardly differs across the field, no choice of frames and no
alignment can gain much. This script measures what an ideal shift-and-add stacker would
reach on each cell, knowing what no stacker knows:

* the exact image motion of every frame at every pixel (the physical model's motion
  field, :attr:`live_stack.simulate.turbulence.PhysicalFrame.motions`): each frame is
  dewarped with it (Lanczos), so nothing is left of the local tilts, not even inside an
  alignment box;
* the true sharpness of every frame in every part of the field: the same detail measure
  as live-stack's ranking (:func:`live_stack.quality.detail_response`), taken on the
  noise-free frame, summed with the field points' tent weights.

Two stacks of the noisy frames (as the tools saw them) follow, each of 10 % of the
frames, as the matrix stacks:

* ``dewarped best 10%``: the frames sharpest overall, dewarped: perfect alignment with a
  global choice of frames;
* ``ceiling``: at each of the model's field points the frames sharpest there, dewarped,
  the field points' stacks blended with the tents: perfect alignment and a perfect local
  choice of frames, the most a stacker of 10 % of the frames gets (it still averages
  whole frames' noise and their blur: no deconvolution, no weighting of frequencies).

They are scored as the matrix scores (:func:`regime_matrix.measure`, on the area every
output covers) beside the best-10 % mean and the outputs the matrix kept in ``--keep``
(``--tools``, and PSS's), so the figures of one cell are comparable with each other.

Usage::

    python3 benchmarks/regime_ceiling.py [--cache DIR] [--keep DIR] [--tools main ...]
        [--scenes ...] [--signals ...] [--d-r0 ...] [--json FILE]

The captures must be in ``--cache`` already (run :mod:`regime_matrix` first: it renders
them); the noise-free frames are rendered again here, with the same seed and parameters,
once per scene and seeing (about 10 s each at 256x256, 300 frames).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from _common import SEED, print_header
from regime_matrix import (
    D_R0,
    DEFAULT_CACHE,
    SCENES,
    SIGNALS,
    STACK_SHARE,
    TARGET_OVER_MEAN_DB,
    Cell,
    best_mean,
    cached,
    cell_scene,
    measure,
)


def truth_frames(scene: str, d_r0: float, frames: int, size: int) -> tuple[np.ndarray, ...]:
    """The noise-free frames of a cell's run, their field points' motions and the tents
    of the motion field: ``(images (n, H, W), motions (n, g, g, 2), tents (g, size))``."""
    from live_stack.simulate.turbulence import _tents, render_physical

    base, canvas = cell_scene(scene, d_r0, frames, size)
    images, motions = [], []
    for f in render_physical(canvas, frames=frames, params=base, seed=SEED,
                             frame_shape=(size, size)):
        images.append(f.image)
        motions.append(f.motions)
    g = base.field_points
    return np.asarray(images), np.asarray(motions), _tents(size, g)


def dewarp(frames: np.ndarray, motions: np.ndarray, tents: np.ndarray) -> np.ndarray:
    """Each frame with its image motion undone: pixel ``p`` takes the frame at ``p - m(p)``
    (the frame shows the scene at ``p + m(p)``; the field is smooth)."""
    import cv2

    from live_stack.simulate.turbulence import motion_field

    size = frames.shape[1]
    gy, gx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty(frames.shape, np.float32)
    for i, (frame, m) in enumerate(zip(frames, motions, strict=True)):
        my, mx = motion_field(m, tents, tents)
        out[i] = cv2.remap(frame.astype(np.float32), gx - mx, gy - my, cv2.INTER_LANCZOS4,
                           borderMode=cv2.BORDER_REFLECT101)
    return out


def sharpness(frames: np.ndarray, tents: np.ndarray) -> np.ndarray:
    """Detail energy of each (noise-free, dewarped) frame at each field point, ``(n, g, g)``:
    live-stack's quality measure, weighted with the field points' tents."""
    import cv2

    from live_stack.quality import QualityParams, detail_response

    params = QualityParams()
    size = frames.shape[1]
    out = np.empty((len(frames), len(tents), len(tents)))
    for i, frame in enumerate(frames):
        resp = cv2.resize(detail_response(frame, params), (size, size),
                          interpolation=cv2.INTER_LINEAR).astype(np.float64)
        out[i] = tents @ resp @ tents.T
    return out


def ceiling_stacks(noisy: np.ndarray, quality: np.ndarray, tents: np.ndarray,
                   count: int) -> dict[str, np.ndarray]:
    """The two ideal stacks of ``count`` dewarped ``noisy`` frames (module docstring)."""
    overall = np.argsort(-quality.sum(axis=(1, 2)), kind="stable")[:count]
    num = np.zeros(noisy.shape[1:])
    den = np.zeros(noisy.shape[1:])
    g = len(tents)
    for a in range(g):
        for b in range(g):
            best = np.argsort(-quality[:, a, b], kind="stable")[:count]
            w = tents[a][:, None] * tents[b][None, :]
            num += w * noisy[best].mean(axis=0)
            den += w
    return {"dewarped best 10%": noisy[overall].mean(axis=0), "ceiling": num / den}


def main() -> int:
    from live_stack.frames import to_float32
    from live_stack.io import open_source
    from live_stack.io.images import read_image

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default=DEFAULT_CACHE, help=f"capture cache ({DEFAULT_CACHE})")
    p.add_argument("--keep", default="/work/cache/regime-out",
                   help="the matrix's kept outputs (default /work/cache/regime-out)")
    p.add_argument("--tools", nargs="*", default=[], metavar="NAME",
                   help="kept outputs of these tools to score beside the ceiling")
    p.add_argument("--size", type=int, default=256, help="frame side, pixels (256)")
    p.add_argument("--frames", type=int, default=300, help="frames per cell (300)")
    p.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    p.add_argument("--signals", nargs="+", type=int, default=list(SIGNALS))
    p.add_argument("--d-r0", nargs="+", type=float, default=list(D_R0))
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    args = p.parse_args()
    print_header("regime ceiling: ideal shift-and-add on the regime matrix")
    cache, keep = Path(args.cache), Path(args.keep)
    count = max(1, round(STACK_SHARE * args.frames))
    rows = []
    for scene in args.scenes:
        for d_r0 in args.d_r0:
            cells = [Cell(scene, s, d_r0, args.frames) for s in args.signals]
            missing = [c.name for c in cells if not cached(cache / c.name)]
            if missing:
                sys.exit(f"not in {cache}, or of an older version: {', '.join(missing)} "
                         "(run regime_matrix.py first)")
            clean, motions, tents = truth_frames(scene, d_r0, args.frames, args.size)
            quality = sharpness(dewarp(clean, motions, tents), tents)
            del clean
            for cell in cells:
                folder = cache / cell.name
                truth, _ = read_image(folder / "truth.tif")
                with open_source(folder / "video.ser") as src:
                    noisy = np.stack([to_float32(src[i]) for i in range(len(src))])
                images = {"best 10% mean": best_mean(folder / "video.ser", STACK_SHARE),
                          **ceiling_stacks(dewarp(noisy, motions, tents), quality, tents,
                                           count)}
                for name in args.tools:
                    images[name] = read_image(keep / f"{cell.name}_{name}.tif")[0]
                pss = keep / f"{cell.name}_pss_pss.png"
                if pss.is_file():
                    images["PSS"] = read_image(pss)[0]
                figures = measure(images, truth)
                rows.append({"cell": cell.name, "scene": scene, "signal": cell.signal,
                             "d_r0": d_r0, "figures": figures})
                print(f"{cell.name}: " + "  ".join(
                    f"{k} {f['psnr']:.2f}/{f['ssim']:.3f}" for k, f in figures.items()),
                    flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print_table(rows, args.tools)
    return 0


def print_table(rows: list[dict], tools: list[str]) -> None:
    """Markdown: PSNR of each output, and the gains over the best-10 % mean."""
    print()
    print("PSNR dB (SSIM) on the area every output covers; gains over the best-10 % mean.")
    print()
    names = ["best 10% mean", "dewarped best 10%", "ceiling", *tools]
    pss = all("PSS" in r["figures"] for r in rows)
    if pss:
        names.append("PSS")
    head = ["scene", "e-", "D/r0", *names, "ceiling - mean",
            *[f"{t} - mean" for t in tools]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * 3 + "---:|" * (len(head) - 3))
    for r in rows:
        f = r["figures"]
        mean = f["best 10% mean"]["psnr"]
        cells = [r["scene"], str(r["signal"]), f"{r['d_r0']:g}"]
        cells += [f"{f[n]['psnr']:.2f} ({f[n]['ssim']:.3f})" for n in names]
        gain = f["ceiling"]["psnr"] - mean
        cells.append(f"{gain:+.2f}" + ("" if round(gain, 2) >= TARGET_OVER_MEAN_DB
                                       else " (under the target)"))
        cells += [f"{f[t]['psnr'] - mean:+.2f}" for t in tools]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
