"""The hub profiles (hub-cpu, full): seconds per stage, mean batch sizes and the ratio to decoding,
with cost-faithful stand-ins.

The hub models cannot be downloaded here, so they are stand-ins with the real models'
architecture, input size and file names, placed in a temporary model folder and run by
the real pipeline (imgutils' and ultralytics' own loaders and pre/post-processing):

- YOLO persons (``--profile full``): YOLOv8m (the full profile's ``yolov8m.pt``) with random
  weights, whose output is replaced by one person box per frame placed by the picture's mean
  brightness (random weights would find hundreds);
- face detector: YOLOv8 of the hub model's level (``face_detect_v1.4_s`` is a YOLOv8s, ``_n`` a
  YOLOv8n) with random weights at imgutils' 640x640 input; its output is replaced by one or two
  face boxes placed by the picture's mean brightness (random weights would find hundreds): they
  stay put within a shot and jump at a cut, so every shot yields ``--faces-per-shot`` tracklets
  (in the full profile it looks inside each person box)
  (one: ~440 in a 22-minute episode of 3-s shots, above the ~300 the AniTrack paper reports, so
  the CCIP figure errs on the slow side);
- CCIP: caformer_s36 at 384x384 (CCIP's architecture and input) with random weights, and a
  1 - cosine metric model.

Decoding alone (PyAV, the same file) is timed first; then the episode pipeline runs once per
variant (``--variant detect.stride=6`` adds one), all in this one process on this machine; on CUDA
nvidia-smi samples how busy the GPU is during each.

    python benchmarks/hub_bench.py --seconds 120            # a 2-minute 720p episode, hub-cpu
    python benchmarks/hub_bench.py --seconds 60 --variant detect.stride=6 --variant detect.face_model=face_detect_v1.4_n
    python benchmarks/hub_bench.py --profile full --device cuda --seconds 1320 --render-jobs 12  # gpu_check.sh

Needs the ``bench`` extra (timm) for the caformer stand-in.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from ultralytics.nn.tasks import DetectionModel


def put_hub_file(hub: Path, repo_id: str, filename: str, data: bytes) -> None:
    """One file laid out as huggingface_hub caches it (refs/main -> snapshots/<commit>/<file>)."""
    folder = hub / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    path = folder / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def export(module: torch.nn.Module, example: torch.Tensor, path: Path, names: tuple[str, str], dynamic_batch: bool,
           metadata: dict | None = None) -> bytes:
    """ONNX bytes with the real model's input/output names (and metadata imgutils reads)."""
    import onnx

    axes = {names[0]: {0: "batch"}, names[1]: {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(module.eval(), (example,), str(path), input_names=[names[0]], output_names=[names[1]],
                      dynamic_axes=axes, opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    for k, v in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model.SerializeToString()


class PlacedFaces(torch.nn.Module):
    """The YOLOv8 trunk's full cost, then two faces (xywh centres in the 640x640 input) whose place
    follows the picture's mean: a few pixels of jitter within a shot, a jump at a cut."""

    def __init__(self, level: str, faces_per_shot: int):
        super().__init__()
        from ultralytics.nn.tasks import DetectionModel

        self.second = 0.8 if faces_per_shot > 1 else 0.05  # under any confidence threshold: one face
        self.net = DetectionModel(f"yolov8{level}.yaml", nc=1, verbose=False)
        boxes = torch.zeros(1, 5, 2)
        boxes[0, :, 0] = torch.tensor([0.0, 220.0, 90.0, 110.0, 0.9])
        boxes[0, :, 1] = torch.tensor([0.0, 240.0, 80.0, 100.0, self.second])
        self.register_buffer("boxes", boxes)
        shift = torch.zeros(1, 5, 2)
        shift[0, 0] = 1.0
        self.register_buffer("shift", shift)

    def forward(self, x):
        y = self.net(x)
        y = y[0] if isinstance(y, (tuple, list)) else y
        place = torch.remainder(x.mean() * 10.0, 1.0)  # the picture's brightness decides where the faces are
        xs = torch.stack([60.0 + 220.0 * place, 340.0 + 220.0 * place]).reshape(1, 1, 2)
        return self.boxes + self.shift * xs + 1e-9 * y.mean()  # depends on the trunk: no optimiser drops it


class PlacedPersons(DetectionModel):
    """``yolov8m.pt`` for ultralytics (pickled by name, loaded in this process): the YOLOv8m trunk's full
    cost, then one person box per picture (xywh in the letterboxed input, COCO's 80 classes) that
    follows the picture's mean like the faces."""

    def forward(self, x, *args, **kwargs):
        y = super().forward(x, *args, **kwargs)
        if self.training:  # building the model (stride probe)
            return y
        y = y[0] if isinstance(y, (tuple, list)) else y
        n, _, h, w = x.shape
        place = torch.remainder(x.mean(dim=(1, 2, 3)) * 10.0, 1.0)
        out = torch.zeros(n, 84, 1, device=x.device)
        out[:, 0, 0] = w * (0.25 + 0.5 * place)
        out[:, 1, 0], out[:, 2, 0], out[:, 3, 0], out[:, 4, 0] = h * 0.5, w * 0.3, h * 0.8, 0.9
        return out + 1e-9 * y.mean()  # depends on the trunk: nothing is skipped


class Caformer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        import timm

        self.net = timm.create_model("caformer_s36", pretrained=False, num_classes=0)

    def forward(self, x):
        return self.net(x)


class OneMinusCosine(torch.nn.Module):
    def forward(self, x):
        unit = x / x.norm(dim=1, keepdim=True)
        return 1.0 - unit @ unit.T


def install_stand_ins(models_dir: Path, face_models: list[str], ccip_model: str, faces_per_shot: int,
                      yolo: str | None) -> None:
    from anitrack import models

    hub = models_dir / "hf" / "hub"
    if yolo:
        models_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"model": PlacedPersons("yolov8m.yaml", nc=80, verbose=False), "train_args": {}}, models_dir / yolo)
    with tempfile.TemporaryDirectory() as tmp:
        for name in face_models:
            level = name.rsplit("_", 1)[-1]
            data = export(PlacedFaces(level, faces_per_shot), torch.rand(1, 3, 640, 640), Path(tmp) / "face.onnx", ("images", "output0"), False,
                          {"names": "{0: 'face'}", "imgsz": "[640, 640]"})
            put_hub_file(hub, models.FACE_REPO, f"{name}/model.onnx", data)
        feat = export(Caformer(), torch.rand(1, 3, 384, 384), Path(tmp) / "feat.onnx", ("input", "output"), True)
        metric = export(OneMinusCosine(), torch.rand(4, 768), Path(tmp) / "metric.onnx", ("input", "output"), True)
    put_hub_file(hub, models.CCIP_REPO, f"{ccip_model}/model_feat.onnx", feat)
    put_hub_file(hub, models.CCIP_REPO, f"{ccip_model}/model_metrics.onnx", metric)
    put_hub_file(hub, models.CCIP_REPO, f"{ccip_model}/metrics.json", json.dumps({"threshold": 0.178}).encode())


def render_piece(out_dir: Path, seconds: float, seed: int) -> Path:
    from anitrack.synth import synthesize_series

    series = synthesize_series(out_dir, series="bench", episodes=1, characters=4, seconds=seconds, seed=seed,
                               width=1280, height=720)
    return next(series.glob("*.mp4"))


def render_episode(out_dir: Path, seconds: float, jobs: int) -> Path:
    """One 720p episode; a long one is rendered in ``jobs`` pieces at once (rendering is single-threaded
    and slower than the pipeline on a GPU) and joined without re-encoding."""
    import av

    if jobs <= 1:
        return render_piece(out_dir, seconds, 3)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(render_piece, [out_dir / f"part{i}" for i in range(jobs)], [seconds / jobs] * jobs,
                              [3 + i for i in range(jobs)]))
    joined = out_dir / "episode.mp4"
    with av.open(str(joined), "w") as dst:
        stream, offset = None, 0
        for part in parts:
            with av.open(str(part)) as src:
                video = src.streams.video[0]
                stream = stream or dst.add_stream_from_template(video)
                end = offset
                for packet in src.demux(video):
                    if packet.dts is None:  # the flush packet
                        continue
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = stream
                    end = max(end, packet.pts + packet.duration)
                    dst.mux(packet)
                offset = end
    return joined


