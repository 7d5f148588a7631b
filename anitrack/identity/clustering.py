"""Cluster tracklets into characters (AniTrack stages 5-6): HDBSCAN, temporal pruning, cross-shot merge.

Input everywhere is one pooled, L2-normalised vector per tracklet plus the
tracklet's episode and [start, end) seconds. Two tracklets of one episode whose
half-open intervals overlap are on screen together, so they are never the same
character (a cannot-link); every step here keeps that hard.

Scale. A long series has ~300k tracklets; HDBSCAN over 768-d points neither
scales nor works well, and an N x N similarity matrix would not fit. So
:func:`cluster_tracklets` works in bounded passes:

1. micro-clusters (only above ``max_prototypes`` tracklets): PCA, fitted on a
   20k sample, to ``reduce_dims`` dims, then MiniBatchKMeans into
   min(max_prototypes, N/10) prototypes. A prototype's vector is the mean of its
   members' *full* vectors: the reduced space only routes tracklets, every
   decision after it uses full-dimensional cosines (32 PCA dims keep the main
   cast but blur rare characters together);
2. HDBSCAN over a precomputed cosine-distance matrix, P x P with
   P <= max_prototypes (prototypes, or the tracklets themselves when few);
   members inherit their prototype's cluster. Sizes count twice: HDBSCAN sees
   prototypes with min_cluster_size 2 / min_samples 1 (each already stands for
   ~10 tracklets), and a prototype it calls noise but that holds
   >= min_cluster_size tracklets becomes a cluster of its own;
3. settle: the assign_incremental rule (cosine to the cluster centroid >=
   ``assign_threshold``) throws out far members (k-means hands every one-off
   extra to *some* prototype) and takes in noise tracklets that pass it;
4. temporal pruning (:func:`split_conflicts`): overlapping pairs come from a
   per-episode interval sweep (output ~ number of overlaps, not N^2), and a
   cluster holding such a pair is split;
5. cross-shot merge (:func:`merge_clusters`) over the k cluster centroids;
   clusters left under min_cluster_size become noise.

300k x 768 runs in ~20 s on 2 cores with a few hundred MiB on top of the input
(benchmarks/identity_bench.py). :func:`assign_incremental` adds an episode
without re-clustering.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anitrack.identity.calibration import SpaceRule, unit

_CHUNK = 8192  # rows per block in chunked matrix products (bounded memory)
_MIN_CONFLICT_EVIDENCE = 0.1  # overlaps per member that make a split-off group a character of its own


@dataclass
class IdentityParams:
    min_cluster_size: int = 3
    min_samples: int = 2
    merge_threshold: float = 0.92   # cosine between cluster centroids to merge them (stage 6)
    reduce_dims: int = 32           # dims the micro-clustering routes tracklets in
    max_prototypes: int = 4000      # micro-clusters HDBSCAN sees (its P x P matrix is the memory bound)
    assign_threshold: float = 0.8   # cosine a tracklet needs to its prototype / an existing centroid


def params_from(config: dict, rule: SpaceRule) -> IdentityParams:
    """Clustering parameters; a threshold of 0 is the embedder's own (``calibration.SPACE_RULES``)."""
    c = config["cluster"]
    return IdentityParams(
        min_cluster_size=c["min_cluster_size"], min_samples=c["min_samples"],
        merge_threshold=c["merge_threshold"] or rule.merge, reduce_dims=c["reduce_dims"],
        max_prototypes=c["max_prototypes"], assign_threshold=c["assign_threshold"] or rule.assign)


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------

