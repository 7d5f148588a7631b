"""Full-profile model throughput by batch size, on the GPU when there is one, else the CPU.

The full profile's weights come from the Hugging Face hub and GitHub, which this
project's machines cannot reach, so the models are cost-faithful stand-ins with
random weights: YOLOv8m built from ``yolov8m.yaml`` (the paper's person
detector, same FLOPs) and a caformer_s36 at 384x384 exported to ONNX (CCIP's
architecture and input size) run through onnxruntime (CUDA provider on a GPU).
TransNetV2 runs through anitrack's own streaming shot detector, with the weights
from its wheel, and PyAV decodes a 720p synthetic episode, so every figure is
measured in the same run on the same machine.

    python benchmarks/model_bench.py                        # defaults: batches 1 16 64, 10 s of 720p
    python benchmarks/model_bench.py --batches 1 4 --seconds 4 --repeats 2   # a quick CPU check

Needs the ``bench`` extra (timm) for the caformer stand-in.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def yolo_rates(device: str, batches: list[int], repeats: int) -> dict[int, float]:
    """Images per second of YOLOv8m (random weights) at 384x640, the letterboxed size of a 16:9 frame."""
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8m.yaml", verbose=False).eval().to(device)
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = model.to(dtype)
    rates = {}
    for b in batches:
        x = torch.rand(b, 3, 384, 640, device=device, dtype=dtype)
        with torch.inference_mode():
            rates[b] = b / timed(lambda: model(x), repeats, device)
    return rates


def caformer_onnx(path: Path) -> Path:
    """caformer_s36 at 384x384 with random weights, exported once to ONNX (dynamic batch)."""
    import timm

    model = timm.create_model("caformer_s36", pretrained=False, num_classes=0).eval()
    x = torch.rand(1, 3, 384, 384)
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["feat"],
                      dynamic_axes={"input": {0: "batch"}, "feat": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def ccip_rates(device: str, batches: list[int], repeats: int, folder: Path) -> tuple[dict[int, float], str]:
    """Images per second of the CCIP-sized ONNX model through onnxruntime."""
    import onnxruntime as ort

    path = caformer_onnx(folder / "caformer_s36_384.onnx")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), providers=providers)
    rates = {}
    for b in batches:
        x = np.random.rand(b, 3, 384, 384).astype(np.float32)
        rates[b] = b / timed(lambda: session.run(None, {"input": x}), repeats, "cpu")
    return rates, session.get_providers()[0]


def episode(folder: Path, seconds: float) -> Path:
    from anitrack.synth import synthesize_series

    series = synthesize_series(folder, series="bench", episodes=1, characters=4, seconds=seconds, seed=3,
                               width=1280, height=720)
    return next(series.glob("*.mp4"))


def decode_fps(path: Path) -> float:
    from anitrack.video import iter_frames

    start = time.perf_counter()
    n = sum(1 for _ in iter_frames(str(path)))
    return n / (time.perf_counter() - start)


def transnet_fps(path: Path, device: str) -> float:
    """Frames per second of anitrack's streaming TransNetV2 (frames decoded beforehand, not timed)."""
    from anitrack.shots import make_shot_detector
    from anitrack.video import iter_frames

    frames = [f.rgb for f in iter_frames(str(path))]
    detector = make_shot_detector("transnetv2", device=device)
    detector.push(0, frames[0])  # builds the model outside the clock
    sync(device)
    start = time.perf_counter()
    for i, frame in enumerate(frames[1:], 1):
        detector.push(i, frame)
    detector.finish()
    sync(device)
    return (len(frames) - 1) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the 720p episode for decode/shots")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    print(f"device: {device_name(device)}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        yolo = yolo_rates(device, args.batches, args.repeats)
        ccip, provider = ccip_rates(device, args.batches, args.repeats, Path(tmp))
        video = episode(Path(tmp), args.seconds)
        decode, shots = decode_fps(video), transnet_fps(video, device)
    print(f"{'batch':>6} {'YOLOv8m img/s':>14} {'x batch 1':>10} {'caformer_s36 img/s':>19} {'x batch 1':>10}")
    for b in args.batches:
        print(f"{b:>6} {yolo[b]:>14.1f} {yolo[b] / yolo[args.batches[0]]:>10.1f} {ccip[b]:>19.1f} "
              f"{ccip[b] / ccip[args.batches[0]]:>10.1f}")
    print(f"onnxruntime provider: {provider}")
    print(f"PyAV decode 720p: {decode:.0f} frames/s; TransNetV2 shots on {device}: {shots:.0f} frames/s "
          f"({shots / 24:.1f}x real time at 24 fps)")
    # what one 22-minute episode at 24 fps costs each model at the largest batch, with the paper's sampling
    frames = 22 * 60 * 24
    best = args.batches[-1]
    print(f"22-min episode ({frames} frames): decode {frames / decode:.0f} s, shots {frames / shots:.0f} s, "
          f"YOLO every 3rd frame {frames / 3 / yolo[best]:.0f} s, CCIP for 20 crops x 300 tracklets "
          f"{6000 / ccip[best]:.0f} s (batch {best})")


if __name__ == "__main__":
    main()
