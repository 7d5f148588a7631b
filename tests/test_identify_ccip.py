"""Identity on CCIP vectors: CCIP's own difference metric and calibrated threshold, not 0.92 cosine.

A tiny CCIP feature + metric ONNX pair (metric: difference = 1 - cosine) sits in a fake
Hugging Face cache and runs through imgutils' own code, as in ``test_models_full``.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from anitrack import models
from anitrack.identity.metric import ccip_centroid, ccip_merge_clusters
from anitrack.identity.run import identify
from anitrack.lake import Lake
from tests.fake_hub import ccip_feat_onnx, ccip_metric_onnx, put_hf_file, unique

DIM = 16
THRESHOLD = 0.3  # difference <= 0.3, i.e. cosine >= 0.7: same character


class CosineDifference:
    """The tiny model's metric without ONNX, for the merge unit test."""

    def differences(self, a, b):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return (1.0 - a @ b.T).astype(np.float32)

    def threshold(self):
        return THRESHOLD


def test_ccip_centroid_is_imgutils_merge():
    """imgutils' own ``ccip_merge`` (it takes feature arrays as they are) is the oracle."""
    from imgutils.metrics import ccip_merge

    rng = np.random.default_rng(0)
    for n in (1, 2, 5):
        f = rng.normal(size=(n, DIM)).astype(np.float32) * rng.uniform(1, 3, (n, 1)).astype(np.float32)
        np.testing.assert_allclose(ccip_centroid(f), ccip_merge(list(f)), rtol=1e-5)


def test_ccip_merge_respects_threshold_and_shared_frames():
    e = np.eye(DIM, dtype=np.float32)
    look = 0.8 * e[0] + 0.6 * e[1]                   # cosine 0.8 with e[0]: difference 0.2 <= 0.3
    raw = np.stack([e[0], e[0], look, look, e[0] * 2, e[0] * 2, e[5], e[5]])
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    data = {"raw": raw, "episodes": np.array(["e1"] * 8),
            # cluster 2 shares frames with cluster 0 (identical direction, never merged); the rest are apart
            "starts": np.array([0, 10, 20, 30, 1, 11, 40, 50], float),
            "ends": np.array([5, 15, 25, 35, 4, 14, 45, 55], float)}
    out = ccip_merge_clusters(labels, data, CosineDifference())
    assert out[0] == out[2]                          # merged in CCIP space
    assert out[4] != out[0]                          # shares a frame with cluster 0
    assert out[6] == 3 and out[6] != out[0]          # far: stays apart
    # cluster 2 may not join 1 either once 1 is merged with 0 (inherited cannot-link)
    assert out[4] != out[2]


def _lake_with_groups(root, model, metric="ccip"):
    """Series 's', 2 episodes; groups A (alice), B (bob), C (no reference), D: A's exact vectors but
    sharing frames with A's tracklets, so another character that must stay apart, and E: a second look of
    bob (cosine 0.8 to B: apart at 0.92 cosine, the same character at CCIP difference 0.2 <= 0.3)."""
    rng = np.random.default_rng(3)
    e = np.eye(DIM, dtype=np.float32)
    bases = {"A": e[0] * 3, "B": e[4] * 2, "C": e[8] * 5, "E": (0.8 * e[4] + 0.6 * e[12]) * 2}
    lake = Lake(str(root))
    series, tracklets = "s", {}
    for ep in ("e1", "e2"):
        trk, emb = [], []
        for g in ("A", "B", "C", "D", "E"):
            for i in range(4):
                base = bases["A" if g == "D" else g]
                start = {"A": 0.0, "D": 0.5, "B": 20.0, "C": 40.0, "E": 60.0}[g] + 4.0 * i
                tid = f"{ep}:{g}{i}"
                vec = base + rng.normal(scale=0.03, size=DIM).astype(np.float32) * np.linalg.norm(base)
                trk.append({"series": series, "episode": ep, "tracklet_id": tid, "shot_id": 0,
                            "start_frame": int(start * 10), "end_frame": int((start + 2) * 10),
                            "start_s": start, "end_s": start + 2.0, "n_detections": 20})
                emb.append({"series": series, "episode": ep, "tracklet_id": tid, "kind": "tracklet",
                            "model": model, "metric": metric, "dim": DIM, "vector": vec.tolist()})
                tracklets[tid] = g
        keys = {"series": series, "episode": ep}
        lake.commit("episodes", pa.Table.from_pylist([{**keys, "status": "ok"}]), **keys)
        lake.commit("tracklets", pa.Table.from_pylist(trk), **keys)
        lake.commit("embeddings", pa.Table.from_pylist(emb), **keys)
    refs = [{"series": series, "character": name, "image_id": f"{name}/{j}.png", "model": model,
             "vector": (bases[g] * (1 + j) + rng.normal(scale=0.02, size=DIM) * np.linalg.norm(bases[g])).tolist()}
            for name, g in (("alice", "A"), ("bob", "B")) for j in range(2)]
    lake.commit("references", pa.Table.from_pylist(refs), series=series)
    return lake, tracklets


