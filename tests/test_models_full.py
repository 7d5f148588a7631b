"""Full-profile model wrappers against the real libraries, with tiny stand-in weights.

No network: YOLO gets randomly initialised yolov8n weights saved to a temporary
models folder; CCIP and the imgutils face detector get tiny ONNX graphs with the
real models' input/output names, placed in a fake Hugging Face cache, and run
through imgutils' own loading and inference code.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics: no DNS probe at import

from anitrack import models  # noqa: E402
from anitrack.models import ModelMissingError  # noqa: E402



# -- helpers --------------------------------------------------------------------------------------
def put_hf_file(hub: Path, repo_id: str, filename: str, data: bytes) -> Path:
    """Write one file the way huggingface_hub lays out its cache (refs/main -> snapshots/<commit>/...)."""
    folder = hub / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    path = folder / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _onnx_bytes(nodes, inputs, outputs, initializers=(), metadata=None) -> bytes:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ccip_feat_onnx(dim: int = 768) -> bytes:
    """CCIP's feature signature: 'input' float32 (N,3,384,384) -> 'output' float32 (N,dim)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(3, dim)).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["output"])]
    return _onnx_bytes(nodes,
                       [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 384, 384])],
                       [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", dim])],
                       [numpy_helper.from_array(w, "w")])


def ccip_metric_onnx(dim: int = 768) -> bytes:
    """CCIP's metric signature: 'input' float32 (N,dim) -> 'output' float32 (N,N); here 1 - cosine."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceL2", ["input"], ["norm"], axes=[1], keepdims=1),
             helper.make_node("Div", ["input", "norm"], ["unit"]),
             helper.make_node("Transpose", ["unit"], ["unit_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["unit", "unit_t"], ["sim"]),
             helper.make_node("Sub", ["one", "sim"], ["output"])]
    return _onnx_bytes(nodes,
                       [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", dim])],
                       [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", "N"])],
                       [numpy_helper.from_array(np.array(1.0, np.float32), "one")])


# two candidate faces in a 64x64 input, YOLOv8 layout (1, 4 + classes, boxes), xywh centres;
# scores scale with the image's mean brightness so black crops have no face.
FACE_BOXES = np.array([[32, 10], [32, 10], [20, 8], [20, 8]], np.float32)  # rows x, y, w, h; cols boxes
FACE_SCORES = np.array([0.9, 0.5], np.float32)


def face_onnx() -> bytes:
    """imgutils YOLO signature: 'images' float32 (1,3,H,W) -> 'output0' (1, 5, K); metadata names/imgsz."""
    from onnx import TensorProto, helper, numpy_helper

    k = FACE_BOXES.shape[1]
    base = np.zeros((1, 5, k), np.float32)
    base[0, :4] = FACE_BOXES
    scale = np.zeros((1, 5, k), np.float32)
    scale[0, 4] = FACE_SCORES
    nodes = [helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "scale"], ["scores"]),
             helper.make_node("Add", ["base", "scores"], ["output0"])]
    return _onnx_bytes(nodes,
                       [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "H", "W"])],
                       [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, k])],
                       [numpy_helper.from_array(base, "base"), numpy_helper.from_array(scale, "scale")],
                       metadata={"names": "{0: 'face'}", "imgsz": "[64, 64]"})


def install_fake_ccip(hub: Path, model: str, threshold: float = 0.17) -> None:
    put_hf_file(hub, models.CCIP_REPO, f"{model}/model_feat.onnx", ccip_feat_onnx())
    put_hf_file(hub, models.CCIP_REPO, f"{model}/model_metrics.onnx", ccip_metric_onnx())
    put_hf_file(hub, models.CCIP_REPO, f"{model}/metrics.json", json.dumps({"threshold": threshold}).encode())


def install_fake_face(hub: Path, model_name: str) -> None:
    put_hf_file(hub, models.FACE_REPO, f"{model_name}/model.onnx", face_onnx())


def unique(prefix: str) -> str:
    """imgutils caches opened models by name for the whole process: never reuse one."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def imgutils_loaded():
    """Import imgutils once, outside the timed sections (its import alone takes seconds)."""
    import imgutils.detect  # noqa: F401
    import imgutils.metrics  # noqa: F401


