"""One identity run over the lake: cluster tracklets, apply corrections, name, measure, persist.

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
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from anitrack.config import canonical
from anitrack.identity import calibration, naming
from anitrack.identity.clustering import assign_incremental, centroids, cluster_tracklets, overlap_pairs, \
    params_from, stable_unknown_labels
from anitrack.identity.corrections import apply_corrections, latest_by_tracklet, noise_mask
from anitrack.identity.evaluation import quality_rows
from anitrack.identity.gallery import FACELESS, embed_gallery, embedder_config, gallery_fingerprint, gallery_images, \
    series_references
from anitrack.identity.inputs import IdentifyError, current_run, load_inputs
from anitrack.identity.metric import Metric, metric_for
from anitrack.lake import Lake, new_run_id
from anitrack.schemas.tables import TABLES


def check_inputs(lake: Lake, series: str, references: str | Path | None) -> None:
    """Refuse bad input before anything runs (one line, nothing written)."""
    if series not in lake.series():
        known = ", ".join(lake.series()) or "none"
        raise IdentifyError(f"series {series!r} is not in the lake (series: {known})")
    if not lake.commits("embeddings", series):
        raise IdentifyError(f"series {series!r} has no tracklet embeddings to identify")
    if references is not None:
        gallery_images(references)

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
    started = time.perf_counter()
    check_inputs(lake, series, references)
    run_id = run_id or new_run_id()
    data = load_inputs(lake, series)
    metric = metric_for(data)
    params = params_from(config, metric.rule)
    faceless: list[str] = []
    if references is not None:
        ref_rows, ref_model, faceless = embed_gallery(references, embedder_config(config, data))
        if ref_model != data["model"]:
            raise IdentifyError(f"references embed with {ref_model!r} but the series' tracklets use "
                                f"{data['model']!r}; run with the same --profile")
    else:
        ref_rows = [r for r in lake.read("references", series).to_pylist() if r["model"] == data["model"]]
    corrections = lake.read("labels", series).to_pylist()
    ref_rows = ref_rows + series_references(lake, series, corrections, embedder_config(config, data))
    ref_dims = {len(r["vector"]) for r in ref_rows}
    if ref_dims and ref_dims != {data["vectors"].shape[1]}:
        raise IdentifyError(f"reference vectors have dimension {sorted(ref_dims)}, the model "
                            f"{data['model']!r} has {data['vectors'].shape[1]}")

    key = {"cluster": config["cluster"], "model": data["model"], "metric": data["metric"],
           "gallery": gallery_fingerprint(ref_rows), **metric.key()}
    previous = current_run(lake, series)
    param_key = canonical(key)
    reuse = previous is not None and not full and previous["parameters"] == param_key
    cal = _calibration(lake, series, previous if reuse else None, metric, data, ref_rows, config)
    if references is not None:  # this gallery's images without a face, in place of any a reused run listed
        kept = [w for w in (cal.warning or "").split("; ") if w and FACELESS not in w]
        if faceless:
            shown = ", ".join(faceless[:5]) + (", ..." if len(faceless) > 5 else "")
            kept.append(f"{len(faceless)} {FACELESS} (crop them closer to the face or replace them): {shown}")
        cal.warning = calibration.joined_warnings(*kept)
    metric.views(data)  # cluster and merge in the metric's cluster view, judge names in its naming view
    mode = "full"
    if reuse:
        # tracklets placed by their own verdict were noise to the clustering; naming decides them afresh
        old = {r["tracklet_id"]: r["cluster_id"] for r in lake.read("clusters", series).to_pylist()
               if r["run_id"] == previous["run_id"] and not r["rescued"]}
        known = np.array([i in old for i in data["ids"]])
        if known.any():
            mode = "incremental"
            labels = np.full(len(data["ids"]), -1, dtype=np.int64)
            labels[known] = [old[i] for i, k in zip(data["ids"], known) if k]
            if (~known).any():
                labels[~known] = assign_incremental(
                    data["vectors"][known], labels[known], data["episodes"][known], data["starts"][known],
                    data["ends"][known], data["vectors"][~known], data["episodes"][~known],
                    data["starts"][~known], data["ends"][~known], params)
    if mode == "full":
        labels = cluster_tracklets(data["vectors"], data["episodes"], data["starts"], data["ends"], params)
    labels = metric.merge(labels, data)
    labels = apply_corrections(labels, data["ids"], corrections)

    characters, registry, labels, rescued, verdicts = _name(lake, series, data, labels, ref_rows, corrections,
                                                            cal, metric, config)
    tables = _tables(series, run_id, data, labels, characters, rescued, verdicts)
    data["characters"] = characters
    if truth is not None:
        cols = ["episode", "frame", "x1", "y1", "x2", "y2", "tracklet_id"]
        data["detections"] = [d for d in lake.read("detections", series, columns=cols).to_pylist()
                              if d["tracklet_id"] is not None]
    quality = quality_rows(series, run_id, data, labels, tables["appearances"], truth)
    tables["quality"] = pa.Table.from_pylist(quality)
    seconds = time.perf_counter() - started
    if references is not None:
        lake.commit("references", pa.Table.from_pylist([dict(r, series=series) for r in ref_rows]),
                    fingerprint="gallery", series=series)
    keys = {"series": series, "run": run_id}
    for name in ("clusters", "characters", "appearances", "quality"):
        lake.commit(name, tables[name], run_id=run_id, **keys)
    metric.persist(lake, series, run_id, data["model"])
    lake.commit("unknown_registry", pa.Table.from_pylist(
        [{"series": series, "tracklet_id": t, "n": n} for t, n in sorted(registry.items())],
        schema=pa.schema([("series", pa.string()), ("tracklet_id", pa.string()), ("n", pa.int64())])),
        series=series)
    _record_run(lake, series, run_id, config, data["model"], len(data["ids"]), seconds)
    lake.commit("identity_runs", pa.Table.from_pylist([{
        "series": series, "run_id": run_id, "parameters": param_key, "model": data["model"], "mode": mode,
        "n_tracklets": len(data["ids"]), "n_clusters": int(len(set(labels.tolist()) - {-1})), "seconds": seconds,
        "created_at": dt.datetime.now(dt.timezone.utc), **_calibration_columns(cal, metric)}]),
        run_id=run_id, **keys)  # last: the run is visible
    return {"run_id": run_id, "mode": mode, "tracklets": len(data["ids"]), "seconds": seconds,
            "characters": tables["characters"].to_pylist(), "quality": quality,
            "calibration": _calibration_columns(cal, metric), "naming": cal.describe()}


def _calibration(lake: Lake, series: str, previous: dict | None, metric: Metric, data: dict, ref_rows: list[dict],
                 config: dict) -> calibration.Calibration:
    """The run's naming rule: the previous run's when this one is incremental (vectors stay comparable, so
    the metric takes up the previous run's fit), otherwise fitted and calibrated afresh."""
    name = config["name"]
    if previous is not None and previous.get("name_threshold") is not None and \
            metric.restore(lake, series, previous["run_id"]):
        per = json.loads(previous["character_thresholds"] or "{}")
        cal = calibration.Calibration(
            previous["name_threshold"], name["margin"], name["max_false_rate"], previous["calibration"],
            thresholds=per.get("threshold", {}), evidence=json.loads(previous.get("calibration_evidence") or "{}"),
            n_genuine=previous["n_genuine"] or 0, n_impostor=previous["n_impostor"] or 0,
            genuine_accept=previous["genuine_accept"], false_rate=previous["calibrated_false_rate"],
            genuine_pair_low=previous["genuine_pair_low"], published_threshold=previous["published_threshold"],
            warning=previous["calibration_warning"])
        return _fixed(cal, name)
    return _fixed(metric.calibrate(data, _ref_matrix(ref_rows, data), [r["character"] for r in ref_rows], config),
                  name)


def _fixed(cal: calibration.Calibration, name: dict) -> calibration.Calibration:
    """``name.threshold`` > 0 overrides the calibrated threshold (recorded as the source "fixed")."""
    if name["threshold"] > 0:
        cal.extra["calibrated_threshold"] = cal.threshold
        cal.threshold, cal.source = float(name["threshold"]), "fixed"
        cal.thresholds = {}
    cal.margin = float(name["margin"])
    return cal


def _calibration_columns(cal: calibration.Calibration, metric: Metric) -> dict:
    return {"space": metric.kind, "name_threshold": cal.threshold,
            "character_thresholds": canonical({"threshold": cal.thresholds}),
            "calibration_evidence": canonical(cal.evidence),
            "name_margin": cal.margin, "max_false_rate": cal.max_false_rate, "calibration": cal.source,
            "n_genuine": cal.n_genuine, "n_impostor": cal.n_impostor, "genuine_accept": cal.genuine_accept,
            "calibrated_false_rate": cal.false_rate, "genuine_pair_low": cal.genuine_pair_low,
            "published_threshold": cal.published_threshold, "calibration_warning": cal.warning}


def _ref_matrix(ref_rows: list[dict], data: dict) -> np.ndarray:
    """References as a (R, D) matrix (R may be 0)."""
    return np.asarray([r["vector"] for r in ref_rows], np.float32).reshape(len(ref_rows), data["vectors"].shape[1])


def _verdicts(data: dict, ref_rows: list[dict], cal: calibration.Calibration, metric: Metric) -> calibration.Verdicts:
    """Each tracklet judged on its own by the run's calibrated test, once the series' own evidence (tracklets
    on screen together) has raised the thresholds it shows to be too low."""
    refs = _ref_matrix(ref_rows, data)
    sims = metric.similarities(data, refs) if len(refs) else np.zeros((len(data["ids"]), 0), np.float32)
    labels = [r["character"] for r in ref_rows]
    if cal.source != "fixed":
        i, j = overlap_pairs(data["episodes"], data["starts"], data["ends"])
        cal.check_series(sims, labels, i, j, metric.pair_similarities(data, i, j))
    return cal.judge(sims, labels)


def _name(lake, series, data, labels, ref_rows, corrections, cal, metric, config):
    """Name clusters by their members' verdicts (see ``anitrack.identity.naming``); returns the characters rows,
    the unknown registry, the final labels, the mask of tracklets placed by their own verdict and the
    verdicts."""
    ids = data["ids"]
    touched = {r["tracklet_id"] for r in corrections}
    frozen = {int(k) for k, t in zip(labels, ids) if t in touched and k >= 0}
    verdicts = _verdicts(data, ref_rows, cal, metric)
    name = config["name"]
    labels, namings, placed = naming.name_clusters(
        data["vectors"], labels, verdicts, cal.threshold_of, data["episodes"], data["starts"], data["ends"], frozen,
        agreement=name["agreement"], rescue=name["rescue"], genuine_low=cal.genuine_pair_low,
        keep_out=noise_mask(ids, corrections),
        min_cluster_size=config["cluster"]["min_cluster_size"], join=cal.evidence.get("join"))
    cids, _, best = _best_members(data["vectors"], labels)
    named_by = {}  # a tracklet's latest name label ("" clears it: the tracklet moved to another cluster)
    for (tid, action), (value, _) in latest_by_tracklet(corrections).items():
        if action == "name" and value:
            named_by[tid] = value
    members = {int(k): [ids[i] for i in np.flatnonzero(labels == k)] for k in cids}
    registry = {r["tracklet_id"]: r["n"] for r in lake.read("unknown_registry", series).to_pylist()}
    unnamed = {int(k): members[int(k)] for k in cids if namings[int(k)].character is None}
    unknown, registry = stable_unknown_labels(unnamed, registry)
    out = []
    for k, b in zip(cids, best):
        n = namings[int(k)]
        votes = Counter(named_by[t] for t in members[int(k)] if t in named_by)
        confidence = float(n.confidence)
        if votes:  # a user's correction wins over the reference match (and the user is sure)
            character, source, named, confidence = votes.most_common(1)[0][0], "label", True, 1.0
        elif n.character is not None:
            character, source, named = n.character, "reference", True
        else:
            character, source, named = unknown[int(k)], "unknown", False
        out.append({"cluster_id": int(k), "character": character, "named": named, "source": source,
                    "closest": n.closest or None,
                    "similarity": None if np.isnan(n.similarity) else float(n.similarity),
                    "confidence": confidence, "margin": float(n.margin), "threshold": float(cal.threshold_of(n.closest)),
                    "n_passed": int(n.n_passed), "n_tracklets": len(members[int(k)]), "best_tracklet_id": ids[b]})
    return out, registry, labels, placed, verdicts


def _best_members(vectors, labels) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Cluster ids, centroids and, per cluster, the member closest to its centroid: the cluster's best crop."""
    cids, cvecs = centroids(vectors, labels)
    best = []
    for k, c in zip(cids, cvecs):
        members = np.flatnonzero(labels == k)
        best.append(int(members[int(np.argmax(vectors[members] @ c))]))
    return cids, cvecs, best


def _tables(series, run_id, data, labels, characters, rescued, verdicts):
    name_of = {c["cluster_id"]: c["character"] for c in characters}
    base = {"series": series, "run_id": run_id}
    finite = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731 (one reference: no runner-up)
    clusters = [{**base, "episode": r["episode"], "tracklet_id": r["tracklet_id"], "cluster_id": int(k),
                 "rescued": bool(x), "best": str(verdicts.best[i]) or None, "score": finite(verdicts.score[i]),
                 "lead": finite(verdicts.margin[i]), "passed": bool(verdicts.passed[i])}
                for i, (r, k, x) in enumerate(zip(data["rows"], labels, rescued))]
    appearances = [{**base, "episode": r["episode"], "character": name_of[int(k)], "cluster_id": int(k),
                    "tracklet_id": r["tracklet_id"], "start_s": r["start_s"], "end_s": r["end_s"]}
                   for r, k in zip(data["rows"], labels) if k >= 0]
    # with the schemas: a run that finds no character still writes (empty) tables
    return {"clusters": pa.Table.from_pylist(clusters, schema=TABLES["clusters"]),
            "characters": pa.Table.from_pylist([{**base, **c} for c in characters], schema=TABLES["characters"]),
            "appearances": pa.Table.from_pylist(appearances, schema=TABLES["appearances"])}

