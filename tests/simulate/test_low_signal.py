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
#: (``live-stack reprocess video.ser --stack 12 --mode surface``); 7e98b68 0.17, this
#: code 0.12 (a grid twice as dense, its rim boxes on the frame's edges).
EVENNESS_BOUND = 0.16


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


#: PSNR (dB) by which the grid laid twice as dense against the noise must beat the usual
#: grid on this capture (measured: 37.02 against 36.55 dB, stack of 12).
DENSE_GAIN = 0.15


def test_the_grid_is_laid_twice_as_dense_against_the_noise(capture) -> None:
    """A frame's detail is under its noise here: the grid is laid twice as dense, every
    AP still stacks the asked number of frames, and the stack is closer to the truth than
    with the usual grid (``ap_dense_below`` 0)."""
    from live_stack.apgrid import APParams
    from live_stack.simulate.score import score

    truth, _ = read_image(capture.truth)
    results = {}
    for below in (APParams().dense_below, 0.0):
        with open_source(capture.video) as frames:
            results[below] = run(frames, PipelineParams(
                stack_sizes=(str(STACK),), align=AlignParams(mode="surface"),
                ap=APParams(dense_below=below)))
    dense, usual = results[APParams().dense_below], results[0.0]
    assert dense.grid.dense and dense.grid.detail < 1.0 and not usual.grid.dense
    assert dense.grid.step <= APParams().spacing_at(0.0) < usual.grid.step
    assert len(dense.grid) > 2 * len(usual.grid)
    assert dense.summary()["ap_dense"] is True
    assert np.array_equal(dense.ap_frames[0], np.full(len(dense.grid), STACK))
    gain = score(dense.stacks[0].image, truth).psnr - score(usual.stacks[0].image, truth).psnr
    assert gain > DENSE_GAIN
    assert noise_evenness(dense.stacks[0].image, truth) < EVENNESS_BOUND


#: The same for the live stacker's snapshot (window everything, 12 frames per AP):
#: commit 9b08467 scores 0.44 on this capture, 7e98b68 0.13, this code 0.14.
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
    # the same rule lays the live grid: twice as dense as the usual one here (16 APs)
    assert m >= 30 and snap.stats["ap_dense"] is True and snap.stats["ap_detail"] < 1.0
    assert len(snap.stats["ap_fell_back"]) == m
    assert 0 < sum(snap.stats["ap_fell_back"]) <= snap.stats["local_failed"]


def test_live_replay_chooses_the_aps_frames_as_offline(capture) -> None:
    """On a faint capture both drivers choose each AP's frames by the coarser quality
    measure: a live replay that sees the whole capture before it starts stacks what the
    offline pipeline stacks."""
    from live_stack.live import LiveParams, LiveStacker

    with open_source(capture.video) as src:
        frames = [src[i] for i in range(len(src))]
    params = PipelineParams(stack_sizes=(str(STACK),), align=AlignParams(mode="surface"))
    offline = run(frames, params)
    assert offline.grid.faint
    n = len(frames)
    st = LiveStacker(LiveParams(buffer_size=n, window_frames=0, window_seconds=0.0,
                                stack_size=str(STACK), warmup=n, align=params.align,
                                reference=params.reference))
    for i in range(0, n, 10):
        st.add_batch(frames[i : i + 10], None)
    snap = st.snapshot()
    assert snap.box == offline.stacks[0].box
    np.testing.assert_allclose(snap.image, offline.stacks[0].image, atol=1e-3)


def test_live_measures_the_coarser_cells_only_where_a_grid_needs_them(capture, sim_capture):
    """Live, the coarser measure is taken for every buffered frame on a faint capture's
    grid, and on a bright capture's only during the warm-up (before the first grid)
    and, for the frames without it, when a faint grid is laid: then it is what
    quality_map() gives."""
    from live_stack.live import LiveParams, LiveStacker
    from live_stack.quality import quality_map

    with open_source(capture.video) as src:
        faint_frames = [src[i] for i in range(len(src))]
    bright = sim_capture("moon").frames
    for frames, faint in ((faint_frames, True), (bright, False)):
        st = LiveStacker(LiveParams(buffer_size=len(frames), window_frames=0,
                                    window_seconds=0.0, stack_size=str(STACK)))
        for i in range(0, len(frames), 10):
            st.add_batch(frames[i : i + 10], None)
        assert st.snapshot().image is not None
        slots = st._filled()
        assert st._state.grid.faint is faint
        assert bool(st._faint_ok[slots].all()) == faint
        assert st._faint_ok[slots].any()  # the warm-up's frames at least
        st._measure_faint(slots)
        assert st._faint_ok[slots].all()
        for s in slots[:5]:
            expected = quality_map(st._frames[s], st.params.quality).faint
            rows, cols = st._cells.shape[2:]
            np.testing.assert_array_equal(st._cells[s, 1], expected[:rows, :cols])
