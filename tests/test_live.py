"""The live stacker (issue 3 acceptance) on the project's own simulated captures:
equivalence with the offline pipeline, convergence, tracking drift, worsening seeing and
a new target, bad frames, parameters, batches and the bounded buffer."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from live_stack.live import PROMOTE_FILLED, AddResult, LiveParams, LiveStacker
from live_stack.pipeline import PipelineParams, run
from live_stack.reference import mean_aligned
from live_stack.simulate import canvas_margin, render_scene
from live_stack.simulate.score import score

#: Frames per add_batch call, as a driver would hand them over.
CHUNK = 10
#: Largest PSNR difference (dB) between a live replay that collects the whole capture
#: before it starts and the offline pipeline (measured: 0.000 on every scene).
EQUIVALENCE_DB = 0.05
#: The same with the default warm-up: the live target, reference and grid are made of
#: the first frames only, so the stack differs a little.
WARMUP_DB = 0.5
#: The last snapshot is within this many dB of the best one (convergence).
SETTLED_DB = 0.3


def everything(n: int, **kw) -> LiveParams:
    """Window "everything so far" and a buffer that holds the whole capture."""
    return LiveParams(buffer_size=max(n, 2), window_frames=0, window_seconds=0.0, **kw)


def feed(st: LiveStacker, frames, timestamps=None, *, every: int | None = None,
         truth=None) -> list[float]:
    """add_batch in chunks; with ``every``, score a snapshot every that many frames."""
    psnrs = []
    for i in range(0, len(frames), CHUNK):
        stamps = None if timestamps is None else list(timestamps[i : i + CHUNK])
        st.add_batch(frames[i : i + CHUNK], stamps)
        if every and (i + CHUNK) % every == 0:
            snap = st.snapshot()
            if snap is not None:
                psnrs.append(score(snap.image, truth).psnr)
    return psnrs


# ---------------------------------------------------------------- equivalence
@pytest.mark.parametrize("scene", ["moon", "planet", "sun"])
def test_replay_is_the_offline_stack(sim_capture, scene) -> None:
    """Window everything, the same frames per AP and the same reference rule, the whole
    capture collected before the start: the live stacker makes every decision on the
    same frames by the same rules as the offline pipeline, so the stacks agree."""
    cap = sim_capture(scene)
    offline = run(cap.frames, PipelineParams()).stacks[0]
    n = len(cap.frames)
    st = LiveStacker(everything(n, stack_size=str(offline.frames_per_ap), warmup=n,
                                reference=PipelineParams().reference))
    feed(st, cap.frames, cap.info.timestamps)
    snap = st.snapshot()
    assert snap.stats["frames_per_ap"] == offline.frames_per_ap
    assert snap.box == offline.box
    live_psnr = score(snap.image, cap.truth).psnr
    offline_psnr = score(offline.image, cap.truth).psnr
    assert live_psnr == pytest.approx(offline_psnr, abs=EQUIVALENCE_DB)
    np.testing.assert_allclose(snap.image, offline.image, atol=1e-3)


@pytest.mark.parametrize("scene", ["moon", "planet", "sun"])
def test_replay_after_the_default_warmup_is_close(sim_capture, offline_result, scene) -> None:
    """Frame by frame, window everything, the same frames per AP: within 0.5 dB."""
    cap = sim_capture(scene)
    offline = offline_result(scene).stacks[0]
    st = LiveStacker(everything(len(cap.frames), stack_size=str(offline.frames_per_ap)))
    results = [st.add(f, timestamp=float(t)) for f, t in
               zip(cap.frames, cap.info.timestamps, strict=True)]
    assert all(isinstance(r, AddResult) for r in results)
    assert results[0].reason == "warmup" and not results[0].admitted
    snap = st.snapshot()
    assert snap is not None
    assert snap.stats["frames_seen"] == len(cap.frames)
    assert snap.stats["frames_per_ap"] == offline.frames_per_ap
    live_psnr = score(snap.image, cap.truth).psnr
    offline_psnr = score(offline.image, cap.truth).psnr
    assert live_psnr == pytest.approx(offline_psnr, abs=WARMUP_DB)


# ---------------------------------------------------------------- convergence
def test_snapshots_converge(sim_capture) -> None:
    cap = sim_capture("moon", frames=300)
    st = LiveStacker(LiveParams())
    psnrs = feed(st, cap.frames, cap.info.timestamps, every=30, truth=cap.truth)
    assert len(psnrs) >= 8
    assert psnrs[-1] > psnrs[0] + 0.5, psnrs  # it rises
    assert psnrs[-1] >= max(psnrs) - SETTLED_DB, psnrs  # and settles near its best
    # the first snapshot already beats any single frame's worth of seeing noise
    best_frame = max(score(f, cap.truth).psnr for f in cap.frames[:40:4])
    assert psnrs[0] > best_frame


# ---------------------------------------------------------------- tracking
def _truth_around(cap, offset, pad=20) -> np.ndarray:
    """The sharp scene a frame with global ``offset`` shows, with ``pad`` px around."""
    info = cap.info
    margin = canvas_margin(info.offsets, info.params)
    canvas = render_scene(info.scene, width=info.width + 2 * margin,
                          height=info.height + 2 * margin, seed=info.seed,
                          scale=float(info.height))
    oy, ox = (int(round(v)) for v in offset)
    y0, x0 = margin + oy - pad, margin + ox - pad
    assert y0 >= 0 and x0 >= 0
    return canvas[y0 : y0 + info.height + 2 * pad, x0 : x0 + info.width + 2 * pad]


def test_follows_a_drift_of_200_px(sim_capture) -> None:
    cap = sim_capture("moon", frames=400, drift=200.0)
    window = 100
    st = LiveStacker(LiveParams(window_frames=window))
    feed(st, cap.frames, cap.info.timestamps)
    snap = st.snapshot()
    events = snap.stats["events"]
    assert events.get("reanchor", 0) >= 1 and events.get("grid", 0) >= 2
    assert snap.stats["buffer_fill"] <= window
    assert snap.stats["evicted"].get("window", 0) >= len(cap.frames) - window - 40
    # score against the part of the scene the recent frames show
    recent = cap.frames[-window:]
    truth = _truth_around(cap, cap.info.offsets[-window:].mean(axis=0))
    live = score(snap.image, truth)
    offline = run(recent, PipelineParams())
    usable = [int(i) for i in offline.ranking.order if offline.alignment.ok[i]]
    best = usable[: max(1, round(0.1 * len(usable)))]
    y0, x0, y1, x1 = offline.stacks[0].box
    mean_best = mean_aligned([recent[i] for i in best], offline.alignment.shifts[best])
    baseline = score(mean_best[y0:y1, x0:x1], truth).psnr
    best_frame = score(recent[usable[0]], truth).psnr
    assert live.psnr > best_frame + 1.0, (live.psnr, best_frame)
    assert live.psnr > baseline, (live.psnr, baseline)  # no ghosting
    assert snap.image.shape[0] > 0.7 * cap.info.height
    assert snap.image.shape[1] > 0.7 * cap.info.width


def test_worsening_seeing_stays_sharp(sim_capture) -> None:
    cap = sim_capture("moon", frames=300, seeing="worsening")
    assert cap.info.blur_sigma[150:].mean() > 1.5 * cap.info.blur_sigma[:150].mean()
    st = LiveStacker(everything(len(cap.frames), stack_size="30"))
    psnrs = feed(st, cap.frames, cap.info.timestamps, every=30, truth=cap.truth)
    half = psnrs[len(psnrs) // 2 - 1]
    # the bad half does not drag it down (8ba07e1: 0.099 dB below; three of its worst frames
    # that the fixed strength test dropped are now aligned on their coarse field: 0.101)
    assert psnrs[-1] >= half - 0.15, psnrs
    assert psnrs[-1] >= max(psnrs) - SETTLED_DB, psnrs
    stats = st.stats()
    assert stats["dropped"]["quality"] == 0  # the buffer holds everything here ...
    # ... but the per-AP selection keeps the good first half
    assert stats["frames_per_ap"] == 30


def test_worsening_seeing_with_a_small_buffer_drops_bad_frames(sim_capture) -> None:
    cap = sim_capture("moon", frames=300, seeing="worsening")
    st = LiveStacker(LiveParams(buffer_size=60, stack_size="50%", warmup=40))
    feed(st, cap.frames, cap.info.timestamps)
    stats = st.stats()
    assert stats["buffer_fill"] == 60
    assert stats["dropped"]["quality"] > 100  # most of the worse half never gets in
    assert score(st.snapshot().image, cap.truth).psnr > score(cap.frames[0], cap.truth).psnr


def test_new_target_resets_by_itself(sim_capture) -> None:
    moon = sim_capture("moon", frames=300)
    sun = sim_capture("sun", frames=300)
    st = LiveStacker(LiveParams())
    feed(st, moon.frames[:150])
    assert st.stats()["events"].get("scene_reset", 0) == 0
    reset_at = None
    for i in range(0, len(sun.frames), CHUNK):
        st.add_batch(sun.frames[i : i + CHUNK])
        if reset_at is None and st.stats()["events"].get("scene_reset", 0):
            reset_at = i + CHUNK
    assert reset_at is not None and reset_at <= 200, reset_at
    snap = st.snapshot()
    assert snap.stats["events"]["scene_reset"] == 1
    assert snap.stats["dropped"]["alignment"] >= LiveParams().reset_after
    best_frame = max(score(f, sun.truth).psnr for f in sun.frames[-60::6])
    sun_psnr = score(snap.image, sun.truth).psnr
    assert sun_psnr > best_frame  # the stack is the sun's
    try:
        moon_psnr = score(snap.image, moon.truth).psnr
    except ValueError:  # cannot even be registered on the moon
        moon_psnr = -math.inf
    assert moon_psnr < sun_psnr - 5


# ---------------------------------------------------------------- frames and dtypes
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_frame_dtypes(sim_capture, dtype) -> None:
    cap = sim_capture("moon")
    frames = cap.frames[:80]
    if dtype == "float32":
        frames = [f.astype(np.float32) / np.float32(255) for f in frames]
    elif dtype == "uint16":
        frames = [f.astype(np.uint16) * np.uint16(257) for f in frames]
    st = LiveStacker(LiveParams())
    assert st.snapshot() is None
    feed(st, frames)
    snap = st.snapshot()
    assert snap.image.dtype == np.float32
    assert 0.0 <= float(snap.image.min()) and float(snap.image.max()) <= 1.0 + 1e-3
    assert score(snap.image, cap.truth).psnr > score(cap.frames[0], cap.truth).psnr + 1.0


def test_colour_frames(sim_capture) -> None:
    cap = sim_capture("moon", frames=60, colour=True)
    st = LiveStacker(LiveParams(warmup=30))
    feed(st, cap.frames)
    snap = st.snapshot()
    assert snap.image.ndim == 3 and snap.image.shape[2] == 3
    assert score(snap.image, cap.truth).psnr > score(cap.frames[0], cap.truth).psnr


def test_wrong_size_frame_raises_naming_the_sizes(sim_capture) -> None:
    cap = sim_capture("moon")
    st = LiveStacker(LiveParams())
    st.add(cap.frames[0])
    with pytest.raises(ValueError, match=r"300x200.*320x240"):
        st.add(np.zeros((200, 300), np.uint8))
    with pytest.raises(ValueError, match="uint16"):
        st.add(cap.frames[1].astype(np.uint16))
    with pytest.raises(ValueError, match=r"frames\[1\]"):  # all checked before any is taken
        st.add_batch([cap.frames[1], np.zeros((240, 321), np.uint8)])
    assert st.stats()["frames_seen"] == 1
    with pytest.raises(ValueError, match="frame"):
        st.add(np.zeros((240, 320, 4), np.uint8))
    with pytest.raises(ValueError, match="timestamps"):
        st.add_batch(cap.frames[1:3], [1.0])
    st.reset()  # a reset adopts the next frame's size
    assert st.add(np.zeros((200, 300), np.uint8)).reason == "warmup"
    assert st.stats()["frames_seen"] == 1


# ---------------------------------------------------------------- parameters
def test_set_param_good_values(sim_capture) -> None:
    cap = sim_capture("moon")
    st = LiveStacker(LiveParams())
    feed(st, cap.frames[:60])
    assert st.snapshot() is not None
    assert st.set_param("stack_size", "20").stack_size == "20"
    assert st.set_param("window_frames", "50").window_frames == 50  # strings are converted
    assert st.set_param("window_seconds", 2).window_seconds == 2.0
    assert st.params.stack_size == "20"
    assert st.snapshot() is not None  # these apply from the next frame, no restart
    assert st.set_param("local_outlier", "4.5").local.outlier == 4.5
    assert st.set_param("ap_size", 32).ap.size == 32
    assert st.snapshot() is None  # the grid changed: it starts over
    assert st.stats()["frames_seen"] == 60  # keeping its counters
    feed(st, cap.frames[60:120])
    snap = st.snapshot()
    assert snap.ap_size == 32 and snap.stats["aps"] > 0


@pytest.mark.parametrize(("name", "value", "match"), [
    ("nonsense", 1, "nonsense"), ("ap_nonsense", 1, "ap_nonsense"), ("ap", 1, "'ap'"),
    ("ap_size", 33, "ap_size"), ("ap_size", "big", "ap_size"), ("buffer_size", 1, "buffer_size"),
    ("buffer_size", "abc", "buffer_size"), ("stack_size", "10x", "10x"),
    ("quality_method", "fft", "quality_method"), ("window_frames", -1, "window_frames"),
    ("warmup", 2.5, "warmup"), ("threads", 0, "threads"), ("threads", "two", "threads"),
])
def test_set_param_bad_values_name_it(name, value, match) -> None:
    st = LiveStacker(LiveParams())
    before = st.params
    with pytest.raises(ValueError, match=match):
        st.set_param(name, value)
    assert st.params == before


def test_parameters_set_together_are_validated_together() -> None:
    """warmup 300 needs a buffer of 300 or more: set with buffer_size 400, in either order,
    it is accepted; alone it is refused; a bad value among good ones changes nothing."""
    orders = [{"warmup": 300, "buffer_size": 400}, {"buffer_size": 400, "warmup": "300"}]
    results = []
    for values in orders:
        st = LiveStacker(LiveParams())
        results.append(st.set_params(values))
        assert st.params == results[-1]
    assert results[0] == results[1]
    assert (results[0].warmup, results[0].buffer_size) == (300, 400)
    st = LiveStacker(LiveParams())
    with pytest.raises(ValueError, match="warmup"):
        st.set_param("warmup", 300)  # alone it does not fit the buffer of 200
    before = st.params
    with pytest.raises(ValueError, match="ap_size"):
        st.set_params({"stack_size": "50", "ap_size": 33, "local_outlier": 4.0})
    with pytest.raises(ValueError, match="nonsense"):
        st.set_params({"stack_size": "50", "nonsense": 1})
    assert st.params == before
    new = st.set_params({"ap_size": 32, "ap_step": 24, "local_outlier": "4.5",
                         "reference_max_frames": 20, "window_frames": 50})
    assert (new.ap.size, new.ap.step, new.local.outlier) == (32, 24, 4.5)
    assert (new.reference.max_frames, new.window_frames) == (20, 50)


def test_params_validation() -> None:
    with pytest.raises(ValueError, match="warmup"):
        LiveParams(buffer_size=10, warmup=20)
    with pytest.raises(ValueError, match="stack size"):
        LiveParams(stack_size="most")
    with pytest.raises(ValueError, match="params"):
        LiveStacker({"buffer_size": 10})


# ---------------------------------------------------------------- batches, stats, memory
def test_add_batch_equals_add_one_by_one(sim_capture) -> None:
    cap = sim_capture("sun")
    frames, stamps = cap.frames[:90], cap.info.timestamps[:90]
    one = LiveStacker(LiveParams())
    r1 = [one.add(f, timestamp=float(t)) for f, t in zip(frames, stamps, strict=True)]
    batch = LiveStacker(LiveParams())
    r2 = []
    for i in range(0, len(frames), 16):
        r2 += batch.add_batch(frames[i : i + 16], list(stamps[i : i + 16]))
    assert [(r.admitted, r.reason) for r in r1] == [(r.admitted, r.reason) for r in r2]
    assert np.allclose([r.quality for r in r1], [r.quality for r in r2])
    s1, s2 = one.snapshot(), batch.snapshot()
    assert s1.box == s2.box
    assert np.allclose(s1.image, s2.image, atol=1e-5)
    for key in ("frames_seen", "admitted", "dropped", "buffer_fill", "aps", "frames_per_ap"):
        assert s1.stats[key] == s2.stats[key], key
    assert batch.add_batch([]) == []


def test_stats_fields_and_msgpack(sim_capture) -> None:
    cap = sim_capture("moon")
    st = LiveStacker(LiveParams())
    feed(st, cap.frames, cap.info.timestamps)
    snap = st.snapshot()
    s = snap.stats
    assert s["frames_seen"] == len(cap.frames)
    assert s["admitted"] + sum(s["dropped"].values()) <= s["frames_seen"]
    assert s["admitted"] >= s["buffer_fill"] > 0
    assert s["buffer_size"] == 200 and s["aps"] == len(snap.ap_centres) > 0
    q = s["quality"]
    assert len(q["hist"]) == len(q["edges"]) - 1 and sum(q["hist"]) == s["buffer_fill"]
    assert {"quality", "align"} <= set(s["timings_ms"])
    assert all(v >= 0 for v in s["timings_ms"].values())
    assert msgpack.unpackb(msgpack.packb(s)) == s  # plain values only
    # AP centres are in image coordinates, their boxes on the image: the grid's rim boxes
    # reach the edges of the area the frames covered when it was laid, which the
    # snapshot's crop (the frames now) may leave a few pixels inside
    h, w = snap.image.shape[:2]
    half = snap.ap_size // 2
    assert np.all(snap.ap_centres >= 0)
    assert np.all(snap.ap_centres[:, 0] < h) and np.all(snap.ap_centres[:, 1] < w)
    # the rim boxes reach all four edges (the crop pulled in to them, live.rim_crop)
    c = snap.ap_centres
    assert (c - half).min(axis=0).max() <= 0
    assert c[:, 0].max() + half >= h and c[:, 1].max() + half >= w
    assert (c - half).min() >= -half // 2


def test_buffer_never_exceeds_its_size(sim_capture) -> None:
    cap = sim_capture("moon")
    st = LiveStacker(LiveParams(buffer_size=30, warmup=20))
    fills = []
    for f, t in zip(cap.frames, cap.info.timestamps, strict=True):
        st.add(f, timestamp=float(t))
        fills.append(st.stats()["buffer_fill"])
    assert max(fills) == fills[-1] == 30
    assert st.stats()["dropped"]["quality"] + st.stats()["evicted"]["quality"] > 0
    assert math.isfinite(score(st.snapshot().image, cap.truth).psnr)


def test_time_window_keeps_only_recent_frames(sim_capture) -> None:
    cap = sim_capture("moon")
    window = 0.25  # seconds: 25 frames at the simulated 100 frames per second
    st = LiveStacker(LiveParams(window_seconds=window))
    for i, (f, t) in enumerate(zip(cap.frames, cap.info.timestamps, strict=True)):
        st.add(f, timestamp=float(t))
        # (the warm-up frames are all admitted at once; the window applies from the
        # first frame after it)
        if i > LiveParams().warmup:
            assert st.stats()["buffer_fill"] <= window * 100 + 1
    assert st.stats()["evicted"]["window"] > 0
    assert math.isfinite(score(st.snapshot().image, cap.truth).psnr)


# ---------------------------------------------------------------- threads and the gate
def test_two_threads_give_the_same_stack_as_one(sim_capture) -> None:
    cap = sim_capture("moon")
    snaps, stats = [], []
    for threads in (1, 2):
        with LiveStacker(LiveParams(buffer_size=60, threads=threads)) as st:
            feed(st, cap.frames, cap.info.timestamps)
            snap = st.snapshot()
        snaps.append(snap)
        stats.append({k: snap.stats[k] for k in ("admitted", "dropped", "dropped_unaligned",
                                                 "local_measured", "local_failed")})
    assert stats[0] == stats[1]
    assert snaps[0].box == snaps[1].box
    np.testing.assert_allclose(snaps[0].image, snaps[1].image, atol=1e-6)


def test_catch_up_does_the_deferred_work_and_changes_nothing_else(sim_capture) -> None:
    """Selection changes wait for a snapshot (sync_budget 0) or for catch_up(); the stack
    is the same either way, and a caught-up stacker's snapshot has nothing left to do."""
    cap = sim_capture("moon")
    params = LiveParams(buffer_size=40, sync_budget=0, threads=1)
    with LiveStacker(params) as lazy, LiveStacker(params) as eager:
        feed(lazy, cap.frames, cap.info.timestamps)
        feed(eager, cap.frames, cap.info.timestamps)
        assert lazy.stats()["pending_work"] > 0
        calls = 0
        while eager.catch_up(8):
            calls += 1
            assert calls < 100_000
        assert calls > 0 and eager.stats()["pending_work"] == 0
        assert not eager.catch_up(8)  # nothing left
        a, b = lazy.snapshot(), eager.snapshot()
        assert lazy.stats()["pending_work"] == 0  # the snapshot applied them
    np.testing.assert_allclose(a.image, b.image, atol=1e-5)
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="budget"):
            LiveStacker(params).catch_up(bad)


