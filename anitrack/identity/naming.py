"""Open-set naming that rests on evidence: every tracklet is judged on its own, clusters by their members.

A cluster's centroid resembles everything a little when the cluster is loose, so it is
never the evidence for a name. Instead each tracklet gets a verdict from the run's
calibrated test (``calibration.Calibration.judge``), and

* a cluster far looser than the gallery's own genuine pairs has collapsed (HDBSCAN put
  several characters together): it is split by HDBSCAN on its members alone first;
* a cluster is named X when at least one of its tracklets reaches X's calibrated threshold
  at the common level (without the lift that guards a single tracklet against X's
  look-alikes) and more than ``agreement`` of them back X at the looser support bar
  (``name.support_rate``); its members that pass for someone else on their own leave it;
* a cluster without such a majority stays ``unknown``; its members that pass for a
  character on their own leave it for that character;
* tracklets that left a cluster, and noise tracklets (too few to cluster), that pass
  the test join their character's cluster, or a new one, never beside a tracklet they
  share the screen with (``rescued``); members clearly closest to the gallery's ``_noise``
  extras leave their cluster as noise.

A user's corrections (``anitrack label``) keep the shape the user gave a cluster.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from anitrack.identity.calibration import Verdicts
from anitrack.identity.clustering import hdbscan_cosine, overlap_pairs


@dataclass
class ClusterName:
    cluster_id: int
    character: str | None   # the name, None when unknown
    closest: str            # the character most of its tracklets lean to (may be a noise label)
    similarity: float       # the median best score of its tracklets for ``closest``
    confidence: float       # share of its tracklets that pass the test for ``closest``
    margin: float           # named: median lead of the passing tracklets; unknown: similarity - threshold
    n_passed: int


def _split_loose(x: np.ndarray, labels: np.ndarray, frozen: set[int], low: float | None,
                 min_cluster_size: int) -> np.ndarray:
    """HDBSCAN again on each cluster whose median member-pair cosine is under ``low``."""
    if low is None:
        return labels
    labels = labels.copy()
    nxt = int(labels.max(initial=-1)) + 1
    for k in sorted(set(labels.tolist()) - {-1} - frozen):
        members = np.flatnonzero(labels == k)
        if len(members) < 2 * max(2, min_cluster_size):
            continue
        sims = x[members] @ x[members].T
        if float(np.median(sims[np.triu_indices(len(members), 1)])) >= low:
            continue
        sub = hdbscan_cosine(x[members], max(2, min_cluster_size), 1)
        for s in sorted(set(sub.tolist()) - {-1}):
            labels[members[sub == s]] = nxt
            nxt += 1
        labels[members[sub == -1]] = -1
    return labels


def name_clusters(x: np.ndarray, labels: np.ndarray, verdicts: Verdicts, threshold_of, episodes, starts, ends,
                  frozen: set[int], agreement: float = 0.5, rescue: bool = True, genuine_low: float | None = None,
                  min_cluster_size: int = 3, keep_out: np.ndarray | None = None
                  ) -> tuple[np.ndarray, dict[int, ClusterName], np.ndarray]:
    """Final labels, a :class:`ClusterName` per cluster, and the mask of tracklets placed by their own verdict.

    ``x``: unit vectors in the run's cluster view (for the collapse split); ``threshold_of``: a
    character's calibrated threshold; ``frozen``: cluster ids a user corrected (neither split nor
    emptied); ``keep_out``: tracklets a user marked as extras (never placed by their verdict).
    """
    labels = _split_loose(x, np.asarray(labels, np.int64), frozen, genuine_low, min_cluster_size)
    names: dict[int, str | None] = {}
    leaving = np.zeros(len(labels), bool)
    for k in sorted(set(labels.tolist()) - {-1}):
        members = np.flatnonzero(labels == k)
        anchors = Counter(verdicts.best[i] for i in members if verdicts.anchors[i])
        backing = Counter(verdicts.best[i] for i in members if verdicts.supports[i])
        top = max(anchors, key=lambda c: (backing[c], anchors[c], c)) if anchors else None
        names[k] = top if top is not None and backing[top] > agreement * len(members) else None
        if k in frozen:
            continue
        for i in members:
            if verdicts.passed[i] and verdicts.best[i] != names[k]:
                leaving[i] = True
            elif verdicts.stranger[i]:  # clearly one of the gallery's extras (``_noise``)
                leaving[i] = True
    placed = np.zeros(len(labels), bool)
    out = labels.copy()
    out[leaving] = -1
    if rescue:
        out, placed = _place_by_verdict(out, verdicts, names, episodes, starts, ends, keep_out)
    alike = {k: n for k, n in names.items() if n is not None and k not in frozen and np.any(out == k)}
    out = merge_same_name(out, episodes, starts, ends, alike)
    result = {k: _describe(k, names.get(k), np.flatnonzero(out == k), verdicts, threshold_of)
              for k in sorted(set(out.tolist()) - {-1})}
    return out, result, placed


def _place_by_verdict(labels, verdicts: Verdicts, names: dict[int, str | None], episodes, starts, ends,
                      keep_out: np.ndarray | None = None):
    """Noise tracklets that pass the test join their character's largest cluster (or a new one)."""
    labels = labels.copy()
    placed = np.zeros(len(labels), bool)
    ep = np.asarray(episodes)
    s, e = np.asarray(starts, np.float64), np.asarray(ends, np.float64)
    sizes = Counter(labels[labels >= 0].tolist())
    target: dict[str, int] = {}
    for k, n in sorted(names.items(), key=lambda kv: -sizes.get(kv[0], 0)):
        if n is not None and sizes.get(k, 0):
            target.setdefault(n, k)
    nxt = int(labels.max(initial=-1)) + 1
    free = (labels == -1) & verdicts.passed & (True if keep_out is None else ~keep_out)
    for i in sorted(np.flatnonzero(free), key=lambda i: -verdicts.score[i]):
        char = str(verdicts.best[i])
        for k in [target.get(char)] + [c for c, n in names.items() if n == char and c != target.get(char)]:
            if k is None:
                continue
            mates = np.flatnonzero((labels == k) & (ep == ep[i]))
            if not np.any((s[mates] < e[i]) & (s[i] < e[mates])):
                labels[i], placed[i] = k, True
                break
        else:
            labels[i], placed[i] = nxt, True
            names[nxt] = char
            target.setdefault(char, nxt)
            nxt += 1
    return labels, placed


