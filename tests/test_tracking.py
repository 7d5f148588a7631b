import numpy as np

from anitrack.tracking import IouTracker, iou_matrix, split_at_cuts


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    assert np.allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]])


def test_two_moving_boxes_stay_separate_and_gaps_are_bridged():
    tracker = IouTracker(iou=0.3, max_gap=15)
    det = 0
    for frame in range(0, 60, 3):
        if 20 <= frame < 30:  # both unseen for 9 frames: bridged (< max_gap)
            continue
        boxes = np.array([[frame, 0, frame + 50, 50], [300 - frame, 100, 350 - frame, 150]], np.float32)
        tracker.update(frame, boxes, np.ones(2), [det, det + 1])
        det += 2
    tracks = tracker.finish()
    assert len(tracks) == 2
    assert all(len(t.frames) == 17 for t in tracks)


def test_long_gap_starts_a_new_track():
    tracker = IouTracker(iou=0.3, max_gap=15)
    box = np.array([[0, 0, 50, 50]], np.float32)
    for i, frame in enumerate([0, 3, 6, 30, 33]):
        tracker.update(frame, box, np.ones(1), [i])
    assert [t.frames for t in tracker.finish()] == [[0, 3, 6], [30, 33]]


def test_split_at_cuts_never_crosses_a_shot():
    tracker = IouTracker()
    box = np.array([[0, 0, 50, 50]], np.float32)
    for i, frame in enumerate(range(0, 30, 3)):
        tracker.update(frame, box, np.ones(1), [i])
    pieces = split_at_cuts(tracker.finish(), [(0, 10), (10, 20), (20, 30)])
    assert [(shot, p.frames) for shot, p in pieces] == [(0, [0, 3, 6, 9]), (1, [12, 15, 18]), (2, [21, 24, 27])]