def test_pairs_on_the_old_and_the_new_reference_sum_alike(sim_capture) -> None:
    """Right after a promotion the sums hold pairs measured on the old reference and new
    pairs measured on the new one; a snapshot then (it does not wait for the old pairs
    to be measured again) is as sharp as one after they all were."""
    cap = sim_capture("moon")
    params = LiveParams(buffer_size=60, reference_interval=30, work_budget=1, threads=1)
    with LiveStacker(params) as st:
        half = 60
        for i in range(0, half, CHUNK):
            st.add_batch(cap.frames[i : i + CHUNK], list(cap.info.timestamps[i : i + CHUNK]))
        st.snapshot()  # the sums in line with the selection, on the first reference
        assert st.stats()["events"].get("reference", 0) == 0
        st.add_batch(cap.frames[half:], list(cap.info.timestamps[half:]))
        mixed = st.snapshot()  # promotes, then adds the waiting pairs on the new reference
        assert st.stats()["events"]["reference"] == 1
        assert st.stats()["pairs"]["stale"] > 100  # many pairs still on the old reference
        while st.catch_up(64):
            pass
        assert st.stats()["pairs"]["stale"] == 0
        settled = st.snapshot()
    a, b = score(mixed.image, cap.truth).psnr, score(settled.image, cap.truth).psnr
    # measured: 0.005 dB apart; 0.05 dB without the offset (the old pairs sit up to
    # 1.7 px away from the new ones at some APs)
    assert a > b - 0.02, (a, b)


