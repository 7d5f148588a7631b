"""Stand-ins for the hub models, built by the tests: tiny ONNX graphs with the real models'
input/output names and files, laid into a Hugging Face cache or served by a local fake hub
that speaks huggingface_hub's download protocol (and a YOLO release mirror), so the real
imgutils, huggingface_hub and ultralytics code runs against them with no network.
"""
from __future__ import annotations

import hashlib
import json
import threading
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from anitrack import models

def put_hf_file(hub: Path, repo_id: str, filename: str, data: bytes, commit: str = "") -> Path:
    """Write one file the way huggingface_hub lays out its cache (refs/main -> snapshots/<commit>/...)."""
    folder = hub / f"models--{repo_id.replace('/', '--')}"
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
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


def ccip_files(model: str, threshold: float = 0.17, dim: int = 768) -> dict[str, bytes]:
    return {f"{model}/model_feat.onnx": ccip_feat_onnx(dim), f"{model}/model_metrics.onnx": ccip_metric_onnx(dim),
            f"{model}/metrics.json": json.dumps({"threshold": threshold}).encode()}


def face_files(model_name: str) -> dict[str, bytes]:
    return {f"{model_name}/model.onnx": face_onnx()}


def install_fake_ccip(hub: Path, model: str, threshold: float = 0.17) -> None:
    put_hf_file(hub, models.CCIP_REPO, f"{model}/model_feat.onnx", ccip_feat_onnx())
    put_hf_file(hub, models.CCIP_REPO, f"{model}/model_metrics.onnx", ccip_metric_onnx())
    put_hf_file(hub, models.CCIP_REPO, f"{model}/metrics.json", json.dumps({"threshold": threshold}).encode())


def install_fake_face(hub: Path, model_name: str) -> None:
    put_hf_file(hub, models.FACE_REPO, f"{model_name}/model.onnx", face_onnx())




def unique(prefix: str) -> str:
    """imgutils caches opened models by name for the whole process: never reuse one."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def yolo_weights(path: Path) -> Path:
    """Randomly initialised yolov8n weights whose person class fires all over the coarsest scale and nowhere
    else: a few dozen boxes a frame (firing on every scale gives 300, and a test then embeds thousands of
    crops of nothing)."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")  # built locally, no download
    branches = yolo.model.model[-1].cv3
    for k, branch in enumerate(branches):
        branch[-1].bias.data[0] = 4.0 if k == len(branches) - 1 else -10.0
    yolo.save(str(path))
    return path


class FakeHub:
    """A local HTTP server holding hub repositories (``/{repo}/resolve/{revision}/{file}``, with the
    commit and etag headers huggingface_hub reads) and YOLO release files (``/yolo/{name}``)."""

    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.releases: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.fail_after: dict[str, int] = {}  # path -> bytes sent before the connection drops
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                hub.requests.append(f"{self.command} {self.path}")
                found = hub.lookup(self.path)
                if found is None:
                    self.send_response(200 if self.path == "/" else 404)
                    self.send_header("Content-Length", "0")
                    if self.path != "/":
                        self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                data, commit = found
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.end_headers()
                if body:
                    cut = hub.fail_after.get(self.path)
                    self.wfile.write(data if cut is None else data[:cut])
                    if cut is not None:
                        self.wfile.flush()
                        self.connection.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def commit(self, repo_id: str) -> str:
        """The repository's current commit: it changes whenever its files change."""
        files = self.repos.get(repo_id, {})
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha1(files[name]).digest())
        return digest.hexdigest()

    def lookup(self, path: str):
        if path.startswith("/yolo/"):
            data = self.releases.get(path[len("/yolo/"):])
            return None if data is None else (data, None)
        for repo_id, files in self.repos.items():
            prefix = f"/{repo_id}/resolve/"
            if path.startswith(prefix):
                _, _, filename = path[len(prefix):].partition("/")
                return (files[filename], self.commit(repo_id)) if filename in files else None
        return None

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def serving(ccip: tuple[str, ...] = (), faces: tuple[str, ...] = (), yolo: dict[str, Path] | None = None):
    """A FakeHub with the given CCIP models, face detectors and YOLO weights, under their real repositories."""
    with FakeHub() as hub:
        for name in ccip:
            hub.repos.setdefault(models.CCIP_REPO, {}).update(ccip_files(name))
        for name in faces:
            hub.repos.setdefault(models.FACE_REPO, {}).update(face_files(name))
        for name, path in (yolo or {}).items():
            hub.releases[name] = Path(path).read_bytes()
        yield hub
