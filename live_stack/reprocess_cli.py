"""``live-stack reprocess``: stack saved captures (SER, AVI/MP4/MOV, image folders).

Every parameter of every phase is an option named ``--PHASE-FIELD`` (and a key
``PHASE_FIELD`` in a ``--config`` TOML file); ``live-stack reprocess --help`` lists them
with their defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import glob
import hashlib
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from live_stack import __version__
from live_stack.align import AlignParams
from live_stack.apgrid import APParams
from live_stack.apmap import APMap, ap_figures, write_ap_map
from live_stack.batch import (
    BatchProgress,
    ClusterParams,
    available_cores,
    dask_available,
    run_here,
    run_on_dask,
)
from live_stack.calibrate import CalibParams, Calibration, calibrate_source, load_calibration
from live_stack.colour import ColourParams, debayer_source
from live_stack.dispersion import RGBAlignParams
from live_stack.drizzle import DrizzleParams
from live_stack.local import LocalParams, parse_stack_size
from live_stack.night_report import Outcome
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
    out = p.add_argument_group("outputs and batches")
    out.add_argument("--overwrite", action="store_true",
                     help="replace existing outputs, and stack again inputs whose outputs "
                          "are up to date (default: up-to-date outputs are skipped, other "
                          "existing files are left alone and their input fails)")
    out.add_argument("--workers", type=int, default=None, metavar="N",
                     help="stack the inputs on a local Dask cluster of N worker processes "
                          "(default with several inputs: one per core when dask.distributed "
                          "is installed; 1 = one after another in this process)")
    out.add_argument("--scheduler", metavar="tcp://HOST:8786", default=None,
                     help="stack the inputs on an existing Dask cluster (every worker must "
                          "reach the inputs and outputs at the same paths)")
    out.add_argument("--report", metavar="FILE.csv", default=None,
                     help="write one row per input (mode, frames, size, duration, seeing, "
                          "frames stacked, APs, time, outputs, status) as .csv or .json")
    out.add_argument("--contact-sheet", metavar="FILE.png", default=None,
                     help="write a grid of small previews of the stacks with their names "
                          "and seeing")
    out.add_argument("--ap-map", metavar="FILE.png", default=None,
                     help="write where the stack is weak: each AP over the stack, green to "
                          "red by the share of its shifts that fell back, with the frame "
                          "count where short of the asked; the numbers beside it "
                          "(FILE.json); one INPUT only")
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


def _duration(raw: Any, info: Any) -> float | None:
    """Seconds from the first to the last frame: the timestamps, else the frame rate."""
    stamps = raw.timestamps()
    if stamps is not None and len(stamps) > 1:
        return float(stamps[-1] - stamps[0])
    fps = raw.info.metadata.get("fps")
    if isinstance(fps, (int, float)) and fps > 0 and info.frames > 1:
        return (info.frames - 1) / float(fps)
    return None


def process(path: str, params: PipelineParams, outputs: list[Path], *, quiet: bool,
            calibration: Calibration | None = None, colour: ColourParams | None = None,
            stamps: Sequence[dict[str, Any]] | None = None) -> dict:
    """Stack one input and write its images; return its summary.

    The frames are calibrated (``calibration``) and then debayered if the source is a
    raw Bayer capture (``colour``) before the pipeline sees them. A crash-cut SER file
    is stacked from its complete frames, with a warning on stderr saying how many frames
    its header claimed and how many were read. Each image is written under a temporary
    name and renamed, with ``stamps[i]`` (:func:`output_stamp`) in its metadata under
    ``"job"``, so that a later run can tell it is up to date.

    A Ctrl-C (``KeyboardInterrupt``) is re-raised only once the input is closed: the
    frames still referenced by the interrupted pipeline are released first (closing a
    memory-mapped file they point into would fail).
    """
    from live_stack.io import open_source, salvage_warning
    from live_stack.io.images import write_image
    from live_stack.night_report import seeing_index

    colour = colour or ColourParams()
    t0 = time.perf_counter()
    interrupted = False
    with open_source(path, salvage=True) as raw:
        salvaged = salvage_warning(raw)
        if salvaged is not None:
            print(f"{PROG}: warning: {salvaged}", file=sys.stderr)
        src = debayer_source(calibrate_source(raw, calibration), colour)
        info = src.info
        bars = _Bars(not quiet and sys.stderr.isatty(), Path(path).name)
        try:
            result: PipelineResult = run(src, params, progress=bars)
            duration = _duration(raw, info)
        except KeyboardInterrupt:
            interrupted = True  # the traceback, and the frames it holds, end here
        finally:
            bars.close()
    if interrupted:
        raise KeyboardInterrupt
    summary = result.summary()
    summary["input_size"] = [info.width, info.height]
    summary["duration_seconds"] = None if duration is None else round(duration, 3)
    summary["seeing"] = round(seeing_index(result.ranking.quality), 4)
    if raw.info.metadata.get("left_out"):  # image files of a folder that cannot be read
        summary["files_left_out"] = raw.info.metadata["left_out"]
    summary["per_ap"] = ap_figures(result, params.drizzle.scale).as_dict()
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
    stamps = list(stamps) if stamps is not None else [None] * len(outputs)
    for stack, out, stamp in zip(result.stacks, outputs, stamps, strict=True):
        meta = dict(meta_common, stack_size=stack.size, frames_per_ap=stack.frames_per_ap,
                    crop_box=list(stack.box), output_gain=gain, finish=stack.notes)
        if stamp is not None:
            meta["job"] = stamp
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
          f"fell back")
    if s.get("ap_dense"):
        print(f"  APs {s['ap_step']} px apart, a grid twice as dense: "
              f"{s.get('ap_dense_reason', '')}")
    elif s.get("ap_detail") is not None and s.get("ap_step"):
        print(f"  APs {s['ap_step']} px apart; a frame's detail is {s['ap_detail']:.3g}x its "
              "noise in their boxes")
    if s.get("files_left_out"):
        print(f"  {s['files_left_out']} image file(s) left out: they cannot be read (see "
              "the warning)")
    print(f"  time: {phase_times}  total {s['total_seconds']:.2f}s")
    for size, out in zip(s["stacks"], s["outputs"], strict=True):
        print(f"  stack {size} ({s['stacks'][size]} frames per AP) -> {out}")
    per_ap = s.get("per_ap")
    if per_ap:
        frames = np.asarray(per_ap["frames"])
        short = frames < per_ap["asked"]
        if short.any():
            # a frame is selected at an AP only if the AP's patch lies wholly inside it
            print(f"  {int(short.sum())} of {len(frames)} APs stacked fewer than "
                  f"{per_ap['asked']} frames (as few as {int(frames.min())}): their patches "
                  "lie outside the other frames (drift); see --ap-map")


# -- output policy ----------------------------------------------------------------------
#
# Before any work: every output folder must take a new file, and an existing output is
# either up to date (written by live-stack from the same input, unchanged since, with the
# same parameters: skipped) or replaced only with --overwrite. Outputs are written under a
# temporary name and renamed (live_stack.io.images.write_image), so an interrupted or
# killed run never leaves a half-written image under an output's name.


@dataclass(frozen=True)
class StackSettings:
    """What every recording of one run is stacked with."""

    params: PipelineParams  # the pipeline's parameters
    calib: CalibParams  # the master dark and flat (loaded by each task)
    colour: ColourParams  # debayering of raw colour captures
    quiet: bool = True  # no per-phase progress bars
    previews: bool = False  # return a small preview of the first stack (contact sheet)


@dataclass(frozen=True)
class Job:
    """One recording to stack: where it is, where its images go, and their stamps."""

    path: str  # the recording, as given (absolute when it runs on a cluster)
    outputs: tuple[str, ...]  # one image per stack size, in params.stack_sizes order
    stamps: tuple[dict[str, Any], ...]  # per output: its "job" metadata (output_stamp)
    settings: StackSettings  # the parameters of the run


def input_stamp(path: str) -> dict[str, int] | None:
    """Size and modification time of an input (a folder: of its files), or None if absent.

    A folder's stamp counts its files, sums their sizes and takes the latest
    modification time of the folder and of its files, so that adding, removing or
    rewriting a frame changes it.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return {"input_bytes": st.st_size, "input_mtime_ns": st.st_mtime_ns}
    files, size, latest = 0, 0, st.st_mtime_ns
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_file():
                est = entry.stat()
                files += 1
                size += est.st_size
                latest = max(latest, est.st_mtime_ns)
    return {"input_files": files, "input_bytes": size, "input_mtime_ns": latest}


