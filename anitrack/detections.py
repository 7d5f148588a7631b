"""What passes between the detector, the tracker and the crop stage: one frame's detections as columns.

A detector returns one ``Detections`` per frame; the tracker fills ``tracker_id``; the crop stage
reads the boxes; the episode writes them all to the ``detections`` table with ``to_arrow``.
Indexing takes a boolean mask, an index array or a slice and returns ``Detections`` again, so
filters and orderings are one expression (``dets[dets.score >= 0.5]``, ``dets.by_score()``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

PERSON, FACE = 0, 1  # class_id: what the box holds (YOLO's person class, or a face)


@dataclass
class Detections:
    xyxy: np.ndarray                       # (N, 4) float32 pixels
    score: np.ndarray                      # (N,) float32
    class_id: np.ndarray                   # (N,) int16: PERSON or FACE
    tracker_id: np.ndarray | None = None   # (N,) int64, -1 = not (yet) in a track
    data: dict[str, np.ndarray] = field(default_factory=dict)  # extra per-box columns (e.g. frame)

    def __post_init__(self):
        self.xyxy = np.asarray(self.xyxy, np.float32).reshape(-1, 4)
        self.score = np.asarray(self.score, np.float32).reshape(-1)
        n = len(self.xyxy)
        self.class_id = np.broadcast_to(np.asarray(self.class_id, np.int16), (n,)).copy()
        self.tracker_id = (np.full(n, -1, np.int64) if self.tracker_id is None
                           else np.asarray(self.tracker_id, np.int64).reshape(-1))
        self.data = {k: np.asarray(v) for k, v in self.data.items()}
        for name, column in [("score", self.score), ("class_id", self.class_id), ("tracker_id", self.tracker_id),
                             *self.data.items()]:
            if len(column) != n:
                raise ValueError(f"detections: {name} has {len(column)} rows, xyxy has {n}")

    @classmethod
    def empty(cls, class_id: int = FACE) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), class_id)

    @classmethod
    def concat(cls, parts: list[Detections]) -> Detections:
        """One table's worth from many frames; every part must carry the same extra columns."""
        if not parts:
            return cls.empty()
        keys = set(parts[0].data)
        if any(set(p.data) != keys for p in parts):
            raise ValueError("detections: parts carry different extra columns")
        return cls(np.concatenate([p.xyxy for p in parts]), np.concatenate([p.score for p in parts]),
                   np.concatenate([p.class_id for p in parts]), np.concatenate([p.tracker_id for p in parts]),
                   {k: np.concatenate([p.data[k] for p in parts]) for k in keys})

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> Detections:
        if isinstance(index, (int, np.integer)):
            index = [index]
        return Detections(self.xyxy[index], self.score[index], self.class_id[index], self.tracker_id[index],
                          {k: v[index] for k, v in self.data.items()})

    def by_score(self) -> Detections:
        """Highest score first (ties keep their order): the tracker and the crop stage see boxes this way."""
        return self[np.argsort(-self.score, kind="stable")]

    def with_data(self, **columns) -> Detections:
        """The same boxes with more per-box columns (a scalar is repeated)."""
        extra = {k: np.broadcast_to(np.asarray(v), (len(self),)).copy() for k, v in columns.items()}
        return Detections(self.xyxy, self.score, self.class_id, self.tracker_id, {**self.data, **extra})

    def to_arrow(self) -> pa.Table:
        """Columns x1, y1, x2, y2, score, class_id, tracker_id (null when untracked) and the extra ones."""
        columns = {"x1": self.xyxy[:, 0], "y1": self.xyxy[:, 1], "x2": self.xyxy[:, 2], "y2": self.xyxy[:, 3],
                   "score": self.score, "class_id": self.class_id,
                   "tracker_id": pa.array(self.tracker_id, mask=self.tracker_id < 0), **self.data}
        return pa.table(columns)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> Detections:
        """The inverse of ``to_arrow``: every column that is not a box, score, class or track is extra data."""
        own = {"x1", "y1", "x2", "y2", "score", "class_id", "tracker_id"}
        col = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
        tracker = table.column("tracker_id").fill_null(-1).to_numpy() if "tracker_id" in col else None
        return cls(np.stack([col["x1"], col["y1"], col["x2"], col["y2"]], axis=1), col["score"],
                   col.get("class_id", FACE), tracker, {k: v for k, v in col.items() if k not in own})


def best_faces(found: list[Detections]) -> list[tuple[np.ndarray, float] | None]:
    """A face finder's answer from a detector's: each crop's highest-scoring box and its score, or None."""
    out = []
    for dets in found:
        i = int(np.argmax(dets.score)) if len(dets) else -1
        out.append((dets.xyxy[i], float(dets.score[i])) if i >= 0 else None)
    return out
