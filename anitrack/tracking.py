"""IoU tracklets: greedy association of detections across sampled frames.

Tracks are built online (so crops can be taken while the frame is in memory)
and split at shot boundaries afterwards. For a greedy IoU tracker that is the
same as resetting at every cut: nothing after a cut can join anything before it.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from anitrack.detections import Detections


@dataclass
class Track:
    id: int = -1  # the tracker's id, written into each detection's ``tracker_id``
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    det_ids: list[int] = field(default_factory=list)  # index of each detection in the episode's detection list

    @property
    def last_frame(self) -> int:
        return self.frames[-1]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, shapes (N,4) x (M,4) -> (N,M)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)


def greedy_pairs(ious: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """(row, column) pairs, highest IoU first, each row and column used once, none below ``threshold``."""
    pairs, rows, cols = [], set(), set()
    for flat in np.argsort(-ious, axis=None):
        r, c = np.unravel_index(flat, ious.shape)
        if ious[r, c] < threshold:
            break
        if r not in rows and c not in cols:
            pairs.append((int(r), int(c)))
            rows.add(r)
            cols.add(c)
    return pairs


class IouTracker:
    """Greedy highest-IoU-first association; a track survives ``max_gap`` unseen frames."""

    def __init__(self, iou: float = 0.30, max_gap: int = 15):
        self.iou = iou
        self.max_gap = max_gap
        self.active: list[Track] = []
        self.finished: list[Track] = []
        self.started = 0

    def update(self, frame: int, dets: Detections) -> list[Track]:
        """Associate one frame's detections (``dets.data["det_id"]``: each one's index in the episode);
        fills ``dets.tracker_id`` and returns the track each detection joined."""
        boxes, scores = dets.xyxy, dets.score
        det_ids = dets.data["det_id"].tolist()
        still = []
        for track in self.active:
            (still if frame - track.last_frame <= self.max_gap else self.finished).append(track)
        self.active = still
        last = np.array([t.boxes[-1] for t in self.active], dtype=np.float32).reshape(-1, 4)
        ious = iou_matrix(boxes, last)
        assigned: list[Track | None] = [None] * len(boxes)
        for d, t in greedy_pairs(ious, self.iou):
            assigned[d] = self.active[t]
        for d in range(len(boxes)):
            track = assigned[d]
            if track is None:
                track = Track(id=self.started)
                self.started += 1
                self.active.append(track)
            track.frames.append(frame)
            track.boxes.append(np.asarray(boxes[d], dtype=np.float32))
            track.scores.append(float(scores[d]))
            track.det_ids.append(det_ids[d])
            dets.tracker_id[d] = track.id
            assigned[d] = track
        return assigned

    def finish(self) -> list[Track]:
        tracks = self.finished + self.active
        self.active, self.finished = [], []
        return sorted(tracks, key=lambda t: (t.frames[0], float(t.boxes[0][0])))


def split_at_cuts(tracks: list[Track], shots: list[tuple[int, int]]) -> list[tuple[int, Track]]:
    """Cut every track at shot boundaries; returns (shot_id, piece) pairs. A piece never crosses a cut."""
    starts = [s for s, _ in shots]
    pieces: list[tuple[int, Track]] = []
    for track in tracks:
        current: Track | None = None
        current_shot = -1
        for i, frame in enumerate(track.frames):
            shot = bisect.bisect_right(starts, frame) - 1
            if shot != current_shot:
                current = Track(id=track.id)
                current_shot = shot
                pieces.append((shot, current))
            current.frames.append(frame)
            current.boxes.append(track.boxes[i])
            current.scores.append(track.scores[i])
            current.det_ids.append(track.det_ids[i])
    return pieces
