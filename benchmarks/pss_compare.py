"""live-stack against PlanetarySystemStacker (PSS): quality, time and memory, whole process.

Issue 2 asks for results "sharper than PlanetarySystemStacker (PSS), and much faster and
leaner". Both tools run as separate processes, one at a time, on the same inputs:

* the simulated scenes of ``pipeline_quality.py`` (moon, planet, sun; 300 frames of
  640x480 8-bit, seeing "normal", the same cached captures), each output scored against
  the simulator's truth with :func:`live_stack.simulate.score.score` (registered on the
  truth; PSNR and SSIM), on the part of the truth that every output covers (the tools
  crop differently) and, for reference, on each output's whole area;
* the real capture ``../shared/data/moon_pss_short.avi`` (101 frames of 1280x960, no
  truth), compared by :func:`live_stack.simulate.score.gradient_energy` (mean squared
  gradient of the lightly blurred luminance; higher is sharper, but noise raises it too)
  on the area every output covers, registered on live-stack's output.

Matching settings: the same number of frames stacked at every AP (10 % of the frames,
given to both as a count: PSS rounds a percentage up, live-stack to the nearest), the
same global alignment mode (surface for the Moon and the Sun, planet for the planet),
drizzle off, no sharpening or normalisation (PSS's command-line mode never
post-processes; live-stack's sharpening and normalisation are off by default), and each
tool's own defaults for everything else (PSS: frame blur ("noise") 7, reference from the
best 5 %, search width 14, buffering "auto", i.e. as much as the free RAM allows, which
makes its peak RSS grow with the frames: ``--pss-buffering 1`` makes it lean, at some
cost in time; live-stack: see ``live-stack reprocess --help``). The AP size has no exact
match: a live-stack AP (``--ap-size 64``) measures its shift on, and stacks, the 64-pixel
box plus its 8-pixel search margin, blended over the 64-pixel box, every 48 pixels; a PSS
AP measures its shift on a box of ``-a`` pixels and stacks a patch 1.5 times as wide,
every 0.75 patch. PSS therefore runs with each ``--pss-box`` (default ``64 42``): ``-a 64``
has about live-stack's measuring box (96-pixel patches every 72 pixels), ``-a 42`` its
blended patch and spacing (64 every 48). PSS's own default box is 48. The real capture
is stored as 3-channel video of a mono camera:
live-stack detects that, PSS's default ("Auto detect color") stacks it as colour, so PSS
runs there with ``--debayering Grayscale`` for each box and once with its default.

Each case runs ``--repeat`` times (the tools alternating); the median wall time (around
the process, start-up included), CPU time (user + system) and peak RSS (``ru_maxrss``
from ``os.wait4``) are reported, with each tool's own account of its processing time
(PSS: "Execution over all"; live-stack: the sum of its phases), which shows the start-up
cost. Quality comes from the last run (both tools are deterministic).

PSS pins numpy < 1.23 and needs PyQt5: it runs from a virtual environment of its own
(``--pss-python``), never from this project's. On Python 3.11 there is no numpy < 1.23
wheel (pip builds 1.22.4 from source, minutes) and the cp311 wheels of scikit-image,
SciPy and astropy need numpy >= 1.23 anyway, so PSS runs on numpy 1.23.5 (the last with
the aliases it uses; pip reports the conflict with PSS's pin, harmlessly)::

    python3 -m venv /tmp/pss-venv
    /tmp/pss-venv/bin/pip install planetary-system-stacker   # builds numpy 1.22.4
    /tmp/pss-venv/bin/pip install numpy==1.23.5

or, without the build and with the versions these figures were taken with::

    python3 -m venv /tmp/pss-venv
    /tmp/pss-venv/bin/pip install --no-deps planetary-system-stacker==0.9.8.2
    /tmp/pss-venv/bin/pip install numpy==1.23.5 scipy==1.13.1 scikit-image==0.22.0 \
        astropy==6.0.1 matplotlib==3.8.4 opencv-python-headless==4.7.0.72 PyQt5==5.15.11 psutil

Usage::

    python3 benchmarks/pss_compare.py [--cache DIR] [--pss-python /tmp/pss-venv/bin/python]
                                      [--repeat 3] [--pss-box 64 42] [--pss-buffering auto]
                                      [--frames 300] [--no-real] [--keep DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    KIB_PER_MIB,
    REAL_CAPTURE,
    add_cache_option,
    cached_capture,
    median,
    print_header,
)

#: Scenes and the global alignment mode both tools are given.
SCENES = {"moon": "surface", "planet": "planet", "sun": "surface"}
#: Share of the frames stacked at each AP (issue 2's comparison: 10 %).
STACK_SHARE = 0.10
#: Default interpreter of PSS's virtual environment.
DEFAULT_PSS_PYTHON = "/tmp/pss-venv/bin/python"
#: PSS's console entry point, called exactly as its ``PlanetarySystemStacker`` script does
#: (with arguments it runs without a GUI).
PSS_ENTRY = ("import sys; from planetary_system_stacker.planetary_system_stacker import main; "
             "sys.exit(main())")
#: How to make PSS runnable, for the error message.
PSS_INSTALL = ("python3 -m venv /tmp/pss-venv && /tmp/pss-venv/bin/pip install "
               "planetary-system-stacker && /tmp/pss-venv/bin/pip install numpy==1.23.5 "
               "(a faster way without building numpy: see this script's docstring)")
#: Longest a single run may take, seconds.
TIMEOUT_S = 900
#: Pixels left out at each side of the common area for the gradient measure.
BORDER = 16


@dataclass
class Run:
    """One tool's runs on one input."""

    tool: str  # label in the table
    settings: str  # the options that matter for the comparison, for the table
    cmd: list[str]  # the last command line
    output: Path
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    internal: list[float] = field(default_factory=list)  # the tool's own processing time


