"""``live-stack reprocess``: stack saved captures (SER, AVI/MP4/MOV, image folders).

Every parameter of every phase is an option named ``--PHASE-FIELD`` (and a key
``PHASE_FIELD`` in a ``--config`` TOML file); ``live-stack reprocess --help`` lists them
with their defaults.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from live_stack import __version__
from live_stack.align import AlignParams
from live_stack.apgrid import APParams
from live_stack.calibrate import CalibParams, Calibration, calibrate_source, load_calibration
from live_stack.colour import ColourParams, debayer_source
from live_stack.dispersion import RGBAlignParams
from live_stack.drizzle import DrizzleParams
from live_stack.local import LocalParams, parse_stack_size
from live_stack.normalize import NormalizeParams
from live_stack.options import add_options, as_dict, build, known_keys, load_config
from live_stack.pipeline import PHASES, PipelineParams, PipelineResult, run
from live_stack.quality import QualityParams
from live_stack.reference import ReferenceParams
from live_stack.sharpen import SharpenParams
from live_stack.stack import BlendParams

#: prefix -> parameter dataclass, in pipeline order.
SPECS: dict[str, type] = {
    "quality": QualityParams,
    "align": AlignParams,
    "reference": ReferenceParams,
    "ap": APParams,
    "local": LocalParams,
    "blend": BlendParams,
    "drizzle": DrizzleParams,
    "rgbalign": RGBAlignParams,
    "normalize": NormalizeParams,
    "sharpen": SharpenParams,
}
#: prefix -> parameter dataclass of what is done to each source's frames before the
#: pipeline (calibration, then debayering).
SOURCE_SPECS: dict[str, type] = {
    "calib": CalibParams,
    "colour": ColourParams,
}
OUTPUT_SUFFIXES = (".tif", ".tiff", ".png", ".fits", ".fit", ".fts")
PROG = "live-stack reprocess"


def parser() -> argparse.ArgumentParser:
    """The argument parser (also documents every option)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Stack saved captures with multi-point lucky imaging. INPUT is a SER or "
                    "video file, a folder of images, or a glob; several may be given.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="captures to stack")
    p.add_argument("-o", "--output", metavar="PATH",
                   help="output file (.tif, .png or .fits) or existing folder; default: "
                        "beside the input, named INPUT_lsSIZE.tif")
    p.add_argument("--stack", nargs="+", metavar="SIZE", default=None,
                   help="frames stacked per AP: a count (200) or a share (10%%); several "
                        "sizes give one image each (default: 10%%)")
    p.add_argument("--mode", choices=("auto", "surface", "planet"), default=None,
                   help="global alignment mode (same as --align-mode; default: auto)")
    p.add_argument("--config", metavar="FILE.toml", help="parameters from a TOML file")
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: 2)")
    p.add_argument("--format", choices=("tif", "png", "fits"), default=None,
                   help="output format when -o is not a file name (default: tif)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--dark", metavar="FILE", default=None,
                   help="master dark subtracted from every frame (same as --calib-dark)")
    p.add_argument("--flat", metavar="FILE", default=None,
                   help="master flat divided out of every frame (same as --calib-flat)")
    p.add_argument("--rgb-align", action="store_true", default=None,
                   help="remove the red/blue offsets of atmospheric dispersion "
                        "(same as --rgbalign-enabled)")
    for prefix, cls in {**SOURCE_SPECS, **SPECS}.items():
        add_options(p, cls, prefix)
    return p


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """Parsed options, with the short aliases (--mode, --dark, ...) under their full names."""
    given = vars(args).copy()
    aliases = {"mode": "align_mode", "dark": "calib_dark", "flat": "calib_flat",
               "rgb_align": "rgbalign_enabled"}
    for alias, name in aliases.items():
        if getattr(args, alias, None) is not None:
            given[name] = getattr(args, alias)
    return given