def settings_digest(settings: StackSettings, size: str) -> str:
    """SHA-256 of everything that decides one output's pixels (threads do not).

    The phases' parameters, the stack size, the colour settings, and the master
    dark and flat by absolute path and stamp. The version of live-stack is not part of
    it: a new version does not redo existing outputs unless asked (``--overwrite``).
    """
    masters = {name: [os.path.abspath(p), input_stamp(p)] if p else ""
               for name, p in (("dark", settings.calib.dark), ("flat", settings.calib.flat))}
    doc = {
        "parameters": {prefix: as_dict(getattr(settings.params, prefix)) for prefix in SPECS},
        "stack_size": size,
        "colour": as_dict(settings.colour),
        "calibration": masters,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def output_stamp(path: str, settings: StackSettings, size: str) -> dict[str, Any] | None:
    """What an output of ``path`` at stack ``size`` records to be found up to date later."""
    stamp = input_stamp(path)
    if stamp is None:
        return None
    return dict(stamp, input=os.path.abspath(path), settings_sha256=settings_digest(settings,
                                                                                    size))


def check_writable(folder: Path) -> None:
    """Raise ``OSError`` naming ``folder`` if a new file cannot be created in it.

    A real file is created and removed (permissions alone do not tell of a read-only
    mount or an ACL).
    """
    if not folder.is_dir():
        raise OSError(f"{folder}: the output folder does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".live-stack-", suffix=".probe")
    except OSError as exc:
        raise OSError(f"{folder}: cannot write to the output folder: "
                      f"{exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def stored_metadata(out: Path) -> dict[str, Any]:
    """The metadata live-stack stored in an image it wrote.

    A TIFF's is read from its first page's description without decoding the pixels
    (0.2 ms against 49 ms for a 3840x2160 RGB stack: a resumed archive run checks every
    output), once the page's strips are seen to lie inside the file; other formats are
    read whole (:func:`live_stack.io.images.read_image`).

    Raises
    ------
    ValueError, OSError
        If the file is not an image with live-stack's metadata.
    """
    from live_stack.io.images import TIFF_SUFFIXES, read_image

    if out.suffix.lower() not in TIFF_SUFFIXES:
        return read_image(out)[1]
    import tifffile

    try:
        with tifffile.TiffFile(out) as tif:
            page = tif.pages.first
            size = out.stat().st_size
            ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)]
            if not ends or max(ends) > size:
                raise ValueError(f"{out}: its image data runs past the end of the file")
            meta = json.loads(page.description)
    except (tifffile.TiffFileError, json.JSONDecodeError, IndexError) as exc:
        raise ValueError(f"{out}: not a TIFF with live-stack's metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{out}: its description is not live-stack's metadata")
    return meta


def existing_output(out: Path, stamp: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """What is at an output's path already: ``(state, metadata)``.

    ``state`` is ``"absent"``, ``"current"`` (written by live-stack with ``stamp``: same
    input, unchanged, same parameters) or a phrase saying why it is not (for the error).
    """
    if not os.path.lexists(out):
        return "absent", {}
    if not out.is_file():
        return "not a file", {}
    try:
        meta = stored_metadata(out)
    except (ValueError, OSError):
        return "not an image live-stack wrote", {}
    found = meta.get("job")
    if not isinstance(found, dict) or "software" not in meta:
        return "not written by this version of live-stack's reprocess", meta
    if stamp is None or found.get("input") != stamp.get("input"):
        return f"made from another input ({meta.get('input', '?')})", meta
    if found.get("settings_sha256") != stamp["settings_sha256"]:
        return "made with other parameters", meta
    if found != stamp:
        return "made from an earlier version of the input (its size or time changed)", meta
    return "current", meta


def plan_job(path: str, outputs: Sequence[Path], settings: StackSettings, *,
             overwrite: bool, claimed: dict[Path, str],
             folders: dict[Path, str]) -> Job | Outcome:
    """Decide what to do with one input before any work: a :class:`Job`, or an
    :class:`~live_stack.night_report.Outcome` "skipped" when its outputs are up to date.

    Parameters
    ----------
    path : str
        The input.
    outputs : sequence of Path
        Its outputs (:func:`output_paths`), one per stack size.
    settings : StackSettings
        The run's settings.
    overwrite : bool
        Replace existing outputs (and redo up-to-date ones).
    claimed : dict
        Outputs of the inputs planned so far -> their input (updated).
    folders : dict
        Output folders checked so far -> "" or their error (updated).

    Raises
    ------
    ValueError
        If an output is another input's, or exists and may not be replaced.
    OSError
        If an output folder cannot be written.
    """
    sizes = settings.params.stack_sizes
    stamps = tuple(output_stamp(path, settings, size) for size in sizes)
    states = []
    for out, stamp in zip(outputs, stamps, strict=True):
        key = out.absolute()
        if key in claimed:
            raise ValueError(f"{out} is also the output of {claimed[key]}: give each input "
                             "its own -o, or -o FOLDER")
        folder = key.parent
        if folder not in folders:
            try:
                check_writable(folder)
                folders[folder] = ""
            except OSError as exc:
                folders[folder] = str(exc)
        if folders[folder]:
            raise OSError(folders[folder])
        states.append(existing_output(out, stamp))
    if not overwrite:
        if all(state == "current" for state, _ in states):
            meta = states[0][1]
            return Outcome(path, "skipped", tuple(str(o) for o in outputs),
                           summary=meta.get("summary", {}),
                           preview=_preview_of(outputs[0]) if settings.previews else None)
        for out, (state, _) in zip(outputs, states, strict=True):
            if state not in ("absent", "current"):
                raise ValueError(f"{out} exists and was {state}: not replaced (--overwrite "
                                 "replaces it)" if state.startswith("made") else
                                 f"{out} exists and is {state}: not replaced (--overwrite "
                                 "replaces it)")
    for out in outputs:
        claimed[out.absolute()] = path
    return Job(path, tuple(str(o) for o in outputs), stamps, settings)


def remove_temporaries(jobs: Sequence[Job]) -> None:
    """Remove what a killed task may have left of the outputs of ``jobs``: the temporary
    files :func:`live_stack.io.images.write_image` writes an output under
    (``.NAME.RANDOM.tmp`` beside it) before renaming it."""
    for job in jobs:
        for out in map(Path, job.outputs):
            for tmp in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


def _preview_of(out: Path | str) -> np.ndarray:
    """A contact-sheet preview of a written stack."""
    from live_stack.io.images import read_image
    from live_stack.night_report import preview

    image, _ = read_image(out)
    return preview(image)


# -- one recording's task, here or on a cluster worker ---------------------------------


def _error_text(path: str, exc: BaseException) -> str:
    """An error as one line that names the input."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        text = f"out of memory ({text})"
    return text if path in text else f"{path}: {text}"


def stack_job(job: Job, *, threads: int | None = None,
              calibration: Calibration | None = None) -> Outcome:
    """Stack one recording and write its images: the task of a batch (here or on a Dask
    worker). Bad input, an unwritable output and lack of memory become a "failed"
    :class:`~live_stack.night_report.Outcome` with a one-line error.

    Parameters
    ----------
    job : Job
        The recording and its outputs.
    threads : int, optional
        Pipeline threads (else ``job.settings.params.threads``); the images do not
        depend on it.
    calibration : Calibration, optional
        The loaded masters of ``job.settings.calib`` (else loaded here).
    """
    s = job.settings
    params = s.params if threads is None else dataclasses.replace(s.params, threads=threads)
    try:
        if calibration is None:
            calibration = load_calibration(s.calib)
        summary = process(job.path, params, [Path(o) for o in job.outputs], quiet=s.quiet,
                          calibration=calibration, colour=s.colour, stamps=job.stamps)
        shown = _preview_of(job.outputs[0]) if s.previews else None
    except (ValueError, OSError, MemoryError) as exc:
        return Outcome(job.path, "failed", error=_error_text(job.path, exc))
    return Outcome(job.path, "stacked", job.outputs, summary=summary, preview=shown)


# -- the batch --------------------------------------------------------------------------


def _as_given(outcome: Outcome, job: Job) -> Outcome:
    """``outcome`` of ``job`` run with absolute paths, named as the job was given."""
    if outcome.input == job.path:
        return outcome
    error = outcome.error.replace(outcome.input, job.path)
    summary = dict(outcome.summary)
    if "outputs" in summary:
        summary["outputs"] = list(job.outputs)
    return dataclasses.replace(outcome, input=job.path, error=error, summary=summary,
                               outputs=job.outputs if outcome.outputs else ())


def _cluster_params(args: argparse.Namespace, jobs: int,
                    threads: int | None) -> ClusterParams | None:
    """Where the jobs run: a Dask cluster (``ClusterParams``) or this process (None).

    ``--scheduler`` uses an existing cluster; ``--workers N`` (N > 1) starts a local one;
    without either, several jobs run on a local cluster of one worker per core when
    ``dask.distributed`` is installed, and in this process otherwise.

    Raises
    ------
    ValueError
        If both are given, or a cluster is asked for and Dask is not installed.
    """
    if args.scheduler and args.workers is not None:
        raise ValueError("--workers starts a local cluster and --scheduler uses an existing "
                         "one: give one of them")
    wanted = bool(args.scheduler) or (args.workers is not None and args.workers > 1)
    if wanted and not dask_available():
        raise ValueError("--workers/--scheduler need dask.distributed: pip install "
                         "'live-stack[cluster]'")
    if args.scheduler:
        return ClusterParams(scheduler=args.scheduler, threads=threads or 0)
    workers = args.workers
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if workers is None:
        workers = min(jobs, available_cores()) if dask_available() else 1
    if workers <= 1 or jobs <= 1:
        return None
    return ClusterParams(workers=min(workers, jobs), threads=threads or 0)


def _explicit_threads(args: argparse.Namespace) -> int | None:
    """Threads the user asked for (``--threads`` or the config's ``threads``), if any."""
    if args.threads is not None:
        return args.threads
    if args.config:
        known = known_keys(SPECS) | known_keys(SOURCE_SPECS) | {"stack", "threads"}
        value = load_config(args.config, known=known).get("threads")
        return None if value is None else int(value)
    return None


def _check_side_outputs(args: argparse.Namespace) -> None:
    """Check the report's and the contact sheet's names and folders before any work."""
    from live_stack.night_report import REPORT_SUFFIXES

    if args.report and Path(args.report).suffix.lower() not in REPORT_SUFFIXES:
        raise ValueError(f"--report {args.report}: the report is a "
                         f"{' or '.join(REPORT_SUFFIXES)} file")
    if args.contact_sheet and Path(args.contact_sheet).suffix.lower() != ".png":
        raise ValueError(f"--contact-sheet {args.contact_sheet}: the contact sheet is a "
                         ".png file")
    for name in (args.report, args.contact_sheet):
        if name:
            if Path(name).is_dir():
                raise ValueError(f"{name} is a folder: give a file name")
            check_writable(Path(name).absolute().parent)


def _check_ap_map(path: str | None, inputs: int) -> Path | None:
    """The ``--ap-map`` file, checked before any stacking (ValueError naming it)."""
    if path is None:
        return None
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--ap-map {path}: the map is a .png file")
    if inputs != 1:
        raise ValueError(f"--ap-map takes one INPUT, got {inputs}")
    if out.is_dir():
        raise ValueError(f"--ap-map {path} is a folder: give a file name")
    check_writable(out.absolute().parent)
    return out


def _write_ap_map(path: Path, outcome: Outcome) -> None:
    """The AP map of a stacked input (its first output and the figures in its
    summary): ``path`` (PNG) and the numbers beside it (``path`` with ``.json``)."""
    from live_stack.io.images import read_image

    image, _ = read_image(outcome.outputs[0])
    figures = APMap.from_dict(outcome.summary["per_ap"])
    write_ap_map(path, image, figures)


def _run_jobs(jobs: list[Job], cluster: ClusterParams | None,
              calibration: Calibration | None) -> Iterator[tuple[Outcome, int]]:
    """Run the jobs here or on the cluster; yield ``(outcome, reruns)`` as they finish
    (``reruns``: times a job was started again because its worker process died)."""
    if cluster is None:
        task = functools.partial(stack_job, calibration=calibration)
        for done in run_here(task, jobs):
            yield done.result, 0
        return
    for done in run_on_dask(stack_job, jobs, cluster, name=lambda job: Path(job.path).name):
        yield (done.result if done.result is not None else Outcome(
            done.job.path, "failed", error=_error_text(done.job.path, OSError(done.error))),
            done.reruns)


def _side_outputs(args: argparse.Namespace, outcomes: list[Outcome]) -> int:
    """Write the report and the contact sheet; return the number of failures (0..2)."""
    from live_stack.night_report import write_contact_sheet, write_report

    failures = 0
    if args.report:
        try:
            write_report(args.report, outcomes)
            print(f"report: {args.report} ({len(outcomes)} recordings)")
        except (ValueError, OSError) as exc:
            failures += 1
            print(f"{PROG}: error: {_error_text(args.report, exc)}", file=sys.stderr)
    if args.contact_sheet:
        try:
            tiles, left = write_contact_sheet(args.contact_sheet, outcomes)
            print(f"contact sheet: {args.contact_sheet} ({tiles} stacks"
                  + (f"; {left} failed left off" if left else "") + ")")
        except (ValueError, OSError) as exc:
            failures += 1
            print(f"{PROG}: error: {_error_text(args.contact_sheet, exc)}", file=sys.stderr)
    return failures


def plan_inputs(args: argparse.Namespace, settings: StackSettings) -> list[Job | Outcome]:
    """Every input in command-line order, before any work: a :class:`Job`, or already its
    outcome (failed: no match, its output refused; skipped: up to date), each said on one
    line as it is found."""
    slots: list[str | Job | Outcome] = []
    for item in args.inputs:  # a pattern that matches nothing fails alone, as a missing file
        try:
            slots.extend(expand_inputs([item]))
        except ValueError as exc:
            slots.append(Outcome(item, "failed", error=str(exc)))
    many = len(slots) > 1
    claimed: dict[Path, str] = {}
    folders: dict[Path, str] = {}
    for i, path in enumerate(slots):
        if isinstance(path, Outcome):
            print(f"{PROG}: error: {path.error}", file=sys.stderr)
            continue
        try:
            outputs = output_paths(path, args.output, settings.params.stack_sizes,
                                   args.format, many)
            slots[i] = plan_job(path, outputs, settings, overwrite=args.overwrite,
                                claimed=claimed, folders=folders)
        except (ValueError, OSError) as exc:
            slots[i] = Outcome(path, "failed", error=_error_text(path, exc))
            print(f"{PROG}: error: {slots[i].error}", file=sys.stderr)
            continue
        if isinstance(slots[i], Outcome):
            print(f"{path}: up to date (same input and parameters), skipped: "
                  + ", ".join(slots[i].outputs))
    return slots


def _for_cluster(jobs: list[Job]) -> list[Job]:
    """The jobs as cluster workers run them: absolute paths (the workers may run
    elsewhere, in another folder) and no progress bars of their own."""
    def absolute(path: str) -> str:
        return os.path.abspath(path) if path else path

    out = []
    for job in jobs:
        calib = job.settings.calib
        calib = dataclasses.replace(calib, dark=absolute(calib.dark), flat=absolute(calib.flat))
        settings = dataclasses.replace(job.settings, quiet=True, calib=calib)
        out.append(Job(absolute(job.path), tuple(map(absolute, job.outputs)), job.stamps,
                       settings))
    return out


def run_planned(slots: list[Job | Outcome], cluster: ClusterParams | None,
                calibration: Calibration | None, *, quiet: bool) -> int:
    """Run the jobs among ``slots`` (here or on ``cluster``), replacing each by its
    outcome as it finishes and saying it (summary or error line, progress); return how
    many recordings were started again because their worker died.

    Raises
    ------
    OSError
        If the cluster cannot be started or reached.
    KeyboardInterrupt
        On Ctrl-C, once the temporary files of the unfinished outputs are removed.
    """
    at = [i for i, slot in enumerate(slots) if isinstance(slot, Job)]
    jobs = [slots[i] for i in at]
    if cluster is not None:
        jobs = _for_cluster(jobs)
    place = {job.path: i for job, i in zip(jobs, at, strict=True)}
    progress = BatchProgress(len(jobs), bar=not quiet and sys.stderr.isatty()) \
        if len(slots) > 1 else None
    reruns = 0
    try:
        for outcome, again in _run_jobs(jobs, cluster, calibration):
            i = place[outcome.input]
            outcome = slots[i] = _as_given(outcome, slots[i])
            reruns += bool(again)
            if outcome.status == "failed":
                print(f"{PROG}: error: {outcome.error}", file=sys.stderr)
            else:
                print_summary(outcome.input, dict(outcome.summary))
            if again:
                print("  (started again: the worker process it was sent to died)")
            if progress is not None:
                progress.update(failed=outcome.status == "failed")
                if not progress.bar and not quiet:
                    print(progress.line())
    except KeyboardInterrupt:
        remove_temporaries([slot for slot in slots if isinstance(slot, Job)])
        raise
    finally:
        if progress is not None:
            progress.close()
    return reruns


def reprocess(args: argparse.Namespace) -> int:
    """Plan, run and report a ``reprocess`` run from its parsed arguments; the exit code."""
    try:
        params = params_from(args)
        calib, colour = source_params_from(args)
        calibration = load_calibration(calib)
        threads = _explicit_threads(args)
        _check_side_outputs(args)
        ap_map = _check_ap_map(args.ap_map, len(args.inputs))
        if args.output and not Path(args.output).is_dir() and Path(args.output).suffix:
            check_writable(Path(args.output).absolute().parent)
        elif args.output and Path(args.output).is_dir():
            check_writable(Path(args.output))
    except (ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    settings = StackSettings(params=params, calib=calib, colour=colour,
                             quiet=args.quiet, previews=bool(args.contact_sheet))
    slots = plan_inputs(args, settings)
    try:
        cluster = _cluster_params(args, sum(isinstance(s, Job) for s in slots), threads)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        reruns = run_planned(slots, cluster, calibration, quiet=args.quiet)
    except OSError as exc:  # the cluster could not be started or reached
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    outcomes = [slot for slot in slots if isinstance(slot, Outcome)]
    failures = sum(o.status == "failed" for o in outcomes)
    failures += _side_outputs(args, outcomes)
    if ap_map is not None:
        for outcome in outcomes:
            if outcome.status != "stacked":
                continue
            try:
                _write_ap_map(ap_map, outcome)
                print(f"AP map: {ap_map} and {ap_map.with_suffix('.json')}")
            except (ValueError, OSError, KeyError) as exc:
                failures += 1
                print(f"{PROG}: error: {_error_text(str(ap_map), exc)}", file=sys.stderr)
    if reruns:
        print(f"{reruns} recording{' was' if reruns == 1 else 's were'} started again after "
              "the worker process it was sent to died")
    if len(outcomes) > 1:
        stacked = sum(o.status == "stacked" for o in outcomes)
        skipped = sum(o.status == "skipped" for o in outcomes)
        failed = sum(o.status == "failed" for o in outcomes)
        print(f"{stacked} of {len(outcomes)} inputs stacked"
              + (f", {skipped} up to date" if skipped else "")
              + (f", {failed} failed" if failed else ""))
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``live-stack reprocess``; returns the exit code (130 on Ctrl-C)."""
    args = parser().parse_args(argv)
    try:
        return reprocess(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: the outputs finished are kept, none is half-written",
              file=sys.stderr)
        return 130
