"""The regime matrix: stack quality in good and poor light, against PSS and the best frames.

Issue 13 asks every quality change to be run against a matrix of simulated captures from
the physical seeing model (:mod:`live_stack.simulate.turbulence`): scenes (a low-contrast
mare, a cratered terminator, a banded planet, solar granulation) x signal (electrons at
full brightness) x seeing (D/r0), 300 frames each, plus one 2000-frame planet. For each
cell it reports, on the area every output covers (less ``--border`` pixels on each side:
16 by default, as :func:`live_stack.simulate.score.score`; 0 scores the stacks' edges
too, where a stack that leaves its rim to the blurrier reference falls behind):

* PSNR and SSIM against the truth (:func:`live_stack.simulate.score.score`);
* noise evenness (:func:`live_stack.simulate.score.noise_evenness`: the coefficient of
  variation over 32-pixel tiles of the residual's high-pass standard deviation, divided
  by the photon-noise level; 0 is perfectly even, lower is better);
* live-stack's share of local shifts that fell back (or, for code that drops them, were
  left out), from the summary in its output's metadata;

for live-stack (``reprocess``, a whole process, with the interpreter of each ``--tool``,
e.g. today's main in a worktree with its own ``scripts/setup.sh`` environment), for PSS (run as
``pss_compare.py`` runs it: ``--stack_number`` 10 %, ``-a`` ``--pss-box``, drizzle off)
and for the mean of the globally aligned best 10 % of the frames (ranked and aligned by
live-stack's own phases).

The captures are rendered once into ``--cache`` (default ``/work/cache/regime``): per
scene and D/r0 the noise-free frames are rendered once and exposed at each signal (8-bit
frames, 16-bit at 20000 electrons and above). The 300-frame cells at 256x256 pixels
render in about 20 s per scene and D/r0 on one core.

Usage::

    python3 benchmarks/regime_matrix.py [--cache DIR] [--size 256] [--frames 300]
        [--scenes mare terminator planet sun] [--signals 500 2000 20000] [--d-r0 3 5 7]
        [--long 2000] [--tool NAME=PYTHON ...] [--pss-python /work/pss-venv/bin/python]
        [--no-pss] [--json FILE] [--keep DIR] [--reuse NAME ...]
        [--crops DIR] [--crop-cells CELL ...]

``--crops DIR`` writes, for each of ``--crop-cells`` (default the low-signal mare and
planet in the worst seeing), a PNG of every output's central part side by side at 2x
(nearest-neighbour, the truth's 1-99 % range stretched to black-white, registered on
the truth), to look at the noise box by box.

``--reuse NAME ...`` takes the outputs an earlier run left in ``--keep`` for those tools
(``PSS`` included) instead of running them again: every quality figure is deterministic
(only the times are not, and they are not reported for a reused output), so today's main
and PSS need to run once, and each change after that only itself.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _common import DONE_NAME, SEED, print_header
from pss_compare import check_pss, common_crops, pss_env, run_measured

#: Scenes of the matrix and the global alignment mode every tool is given.
SCENES = {"mare": "surface", "terminator": "surface", "planet": "planet", "sun": "surface"}
#: Default signals (electrons at full brightness) and seeing strengths (D/r0).
SIGNALS = (500, 2000, 20000)
D_R0 = (3, 5, 7)
#: Signals from which on the frames are 16-bit (a 12-bit ADC), electrons.
SIXTEEN_BIT_FROM = 10000
#: Share of the frames stacked at each AP and in the best-frames mean.
STACK_SHARE = 0.10
#: The long capture: scene, signal and D/r0.
LONG_CELL = ("planet", 2000, 5)
#: Version of the captures: a cached capture of another version (or of none, written
#: before the physical model's image motion became a smooth field) is rendered again.
CAPTURE_VERSION = 2
#: Default cache folder and PSS interpreter.
DEFAULT_CACHE = "/work/cache/regime"
DEFAULT_PSS = "/work/pss-venv/bin/python"
#: Cells whose outputs ``--crops`` shows, and the crop's side (px, before the 2x zoom).
CROP_CELLS = ("mare-e500-d7-n300", "planet-e500-d7-n300")
CROP_SIDE = 160
#: Issue 13's targets: PSNR over the best-10 % mean, and over PSS, dB.
TARGET_OVER_MEAN_DB = 0.5
TARGET_OVER_PSS_DB = 0.3


@dataclass(frozen=True)
class Cell:
    scene: str
    signal: int
    d_r0: float
    frames: int

    @property
    def name(self) -> str:
        return f"{self.scene}-e{self.signal}-d{self.d_r0:g}-n{self.frames}"


def cached(folder: Path) -> bool:
    """Whether ``folder`` holds a whole capture of this :data:`CAPTURE_VERSION`."""
    try:
        done = json.loads((folder / DONE_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(done, dict) and done.get("version") == CAPTURE_VERSION


def cell_scene(scene: str, d_r0: float, frames: int, size: int) -> tuple:
    """The noise-free turbulence of a scene and seeing and the canvas its frames look at:
    ``(TurbulenceParams, canvas)`` (:func:`render_physical` of both gives the frames)."""
    from live_stack.simulate.scenes import render_scene
    from live_stack.simulate.turbulence import TurbulenceParams, physical_margin

    base = TurbulenceParams(d_over_r0=float(d_r0), drift_px=8.0)
    margin = physical_margin(base, frames)
    canvas = render_scene(scene, width=size + 2 * margin, height=size + 2 * margin,
                          seed=SEED, scale=float(size))
    return base, canvas


def captures(cache: Path, scene: str, d_r0: float, signals: list[int], frames: int,
             size: int) -> dict[int, Path]:
    """The capture folders of one scene and seeing, rendered once (cached)."""
    from live_stack.io.images import write_image
    from live_stack.io.ser import SerWriter
    from live_stack.simulate.seeing import truth_view
    from live_stack.simulate.turbulence import TurbulenceParams, expose, render_physical

    folders = {s: cache / Cell(scene, s, d_r0, frames).name for s in signals}
    todo = [s for s, f in folders.items() if not cached(f)]
    if not todo:
        return folders
    print(f"(rendering {frames} {size}x{size} {scene} frames at D/r0 {d_r0:g} for "
          f"{todo} electrons ...)", flush=True)
    t0 = time.perf_counter()
    base, canvas = cell_scene(scene, d_r0, frames, size)
    truth = truth_view(canvas, (size, size))
    writers, rngs, params = {}, {}, {}
    for s in todo:
        folders[s].mkdir(parents=True, exist_ok=True)
        bits = 16 if s >= SIXTEEN_BIT_FROM else 8
        writers[s] = SerWriter(folders[s] / "video.ser", width=size, height=size,
                               bit_depth=bits, observer="live-stack regime matrix")
        rngs[s] = np.random.default_rng([SEED, s])
        params[s] = (TurbulenceParams(d_over_r0=float(d_r0), drift_px=8.0,
                                      electrons=float(s)), bits)
    try:
        for f in render_physical(canvas, frames=frames, params=base, seed=SEED,
                                 frame_shape=(size, size)):
            for s in todo:
                p, bits = params[s]
                writers[s].write(expose(f.image, params=p, rng=rngs[s], bits=bits),
                                 1704067200.0 + f.index * p.frame_interval_s)
    finally:
        for w in writers.values():
            w.close()
    for s in todo:
        write_image(folders[s] / "truth.tif", truth)
        (folders[s] / DONE_NAME).write_text(json.dumps({"version": CAPTURE_VERSION,
                                                        "scene": scene, "signal": s,
                                                        "d_r0": d_r0, "frames": frames}))
    print(f"(rendered in {time.perf_counter() - t0:.0f} s)", flush=True)
    return folders


def best_mean(video: Path, share: float) -> np.ndarray:
    """The mean of the globally aligned best ``share`` of the frames (live-stack's own
    ranking and alignment)."""
    from live_stack.align import AlignParams, align
    from live_stack.io import open_source
    from live_stack.quality import QualityParams, rank
    from live_stack.reference import mean_aligned

    with open_source(video) as src:
        ranking = rank(src, QualityParams())
        alignment = align(src, ranking, AlignParams())
        usable = [int(i) for i in ranking.order if alignment.ok[i]]
        best = usable[: max(1, round(share * len(usable)))]
        return mean_aligned((src[i] for i in best), alignment.shifts[best])


def run_tool(python: str, video: Path, out: Path, stack: int, mode: str) -> dict:
    """``live-stack reprocess`` of one tool in its own process: its figures."""
    if out.exists():  # an earlier run's (reprocess does not replace a file silently)
        out.unlink()
    cmd = [python, "-m", "live_stack.cli", "reprocess", str(video), "-o", str(out),
           "-q", "--stack", str(stack), "--mode", mode]
    wall, cpu, rss, _ = run_measured(cmd, cwd=out.parent)
    return {**reused(out), "wall": wall, "cpu": cpu, "rss": rss, "cmd": shlex.join(cmd)}


def reused(out: Path) -> dict:
    """A kept live-stack output's image and fall-back share (no times)."""
    from live_stack.io.images import read_image

    image, meta = read_image(out)
    summary = meta.get("summary", {})
    measured = int(summary.get("local_measured", 0))
    fell = int(summary.get("local_failed", 0))
    return {"image": image, "fallback": fell / measured if measured else math.nan}


