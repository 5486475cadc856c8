"""``live-stack demo`` (small), ``live-stack keys`` and the systemd units."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon.cli import keys_main
from daemon.demo import DemoParams, main

UNITS = Path(__file__).parents[2] / "systemd"


def test_demo_leaves_the_stack_beside_the_truth(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from live_stack.io.images import read_image

    out = tmp_path / "demo"
    rc = main(["--frames", "60", "--size", "160x120", "--fps", "0", "--out", str(out),
               "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    stack, meta = read_image(out / "stack.tif")
    truth, _ = read_image(out / "truth.tif")
    assert truth.shape == (120, 160)
    assert 100 <= stack.shape[0] <= 120 and 140 <= stack.shape[1] <= 160
    assert meta["frames"] == 60
    assert (out / "capture" / "video.ser").is_file()
    log = next((out / "daemon").glob("session-*.log")).read_text()
    assert "daemon session" in log and "daemon stopped" in log
    m = re.search(r"stack ([\d.]+) dB .* single frame ([\d.]+) dB", printed)
    assert m, printed
    assert float(m.group(1)) > float(m.group(2))  # stacking beats a single frame
    assert "stacked 60 frames" in printed and "(0 dropped)" in printed


@pytest.mark.parametrize("args", [["--frames", "0"], ["--size", "12x10"], ["--fps", "-1"]])
def test_demo_bad_arguments(args: list[str], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err


def test_demo_params_checks() -> None:
    with pytest.raises(ValueError, match="frames"):
        DemoParams(frames=True)


def test_keys_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert keys_main([str(tmp_path / "k")]) == 0
    printed = capsys.readouterr().out
    assert "server.key_secret" in printed and "client.key_secret" in printed
    assert (tmp_path / "k" / "authorized_clients" / "client.key").is_file()
    assert keys_main([str(tmp_path / "k")]) == 1  # never overwrites
    assert "already exist" in capsys.readouterr().err
    assert keys_main([str(tmp_path / "k"), "--client", "viewer", "--client-only"]) == 0
    assert (tmp_path / "k" / "authorized_clients" / "viewer.key").is_file()


@pytest.mark.parametrize("unit", ["live-stack-daemon.service", "live-stack-source@.service"])
def test_systemd_units(unit: str, tmp_path: Path, live_stack_command: str) -> None:
    text = (UNITS / unit).read_text()
    for directive in ("DynamicUser=yes", "ProtectSystem=strict", "ProtectHome=",
                      "PrivateTmp=yes", "NoNewPrivileges=yes", "StateDirectory="):
        assert directive in text, directive
    if unit == "live-stack-daemon.service":
        assert "Type=notify" in text and "WatchdogSec=" in text
    else:
        assert "source --config ${CONFIGURATION_DIRECTORY}/sources/%i.toml" in text
    # systemd-analyze comes with Debian's systemd package, which scripts/setup.sh installs
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is not on PATH: run bash scripts/setup.sh"
    name = unit.replace("@.", "@test.")
    (tmp_path / name).write_text(text.replace("/usr/local/bin/live-stack", live_stack_command))
    r = subprocess.run([analyze, "verify", "--man=no", name], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
