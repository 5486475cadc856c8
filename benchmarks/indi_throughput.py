"""INDI source throughput: frames per second from the CCD simulator, and CPU per frame.

Starts ``indiserver`` with ``indi_simulator_ccd`` on a free port (its own ``HOME``, so the
simulator's saved settings stay out of yours), runs ``live-stack source indi`` as its own
process at the simulator's highest rate (streaming exposure 1 ms, preview limit lifted),
and counts the frames that arrive:

- at a PULL socket (the default), or
- ``--daemon``: at a real daemon (``daemon.service.StackingService`` around the live
  stacker), counted from the daemon's status messages.

It prints the frames per second delivered over the measuring window (after a warm-up)
and the source process's CPU time per frame (user + system time of that process over the
window, i.e. its ``time.process_time``, divided by the frames). Needs Debian's indi-bin
and pyindi-client::

    python benchmarks/indi_throughput.py [--mode stream|exposure] [--binning N]
                                         [--seconds S] [--daemon]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: Seconds of frames before the measuring window opens.
WARMUP_S = 3.0
#: Seconds to wait for indiserver to listen / for the first frame.
START_TIMEOUT_S = 30.0
#: Seconds to wait for a process to exit after SIGTERM.
EXIT_TIMEOUT_S = 10.0
#: The simulator's polling period (ms): its exposures end on this timer.
SIM_POLLING_MS = 10
SIM_DEVICE = "CCD Simulator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_indiserver(home: Path) -> tuple[subprocess.Popen[bytes], int]:
    """indiserver with the CCD simulator; returns once it listens."""
    port = free_port()
    proc = subprocess.Popen(
        ["indiserver", "-v", "-p", str(port), "-u", f"/live-stack-bench-indi-{port}",
         "indi_simulator_ccd"],
        env=dict(os.environ, HOME=str(home)), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    listening = threading.Event()
    needle = f"listening to port {port}".encode()

    def drain() -> None:  # also keeps the pipe from filling up
        assert proc.stderr is not None
        for line in proc.stderr:
            if needle in line:
                listening.set()
        listening.set()

    threading.Thread(target=drain, daemon=True).start()
    if not listening.wait(START_TIMEOUT_S) or proc.poll() is not None:
        proc.kill()
        raise SystemExit("indiserver did not start")
    subprocess.run(["indi_setprop", "-p", str(port), "-t", "5",
                    f"{SIM_DEVICE}.POLLING_PERIOD.PERIOD_MS={SIM_POLLING_MS}"],
                   check=True, capture_output=True)
    return proc, port


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PullCounter:
    """Frames arriving at a PULL socket."""

    def __init__(self) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.shape = ""

    def count_until(self, deadline: float, *, enough: int | None = None) -> int:
        """Frames received until ``deadline`` (time.monotonic) or ``enough`` of them."""
        from daemon.protocol import decode_image

        n = 0
        while (remaining := deadline - time.monotonic()) > 0 and n != enough:
            if self.sock.poll(int(remaining * 1000) + 1):
                header, _ = decode_image(self.sock.recv_multipart())
                self.shape = f"{header['width']}x{header['height']} {header['dtype']} " \
                             f"{header['layout']}"
                n += 1
        return n

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class DaemonCounter:
    """Frames arriving at a real daemon, read from its status messages."""

    def __init__(self, out: Path) -> None:
        from daemon.client import Subscriber
        from daemon.config import build_config
        from daemon.protocol import TOPIC_STATUS
        from daemon.service import StackingService
        from live_stack.live import LiveParams, LiveStacker

        any_port = "tcp://127.0.0.1:*"
        config = build_config({
            "endpoints": {"ingest": any_port, "publish": any_port, "control": any_port},
            "service": {"status_interval": 0.2},
            "output": {"directory": str(out), "save_interval": 0},
        })
        self.svc = StackingService(config, LiveStacker(LiveParams()))
        self.svc.start()
        self.endpoint = self.svc.endpoints.ingest
        self.sub = Subscriber(self.svc.endpoints.publish, topics=(TOPIC_STATUS,))
        self.shape = ""
        self.frames = 0

    def count_until(self, deadline: float, *, enough: int | None = None) -> int:
        """Frames the daemon got until ``deadline`` or ``enough`` of them."""
        start = self.frames
        while (remaining := deadline - time.monotonic()) > 0 and self.frames - start != enough:
            msg = self.sub.recv(timeout=remaining)
            if msg is None:
                continue
            for name, src in msg.header["sources"].items():
                if name.startswith("indi:"):
                    self.frames = src["frames"]
                    self.shape = f"{src['width']}x{src['height']} {src['dtype']} " \
                                 f"{src['layout']}"
        return self.frames - start

    def close(self) -> None:
        self.sub.close()
        self.svc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("stream", "exposure"), default="stream")
    parser.add_argument("--binning", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window")
    parser.add_argument("--daemon", action="store_true", help="count at a real daemon")
    args = parser.parse_args()
    for tool in ("indiserver", "indi_simulator_ccd", "indi_setprop"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install Debian's indi-bin")
    with tempfile.TemporaryDirectory(prefix="indi-bench-") as tmp:
        home = Path(tmp)
        server, port = start_indiserver(home)
        counter = DaemonCounter(home / "out") if args.daemon else PullCounter()
        code = "import sys; from daemon.sources.indi import main; sys.exit(main(sys.argv[1:]))"
        source = subprocess.Popen(
            [sys.executable, "-c", code, "--port", str(port), "--device", SIM_DEVICE,
             "--to", counter.endpoint, "--mode", args.mode, "--binning", str(args.binning),
             "--exposure", "0.001", "--log-level", os.environ.get("INDI_BENCH_LOG", "warning")],
            stdin=subprocess.DEVNULL)
        try:
            if not counter.count_until(time.monotonic() + START_TIMEOUT_S, enough=1):
                raise SystemExit("no frame arrived")
            counter.count_until(time.monotonic() + WARMUP_S)
            cpu0, t0 = cpu_seconds(source.pid), time.monotonic()
            frames = counter.count_until(t0 + args.seconds)
            cpu1, t1 = cpu_seconds(source.pid), time.monotonic()
        finally:
            stop(source)
            counter.close()
            stop(server)
    elapsed = t1 - t0
    cpu = cpu1 - cpu0
    print(f"INDI source, {args.mode} mode, binning {args.binning}, "
          f"{'through the daemon' if args.daemon else 'to a PULL socket'}")
    print(f"  frames               {counter.shape}")
    print(f"  delivered            {frames} frames in {elapsed:.1f} s = {frames / elapsed:.1f} fps")
    if frames:
        print(f"  source CPU           {cpu:.2f} s = {1000 * cpu / frames:.2f} ms/frame "
              f"({100 * cpu / elapsed:.0f}% of a core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