def run_pss(pss_python: str, video: Path, work: Path, stem: str, stack: int, mode: str,
            box: int) -> dict:
    from live_stack.io.images import read_image

    link = work / f"{stem}_pss{video.suffix}"
    if not link.exists():
        link.symlink_to(video.resolve())
    out = work / f"{stem}_pss_pss.png"
    if out.exists():
        out.unlink()
    cmd = [pss_python, "-c", ("import sys; from planetary_system_stacker."
                              "planetary_system_stacker import main; sys.exit(main())"),
           str(link), "--stack_number", str(stack), "-a", str(box), "-m", mode.capitalize(),
           "--drizzle", "Off"]
    wall, cpu, rss, _ = run_measured(cmd, cwd=work, env=pss_env())
    image, _ = read_image(out)
    return {"image": image, "wall": wall, "cpu": cpu, "rss": rss, "fallback": math.nan,
            "cmd": shlex.join(cmd)}


def measure(images: dict[str, np.ndarray], truth: np.ndarray, *,
            border: int = 16) -> dict[str, dict[str, float]]:
    """PSNR, SSIM and evenness of each image on the area all of them cover, less
    ``border`` pixels on each side."""
    from live_stack.frames import luminance, to_float32
    from live_stack.simulate.score import noise_evenness, score

    names = list(images)
    mono = [luminance(to_float32(images[n])) for n in names]
    crops = common_crops(mono, truth)
    out = {}
    for n, crop in zip(names, crops, strict=True):
        s = score(crop, truth, border=border)
        out[n] = {"psnr": s.psnr, "ssim": s.ssim,
                  "even": noise_evenness(crop, truth, border=border)}
    return out