def test_identify_uses_ccip_metric_and_threshold(hub, tmp_path):  # noqa: F811
    from anitrack.config import load_config, resolve_profile

    model = unique("ccip-identify")
    put_hf_file(hub, models.CCIP_REPO, f"{model}/model_feat.onnx", ccip_feat_onnx(DIM))
    put_hf_file(hub, models.CCIP_REPO, f"{model}/model_metrics.onnx", ccip_metric_onnx(DIM))
    put_hf_file(hub, models.CCIP_REPO, f"{model}/metrics.json", json.dumps({"threshold": THRESHOLD}).encode())
    model_id = models.ccip_model_id(model)  # the name and hub commit, as CCIP vectors are stored
    lake, group = _lake_with_groups(tmp_path / "lake", model_id)
    config = resolve_profile(load_config(environ={}), "offline")
    summary = identify(lake, "s", config)

    clusters = {r["tracklet_id"]: r["cluster_id"] for r in lake.read("clusters", "s").to_pylist()}
    chars = {r["cluster_id"]: r for r in lake.read("characters", "s").to_pylist()}
    name = {t: chars[k]["character"] if k >= 0 else None for t, k in clusters.items()}
    for t, g in group.items():
        if g in "BE":
            assert name[t] == "bob", (t, name[t])
        elif g == "C":
            assert name[t] is None or name[t].startswith("unknown_"), (t, name[t])
    assert len({clusters[t] for t, g in group.items() if g == "C" and clusters[t] >= 0}) <= 1
    assert any(name[t] and name[t].startswith("unknown_") for t, g in group.items() if g == "C")
    # A_i and D_i share frames: identical vectors (CCIP difference ~0), yet never one cluster
    pairs = [(t, t.replace(":A", ":D")) for t, g in group.items() if g == "A"]
    assert all(clusters[a] != clusters[d] or clusters[a] < 0 for a, d in pairs)
    # ... and never one name: alice is one of each pair (which one, identical vectors cannot tell)
    assert all((name[a] == "alice") + (name[d] == "alice") == 1 for a, d in pairs), [(name[a], name[d]) for a, d in pairs]
    assert sum(clusters[d] >= 0 for _, d in pairs) >= len(pairs) // 2
    assert len({clusters[t] for t, g in group.items() if g in "BE"}) == 1  # merged in CCIP space
    for c in summary["characters"]:
        if c["named"]:
            assert c["similarity"] >= 1 - THRESHOLD  # reported as 1 - difference

    run = lake.read("identity_runs", "s").to_pylist()[0]
    params = json.loads(run["parameters"])
    assert params["metric"] == "ccip" and params["ccip_threshold"] == pytest.approx(THRESHOLD)
    assert params["model"] == model_id and params["cluster"]["merge_threshold"] == 0.0  # 0: the embedder's own
    assert run["model"] == model_id


def test_null_metric_is_cosine_and_needs_no_ccip_model(tmp_path):
    from anitrack.config import load_config, resolve_profile

    lake, group = _lake_with_groups(tmp_path / "lake", "descriptor-v1", metric=None)
    identify(lake, "s", resolve_profile(load_config(environ={}), "offline"))
    params = json.loads(lake.read("identity_runs", "s").to_pylist()[0]["parameters"])
    assert params["metric"] == "cosine" and "ccip_threshold" not in params
    names = {r["character"] for r in lake.read("characters", "s").to_pylist() if r["named"]}
    assert names == {"alice", "bob"}
