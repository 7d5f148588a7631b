"""Which frames the detector sees: keyframes, and between two detected frames only where they
disagree or the picture cut, halving the gap until they agree."""
from types import SimpleNamespace

import numpy as np
import pytest

from anitrack.config import ConfigError, batch_size, load_config, resolve_profile
from anitrack.detections import FACE, Detections
from anitrack.sampling import FrameSampler, interpolate, pair_boxes
from anitrack.tracking import IouTracker

CUT = 105  # the scripted scene cuts here: D replaces A at A's place


def boxes_at(frame: int) -> np.ndarray:
    """A drifts right until the cut; B stands from 40 to 70; C appears at 91; after the cut D stands
    where A was (the boxes agree across the cut, the faces do not)."""
    out = [[100 + min(frame, CUT - 1), 50, 160 + min(frame, CUT - 1), 110]]
    if 40 <= frame <= 70:
        out.append([400, 60, 460, 120])
    if frame >= 91:
        out.append([600, 300, 660, 360])
    return np.array(out, np.float32)


class ScriptedDetector:
    """Answers with the scene's boxes, in the background like the animeface pool (results come later)."""

    def __init__(self):
        self.seen: list[int] = []

    def submit(self, frames):
        self.seen += frames  # the "frames" are their indices here
        results = [Detections(boxes_at(i), np.full(len(boxes_at(i)), 0.9), FACE) for i in frames]
        return lambda: results


def run(every: int, n_frames: int = 150, stride: int = 3, batch: int = 4, knows_cuts: bool = True):
    detector, handed = ScriptedDetector(), []
    tracker, det_id = IouTracker(iou=0.3, max_gap=15), [0]

    def on_frame(frame, dets, detected):
        handed.append((frame.index, detected, dets.xyxy.copy()))
        ids = np.arange(det_id[0], det_id[0] + len(dets))
        det_id[0] += len(dets)
        tracker.update(frame.index, dets.with_data(det_id=ids))

    cut_between = (lambda a, b: a < CUT <= b) if knows_cuts else None
    sampler = FrameSampler(detector.submit, on_frame, stride, every, 0.3, batch, cut_between)
    for i in range(n_frames):
        sampler.offer(SimpleNamespace(index=i, rgb=i))
    sampler.finish()
    extents = sorted((t.frames[0], t.frames[-1]) for t in tracker.finish())
    return detector.seen, handed, extents


@pytest.mark.parametrize("every", [2, 4, 8])
def test_every_sampled_frame_is_handed_on_in_order_and_changes_are_looked_at_as_when_detecting_all(every):
    seen_all, handed_all, extents_all = run(every=1)
    seen, handed, extents = run(every=every)
    assert [h[0] for h in handed] == [h[0] for h in handed_all] == list(range(0, 150, 3))
    assert sorted(seen_all) == list(range(0, 150, 3))
    assert extents == extents_all  # tracklets start and end at the same frames
    # B comes and leaves, C appears, the cut: the sampled frames either side of each are detected
    assert {39, 42, 69, 72, 90, 93, 102, 105} <= set(seen)
    assert len(seen) < 0.75 * len(seen_all)  # the steady stretches were not detected
    for i, was_detected, xyxy in handed:
        if not was_detected:  # an interpolated box lies where the detector would have put it
            assert np.allclose(xyxy, boxes_at(i), atol=0.5), i


def test_a_cut_is_looked_at_even_where_the_boxes_agree_across_it():
    seen, _, _ = run(every=8)
    assert {102, 105} <= set(seen)
    seen_blind, handed, _ = run(every=8, knows_cuts=False)
    assert not {102, 105} & set(seen_blind)  # without the hint the agreeing boxes were trusted across it
    assert all(d is False for i, d, _ in handed if i in (102, 105))


def test_the_last_sampled_frame_is_detected_and_frames_after_the_last_keyframe_are_judged_against_it():
    seen, handed, _ = run(every=4, n_frames=130)  # sampled frames end at 129, past the keyframe at 120
    assert handed[-1][:2] == (129, True) and 129 in seen
    assert [h[0] for h in handed] == list(range(0, 130, 3))


def test_pairing_needs_a_partner_for_every_box_and_interpolation_is_linear():
    a = Detections(np.array([[0, 0, 10, 10], [50, 50, 60, 60]]), np.array([0.9, 0.6]), FACE)
    b = Detections(np.array([[52, 50, 62, 60], [4, 0, 14, 10]]), np.array([0.7, 0.8]), FACE)
    pairs = pair_boxes(a, b, 0.3)
    assert pairs == [(0, 1), (1, 0)]
    mid = interpolate(a, b, pairs, 0.25)
    assert np.allclose(mid.xyxy, [[1, 0, 11, 10], [50.5, 50, 60.5, 60]]) and np.allclose(mid.score, [0.8, 0.6])
    assert pair_boxes(a, b[np.array([0])], 0.3) is None                      # one left
    far = Detections(np.array([[30, 0, 40, 10], [50, 50, 60, 60]]), np.array([0.9, 0.9]), FACE)
    assert pair_boxes(a, far, 0.3) is None                                    # one moved too far to join
    assert pair_boxes(Detections.empty(), Detections.empty(), 0.3) == []


def test_keyframe_every_must_be_a_power_of_two():
    with pytest.raises(ConfigError, match="power of two"):
        resolve_profile(load_config(["detect.keyframe_every=3"], environ={}), "offline")
    with pytest.raises(ValueError):
        FrameSampler(None, None, 3, 6, 0.3)


@pytest.mark.parametrize("batch", [1, 3, 32])
def test_the_frames_detected_and_the_boxes_handed_on_do_not_depend_on_the_batch_size(batch):
    """``detect.batch`` says how, not what: a GPU's batch of 32 gives a CPU's 8's tracklets."""
    seen, handed, extents = run(every=4, batch=8)
    seen_b, handed_b, extents_b = run(every=4, batch=batch)
    assert sorted(seen_b) == sorted(seen) and extents_b == extents
    assert [(i, d) for i, d, _ in handed_b] == [(i, d) for i, d, _ in handed]
    assert all(np.array_equal(x, y) for (_, _, x), (_, _, y) in zip(handed, handed_b))


def test_batch_zero_means_the_devices_own_batch_size():
    config = resolve_profile(load_config([], environ={}), "full")
    assert [batch_size(config, s, "cpu") for s in ("detect", "embed")] == [8, 32]
    assert [batch_size(config, s, "cuda") for s in ("detect", "embed")] == [32, 64]
    config = resolve_profile(load_config(["detect.batch=48", "embed.batch=16"], environ={}), "full")
    assert [batch_size(config, s, "cuda:0") for s in ("detect", "embed")] == [48, 16]