def source_params_from(args: argparse.Namespace) -> tuple[CalibParams, ColourParams]:
    """The calibration and colour parameters from parsed arguments and the config file."""
    known = known_keys(SPECS) | known_keys(SOURCE_SPECS) | {"stack", "threads"}
    config = load_config(args.config, known=known) if args.config else {}
    given = _given(args)
    return (build(CalibParams, "calib", given, config),
            build(ColourParams, "colour", given, config))


def params_from(args: argparse.Namespace) -> PipelineParams:
    """Build the pipeline parameters from parsed arguments and the config file."""
    known = known_keys(SPECS) | known_keys(SOURCE_SPECS) | {"stack", "threads"}
    config = load_config(args.config, known=known) if args.config else {}
    given = _given(args)
    phases = {prefix: build(cls, prefix, given, config) for prefix, cls in SPECS.items()}
    sizes = args.stack if args.stack is not None else config.get("stack", ["10%"])
    if isinstance(sizes, str):
        sizes = [sizes]
    sizes = tuple(str(s) for s in sizes)
    threads = args.threads if args.threads is not None else int(config.get("threads", 2))
    return PipelineParams(**phases, stack_sizes=sizes, threads=threads)


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Expand globs; keep plain names as they are (a missing one fails when opened)."""
    out: list[str] = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else []
        if glob.has_magic(item) and not matches:
            raise ValueError(f"{item}: no file matches this pattern")
        out.extend(matches or [item])
    return out


def size_label(size: str) -> str:
    """File-name label of a stack size: ``10%`` -> ``10pct``, ``200`` -> ``200``."""
    value, pct = parse_stack_size(size)
    num = f"{value:g}"
    return f"{num}pct" if pct else num


def output_paths(src: str, output: str | None, sizes: Sequence[str], fmt: str | None,
                 many_inputs: bool) -> list[Path]:
    """Where each stack size of one input is written.

    ``-o FILE`` with one input and one size writes exactly ``FILE``; with several sizes
    the size is put before the extension. ``-o FOLDER`` (or several inputs) writes
    ``STEM_lsSIZE.EXT`` into the folder; no ``-o`` writes beside the input.
    """
    stem = Path(src.rstrip("/\\")).stem if Path(src).is_file() else Path(src.rstrip("/\\")).name
    ext = "." + (fmt or "tif")
    if output and not Path(output).is_dir() and not many_inputs:
        out = Path(output)
        if out.suffix.lower() not in OUTPUT_SUFFIXES:
            raise ValueError(f"-o {output}: unknown image format {out.suffix!r}; use one of "
                             f"{', '.join(OUTPUT_SUFFIXES)}")
        if len(sizes) == 1:
            return [out]
        return [out.with_name(f"{out.stem}_{size_label(s)}{out.suffix}") for s in sizes]
    folder = Path(output) if output else Path(src).resolve().parent
    if output and not folder.is_dir():
        raise ValueError(f"-o {output}: with several inputs, -o must be an existing folder")
    return [folder / f"{stem}_ls{size_label(s)}{ext}" for s in sizes]


class _Bars:
    """One tqdm progress bar per phase, on stderr."""

    def __init__(self, enabled: bool, name: str) -> None:
        self.enabled = enabled
        self.name = name
        self.bar: Any = None
        self.phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = tqdm(total=total, desc=f"{self.name}: {phase:<9}", unit="fr",
                            leave=False, file=sys.stderr, dynamic_ncols=True)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def depth_gain(dtype: np.dtype, bit_depth: int) -> float:
    """Gain that brings a ``bit_depth``-bit capture stored in uint16 to the full range.

    A 12-bit camera's values run 0..4095 in its 16-bit frames; the pipeline keeps that
    scale (0..0.0625), and the output is scaled so that 4095 becomes 65535, as
    capture-side users expect.
    """
    if np.dtype(dtype) == np.uint16 and 8 < bit_depth < 16:
        return 65535.0 / (2**bit_depth - 1)
    return 1.0


def process(path: str, params: PipelineParams, outputs: list[Path], *, quiet: bool,
            calibration: Calibration | None = None, colour: ColourParams | None = None) -> dict:
    """Stack one input and write its images; return its summary.

    The frames are calibrated (``calibration``) and then debayered if the source is a
    raw Bayer capture (``colour``) before the pipeline sees them. A crash-cut SER file
    is stacked from its complete frames, with a warning on stderr saying how many frames
    its header claimed and how many were read.
    """
    from live_stack.io import open_source, salvage_warning
    from live_stack.io.images import write_image

    colour = colour or ColourParams()
    t0 = time.perf_counter()
    with open_source(path, salvage=True) as raw:
        salvaged = salvage_warning(raw)
        if salvaged is not None:
            print(f"{PROG}: warning: {salvaged}", file=sys.stderr)
        src = debayer_source(calibrate_source(raw, calibration), colour)
        info = src.info
        bars = _Bars(not quiet and sys.stderr.isatty(), Path(path).name)
        try:
            result: PipelineResult = run(src, params, progress=bars)
        finally:
            bars.close()
    summary = result.summary()
    meta_common = {
        "software": f"live-stack {__version__}",
        "input": os.path.basename(path),
        "input_frames": len(result.ranking.quality),
        "input_size": [info.width, info.height],
        "input_layout": raw.info.layout,
        "parameters": {prefix: as_dict(getattr(params, prefix)) for prefix in SPECS},
        "colour": dict(as_dict(colour), debayered=info.layout != raw.info.layout),
        "calibration": calibration.describe() if calibration is not None else {},
        "summary": summary,
    }
    if salvaged is not None:
        meta_common["input_salvaged"] = raw.info.metadata["salvaged"]
    # a normalised stack has its brightness set already
    gain = 1.0 if params.normalize.enabled else depth_gain(info.dtype, info.bit_depth)
    for stack, out in zip(result.stacks, outputs, strict=True):
        meta = dict(meta_common, stack_size=stack.size, frames_per_ap=stack.frames_per_ap,
                    crop_box=list(stack.box), output_gain=gain, finish=stack.notes)
        write_image(out, stack.image * np.float32(gain) if gain != 1.0 else stack.image,
                    metadata=meta)
    summary["outputs"] = [str(o) for o in outputs]
    summary["total_seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def print_summary(path: str, s: dict) -> None:
    """Human-readable summary of one input."""
    secs = s["seconds"]
    phase_times = "  ".join(f"{k} {secs[k]:.2f}s" for k in PHASES if k in secs)
    print(f"{path}: {s['frames']} frames ({s['aligned']} aligned, mode {s['mode']}), "
          f"{s['aps']} APs ({s['aps_dropped_dim']} dim and {s['aps_dropped_flat']} flat "
          f"dropped), local shifts {s['local_measured']} measured / {s['local_failed']} "
          f"rejected")
    print(f"  time: {phase_times}  total {s['total_seconds']:.2f}s")
    for size, out in zip(s["stacks"], s["outputs"], strict=True):
        print(f"  stack {size} ({s['stacks'][size]} frames per AP) -> {out}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``live-stack reprocess``; returns the exit code."""
    args = parser().parse_args(argv)
    try:
        params = params_from(args)
        calib, colour = source_params_from(args)
        calibration = load_calibration(calib)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    inputs: list[str] = []
    failures = 0
    for item in args.inputs:  # a pattern that matches nothing fails alone, as a missing file
        try:
            inputs.extend(expand_inputs([item]))
        except ValueError as exc:
            failures += 1
            print(f"{PROG}: error: {exc}", file=sys.stderr)
    total = len(inputs) + failures
    many = total > 1
    results = {}
    for path in inputs:
        try:
            outputs = output_paths(path, args.output, params.stack_sizes, args.format, many)
            summary = process(path, params, outputs, quiet=args.quiet,
                              calibration=calibration, colour=colour)
        except (ValueError, OSError) as exc:
            failures += 1
            print(f"{PROG}: error: {path}: {exc}" if path not in str(exc) else
                  f"{PROG}: error: {exc}", file=sys.stderr)
            continue
        results[path] = summary
        print_summary(path, summary)
    if many:
        print(f"{len(results)} of {total} inputs stacked"
              + (f", {failures} failed" if failures else ""))
    return 1 if failures else 0