def test_a_stack_not_yet_in_the_sums_is_not_promoted(sim_capture) -> None:
    """Before a snapshot has put the selected pairs in the sums, the stack is mostly
    background: it does not become the AP reference (catch_up waits, and a snapshot
    first puts the pairs in); once the sums hold the selection, it does."""
    cap = sim_capture("moon")
    params = LiveParams(buffer_size=60, warmup=10, reference_interval=20, threads=1)
    with LiveStacker(params) as st:
        feed(st, cap.frames[:80], cap.info.timestamps[:80])  # 70 admitted: a promotion is due
        # the warm-up's selection went in at the start; most of today's has not
        pairs = st.stats()["pairs"]
        assert pairs["held"] < PROMOTE_FILLED * pairs["selected"] - 1
        st.catch_up(1)
        assert st.stats()["events"].get("reference", 0) == 0
        assert st.stats()["pairs"]["held"] <= pairs["held"] + 1  # the one pair it was given
        # puts the selection in, then promotes: every pair in the sums is to be
        # measured again (the snapshot itself is the stack before the promotion)
        st.snapshot()
        assert st.stats()["events"]["reference"] == 1
        pairs = st.stats()["pairs"]
        assert pairs["stale"] > 0.9 * pairs["held"] > 100


def test_re_measuring_after_a_promotion_is_bounded_per_call(sim_capture) -> None:
    """After a promotion, each add_batch call re-measures at most work_budget stale pairs,
    however many frames it brings: a driver that has fallen behind (big batches) spends
    less per frame on them and catches up on them when idle."""
    cap = sim_capture("moon")
    budget = 16
    with LiveStacker(LiveParams(buffer_size=40, reference_interval=20, work_budget=budget,
                                threads=1)) as st:
        feed(st, cap.frames[:80], cap.info.timestamps[:80])
        st.snapshot()
        st.catch_up(1)  # promotes
        stale = st.stats()["pairs"]["stale"]
        assert stale > 4 * budget
        for start in (80, 112):  # two calls of 32 frames
            measured = st.stats()["local_measured"]
            st.add_batch(cap.frames[start : start + 32],
                         list(cap.info.timestamps[start : start + 32]))
            # new selections wait for a snapshot (sync_budget 0): what is measured is
            # stale pairs, at most one call's budget (32 frames' worth before)
            assert 0 < st.stats()["local_measured"] - measured <= budget
            now = st.stats()["pairs"]["stale"]
            assert now < stale
            stale = now
        while st.catch_up(64):
            pass
        assert st.stats()["pairs"]["stale"] == 0


