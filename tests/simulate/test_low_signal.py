"""Known answers in poor light: a low-contrast mare at 500 electrons in D/r0 = 7 seeing,
from the physical seeing model (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest

from live_stack.align import AlignParams, align
from live_stack.apgrid import APParams, lay_grid
from live_stack.io import open_source
from live_stack.io.images import read_image
from live_stack.local import LocalParams, ap_quality
from live_stack.pipeline import PipelineParams, run, stack_aps
from live_stack.quality import QualityParams, rank
from live_stack.reference import ReferenceParams, build_reference
from live_stack.simulate.score import noise_evenness

#: Frames per AP asked for.
STACK = 12
#: Noise evenness every stack must stay under. Commit 9b08467 (before issue 13: a frame
#: whose shift was rejected left that AP's stack) scores 0.28 on this capture
#: (``live-stack reprocess video.ser --stack 12 --mode surface``), this code 0.18 (its
#: grid reaches the edges of the frame, where one AP's stack is not averaged with its
#: neighbours'; b4b3227, whose grid left the edges to the reference, 0.16).
EVENNESS_BOUND = 0.22


@pytest.fixture(scope="module")
def capture(poor_light_capture):
    return poor_light_capture


def test_every_ap_stacks_the_asked_number_of_frames(capture) -> None:
    with open_source(capture.video) as frames:
        ranking = rank(frames, QualityParams())
        alignment = align(frames, ranking, AlignParams(mode="surface"))
        reference = build_reference(frames, ranking, alignment, ReferenceParams())
        grid = lay_grid(reference.luminance, APParams(), box=reference.box)
        engine, _ = stack_aps(frames, alignment, reference, grid,
                              ap_quality(ranking, alignment, grid), (STACK,), LocalParams())
    assert len(grid) >= 4
    # there were untrusted shifts, so the fallback was exercised
    assert engine.tally.fell_back == engine.fell_back().sum() > 0
    assert engine.tally.measured == STACK * len(grid)
    assert np.array_equal(engine.stacked(), np.full(len(grid), STACK))


def test_noise_is_even_across_the_object(capture) -> None:
    truth, _ = read_image(capture.truth)
    with open_source(capture.video) as frames:
        result = run(frames, PipelineParams(stack_sizes=(str(STACK),),
                                            align=AlignParams(mode="surface")))
    assert result.local_failed > 0
    assert noise_evenness(result.stacks[0].image, truth) < EVENNESS_BOUND


#: The same for the live stacker's snapshot (window everything, 12 frames per AP):
#: commit 9b08467 scores 0.44 on this capture, this code about 0.14.
LIVE_EVENNESS_BOUND = 0.2


def test_live_snapshot_noise_is_even_too(capture) -> None:
    """The live engine decides the local shifts with the same code: its snapshot is as
    even as the offline stack."""
    from live_stack.live import LiveParams, LiveStacker

    truth, _ = read_image(capture.truth)
    with open_source(capture.video) as src:
        frames = [src[i] for i in range(len(src))]
    st = LiveStacker(LiveParams(buffer_size=len(frames), window_frames=0, window_seconds=0.0,
                                stack_size=str(STACK)))
    for i in range(0, len(frames), 10):
        st.add_batch(frames[i : i + 10], None)
    snap = st.snapshot()
    assert snap.stats["local_failed"] > 0
    assert noise_evenness(snap.image, truth) < LIVE_EVENNESS_BOUND
    # where the stack is weak, per AP (the daemon's status carries these stats)
    m = len(snap.ap_centres)
    assert snap.stats["ap_frames"] == [STACK] * m
    assert len(snap.stats["ap_fell_back"]) == m
    assert 0 < sum(snap.stats["ap_fell_back"]) <= snap.stats["local_failed"]
