"""The naming space, its calibration from the gallery, and naming by members' evidence (no video)."""
from __future__ import annotations

import numpy as np
import pytest

from anitrack.identity.calibration import SPACE_RULES, Space, calibrate_cosine, fit_space, per_character
from anitrack.identity.clustering import overlap_pairs
from anitrack.identity.naming import merge_same_name, name_clusters

D = 48
RULE = SPACE_RULES["hybrid"]


def unit(a):
    a = np.asarray(a, np.float64)
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def cast(seed=0, n=8, pair=0.8):
    """Character centres; 0 and 1 are look-alikes (cosine ~``pair``)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n, D)))
    centres[1] = unit(pair * centres[0] + np.sqrt(1 - pair ** 2) * unit(rng.standard_normal(D)))
    return rng, centres


def draws(rng, centre, k, noise=0.55):
    return unit(centre + noise * unit(rng.standard_normal((k, D))))


def gallery(rng, centres, chars, k=6):
    refs = np.vstack([draws(rng, centres[c], k) for c in chars])
    return refs, np.repeat([f"c{c}" for c in chars], k)


def test_calibrated_threshold_names_at_most_the_rate_of_strangers():
    """Open set: drawings of characters the gallery leaves out are named about as rarely as the rate
    asked for, most drawings of gallery characters are named right, and look-alikes need more.

    A stranger who happens to sit closer to a gallery character than any two gallery characters
    sit to each other cannot be foreseen by any gallery, so the rate is checked over several casts
    (median), not on each."""
    stranger_wrong, known_wrong, right = [], [], []
    for seed in range(1, 7):
        rng, centres = cast(seed=seed, n=24)
        refs, labels = gallery(rng, centres, range(16), k=8)  # 16 in the gallery, 8 left out
        probes = np.vstack([draws(rng, centres[c], 40) for c in range(24)])
        truth = np.array([f"c{c}" for c in np.repeat(np.arange(24), 40)], object)
        space, cal = calibrate_cosine(probes, refs, labels, RULE, max_false_rate=0.02, margin=0.02,
                                      support_rate=0.1, dims=32)
        assert cal.source == "gallery" and cal.warning is None and cal.n_impostor == len(refs)
        assert cal.false_rate <= 0.02
        v = cal.judge(space.name(probes) @ space.name(refs).T, labels)
        strangers = np.repeat(np.arange(24), 40) >= 16
        wrong = v.passed & (v.best != truth)
        stranger_wrong.append(wrong[strangers].mean())
        known_wrong.append(wrong[~strangers].mean())
        right.append((v.passed & (v.best == truth))[~strangers].mean())
        # c1 is c0's look-alike: both need a higher score than characters nobody resembles
        assert min(cal.threshold_of("c0"), cal.threshold_of("c1")) > cal.threshold
    assert np.median(stranger_wrong) <= 0.02 and max(known_wrong) <= 0.02
    assert np.mean(right) >= 0.7


def test_a_small_gallery_keeps_the_default_and_says_how_many_images_to_add():
    rng, centres = cast()
    refs, labels = gallery(rng, centres, [0, 1, 2], k=2)
    space, cal = calibrate_cosine(draws(rng, centres[0], 30), refs, labels, RULE, 0.01, 0.05, 0.1)
    assert cal.source == "default" and cal.threshold == RULE.default_threshold and space.mean is not None
    space, cal = calibrate_cosine(draws(rng, centres[0], 3), refs, labels, RULE, 0.01, 0.05, 0.1)
    assert space.mean is None and cal.threshold == RULE.raw_default_threshold  # too few vectors to centre on
    assert "3 per character" in cal.warning and "c0 (2)" in cal.warning
    space, cal = calibrate_cosine(draws(rng, centres[0], 5), refs[:2], labels[:2], RULE, 0.01, 0.05, 0.1)
    assert cal.source == "default" and "1 character" in cal.warning


def test_one_character_short_of_images_does_not_stop_the_others_being_calibrated():
    rng, centres = cast(seed=4)
    refs, labels = gallery(rng, centres, [2, 3, 4, 5, 6], k=6)
    refs, labels = np.vstack([refs, draws(rng, centres[7], 1)]), np.append(labels, "c7")
    _, cal = calibrate_cosine(draws(rng, centres[2], 30), refs, labels, RULE, 0.05, 0.05, 0.1)
    assert cal.source == "gallery" and "c7 (1)" in cal.warning
    assert set(cal.thresholds) == {"c2", "c3", "c4", "c5", "c6", "c7"}  # the short one can still be named


def test_a_gallery_too_small_for_the_rate_is_held_to_what_it_can_show():
    rng, centres = cast(seed=3)
    refs, labels = gallery(rng, centres, [2, 3, 4, 5], k=5)  # 20 trials cannot show 1%
    _, cal = calibrate_cosine(draws(rng, centres[2], 10), refs, labels, RULE, 0.01, 0.05, 0.1)
    assert cal.source == "gallery" and "20 held-out references" in cal.warning and "0.050" in cal.warning


def test_judge_needs_the_margin_and_never_names_a_noise_label():
    labels = np.array(["Aki", "Aki", "Mio", "_noise"])
    _, cal = calibrate_cosine(np.eye(4, D, dtype=np.float32), np.eye(4, D, dtype=np.float32), labels, RULE, 0.01,
                              0.1, 0.1)
    cal.thresholds = {"Aki": 0.5, "Mio": 0.5}
    sims = np.array([[0.9, 0.7, 0.2, 0.1],     # Aki, clear lead
                     [0.6, 0.5, 0.55, 0.1],    # Aki by 0.05 < margin 0.1
                     [0.3, 0.3, 0.4, 0.1],     # Mio under her threshold
                     [0.2, 0.2, 0.3, 0.9]])    # an extra: closest to _noise
    v = cal.judge(sims, labels)
    assert v.passed.tolist() == [True, False, False, False]
    assert v.best.tolist() == ["Aki", "Aki", "Mio", "_noise"] and v.stranger.tolist() == [False, False, False, True]
    assert v.margin[0] == pytest.approx(0.7)


def test_space_round_trips_through_its_lake_row():
    rng, centres = cast()
    refs, labels = gallery(rng, centres, range(6))
    vectors = np.vstack([draws(rng, centres[c], 10) for c in range(6)])
    space = fit_space(vectors, refs, labels, RULE, dims=20)
    assert space.kind == "centred+whitened-20"
    again = Space.from_row(space.to_row())
    np.testing.assert_allclose(again.name(vectors), space.name(vectors), atol=1e-6)
    np.testing.assert_allclose(again.cluster(vectors), space.cluster(vectors), atol=1e-6)
    assert fit_space(vectors, refs, labels, SPACE_RULES["descriptor"], dims=0).kind == "raw"


def _verdicts_for(vectors, refs, labels, thresholds, margin=0.05):
    _, cal = calibrate_cosine(vectors, refs, labels, RULE, 0.01, margin, 0.1, dims=0)
    cal.thresholds = dict(thresholds)
    cal.support = {c: t - 0.3 for c, t in thresholds.items()}
    return cal, cal.judge(vectors @ refs.T, labels)


def test_a_cluster_is_named_by_its_members_and_disagreeing_ones_leave():
    e = np.eye(D, dtype=np.float32)
    refs, labels = np.stack([e[0], e[1], e[2]]), np.array(["Aki", "Mio", "_noise"])

    def toward(axis, s):
        return unit(s * e[axis] + np.sqrt(1 - s * s) * e[10 + axis])

    vectors = np.stack([toward(0, 0.9), toward(0, 0.55), toward(0, 0.6), toward(1, 0.9),   # cluster 0: Aki
                        toward(0, 0.5), toward(1, 0.5), toward(3, 0.9),                     # cluster 1: no majority
                        toward(1, 0.95), toward(2, 0.9)])                                  # noise: Mio, an extra
    labels_in = np.array([0, 0, 0, 0, 1, 1, 1, -1, -1])
    episodes = np.array(["e1"] * 9)
    starts = np.arange(9, dtype=float) * 10
    cal, v = _verdicts_for(vectors, refs, labels, {"Aki": 0.8, "Mio": 0.8})
    out, names, placed = name_clusters(vectors, labels_in, v, cal.threshold_of, episodes, starts, starts + 5,
                                       frozen=set())
    # one member passes for Aki on its own and three of four back her: Aki; the one passing for Mio leaves
    assert names[0].character == "Aki" and names[0].n_passed == 1 and names[0].confidence == pytest.approx(1.0)
    assert out[3] != 0 and names[out[3]].character == "Mio"   # passes for Mio on its own: leaves Aki's cluster
    assert out[7] == out[3] and placed[7] and placed[3]       # the noise Mio joins the Mio that left
    assert names[1].character is None and names[1].margin < 0  # no one passes: unknown, missed by its margin
    assert out[8] == -1                                         # the extra stays noise
    frozen_out, frozen_names, _ = name_clusters(vectors, labels_in, v, cal.threshold_of, episodes, starts,
                                                starts + 5, frozen={0})
    assert (frozen_out[:4] == 0).all()                         # a corrected cluster keeps its members


def test_a_tracklet_never_joins_a_mate_it_shares_the_screen_with():
    e = np.eye(D, dtype=np.float32)
    refs, labels = np.stack([e[0], e[1]]), np.array(["Aki", "Mio"])
    vectors = np.stack([e[0], e[0], e[0]])
    episodes = np.array(["e1", "e1", "e1"])
    starts, ends = np.array([0.0, 20.0, 1.0]), np.array([5.0, 25.0, 6.0])  # 0 and 2 on screen together
    cal, v = _verdicts_for(vectors, refs, labels, {"Aki": 0.8, "Mio": 0.8})
    out, names, placed = name_clusters(vectors, np.array([0, 0, -1]), v, cal.threshold_of, episodes, starts, ends,
                                       frozen=set())
    assert out[2] != out[0] and names[out[2]].character == "Aki" and placed[2]
    i, j = overlap_pairs(episodes, starts, ends)
    assert not np.any((out[i] == out[j]) & (out[i] >= 0))
    off, _, none = name_clusters(vectors, np.array([0, 0, -1]), v, cal.threshold_of, episodes, starts, ends,
                                 frozen=set(), rescue=False)
    assert off[2] == -1 and not none.any()


def test_a_collapsed_cluster_is_split_before_naming():
    """HDBSCAN put three characters in one cluster: split, each part is named by its own members;
    unsplit, the mixed cluster has no majority and only its one sure member per character leaves."""
    rng, centres = cast(seed=5)
    vectors = np.vstack([draws(rng, centres[c], 8, noise=0.2) for c in (2, 3, 4)])
    refs, labels = gallery(rng, centres, (2, 3, 4))
    truth = np.repeat([2, 3, 4], 8)
    _, cal = calibrate_cosine(vectors, refs, labels, RULE, 0.01, 0.05, 0.1, dims=0)
    score = per_character(vectors @ refs.T, labels)[1].max(axis=1)
    cal.thresholds = {f"c{c}": float(score[truth == c].max()) for c in (2, 3, 4)}  # one sure member each
    cal.support = {f"c{c}": 0.3 for c in (2, 3, 4)}
    v = cal.judge(vectors @ refs.T, labels)
    collapsed = np.zeros(len(vectors), np.int64)
    episodes, starts = np.array(["e1"] * len(vectors)), np.arange(len(vectors), dtype=float) * 10
    out, names, _ = name_clusters(vectors, collapsed, v, cal.threshold_of, episodes, starts, starts + 5,
                                  frozen=set(), genuine_low=0.6)
    for c in (2, 3, 4):
        assert len(set(out[truth == c].tolist())) == 1 and names[out[truth == c][0]].character == f"c{c}"
    kept, kept_names, _ = name_clusters(vectors, collapsed, v, cal.threshold_of, episodes, starts, starts + 5,
                                        frozen=set(), genuine_low=None)
    assert kept_names[0].character is None and (kept == 0).sum() == len(vectors) - 3


def test_clusters_given_one_name_join_unless_they_share_the_screen():
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3, -1])
    episodes = np.array(["e1"] * 5 + ["e2"] * 4)
    starts = np.array([0, 10, 20, 30, 40, 0, 0, 20, 30], float)
    ends = starts + 5  # in e2, tracklet 5 (cluster 2) and 6 (cluster 3) are on screen together
    names = {0: "Ayumi", 1: "Ayumi", 2: "Botan", 3: "Botan"}
    out = merge_same_name(labels, episodes, starts, ends, names)
    assert out.tolist() == [1, 1, 1, 1, 1, 2, 3, 3, -1]  # the two Ayumi looks are one; the Botans clash
    assert merge_same_name(labels, episodes, starts, ends, {0: "Ayumi", 1: "Mio"}).tolist() == labels.tolist()


def test_per_character_takes_the_best_reference_of_each_label():
    chars, score = per_character(np.array([[0.1, 0.9, 0.3], [0.5, 0.2, 0.4]]), ["b", "a", "b"])
    assert chars.tolist() == ["a", "b"]
    np.testing.assert_allclose(score, [[0.9, 0.3], [0.2, 0.5]])
