"""Open-set naming that rests on evidence: every tracklet is judged on its own, clusters by their members.

A cluster's centroid resembles everything a little when the cluster is loose, so it is
never the evidence for a name. Instead each tracklet gets a verdict from the run's
calibrated test (``calibration.Calibration.judge``), and

* a cluster far looser than the gallery's own genuine pairs has collapsed (HDBSCAN put
  several characters together): it is split by HDBSCAN on its members alone first;
* a cluster is named X when more than ``agreement`` of its tracklets pass X's calibrated
  threshold on their own (the very test a lone tracklet faces, so a cluster is never named on
  weaker evidence than a tracklet); its members that pass for someone else leave it;
* a cluster without such a majority stays ``unknown``; its members that pass for a
  character on their own leave it for that character;
* tracklets that left a cluster, and noise tracklets (too few to cluster), that pass
  the test join their character's cluster, never beside a tracklet they share the screen
  with (``rescued``); members clearly closest to the gallery's ``_noise`` extras leave their
  cluster as noise;
* one name never goes to two tracklets on screen together: clusters of one name join unless
  they share the screen, and then only the one with the most passing tracklets keeps it.

A user's corrections (``anitrack label``) keep the shape the user gave a cluster.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from anitrack.identity.calibration import Verdicts
from anitrack.identity.clustering import centroids, hdbscan_cosine, overlap_pairs


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
                  min_cluster_size: int = 3, keep_out: np.ndarray | None = None, join: float | None = None
                  ) -> tuple[np.ndarray, dict[int, ClusterName], np.ndarray]:
    """Final labels, a :class:`ClusterName` per cluster, and the mask of tracklets placed by their own verdict.

    ``x``: unit vectors in the run's cluster view (for the collapse split); ``threshold_of``: a
    character's calibrated threshold; ``frozen``: cluster ids a user corrected (neither split nor
    emptied); ``keep_out``: tracklets a user marked as extras (never placed by their verdict); ``join``:
    the centroid cosine at which unnamed clusters are one character (:func:`join_unnamed`).
    """
    labels = _split_loose(x, np.asarray(labels, np.int64), frozen, genuine_low, min_cluster_size)
    names: dict[int, str | None] = {}
    leaving = np.zeros(len(labels), bool)
    for k in sorted(set(labels.tolist()) - {-1}):
        members = np.flatnonzero(labels == k)
        passing = Counter(verdicts.best[i] for i in members if verdicts.passed[i])
        top = max(passing, key=lambda c: (passing[c], c)) if passing else None
        names[k] = top if top is not None and passing[top] > agreement * len(members) else None
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
    strength = {k: int(np.sum((out == k) & verdicts.passed & (verdicts.best == n))) for k, n in alike.items()}
    out, unnamed = merge_same_name(out, episodes, starts, ends, alike, strength)
    for k in unnamed:
        names[k] = None
    if join is not None:
        leaning = {k: Counter(verdicts.best[out == k].tolist()).most_common(1)[0][0]
                   for k in set(out.tolist()) - {-1}}
        named = {k: n for k, n in names.items() if n is not None}
        passing = verdicts.passed & np.isin(out, list(named)) & (
            verdicts.best == np.array([named.get(int(k), "") for k in out], object))
        out = join_unnamed(x, out, named, leaning, frozen, episodes, starts, ends, join, passing, agreement)
        out, pulled = pull_noise(x, out, frozen, episodes, starts, ends, join, keep_out,
                                 {k: n for k, n in named.items()}, passing, agreement)
        placed |= pulled
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
            if char in names.values():  # on screen with every cluster of its name: someone else, or unsure
                continue
            labels[i], placed[i] = nxt, True
            names[nxt] = char
            target.setdefault(char, nxt)
            nxt += 1
    return labels, placed


def _describe(k: int, name: str | None, members: np.ndarray, verdicts: Verdicts, threshold_of) -> ClusterName:
    """A named cluster's similarity is the median score of the tracklets that passed for its name (each at
    least the threshold shown beside it); an unknown one's, of the tracklets closest to the same character,
    and its margin says by how much that median missed the threshold."""
    leaning = Counter(verdicts.best[i] for i in members)
    closest = name if name is not None else leaning.most_common(1)[0][0]
    mine = [i for i in members if verdicts.best[i] == closest]
    backing = [i for i in mine if verdicts.passed[i]]
    shown = backing if name is not None and backing else mine
    similarity = float(np.median(verdicts.score[shown])) if shown else float("nan")
    if name is not None:
        margin = float(np.median(verdicts.margin[backing])) if backing else 0.0
    else:
        margin = similarity - threshold_of(closest)
    return ClusterName(int(k), name, str(closest), similarity, len(backing) / len(members), margin,
                       sum(1 for i in mine if verdicts.passed[i]))


def join_unnamed(x: np.ndarray, labels: np.ndarray, named: dict[int, str], leaning: dict[int, str], frozen: set[int],
                 episodes, starts, ends, join: float, passing: np.ndarray | None = None, agreement: float = 0.5
                 ) -> np.ndarray:
    """Unnamed clusters whose centroids are as alike as ``join`` become one, or join a named cluster whose
    character most of their tracklets are closest to, most alike first; never two that share the screen,
    never two named ones, and never so many that a named cluster's passing tracklets (``passing``) are no
    longer more than ``agreement`` of it: a name is never carried by weaker evidence than it was given on.
    ``join`` comes from the gallery: at least its genuine pairs' low end and above every pair of two
    different characters' drawings, so the looks (outfits, lighting) of one character end in one cluster
    where the embedder separates characters that well."""
    labels = np.asarray(labels, np.int64).copy()
    cids, cvecs = centroids(x, labels)
    free = np.array([int(k) not in frozen for k in cids], bool)
    cids, cvecs = cids[free], cvecs[free]
    if len(cids) < 2:
        return labels
    passing = np.zeros(len(labels), bool) if passing is None else np.asarray(passing, bool)
    pos = {int(k): i for i, k in enumerate(cids)}
    group = list(range(len(cids)))  # each cluster's group (the index of its first cluster)
    size = [int(np.sum(labels == k)) for k in cids]
    passed = [int(np.sum((labels == k) & passing)) if int(k) in named else 0 for k in cids]
    name = [named.get(int(k)) for k in cids]
    lean = [leaning.get(int(k)) for k in cids]
    cannot = [set() for _ in cids]
    for a, b in zip(*overlap_pairs(episodes, starts, ends)):
        la, lb = pos.get(int(labels[a])), pos.get(int(labels[b]))
        if la is not None and lb is not None and la != lb:
            cannot[la].add(lb)
            cannot[lb].add(la)
    sims = cvecs @ cvecs.T
    iu, ju = np.triu_indices(len(cids), 1)
    order = np.argsort(-sims[iu, ju], kind="stable")
    for t in order[sims[iu, ju][order] >= join]:
        a, b = group[iu[t]], group[ju[t]]
        if a == b or b in cannot[a] or (name[a] and name[b]):
            continue
        named_side = a if name[a] else b if name[b] else None
        if named_side is not None:
            other = b if named_side == a else a
            if lean[other] != name[named_side] or passed[named_side] <= agreement * (size[a] + size[b]):
                continue
        keep, gone = (named_side, b if named_side == a else a) if named_side is not None else (a, b)
        for i, g in enumerate(group):
            if g == gone:
                group[i] = keep
        size[keep] += size[gone]
        cannot[keep] |= cannot[gone]
        for c in cannot[gone]:
            cannot[c].add(keep)
        name[keep] = name[keep] or name[gone]
    out = labels.copy()
    for i, k in enumerate(cids):
        out[labels == k] = cids[group[i]]
    return out


def pull_noise(x: np.ndarray, labels: np.ndarray, frozen: set[int], episodes, starts, ends, join: float,
               keep_out: np.ndarray | None = None, named: dict[int, str] | None = None,
               passing: np.ndarray | None = None, agreement: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Noise tracklets join the cluster whose centroid they are as alike as ``join`` (the closest one that
    holds no tracklet they share the screen with, and, if named, keeps more than ``agreement`` of passing
    tracklets with it); returns the labels and the mask of those that joined. A hard face (profile, blur)
    the clustering left out is still nearer its character's many tracklets than any two gallery
    characters' drawings are to each other."""
    labels = np.asarray(labels, np.int64).copy()
    pulled = np.zeros(len(labels), bool)
    cids, cvecs = centroids(x, labels)
    free = np.flatnonzero((labels < 0) & (True if keep_out is None else ~keep_out))
    if not len(cids) or not len(free):
        return labels, pulled
    ep = np.asarray(episodes)
    s, e = np.asarray(starts, np.float64), np.asarray(ends, np.float64)
    sims = x[free] @ cvecs.T
    for row, i in enumerate(free):
        for c in np.argsort(-sims[row]):
            if sims[row, c] < join:
                break
            k = int(cids[c])
            if k in frozen:
                continue
            if named and k in named and np.sum((labels == k) & passing) <= agreement * (np.sum(labels == k) + 1):
                continue
            mates = np.flatnonzero((labels == k) & (ep == ep[i]))
            if not np.any((s[mates] < e[i]) & (s[i] < e[mates])):
                labels[i], pulled[i] = k, True
                break
    return labels, pulled