def _as_unit(a) -> np.ndarray:
    """float32 unit rows; no copy when the input already is (300k x 768 is ~1 GiB)."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError("vectors must be a 2-d array (one row per tracklet)")
    for s in range(0, len(a), _CHUNK):
        n = np.einsum("ij,ij->i", a[s:s + _CHUNK], a[s:s + _CHUNK])
        if np.any(np.abs(n - 1.0) > 1e-3):
            return unit(a)
    return a


def _episode_codes(episodes) -> np.ndarray:
    """Episodes may be ints or strings; only equality matters."""
    return np.unique(np.asarray(episodes), return_inverse=True)[1].astype(np.int64).ravel()


def overlap_pairs(episodes, starts, ends) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) pairs of tracklets of one episode whose [start, end) intervals overlap.

    Interval sweep: sort by (episode, start); tracklet p overlaps exactly the
    later-starting q of its episode with start[q] < end[p]. Output size is the
    number of overlapping pairs (small: a few per shot), never N x N.
    """
    ep = _episode_codes(episodes)
    s = np.asarray(starts, dtype=np.float64)
    e = np.asarray(ends, dtype=np.float64)
    order = np.lexsort((s, ep))
    ep_o, s_o, e_o = ep[order], s[order], e[order]
    bounds = np.flatnonzero(np.diff(ep_o)) + 1
    seg_start = np.concatenate([[0], bounds])
    seg_end = np.concatenate([bounds, [len(ep_o)]])
    hi = np.empty(len(ep_o), dtype=np.int64)
    for a, b in zip(seg_start, seg_end):
        hi[a:b] = a + np.searchsorted(s_o[a:b], e_o[a:b], side="left")
    pos = np.arange(len(ep_o))
    counts = np.maximum(hi - pos - 1, 0)
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    p = np.repeat(pos, counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    q = p + 1 + (np.arange(total) - first)
    return order[p], order[q]


def centroids(vectors, labels) -> tuple[np.ndarray, np.ndarray]:
    """Sorted cluster ids (labels >= 0) and their unit mean vectors (k, D); no copy of the vectors."""
    from scipy import sparse

    labels = np.asarray(labels)
    keep = np.flatnonzero(labels >= 0)
    ids, inv = np.unique(labels[keep], return_inverse=True)
    if len(ids) == 0:
        return ids.astype(np.int64), np.zeros((0, np.asarray(vectors).shape[1]), np.float32)
    m = sparse.csr_matrix((np.ones(len(keep), np.float32), (inv.ravel(), keep)),
                          shape=(len(ids), len(labels)))
    return ids.astype(np.int64), unit(np.asarray(m @ np.asarray(vectors, dtype=np.float32)))


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids 0..k-1 in order of each cluster's first member: deterministic, no gaps."""
    out = np.full(len(labels), -1, np.int64)
    valid = labels >= 0
    if not valid.any():
        return out
    ids, first, inv = np.unique(labels[valid], return_index=True, return_inverse=True)
    rank = np.empty(len(ids), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(ids))
    out[valid] = rank[inv.ravel()]
    return out


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    labels = labels.copy()
    valid = labels >= 0
    if valid.any():
        ids, counts = np.unique(labels[valid], return_counts=True)
        small = ids[counts < min_size]
        labels[np.isin(labels, small)] = -1
    return labels


# ----------------------------------------------------------------------------------------------
# stage 5: clustering with temporal pruning
# ----------------------------------------------------------------------------------------------

def _reduce(x: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """PCA to ``dims`` (fitted on <= 20k sampled rows, exact eigh of a D x D covariance), re-normalised."""
    n, d = x.shape
    if d <= dims:
        return x
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(n, size=min(n, 20000), replace=False))].astype(np.float64)
    mean = sample.mean(0)
    sample -= mean
    w, v = np.linalg.eigh(sample.T @ sample)
    comp = v[:, np.argsort(w)[::-1][:dims]].astype(np.float32)
    out = np.empty((n, dims), np.float32)
    for a in range(0, n, _CHUNK):
        out[a:a + _CHUNK] = (x[a:a + _CHUNK] - mean.astype(np.float32)) @ comp
    return unit(out)