@pytest.fixture(scope="module")
def silent_endpoint():
    """A server that accepts connections and never answers: any hub request made stalls until timeout."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"


@pytest.fixture
def hub(tmp_path, monkeypatch, imgutils_loaded, silent_endpoint):
    """An empty hub cache behind a silent endpoint, so a test is slow if anything skips the cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import; patch the live value
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # models.py must force offline itself
    monkeypatch.setattr(constants, "ENDPOINT", silent_endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        silent_endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    return cache


def assert_helpful(err: ModelMissingError, *names: str) -> None:
    msg = str(err)
    assert "\n" not in msg
    for name in (*names, "anitrack models pull", "--profile offline"):
        assert name in msg, (name, msg)


# -- YOLO -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def yolo_dir(tmp_path_factory):
    from ultralytics import YOLO

    import torch

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("anitrack_models")
    yolo = YOLO("yolov8n.yaml")  # random weights, built locally
    for branch in yolo.model.model[-1].cv3:  # make class 0 (person) fire everywhere, so boxes come out
        branch[-1].bias.data[0] = 4.0
    yolo.save(str(d / "yolov8n.pt"))
    return d


def synthetic_frames(n=3, h=240, w=320):
    rng = np.random.default_rng(1)
    frames = []
    for _ in range(n):
        f = np.full((h, w, 3), 200, np.uint8)
        x, y = rng.integers(0, w - 80), rng.integers(0, h - 120)
        f[y:y + 120, x:x + 80] = rng.integers(0, 255, 3, dtype=np.uint8)
        frames.append(f)
    return frames


def test_yolo_detects_batch_with_local_weights(yolo_dir, monkeypatch):
    monkeypatch.setenv("ANITRACK_MODELS", str(yolo_dir))
    assert models.resolve_yolo_weights("yolov8n.pt") == yolo_dir / "yolov8n.pt"
    det = models.YoloPersonDetector(weights="yolov8n.pt", imgsz=320, batch=2)
    assert det.name == "yolo"
    name, digest = det.model_id.split("@")
    assert name == "yolov8n.pt" and len(digest) == 12 and int(digest, 16) >= 0
    frames = synthetic_frames()
    out = det.detect(frames)
    assert len(out) == 3 and det.calls == 3
    assert all(len(s) for _, s in out)  # the biased head fires: boxes get checked
    for (boxes, scores), f in zip(out, frames):
        assert boxes.dtype == np.float32 and scores.dtype == np.float32
        assert boxes.shape == (len(scores), 4) and scores.shape == (len(scores),)
        if len(boxes):
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
            assert (boxes[:, 2] <= f.shape[1]).all() and (boxes[:, 3] <= f.shape[0]).all()
            assert (boxes[:, 2] >= boxes[:, 0]).all() and (scores >= 0.45).all()
    # batching is an implementation detail: one call of 3 gives the same as calls of 2 + 1
    again = models.YoloPersonDetector(weights=str(yolo_dir / "yolov8n.pt"), imgsz=320, batch=16)
    assert again.model_id == det.model_id
    for (b1, s1), (b2, s2) in zip(out, again.detect(frames)):
        np.testing.assert_allclose(b1, b2, atol=1e-3)
        np.testing.assert_allclose(s1, s2, atol=1e-4)
    assert det.detect([]) == []


def test_yolo_missing_weights_fail_at_once(tmp_path, monkeypatch):
    empty = tmp_path / "empty_models"
    empty.mkdir()
    monkeypatch.setenv("ANITRACK_MODELS", str(empty))
    assert models.models_dir() == empty
    t0 = time.monotonic()
    with pytest.raises(ModelMissingError) as err:
        models.resolve_yolo_weights("yolov8m.pt")
    assert_helpful(err.value, "yolov8m.pt", str(empty))
    with pytest.raises(ModelMissingError) as err:
        models.YoloPersonDetector(weights="yolov8m.pt")
    assert_helpful(err.value, "yolov8m.pt", str(empty))
    with pytest.raises(ModelMissingError) as err:
        models.resolve_yolo_weights(str(tmp_path / "nowhere" / "mine.pt"))
    assert_helpful(err.value, "mine.pt", str(tmp_path / "nowhere"))
    assert time.monotonic() - t0 < 2
    assert not (empty / "yolov8m.pt").exists() and not Path("yolov8m.pt").exists()


def test_models_dir_default(monkeypatch):
    monkeypatch.delenv("ANITRACK_MODELS", raising=False)
    assert models.models_dir() == Path.home() / ".cache" / "anitrack" / "models"


# -- CCIP -----------------------------------------------------------------------------------------
def test_ccip_embeds_and_compares_through_imgutils(hub):
    from huggingface_hub import constants

    model = unique("ccip-test")
    install_fake_ccip(hub, model, threshold=0.21)
    t0 = time.monotonic()
    emb = models.CcipEmbedder(model=model, batch=2)
    assert constants.HF_HUB_OFFLINE is False  # forced offline only while loading
    assert emb.name == "ccip" and emb.metric == "ccip" and emb.model_id == model
    assert emb.dim == 768 and emb.threshold() == pytest.approx(0.21)
    rng = np.random.default_rng(2)
    crops = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(50, 40), (64, 64), (30, 90)]]
    crops.append(np.full((20, 20, 3), (255, 0, 0), np.uint8))
    feats = emb.embed(crops)
    assert feats.shape == (4, 768) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats, emb.embed(crops))  # deterministic
    # the same as imgutils' own public function on the same images
    from imgutils.metrics import ccip_batch_differences, ccip_batch_extract_features
    from PIL import Image

    direct = ccip_batch_extract_features([Image.fromarray(c) for c in crops], model=model)
    np.testing.assert_allclose(feats, direct, rtol=1e-5, atol=1e-6)
    d = emb.differences(feats[:1], feats)
    assert d.shape == (1, 4) and d.dtype == np.float32
    full = ccip_batch_differences(list(feats), model=model)
    np.testing.assert_allclose(emb.differences(feats, feats), full, atol=1e-5)
    np.testing.assert_allclose(emb.differences(feats[:3], feats[1:]), full[:3, 1:], atol=1e-5)
    assert abs(d[0, 0]) < 1e-5  # a crop is the same as itself
    assert emb.embed([]).shape == (0, 768)
    emb.block = 2  # blockwise evaluation of big sets gives the same matrix
    np.testing.assert_allclose(emb.differences(feats[:3], feats), full[:3], atol=1e-5)
    assert time.monotonic() - t0 < 8  # a hub request would have waited out its 10 s timeout