def write_crops(path: Path, images: dict[str, np.ndarray], truth: np.ndarray) -> None:
    """The central CROP_SIDE square of each image (registered on the truth) at 2x, side
    by side with its name above, and the truth's at the right."""
    import cv2

    from live_stack.frames import luminance, to_float32
    from live_stack.simulate.score import register

    lo, hi = np.percentile(truth, (1, 99))
    y0 = (truth.shape[0] - CROP_SIDE) // 2
    x0 = (truth.shape[1] - CROP_SIDE) // 2
    tiles = []
    for name, image in [*images.items(), ("truth", truth)]:
        mono = luminance(to_float32(image))
        sy, sx = register(mono, truth) if name != "truth" else (0.0, 0.0)
        ty, tx = int(round(y0 - sy)), int(round(x0 - sx))
        crop = mono[max(ty, 0) : ty + CROP_SIDE, max(tx, 0) : tx + CROP_SIDE]
        crop = np.clip((crop - lo) / (hi - lo), 0.0, 1.0)
        big = cv2.resize((crop * 255).astype(np.uint8), None, fx=2, fy=2,
                         interpolation=cv2.INTER_NEAREST)
        tile = np.zeros((big.shape[0] + 24, 2 * CROP_SIDE), np.uint8)
        tile[24:, : big.shape[1]] = big
        cv2.putText(tile, name, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, 255, 1, cv2.LINE_AA)
        tiles.append(tile)
    height = max(t.shape[0] for t in tiles)
    row = np.hstack([np.pad(t, ((0, height - t.shape[0]), (0, 4))) for t in tiles])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), row)