def _n_prototypes(n: int, params: IdentityParams) -> int:
    """~10 tracklets per prototype: fewer members make HDBSCAN over prototypes fragment characters into
    noise, more make prototypes mix characters."""
    return int(min(params.max_prototypes, max(2, n // 10)))


def _prototypes(x: np.ndarray, params: IdentityParams, seed: int) -> np.ndarray:
    """Prototype index per tracklet: MiniBatchKMeans in the reduced space."""
    from sklearn.cluster import MiniBatchKMeans

    z = _reduce(x, params.reduce_dims, seed)
    km = MiniBatchKMeans(n_clusters=_n_prototypes(len(x), params), init="random", batch_size=4096, n_init=1,
                         max_iter=20, max_no_improvement=5, random_state=seed, compute_labels=False)
    km.fit(z)
    return _nearest(z, unit(km.cluster_centers_))


def _nearest(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    out = np.empty(len(x), np.int64)
    for a in range(0, len(x), _CHUNK):
        out[a:a + _CHUNK] = np.argmax(x[a:a + _CHUNK] @ c.T, axis=1)
    return out


def hdbscan_cosine(p: np.ndarray, min_cluster_size: int, min_samples: int) -> np.ndarray:
    """HDBSCAN over a precomputed cosine-distance matrix of at most max_prototypes rows."""
    import hdbscan

    if len(p) < max(2, min_cluster_size):
        return np.full(len(p), -1, np.int64)
    dist = 1.0 - (p @ p.T).astype(np.float64)
    np.clip(dist, 0.0, 2.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    for single in (False, True):
        # HDBSCAN never returns the root as a cluster unless allowed: then data holding a single
        # character (a one-character episode's leftovers) would be all noise
        hd = hdbscan.HDBSCAN(metric="precomputed", min_cluster_size=max(2, min_cluster_size),
                             min_samples=max(1, min_samples), allow_single_cluster=single)
        labels = hd.fit_predict(dist).astype(np.int64)
        if labels.max() >= 0:
            break
    return labels


def _initial_clusters(x: np.ndarray, params: IdentityParams, seed: int) -> np.ndarray:
    """Stage 5 clustering before pruning: HDBSCAN on tracklets, or on prototypes when there are many."""
    n = len(x)
    if n <= params.max_prototypes:
        labels = hdbscan_cosine(x, params.min_cluster_size, params.min_samples)
    else:
        proto = _prototypes(x, params, seed)
        pid, pvec = centroids(x, proto)           # empty prototypes drop out
        remap = np.full(int(proto.max()) + 1, -1, np.int64)
        remap[pid] = np.arange(len(pid))
        proto = remap[proto]
        weight = np.bincount(proto, minlength=len(pid))
        plabels = hdbscan_cosine(pvec, 2, 1)
        # a prototype HDBSCAN calls noise but that holds enough members is a cluster of its own:
        # this is where prototype sizes (weights) count
        lonely = np.flatnonzero((plabels < 0) & (weight >= params.min_cluster_size))
        plabels[lonely] = plabels.max() + 1 + np.arange(len(lonely))
        labels = plabels[proto]
    return labels


def _settle(x: np.ndarray, labels: np.ndarray, threshold: float, pairs) -> np.ndarray:
    """Apply the assign_incremental rule to HDBSCAN's output, both ways.

    A member with cosine < threshold to its cluster's centroid becomes noise (with
    prototypes, k-means had to hand every one-off extra to *some* prototype); a
    noise tracklet with cosine >= threshold to its nearest centroid joins that
    cluster unless it overlaps a member (HDBSCAN leaves border points of small or
    stretched clusters as noise). Rescues go most similar first.
    """
    ids, c = centroids(x, labels)
    if len(ids) == 0:
        return labels
    index = np.full(int(ids.max()) + 1, 0, np.int64)
    index[ids] = np.arange(len(ids))
    labels = labels.copy()
    sim = _rowdot_chunked(x, c, index[np.maximum(labels, 0)])
    labels[(labels >= 0) & (sim < threshold)] = -1
    noise = np.flatnonzero(labels < 0)
    best = np.empty(len(noise), np.int64)
    bsim = np.empty(len(noise), np.float32)
    for a in range(0, len(noise), _CHUNK):
        s = x[noise[a:a + _CHUNK]] @ c.T
        best[a:a + _CHUNK] = np.argmax(s, axis=1)
        bsim[a:a + _CHUNK] = s[np.arange(len(s)), best[a:a + _CHUNK]]
    ok = bsim >= threshold
    noise, best, bsim = noise[ok], ids[best[ok]], bsim[ok]
    if len(noise) == 0:
        return labels
    i, j = pairs
    nbrs: dict[int, list[int]] = {}
    cand = np.zeros(len(labels), bool)
    cand[noise] = True
    for u, v in zip(i.tolist(), j.tolist()):
        if cand[u]:
            nbrs.setdefault(u, []).append(v)
        if cand[v]:
            nbrs.setdefault(v, []).append(u)
    for t in np.argsort(-bsim, kind="stable"):
        u, lab = int(noise[t]), int(best[t])
        if all(labels[v] != lab for v in nbrs.get(u, ())):
            labels[u] = lab
    return labels


def _rowdot_chunked(x, c, idx) -> np.ndarray:
    out = np.empty(len(x), np.float32)
    for a in range(0, len(x), _CHUNK):
        out[a:a + _CHUNK] = np.einsum("ij,ij->i", x[a:a + _CHUNK], c[idx[a:a + _CHUNK]])
    return out


def cluster_tracklets(vectors: np.ndarray, episodes: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                      params: IdentityParams, seed: int = 0) -> np.ndarray:
    """Labels (N,) int64, -1 = noise, ids 0..k-1; no cluster holds two overlapping tracklets of one episode.

    Runs clustering, temporal pruning and the cross-shot merge; clusters left with
    fewer than ``min_cluster_size`` members become noise.
    """
    x = _as_unit(vectors)
    n = len(x)
    if n == 0:
        return np.empty(0, np.int64)
    pairs = overlap_pairs(episodes, starts, ends)
    labels = _settle(x, _initial_clusters(x, params, seed), params.assign_threshold, pairs)
    labels = split_conflicts(x, labels, episodes, starts, ends, params.merge_threshold, _pairs=pairs)
    labels = merge_clusters(x, labels, episodes, starts, ends, params.merge_threshold, _pairs=pairs)
    return _relabel(_drop_small(labels, params.min_cluster_size))


def split_conflicts(vectors, labels, episodes, starts, ends, same_threshold: float = 0.92,
                    _pairs=None) -> np.ndarray:
    """Split every cluster that holds two time-overlapping tracklets of one episode (stage 5 pruning).

    The paper links non-overlapping same-cluster tracklets and takes connected
    components, which keeps a cluster whole as soon as any path avoids the
    conflict. Here a conflicted cluster is partitioned instead:

    * seeds: greedily eject members until the rest is conflict-free (highest
      conflict degree first, ties: least similar to the cluster centroid); the
      ejected members are partitioned the same way, recursively;
    * refine: constrained k-means (COP-k-means) on those groups: every member
      goes to its most similar group centroid that holds none of its
      overlapping tracklets (members with conflicts are placed first-best-first);
      a member no group can take opens a new group;
    * guard: a split-off group whose centroid is still >= ``same_threshold``
      (what the merge would join) to the largest group, and that overlaps it
      fewer than 0.1 times per member, is a few duplicate tracks of the same
      character, not a second one (k-means would otherwise tear a character apart
      along its looks): only its members overlapping the largest group stay apart.

    Returns labels with new ids (> max old) for the split-off groups.
    """
    x = _as_unit(vectors)
    labels = np.asarray(labels, np.int64).copy()
    i, j = overlap_pairs(episodes, starts, ends) if _pairs is None else _pairs
    same = (labels[i] == labels[j]) & (labels[i] >= 0)
    i, j = i[same], j[same]
    if len(i) == 0:
        return labels
    next_id = int(labels.max()) + 1
    order = np.argsort(labels[i], kind="stable")
    i, j = i[order], j[order]
    cl = labels[i]
    cuts = np.flatnonzero(np.diff(cl)) + 1
    for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(cl)]])):
        members = np.flatnonzero(labels == cl[a])
        groups = _split_cluster(x, members, i[a:b], j[a:b], same_threshold)
        for g in groups[1:]:
            labels[g] = next_id
            next_id += 1
    return labels


def _split_cluster(x, members, ci, cj, same_threshold) -> list[np.ndarray]:
    """Partition one cluster's members into conflict-free groups (see split_conflicts)."""
    pos = {int(m): k for k, m in enumerate(members)}
    li = np.array([pos[int(a)] for a in ci])
    lj = np.array([pos[int(b)] for b in cj])
    m = len(members)
    xm = x[members]
    nbrs: dict[int, list[int]] = {}
    for a, b in zip(li.tolist(), lj.tolist()):
        nbrs.setdefault(a, []).append(b)
        nbrs.setdefault(b, []).append(a)

    group = np.zeros(m, np.int64)
    _seed_groups(xm, np.arange(m), nbrs, group, 0, [1])
    conflicted = np.array(sorted(nbrs), np.int64)
    for _ in range(10):
        k = int(group.max()) + 1
        c = unit(np.stack([xm[group == g].sum(0) for g in range(k)]))
        sims = xm @ c.T
        new = np.argmax(sims, axis=1)
        # members with conflicts: best feasible group, most confident first
        cs = sims[conflicted]
        new[conflicted] = -1
        for t in np.argsort(-cs.max(axis=1), kind="stable"):
            u = int(conflicted[t])
            banned = {int(new[v]) for v in nbrs[u] if new[v] >= 0}
            for g in np.argsort(-cs[t], kind="stable"):
                if int(g) not in banned:
                    new[u] = g
                    break
            else:
                new[u] = k
                k += 1
        # empty groups vanish; keep ids compact
        _, new = np.unique(new, return_inverse=True)
        new = new.ravel()
        if np.array_equal(new, group):
            break
        group = new
    # the group holding the most members keeps the old id
    order = np.argsort(-np.bincount(group), kind="stable")
    big = int(order[0])
    for g in order[1:]:
        g = int(g)
        in_g = group == g
        cg = unit(xm[in_g].sum(0))
        c0 = unit(xm[group == big].sum(0))
        edges = int(np.sum(((group[li] == g) & (group[lj] == big)) | ((group[li] == big) & (group[lj] == g))))
        if float(cg @ c0) >= same_threshold and edges < _MIN_CONFLICT_EVIDENCE * in_g.sum():
            # as alike as clusters the merge would join, and few conflicts: a handful of duplicate
            # tracks, not a second character. Only the members overlapping the big group stay apart.
            clash = {int(u) for u in np.flatnonzero(in_g)
                     if any(group[v] == big for v in nbrs.get(int(u), ()))}
            back = [u for u in np.flatnonzero(in_g) if int(u) not in clash]
            group[back] = big
    return [members[group == g] for g in order if np.any(group == g)]


def _seed_groups(xm, idx, nbrs, group, gid, counter) -> None:
    """Eject members of ``idx`` until the rest is conflict-free; recurse on the ejected ones."""
    local = set(idx.tolist())
    c = unit(xm[idx].sum(0))
    sim = xm[idx] @ c
    deg = np.array([sum(1 for v in nbrs.get(int(u), ()) if v in local) for u in idx])
    keep = set(local)
    for t in np.lexsort((sim, -deg)):
        u = int(idx[t])
        if u in keep and deg[t] > 0 and any(v in keep for v in nbrs.get(u, ())):
            keep.discard(u)
    group[idx] = gid
    ejected = np.array(sorted(local - keep), np.int64)
    if len(ejected):
        new_gid = counter[0]
        counter[0] += 1
        _seed_groups(xm, ejected, nbrs, group, new_gid, counter)


# ----------------------------------------------------------------------------------------------
# stage 6: cross-shot merge
# ----------------------------------------------------------------------------------------------

def constrained_union(k: int, us, vs, cannot: dict[int, set[int]]) -> np.ndarray:
    """Union-find over ``k`` clusters joining the pairs ``(us[t], vs[t])`` in the order given (most similar
    first), except where the two sides hold a cannot-link (members sharing a frame). The smaller root
    survives and inherits both sides' cannot-links, so no chain of merges joins conflicting clusters;
    ``cannot`` is consumed. Returns each cluster's root."""
    parent = list(range(k))

    def find(u: int) -> int:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for u, v in zip(np.asarray(us).tolist(), np.asarray(vs).tolist()):
        ru, rv = find(u), find(v)
        if ru == rv or rv in cannot.get(ru, ()):
            continue
        if ru > rv:
            ru, rv = rv, ru
        parent[rv] = ru
        moved = cannot.pop(rv, set())
        for w in moved:
            cannot[w].discard(rv)
            cannot[w].add(ru)
        cannot.setdefault(ru, set()).update(moved)
    return np.array([find(u) for u in range(k)], np.int64)


def merge_clusters(vectors, labels, episodes, starts, ends, threshold, _pairs=None) -> np.ndarray:
    """Union-find merge of clusters whose centroids have cosine >= threshold (stage 6).

    Candidate pairs are taken most similar first; two clusters that share a frame
    (any overlapping pair of members in one episode) are never merged, and after
    a merge the union inherits both cannot-link sets, so no chain of merges can
    join conflicting clusters either.
    """
    labels = np.asarray(labels, np.int64).copy()
    ids, c = centroids(vectors, labels)
    k = len(ids)
    if k < 2:
        return labels
    i, j = overlap_pairs(episodes, starts, ends) if _pairs is None else _pairs
    li, lj = labels[i], labels[j]
    ok = (li >= 0) & (lj >= 0) & (li != lj)
    index = np.full(int(ids.max()) + 1, -1, np.int64)
    index[ids] = np.arange(k)
    a, b = index[li[ok]], index[lj[ok]]
    cannot: dict[int, set[int]] = {}
    for u, v in set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist())):
        cannot.setdefault(u, set()).add(v)
        cannot.setdefault(v, set()).add(u)

    cand_u, cand_v, cand_s = [], [], []
    for s0 in range(0, k, 2048):
        block = c[s0:s0 + 2048] @ c.T
        r, q = np.nonzero(block >= threshold)
        r = r + s0
        keep = q > r
        cand_u.append(r[keep]); cand_v.append(q[keep]); cand_s.append(block[r[keep] - s0, q[keep]])
    cu, cv, cs = (np.concatenate(t) for t in (cand_u, cand_v, cand_s))
    order = np.lexsort((cv, cu, -cs))
    root = constrained_union(k, cu[order], cv[order], cannot)
    valid = labels >= 0
    labels[valid] = ids[root[index[labels[valid]]]]
    return labels


