"""Hub-hosted models of the ``full`` profile: YOLO persons, imgutils faces, CCIP identities.

Nothing here downloads at run time. Weights come from ``anitrack models pull``
(run on a connected machine); a missing model raises :class:`ModelMissingError`
at once, naming the model, the cache looked in and the two ways out. While
loading, huggingface_hub is forced offline, because imgutils' loaders otherwise
retry the network for many seconds (and crash on httpx errors) before failing.

Environment read at import time by the libraries (set them before importing):
``HF_HOME`` / ``HF_HUB_CACHE`` (huggingface_hub), ``YOLO_CONFIG_DIR`` and
``YOLO_OFFLINE`` (ultralytics). ``ANITRACK_MODELS`` is read at every call.
"""
from __future__ import annotations

import hashlib
import os
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

FACE_REPO = "deepghs/anime_face_detection"  # imgutils.detect.face._REPO_ID
CCIP_REPO = "deepghs/ccip_onnx"  # imgutils.metrics.ccip
DEFAULT_FACE_MODEL = "face_detect_v1.4_s"  # detect_faces(level='s', version='v1.4')
YOLO_ASSETS_URL = "https://github.com/ultralytics/assets/releases"

_WAYS_OUT = ("run `anitrack models pull` on a connected machine and copy the folder here "
             "(ANITRACK_MODELS=DIR HF_HOME=DIR/hf HF_HUB_OFFLINE=1), or use `--profile offline`")


class ModelMissingError(RuntimeError):
    """A full-profile model is not on disk; the message is one line that says what to do."""


def models_dir() -> Path:
    """Where YOLO weights live (and, after a pull, the ``hf`` cache beside them)."""
    return Path(os.environ.get("ANITRACK_MODELS") or Path.home() / ".cache" / "anitrack" / "models")


def hf_cache_dir() -> Path:
    """The hub cache huggingface_hub uses now (fixed from HF_HOME/HF_HUB_CACHE when it was imported)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


# -- forcing huggingface_hub offline -------------------------------------------------------------
# huggingface_hub 2.x reads HF_HUB_OFFLINE once at import into constants.HF_HUB_OFFLINE and checks
# that attribute before every request; setting the env var later does nothing. Nested/threaded
# users share one switch, so count them and restore the old value when the last one leaves.
_offline_lock = threading.Lock()
_offline_users = 0
_offline_saved = False


@contextmanager
def hf_offline():
    """Make every hub request fail at once, so a missing file is reported instead of waited on."""
    global _offline_users, _offline_saved
    from huggingface_hub import constants

    with _offline_lock:
        if _offline_users == 0:
            _offline_saved = constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = True
        _offline_users += 1
    try:
        yield
    finally:
        with _offline_lock:
            _offline_users -= 1
            if _offline_users == 0:
                constants.HF_HUB_OFFLINE = _offline_saved


def _require_hf_files(repo_id: str, filenames: list[str], what: str) -> None:
    """Look in the hub cache only; raise ModelMissingError listing what is absent."""
    from huggingface_hub import try_to_load_from_cache

    missing = [f for f in filenames if not isinstance(try_to_load_from_cache(repo_id, f), str)]
    if missing:
        raise ModelMissingError(
            f"{what} model files {', '.join(f'{repo_id}/{f}' for f in missing)} are not in the "
            f"Hugging Face cache {hf_cache_dir()} (full profile never downloads at run time): {_WAYS_OUT}")


@contextmanager
def _hf_missing_as_error(what: str):
    """Turn huggingface_hub's not-in-cache errors (raised deep inside imgutils) into ModelMissingError."""
    from huggingface_hub.errors import EntryNotFoundError, OfflineModeIsEnabled

    try:
        yield
    except (EntryNotFoundError, OfflineModeIsEnabled) as e:
        raise ModelMissingError(f"{what} model is not complete in the Hugging Face cache {hf_cache_dir()} "
                                f"({type(e).__name__}): {_WAYS_OUT}") from e


