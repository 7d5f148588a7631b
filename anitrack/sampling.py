"""Which sampled frames the detector sees, and the boxes of those it skips.

The detector samples every ``stride``-th frame. With ``keyframe_every`` n > 1 it first sees only
every n-th sampled frame (the keyframes). Between two detected frames that agree (every box of one
has a partner in the other that the tracker would join it to) and with no cut between them, the
sampled frames are not detected: their boxes are interpolated and recorded as ``interpolated``.
Where they disagree (a face came, left or moved too far) or the picture cut, the sampled frame in
the middle is detected and each half is judged again, down to neighbouring sampled frames. Most of
an episode is steady (a character talking in a held shot), so the detector does a fraction of its
work, and tracklets still start and end where a change was looked at.
Interpolated boxes are tracked like detected ones but cut no crops: a crop claims a face was seen.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from anitrack.detections import Detections
from anitrack.tracking import greedy_pairs, iou_matrix

INTERPOLATED = "interpolated"  # the ``detector`` of a box that no detector saw


def pair_boxes(before: Detections, after: Detections, iou: float) -> list[tuple[int, int]] | None:
    """Each box of ``before`` with its partner in ``after`` (IoU >= ``iou``, one to one, greedy by IoU as
    the tracker joins boxes), or None when some box of either has none."""
    if len(before) != len(after):
        return None
    pairs = greedy_pairs(iou_matrix(before.xyxy, after.xyxy), iou)
    return sorted(pairs) if len(pairs) == len(before) else None


def interpolate(before: Detections, after: Detections, pairs: list[tuple[int, int]], at: float) -> Detections:
    """The paired boxes a share ``at`` (0-1) of the way from ``before`` to ``after``; the lower score."""
    a, b = np.array([p[0] for p in pairs], int), np.array([p[1] for p in pairs], int)
    return Detections(before.xyxy[a] * (1 - at) + after.xyxy[b] * at, np.minimum(before.score[a], after.score[b]),
                      before.class_id[a])


@dataclass
class _Sampled:
    frame: object                 # the decoded frame (index, t_s, rgb)
    anchor: bool                  # detected (a keyframe, or sent because its neighbours disagreed)
    dets: Detections | None = None
    detected: bool = True         # False: interpolated


class FrameSampler:
    """Feeds sampled frames to an asynchronous detector in batches and hands their detections on in
    frame order: ``on_frame(frame, dets, detected)``, ``detected`` False for interpolated boxes.

    ``submit(rgb_frames)`` starts detecting and returns a function that waits for the results, so
    decoding goes on while a batch is detected. ``cut_between(a, b)``: whether the picture may have
    cut between frames a and b (decoded by then), so agreeing boxes are not trusted across it. Held in
    memory: the batch being filled, the batches in flight, and the frames waiting for a keyframe.
    """

    def __init__(self, submit: Callable, on_frame: Callable, stride: int, keyframe_every: int, iou: float,
                 batch: int = 8, cut_between: Callable[[int, int], bool] | None = None):
        if keyframe_every < 1 or keyframe_every & (keyframe_every - 1):
            raise ValueError("keyframe_every must be a power of two (1, 2, 4, ...)")
        self.submit, self.on_frame, self.cut_between = submit, on_frame, cut_between or (lambda a, b: False)
        self.stride, self.every, self.iou, self.batch_size = stride, keyframe_every * stride, iou, batch
        self.queue: deque[_Sampled] = deque()  # every sampled frame not yet handed on, in order
        self.batch: list[_Sampled] = []        # keyframes not yet sent
        self.jobs: deque = deque()             # (entries, wait) in the order sent
        self.last: _Sampled | None = None      # the last detected frame handed on (the head's left anchor)

    def offer(self, frame) -> None:
        """Every decoded frame, in order; frames between sampled ones are ignored."""
        if frame.index % self.stride:
            return
        entry = _Sampled(frame, anchor=frame.index % self.every == 0)
        self.queue.append(entry)
        if entry.anchor:
            self.batch.append(entry)
            if len(self.batch) >= self.batch_size:
                self._flush()

    def finish(self) -> None:
        """Detect what is left (frames after the last keyframe are judged against the last frame,
        which is detected) and hand it on."""
        if self.queue and not self.queue[-1].anchor:
            self.queue[-1].anchor = True
            self.batch.append(self.queue[-1])
        self._flush()
        while self.jobs:
            self._collect()
        if self.queue:
            raise RuntimeError("frame sampler: frames left undetected")

    def _flush(self) -> None:
        for _ in range(len(self.jobs)):  # the batches in flight; frames sent meanwhile wait for the next flush
            self._collect()
        if self.batch:
            self._send(self.batch)
            self.batch = []

    def _send(self, entries: list[_Sampled]) -> None:
        for e in entries:
            e.anchor = True
        self.jobs.append((entries, self.submit([e.frame.rgb for e in entries])))

    def _collect(self) -> None:
        entries, wait = self.jobs.popleft()
        for e, dets in zip(entries, wait()):
            e.dets = dets
        self._decide()
        self._hand_on()

    def _decide(self) -> None:
        """Between each two neighbouring anchors with results: interpolate the frames between them, or
        send the middle one to the detector."""
        wanted = []
        left = self.last
        between: list[_Sampled] = []
        for e in self.queue:
            if not e.anchor:
                between.append(e)
                continue
            if any(m.dets is None for m in between) and left is not None and left.dets is not None \
                    and e.dets is not None:
                a, b = left.frame.index, e.frame.index
                pairs = None if self.cut_between(a, b) else pair_boxes(left.dets, e.dets, self.iou)
                if pairs is not None:
                    for m in between:
                        m.dets = interpolate(left.dets, e.dets, pairs, (m.frame.index - a) / (b - a))
                        m.detected = False
                else:
                    wanted.append(between[(len(between) - 1) // 2])
            left, between = e, []
        if wanted:
            self._send(wanted)

    def _hand_on(self) -> None:
        while self.queue and self.queue[0].dets is not None:
            e = self.queue.popleft()
            self.on_frame(e.frame, e.dets, e.detected)
            if e.detected:
                self.last = e