# ----------------------------------------------------------------------------------------------
# incremental assignment
# ----------------------------------------------------------------------------------------------

def assign_incremental(old_vectors, old_labels, old_episodes, old_starts, old_ends, new_vectors, new_episodes,
                       new_starts, new_ends, params: IdentityParams, seed: int = 0) -> np.ndarray:
    """Labels for new tracklets without re-clustering the old ones.

    A new tracklet joins an existing cluster when cosine(tracklet, centroid) >=
    assign_threshold and the cluster holds no tracklet overlapping it (old members
    of the same episode, or new tracklets already placed there); candidate
    (tracklet, cluster) pairs are taken most similar first. The leftovers are
    clustered among themselves with :func:`cluster_tracklets`; a leftover cluster
    that the stage-6 rule would merge into an old one (centroid cosine >=
    merge_threshold, no overlap) takes its id, the others get fresh ids above the
    largest old id. Old noise stays noise: run a full
    :func:`cluster_tracklets` now and then to absorb it.
    """
    old_labels = np.asarray(old_labels, np.int64)
    xn = unit(new_vectors)
    n_new, n_old = len(xn), len(old_labels)
    out = np.full(n_new, -1, np.int64)
    if n_new == 0:
        return out
    ids, c = centroids(old_vectors, old_labels)
    # overlaps over old+new together; only pairs touching a new tracklet matter
    ep = np.concatenate([np.asarray(old_episodes, dtype=object), np.asarray(new_episodes, dtype=object)])
    pi, pj = overlap_pairs(ep.astype(str), np.concatenate([old_starts, new_starts]),
                           np.concatenate([old_ends, new_ends]))
    touch = (pi >= n_old) | (pj >= n_old)
    pi, pj = pi[touch], pj[touch]
    banned: dict[int, set[int]] = {}     # new index -> old cluster ids it overlaps
    new_nbrs: dict[int, list[int]] = {}  # new index -> overlapping new indices
    for a, b in zip(pi.tolist(), pj.tolist()):
        if a >= n_old and b >= n_old:
            new_nbrs.setdefault(a - n_old, []).append(b - n_old)
            new_nbrs.setdefault(b - n_old, []).append(a - n_old)
        else:
            u, o = (a - n_old, b) if a >= n_old else (b - n_old, a)
            if old_labels[o] >= 0:
                banned.setdefault(u, set()).add(int(old_labels[o]))
    if len(ids):
        top = min(5, len(ids))
        cu, cc, cs = [], [], []
        for a in range(0, n_new, _CHUNK):
            s = xn[a:a + _CHUNK] @ c.T
            best = np.argsort(-s, axis=1, kind="stable")[:, :top]
            sv = np.take_along_axis(s, best, axis=1)
            r, q = np.nonzero(sv >= params.assign_threshold)
            cu.append(r + a); cc.append(best[r, q]); cs.append(sv[r, q])
        cu, cc, cs = (np.concatenate(t) for t in (cu, cc, cs))
        for t in np.lexsort((cc, cu, -cs)):
            u, lab = int(cu[t]), int(ids[cc[t]])
            if out[u] >= 0 or lab in banned.get(u, ()):
                continue
            if any(out[v] == lab for v in new_nbrs.get(u, ())):
                continue
            out[u] = lab
    rest = np.flatnonzero(out < 0)
    if len(rest) >= params.min_cluster_size:
        sub = cluster_tracklets(xn[rest], np.asarray(new_episodes)[rest], np.asarray(new_starts)[rest],
                                np.asarray(new_ends)[rest], params, seed=seed)
        base = int(old_labels.max()) + 1 if n_old and old_labels.max() >= 0 else 0
        _adopt_old_ids(xn, rest, sub, out, ids, c, banned, new_nbrs, params.merge_threshold, base)
    return out


