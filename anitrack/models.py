"""Hub-hosted models of the ``full`` and ``hub-cpu`` profiles: YOLO persons, imgutils faces, CCIP identities.

Nothing here downloads at run time. Weights come from ``anitrack models pull``
(run on a connected machine) into one folder, ``models_dir()``: YOLO weights at its
top, hub files in its ``hf/hub`` cache. anitrack reads that cache itself, whatever
HF_HOME or HF_HUB_CACHE say, so the air-gapped recipe is ``ANITRACK_MODELS=DIR``
alone. A missing model raises :class:`ModelMissingError` at once, naming the model,
the folder looked in and the two ways out. While loading, huggingface_hub is forced
offline, because imgutils' loaders otherwise retry the network for many seconds.

Every model id carries what pins its weights: the hub commit of the files used
(CCIP, the face detector) or the weights' sha256 (YOLO), so a re-pull after an
upstream update never mixes two models' vectors under one name.
"""
from __future__ import annotations

import hashlib
import os
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from anitrack import crops as cropping
from anitrack import imgutils_adapter
from anitrack.detections import FACE, PERSON, Detections, best_faces

FACE_REPO = "deepghs/anime_face_detection"  # imgutils.detect.face._REPO_ID
CCIP_REPO = "deepghs/ccip_onnx"  # imgutils.metrics.ccip
DEFAULT_FACE_MODEL = "face_detect_v1.4_s"  # detect_faces(level='s', version='v1.4')
# where ultralytics 8.4 itself fetches its release weights (attempt_download_asset's default tag);
# ANITRACK_YOLO_RELEASES names a mirror holding the same file names
YOLO_RELEASES = "https://github.com/ultralytics/assets/releases/download/v8.4.0"

_WAYS_OUT = ("run `anitrack models pull` (on a connected machine, then copy the folder here and set "
             "ANITRACK_MODELS to it), or use `--profile offline`")


class ModelMissingError(RuntimeError):
    """A hub model is not on disk (or cannot run here); the message is one line that says what to do."""


def models_dir() -> Path:
    """The one folder of pulled models: YOLO weights, the ONNX exports and the ``hf/hub`` cache."""
    return Path(os.environ.get("ANITRACK_MODELS") or Path.home() / ".cache" / "anitrack" / "models")


def hub_cache() -> Path:
    """The Hugging Face cache anitrack pulls into and loads from (inside ``models_dir()``)."""
    return models_dir() / "hf" / "hub"


def yolo_releases() -> str:
    return (os.environ.get("ANITRACK_YOLO_RELEASES") or YOLO_RELEASES).rstrip("/")


# -- the local hub ---------------------------------------------------------------------------------
# huggingface_hub 2.x reads HF_HUB_OFFLINE and HF_HUB_CACHE once at import into its constants and
# reads those attributes at each call; setting the env vars later does nothing. Nested/threaded
# users share one switch, so count them and restore the old values when the last one leaves.
_local_lock = threading.Lock()
_local_users = 0
_local_saved: tuple = ()


@contextmanager
def local_hub():
    """Every hub lookup inside reads ``hub_cache()`` and fails at once when a file is not there."""
    global _local_users, _local_saved
    from huggingface_hub import constants

    with _local_lock:
        if _local_users == 0:
            _local_saved = (constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE)
            constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = True, str(hub_cache())
        _local_users += 1
    try:
        yield
    finally:
        with _local_lock:
            _local_users -= 1
            if _local_users == 0:
                constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = _local_saved


def hub_revision(repo_id: str, filenames: list[str], what: str) -> str:
    """The hub commit the cached ``filenames`` come from; ModelMissingError listing what is absent."""
    from huggingface_hub import try_to_load_from_cache

    found = {f: try_to_load_from_cache(repo_id, f, cache_dir=hub_cache()) for f in filenames}
    missing = [f for f, p in found.items() if not isinstance(p, str)]
    if missing:
        raise ModelMissingError(
            f"{what} model files {', '.join(f'{repo_id}/{f}' for f in missing)} are not in the model "
            f"cache {hub_cache()} (hub models are never downloaded at run time): {_WAYS_OUT}")
    commits = {Path(p).relative_to(hub_cache()).parts[2] for p in found.values()}  # models--x/snapshots/<c>/
    if len(commits) > 1:
        raise ModelMissingError(f"{what} model files come from different hub commits ({', '.join(sorted(commits))}) "
                                f"in {hub_cache()}: pull them again with `anitrack models pull`")
    return commits.pop()


