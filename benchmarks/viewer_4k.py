"""How much GUI time the viewer spends on 4k stacks, and how late its event loop runs.

A publisher on a loopback port sends 3840x2160 uint16 stacks (and a status) every
PERIOD seconds; a MainWindow (offscreen) shows them with the AP grid on. Prints the GUI
thread's time per wake-up (taking the stack, setImage and painting) and the lateness
of a 10 ms timer (what a user would feel as stutter).

    python3 benchmarks/viewer_4k.py [PERIOD_S] [DURATION_S]
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import zmq

#: Stack size (4k UHD).
HEIGHT, WIDTH = 2160, 3840
#: Side and spacing of the AP boxes drawn (pixels).
AP_SIZE = 128
#: Period of the probe timer (ms).
PROBE_MS = 10
#: Wake-ups and probe ticks ignored at the start (start-up effects).
SKIP_WAKEUPS, SKIP_TICKS = 1, 50


def main(argv: list[str]) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from daemon import protocol
    from viewer.link import DaemonLink, LinkParams
    from viewer.window import MainWindow

    period = float(argv[0]) if argv else 1.0
    duration = float(argv[1]) if len(argv) > 1 else 10.0
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = ((np.sin(xx / 50.0) * np.cos(yy / 70.0) + 1) * 30000).astype(np.uint16)
    centres = [[y, x] for y in range(AP_SIZE, HEIGHT - AP_SIZE, AP_SIZE)
               for x in range(AP_SIZE, WIDTH - AP_SIZE, AP_SIZE)]
    sent = [0]

    def publish() -> None:
        seq = 0
        while not stop.wait(period):
            seq += 1
            image = np.roll(base, seq * 7, axis=1)
            meta = {"stats": {}, "ap_centres": centres, "ap_size": AP_SIZE}
            parts = protocol.encode_image(image, kind="stack", seq=seq, meta=meta)
            pub.send_multipart([protocol.TOPIC_STACK, *parts])
            pub.send_multipart([protocol.TOPIC_STATUS, protocol.pack({"state": "running"})])
            sent[0] = seq

    publisher = threading.Thread(target=publish)
    publisher.start()
    app = QApplication.instance() or QApplication([])
    link = DaemonLink(LinkParams(publish_endpoint=f"tcp://127.0.0.1:{port}"))
    window = MainWindow(link)
    window.resize(1600, 1000)
    window.stack_view.grid_box.setChecked(True)
    window.show()
    costs: list[float] = []
    take = window._take  # the window's handler of the link's wake-ups

    def timed_take() -> None:
        t0 = time.perf_counter()
        take()
        window.stack_view.graphics.viewport().repaint()
        costs.append(time.perf_counter() - t0)

    link.arrived.disconnect(take)
    link.arrived.connect(timed_take)
    link.start()
    late: list[float] = []
    last = [time.perf_counter()]
    probe = QTimer()
    probe.setInterval(PROBE_MS)

    def tick() -> None:
        now = time.perf_counter()
        late.append(now - last[0] - PROBE_MS / 1000)
        last[0] = now

    probe.timeout.connect(tick)
    probe.start()
    QTimer.singleShot(round(duration * 1000), app.quit)
    app.exec()
    window.close()
    stop.set()
    publisher.join()
    ctx.destroy(linger=0)
    c = np.array(costs[SKIP_WAKEUPS:]) * 1000
    lat = np.array(late[SKIP_TICKS:]) * 1000
    print(f"4k stacks every {period:g} s for {duration:g} s: {sent[0]} sent, "
          f"{window.stacks_shown} shown, {window.stale_stacks} skipped as stale")
    print(f"GUI time per wake-up (take + setImage + paint): median {np.median(c):.0f} ms, "
          f"max {c.max():.0f} ms")
    print(f"{PROBE_MS} ms timer lateness: median {np.median(lat):.1f} ms, "
          f"p99 {np.percentile(lat, 99):.0f} ms, max {lat.max():.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
