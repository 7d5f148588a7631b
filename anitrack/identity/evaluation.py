"""How good a run is: internal cluster quality, and scores against ground truth (``truth.json``) where a
series has it (synthetic renders, the labelled real clips)."""
from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from anitrack.identity import calibration
from anitrack.identity.calibration import unit
from anitrack.identity.inputs import IdentifyError
from anitrack.intervals import union_length


def quality(vectors, labels, seed: int = 0) -> dict:
    """Internal quality over clustered tracklets (labels >= 0), bounded in cost.

    Silhouette (cosine) on <= 10k sampled points (it is quadratic), Davies-Bouldin
    and Calinski-Harabasz on <= 50k (linear, but they copy their input). Metrics
    that need >= 2 clusters are None when there are fewer.
    """
    from sklearn import config_context
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    labels = np.asarray(labels, np.int64)
    n = len(labels)
    valid = np.flatnonzero(labels >= 0)
    ids, sizes = np.unique(labels[valid], return_counts=True)
    out = {"n_clusters": int(len(ids)), "noise_fraction": float(1 - len(valid) / n) if n else 0.0,
           "cluster_sizes": sorted(sizes.tolist(), reverse=True),
           "silhouette": None, "davies_bouldin": None, "calinski_harabasz": None}
    if len(ids) < 2 or len(valid) <= len(ids):
        return out
    rng = np.random.default_rng(seed)
    x = np.asarray(vectors)
    pick = np.sort(rng.choice(valid, size=min(len(valid), 50000), replace=False))
    xs, ls = unit(x[pick]), labels[pick]
    if len(np.unique(ls)) >= 2:
        out["davies_bouldin"] = float(davies_bouldin_score(xs, ls))
        out["calinski_harabasz"] = float(calinski_harabasz_score(xs, ls))
    sil = np.sort(rng.choice(len(pick), size=min(len(pick), 10000), replace=False))
    if 2 <= len(np.unique(ls[sil])) < len(sil):
        with config_context(working_memory=128):
            out["silhouette"] = float(silhouette_score(xs[sil], ls[sil], metric="cosine"))
    return out


def truth_metrics(pred_labels, true_labels) -> dict:
    """Adjusted Rand and B-cubed precision/recall/F1 against ground truth.

    Predicted noise (-1) counts as singletons (each its own cluster), as does a
    true label of -1. B-cubed from contingency counts n_ct (cluster c, truth t):
    precision = sum n_ct^2 / n_c / N, recall = sum n_ct^2 / n_t / N; no N x N matrix.
    """
    from sklearn.metrics import adjusted_rand_score
    from sklearn.metrics.cluster import contingency_matrix

    def singletons(a):
        a = np.asarray(a).copy()
        if a.dtype.kind in "iu":
            a = a.astype(np.int64)
            noise = a < 0
            a[noise] = a.max(initial=0) + 1 + np.arange(int(noise.sum()))
        return a

    p, t = singletons(pred_labels), singletons(true_labels)
    n = len(p)
    if n == 0:
        return {"adjusted_rand": 1.0, "bcubed_precision": 1.0, "bcubed_recall": 1.0, "bcubed_f1": 1.0}
    m = contingency_matrix(p, t, sparse=True).tocoo()
    nc = np.asarray(m.sum(axis=1)).ravel()
    nt = np.asarray(m.sum(axis=0)).ravel()
    sq = m.data.astype(np.float64) ** 2
    prec = float((sq / nc[m.row]).sum() / n)
    rec = float((sq / nt[m.col]).sum() / n)
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"adjusted_rand": float(adjusted_rand_score(t, p)), "bcubed_precision": prec,
            "bcubed_recall": rec, "bcubed_f1": f1}


def quality_rows(series, run_id, data, labels, appearances: pa.Table, truth) -> list[dict]:
    """The run's ``quality`` rows: internal metrics, and truth scores when a truth file is given."""
    q = quality(data["vectors"], labels)
    rows = [{"metric": k, "value": float(v) if v is not None else None}
            for k, v in q.items() if k != "cluster_sizes"]
    if truth is not None:
        rows += truth_rows(data, labels, appearances, Path(truth))
    return [{"series": series, "run_id": run_id, "character": r.get("character"), **r} for r in rows]


