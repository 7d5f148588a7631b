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
        space, cal = calibrate_cosine(probes, refs, labels, RULE, max_false_rate=0.02, margin=0.02, dims=32)
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
    space, cal = calibrate_cosine(draws(rng, centres[0], 30), refs, labels, RULE, 0.01, 0.05)
    assert cal.source == "default" and cal.threshold == RULE.default_threshold and space.mean is not None
    space, cal = calibrate_cosine(draws(rng, centres[0], 3), refs, labels, RULE, 0.01, 0.05)
    assert space.mean is None and cal.threshold == RULE.raw_default_threshold  # too few vectors to centre on
    assert "3 per character" in cal.warning and "c0 (2)" in cal.warning
    space, cal = calibrate_cosine(draws(rng, centres[0], 5), refs[:2], labels[:2], RULE, 0.01, 0.05)
    assert cal.source == "default" and "1 character" in cal.warning


def test_one_character_short_of_images_does_not_stop_the_others_being_calibrated():
    rng, centres = cast(seed=4)
    refs, labels = gallery(rng, centres, [2, 3, 4, 5, 6], k=6)
    refs, labels = np.vstack([refs, draws(rng, centres[7], 1)]), np.append(labels, "c7")
    _, cal = calibrate_cosine(draws(rng, centres[2], 30), refs, labels, RULE, 0.05, 0.05)
    assert cal.source == "gallery" and "c7 (1)" in cal.warning
    assert set(cal.thresholds) == {"c2", "c3", "c4", "c5", "c6", "c7"}  # the short one can still be named


def test_a_gallery_too_small_for_the_rate_is_stricter_not_looser():
    """20 trials cannot show a rate of 1%: the thresholds extrapolate the impostors' tail beyond what the
    trials show, so they are higher than for a rate the trials can show, never lower; the warning says so."""
    rng, centres = cast(seed=3)
    refs, labels = gallery(rng, centres, [2, 3, 4, 5], k=5)
    probes = draws(rng, centres[2], 10)
    _, cal = calibrate_cosine(probes, refs, labels, RULE, 0.01, 0.05)
    _, shown = calibrate_cosine(probes, refs, labels, RULE, 0.05, 0.05)  # 20 trials can show 5%
    assert cal.source == "gallery" and "20 held-out references" in cal.warning and "extrapolate" in cal.warning
    assert shown.warning is None
    assert all(cal.thresholds[c] >= shown.thresholds[c] for c in cal.thresholds)
    assert cal.evidence["level"] >= shown.evidence["level"] + np.log(5) - 1e-9  # 1% is 5x beyond 1 / 20


def test_judge_needs_the_margin_and_never_names_a_noise_label():
    labels = np.array(["Aki", "Aki", "Mio", "_noise"])
    _, cal = calibrate_cosine(np.eye(4, D, dtype=np.float32), np.eye(4, D, dtype=np.float32), labels, RULE, 0.01, 0.1)
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
    _, cal = calibrate_cosine(vectors, refs, labels, RULE, 0.01, margin, dims=0)
    cal.thresholds = dict(thresholds)
    return cal, cal.judge(vectors @ refs.T, labels)


def test_a_cluster_is_named_by_its_members_and_disagreeing_ones_leave():
    """A cluster is named X only when most of its tracklets pass X's threshold on their own (the test a lone
    tracklet faces); its members that pass for someone else leave it; without a majority it is unknown."""
    e = np.eye(D, dtype=np.float32)
    refs, labels = np.stack([e[0], e[1], e[2]]), np.array(["Aki", "Mio", "_noise"])

    def toward(axis, s):
        return unit(s * e[axis] + np.sqrt(1 - s * s) * e[10 + axis])

    vectors = np.stack([toward(0, 0.9), toward(0, 0.85), toward(0, 0.82), toward(0, 0.6), toward(1, 0.9),  # 0: Aki
                        toward(0, 0.5), toward(0, 0.85), toward(3, 0.9), toward(3, 0.8),   # 1: one of four passes
                        toward(1, 0.95), toward(2, 0.9)])                                  # noise: Mio, an extra
    labels_in = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, -1, -1])
    episodes = np.array(["e1"] * len(vectors))
    starts = np.arange(len(vectors), dtype=float) * 10
    cal, v = _verdicts_for(vectors, refs, labels, {"Aki": 0.8, "Mio": 0.8})
    out, names, placed = name_clusters(vectors, labels_in, v, cal.threshold_of, episodes, starts, starts + 5,
                                       frozen=set())
    # three of five pass for Aki: Aki, the member under the threshold included; the one passing for Mio leaves
    assert names[0].character == "Aki" and (out[:4] == 0).all()
    # ... and cluster 1's one passing member joins it: four of its five members passed
    assert names[0].n_passed == 4 and names[0].confidence == pytest.approx(4 / 5)
    assert out[4] != 0 and names[out[4]].character == "Mio"
    assert out[9] == out[4] and placed[9] and placed[4]       # the noise Mio joins the Mio that left
    assert names[1].character is None and names[1].margin < 0  # no majority: unknown, missed by its margin
    assert out[6] == 0 and placed[6]                            # its one passing member leaves for Aki
    assert out[10] == -1                                        # the extra stays noise
    frozen_out, frozen_names, _ = name_clusters(vectors, labels_in, v, cal.threshold_of, episodes, starts,
                                                starts + 5, frozen={0})
    assert (frozen_out[:5] == 0).all()                         # a corrected cluster keeps its members


