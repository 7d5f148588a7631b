"""Detectors and face finders: the two roles' contracts and their registry (``DETECTORS``).

A detector (``animeface``: offline, faces; ``yolo``: persons; ``imgutils``: hub faces) turns a
batch of RGB frames into one ``Detections`` per frame. A face finder cuts the face inside each
person box when persons come first. animeface holds the GIL, so it runs in worker processes.
"""
from __future__ import annotations

import importlib.metadata
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Protocol, runtime_checkable

import cv2
import numpy as np
from PIL import Image

from anitrack import crops as cropping
from anitrack.config import batch_size
from anitrack.detections import FACE, Detections, best_faces


@runtime_checkable
class Detector(Protocol):
    name: str        # the ``detector`` column of the detections table
    model_id: str    # what made the boxes (fingerprints, stage_runs)
    calls: int       # frames seen, for stage_runs.model_calls

    def detect(self, frames: list[np.ndarray]) -> list[Detections]: ...

    def close(self) -> None: ...


@runtime_checkable
class FaceFinder(Protocol):
    model_id: str

    def find_faces(self, crops: list[np.ndarray]) -> list[tuple[np.ndarray, float] | None]:
        """The best face (box in crop pixels, score) inside each crop, or None."""

    def find_face_in_still(self, rgb: np.ndarray) -> tuple[np.ndarray, float] | None: ...


def _animeface_faces(rgb: np.ndarray) -> list[tuple[float, float, float, float, float]]:
    import animeface

    faces = animeface.detect(Image.fromarray(rgb))
    return [(f.face.pos.x, f.face.pos.y, f.face.pos.x + f.face.pos.width, f.face.pos.y + f.face.pos.height,
             f.likelihood) for f in faces]


def _shrink(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The frame at most ``max_side`` on its longer side, and the factor back to frame pixels. Done before
    the frame goes to a worker process: fewer bytes to send, and OpenCV's resize is cheaper than PIL's."""
    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb, 1.0
    scale = max(h, w) / max_side
    return cv2.resize(rgb, (round(w / scale), round(h / scale)), interpolation=cv2.INTER_AREA), scale


def check_animeface() -> None:
    """animeface silently finds nothing with Pillow >= 12; fail loudly instead."""
    major = int(importlib.metadata.version("pillow").split(".")[0])
    if major >= 12:
        raise RuntimeError(f"animeface needs Pillow < 12 (installed: {importlib.metadata.version('pillow')}); "
                           "pip install 'pillow<12'")


class AnimeFaceDetector:
    """nagadomi's anime face detector (model inside the ``animeface`` wheel)."""

    name = "animeface"

    def __init__(self, conf: float = 0.45, workers: int = 0, max_side: int = 0):
        check_animeface()
        self.conf = conf
        self.max_side = max_side
        self.model_id = animeface_id()
        self.calls = 0
        self.workers = workers or os.cpu_count() or 1
        self._pool = None
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))

    def detect(self, frames: list[np.ndarray]) -> list[Detections]:
        return self.submit(frames)()

    def submit(self, frames: list[np.ndarray]):
        """Start detecting; returns a function that waits for the results (decoding goes on meanwhile)."""
        self.calls += len(frames)
        shrunk = [_shrink(f, self.max_side) for f in frames]
        if not self._pool:
            results = self._filter([_animeface_faces(f) for f, _ in shrunk], [s for _, s in shrunk])
            return lambda: results
        futures = [self._pool.submit(_animeface_faces, f) for f, _ in shrunk]
        return lambda: self._filter([f.result() for f in futures], [s for _, s in shrunk])

    def _filter(self, raw, scales) -> list[Detections]:
        out = []
        for faces, scale in zip(raw, scales):
            kept = np.array([f for f in faces if f[4] >= self.conf], dtype=np.float32).reshape(-1, 5)
            out.append(Detections(kept[:, :4] * scale, kept[:, 4], FACE))
        return out

    def find_faces(self, crops: list[np.ndarray]) -> list[tuple[np.ndarray, float] | None]:
        """Best face inside each crop (used when persons come from another detector)."""
        return best_faces(self.detect(crops))

    def find_face_in_still(self, rgb: np.ndarray) -> tuple[np.ndarray, float] | None:
        return cropping.find_face_in_still(self.find_faces, rgb)

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


FACE_FIRST = ("animeface", "imgutils")  # detectors that find faces in whole frames (no person boxes)


def _animeface(config: dict, device: str) -> Detector:
    det = config["detect"]
    return AnimeFaceDetector(conf=det["conf"], workers=det["workers"], max_side=det["max_side"])


def _yolo(config: dict, device: str) -> Detector:
    from anitrack.models import YoloPersonDetector

    return YoloPersonDetector(weights=config["detect"]["weights"], conf=config["detect"]["conf"], device=device,
                              batch=batch_size(config, "detect", device))


def _imgutils(config: dict, device: str) -> Detector:
    from anitrack.models import ImgutilsFaceDetector

    det = config["detect"]
    return ImgutilsFaceDetector(model_name=det["face_model"], conf=det["conf"], device=device)


# ``detect.detector`` -> factory(config, device); yolo loads weights the user named (pickle: trust them)
DETECTORS: dict[str, Callable[[dict, str], Detector]] = {"animeface": _animeface, "yolo": _yolo,
                                                         "imgutils": _imgutils}


def make_detector(config: dict, device: str = "cpu") -> Detector:
    """The configured detector: ``yolo`` persons, or faces straight from frames with ``animeface``
    (wheel) or ``imgutils`` (hub model)."""
    name = config["detect"]["detector"]
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    return DETECTORS[name](config, device)


def detector_id(config: dict) -> str:
    """The detector's model id, known without loading it (fingerprints): the same string the loaded
    detector records."""
    det = config["detect"]
    from anitrack import models

    if det["detector"] == "yolo":
        return models.yolo_model_id(models.resolve_yolo_weights(det["weights"]))
    if det["detector"] == "imgutils":
        return models.face_model_id(det["face_model"])
    return animeface_id()


def face_finder_id(config: dict) -> str:
    """Which finder cuts faces inside person boxes ("" when the detector finds faces itself): the
    imgutils detector beside CCIP, animeface otherwise. Known without loading it (fingerprints)."""
    if config["detect"]["detector"] in FACE_FIRST:
        return ""
    if config["embed"]["model"] == "ccip":
        from anitrack.models import face_model_id

        return face_model_id(config["detect"]["face_model"])
    return animeface_id()


def animeface_id() -> str:
    """animeface's model id: its model ships inside the wheel, so the version names it."""
    return f"animeface=={importlib.metadata.version('animeface')}"


def make_face_finder(config: dict, device: str = "cpu") -> FaceFinder | None:
    """The finder ``face_finder_id`` names, or None."""
    found = face_finder_id(config)
    if not found:
        return None
    if config["embed"]["model"] == "ccip":
        from anitrack.models import ImgutilsFaceFinder

        return ImgutilsFaceFinder(model_name=config["detect"]["face_model"], device=device)
    return AnimeFaceDetector(conf=config["detect"]["conf"], workers=1)
