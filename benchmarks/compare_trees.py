"""CPU time and peak memory of ``live-stack reprocess`` from two or more source trees, alternating.

On a shared machine a change's cost shows only against the code before it measured in
the same minutes. This script runs ``python -m live_stack.cli reprocess INPUT`` with each
tree on ``PYTHONPATH`` in turn, ``--rounds`` times over every input, from a scratch
folder (run from inside a checkout, ``-m`` would import that checkout's package ahead of
``PYTHONPATH``), and prints each run's user+system CPU seconds, peak RSS and AP count,
then the mean CPU and the largest peak RSS per tree and input. Wall time is left out:
it follows the machine's load more than the code.

Usage::

    git worktree add --detach /tmp/base b4b3227
    python3 benchmarks/compare_trees.py base=/tmp/base new=. \\
        --input ../shared/data/moon_pss_short.avi --input capture.ser [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import print_header

#: The AP count in reprocess's summary line, and the peak RSS the wrapper prints.
APS_RE = re.compile(r"(\d+) APs")
RSS_RE = re.compile(r"^PEAK_RSS_KIB (\d+)$", re.M)
#: Runs ``live_stack.cli`` as ``-m`` does, printing the process's peak RSS at exit.
WRAPPER = ("import atexit, resource, runpy, sys; atexit.register(lambda: sys.stderr.write("
           "'PEAK_RSS_KIB %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
           "sys.argv[0] = 'live-stack'; runpy.run_module('live_stack.cli', run_name='__main__')")


def run_once(python: str, tree: Path, video: Path, work: Path, extra: list[str]) -> dict:
    """One reprocess of ``video`` with ``tree``'s code: CPU seconds, peak RSS, APs."""
    out = work / "out.tif"
    out.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(tree))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([python, "-c", WRAPPER, "reprocess", str(video), "-o", str(out),
                           *extra], cwd=work, env=env, capture_output=True, text=True,
                          check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"reprocess with {tree} failed (rc {proc.returncode}): "
                 f"{proc.stderr.strip().splitlines()[-1:]}")
    aps = APS_RE.search(proc.stdout + proc.stderr)
    rss = RSS_RE.search(proc.stderr)
    return {"cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "rss_mib": int(rss.group(1)) / 1024.0 if rss else float("nan"),
            "aps": int(aps.group(1)) if aps else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trees", nargs="+", metavar="NAME=TREE",
                   help="source trees to compare (their folder holding live_stack/)")
    p.add_argument("--input", action="append", required=True, metavar="FILE",
                   help="a recording to stack (repeatable)")
    p.add_argument("--rounds", type=int, default=3, help="alternations (3)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter whose packages the trees run with (this one)")
    p.add_argument("--extra", default="", help="more reprocess options, one string")
    args = p.parse_args()
    trees = []
    for t in args.trees:
        name, sep, path = t.partition("=")
        if not sep or not (Path(path) / "live_stack").is_dir():
            p.error(f"{t!r} is not NAME=TREE with a live_stack/ folder in TREE")
        trees.append((name, Path(path).resolve()))
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    videos = [Path(v).resolve() for v in args.input]
    for v in videos:
        if not v.is_file():
            p.error(f"no such input: {v}")
    # each input by its name, or by its folder and name where two share a name
    names = [v.name for v in videos]
    label = {v: (f"{v.parent.name}/{v.name}" if names.count(v.name) > 1 else v.name)
             for v in videos}
    print_header("reprocess CPU and memory by source tree, alternating")
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="compare-trees-") as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            for video in videos:
                for name, tree in trees:
                    fig = run_once(args.python, tree, video, work, args.extra.split())
                    results.setdefault((name, label[video]), []).append(fig)
                    print(f"round {r + 1} {name:>10} {label[video]}: {fig['cpu']:.2f} s CPU, "
                          f"{fig['rss_mib']:.0f} MiB, {fig['aps']} APs", flush=True)
    print()
    print("| input | tree | APs | CPU s (each round) | mean CPU s | peak RSS MiB |")
    print("|---|---|---:|---|---:|---:|")
    for video in videos:
        for name, _ in trees:
            runs = results[(name, label[video])]
            cpu = [f["cpu"] for f in runs]
            rss = max(f["rss_mib"] for f in runs)
            print(f"| {label[video]} | {name} | {runs[0]['aps']} | "
                  f"{' / '.join(f'{c:.2f}' for c in cpu)} | {sum(cpu) / len(cpu):.2f} | "
                  f"{rss:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