def truth_rows(data, labels, appearances: pa.Table, truth_path: Path) -> list[dict]:
    """Adjusted Rand, B-cubed, naming accuracy and per-character screen-time error against truth.json."""
    if not truth_path.is_file():
        raise IdentifyError(f"truth file {truth_path} does not exist")
    truth = json.loads(truth_path.read_text())
    true_char = true_characters(data, truth, truth_path.parent / "face_boxes.csv")
    names = sorted(set(true_char.values()))
    code = {n: i for i, n in enumerate(names)}
    true_labels = np.array([code[true_char[t]] if true_char[t] in truth["characters"] else -1
                            for t in data["ids"]])
    rows = [{"metric": k, "value": float(v)} for k, v in truth_metrics(labels, true_labels).items()]
    predicted = {r["tracklet_id"]: r["character"] for r in appearances.to_pylist()}
    cast = set(truth["characters"])
    correct = [predicted.get(t) == true_char[t] if true_char[t] in cast else t not in predicted
               or predicted[t].startswith("unknown_") for t in data["ids"]]
    rows.append({"metric": "naming_accuracy", "value": float(np.mean(correct)) if correct else None})
    pred_time = defaultdict(list)
    for r in appearances.to_pylist():
        pred_time[(r["episode"], r["character"])].append((r["start_s"], r["end_s"]))
    errors = []
    for character in truth["characters"]:
        true_s = sum(e["screen_time_s"].get(character, 0.0) for e in truth["episodes"])
        pred_s = sum(union_length(v) for (ep, c), v in pred_time.items() if c == character)
        err = abs(pred_s - true_s) / true_s if true_s > 0 else None
        if err is not None:
            errors.append(err)
        rows.append({"metric": "screen_time_error", "value": err, "character": character})
    rows.append({"metric": "mean_screen_time_error", "value": float(np.mean(errors)) if errors else None})
    rows += naming_truth_rows(data, appearances, truth, true_char)
    return rows


def naming_truth_rows(data, appearances: pa.Table, truth: dict, true_char: dict[str, str]) -> list[dict]:
    """What a wiki editor would publish: the share of named screen time that carries a wrong name,
    and the share of the gallery characters' true screen time credited to the right name.

    ``truth["gallery"]`` lists the characters the reference gallery holds (all of them when
    absent); naming anyone else is an error.
    """
    gallery = set(truth.get("gallery", truth["characters"]))
    named_s = wrong_s = 0.0
    right = defaultdict(list)
    named = {c["cluster_id"] for c in data.get("characters", []) if c["named"]}
    for r in appearances.to_pylist():
        if r["cluster_id"] not in named:
            continue
        span = r["end_s"] - r["start_s"]
        named_s += span
        if r["character"] != true_char.get(r["tracklet_id"]):
            wrong_s += span
        elif r["character"] in gallery:
            right[(r["episode"], r["character"])].append((r["start_s"], r["end_s"]))
    true_s = sum(e["screen_time_s"].get(c, 0.0) for e in truth["episodes"] for c in gallery)
    credited = sum(union_length(v) for v in right.values())
    return [{"metric": "named_wrong_share", "value": wrong_s / named_s if named_s else None},
            {"metric": "named_seconds", "value": named_s},
            {"metric": "gallery_credited_share", "value": credited / true_s if true_s else None}]


def true_characters(data, truth: dict, face_boxes: Path) -> dict[str, str]:
    """Each tracklet's true character: by face boxes when the generator wrote them, else by time overlap."""
    out = {}
    fps = truth["fps"]
    by_episode = {e["episode"]: e for e in truth["episodes"]}
    for tid, row in zip(data["ids"], data["rows"]):
        ep = by_episode.get(row["episode"])
        best, best_overlap = "_none", 0.0
        for app in (ep or {}).get("appearances", []):
            overlap = min(row["end_s"], app["end_frame"] / fps) - max(row["start_s"], app["start_frame"] / fps)
            if overlap > best_overlap:
                best, best_overlap = app["character"], overlap
        out[tid] = best
    if face_boxes.is_file():
        _refine_by_boxes(out, data, face_boxes)
    return out


def _refine_by_boxes(out: dict, data, face_boxes: Path) -> None:
    wanted = {r["episode"] for r in data["rows"]}
    boxes = defaultdict(list)
    with open(face_boxes) as fh:
        for b in csv.DictReader(fh):
            if b["episode"] in wanted:
                boxes[(b["episode"], int(b["frame"]))].append(b)
    dets = data.get("detections")
    if dets is None:
        return
    votes = defaultdict(Counter)
    for d in dets:
        cx, cy = (d["x1"] + d["x2"]) / 2, (d["y1"] + d["y2"]) / 2
        for b in boxes.get((d["episode"], d["frame"]), []):
            x, y, w, h = (float(b[k]) for k in "xywh")
            if x <= cx <= x + w and y <= cy <= y + h:
                votes[d["tracklet_id"]][b["character"]] += 1
    for tid, counter in votes.items():
        if tid in out:
            out[tid] = counter.most_common(1)[0][0]


