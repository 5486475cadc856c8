"""What a raw-frame preview costs the daemon's publisher thread (daemon/preview.py).

For each frame size and layout, :func:`daemon.preview.encode_preview` (decimation to the
byte budget, the per-channel histogram and clipped share, the encoding) is timed on a
noisy frame. Printed per case: the median milliseconds per preview, the share of one
core it takes at the default rate (five previews a second), the decimation and the bytes
sent. The ingest thread only keeps a reference to the newest frame; this is the whole
cost of the live view, and it is paid on the publisher's thread.

Usage::

    python benchmarks/preview_cost.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import msgpack
import numpy as np

from daemon.preview import PreviewParams, encode_preview

#: (label, height, width, dtype, layout) of the frames timed.
CASES = (
    ("640x480 mono 8-bit", 480, 640, np.uint8, "mono"),
    ("1280x960 RGGB 16-bit", 960, 1280, np.uint16, "RGGB"),
    ("1920x1080 rgb 8-bit", 1080, 1920, np.uint8, "rgb"),
    ("3840x2160 mono 16-bit", 2160, 3840, np.uint16, "mono"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="previews timed per case")
    args = parser.parse_args()
    params = PreviewParams()
    rng = np.random.default_rng(0)
    print(f"preview every {params.interval:g} s, at most {params.max_bytes // 1024} KiB")
    print(f"{'frame':24s} {'ms/preview':>10s} {'core share':>10s} {'1/k':>4s} {'bytes':>8s}")
    for label, h, w, dtype, layout in CASES:
        shape = (h, w, 3) if layout == "rgb" else (h, w)
        top = np.iinfo(dtype).max
        frame = rng.integers(0, top, shape, dtype=dtype, endpoint=True)
        header = {"seq": 0, "time": time.time(), "width": w, "height": h, "layout": layout,
                  "dtype": np.dtype(dtype).name, "source": "bench", "meta": {}}
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            parts = encode_preview(header, frame, params, focus={})
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1000
        meta = msgpack.unpackb(bytes(parts[1]))["meta"]
        print(f"{label:24s} {ms:10.1f} {ms / 1000 / params.interval:10.1%} "
              f"{meta['decimation']:4d} {len(parts[2]):8d}")


if __name__ == "__main__":
    main()
