"""What an identity run reads from the lake: tracklets of the good episodes with one pooled vector each."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np

from anitrack.config import defaults
from anitrack.lake import Lake

IDENTITY_SECTIONS = ("cluster", "name")  # the config sections an identity run reads


class IdentifyError(RuntimeError):
    """Input that identity cannot work with; one line for the user."""


def load_inputs(lake: Lake, series: str) -> dict:
    """Tracklets of the series' good episodes with their pooled vectors (one model); see ``check_inputs``."""
    episodes = lake.read("episodes", series)
    good = {r["episode"] for r in episodes.to_pylist() if r["status"] == "ok"} | \
        {c["keys"]["episode"] for c in lake.commits("embeddings", series)}
    tracklets = [r for r in lake.read("tracklets", series).to_pylist() if r["episode"] in good]
    emb = lake.read("embeddings", series, columns=["episode", "tracklet_id", "kind", "model", "metric", "vector"])
    pooled = [r for r in emb.to_pylist() if r["kind"] == "tracklet" and r["episode"] in good]
    if not pooled:
        raise IdentifyError(f"series {series!r} has no tracklet embeddings to identify")
    models = Counter(r["model"] for r in pooled)
    model = models.most_common(1)[0][0]
    by_id = {r["tracklet_id"]: r["vector"] for r in pooled if r["model"] == model}
    dims = Counter(len(v) for v in by_id.values())
    if len(dims) > 1:
        raise IdentifyError(f"embeddings of model {model!r} have mixed dimensions {sorted(dims)}")
    known = {t["tracklet_id"]: t for t in tracklets}
    ids = sorted(i for i in by_id if i in known) or sorted(by_id)
    rows = [known.get(i) or {"tracklet_id": i, "episode": i.split(":")[0], "start_s": 0.0, "end_s": 0.0}
            for i in ids]
    metric = Counter(r["metric"] or "cosine" for r in pooled if r["model"] == model).most_common(1)[0][0]
    vectors = np.asarray([by_id[i] for i in ids], dtype=np.float32)
    raw = vectors.copy() if metric == "ccip" else None  # CCIP's metric model reads the unnormalised features
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    return {"ids": ids, "rows": rows, "vectors": vectors, "model": model, "metric": metric, "raw": raw,
            "episodes": np.array([r["episode"] for r in rows]),
            "starts": np.array([r["start_s"] for r in rows], dtype=np.float64),
            "ends": np.array([r["end_s"] for r in rows], dtype=np.float64)}


def current_run(lake: Lake, series: str) -> dict | None:
    """The series' latest committed identity run (its ``identity_runs`` row); None before the first."""
    runs = lake.read("identity_runs", series).to_pylist()
    return max(runs, key=lambda r: (r["created_at"], r["run_id"])) if runs else None


def latest_run_row(rows: list[dict]) -> dict | None:
    """The last finished of some ``stage_runs`` rows."""
    return max(rows, key=lambda r: (r["finished_at"], r["run_id"] or "")) if rows else None


def identity_config(lake: Lake, series: str, run_id: str | None = None, runs: list[dict] | None = None) -> dict:
    """Cluster and name parameters of an identity run (default: the current one)."""
    config = defaults()
    chosen = current_run(lake, series) if run_id is None else next(
        (r for r in lake.read("identity_runs", series).to_pylist() if r["run_id"] == run_id), None)
    if chosen is None:
        return config
    config["cluster"].update(json.loads(chosen["parameters"] or "{}").get("cluster", {}))
    runs = lake.read("stage_runs", series).to_pylist() if runs is None else runs
    row = latest_run_row([r for r in runs if r["stage"] == "identity" and r["run_id"] == chosen["run_id"]])
    if row is not None:  # every identity run records its cluster and name parameters
        config["name"].update(json.loads(row["parameters"]).get("name", {}))
    return config