@contextmanager
def _hub_missing_as_error(what: str):
    """Turn huggingface_hub's not-in-cache errors (raised deep inside imgutils) into ModelMissingError."""
    from huggingface_hub.errors import EntryNotFoundError, OfflineModeIsEnabled

    try:
        yield
    except (EntryNotFoundError, OfflineModeIsEnabled) as e:
        raise ModelMissingError(f"{what} model is not complete in the model cache {hub_cache()} "
                                f"({type(e).__name__}): {_WAYS_OUT}") from e


def _session_threads() -> int:
    """The process's thread budget (the episode worker sets torch's from its share of the cores)."""
    import torch

    return torch.get_num_threads()


def check_device(device: str) -> None:
    """``cuda`` for the ONNX models needs onnxruntime's CUDA provider: say so in one line, before any work."""
    if device != "cuda":
        return
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise ModelMissingError("--device cuda: this onnxruntime has no CUDA provider, so CCIP and the face "
                                "detector cannot run on the GPU; install it with `pip uninstall -y onnxruntime "
                                "&& pip install 'anitrack[gpu]'`, or use --device cpu")


class BackgroundDetect:
    """``submit`` runs ``detect`` on one background thread, so decoding goes on while a batch is detected
    (torch and onnxruntime release the GIL while they compute; on a GPU the frames of the next batch are
    decoded meanwhile). One thread: the model is never run by two at once."""

    _thread: ThreadPoolExecutor | None = None

    def submit(self, frames_rgb: list[np.ndarray]):
        """Start detecting; returns a function that waits for the results."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"detect-{self.name}")
        return self._thread.submit(self.detect, frames_rgb).result

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown()
            self._thread = None


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
    raise ModelMissingError(f"YOLO weights {weights!r} not found in {where} (hub models are never downloaded "
                            f"at run time): {_WAYS_OUT}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def yolo_model_id(path: Path) -> str:
    """YOLO weights are named by their file and pinned by their content."""
    return f"{path.name}@{_sha256(path)[:12]}"


class YoloPersonDetector(BackgroundDetect):
    """ultralytics YOLO restricted to COCO class 0 (person), as in the AniTrack paper."""

    name = "yolo"

    def __init__(self, weights: str = "yolov8m.pt", conf: float = 0.45, imgsz: int = 640,
                 device: str = "cpu", batch: int = 16):
        path = resolve_yolo_weights(weights)
        os.environ.setdefault("YOLO_OFFLINE", "1")  # no DNS probe / font or requirement fetches
        from ultralytics import YOLO

        self.path = path
        self.model_id = yolo_model_id(path)
        self.conf, self.imgsz, self.device, self.batch = conf, imgsz, device, max(1, int(batch))
        self.calls = 0
        self._model = YOLO(str(path))  # an existing file: ultralytics does not download

    def detect(self, frames_rgb: list[np.ndarray]) -> list[Detections]:
        """Per frame, persons only."""
        self.calls += len(frames_rgb)
        out = []
        for i in range(0, len(frames_rgb), self.batch):
            # ultralytics treats numpy images as OpenCV BGR
            chunk = [np.ascontiguousarray(f[..., ::-1]) for f in frames_rgb[i:i + self.batch]]
            results = self._model.predict(chunk, classes=[0], conf=self.conf, imgsz=self.imgsz,
                                          device=self.device, verbose=False)
            for r in results:
                out.append(Detections(r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy(), PERSON))
        return out


# -- imgutils faces -------------------------------------------------------------------------------
def _face_files(model_name: str) -> list[str]:
    return [f"{model_name}/model.onnx"]


def face_model_id(model_name: str = "") -> str:
    name = model_name or DEFAULT_FACE_MODEL
    commit = hub_revision(FACE_REPO, _face_files(name), f"imgutils face detector {name!r}")
    return f"{FACE_REPO}/{name}@{commit[:12]}"


class ImgutilsFaceDetector(BackgroundDetect):
    """imgutils' YOLOv8 anime face detector on whole frames: faces first, no person detector
    (the hub-cpu profile). Also finds the face inside a person box (``find_faces``)."""

    name = "imgutils"

    def __init__(self, model_name: str = "", conf: float = 0.25, iou: float = 0.7, device: str = "cpu"):
        self.model_name = model_name or DEFAULT_FACE_MODEL
        self.conf, self.iou = conf, iou
        self.model_id = face_model_id(self.model_name)
        self.calls = 0
        imgutils_adapter.configure_sessions(device, _session_threads())
        what = f"imgutils face detector {self.model_name!r}"
        with local_hub(), _hub_missing_as_error(what):
            from imgutils.detect import detect_faces

            self._detect_faces = detect_faces
            # loads the ONNX through imgutils' own path (YOLOModel) and proves it runs
            self._faces(np.zeros((32, 32, 3), np.uint8))

    def _faces(self, rgb: np.ndarray) -> list:
        image = Image.fromarray(np.ascontiguousarray(rgb)).convert("RGB")
        with local_hub():  # imgutils opens the model once per thread: keep later threads local too
            return self._detect_faces(image, model_name=self.model_name, conf_threshold=self.conf,
                                      iou_threshold=self.iou)

    def detect(self, frames_rgb: list[np.ndarray]) -> list[Detections]:
        """Per frame, every face found."""
        self.calls += len(frames_rgb)
        out = []
        for frame in frames_rgb:
            dets = self._faces(frame)
            out.append(Detections([d[0] for d in dets], [d[2] for d in dets], FACE))
        return out

    def find_faces(self, crops_rgb: list[np.ndarray]) -> list[tuple[np.ndarray, float] | None]:
        """Best (box xyxy float32 in crop coords, score) per crop, or None."""
        return best_faces(self.detect(crops_rgb))

    def find_face_in_still(self, rgb: np.ndarray) -> tuple[np.ndarray, float] | None:
        return cropping.find_face_in_still(self.find_faces, rgb)


ImgutilsFaceFinder = ImgutilsFaceDetector  # the person-first full profile asks it per person box


# -- CCIP identities ------------------------------------------------------------------------------
def _ccip_files(model: str) -> list[str]:
    return [f"{model}/model_feat.onnx", f"{model}/model_metrics.onnx", f"{model}/metrics.json"]


def ccip_model_id(model: str = "") -> str:
    """``<model>@<hub commit>``: the name CCIP vectors are stored under."""
    name = ccip_name(model) or imgutils_adapter.default_ccip_model()
    return f"{name}@{hub_revision(CCIP_REPO, _ccip_files(name), f'CCIP {name!r}')[:12]}"


def ccip_name(model_id: str) -> str:
    """The CCIP model name inside a model id (ids before revisions were recorded are the bare name)."""
    return model_id.split("@", 1)[0]


class CcipEmbedder:
    """CCIP character embeddings with their own learned difference metric and calibrated threshold."""

    name = "ccip"
    metric = "ccip"

    def __init__(self, model: str | None = None, batch: int = 32, block: int = 512, device: str = "cpu"):
        from imgutils.metrics import ccip

        self._ccip = ccip
        self.model = ccip_name(model or "") or imgutils_adapter.default_ccip_model()
        self.model_id = ccip_model_id(self.model)
        self.batch, self.block = max(1, int(batch)), max(1, int(block))
        imgutils_adapter.configure_sessions(device, _session_threads())
        what = f"CCIP {self.model!r}"
        with local_hub(), _hub_missing_as_error(what):
            feat, _ = imgutils_adapter.open_ccip(self.model)
            self._threshold = float(ccip.ccip_default_threshold(self.model))
        self.session = feat
        dim = feat.get_outputs()[0].shape[-1]
        self.dim = dim if isinstance(dim, int) else int(self.embed([np.zeros((8, 8, 3), np.uint8)]).shape[1])

    def embed(self, crops_rgb: list[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 features of RGB crops."""
        parts = []
        with local_hub():
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
        with local_hub():
            for i in range(0, len(a), self.block):
                for j in range(0, len(b), self.block):
                    xa, xb = a[i:i + self.block], b[j:j + self.block]
                    full = self._ccip.ccip_batch_differences(list(xa) + list(xb), model=self.model)
                    out[i:i + len(xa), j:j + len(xb)] = full[:len(xa), len(xa):]
        return out