def test_ccip_missing_model_fails_fast(hub):
    t0 = time.monotonic()
    with pytest.raises(ModelMissingError) as err:
        models.CcipEmbedder()  # imgutils' default model name, empty cache
    assert_helpful(err.value, models.default_ccip_model(), str(hub))
    model = unique("ccip-half")
    put_hf_file(hub, models.CCIP_REPO, f"{model}/model_feat.onnx", ccip_feat_onnx())
    with pytest.raises(ModelMissingError) as err:
        models.CcipEmbedder(model=model)
    assert_helpful(err.value, f"{model}/model_metrics.onnx", f"{model}/metrics.json")
    assert f"{model}/model_feat.onnx" not in str(err.value)
    assert time.monotonic() - t0 < 3


# -- imgutils face detector -----------------------------------------------------------------------
def test_face_finder_through_imgutils(hub):
    name = unique("face-test")
    install_fake_face(hub, name)
    t0 = time.monotonic()
    finder = models.ImgutilsFaceFinder(model_name=name, conf=0.25)
    assert finder.name == "imgutils" and name in finder.model_id
    white = np.full((96, 128, 3), 255, np.uint8)
    gray = np.full((96, 128, 3), 102, np.uint8)  # mean 0.4: only the 0.9 box passes 0.25
    black = np.zeros((50, 50, 3), np.uint8)
    boxes = [None if f is None else f[0] for f in finder.find_faces([white, black, gray])]
    assert boxes[1] is None
    # box (x 32, y 32, w 20, h 20) in the 64x64 input, scaled back to the 128x96 crop
    for box in (boxes[0], boxes[2]):
        assert box.dtype == np.float32 and box.shape == (4,)
        np.testing.assert_allclose(box, [44, 33, 84, 63], atol=1)
    scored = finder.find_faces([white])
    assert scored[0][1] == pytest.approx(0.9, abs=1e-4)
    assert time.monotonic() - t0 < 8  # a hub request would have waited out its 10 s timeout


