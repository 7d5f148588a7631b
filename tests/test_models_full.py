"""Full-profile model wrappers against the real libraries, with tiny stand-in weights.

No network: YOLO gets randomly initialised yolov8n weights saved to a temporary
models folder; CCIP and the imgutils face detector get tiny ONNX graphs with the
real models' input/output names, placed in a fake Hugging Face cache, and run
through imgutils' own loading and inference code.
"""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics: no DNS probe at import

from anitrack import imgutils_adapter, models  # noqa: E402
from anitrack.detections import PERSON  # noqa: E402
from anitrack.config import load_config, resolve_profile  # noqa: E402
from anitrack.models import ModelMissingError  # noqa: E402
from tests.fake_hub import (ccip_feat_onnx, install_fake_ccip, install_fake_face, put_hf_file,  # noqa: E402
                            unique, yolo_weights)



def full_config(*sets: str) -> dict:
    return resolve_profile(load_config(list(sets), environ={}), "full")


def assert_helpful(err: ModelMissingError, *names: str) -> None:
    msg = str(err)
    assert "\n" not in msg
    for name in (*names, "anitrack models pull", "--profile offline"):
        assert name in msg, (name, msg)


# -- YOLO -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def yolo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("anitrack_models")
    yolo_weights(d / "yolov8n.pt")
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
    assert all(len(d) for d in out)  # the biased head fires: boxes get checked
    for d, f in zip(out, frames):
        boxes, scores = d.xyxy, d.score
        assert (d.class_id == PERSON).all() and (d.tracker_id == -1).all()
        assert boxes.dtype == np.float32 and scores.dtype == np.float32
        assert boxes.shape == (len(scores), 4) and scores.shape == (len(scores),)
        if len(boxes):
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
            assert (boxes[:, 2] <= f.shape[1]).all() and (boxes[:, 3] <= f.shape[0]).all()
            assert (boxes[:, 2] >= boxes[:, 0]).all() and (scores >= 0.45).all()
    # batching is an implementation detail: one call of 3 gives the same as calls of 2 + 1
    again = models.YoloPersonDetector(weights=str(yolo_dir / "yolov8n.pt"), imgsz=320, batch=16)
    assert again.model_id == det.model_id
    waiting = again.submit(frames)  # on its own thread, while the episode decodes on: the same boxes
    for d1, d2 in zip(out, waiting()):
        np.testing.assert_allclose(d1.xyxy, d2.xyxy, atol=1e-3)
        np.testing.assert_allclose(d1.score, d2.score, atol=1e-4)
    again.close()
    assert det.detect([]) == []


