"""The one place anitrack touches imgutils' private names.

They are safe only under the ``dghs-imgutils<0.20`` pin; ``tests/test_models_full.py``
checks each of them, so an upgrade that moves one fails loudly instead of silently
falling back to imgutils' own choices (every core, CUDA whenever it is installed).
"""
from __future__ import annotations

import threading

_session_lock = threading.Lock()
_session = {"device": "cpu", "threads": 0}  # what every ONNX session imgutils opens from now on gets


def default_ccip_model() -> str:
    from imgutils.metrics import ccip

    return ccip._DEFAULT_MODEL_NAMES


def open_ccip(model: str):
    """CCIP's feature and metric sessions through imgutils' own lru-cached loaders (the ones its
    public ``ccip_*`` functions use), so they are opened once per process."""
    from imgutils.metrics import ccip

    return ccip._open_feat_model(model), ccip._open_metric_model(model)


def configure_sessions(device: str, threads: int) -> None:
    """Open imgutils' ONNX sessions on ``device`` only (CUDA only when asked for; imgutils alone
    takes CUDA whenever onnxruntime-gpu is installed) with ``threads`` intra-op threads (imgutils
    alone takes every core, so parallel episodes would oversubscribe them).

    Applies to sessions opened after the call: call it before loading a model.
    """
    from imgutils.utils import onnxruntime as ort_utils

    with _session_lock:
        _session.update(device=device, threads=max(1, int(threads)))
        if getattr(ort_utils._open_onnx_model, "__module__", "") != __name__:
            ort_utils._open_onnx_model = _open_session  # open_onnx_model looks it up at each call


def _open_session(ckpt: str, provider: str = "", use_cpu: bool = True):
    """imgutils' session opener with anitrack's device and thread budget (its provider argument,
    from ONNX_MODE or auto-detection, is overruled by the device)."""
    from onnxruntime import GraphOptimizationLevel, InferenceSession, SessionOptions

    options = SessionOptions()
    options.graph_optimization_level = GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = _session["threads"]
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if _session["device"] == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    return InferenceSession(ckpt, options, providers=providers)
