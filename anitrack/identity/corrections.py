"""A user's corrections to a series' identity, as rows of the ``labels`` table.

One home for what ``anitrack label`` and the review app write: every correction is checked
against the identity run the user looked at, recorded by tracklet (so it survives
re-clustering), and followed by a re-identification made as the current run was made
(``flows.corrections``, which holds the series lock for both); and how an identity run applies them.
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict

import numpy as np
import pyarrow as pa

from anitrack.identity.inputs import IDENTITY_SECTIONS, current_run, identity_config
from anitrack.lake import Lake
from anitrack.schemas.tables import LABELS

KINDS = ("name", "merge", "split", "noise", "move", "reference")


class CorrectionError(ValueError):
    """A correction that cannot apply to the current run (unknown cluster, foreign tracklet)."""


class StaleRun(CorrectionError):
    """The identity run changed since the user looked at it; nothing was written."""


def current_members(lake: Lake, series: str) -> tuple[str, dict[int, list[str]]]:
    """The current run's id and its clusters' tracklets (cluster -1 holds the noise)."""
    run = current_run(lake, series)
    if run is None:
        raise CorrectionError(f"series {series!r} has no identity run yet (run anitrack identify first)")
    members: dict[int, list[str]] = {}
    for r in lake.read("clusters", series, columns=["run_id", "cluster_id", "tracklet_id"]).to_pylist():
        if r["run_id"] == run["run_id"]:
            members.setdefault(r["cluster_id"], []).append(r["tracklet_id"])
    return run["run_id"], members


def correction_rows(lake: Lake, series: str, kind: str, cluster: int, *, name: str | None = None,
                    tracklets: list[str] | None = None, other: int | None = None,
                    crops: list[str] | None = None, run_id: str | None = None) -> list[dict]:
    """The ``labels`` rows of one correction; all share one ``created_at`` so undo removes them together.

    name: every tracklet of ``cluster`` gets ``name`` (or only ``tracklets``, which leave it as a cluster of
    their own: one action gives any tracklet, a noise one included, to a character); merge: ``cluster``
    and ``other`` become one;
    split: ``tracklets`` leave ``cluster`` as a cluster of their own; noise: ``tracklets`` (default:
    all of ``cluster``) are extras, on screen for nobody; move: ``tracklets`` leave ``cluster`` for
    ``other``; reference: ``crops`` of ``cluster`` join the reference gallery as images of ``name``.
    ``run_id``: the run the user looked at; another current run raises :class:`StaleRun`. Cluster -1 is
    the noise: its tracklets can be named, split off or moved, one choice at a time.
    """
    if kind not in KINDS:
        raise CorrectionError(f"unknown correction {kind!r} (one of {', '.join(KINDS)})")
    current, members = current_members(lake, series)
    if run_id is not None and run_id != current:
        raise StaleRun(f"the identity of {series} changed (run {run_id} is no longer current, {current} is); "
                       "reload and correct again")
    named = sorted(k for k in members if k >= 0)
    noise_ok = kind in ("name", "split", "move") and cluster == -1 and -1 in members
    for c in [cluster] + ([other] if kind in ("merge", "move") else []):
        if c is None or c not in members or (c < 0 and not (c == cluster and noise_ok)):
            raise CorrectionError(f"cluster {c} does not exist in the current run of {series} "
                                  f"(clusters: {', '.join(map(str, named))}"
                                  f"{'; -1, the noise, takes name, split or move with tracklets' if -1 in members else ''})")
    if kind in ("merge", "move") and other == cluster:
        raise CorrectionError(f"cluster {cluster} cannot be merged with or moved to itself")
    if kind in ("name", "reference") and not (name or "").strip():
        raise CorrectionError(f"a {kind} correction needs a character name")
    chosen = list(dict.fromkeys(t.strip() for t in (tracklets or []) if t.strip()))
    stray = [t for t in chosen if t not in members[cluster]]
    if stray:
        raise CorrectionError(f"tracklet {stray[0]} is not in cluster {cluster}")
    if (kind in ("split", "move") or cluster == -1) and not chosen:
        raise CorrectionError(f"a {kind} needs the tracklets to take out of "
                              f"{'the noise' if cluster == -1 else f'cluster {cluster}'}")
    group = uuid.uuid4().hex[:12]
    if kind == "name" and chosen and (cluster == -1 or set(chosen) != set(members[cluster])):  # as a cluster of their own
        rows = [(t, "split", group, None) for t in chosen] + [(t, "name", name.strip(), None) for t in chosen]
    elif kind == "name":
        rows = [(t, "name", name.strip(), None) for t in members[cluster]]
    elif kind == "merge":
        rows = [(t, "merge", group, None) for t in members[cluster] + members[other]]
    elif kind == "split":
        rows = [(t, "split", group, None) for t in chosen]
    elif kind == "noise":
        rows = [(t, "noise", "1", None) for t in chosen or members[cluster]]
    elif kind == "move":  # out of their cluster, then into the other one (splits apply before merges)
        rows = [(t, "split", group, None) for t in chosen]
        rows += [(t, "merge", group + "m", None) for t in chosen + members[other]]
        # their old cluster's name goes no further: they take the other cluster's label, or none ("")
        target = _label_name(lake, series, current, other)
        rows += [(t, "name", target, None) for t in chosen]
    else:
        rows = _reference_rows(lake, series, members[cluster], crops or [], name.strip())
    now = dt.datetime.now(dt.timezone.utc)
    return [{"series": series, "tracklet_id": t, "action": a, "value": v, "crop_id": c, "created_at": now}
            for t, a, v, c in rows]


def _label_name(lake: Lake, series: str, run_id: str, cluster: int) -> str:
    """The name a user gave ``cluster`` in run ``run_id`` ("" when its name is not a user's label)."""
    for r in lake.read("characters", series, columns=["run_id", "cluster_id", "character", "source"]).to_pylist():
        if r["run_id"] == run_id and r["cluster_id"] == cluster and r["source"] == "label":
            return r["character"]
    return ""


def _reference_rows(lake: Lake, series: str, tracklets: list[str], crops: list[str], name: str) -> list[tuple]:
    if not crops:
        raise CorrectionError("choose the crops to add to the reference gallery")
    owner = {r["crop_id"]: r["tracklet_id"] for r in
             lake.read("crops", series, columns=["crop_id", "tracklet_id"]).to_pylist() if r["crop_id"] in crops}
    for c in crops:
        if owner.get(c) not in tracklets:
            raise CorrectionError(f"crop {c} is not one of this cluster's crops")
    return [(owner[c], "reference", name, c) for c in crops]


def record(lake: Lake, series: str, rows: list[dict]) -> None:
    """Append one correction's rows; the caller holds the series lock and re-identifies after."""
    lake.commit("labels", pa.Table.from_pylist(rows, schema=LABELS), append=True, series=series)


def drop_latest(lake: Lake, series: str) -> bool:
    """Remove the latest correction (all rows of its ``created_at``); False: there is none. The caller holds
    the series lock and re-identifies after, in full (an incremental run would keep what it did)."""
    rows = lake.read("labels", series).to_pylist()
    if not rows:
        return False
    last = max(r["created_at"] for r in rows)
    kept = [r for r in rows if r["created_at"] != last]
    lake.commit("labels", pa.Table.from_pylist(kept, schema=LABELS), series=series)
    return True


def reidentify_config(lake: Lake, series: str, config: dict) -> dict:
    """``config`` with the cluster and name parameters of the current run (re-run as it was made)."""
    current = identity_config(lake, series)
    return {**config, **{s: current[s] for s in IDENTITY_SECTIONS}}


def apply_corrections(labels: np.ndarray, ids: list[str], corrections: list[dict]) -> np.ndarray:
    """Splits, then merges, then noise, keyed by tracklets so they survive re-clustering.

    Per tracklet the latest correction of each kind counts, and a later one overrides an earlier one of
    another kind: a split undoes an earlier merge for the tracklets it takes out, a split or merge (a
    move) takes a tracklet out of the noise. A merged tracklet the clustering left as noise (or the
    previous run placed only by its naming verdict) still joins its group: the user said it belongs.
    """
    labels = labels.copy()
    index = {t: i for i, t in enumerate(ids)}
    latest = latest_by_tracklet(corrections)
    when = lambda tid, action: latest[(tid, action)][1] if (tid, action) in latest else None  # noqa: E731
    next_id = int(labels.max()) + 1 if len(labels) else 0
    groups = defaultdict(list)
    for (tid, action), (value, _) in latest.items():
        if tid in index and action == "split":
            groups[value].append(index[tid])
    for members in groups.values():  # a split group becomes its own cluster
        labels[members] = next_id
        next_id += 1
    merges = defaultdict(list)
    for (tid, action), (value, at) in latest.items():
        split_at = when(tid, "split")
        if tid in index and action == "merge" and (split_at is None or at >= split_at):
            merges[value].append(index[tid])
    for members in merges.values():  # clusters holding one merge group become one, with its noise members
        clusters = set(labels[members].tolist()) - {-1}
        target = min(clusters) if clusters else next_id
        next_id += not clusters
        labels[np.isin(labels, list(clusters))] = target
        labels[members] = target
    labels[noise_mask(ids, corrections)] = -1
    return labels


def latest_by_tracklet(corrections: list[dict]) -> dict[tuple[str, str], tuple[str, object]]:
    """(tracklet, action) -> (value, created_at) of its latest correction of that kind."""
    latest: dict[tuple[str, str], tuple[str, object]] = {}
    for row in sorted(corrections, key=lambda r: r["created_at"]):
        latest[(row["tracklet_id"], row["action"])] = (row["value"], row["created_at"])
    return latest


def noise_mask(ids: list[str], corrections: list[dict]) -> np.ndarray:
    """Tracklets a user marked as extras (and did not move since): they stay out of every cluster, and
    naming does not place them."""
    latest = latest_by_tracklet(corrections)
    marked = set()
    for (t, action), (value, at) in latest.items():
        later = [latest[(t, a)][1] for a in ("split", "merge") if (t, a) in latest]
        if action == "noise" and value == "1" and all(at > x for x in later):
            marked.add(t)
    return np.array([t in marked for t in ids], dtype=bool)
