"""Cross-episode identity over the lake: cluster tracklets, apply corrections, name, measure.

Reads only lake tables (``tracklets``, ``embeddings``, ``references``,
``labels``), so it also works on vectors a user imported. Each run writes its
own partitions (``series=S/run=R``) of ``clusters``, ``characters``,
``appearances`` and ``quality``, then its ``identity_runs`` row last: the
views show the latest committed run, so a run that fails half-way leaves the
previous results in place and queryable.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from anitrack import identity
from anitrack.config import canonical
from anitrack.lake import Lake
from schemas.tables import TABLES

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class IdentifyError(RuntimeError):
    """Input that identity cannot work with; one line for the user."""


def params_from(config: dict) -> identity.IdentityParams:
    c, n = config["cluster"], config["name"]
    return identity.IdentityParams(
        min_cluster_size=c["min_cluster_size"], min_samples=c["min_samples"], merge_threshold=c["merge_threshold"],
        name_threshold=n["threshold"], verify_threshold=n["verify_threshold"], reduce_dims=c["reduce_dims"],
        max_prototypes=c["max_prototypes"], assign_threshold=c["assign_threshold"],
        rescue_margin=n["rescue_margin"])


# -- references ----------------------------------------------------------------
def gallery_images(folder: str | Path) -> dict[str, list[Path]]:
    """Character -> image files of a reference gallery; refuses empty folders and non-images."""
    from anitrack.crops import decode

    root = Path(folder)
    if not root.is_dir():
        raise IdentifyError(f"reference gallery {root} is not a folder")
    characters = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not characters:
        raise IdentifyError(f"reference gallery {root} has no character folders")
    out = {}
    for folder_ in characters:
        files = sorted(p for p in folder_.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise IdentifyError(f"reference folder {folder_} is empty")
        for path in files:
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise IdentifyError(f"{path}: not an image ({', '.join(IMAGE_EXTENSIONS)})")
            try:
                decode(path.read_bytes())
            except (ValueError, OSError):
                raise IdentifyError(f"{path}: unreadable image") from None
        out[folder_.name] = files
    return out


def check_inputs(lake: Lake, series: str, references: str | Path | None) -> None:
    """Refuse bad input before anything runs (one line, nothing written)."""
    if series not in lake.series():
        known = ", ".join(lake.series()) or "none"
        raise IdentifyError(f"series {series!r} is not in the lake (series: {known})")
    if not lake.commits("embeddings", series):
        raise IdentifyError(f"series {series!r} has no tracklet embeddings to identify")
    if references is not None:
        gallery_images(references)


def embed_gallery(folder: str | Path, config: dict) -> tuple[list[dict], str]:
    """Embed a reference gallery (one subfolder per character) with the series' embedder.

    Offline, the face is found with animeface and cropped exactly as tracklet crops
    are, so reference and tracklet vectors describe the same region.
    """
    from anitrack import crops as cropping
    from anitrack.detect import AnimeFaceDetector
    from anitrack.embed import make_embedder

    embedder = make_embedder(config)
    finder = AnimeFaceDetector(conf=0.3, workers=1) if embedder.metric == "cosine" else None
    rows = []
    for character, files in gallery_images(folder).items():
        for path in files:
            rgb = cropping.decode(path.read_bytes())
            face = None
            if finder is not None:
                found = finder.find_faces([rgb])[0]
                if found is not None:
                    h, w = rgb.shape[:2]
                    box = cropping.face_anchored_box(found[0], w, h, config["crops"]["up_ratio"],
                                                     config["crops"]["pad"])
                    face = np.round(found[0] - np.array([box[0], box[1], box[0], box[1]])).astype(int)
                    rgb = np.ascontiguousarray(rgb[box[1]:box[3], box[0]:box[2]])
                    rgb = cropping.decode(cropping.encode(rgb, config["crops"]["format"]))  # as crops are stored
            vec = embedder.embed([rgb], [face])[0]
            rows.append({"character": character, "image_id": f"{character}/{path.name}",
                         "model": embedder.model_id, "vector": vec.tolist()})
    return rows, embedder.model_id


# -- inputs ----------------------------------------------------------------------
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
    runs = lake.read("identity_runs", series).to_pylist()
    return max(runs, key=lambda r: (r["created_at"], r["run_id"])) if runs else None


# -- corrections -------------------------------------------------------------------
def apply_corrections(labels: np.ndarray, ids: list[str], corrections: list[dict]) -> np.ndarray:
    """Splits and merges recorded by ``anitrack label``, keyed by tracklets so they survive re-clustering."""
    labels = labels.copy()
    index = {t: i for i, t in enumerate(ids)}
    latest: dict[tuple[str, str], str] = {}
    for row in sorted(corrections, key=lambda r: r["created_at"]):
        latest[(row["tracklet_id"], row["action"])] = row["value"]
    next_id = int(labels.max()) + 1 if len(labels) else 0
    groups = defaultdict(list)
    for (tid, action), value in latest.items():
        if tid in index and action == "split":
            groups[value].append(index[tid])
    for members in groups.values():  # a split group becomes its own cluster
        labels[members] = next_id
        next_id += 1
    merges = defaultdict(set)
    for (tid, action), value in latest.items():
        if tid in index and action == "merge" and labels[index[tid]] >= 0:
            merges[value].add(int(labels[index[tid]]))
    for clusters in merges.values():  # clusters holding one merge group become one
        target = min(clusters)
        labels[np.isin(labels, list(clusters))] = target
    return labels


# -- CCIP space -------------------------------------------------------------------------
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
    cannot = [set() for _ in cids]
    for a, b in zip(*identity.overlap_pairs(data["episodes"], data["starts"], data["ends"])):
        la, lb = int(labels[a]), int(labels[b])
        if la >= 0 and lb >= 0 and la != lb:
            cannot[pos[la]].add(pos[lb])
            cannot[pos[lb]].add(pos[la])
    parent = list(range(len(cids)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    iu, ju = np.triu_indices(len(cids), 1)
    d = diff[iu, ju]
    threshold = embedder.threshold()
    for n in np.argsort(d, kind="stable"):
        if d[n] > threshold:
            break
        ra, rb = find(int(iu[n])), find(int(ju[n]))
        if ra == rb or rb in cannot[ra]:
            continue
        ra, rb = min(ra, rb), max(ra, rb)  # the smaller id survives
        parent[rb] = ra
        for x in cannot[rb]:  # cannot-links stay keyed by roots
            cannot[x].discard(rb)
            cannot[x].add(ra)
        cannot[ra] |= cannot[rb]
    out = labels.copy()
    for i, k in enumerate(cids):
        out[labels == k] = cids[find(i)]
    return out


def ccip_name_clusters(cids, reps, ref_rows, embedder) -> list[identity.Naming]:
    """Open-set naming in CCIP space: a character's score is its references' MIN difference
    to the cluster representative; named when <= the model's threshold and not a noise label.
    ``similarity`` reports 1 - difference."""
    refs = np.asarray([r["vector"] for r in ref_rows], np.float32)
    diff = embedder.differences(reps, refs) if len(cids) else np.zeros((0, len(refs)), np.float32)
    chars, _, neg = identity.per_character(-diff, [r["character"] for r in ref_rows])  # max of -d = -min d
    threshold = embedder.threshold()
    out = []
    for k in range(len(cids)):
        ch = int(np.argmax(neg[k]))
        d = -float(neg[k, ch])
        ok = d <= threshold and not identity._is_noise_label(chars[ch])
        out.append(identity.Naming(int(cids[k]), str(chars[ch]) if ok else None, str(chars[ch]), 1.0 - d, bool(ok)))
    return out


# -- the run -------------------------------------------------------------------------
SERIES_EPISODE = "all"  # the stage_runs partition of series-wide stages (identity)


def _record_run(lake: Lake, series: str, run_id: str, config: dict, model: str, n_tracklets: int,
                seconds: float) -> None:
    """A ``stage_runs`` row per identity run with its cluster and name parameters, so a backfill knows
    what the current run was made with."""
    now = dt.datetime.now(dt.timezone.utc)
    row = {"series": series, "episode": SERIES_EPISODE, "run_id": run_id, "stage": "identity",
           "parameters": canonical({s: config[s] for s in ("cluster", "name")}), "model": model,
           "fingerprint": run_id, "reused": False, "seconds": seconds, "frames_decoded": 0, "model_calls": 0,
           "rows": n_tracklets, "started_at": now - dt.timedelta(seconds=seconds), "finished_at": now}
    lake.commit("stage_runs", pa.Table.from_pylist([row]), append=True, run_id=run_id, series=series,
                episode=SERIES_EPISODE)


def identify(lake: Lake, series: str, config: dict, references: str | Path | None = None,
             truth: str | Path | None = None, full: bool = False, run_id: str | None = None) -> dict:
    """One identity run; returns a summary with the quality figures."""
    from anitrack.ingest import new_run_id

    started = time.perf_counter()
    check_inputs(lake, series, references)
    run_id = run_id or new_run_id()
    params = params_from(config)
    data = load_inputs(lake, series)
    ref_rows = None
    if references is not None:
        ref_rows, ref_model = embed_gallery(references, config)
        if ref_model != data["model"]:
            raise IdentifyError(f"references embed with {ref_model!r} but the series' tracklets use "
                                f"{data['model']!r}; run with the same --profile")
    else:
        ref_rows = [r for r in lake.read("references", series).to_pylist() if r["model"] == data["model"]]
    ref_dims = {len(r["vector"]) for r in ref_rows}
    if ref_dims and ref_dims != {data["vectors"].shape[1]}:
        raise IdentifyError(f"reference vectors have dimension {sorted(ref_dims)}, the model "
                            f"{data['model']!r} has {data['vectors'].shape[1]}")

    embedder = None
    key = {"cluster": config["cluster"], "model": data["model"], "metric": data["metric"]}
    if data["metric"] == "ccip":  # CCIP's own difference metric and calibrated threshold, not 0.92 cosine
        from anitrack.models import CcipEmbedder

        embedder = CcipEmbedder(model=data["model"])
        key["ccip_threshold"] = embedder.threshold()
    data["embedder"] = embedder
    previous = current_run(lake, series)
    param_key = canonical(key)
    mode = "full"
    if previous and not full and previous["parameters"] == param_key:
        # rescued tracklets were noise to the clustering; naming decides them afresh
        old = {r["tracklet_id"]: r["cluster_id"] for r in lake.read("clusters", series).to_pylist()
               if r["run_id"] == previous["run_id"] and not r["rescued"]}
        known = np.array([i in old for i in data["ids"]])
        if known.any():
            mode = "incremental"
            labels = np.full(len(data["ids"]), -1, dtype=np.int64)
            labels[known] = [old[i] for i, k in zip(data["ids"], known) if k]
            if (~known).any():
                labels[~known] = identity.assign_incremental(
                    data["vectors"][known], labels[known], data["episodes"][known], data["starts"][known],
                    data["ends"][known], data["vectors"][~known], data["episodes"][~known],
                    data["starts"][~known], data["ends"][~known], params)
    if mode == "full":
        labels = identity.cluster_tracklets(data["vectors"], data["episodes"], data["starts"], data["ends"], params)
    if embedder is not None:
        labels = ccip_merge_clusters(labels, data, embedder)
    corrections = lake.read("labels", series).to_pylist()
    labels = apply_corrections(labels, data["ids"], corrections)

    characters, registry, labels, rescued = _name(lake, series, data, labels, ref_rows, corrections, params)
    tables = _tables(series, run_id, data, labels, characters, rescued)
    if truth is not None:
        cols = ["episode", "frame", "x1", "y1", "x2", "y2", "tracklet_id"]
        data["detections"] = [d for d in lake.read("detections", series, columns=cols).to_pylist()
                              if d["tracklet_id"] is not None]
    quality_rows = _quality(series, run_id, data, labels, tables["appearances"], truth)
    tables["quality"] = pa.Table.from_pylist(quality_rows)
    seconds = time.perf_counter() - started
    if references is not None:
        lake.commit("references", pa.Table.from_pylist([dict(r, series=series) for r in ref_rows]),
                    fingerprint="gallery", series=series)
    keys = {"series": series, "run": run_id}
    for name in ("clusters", "characters", "appearances", "quality"):
        lake.commit(name, tables[name], run_id=run_id, **keys)
    lake.commit("unknown_registry", pa.Table.from_pylist(
        [{"series": series, "tracklet_id": t, "n": n} for t, n in sorted(registry.items())],
        schema=pa.schema([("series", pa.string()), ("tracklet_id", pa.string()), ("n", pa.int64())])),
        series=series)
    _record_run(lake, series, run_id, config, data["model"], len(data["ids"]), seconds)
    lake.commit("identity_runs", pa.Table.from_pylist([{
        "series": series, "run_id": run_id, "parameters": param_key, "model": data["model"], "mode": mode,
        "n_tracklets": len(data["ids"]), "n_clusters": int(len(set(labels.tolist()) - {-1})), "seconds": seconds,
        "created_at": dt.datetime.now(dt.timezone.utc)}]), run_id=run_id, **keys)  # last: the run is visible
    return {"run_id": run_id, "mode": mode, "tracklets": len(data["ids"]), "seconds": seconds,
            "characters": tables["characters"].to_pylist(), "quality": quality_rows}


def _name(lake, series, data, labels, ref_rows, corrections, params):
    """Name every cluster, join clusters the gallery gives one name and rescue noise tracklets it
    recognises; returns the characters rows, the unknown registry, the final labels and the rescued mask."""
    ids, vectors = data["ids"], data["vectors"]
    rescued = np.zeros(len(ids), bool)
    namings = {n.cluster_id: n for n in _namings(data, labels, ref_rows, params)}
    if ref_rows:  # clusters a user corrected keep the shape the user gave them
        touched = {r["tracklet_id"] for r in corrections}
        corrected = {int(k) for k, t in zip(labels, ids) if t in touched}
        names = {k: n.character for k, n in namings.items() if n.named and k not in corrected}
        labels = identity.merge_same_name(labels, data["episodes"], data["starts"], data["ends"], names)
        for k in set(namings) - set(labels.tolist()):  # merged into a namesake, whose naming stands
            del namings[k]
    if ref_rows and params.rescue_margin < 1:
        scores, chars, threshold = _noise_scores(data, labels, ref_rows, params)
        row_of = {int(i): k for k, i in enumerate(np.flatnonzero(labels == -1))}
        named = {}
        for n in sorted(namings.values(), key=lambda n: n.similarity):
            if n.named:
                named[n.character] = n.cluster_id  # the closest of several clusters of one name wins
        labels, rescued = identity.rescue_noise(labels, data["episodes"], data["starts"], data["ends"], scores, chars,
                                                named, threshold, params.rescue_margin)
        for k in sorted(set(labels[rescued].tolist()) - set(namings)):  # new clusters of rescued tracklets
            rows = [row_of[int(i)] for i in np.flatnonzero(labels == k)]
            ch = int(np.argmax(scores[rows].max(axis=0)))
            namings[k] = identity.Naming(int(k), str(chars[ch]), str(chars[ch]), float(scores[rows, ch].max()), True)
    cids, _, best = _best_members(vectors, labels)
    namings = [namings[int(k)] for k in cids]
    named_by = {}
    for (tid, action), value in {(r["tracklet_id"], r["action"]): r["value"]
                                 for r in sorted(corrections, key=lambda r: r["created_at"])}.items():
        if action == "name":
            named_by[tid] = value
    members = {int(k): [ids[i] for i in np.flatnonzero(labels == k)] for k in cids}
    registry = {r["tracklet_id"]: r["n"] for r in lake.read("unknown_registry", series).to_pylist()}
    unnamed = {n.cluster_id: members[n.cluster_id] for n in namings if not n.named}
    unknown, registry = identity.stable_unknown_labels(unnamed, registry)
    out = []
    for n, b in zip(namings, best):
        votes = Counter(named_by[t] for t in members[n.cluster_id] if t in named_by)
        if votes:  # a user's correction wins over the reference match
            character, source, named = votes.most_common(1)[0][0], "label", True
        elif n.named:
            character, source, named = n.character, "reference", True
        else:
            character, source, named = unknown[n.cluster_id], "unknown", False
        out.append({"cluster_id": n.cluster_id, "character": character, "named": named, "source": source,
                    "closest": n.closest or None,
                    "similarity": None if np.isnan(n.similarity) else float(n.similarity),
                    "n_tracklets": len(members[n.cluster_id]), "best_tracklet_id": ids[b]})
    return out, registry, labels, rescued


def _namings(data, labels, ref_rows, params) -> list[identity.Naming]:
    """The gallery's verdict on each cluster, in the series' own metric."""
    vectors = data["vectors"]
    cids, cvecs, best = _best_members(vectors, labels)
    if not ref_rows:
        return [identity.Naming(int(k), None, "", float("nan"), False) for k in cids]
    if data.get("embedder") is not None:
        return ccip_name_clusters(cids, ccip_centroids(data["raw"], labels)[1], ref_rows, data["embedder"])
    return identity.name_clusters(cids, cvecs, np.asarray([r["vector"] for r in ref_rows], np.float32),
                                  np.array([r["character"] for r in ref_rows]), params,
                                  best_member_vectors=vectors[best])


def _best_members(vectors, labels) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Cluster ids, centroids and, per cluster, the member closest to its centroid: the cluster's best crop."""
    cids, cvecs = identity.centroids(vectors, labels)
    best = []
    for k, c in zip(cids, cvecs):
        members = np.flatnonzero(labels == k)
        best.append(int(members[int(np.argmax(vectors[members] @ c))]))
    return cids, cvecs, best