def decode_seconds(path: Path) -> tuple[float, int]:
    from anitrack.video import iter_frames

    start = time.perf_counter()
    n = sum(1 for _ in iter_frames(str(path)))
    return time.perf_counter() - start, n


def count_batches(model, method: str) -> list[int]:
    """Record the size of every batch ``model.method`` is called with (a GPU needs large ones)."""
    sizes, inner = [], getattr(model, method)

    def counted(items, *args, **kwargs):
        sizes.append(len(items))
        return inner(items, *args, **kwargs)
    setattr(model, method, counted)
    return sizes


@contextmanager
def gpu_samples(device: str):
    """nvidia-smi's utilisation and memory every 0.5 s while the block runs (on CUDA); yields a dict
    that holds the mean busy percentage and the peak memory afterwards."""
    found = {}
    if device != "cuda":
        yield found
        return
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                            "-lms", "500"], stdout=subprocess.PIPE, text=True)
    try:
        yield found
    finally:
        smi.terminate()
        rows = [[float(v) for v in line.split(",")[:2]] for line in smi.communicate()[0].splitlines() if line.strip()]
        if rows:
            found.update(busy=sum(r[0] for r in rows) / len(rows), peak_mib=max(r[1] for r in rows), n=len(rows))


def run_variant(path: Path, profile: str, sets: list[str], device: str) -> dict:
    from anitrack.config import load_config, resolve_profile
    from anitrack.episode import EpisodePipeline

    config = resolve_profile(load_config(sets, environ={}), profile)
    pipeline = EpisodePipeline(config, device)  # models load outside the clock, as a worker loads them once
    batches = {"detector": count_batches(pipeline.detector, "detect"),
               "CCIP": count_batches(pipeline.embedder, "embed")}
    if pipeline.face_finder is not None:  # imgutils runs its face detector on one picture at a time
        batches["face finder"] = count_batches(pipeline.face_finder, "find_faces")
    with gpu_samples(device) as gpu:
        start = time.perf_counter()
        out = pipeline.run(str(path), "bench", "episode")
        wall = time.perf_counter() - start
    pipeline.close()
    return {"wall": wall, "gpu": gpu, "stages": dict(out.clock.seconds), "duration": out.duration_s,
            "tracklets": out.tables["tracklets"].num_rows, "crops": out.tables["crops"].num_rows,
            "batches": {k: (sum(v) / len(v) if v else 0.0, len(v)) for k, v in batches.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the synthetic 720p episode")
    parser.add_argument("--profile", choices=("hub-cpu", "full"), default="hub-cpu")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: every model on the GPU (the ONNX ones need the gpu extra)")
    parser.add_argument("--faces-per-shot", type=int, choices=(1, 2), default=1)
    parser.add_argument("--render-jobs", type=int, default=1,
                        help="render the episode in this many pieces at once, joined into one file")
    parser.add_argument("--variant", action="append", default=[],
                        help="stage.key=value[,stage.key=value]: another configuration to time in the same run")
    args = parser.parse_args()
    variants = [[]] + [v.split(",") for v in args.variant]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ANITRACK_MODELS"] = str(Path(tmp) / "models")
        from anitrack import imgutils_adapter, models
        from anitrack.config import load_config, resolve_profile

        configs = [resolve_profile(load_config(v, environ={}), args.profile) for v in variants]
        faces = sorted({c["detect"]["face_model"] or models.DEFAULT_FACE_MODEL for c in configs})
        yolo = {c["detect"]["weights"] for c in configs if c["detect"]["detector"] == "yolo"}
        if len(yolo) > 1:
            raise SystemExit("hub_bench: one YOLO weights name per run")
        install_stand_ins(Path(tmp) / "models", faces, imgutils_adapter.default_ccip_model(), args.faces_per_shot,
                          next(iter(yolo), None))
        start = time.perf_counter()
        video = render_episode(Path(tmp) / "video", args.seconds, args.render_jobs)
        synth = time.perf_counter() - start
        decode, frames = decode_seconds(video)
        if args.device == "cuda":
            models.check_device("cuda")
        results = [(v, run_variant(video, args.profile, v, args.device)) for v in variants]
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU threads: {torch.get_num_threads()}"
    print(f"{where}; profile {args.profile}; episode: {args.seconds:.0f} s of 1280x720, {frames} frames, "
          f"{args.faces_per_shot} face(s) a shot (rendered in {synth:.0f} s); decode only (PyAV): {decode:.1f} s")
    stages = ["decode", "shots", "detect", "track", "crops", "embed"]
    print(f"{'variant':<44} " + " ".join(f"{s:>7}" for s in stages)
          + f" {'total s':>8} {'x decode':>9} {'x real time':>12} {'22-min ep.':>11} {'tracklets':>10} {'crops':>6}")
    for sets, r in results:
        name = ",".join(sets) or f"{args.profile} defaults"
        per = " ".join(f"{r['stages'].get(s, 0.0):>7.1f}" for s in stages)
        realtime = r["wall"] / r["duration"]
        print(f"{name:<44} {per} {r['wall']:>8.1f} {r['wall'] / decode:>9.1f} {realtime:>12.2f} "
              f"{realtime * 22:>8.1f} min {r['tracklets']:>10} {r['crops']:>6}")
        print("    mean batch (calls): " + ", ".join(f"{k} {m:.1f} ({n})" for k, (m, n) in r["batches"].items()))
        if r["gpu"]:
            print(f"    GPU busy {r['gpu']['busy']:.0f}% on average ({r['gpu']['n']} samples of nvidia-smi, 0.5 s), "
                  f"peak memory {r['gpu']['peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