def _describe(k: int, name: str | None, members: np.ndarray, verdicts: Verdicts, threshold_of) -> ClusterName:
    leaning = Counter(verdicts.best[i] for i in members)
    closest = name if name is not None else leaning.most_common(1)[0][0]
    mine = [i for i in members if verdicts.best[i] == closest]
    similarity = float(np.median(verdicts.score[mine])) if mine else float("nan")
    backing = [i for i in mine if verdicts.supports[i]]
    if name is not None:
        margin = float(np.median(verdicts.margin[backing])) if backing else 0.0
    else:
        margin = similarity - threshold_of(closest)
    return ClusterName(int(k), name, str(closest), similarity, len(backing) / len(members), margin,
                       sum(1 for i in mine if verdicts.passed[i]))


def merge_same_name(labels, episodes, starts, ends, names: dict[int, str]) -> np.ndarray:
    """Clusters given one name become one cluster, unless two of them share the screen.

    The centroid merge keeps apart the looks of a character that differ between scenes
    (lighting, outfits) even when each look matches the character's references; the
    gallery bridges them. Clusters with a tracklet on screen together stay apart: one of
    them is someone else. The merged cluster keeps its largest part's id.
    """
    labels = np.asarray(labels, np.int64).copy()
    i, j = overlap_pairs(episodes, starts, ends)
    a, b = labels[i], labels[j]
    keep = (a >= 0) & (b >= 0) & (a != b)
    clash = set(zip(a[keep].tolist(), b[keep].tolist())) | set(zip(b[keep].tolist(), a[keep].tolist()))
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
    by_name: dict[str, list[int]] = {}
    for cid, name in names.items():
        by_name.setdefault(name, []).append(int(cid))
    for cids in by_name.values():
        groups: list[list[int]] = []
        for c in sorted(cids, key=lambda c: (-sizes[c], c)):
            group = next((g for g in groups if not any((c, d) in clash for d in g)), None)
            if group is None:
                groups.append([c])
            else:
                group.append(c)
        for group in groups:
            labels[np.isin(labels, group[1:])] = group[0]
    return labels