@pytest.mark.slow
def test_person_first_episode_cuts_the_face_inside_each_person_or_falls_back_to_the_upper_body(
        yolo_dir, monkeypatch, tmp_path):
    """YOLO-shaped persons (the stand-in fires all over the frame), then the face finder in the top of each person
    box, then the upper-body fallback: every crop is one of the two, cut where the geometry says."""
    from anitrack.crops import face_anchored_box, upper_body_box
    from anitrack.episode import EpisodePipeline
    from anitrack.synth import synthesize_series

    monkeypatch.setenv("ANITRACK_MODELS", str(yolo_dir))
    folder = synthesize_series(tmp_path, series="pf", episodes=1, characters=2, seconds=2, seed=3)
    video = sorted(folder.glob("*.mp4"))[0]
    config = resolve_profile(load_config(["detect.detector=yolo", "detect.weights=yolov8n.pt", "detect.workers=1",
                                          "shots.backend=content", "detect.stride=12"], environ={}), "offline")
    pipeline = EpisodePipeline(config)
    try:
        out = pipeline.run(str(video), "pf", video.stem)
    finally:
        pipeline.close()
    assert out.models["faces"].startswith("animeface==")  # offline embedder: animeface finds the faces
    dets = out.tables["detections"].to_pylist()
    assert dets and "yolo" in {d["detector"] for d in dets} <= {"yolo", "interpolated"}
    person = {(d["tracklet_id"], d["frame"]): np.array([d["x1"], d["y1"], d["x2"], d["y2"]]) for d in dets}
    crops = out.tables["crops"].to_pylist()
    assert crops and {c["anchor"] for c in crops} <= {"face", "upper_body"}
    assert any(c["anchor"] == "upper_body" for c in crops)  # most stand-in boxes hold no face
    pad, up = config["crops"]["pad"], config["crops"]["up_ratio"]
    for c in crops:
        box = [c["x1"], c["y1"], c["x2"], c["y2"]]
        body = person[(c["tracklet_id"], c["frame"])]
        if c["anchor"] == "upper_body":
            assert c["face_x1"] is None and c["face_score"] == 0.0
            assert box == upper_body_box(body, 854, 480, pad).tolist()
        else:  # the face, back in frame pixels, lies in the top 60% of its person and anchors the crop
            face = np.array([c["face_x1"] + c["x1"], c["face_y1"] + c["y1"], c["face_x2"] + c["x1"],
                             c["face_y2"] + c["y1"]], float)
            assert body[1] - 1 <= face[1] and face[3] <= body[1] + 0.6 * (body[3] - body[1]) + 1
            assert np.abs(face_anchored_box(face, 854, 480, up, pad) - np.array(box)).max() <= 2


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
    assert emb.name == "ccip" and emb.metric == "ccip"
    commit = hashlib.sha1(models.CCIP_REPO.encode()).hexdigest()  # put_hf_file's snapshot
    assert emb.model_id == f"{model}@{commit[:12]}" == models.ccip_model_id(model)
    # the sessions keep the process's thread budget and the asked device, not imgutils' every core
    import torch

    assert emb.session.get_session_options().intra_op_num_threads == torch.get_num_threads()
    assert emb.session.get_providers() == ["CPUExecutionProvider"]
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
    assert_helpful(err.value, imgutils_adapter.default_ccip_model(), str(hub))
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
    assert finder.name == "imgutils" and finder.model_id.startswith(f"{models.FACE_REPO}/{name}@")
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


def test_local_hub_nests_and_restores(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/site/wide/cache")
    monkeypatch.setenv("ANITRACK_MODELS", str(tmp_path))
    with models.local_hub():
        with models.local_hub():
            assert constants.is_offline_mode() and constants.HF_HUB_CACHE == str(tmp_path / "hf" / "hub")
        assert constants.is_offline_mode()
    assert constants.HF_HUB_OFFLINE is False and constants.HF_HUB_CACHE == "/site/wide/cache"


def test_imgutils_private_names_exist(imgutils_loaded):
    """anitrack relies on these imgutils internals (imgutils_adapter.py): an upgrade that moves one fails here."""
    import inspect

    from imgutils.metrics import ccip
    from imgutils.utils import onnxruntime as ort_utils

    assert isinstance(ccip._DEFAULT_MODEL_NAMES, str) and ccip._DEFAULT_MODEL_NAMES
    assert callable(ccip._open_feat_model) and callable(ccip._open_metric_model)
    opener = ort_utils._open_onnx_model
    if getattr(opener, "__module__", "") != imgutils_adapter.__name__:
        assert list(inspect.signature(opener).parameters)[:2] == ["ckpt", "provider"]
    assert "_open_onnx_model" in inspect.getsource(ort_utils.open_onnx_model)  # looked up at each call


def test_air_gapped_recipe_in_fresh_process(tmp_path):
    """ANITRACK_MODELS=DIR alone, as a worker would have it, even with a site-wide HF_HUB_CACHE elsewhere."""
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "ANITRACK_"))}
    env.update(ANITRACK_MODELS=str(tmp_path), HF_HUB_CACHE=str(tmp_path / "elsewhere"), YOLO_OFFLINE="1",
               HF_ENDPOINT="http://127.0.0.1:9")  # a closed port: any request fails at once
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
        models.pull_models(full_config(), to=tmp_path / "pulled")
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
            models.pull_models(full_config(), to=tmp_path / "pulled")
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
        models.pull_models(full_config(), to=tmp_path / "pulled")
    assert time.monotonic() - t0 < 30


def test_cuda_without_a_cuda_onnxruntime_is_refused_in_one_line():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    models.check_device("cpu")
    with pytest.raises(ModelMissingError) as err:
        models.check_device("cuda")
    assert "anitrack[gpu]" in str(err.value) and "\n" not in str(err.value)