def test_frames_that_cannot_enter_are_dropped_before_aligning(sim_capture) -> None:
    from live_stack.live import GATE_SAMPLE

    cap = sim_capture("moon")
    st = LiveStacker(LiveParams(buffer_size=20, warmup=20))
    feed(st, cap.frames[:60])
    before = st.stats()
    assert before["buffer_fill"] == 20
    # much blurrier frames of the same scene: none can replace a frame in the buffer
    import cv2

    blurred = [cv2.GaussianBlur(f, (0, 0), 4.0) for f in cap.frames[60:120]]
    results = []
    for i in range(0, len(blurred), CHUNK):
        results += st.add_batch(blurred[i : i + CHUNK])
    after = st.stats()
    assert not any(r.admitted for r in results)
    assert after["admitted"] == before["admitted"]
    unaligned = after["dropped_unaligned"] - before["dropped_unaligned"]
    # most skip the alignment; one in GATE_SAMPLE is aligned all the same (and, should
    # it align too weakly, so is every frame after it until one aligns)
    assert len(blurred) // 2 <= unaligned <= len(blurred) - len(blurred) // GATE_SAMPLE
    assert sum(r.reason == "quality" for r in results) >= unaligned


def test_the_gate_still_notices_a_new_target(sim_capture) -> None:
    # the new target's frames are all worse than the buffer's: the gate drops most of
    # them unaligned, the sampled ones fail to align, and then every frame is aligned
    import cv2

    from live_stack.live import GATE_SAMPLE

    moon, sun = sim_capture("moon", frames=150), sim_capture("sun", frames=300)
    st = LiveStacker(LiveParams(buffer_size=40))
    feed(st, moon.frames)
    assert st.stats()["buffer_fill"] == 40
    dull = [cv2.GaussianBlur(f, (0, 0), 3.0) for f in sun.frames]
    reset_at = None
    for i in range(0, len(dull), CHUNK):
        st.add_batch(dull[i : i + CHUNK])
        if reset_at is None and st.stats()["events"].get("scene_reset", 0):
            reset_at = i + CHUNK
    limit = LiveParams().reset_after + GATE_SAMPLE + 2 * CHUNK
    assert reset_at is not None and reset_at <= limit, reset_at
    assert st.stats()["dropped_unaligned"] > 0