def merge_same_name(labels, episodes, starts, ends, names: dict[int, str],
                    strength: dict[int, int] | None = None) -> tuple[np.ndarray, set[int]]:
    """Clusters given one name become one cluster, unless two of them share the screen; returns the
    labels and the clusters that lose the name.

    The centroid merge keeps apart the looks of a character that differ between scenes
    (lighting, outfits) even when each look matches the character's references; the
    gallery bridges them. Clusters with a tracklet on screen together stay apart: one of
    them is someone else, so only the group with the most ``strength`` (its passing
    tracklets; size breaks ties) keeps the name. The merged cluster keeps its largest part's id.
    """
    labels = np.asarray(labels, np.int64).copy()
    i, j = overlap_pairs(episodes, starts, ends)
    a, b = labels[i], labels[j]
    keep = (a >= 0) & (b >= 0) & (a != b)
    clash = set(zip(a[keep].tolist(), b[keep].tolist())) | set(zip(b[keep].tolist(), a[keep].tolist()))
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
    strength = strength or {}
    by_name: dict[str, list[int]] = {}
    for cid, name in names.items():
        by_name.setdefault(name, []).append(int(cid))
    unnamed: set[int] = set()
    for cids in by_name.values():
        groups: list[list[int]] = []
        for c in sorted(cids, key=lambda c: (-sizes[c], c)):
            group = next((g for g in groups if not any((c, d) in clash for d in g)), None)
            if group is None:
                groups.append([c])
            else:
                group.append(c)
        groups.sort(key=lambda g: (-sum(strength.get(c, 0) for c in g), -sum(int(sizes[c]) for c in g), g[0]))
        for n, group in enumerate(groups):
            labels[np.isin(labels, group[1:])] = group[0]
            if n:
                unnamed.add(group[0])
    return labels, unnamed
