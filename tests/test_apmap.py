"""``reprocess --ap-map``: where the stack is weak, as a picture over it and as numbers."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from live_stack.apmap import APMap, ap_map_image, ap_map_records
from live_stack.io.images import read_image
from live_stack.reprocess_cli import main

STACK = 8


@pytest.fixture(scope="module")
def capture(poor_light_capture):
    return poor_light_capture


def test_map_picture_and_numbers_match_the_summary(capture, tmp_path, capsys) -> None:
    out, ap_map = tmp_path / "stack.tif", tmp_path / "map.png"
    code = main([str(capture.video), "-o", str(out), "-q", "--stack", str(STACK),
                 "--mode", "surface", "--ap-map", str(ap_map)])
    assert code == 0
    numbers = json.loads(ap_map.with_suffix(".json").read_text())
    _, meta = read_image(out)
    summary = meta["summary"]
    assert numbers["aps"] == summary["aps"] == len(numbers["records"])
    assert numbers["measured"] == summary["local_measured"]
    assert numbers["fell_back"] == summary["local_failed"] > 0
    assert numbers["frames_asked"] == STACK
    assert all(r["frames"] == STACK for r in numbers["records"])
    assert numbers["aps_short_of_frames"] == 0
    assert sum(r["fell_back"] for r in numbers["records"]) == numbers["fell_back"]
    picture = cv2.imread(str(ap_map), cv2.IMREAD_COLOR)
    stack, _ = read_image(out)
    assert picture.shape[:2] == stack.shape[:2]
    # the AP whose shifts fell back most is redder than the one that fell back least
    records = numbers["records"]
    worst = max(records, key=lambda r: r["fell_back_share"])
    best = min(records, key=lambda r: r["fell_back_share"])
    assert worst["fell_back_share"] > best["fell_back_share"]

    def redness(r: dict) -> float:
        b, g, red = picture[r["y"], r["x"]].astype(float)
        return red - g

    assert redness(worst) > redness(best)
    printed = capsys.readouterr().out
    assert "fell back" in printed
    assert f"AP map: {ap_map}" in printed


def test_map_draws_colour_by_share_and_counts_short_boxes() -> None:
    image = np.full((120, 240), 0.5, np.float32)
    ap_map = APMap(centres=np.array([[60, 60], [60, 180]]), size=64, cell=48,
                   frames=np.array([10, 4]), fell_back=np.array([0, 10]),
                   measured=np.array([10, 10]), asked=10)
    picture = ap_map_image(image, ap_map)
    assert picture.shape == (120, 240, 3)
    b, g, r = picture[60, 60].astype(int)
    assert g > r + 20  # no shift fell back: green
    b, g, r = picture[60, 180].astype(int)
    assert r > g + 20  # every shift fell back: red
    left = picture[36:84, 36:84]
    right = picture[36:84, 156:204]
    # the short box (4 of 10 frames) carries its count in white; the full one does not
    assert (right.min(axis=2) > 150).sum() > 5
    assert (left.min(axis=2) > 150).sum() == 0
    numbers = ap_map_records(ap_map)
    assert numbers["aps_short_of_frames"] == 1
    assert [r["fell_back_share"] for r in numbers["records"]] == [0.0, 1.0]


def test_map_of_a_large_stack_is_small() -> None:
    image = np.zeros((1600, 2400, 3), np.float32)
    ap_map = APMap(centres=np.array([[800, 1200]]), size=64, cell=48,
                   frames=np.array([5]), fell_back=np.array([0]), measured=np.array([5]),
                   asked=5)
    assert ap_map_image(image, ap_map).shape == (533, 800, 3)


@pytest.mark.parametrize(("fields", "message"), [
    ({"frames": np.array([1])}, "frames"), ({"asked": 0}, "asked"),
    ({"centres": np.zeros((2, 3))}, "centres"),
])
def test_bad_map_figures_are_named(fields: dict, message: str) -> None:
    args = dict(centres=np.zeros((2, 2), int), size=64, cell=48, frames=np.array([1, 1]),
                fell_back=np.array([0, 0]), measured=np.array([1, 1]), asked=1)
    with pytest.raises(ValueError, match=message):
        APMap(**{**args, **fields})


def test_bad_ap_map_options_fail_before_stacking(capture, tmp_path, capsys) -> None:
    out = tmp_path / "s.tif"
    (tmp_path / "d.png").mkdir()
    video = str(capture.video)
    cases = [  # a bad option is a usage error (2), an unwritable place an OS one (1)
        ([video, "--ap-map", str(tmp_path / "map.jpg")], ".png file", 2),
        ([video, "--ap-map", str(tmp_path / "missing" / "map.png")], "missing", 1),
        ([video, video, "--ap-map", str(tmp_path / "map.png")], "one INPUT", 2),
        ([video, "--ap-map", str(tmp_path / "d.png")], "is a folder", 2),
    ]
    for args, message, expected in cases:
        code = main([*args, "-o", str(out), "-q"])
        assert code == expected
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_summary_says_why_an_ap_is_short_of_frames(tmp_path, capsys) -> None:
    """A capture drifting by most of a frame: the APs near the edges lie inside only
    some frames, so they stack fewer than asked, and the summary and the map say so."""
    from live_stack.simulate import simulate_capture
    from live_stack.simulate.turbulence import TurbulenceParams

    cap = simulate_capture("mare", frames=60, out_dir=tmp_path / "drift", seed=0,
                           width=192, height=192, drift=150.0,
                           seeing=TurbulenceParams(d_over_r0=3.0, electrons=2000.0))
    ap_map = tmp_path / "map.png"
    code = main([str(cap.video), "-o", str(tmp_path / "s.tif"), "-q", "--stack", "90%",
                 "--ap-map", str(ap_map)])
    assert code == 0
    numbers = json.loads(ap_map.with_suffix(".json").read_text())
    short = [r["frames"] for r in numbers["records"] if r["frames"] < numbers["frames_asked"]]
    assert numbers["aps_short_of_frames"] == len(short) > 0
    out = capsys.readouterr().out
    assert f"{len(short)} of {numbers['aps']} APs stacked fewer than" in out
    assert f"as few as {min(short)}" in out
    assert "outside the other frames" in out
