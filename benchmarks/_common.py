"""Shared helpers of the pipeline and live benchmarks.

* :func:`print_header`: the command line, the date and the machine, printed before the
  figures so that a pasted result says where it comes from;
* :func:`cached_capture`: simulated captures (``live-stack simulate``) kept in a cache
  folder (``--cache``, default ``/tmp/live-stack-bench``) so that they are rendered once;
  long captures may cycle through fewer distinct simulated frames (:func:`cycled_capture`),
  which costs the pipeline the same per frame and saves minutes of rendering;
* :func:`peak_rss_command`: run a command in a child process that reports its own peak
  resident set.

Benchmarks import this module as ``_common`` (run them as ``python3 benchmarks/NAME.py``:
the script's folder is on the module path).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Default folder of the cached simulated captures.
DEFAULT_CACHE = "/tmp/live-stack-bench"
#: Seed of every benchmark capture.
SEED = 1
#: KiB per MiB (``/proc`` and ``ru_maxrss`` count KiB on Linux).
KIB_PER_MIB = 1024
#: The real capture beside the repository.
REAL_CAPTURE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / \
    "moon_pss_short.avi"
#: Name of the marker file that says a cached capture is complete.
DONE_NAME = "done.json"


def add_cache_option(parser) -> None:
    """Add ``--cache DIR`` to an argparse parser."""
    parser.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR",
                        help=f"folder of the cached simulated captures (default {DEFAULT_CACHE})")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / KIB_PER_MIB**2
    except OSError:
        pass
    return None


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parents[1], timeout=10,
                             check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False,
                               cwd=Path(__file__).resolve().parents[1])
        if out.returncode == 0:
            return out.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def machine_info() -> dict[str, object]:
    """What the figures depend on: CPU, cores, memory, load, library versions, commit."""
    import cv2
    import ducc0

    mem = _mem_total_gib()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory": f"{mem:.1f} GiB" if mem else "unknown",
        "load average": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "ducc0 (FFT)": ducc0.__version__,
        "opencv": cv2.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "commit": _git_commit(),
    }


def named_luminances(parser, items: list[str]) -> list[tuple[str, np.ndarray]]:
    """``NAME=IMAGE`` arguments read as ``(name, float32 luminance)``; a malformed one is
    a usage error naming it (``parser.error``)."""
    from live_stack.frames import luminance, to_float32
    from live_stack.io.images import read_image

    named = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"{item!r} is not NAME=IMAGE")
        named.append((name, luminance(to_float32(read_image(Path(path))[0]))))
    return named


def print_header(title: str) -> None:
    """Print the benchmark's title, command line, date and machine."""
    print(f"# {title}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    for key, value in machine_info().items():
        print(f"{key}: {value}")
    print(flush=True)


@dataclass(frozen=True)
class Capture:
    """A cached simulated capture."""

    folder: Path  # the capture's folder
    video: Path  # video.ser
    truth: Path  # truth.tif
    frames: int  # frames in video.ser
    width: int
    height: int


def _key(**params: object) -> str:
    return "-".join(f"{k}{v}" for k, v in params.items() if v is not None)


def cached_capture(cache: str | os.PathLike[str], scene: str, *, frames: int, width: int,
                   height: int, bits: int = 8, seeing: str = "normal",
                   drift: float | None = None, seed: int = SEED) -> Capture:
    """A simulated capture of distinct frames, rendered once into ``cache``."""
    from live_stack.simulate import simulate_capture

    params = dict(scene=scene, n=frames, w=width, h=height, bits=bits, seeing=seeing,
                  drift=drift, seed=seed)
    folder = Path(cache) / _key(**params)
    done = folder / DONE_NAME
    if not (done.is_file() and json.loads(done.read_text()) == params):
        print(f"(simulating {frames} {width}x{height} {scene} frames into {folder} ...)",
              flush=True)
        simulate_capture(scene, frames=frames, out_dir=folder, seed=seed, bits=bits,
                         width=width, height=height, drift=drift, seeing=seeing)
        done.write_text(json.dumps(params))
    return Capture(folder=folder, video=folder / "video.ser", truth=folder / "truth.tif",
                   frames=frames, width=width, height=height)


def cycled_capture(cache: str | os.PathLike[str], scene: str, *, frames: int, width: int,
                   height: int, distinct: int, bits: int = 8, seed: int = SEED) -> Capture:
    """A long capture that cycles through ``distinct`` simulated frames (cached).

    The per-frame work of the pipeline does not depend on whether frames repeat, and
    rendering thousands of large frames would take longer than the benchmark itself.
    """
    from live_stack.io import open_source
    from live_stack.io.ser import SerWriter

    distinct = min(distinct, frames)
    base = cached_capture(cache, scene, frames=distinct, width=width, height=height,
                          bits=bits, seed=seed)
    if distinct == frames:
        return base
    params = dict(scene=scene, n=frames, w=width, h=height, bits=bits, distinct=distinct,
                  seed=seed)
    folder = Path(cache) / _key(**params)
    done = folder / DONE_NAME
    if not (done.is_file() and json.loads(done.read_text()) == params):
        print(f"(writing {frames} frames cycled from {distinct} into {folder} ...)",
              flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        with open_source(base.video) as src, SerWriter(
                folder / "video.ser", width=width, height=height, bit_depth=bits,
                observer="live-stack benchmark") as writer:
            stamps = src.timestamps()
            period = float(np.median(np.diff(stamps))) if stamps is not None else 0.01
            start = float(stamps[0]) if stamps is not None else 0.0
            for i in range(frames):
                writer.write(src[i % distinct], start + i * period)
        (folder / "truth.tif").write_bytes(base.truth.read_bytes())
        done.write_text(json.dumps(params))
    return Capture(folder=folder, video=folder / "video.ser", truth=folder / "truth.tif",
                   frames=frames, width=width, height=height)


#: Child-process wrapper: run ``live-stack ARGS...`` in this very process and print its
#: own peak resident set (VmHWM) as the last line of stderr, in JSON.
_RSS_WRAPPER = r"""
import json, resource, sys
from live_stack.cli import main
code = main(sys.argv[1:])
hwm = None
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
print(json.dumps({"code": code, "vmhwm_kib": hwm,
                  "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}),
      file=sys.stderr)
sys.exit(code)
"""


def peak_rss_command(args: list[str], *, timeout: float) -> dict[str, object]:
    """Run ``live-stack ARGS`` in a fresh child process; return its exit code, wall time
    and peak resident set in MiB (its own VmHWM, and ru_maxrss from wait4)."""
    import time

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _RSS_WRAPPER, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"live-stack {shlex.join(args)} took more than {timeout} s") from None
    wall = time.perf_counter() - t0
    lines = err.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if proc.returncode != 0:
        raise RuntimeError(f"live-stack {shlex.join(args)} failed ({proc.returncode}):\n{err}")
    return {
        "code": proc.returncode,
        "wall_s": wall,
        "vmhwm_mib": (report.get("vmhwm_kib") or 0) / KIB_PER_MIB,
        "ru_maxrss_mib": (report.get("ru_maxrss_kib") or 0) / KIB_PER_MIB,
        "stdout": out,
    }


def median(values: list[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))
