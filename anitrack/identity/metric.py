"""How a series' vectors are compared: one interface, two metrics.

Vectors of a cosine embedder (the offline descriptor, the hybrid, imported vectors) are compared
by cosine in a space fitted to the series and its gallery (``calibration.Space``), calibrated
from the gallery. CCIP vectors are compared by CCIP's own metric model (a difference, with a
published threshold), and pre-clusters are merged by it. An identity run asks its metric and
never which one it has.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import pyarrow as pa

from anitrack.identity import calibration
from anitrack.identity.clustering import constrained_union, overlap_pairs
from anitrack.lake import Lake


def space_rule(data: dict) -> calibration.SpaceRule:
    """The thresholds of the embedder that wrote the series' vectors (``calibration.SPACE_RULES``)."""
    from anitrack.embed import family

    return calibration.SPACE_RULES.get(family(data["model"], data["metric"]), calibration.SPACE_RULES[None])


class Metric(Protocol):
    kind: str  # recorded as the run's ``space``

    def key(self) -> dict:
        """What besides the cluster parameters and the gallery makes a run's results comparable."""

    def calibrate(self, data: dict, refs: np.ndarray, labels: list[str], config: dict) -> calibration.Calibration:
        """Fit the comparison to this series and gallery; the naming rule measured in it."""

    def restore(self, lake: Lake, series: str, run_id: str) -> bool:
        """Take up the comparison run ``run_id`` used (an incremental run); False when it cannot."""

    def views(self, data: dict) -> None:
        """Set ``data["vectors"]`` (the clustering view) and ``data["naming"]`` (the naming view)."""

    def similarities(self, data: dict, refs: np.ndarray) -> np.ndarray:
        """(tracklets, references) similarity, higher is closer, on the scale the calibration used."""

    def pair_similarities(self, data: dict, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Similarity of tracklet pairs (i[k], j[k]), on the scale of ``similarities``."""

    def merge(self, labels: np.ndarray, data: dict) -> np.ndarray:
        """Merge pre-clusters the metric says are one character (never across a cannot-link)."""

    def persist(self, lake: Lake, series: str, run_id: str, model: str) -> None:
        """Commit what ``restore`` needs later."""


def metric_for(data: dict) -> Metric:
    return CcipMetric(data) if data["metric"] == "ccip" else CosineMetric(data)


class CosineMetric:
    """Cosine in the series' space: the cluster view centred when the embedder needs it, the naming
    view whitened within the gallery's characters."""

    def __init__(self, data: dict):
        self.rule = space_rule(data)
        self.space: calibration.Space | None = None

    @property
    def kind(self) -> str:
        return self.space.kind

    def key(self) -> dict:
        return {}

    def calibrate(self, data, refs, labels, config):
        name = config["name"]
        self.space, cal = calibration.calibrate_cosine(
            data["vectors"], refs, labels, self.rule, name["max_false_rate"], name["margin"], config["cluster"]["space_dims"])
        return cal

    def restore(self, lake, series, run_id):
        rows = [r for r in lake.read("identity_spaces", series).to_pylist() if r["run_id"] == run_id]
        self.space = calibration.Space.from_row(rows[0]) if rows else None
        return self.space is not None

    def views(self, data):
        data["naming"] = self.space.name(data["vectors"])
        data["vectors"] = self.space.cluster(data["vectors"])

    def similarities(self, data, refs):
        return data["naming"] @ self.space.name(refs).T

    def pair_similarities(self, data, i, j):
        return np.einsum("ij,ij->i", data["naming"][i], data["naming"][j])

    def merge(self, labels, data):
        return labels  # cluster_tracklets already merged by centroid cosine

    def persist(self, lake, series, run_id, model):
        lake.commit("identity_spaces", pa.Table.from_pylist([{"series": series, "run_id": run_id, "model": model,
                                                               **self.space.to_row()}]),
                    run_id=run_id, series=series, run=run_id)


class CcipMetric:
    """CCIP's metric model over the unnormalised features (``data["raw"]``), at its published threshold
    unless the gallery calibrates another."""

    kind = "ccip"

    def __init__(self, data: dict):
        from anitrack.models import CcipEmbedder

        self.rule = space_rule(data)
        self.embedder = CcipEmbedder(model=data["model"])

    def key(self):
        return {"ccip_threshold": self.embedder.threshold()}

    def calibrate(self, data, refs, labels, config):
        name = config["name"]
        return calibration.calibrate_scores(
            lambda test, train: 1.0 - self.embedder.differences(refs[test], refs[train]), labels,
            name["max_false_rate"], name["margin"], 1.0 - self.embedder.threshold())

    def restore(self, lake, series, run_id):
        return True  # nothing fitted: the model is the comparison

    def views(self, data):
        data["naming"] = data["vectors"]

    def similarities(self, data, refs):
        return 1.0 - self.embedder.differences(data["raw"], refs)

    def pair_similarities(self, data, i, j):
        step = 256
        return np.concatenate([np.zeros(0, np.float32)] + [
            1.0 - np.diag(self.embedder.differences(data["raw"][i[s:s + step]], data["raw"][j[s:s + step]]))
            for s in range(0, len(i), step)])

    def merge(self, labels, data):
        return ccip_merge_clusters(labels, data, self.embedder)

    def persist(self, lake, series, run_id, model):
        pass


def ccip_centroid(features: np.ndarray) -> np.ndarray:
    """A cluster's representative as ``imgutils.metrics.ccip_merge`` forms it.

    Mean of the unit features, rescaled to the members' mean length.
    """
    f = np.asarray(features, np.float32)
    lengths = np.linalg.norm(f, axis=-1)
    mean = (f / np.maximum(lengths, 1e-9)[:, None]).mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-9) * lengths.mean()).astype(np.float32)


def ccip_centroids(raw: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted cluster ids (labels >= 0) and their ``ccip_centroid`` rows."""
    cids = np.unique(labels[labels >= 0]).astype(np.int64)
    reps = [ccip_centroid(raw[labels == k]) for k in cids]
    return cids, np.stack(reps) if reps else np.zeros((0, raw.shape[1]), np.float32)


def ccip_merge_clusters(labels: np.ndarray, data: dict, embedder) -> np.ndarray:
    """Merge pre-clusters whose CCIP difference is <= the model's threshold, most similar pair first.

    Representatives are fixed before merging (as ``ccip_merge`` would form them);
    two clusters holding tracklets that share a frame are never merged, and a
    merged cluster keeps both sides' cannot-links. A merged group takes its
    smallest cluster id.
    """
    cids, reps = ccip_centroids(data["raw"], labels)
    if len(cids) < 2:
        return labels
    diff = embedder.differences(reps, reps)
    diff = (diff + diff.T) / 2
    pos = {int(k): i for i, k in enumerate(cids)}
    cannot: dict[int, set[int]] = {}
    for a, b in zip(*overlap_pairs(data["episodes"], data["starts"], data["ends"])):
        la, lb = int(labels[a]), int(labels[b])
        if la >= 0 and lb >= 0 and la != lb:
            cannot.setdefault(pos[la], set()).add(pos[lb])
            cannot.setdefault(pos[lb], set()).add(pos[la])
    iu, ju = np.triu_indices(len(cids), 1)
    d = diff[iu, ju]
    order = np.argsort(d, kind="stable")
    order = order[d[order] <= embedder.threshold()]
    root = constrained_union(len(cids), iu[order], ju[order], cannot)
    out = labels.copy()
    for i, k in enumerate(cids):
        out[labels == k] = cids[root[i]]
    return out