def test_a_tracklet_never_joins_a_mate_it_shares_the_screen_with():
    e = np.eye(D, dtype=np.float32)
    refs, labels = np.stack([e[0], e[1]]), np.array(["Aki", "Mio"])
    vectors = np.stack([e[0], e[0], e[0]])
    episodes = np.array(["e1", "e1", "e1"])
    starts, ends = np.array([0.0, 20.0, 1.0]), np.array([5.0, 25.0, 6.0])  # 0 and 2 on screen together
    cal, v = _verdicts_for(vectors, refs, labels, {"Aki": 0.8, "Mio": 0.8})
    out, names, placed = name_clusters(vectors, np.array([0, 0, -1]), v, cal.threshold_of, episodes, starts, ends,
                                       frozen=set())
    # it passes for Aki but shares the screen with Aki's cluster: one of the two is someone else, so it stays
    # noise rather than give one name to two faces on screen together
    assert out[2] == -1 and not placed[2]
    i, j = overlap_pairs(episodes, starts, ends)
    assert not np.any((out[i] == out[j]) & (out[i] >= 0))
    off, _, none = name_clusters(vectors, np.array([0, 0, -1]), v, cal.threshold_of, episodes, starts, ends,
                                 frozen=set(), rescue=False)
    assert off[2] == -1 and not none.any()


def test_a_collapsed_cluster_is_split_before_naming():
    """HDBSCAN put three characters in one cluster: split, each part is named by its own members;
    unsplit, the mixed cluster has no majority and stays unknown, and its sure members leave it."""
    rng, centres = cast(seed=5)
    vectors = np.vstack([draws(rng, centres[c], 8, noise=0.2) for c in (2, 3, 4)])
    refs, labels = gallery(rng, centres, (2, 3, 4))
    truth = np.repeat([2, 3, 4], 8)
    _, cal = calibrate_cosine(vectors, refs, labels, RULE, 0.01, 0.05, dims=0)
    score = per_character(vectors @ refs.T, labels)[1].max(axis=1)
    # five of each character's eight pass
    cal.thresholds = {f"c{c}": float(np.sort(score[truth == c])[3]) for c in (2, 3, 4)}
    v = cal.judge(vectors @ refs.T, labels)
    assert v.passed.sum() == 15
    collapsed = np.zeros(len(vectors), np.int64)
    episodes, starts = np.array(["e1"] * len(vectors)), np.arange(len(vectors), dtype=float) * 10
    out, names, _ = name_clusters(vectors, collapsed, v, cal.threshold_of, episodes, starts, starts + 5,
                                  frozen=set(), genuine_low=0.6)
    for c in (2, 3, 4):
        assert len(set(out[truth == c].tolist())) == 1 and names[out[truth == c][0]].character == f"c{c}"
    kept, kept_names, _ = name_clusters(vectors, collapsed, v, cal.threshold_of, episodes, starts, starts + 5,
                                        frozen=set(), genuine_low=None)
    assert kept_names[0].character is None and (kept == 0).sum() == len(vectors) - 15


def test_clusters_given_one_name_join_unless_they_share_the_screen():
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3, -1])
    episodes = np.array(["e1"] * 5 + ["e2"] * 4)
    starts = np.array([0, 10, 20, 30, 40, 0, 0, 20, 30], float)
    ends = starts + 5  # in e2, tracklet 5 (cluster 2) and 6 (cluster 3) are on screen together
    names = {0: "Ayumi", 1: "Ayumi", 2: "Botan", 3: "Botan"}
    out, unnamed = merge_same_name(labels, episodes, starts, ends, names, strength={2: 1, 3: 2})
    assert out.tolist() == [1, 1, 1, 1, 1, 2, 3, 3, -1]  # the two Ayumi looks are one; the Botans clash
    assert unnamed == {2}  # one name never goes to two tracklets on screen together: the weaker loses it
    out, unnamed = merge_same_name(labels, episodes, starts, ends, {0: "Ayumi", 1: "Mio"})
    assert out.tolist() == labels.tolist() and not unnamed


def test_per_character_takes_the_best_reference_of_each_label():
    chars, score = per_character(np.array([[0.1, 0.9, 0.3], [0.5, 0.2, 0.4]]), ["b", "a", "b"])
    assert chars.tolist() == ["a", "b"]
    np.testing.assert_allclose(score, [[0.9, 0.3], [0.2, 0.5]])