def main() -> int:
    from live_stack.io.images import read_image

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default=DEFAULT_CACHE, help=f"capture cache ({DEFAULT_CACHE})")
    p.add_argument("--size", type=int, default=256, help="frame side, pixels (256)")
    p.add_argument("--frames", type=int, default=300, help="frames per cell (300)")
    p.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    p.add_argument("--signals", nargs="+", type=int, default=list(SIGNALS))
    p.add_argument("--d-r0", nargs="+", type=float, default=list(D_R0))
    p.add_argument("--long", type=int, default=2000,
                   help="frames of the long planet cell (0: leave it out)")
    p.add_argument("--tool", action="append", default=None, metavar="NAME=PYTHON",
                   help="a live-stack to run, by the interpreter of its environment "
                        "(repeatable; default: 'live-stack' with this interpreter)")
    p.add_argument("--pss-python", default=DEFAULT_PSS)
    p.add_argument("--pss-box", type=int, default=64, help="PSS's -a (64)")
    p.add_argument("--no-pss", action="store_true", help="leave PSS out")
    p.add_argument("--border", type=int, default=16,
                   help="pixels left out of the scores on each side of the area every "
                        "output covers (16, score()'s default; 0: the whole area, the "
                        "stacks' edges too)")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    p.add_argument("--keep", metavar="DIR", default="/work/cache/regime-out",
                   help="folder of the outputs (kept; default /work/cache/regime-out)")
    p.add_argument("--crops", metavar="DIR", help="write side-by-side crops of some cells")
    p.add_argument("--crop-cells", nargs="+", default=list(CROP_CELLS), metavar="CELL")
    p.add_argument("--reuse", nargs="+", default=[], metavar="NAME",
                   help="tools (or PSS) whose outputs already in --keep are reused")
    args = p.parse_args()
    tools = [("live-stack", sys.executable)]
    for t in args.tool or []:
        if "=" not in t:
            p.error(f"--tool must be NAME=PYTHON, got {t!r}")
    if args.tool:
        tools = [tuple(t.split("=", 1)) for t in args.tool]
    if not args.no_pss:
        version = check_pss(args.pss_python)
    print_header("regime matrix: stack quality by scene, signal and seeing")
    if not args.no_pss:
        print(f"PSS: planetary-system-stacker {version}, -a {args.pss_box}")
    for name, path in tools:
        print(f"tool {name}: {path} -m live_stack.cli reprocess")
    print(flush=True)
    cache, work = Path(args.cache), Path(args.keep)
    work.mkdir(parents=True, exist_ok=True)
    cells = [Cell(s, e, d, args.frames) for s in args.scenes for d in args.d_r0
             for e in args.signals]
    if args.long:
        scene, signal, d_r0 = LONG_CELL
        cells.append(Cell(scene, signal, d_r0, args.long))
    rows = []
    for cell in cells:
        signals = args.signals if cell.frames == args.frames else [cell.signal]
        folder = captures(cache, cell.scene, cell.d_r0, signals, cell.frames,
                          args.size)[cell.signal]
        video = folder / "video.ser"
        truth, _ = read_image(folder / "truth.tif")
        stack = max(1, round(STACK_SHARE * cell.frames))
        mode = SCENES[cell.scene]
        results = {"best 10% mean": {"image": best_mean(video, STACK_SHARE),
                                     "fallback": math.nan}}
        for name, path in tools:
            out = work / f"{cell.name}_{name}.tif"
            if name in args.reuse and out.is_file():
                results[name] = reused(out)
            else:
                results[name] = run_tool(path, video, out, stack, mode)
        if not args.no_pss:
            out = work / f"{cell.name}_pss_pss.png"
            if "PSS" in args.reuse and out.is_file():
                results["PSS"] = {"image": read_image(out)[0], "fallback": math.nan}
            else:
                results["PSS"] = run_pss(args.pss_python, video, work, cell.name, stack,
                                         mode, args.pss_box)
        figures = measure({k: v["image"] for k, v in results.items()}, truth,
                          border=args.border)
        if args.crops and cell.name in args.crop_cells:
            write_crops(Path(args.crops) / f"{cell.name}.png",
                        {k: v["image"] for k, v in results.items()}, truth)
        row = {"cell": cell.name, "scene": cell.scene, "signal": cell.signal,
               "d_r0": cell.d_r0, "frames": cell.frames, "stack": stack, "tools": {}}
        line = [f"{cell.name}:"]
        for k, v in results.items():
            f = figures[k]
            row["tools"][k] = {**f, "fallback": v["fallback"],
                               **{m: v[m] for m in ("wall", "cpu", "rss", "cmd") if m in v}}
            line.append(f"{k} {f['psnr']:.2f}/{f['ssim']:.3f}/{f['even']:.3f}"
                        + ("" if math.isnan(v["fallback"]) else f"/fb {v['fallback']:.0%}"))
        print("  ".join(line), flush=True)
        rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print_table(rows, [n for n, _ in tools], pss=not args.no_pss)
    return 0