# -- YOLO persons ---------------------------------------------------------------------------------
def resolve_yolo_weights(weights: str) -> Path:
    """An existing path, else ``models_dir()/weights``; never lets ultralytics fetch a bare name."""
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if path.name == str(weights):  # a bare name: look in the models folder
        candidate = models_dir() / path.name
        if candidate.is_file():
            return candidate
        where = models_dir()
    else:
        where = path.parent
    raise ModelMissingError(f"YOLO weights {weights!r} not found in {where} (full profile never downloads "
                            f"at run time): {_WAYS_OUT}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class YoloPersonDetector:
    """ultralytics YOLO restricted to COCO class 0 (person), as in the AniTrack paper."""

    name = "yolo"

    def __init__(self, weights: str = "yolov8m.pt", conf: float = 0.45, imgsz: int = 640,
                 device: str = "cpu", batch: int = 16):
        path = resolve_yolo_weights(weights)
        os.environ.setdefault("YOLO_OFFLINE", "1")  # no DNS probe / font or requirement fetches
        from ultralytics import YOLO

        self.path = path
        self.model_id = f"{path.name}@{_sha256(path)[:12]}"
        self.conf, self.imgsz, self.device, self.batch = conf, imgsz, device, max(1, int(batch))
        self.calls = 0
        self._model = YOLO(str(path))  # an existing file: ultralytics does not download

    def detect(self, frames_rgb: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per frame (boxes float32 (N,4) xyxy pixels, scores float32 (N,)), persons only."""
        self.calls += len(frames_rgb)
        out = []
        for i in range(0, len(frames_rgb), self.batch):
            # ultralytics treats numpy images as OpenCV BGR
            chunk = [np.ascontiguousarray(f[..., ::-1]) for f in frames_rgb[i:i + self.batch]]
            results = self._model.predict(chunk, classes=[0], conf=self.conf, imgsz=self.imgsz,
                                          device=self.device, verbose=False)
            for r in results:
                out.append((r.boxes.xyxy.cpu().numpy().astype(np.float32).reshape(-1, 4),
                            r.boxes.conf.cpu().numpy().astype(np.float32).reshape(-1)))
        return out

    def close(self) -> None:
        pass


# -- imgutils faces -------------------------------------------------------------------------------
def imgutils_face_model_id(model_name: str | None = None) -> str:
    return f"{FACE_REPO}/{model_name or DEFAULT_FACE_MODEL}"


class ImgutilsFaceFinder:
    """imgutils' YOLOv8 anime face detector, used to find the face inside a person box."""

    name = "imgutils"

    def __init__(self, model_name: str | None = None, conf: float = 0.25, iou: float = 0.7):
        self.model_name = model_name or DEFAULT_FACE_MODEL
        self.conf, self.iou = conf, iou
        self.model_id = imgutils_face_model_id(self.model_name)
        what = f"imgutils face detector {self.model_name!r}"
        _require_hf_files(FACE_REPO, [f"{self.model_name}/model.onnx"], what)
        with hf_offline(), _hf_missing_as_error(what):
            from imgutils.detect import detect_faces

            self._detect_faces = detect_faces
            # loads the ONNX through imgutils' own path (YOLOModel) and proves it runs
            self._detect(Image.new("RGB", (32, 32)))

    def _detect(self, image: Image.Image):
        return self._detect_faces(image, model_name=self.model_name, conf_threshold=self.conf,
                                  iou_threshold=self.iou)

    def find_faces(self, crops_rgb: list[np.ndarray]) -> list[tuple[np.ndarray, float] | None]:
        """Best (box xyxy float32 in crop coords, score) per crop, or None."""
        found = []
        with hf_offline():  # imgutils opens the model once per thread: keep later threads offline too
            for crop in crops_rgb:
                dets = self._detect(Image.fromarray(np.ascontiguousarray(crop)).convert("RGB"))
                if not dets:
                    found.append(None)
                    continue
                box, _, score = max(dets, key=lambda d: d[2])
                found.append((np.asarray(box, dtype=np.float32), float(score)))
        return found


# -- CCIP identities ------------------------------------------------------------------------------
def default_ccip_model() -> str:
    from imgutils.metrics import ccip

    return ccip._DEFAULT_MODEL_NAMES


def _ccip_files(model: str) -> list[str]:
    return [f"{model}/model_feat.onnx", f"{model}/model_metrics.onnx", f"{model}/metrics.json"]


class CcipEmbedder:
    """CCIP character embeddings with their own learned difference metric and calibrated threshold."""

    name = "ccip"
    metric = "ccip"

    def __init__(self, model: str | None = None, batch: int = 32, block: int = 512):
        from imgutils.metrics import ccip

        self._ccip = ccip
        self.model = model or ccip._DEFAULT_MODEL_NAMES
        self.model_id = self.model
        self.batch, self.block = max(1, int(batch)), max(1, int(block))
        what = f"CCIP {self.model!r}"
        _require_hf_files(CCIP_REPO, _ccip_files(self.model), what)
        with hf_offline(), _hf_missing_as_error(what):
            # the same lru-cached loaders the public ccip_* functions call
            feat = ccip._open_feat_model(self.model)
            ccip._open_metric_model(self.model)
            self._threshold = float(ccip.ccip_default_threshold(self.model))
        dim = feat.get_outputs()[0].shape[-1]
        self.dim = dim if isinstance(dim, int) else int(self.embed([np.zeros((8, 8, 3), np.uint8)]).shape[1])

    def embed(self, crops_rgb: list[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 features of RGB crops."""
        parts = []
        with hf_offline():
            for i in range(0, len(crops_rgb), self.batch):
                images = [Image.fromarray(np.ascontiguousarray(c)).convert("RGB")
                          for c in crops_rgb[i:i + self.batch]]
                parts.append(self._ccip.ccip_batch_extract_features(images, model=self.model))
        if not parts:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def threshold(self) -> float:
        """Difference at or below which two features are the same character (from the model's metrics.json)."""
        return self._threshold

    def differences(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(len(a), len(b)) CCIP differences; the metric model sees [a_block; b_block] at a time."""
        a = np.asarray(a, np.float32).reshape(-1, self.dim)
        b = np.asarray(b, np.float32).reshape(-1, self.dim)
        out = np.zeros((len(a), len(b)), np.float32)
        with hf_offline():
            for i in range(0, len(a), self.block):
                for j in range(0, len(b), self.block):
                    xa, xb = a[i:i + self.block], b[j:j + self.block]
                    full = self._ccip.ccip_batch_differences(list(xa) + list(xb), model=self.model)
                    out[i:i + len(xa), j:j + len(xb)] = full[:len(xa), len(xa):]
        return out


# -- pulling --------------------------------------------------------------------------------------
def _check_reachable(url: str, timeout: float = 3.0) -> None:
    """One HEAD request with a short timeout, so an offline machine fails in seconds, not minutes."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # the server answered: reachable
    except (OSError, ValueError) as e:  # URLError, timeouts, refused, DNS failure
        raise ConnectionError(f"cannot reach {url} ({getattr(e, 'reason', e)}); `anitrack models pull` needs a "
                              "connected machine: run it there and copy the folder, or use `--profile offline`") from e


def pull_models(to: Path | None = None, yolo_weights: str = "yolov8m.pt", ccip_model: str | None = None,
                face_model: str | None = None) -> list[str]:
    """Fetch every full-profile model into ``to`` for air-gapped workers; returns the local paths.

    YOLO weights land in ``to/``; imgutils' models in the hub cache ``to/hf/hub``, so workers set
    ``ANITRACK_MODELS=to HF_HOME=to/hf HF_HUB_OFFLINE=1``.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    _check_reachable(constants.ENDPOINT)
    if not Path(yolo_weights).is_file():
        _check_reachable(YOLO_ASSETS_URL)
    to = Path(to) if to is not None else models_dir()
    ccip_model = ccip_model or default_ccip_model()
    face_model = face_model or DEFAULT_FACE_MODEL

    to.mkdir(parents=True, exist_ok=True)
    fetched = []
    if Path(yolo_weights).is_file():  # a local file: copy it in so workers find it by name
        target = to / Path(yolo_weights).name
        if target.resolve() != Path(yolo_weights).resolve():
            target.write_bytes(Path(yolo_weights).read_bytes())
        fetched.append(str(target))
    else:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics.utils.downloads import attempt_download_asset

        target = to / Path(yolo_weights).name
        attempt_download_asset(target)  # downloads to the given path, not to ultralytics' weights_dir
        if not target.is_file():
            raise RuntimeError(f"ultralytics did not provide YOLO weights {yolo_weights!r} (not a release asset?)")
        fetched.append(str(target))

    wanted = [(CCIP_REPO, f, True) for f in _ccip_files(ccip_model)]
    wanted += [(CCIP_REPO, f"{ccip_model}/cluster.json", False),
               (FACE_REPO, f"{face_model}/model.onnx", True),
               (FACE_REPO, f"{face_model}/model_type.json", False),  # absent means 'yolo'
               (FACE_REPO, f"{face_model}/threshold.json", False)]
    cache = to / "hf" / "hub"
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False  # pulling is the one time we go online
    try:
        for repo_id, filename, required in wanted:
            try:
                fetched.append(hf_hub_download(repo_id, filename, cache_dir=cache, etag_timeout=10))
            except EntryNotFoundError:  # optional file absent upstream: imgutils falls back to defaults
                if required:
                    raise
    finally:
        constants.HF_HUB_OFFLINE = saved
    return fetched


def check_full_profile(config: dict) -> None:
    """Fail at once, before any episode starts, when a full-profile model is not on this machine."""
    if config["detect"]["detector"] == "yolo":
        resolve_yolo_weights(config["detect"]["weights"])
    if config["embed"]["model"] == "ccip":
        model = config["embed"]["ccip_model"] or default_ccip_model()
        _require_hf_files(CCIP_REPO, _ccip_files(model), f"CCIP {model!r}")
        if config["detect"]["detector"] == "yolo":
            _require_hf_files(FACE_REPO, [f"{DEFAULT_FACE_MODEL}/model.onnx"],
                              f"imgutils face detector {DEFAULT_FACE_MODEL!r}")