# -- what a config needs ----------------------------------------------------------------------------
def needed(config: dict) -> dict[str, str]:
    """The hub models a resolved config runs: role -> name (``yolo`` weights, ``faces``, ``ccip``)."""
    det, emb = config["detect"], config["embed"]
    out = {}
    if det["detector"] == "yolo":
        out["yolo"] = det["weights"]
    if det["detector"] == "imgutils" or (det["detector"] == "yolo" and emb["model"] == "ccip"):
        out["faces"] = det["face_model"] or DEFAULT_FACE_MODEL
    if emb["model"] == "ccip":
        out["ccip"] = ccip_name(emb["ccip_model"]) or imgutils_adapter.default_ccip_model()
    return out


def check_models(config: dict, device: str = "cpu") -> None:
    """Fail at once, before any episode starts, when a hub model the config runs is not on this
    machine, or ``device`` cannot run the ONNX ones."""
    wanted = needed(config)
    if "yolo" in wanted:
        resolve_yolo_weights(wanted["yolo"])
    if "faces" in wanted:
        face_model_id(wanted["faces"])
    if "ccip" in wanted:
        ccip_model_id(wanted["ccip"])
    if "faces" in wanted or "ccip" in wanted:
        check_device(device)


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


def _download(url: str, target: Path) -> None:
    """Fetch ``url`` beside ``target`` and rename it into place once complete, so a pull that fails
    half-way leaves no file a later run would take as the weights."""
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(part, "wb") as out:
            expected = int(resp.headers.get("Content-Length") or 0)
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        if expected and part.stat().st_size != expected:
            raise ConnectionError(f"{url}: got {part.stat().st_size} of {expected} bytes")
        os.replace(part, target)
    except urllib.error.HTTPError as e:
        raise ConnectionError(f"{url}: HTTP {e.code} (not a YOLO release file?)") from e
    finally:
        part.unlink(missing_ok=True)


