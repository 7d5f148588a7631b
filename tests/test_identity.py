"""Cross-episode identity core (anitrack.identity) on generated tracklet vectors."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from anitrack.identity.clustering import (IdentityParams, assign_incremental, centroids, cluster_tracklets, merge_clusters,
                                         overlap_pairs, split_conflicts, stable_unknown_labels)
from anitrack.identity.evaluation import quality, truth_metrics

_spec = importlib.util.spec_from_file_location(
    "identity_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "identity_bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

D = 64


def unit(a):
    a = np.asarray(a, np.float64)
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def near(rng, center, n, noise=0.25):
    """n unit vectors around ``center`` (cosine to it ~ 1/sqrt(1+noise^2))."""
    return unit(center + noise * unit(rng.standard_normal((n, len(center)))))


def assert_no_overlap_in_clusters(labels, episodes, starts, ends):
    i, j = overlap_pairs(episodes, starts, ends)
    bad = (labels[i] == labels[j]) & (labels[i] >= 0)
    assert not bad.any(), f"{bad.sum()} overlapping pairs share a cluster"


@pytest.fixture(scope="module")
def series():
    return bench.make_series(3000, refs_per_character=3, seed=5)


# ---------------------------------------------------------------------------------------------- sweep

def test_overlap_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    n = 300
    ep = rng.integers(0, 4, n)
    s = rng.uniform(0, 50, n).round(1)
    e = s + rng.uniform(0.1, 6, n).round(1)
    i, j = overlap_pairs(ep, s, e)
    got = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())}
    want = {(a, b) for a in range(n) for b in range(a + 1, n)
            if ep[a] == ep[b] and s[a] < e[b] and s[b] < e[a]}
    assert got == want
    # string episode keys, touching intervals do not overlap
    i, j = overlap_pairs(np.array(["a", "a", "b"]), np.array([0.0, 1.0, 0.0]), np.array([1.0, 2.0, 5.0]))
    assert len(i) == 0


# ---------------------------------------------------------------------------------------------- stage 5

def test_cluster_generated_series_is_accurate_and_conflict_free(series):
    s = series
    labels = cluster_tracklets(s["vectors"], s["episodes"], s["starts"], s["ends"], IdentityParams(), seed=0)
    assert labels.dtype == np.int64 and labels.shape == (len(s["truth"]),)
    assert_no_overlap_in_clusters(labels, s["episodes"], s["starts"], s["ends"])
    m = truth_metrics(labels, s["truth"])
    assert m["bcubed_f1"] >= 0.9, m
    again = cluster_tracklets(s["vectors"], s["episodes"], s["starts"], s["ends"], IdentityParams(), seed=0)
    assert np.array_equal(labels, again)                              # deterministic
    # ids are 0..k-1, every cluster at least min_cluster_size
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    assert np.array_equal(ids, np.arange(len(ids))) and counts.min() >= 3


def test_prototype_path_is_accurate_and_conflict_free(series):
    s = series
    params = IdentityParams(max_prototypes=200)   # force k-means prototypes + HDBSCAN over them
    labels = cluster_tracklets(s["vectors"], s["episodes"], s["starts"], s["ends"], params, seed=1)
    assert_no_overlap_in_clusters(labels, s["episodes"], s["starts"], s["ends"])
    assert truth_metrics(labels, s["truth"])["bcubed_f1"] >= 0.9


def test_identical_overlapping_tracklets_end_in_different_clusters():
    rng = np.random.default_rng(1)
    c = unit(rng.standard_normal(D))
    v = near(rng, c, 12, noise=0.1)
    v[1] = v[0]                                           # identical vectors ...
    ep = np.arange(12) // 3
    s = np.arange(12) * 10.0
    e = s + 5
    s[1], e[1] = s[0] + 1, e[0] + 1                       # ... on screen together
    ep[1] = ep[0]
    one = np.zeros(12, np.int64)
    split = split_conflicts(v, one, ep, s, e)
    assert split[0] != split[1] and min(split[0], split[1]) >= 0
    assert_no_overlap_in_clusters(split, ep, s, e)
    labels = cluster_tracklets(v, ep, s, e, IdentityParams())
    assert not (labels[0] == labels[1] and labels[0] >= 0)
    assert (labels >= 0).sum() >= 10                      # the rest stays one cluster


def test_split_separates_look_alike_characters_that_share_shots():
    rng = np.random.default_rng(2)
    base = unit(rng.standard_normal(D))
    a, b = (unit(base + 0.3 * unit(rng.standard_normal(D))) for _ in range(2))
    vec, ep, st, en, truth = [], [], [], [], []
    for e in range(30):
        for shot in range(6):
            who = [[0], [1], [0, 1]][(e + shot) % 3]
            for w in who:
                vec.append(near(rng, (a, b)[w], 1, noise=0.25)[0])
                ep.append(e); st.append(shot * 10.0); en.append(shot * 10.0 + 6); truth.append(w)
    vec, ep, st, en, truth = map(np.array, (vec, ep, st, en, truth))
    split = split_conflicts(vec, np.zeros(len(truth), np.int64), ep, st, en)
    assert_no_overlap_in_clusters(split, ep, st, en)
    assert truth_metrics(split, truth)["bcubed_f1"] >= 0.95
    labels = cluster_tracklets(vec, ep, st, en, IdentityParams())
    assert_no_overlap_in_clusters(labels, ep, st, en)
    assert truth_metrics(labels, truth)["bcubed_f1"] >= 0.95


def test_split_keeps_a_character_whole_for_a_few_duplicate_tracks():
    """Without the guard, constrained k-means seeded by the duplicates cuts along the looks."""
    rng = np.random.default_rng(3)
    c = unit(rng.standard_normal(D))
    # two looks whose centroids are as close as the merge joins (cosine ~0.96 >= 0.92)
    looks = [unit(c + 0.2 * unit(rng.standard_normal(D))) for _ in range(2)]
    assert looks[0] @ looks[1] >= 0.92
    n = 300
    v = np.vstack([near(rng, looks[k % 2], 1, noise=0.2) for k in range(n)])
    ep = np.arange(n) // 10
    s = (np.arange(n) % 10) * 10.0
    e = s + 5
    for k in range(5):                                    # 5 duplicated tracks
        s[k * 20 + 1], e[k * 20 + 1] = s[k * 20], e[k * 20]
    out = split_conflicts(v, np.zeros(n, np.int64), ep, s, e)
    assert_no_overlap_in_clusters(out, ep, s, e)
    assert np.bincount(out).max() >= n - 5                # not torn apart along its two looks


# ---------------------------------------------------------------------------------------------- stage 6

def test_merge_joins_similar_clusters_but_never_ones_sharing_a_frame():
    rng = np.random.default_rng(4)
    c = unit(rng.standard_normal(D))
    v = np.vstack([near(rng, c, 5, noise=0.05) for _ in range(4)])  # 4 clusters, all ~identical
    labels = np.repeat(np.arange(4), 5)
    ep = np.repeat(np.arange(20), 1)                      # every tracklet its own episode ...
    s = np.zeros(20)
    e = np.ones(20)
    ep[10] = ep[0]                                        # ... except cluster 2 shares a frame with 0
    out = merge_clusters(v, labels, ep, s, e, 0.92)
    assert out[0] == out[5] == out[15]                    # 0, 1 and 3 merge
    assert out[10] != out[0]                              # 2 never joins 0, even through 1 or 3
    assert_no_overlap_in_clusters(out, ep, s, e)


def test_merge_respects_the_union_of_cannot_links():
    rng = np.random.default_rng(5)
    c = unit(rng.standard_normal(D))
    # A ~ B most similar, B ~ C next; A and C share a frame: C must not join A+B
    a = near(rng, c, 4, noise=0.02)
    b = near(rng, c, 4, noise=0.02)
    cc = near(rng, c, 4, noise=0.15)
    v = np.vstack([a, b, cc])
    labels = np.repeat(np.arange(3), 4)
    ep = np.arange(12)
    ep[8] = ep[0]
    s, e = np.zeros(12), np.ones(12)
    out = merge_clusters(v, labels, ep, s, e, 0.5)
    assert out[0] == out[4] and out[8] != out[0]


def test_merge_leaves_dissimilar_clusters_apart():
    rng = np.random.default_rng(6)
    v = np.vstack([near(rng, unit(rng.standard_normal(D)), 5, noise=0.1) for _ in range(3)])
    labels = np.repeat(np.arange(3), 5)
    out = merge_clusters(v, labels, np.arange(15), np.zeros(15), np.ones(15), 0.92)
    assert len(np.unique(out)) == 3


def test_stable_unknown_labels_survive_an_unrelated_episode():
    clusters = {0: ["ep01_t003", "ep02_t001"], 1: ["ep01_t010", "ep01_t011"], 2: ["ep02_t005"]}
    names, reg = stable_unknown_labels(clusters, {})
    assert sorted(names.values()) == ["unknown_1", "unknown_2", "unknown_3"]
    # re-run after a new episode: cluster ids are reshuffled, one old cluster gains members, one is new
    later = {7: ["ep02_t005"], 3: ["ep01_t010", "ep01_t011", "ep03_t002"], 5: ["ep03_t009", "ep03_t010"],
             9: ["ep01_t003", "ep02_t001", "ep00_t000"]}
    names2, reg2 = stable_unknown_labels(later, reg)
    assert names2[7] == names[2] and names2[3] == names[1] and names2[9] == names[0]
    assert names2[5] == "unknown_4"
    assert reg == stable_unknown_labels(clusters, {})[1]   # input registry not modified
    names3, _ = stable_unknown_labels(later, reg2)          # idempotent
    assert names3 == names2


# ---------------------------------------------------------------------------------------------- incremental

def test_assign_incremental_puts_known_characters_in_their_clusters(series):
    s = series
    last = s["episodes"] == s["episodes"].max()
    old, new = ~last, last
    params = IdentityParams()
    lo = cluster_tracklets(s["vectors"][old], s["episodes"][old], s["starts"][old], s["ends"][old], params)
    ln = assign_incremental(s["vectors"][old], lo, s["episodes"][old], s["starts"][old], s["ends"][old],
                            s["vectors"][new], s["episodes"][new], s["starts"][new], s["ends"][new], params)
    assert ln.shape == (int(new.sum()),) and ln.dtype == np.int64
    t_old, t_new = s["truth"][old], s["truth"][new]
    hits = total = 0
    for c in np.unique(t_new):
        got = lo[(t_old == c) & (lo >= 0)]
        if len(got) < 10:
            continue
        total += int((t_new == c).sum())
        hits += int((ln[t_new == c] == np.bincount(got).argmax()).sum())
    assert total and hits >= 0.9 * total
    fresh = ln[ln > lo.max()]
    assert set(np.unique(ln)) <= set(np.unique(lo)) | set(fresh.tolist()) | {-1}
    both = np.concatenate([lo, ln])
    assert_no_overlap_in_clusters(both, np.concatenate([s["episodes"][old], s["episodes"][new]]),
                                  np.concatenate([s["starts"][old], s["starts"][new]]),
                                  np.concatenate([s["ends"][old], s["ends"][new]]))


def test_assign_incremental_new_character_gets_a_fresh_id_and_conflicts_are_kept():
    rng = np.random.default_rng(8)
    a, b = unit(rng.standard_normal(D)), unit(rng.standard_normal(D))
    old_v = near(rng, a, 6, 0.1)
    old_l = np.zeros(6, np.int64)
    old_ep, old_s = np.arange(6), np.zeros(6)
    # new episode 9: two tracklets of A on screen together (only one may join), 4 of a newcomer
    new_v = np.vstack([near(rng, a, 2, 0.1), near(rng, b, 4, 0.1)])
    new_ep = np.full(6, 9)
    new_s = np.array([0.0, 1.0, 10.0, 20.0, 30.0, 40.0])
    new_e = new_s + 5
    out = assign_incremental(old_v, old_l, old_ep, old_s, old_s + 1, new_v, new_ep, new_s, new_e, IdentityParams())
    assert sorted(out[:2].tolist())[1] == 0 and out[0] != out[1]
    assert len(set(out[2:].tolist())) == 1 and out[2] > 0


# ---------------------------------------------------------------------------------------------- metrics

def test_truth_metrics_perfect_singletons_and_hand_example():
    t = np.array([0, 0, 1, 1, 1, 2])
    m = truth_metrics(t, t)
    assert m["adjusted_rand"] == pytest.approx(1) and m["bcubed_f1"] == pytest.approx(1)
    assert truth_metrics(np.array([5, 5, 9, 9, 9, 1]), t)["bcubed_f1"] == pytest.approx(1)  # ids don't matter
    single = truth_metrics(np.full(6, -1), t)            # noise = singletons
    assert single["bcubed_precision"] == pytest.approx(1) and single["bcubed_recall"] < 1
    # hand-computed: pred {0,1,2,3} one cluster, truth {0,1},{2,3}
    # precision = mean over items of 2/4 = 0.5; recall = 1; F1 = 2*0.5*1/1.5 = 2/3; ARI = 0
    m = truth_metrics(np.array([0, 0, 0, 0]), np.array([0, 0, 1, 1]))
    assert m["bcubed_precision"] == pytest.approx(0.5) and m["bcubed_recall"] == pytest.approx(1.0)
    assert m["bcubed_f1"] == pytest.approx(2 / 3) and m["adjusted_rand"] == pytest.approx(0.0)
    # pred [0,0,1,1,1] vs truth [0,0,0,1,1]: P = (2/2*2 + 1/3 + 2/3*2)/5 = 11/15, R = (2/3*2 + 1/3 + 2/2*2)/5 = 11/15
    m = truth_metrics(np.array([0, 0, 1, 1, 1]), np.array([0, 0, 0, 1, 1]))
    assert m["bcubed_precision"] == pytest.approx(11 / 15) and m["bcubed_recall"] == pytest.approx(11 / 15)
    # one noise prediction: pred [0,0,-1] truth [0,0,0]: P = 1, R = (2/3*2 + 1/3)/3 = 5/9
    m = truth_metrics(np.array([0, 0, -1]), np.array([0, 0, 0]))
    assert m["bcubed_precision"] == pytest.approx(1) and m["bcubed_recall"] == pytest.approx(5 / 9)


def test_quality_returns_finite_numbers(series):
    s = series
    labels = cluster_tracklets(s["vectors"], s["episodes"], s["starts"], s["ends"], IdentityParams())
    q = quality(s["vectors"], labels)
    for k in ("silhouette", "davies_bouldin", "calinski_harabasz", "noise_fraction"):
        assert np.isfinite(q[k]), k
    assert q["n_clusters"] == len(q["cluster_sizes"]) == labels.max() + 1
    assert sum(q["cluster_sizes"]) == (labels >= 0).sum()
    assert 0 <= q["noise_fraction"] < 0.2 and -1 <= q["silhouette"] <= 1
    empty = quality(s["vectors"][:5], np.full(5, -1))
    assert empty["n_clusters"] == 0 and empty["silhouette"] is None


def test_centroids_are_unit_means():
    v = unit(np.array([[1, 0], [0, 1], [1, 1], [5, 5]], np.float64))
    ids, c = centroids(v, np.array([3, 3, -1, 7]))
    assert ids.tolist() == [3, 7]
    assert np.allclose(c[0], unit([1, 1])) and np.allclose(c[1], unit([1, 1]))


def test_constrained_union_never_chains_two_clusters_that_share_a_frame():
    """0 and 2 share a frame; 1 is similar to both. Most similar first: 0+1 join, then 1+2 would put 2 with 0,
    so it is refused; 3+4 join, and the smaller id is each group's root."""
    from anitrack.identity.clustering import constrained_union

    root = constrained_union(5, [0, 1, 4], [1, 2, 3], {0: {2}, 2: {0}})
    assert root.tolist() == [0, 0, 2, 3, 3]