def test_face_finder_missing_model_fails_fast(hub):
    t0 = time.monotonic()
    with pytest.raises(ModelMissingError) as err:
        models.ImgutilsFaceFinder()
    assert_helpful(err.value, f"{models.DEFAULT_FACE_MODEL}/model.onnx", models.FACE_REPO, str(hub))
    assert time.monotonic() - t0 < 3


def test_hf_offline_nests_and_restores(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with models.hf_offline():
        with models.hf_offline():
            assert constants.is_offline_mode()
        assert constants.is_offline_mode()
    assert constants.HF_HUB_OFFLINE is False


def test_air_gapped_recipe_in_fresh_process(tmp_path):
    """ANITRACK_MODELS=DIR HF_HOME=DIR/hf HF_HUB_OFFLINE=1, set before any import, as a worker would."""
    ccip_name, face_name = unique("ccip-env"), unique("face-env")
    hub = tmp_path / "hf" / "hub"
    install_fake_ccip(hub, ccip_name)
    install_fake_face(hub, face_name)
    script = textwrap.dedent(f"""
        import numpy as np
        from anitrack import models
        emb = models.CcipEmbedder(model={ccip_name!r})
        f = emb.embed([np.full((40, 30, 3), 9, np.uint8)])
        finder = models.ImgutilsFaceFinder(model_name={face_name!r})
        box = finder.find_faces([np.full((64, 64, 3), 255, np.uint8)])[0][0]
        try:
            models.CcipEmbedder(model="not-pulled")
        except models.ModelMissingError as e:
            missing = str(e)
        print(f.shape, emb.threshold(), box.tolist(), {str(hub)!r} in missing)
    """)
    env = {**os.environ, "ANITRACK_MODELS": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "(1, 768) 0.17 [22.0, 22.0, 42.0, 42.0] True"


# -- pulling --------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_pull_fails_fast_when_hub_unreachable(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # closed port
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="anitrack models pull"):
        models.pull_models(to=tmp_path / "pulled")
    assert time.monotonic() - t0 < 5
    assert not (tmp_path / "pulled").exists()


@pytest.mark.timeout(30)
def test_pull_gives_up_on_a_silent_server(tmp_path, monkeypatch):
    """A host that accepts but never answers: the 3 s reachability timeout, not huggingface_hub's retries."""
    from huggingface_hub import constants

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{srv.getsockname()[1]}")
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match="cannot reach"):
            models.pull_models(to=tmp_path / "pulled")
        assert time.monotonic() - t0 < 10


@pytest.mark.timeout(30)
def test_pull_on_this_machine_fails_clearly(tmp_path):
    from huggingface_hub import constants

    try:
        models._check_reachable(constants.ENDPOINT)
    except ConnectionError:
        pass
    else:
        pytest.skip("the hub is reachable here; not downloading real models in a unit test")
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="anitrack models pull"):
        models.pull_models(to=tmp_path / "pulled")
    assert time.monotonic() - t0 < 30