def _noise_scores(data, labels, ref_rows, params) -> tuple[np.ndarray, np.ndarray, float]:
    """Each noise tracklet's closeness to each gallery label (higher is closer) and the naming bar,
    in the series' own metric: max cosine, or 1 - CCIP's min difference."""
    noise = np.flatnonzero(labels == -1)
    refs = np.asarray([r["vector"] for r in ref_rows], np.float32)
    embedder = data.get("embedder")
    if embedder is not None:
        close = 1.0 - (embedder.differences(data["raw"][noise], refs) if len(noise) else np.zeros((0, len(refs))))
        threshold = 1.0 - embedder.threshold()
    else:
        close = data["vectors"][noise] @ identity._unit(refs).T
        threshold = params.name_threshold
    chars, _, scores = identity.per_character(close, [r["character"] for r in ref_rows])
    return scores, chars, threshold


def _tables(series, run_id, data, labels, characters, rescued):
    name_of = {c["cluster_id"]: c["character"] for c in characters}
    base = {"series": series, "run_id": run_id}
    clusters = [{**base, "episode": r["episode"], "tracklet_id": r["tracklet_id"], "cluster_id": int(k),
                 "rescued": bool(x)} for r, k, x in zip(data["rows"], labels, rescued)]
    appearances = [{**base, "episode": r["episode"], "character": name_of[int(k)], "cluster_id": int(k),
                    "tracklet_id": r["tracklet_id"], "start_s": r["start_s"], "end_s": r["end_s"]}
                   for r, k in zip(data["rows"], labels) if k >= 0]
    # with the schemas: a run that finds no character still writes (empty) tables
    return {"clusters": pa.Table.from_pylist(clusters, schema=TABLES["clusters"]),
            "characters": pa.Table.from_pylist([{**base, **c} for c in characters], schema=TABLES["characters"]),
            "appearances": pa.Table.from_pylist(appearances, schema=TABLES["appearances"])}


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of a union of intervals: overlapping appearances of one character count once."""
    total, end = 0.0, -np.inf
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def _quality(series, run_id, data, labels, appearances: pa.Table, truth) -> list[dict]:
    q = identity.quality(data["vectors"], labels)
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
    rows = [{"metric": k, "value": float(v)} for k, v in identity.truth_metrics(labels, true_labels).items()]
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
        pred_s = sum(union_seconds(v) for (ep, c), v in pred_time.items() if c == character)
        err = abs(pred_s - true_s) / true_s if true_s > 0 else None
        if err is not None:
            errors.append(err)
        rows.append({"metric": "screen_time_error", "value": err, "character": character})
    rows.append({"metric": "mean_screen_time_error", "value": float(np.mean(errors)) if errors else None})
    return rows


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
    import csv

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


__all__ = ["IdentifyError", "identify", "embed_gallery", "apply_corrections", "union_seconds"]