def _adopt_old_ids(xn, rest, sub, out, old_ids, old_c, banned, new_nbrs, threshold, base) -> None:
    """Stage 6 for a new episode's leftover clusters (fills ``out`` in place).

    A leftover cluster whose centroid is within the merge threshold of an old
    cluster, and that overlaps none of its members (old ones, or new ones placed
    there), takes its id, most similar first (e.g. a known character in a new
    outfit); the others get ids >= base.
    """
    sid, sc = centroids(xn[rest], sub)
    taken: set[int] = set()
    if len(sid) and len(old_ids):
        sims = sc @ old_c.T
        r, q = np.nonzero(sims >= threshold)
        for t in np.lexsort((q, r, -sims[r, q])):
            a, lab = int(sid[r[t]]), int(old_ids[q[t]])
            if a in taken:
                continue
            members = rest[sub == a]
            if any(lab in banned.get(int(m), ()) or any(out[v] == lab for v in new_nbrs.get(int(m), ()))
                   for m in members):
                continue
            out[members] = lab
            taken.add(a)
    for a in sid:
        if int(a) not in taken:
            out[rest[sub == a]] = int(a) + base


# ----------------------------------------------------------------------------------------------
# stable names for unknown characters
# ----------------------------------------------------------------------------------------------

def stable_unknown_labels(clusters: dict[int, list[str]], registry: dict[str, int]
                          ) -> tuple[dict[int, str], dict[str, int]]:
    """``unknown_<n>`` per cluster, stable across runs through a registry tracklet_id -> n.

    A cluster's key is its lexicographically smallest tracklet id. Its n is the
    registry's n for the smallest of its members that the registry knows (so a
    cluster keeps its n when a new episode adds members, even ones with smaller
    ids), else a fresh n = largest n ever + 1 (never reused). Clusters are handled
    in key order and an n goes to the first cluster claiming it, so a cluster
    that splits keeps its n on the part holding the older key. The current key is
    registered; the returned registry is a new dict (the input is not changed).
    """
    reg = dict(registry)
    nxt = max(reg.values(), default=0) + 1
    taken: set[int] = set()
    names: dict[int, str] = {}
    for cid, members in sorted(clusters.items(), key=lambda kv: (min(map(str, kv[1]), default=""), kv[0])):
        members = sorted(map(str, members))
        n = None
        for t in members:
            if t in reg and reg[t] not in taken:
                n = reg[t]
                break
        if n is None:
            n, nxt = nxt, nxt + 1
        taken.add(n)
        if members:
            reg[members[0]] = n
        names[int(cid)] = f"unknown_{n}"
    return names, reg