def print_table(rows: list[dict], tools: list[str], *, pss: bool) -> None:
    """The markdown table: per cell PSNR / SSIM / evenness of each output."""
    print()
    print("PSNR dB / SSIM / evenness (lower is more even) on the area every output covers "
          "(less --border pixels at each side); fb: share of local shifts that fell back "
          "(or were left out).")
    print()
    head = ["scene", "e-", "D/r0", "frames", "best 10% mean"]
    for t in tools:
        head += [t, f"{t} fb"]
    if pss:
        head.append("PSS")
    last = tools[-1]
    head += [f"{last} - mean dB"] + ([f"{last} - PSS dB"] if pss else [])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * 4 + "---:|" * (len(head) - 4))
    for r in rows:
        t = r["tools"]

        def fig(k: str, t: dict = t) -> str:
            return f"{t[k]['psnr']:.2f} / {t[k]['ssim']:.3f} / {t[k]['even']:.3f}"

        cells = [r["scene"], str(r["signal"]), f"{r['d_r0']:g}", str(r["frames"]),
                 fig("best 10% mean")]
        for k in tools:
            cells += [fig(k), f"{t[k]['fallback']:.0%}"]
        if pss:
            cells.append(fig("PSS"))
        gain = t[last]["psnr"] - t["best 10% mean"]["psnr"]
        gain = round(gain, 2)
        cells.append(f"{gain:+.2f}" + ("" if gain >= TARGET_OVER_MEAN_DB else " (not met)"))
        if pss:
            over = t[last]["psnr"] - t["PSS"]["psnr"]
            over = round(over, 2)
            cells.append(f"{over:+.2f}" + ("" if over >= TARGET_OVER_PSS_DB else " (not met)"))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
