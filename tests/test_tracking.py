import numpy as np
import pyarrow as pa
import pytest

from anitrack.detections import FACE, PERSON, Detections
from anitrack.tracking import IouTracker, iou_matrix, split_at_cuts


def dets(boxes, first_id: int) -> Detections:
    return Detections(boxes, np.ones(len(boxes)), FACE).with_data(det_id=np.arange(first_id, first_id + len(boxes)))


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
        tracker.update(frame, dets(boxes, det))
        det += 2
    tracks = tracker.finish()
    assert len(tracks) == 2
    assert all(len(t.frames) == 17 for t in tracks)


def test_long_gap_starts_a_new_track():
    tracker = IouTracker(iou=0.3, max_gap=15)
    box = np.array([[0, 0, 50, 50]], np.float32)
    for i, frame in enumerate([0, 3, 6, 30, 33]):
        tracker.update(frame, dets(box, i))
    assert [t.frames for t in tracker.finish()] == [[0, 3, 6], [30, 33]]


def test_split_at_cuts_never_crosses_a_shot():
    tracker = IouTracker()
    box = np.array([[0, 0, 50, 50]], np.float32)
    for i, frame in enumerate(range(0, 30, 3)):
        tracker.update(frame, dets(box, i))
    pieces = split_at_cuts(tracker.finish(), [(0, 10), (10, 20), (20, 30)])
    assert [(shot, p.frames) for shot, p in pieces] == [(0, [0, 3, 6, 9]), (1, [12, 15, 18]), (2, [21, 24, 27])]


def test_the_tracker_writes_each_detections_track_into_it():
    tracker = IouTracker(iou=0.3, max_gap=15)
    first = dets(np.array([[0, 0, 50, 50], [300, 0, 350, 50]], np.float32), 0)
    tracker.update(0, first)
    moved = dets(np.array([[305, 0, 355, 50], [400, 400, 450, 450], [4, 0, 54, 50]], np.float32), 2)
    tracks = tracker.update(3, moved)
    assert first.tracker_id.tolist() == [0, 1]
    assert moved.tracker_id.tolist() == [1, 2, 0]  # the far box starts track 2
    assert [t.id for t in tracks] == [1, 2, 0] and tracks[2].det_ids == [0, 4]


def test_detections_index_by_mask_sort_by_score_and_round_trip_through_arrow():
    d = Detections([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], [0.3, 0.9, 0.6], PERSON).with_data(frame=7)
    assert len(d) == 3 and d.class_id.tolist() == [PERSON] * 3 and d.tracker_id.tolist() == [-1] * 3
    strong = d[d.score >= 0.5]
    assert len(strong) == 2 and strong.xyxy.tolist() == [[5, 5, 20, 20], [1, 2, 3, 4]]
    assert d.by_score().score.tolist() == pytest.approx([0.9, 0.6, 0.3])
    assert d[1].data["frame"].tolist() == [7]
    d.tracker_id[0] = 4
    table = d.to_arrow()
    assert table.column_names == ["x1", "y1", "x2", "y2", "score", "class_id", "tracker_id", "frame"]
    assert table.column("tracker_id").to_pylist() == [4, None, None]  # untracked is null, not -1
    back = Detections.from_arrow(table)
    assert back.xyxy.tolist() == d.xyxy.tolist() and back.tracker_id.tolist() == [4, -1, -1]
    assert back.data["frame"].tolist() == [7, 7, 7]
    both = Detections.concat([d, Detections.from_arrow(pa.Table.from_pylist([], schema=table.schema))])
    assert len(both) == 3
    with pytest.raises(ValueError, match="score has 2 rows, xyxy has 3"):
        Detections([[0, 0, 1, 1]] * 3, [0.5, 0.5], FACE)