def run_measured(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None
                 ) -> tuple[float, float, float, str]:
    """Run ``cmd``; its wall time, CPU time (s), peak RSS (MiB) and output (stdout and
    stderr). Exits with the output if it fails."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        timer = threading.Timer(TIMEOUT_S, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / KIB_PER_MIB, text


def pss_env() -> dict[str, str]:
    """PSS's environment: no display needed (its console mode makes no window)."""
    return {**os.environ, "QT_QPA_PLATFORM": "offscreen"}


def check_pss(pss_python: str) -> str:
    """PSS's version, or exit with one line saying how to install it."""
    if not Path(pss_python).is_file():
        sys.exit(f"PSS not found: {pss_python} does not exist; install it with: {PSS_INSTALL} "
                 "(or give --pss-python)")
    probe = ("import importlib.metadata as m, planetary_system_stacker.planetary_system_stacker;"
             " print(m.version('planetary-system-stacker'))")
    proc = subprocess.run([pss_python, "-c", probe], capture_output=True, text=True,
                          env=pss_env(), timeout=120, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        errors = [ln for ln in lines if re.match(r"[\w.]+(Error|Exception):", ln)]
        last = (errors or lines)[-1]
        sys.exit(f"PSS is not usable with {pss_python} ({last}); install it with: "
                 f"{PSS_INSTALL}")
    return proc.stdout.strip()


def pss_internal_seconds(text: str) -> float:
    """PSS's own "Execution over all" time from its protocol (nan if absent)."""
    m = re.search(r"Execution over all\s+([0-9.]+)", text)
    return float(m.group(1)) if m else math.nan


def ls_internal_seconds(output: Path) -> float:
    """The sum of live-stack's phase times, from the metadata of its output."""
    from live_stack.io.images import read_image

    _, meta = read_image(output)
    return float(sum(meta.get("summary", {}).get("seconds", {}).values()))


def make_runs(video: Path, work: Path, *, stem: str, mode: str, stack: int, boxes: list[int],
              pss_python: str, buffering: str, real: bool) -> list[Run]:
    """The runs of one input: live-stack first, then PSS with each box."""
    link = work / f"{stem}{video.suffix}"  # PSS writes its result beside its input
    if not link.exists():
        link.symlink_to(video.resolve())
    ls_out = work / f"{stem}_ls.tif"
    runs = [Run("live-stack", f"--ap-size 64 (default), --stack {stack}",
                [sys.executable, "-m", "live_stack.cli", "reprocess", str(link), "-o",
                 str(ls_out), "-q", "--stack", str(stack), "--mode", mode, "--ap-size", "64"],
                ls_out)]
    variants = [(box, "Grayscale") for box in boxes] if real else [(box, None) for box in boxes]
    if real and boxes:
        variants.append((boxes[0], None))
    for box, debayer in variants:
        name = f"{stem}_a{box}" + ("_grey" if debayer else "")
        pss_link = work / f"{name}{video.suffix}"
        if not pss_link.exists():
            pss_link.symlink_to(video.resolve())
        cmd = [pss_python, "-c", PSS_ENTRY, str(pss_link), "--stack_number", str(stack),
               "-a", str(box), "-m", mode.capitalize(), "--drizzle", "Off", "-b", buffering]
        settings = f"-a {box}, --stack_number {stack}"
        if buffering != "auto":
            settings += f", -b {buffering}"
        if debayer:
            cmd += ["--debayering", debayer]
            settings += f", --debayering {debayer}"
        elif real:
            settings += " (colour: PSS's default detection)"
        runs.append(Run("PSS", settings, cmd, work / f"{name}_pss.png"))
    return runs


def execute(runs: list[Run], repeat: int, work: Path) -> None:
    """Run every tool ``repeat`` times, alternating, one process at a time."""
    for _ in range(repeat):
        for r in runs:
            if r.output.exists():
                r.output.unlink()
            is_pss = r.tool == "PSS"
            wall, cpu, rss, text = run_measured(r.cmd, cwd=work,
                                                env=pss_env() if is_pss else None)
            if not r.output.is_file():
                sys.exit(f"{shlex.join(r.cmd)} wrote no {r.output}:\n{text[-3000:]}")
            r.walls.append(wall)
            r.cpus.append(cpu)
            r.rss_mib.append(rss)
            r.internal.append(pss_internal_seconds(text) if is_pss
                              else ls_internal_seconds(r.output))


def describe(r: Run) -> str:
    return (f"wall {median(r.walls):.2f} s (runs {', '.join(f'{w:.2f}' for w in r.walls)}), "
            f"CPU {median(r.cpus):.2f} s, peak RSS {median(r.rss_mib):.0f} MiB, "
            f"own processing time {median(r.internal):.2f} s")


def common_crops(images: list, reference) -> list:
    """Crop each image to the part of ``reference`` that all of them cover (registered
    by translation on ``reference``; whole-pixel bounds, rounded inwards)."""
    from live_stack.simulate.score import register

    shifts = [register(im, reference) for im in images]
    h, w = reference.shape[:2]
    y0 = max(0.0, *(sy for sy, _ in shifts))
    x0 = max(0.0, *(sx for _, sx in shifts))
    y1 = min(float(h), *(sy + im.shape[0] for (sy, _), im in zip(shifts, images, strict=True)))
    x1 = min(float(w), *(sx + im.shape[1] for (_, sx), im in zip(shifts, images, strict=True)))
    crops = []
    for (sy, sx), im in zip(shifts, images, strict=True):
        a, b = math.ceil(y0 - sy), math.floor(y1 - sy)
        c, d = math.ceil(x0 - sx), math.floor(x1 - sx)
        crops.append(im[a:b, c:d])
    return crops


def size_of(image) -> str:
    colour = " RGB" if image.ndim == 3 else ""
    return f"{image.shape[1]}x{image.shape[0]}{colour}"


def main() -> int:
    from live_stack.frames import luminance
    from live_stack.io import open_source
    from live_stack.io.images import read_image
    from live_stack.simulate.score import gradient_energy, score

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cache_option(p)
    p.add_argument("--pss-python", default=DEFAULT_PSS_PYTHON,
                   help=f"interpreter of PSS's virtual environment (default {DEFAULT_PSS_PYTHON})")
    p.add_argument("--repeat", type=int, default=3, help="runs per case (medians reported)")
    p.add_argument("--pss-box", type=int, nargs="+", default=[64, 42],
                   help="PSS alignment box widths (-a) to run (default 64 42)")
    p.add_argument("--pss-buffering", default="auto", choices=["auto", "0", "1", "2", "3", "4"],
                   help="PSS's buffering level (-b; default auto: as much as the free RAM "
                        "allows, the fastest and largest)")
    p.add_argument("--frames", type=int, default=300, help="frames of the simulated scenes")
    p.add_argument("--no-real", action="store_true", help="leave out the real capture")
    p.add_argument("--keep", metavar="DIR", help="keep the outputs in DIR")
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    version = check_pss(args.pss_python)
    print_header("live-stack against PlanetarySystemStacker, whole process")
    print(f"PSS: planetary-system-stacker {version} ({args.pss_python}), "
          "QT_QPA_PLATFORM=offscreen")
    print(f"live-stack: {sys.executable} -m live_stack.cli reprocess")
    print(flush=True)

    sim_rows = []  # (scene, run, full score, common score, size)
    real_rows = []  # (run, energy, size)
    with tempfile.TemporaryDirectory(prefix="pss-compare-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for scene, mode in SCENES.items():
            cap = cached_capture(args.cache, scene, frames=args.frames, width=640, height=480,
                                 seeing="normal")
            stack = max(1, round(STACK_SHARE * cap.frames))
            runs = make_runs(cap.video, work, stem=scene, mode=mode, stack=stack,
                             boxes=args.pss_box, pss_python=args.pss_python,
                             buffering=args.pss_buffering, real=False)
            execute(runs, args.repeat, work)
            truth, _ = read_image(cap.truth)
            images = [read_image(r.output)[0] for r in runs]
            common = common_crops(images, truth)
            print(f"## {scene}: {cap.video} ({cap.frames} frames 640x480 8-bit, seeing normal), "
                  f"mode {mode}, {stack} frames per AP")
            for r, im, crop in zip(runs, images, common, strict=True):
                full, part = score(im, truth), score(crop, truth)
                sim_rows.append((scene, r, full, part, size_of(im)))
                print(f"{r.tool} [{r.settings}]: output {size_of(im)}; common area "
                      f"{size_of(crop)}: PSNR {part.psnr:.2f} dB, SSIM {part.ssim:.4f}; whole "
                      f"output: PSNR {full.psnr:.2f} dB, SSIM {full.ssim:.4f}")
                print(f"    {describe(r)}")
                print(f"    command: {shlex.join(r.cmd)}")
            print(flush=True)

        real = REAL_CAPTURE.resolve()
        if args.no_real:
            print("## moon_pss_short.avi: left out (--no-real)")
        elif not real.is_file():
            print(f"## moon_pss_short.avi: skipped ({REAL_CAPTURE} is absent)")
        else:
            with open_source(real) as src:
                frames = len(src)
            stack = max(1, round(STACK_SHARE * frames))
            runs = make_runs(real, work, stem="real", mode="surface", stack=stack,
                             boxes=args.pss_box, pss_python=args.pss_python,
                             buffering=args.pss_buffering, real=True)
            execute(runs, args.repeat, work)
            images = [read_image(r.output)[0] for r in runs]
            reference = luminance(images[0])
            common = common_crops([luminance(im) for im in images], reference)
            inner = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
            print(f"## real capture: {real} ({frames} frames), mode surface, {stack} frames "
                  f"per AP; gradient energy on the common area less {BORDER} px")
            base = None
            for r, im, crop in zip(runs, images, common, strict=True):
                energy = gradient_energy(crop[inner])
                base = energy if base is None else base
                real_rows.append((r, energy, size_of(im)))
                print(f"{r.tool} [{r.settings}]: output {size_of(im)}, common area "
                      f"{size_of(crop[inner])}: gradient energy {energy:.4e} "
                      f"({energy / base:.3f} x live-stack's)")
                print(f"    {describe(r)}")
                print(f"    command: {shlex.join(r.cmd)}")
            print(flush=True)

    print(f"Simulated scenes: {args.frames} frames of 640x480 8-bit, seeing normal, "
          f"{max(1, round(STACK_SHARE * args.frames))} frames per AP (10 %), drizzle off, "
          "no sharpening; PSNR and SSIM against the truth on the area all outputs cover; "
          f"medians of {args.repeat} runs, whole process.")
    print()
    print("| scene | tool | settings | output | PSNR | SSIM | wall s | CPU s | "
          "own time s | peak RSS MiB |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for scene, r, _, part, size in sim_rows:
        print(f"| {scene} | {r.tool} | {r.settings} | {size} | {part.psnr:.2f} | "
              f"{part.ssim:.4f} | {median(r.walls):.2f} | {median(r.cpus):.2f} | "
              f"{median(r.internal):.2f} | {median(r.rss_mib):.0f} |")
    if real_rows:
        print()
        print("Real capture `moon_pss_short.avi` (101 frames 1280x960): gradient energy on the "
              "area all outputs cover (higher is sharper; noise raises it too).")
        print()
        print("| tool | settings | output | gradient energy | vs live-stack | wall s | CPU s | "
              "own time s | peak RSS MiB |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|")
        base = real_rows[0][1]
        for r, energy, size in real_rows:
            print(f"| {r.tool} | {r.settings} | {size} | {energy:.3e} | {energy / base:.3f} | "
                  f"{median(r.walls):.2f} | {median(r.cpus):.2f} | {median(r.internal):.2f} | "
                  f"{median(r.rss_mib):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