def pull_models(config: dict, to: Path | None = None) -> list[str]:
    """Fetch every hub model ``config`` runs into ``to`` (default ``models_dir()``); returns the local
    paths. Workers without a network then need only ``ANITRACK_MODELS=to``."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    wanted = needed(config)
    to = Path(to) if to is not None else models_dir()
    yolo = Path(wanted["yolo"]).expanduser() if "yolo" in wanted else None
    if "faces" in wanted or "ccip" in wanted:
        _check_reachable(constants.ENDPOINT)
    if yolo is not None and not yolo.is_file():
        _check_reachable(yolo_releases())
    to.mkdir(parents=True, exist_ok=True)
    fetched = []
    if yolo is not None:
        target = to / yolo.name
        if yolo.is_file():  # a local file: copy it in so workers find it by name
            if target.resolve() != yolo.resolve():
                target.write_bytes(yolo.read_bytes())
        elif not target.is_file():
            _download(f"{yolo_releases()}/{yolo.name}", target)
        fetched.append(str(target))
    files = []
    if "ccip" in wanted:
        files += [(CCIP_REPO, f, True) for f in _ccip_files(wanted["ccip"])]
        files.append((CCIP_REPO, f"{wanted['ccip']}/cluster.json", False))
    if "faces" in wanted:
        files += [(FACE_REPO, f, True) for f in _face_files(wanted["faces"])]
        files += [(FACE_REPO, f"{wanted['faces']}/model_type.json", False),  # absent means 'yolo'
                  (FACE_REPO, f"{wanted['faces']}/threshold.json", False)]
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False  # pulling is the one time we go online
    try:
        for repo_id, filename, required in files:
            try:  # huggingface_hub writes '.incomplete' files and moves them in when complete
                fetched.append(hf_hub_download(repo_id, filename, cache_dir=to / "hf" / "hub", etag_timeout=10))
            except EntryNotFoundError:  # optional file absent upstream: imgutils falls back to defaults
                if required:
                    raise
    finally:
        constants.HF_HUB_OFFLINE = saved
    return fetched