def open_set_figures(ids, truth, gallery, episodes, starts, ends, cluster: dict[str, int],
                     name: dict[str, str | None]) -> dict:
    """What a gallery that leaves characters out must get right, per tracklet: the share of the tracklets of
    characters outside the gallery that got a name (any name is wrong), the share of the gallery characters'
    tracklets named right and named wrong, B-cubed F1 of the clusters (noise as singletons), and how many
    pairs of tracklets on screen together share a name (never right) out of how many such pairs there are."""
    from anitrack.identity.clustering import overlap_pairs

    truth = dict(zip(ids, truth))
    outside = [t for t in ids if truth[t] not in set(gallery)]
    inside = [t for t in ids if truth[t] in set(gallery)]
    codes = {c: i for i, c in enumerate(sorted(set(truth.values())))}
    i, j = overlap_pairs(np.asarray(episodes), np.asarray(starts), np.asarray(ends))
    return {"outside_named": float(np.mean([name[t] is not None for t in outside])) if outside else 0.0,
            "gallery_right": float(np.mean([name[t] == truth[t] for t in inside])) if inside else None,
            "gallery_wrong": float(np.mean([name[t] not in (None, truth[t]) for t in inside])) if inside else None,
            "bcubed_f1": truth_metrics(np.array([cluster[t] for t in ids]),
                                       np.array([codes[truth[t]] for t in ids]))["bcubed_f1"],
            "overlapping_pairs": int(len(i)),
            "shared_names": int(sum(1 for a, b in zip(i, j) if name[ids[a]] is not None
                                    and name[ids[a]] == name[ids[b]]))}


# -- labelled drawings (real art): the benchmark and the test share these ---------------------------
def load_labelled_art(root: Path, every: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    """RGB images and their character labels, in manifest order (every n-th image)."""
    import cv2

    files = json.loads((root / "manifest.json").read_text())["files"][::every]
    images = [cv2.cvtColor(cv2.imread(str(root / f["path"])), cv2.COLOR_BGR2RGB) for f in files]
    return images, np.array([f["character"] for f in files])


def embed_views(embedder, views: list[tuple[np.ndarray, np.ndarray | None]], batch: int = 32) -> np.ndarray:
    """Vectors of (image, face box or None) views, in batches."""
    out = [embedder.embed([v[0] for v in views[i:i + batch]], [v[1] for v in views[i:i + batch]])
           for i in range(0, len(views), batch)]
    return np.concatenate(out) if out else np.zeros((0, embedder.dim), np.float32)


def draw_gallery(labels: np.ndarray, seed: int, refs: int, leave_out: float,
                 eligible: np.ndarray | None = None) -> tuple[np.ndarray, set[str]]:
    """A gallery of ``refs`` images per character, ``leave_out`` of the characters left out; drawn from
    ``eligible`` images (those a reference cut finds a face in, as ``gallery.embed_gallery`` keeps)."""
    rng = np.random.default_rng(seed)
    names = sorted(set(labels))
    out = set(rng.choice(names, int(round(len(names) * leave_out)), replace=False).tolist())
    gallery = np.zeros(len(labels), bool)
    for name in names:
        if name not in out:
            mine = np.flatnonzero(labels == name)
            usable = mine[eligible[mine]] if eligible is not None and eligible[mine].any() else mine
            gallery[rng.choice(usable, min(refs, len(usable)), replace=False)] = True
    return gallery, out


def gallery_naming_figures(probes: np.ndarray, gallery_vectors: np.ndarray, labels: np.ndarray, rule, config: dict,
             seeds=range(4), refs: int = 6, leave_out: float = 0.25, detected: np.ndarray | None = None,
             eligible: np.ndarray | None = None) -> dict:
    """Naming labelled drawings against galleries drawn from them, at the calibrated rule, as identity runs
    use it; mean over ``seeds`` gallery draws of: ``nearest`` (the nearest character is right, gallery
    characters), ``named_right`` (of gallery characters' drawings), ``named_wrong`` (of all drawings; a
    left-out character named at all is wrong), ``wrong_of_named``, the median ``threshold`` and the
    gallery's ``genuine_accept``. ``detected``: probes a detector found (the rest count as unnamed)."""
    name = config["name"]
    rows = []
    for seed in seeds:
        gallery, out = draw_gallery(labels, seed, refs, leave_out, eligible)
        probe = ~gallery
        seen = probe & (detected if detected is not None else True)
        space, cal = calibration.calibrate_cosine(probes[seen], gallery_vectors[gallery], labels[gallery], rule,
                                                  name["max_false_rate"], name["margin"],
                                                  config["cluster"]["space_dims"])
        sims = space.name(probes[seen]) @ space.name(gallery_vectors[gallery]).T
        chars, score = calibration.per_character(sims, labels[gallery])
        verdicts = cal.judge(sims, labels[gallery])
        truth = labels[seen]
        known = ~np.isin(truth, list(out))
        nearest = chars[np.argmax(score, axis=1)]
        right = verdicts.passed & (verdicts.best == truth)
        wrong = verdicts.passed & (verdicts.best != truth)
        in_gallery = int((probe & ~np.isin(labels, list(out))).sum())
        rows.append({"nearest": float(np.mean(nearest[known] == truth[known])),
                     "named_right": float(right.sum() / max(in_gallery, 1)),
                     "named_wrong": float(wrong.sum() / max(int(probe.sum()), 1)),
                     "wrong_of_named": float(wrong.sum() / max(int(verdicts.passed.sum()), 1)),
                     "threshold": cal.threshold, "genuine_accept": cal.genuine_accept or 0.0,
                     "detected": float(seen.sum() / max(int(probe.sum()), 1))})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