def test_the_snapshot_crop_is_pulled_in_to_the_rim_boxes() -> None:
    """A grid laid on a slightly smaller area than the snapshot's frames cover now: the
    crop loses the pixels past the rim boxes (up to the search radius), so the stack, not
    the reference, reaches the snapshot's edges; a grid further inside (a planet's)
    leaves the crop alone."""
    from live_stack.apgrid import APGrid
    from live_stack.live import rim_crop

    centres = np.array([[40, 40], [40, 100], [100, 40], [100, 100]])
    grid = APGrid(centres=centres, size=64, search=8, shape=(200, 200))
    # the boxes span 8..132 in both axes
    assert rim_crop((6, 3, 135, 132), grid) == (8, 8, 132, 132)
    assert rim_crop((6, 0, 141, 132), grid) == (8, 8, 141, 132)  # 9 px past: left alone
    assert rim_crop((8, 8, 132, 132), grid) == (8, 8, 132, 132)  # already on the edges
    disk = APGrid(centres=np.array([[80, 80], [80, 120]]), size=64, search=8,
                  shape=(200, 200))  # boxes 48..112 x 48..152: far inside, left alone
    assert rim_crop((0, 0, 200, 200), disk) == (0, 0, 200, 200)
    empty = APGrid(centres=np.zeros((0, 2), np.intp), size=64, search=8, shape=(200, 200))
    assert rim_crop((6, 3, 135, 132), empty) == (6, 3, 135, 132)
