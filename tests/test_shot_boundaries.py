"""Shot boundaries on a synthetic series with every kind the generator draws.

Jump cuts (the same place, the camera moved), exits, very short shots, fades and dissolves, all
from the generator's defaults; the truth is the generator's own plan. The boundaries are judged on
the episodes' decoded frames fed to the shot detector the episode pipeline builds (same parameters,
same boundary rules), without detection or embedding (tests/test_ingest.py checks, through the
real ingest, that the stored shots and tracklets respect the boundaries).
"""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # decodes video


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """(truth, episode -> [(start_frame, reason, transition)] for boundaries after the first frame)."""
    from anitrack.config import load_config, resolve_profile
    from anitrack.episode import shot_params
    from anitrack.shots import cuts_to_shots, make_shot_detector
    from anitrack.synth import synthesize_series
    from anitrack.video import iter_frames

    out = tmp_path_factory.mktemp("cuts")
    folder = synthesize_series(out, series="cuts", episodes=2, characters=5, seconds=75, seed=31, transitions=0.3)
    truth = json.loads((folder / "truth.json").read_text())
    config = resolve_profile(load_config(environ={}), "offline")
    found = {}
    for ep in truth["episodes"]:
        detector = make_shot_detector(config["shots"]["backend"], **shot_params(config, "cpu"))
        n = 0
        for frame in iter_frames(str(folder / f"{ep['episode']}.mp4")):
            detector.push(frame.index, frame.rgb)
            n += 1
        detector.finish()
        decided = {b.frame: (b.reason, b.transition) for b in detector.boundaries}
        shots = cuts_to_shots(list(decided), n, config["shots"]["min_shot_frames"])  # as the pipeline stores them
        found[ep["episode"]] = [(start, *decided[start]) for start, _ in shots[1:]]
    return truth, found


def test_the_series_holds_every_kind_of_boundary(series):
    truth, _ = series
    shots = [s for e in truth["episodes"] for s in e["shots"]]
    kinds = {s["transition"] for s in shots}
    assert kinds == {"none", "cut", "fade", "dissolve"}
    assert sum(s["end_frame"] - s["start_frame"] < 15 for s in shots) >= 4  # very short shots


def test_boundaries_match_the_truth_within_one_frame(series):
    truth, found_by_episode = series
    hits = wrong_kind = false = boundaries = n_shots = 0
    reasons = set()
    for ep in truth["episodes"]:
        expected = {s["start_frame"]: s["transition"] for s in ep["shots"][1:]}
        found = found_by_episode[ep["episode"]]
        reasons |= {reason for _, reason, _ in found}
        for frame, kind in expected.items():
            near = [r for r in found if abs(r[0] - frame) <= 1]
            hits += bool(near)
            wrong_kind += bool(near) and near[0][2] != kind
        false += sum(not any(abs(r[0] - f) <= 1 for f in expected) for r in found)
        boundaries += len(expected)
        n_shots += len(ep["shots"])
    print(f"boundaries found {hits}/{boundaries}, false {false} in {n_shots} shots, wrong kind {wrong_kind}")
    assert hits >= 0.99 * boundaries
    assert false <= 0.01 * n_shots
    assert wrong_kind == 0
    assert reasons <= {"change", "transnetv2", "difference"}
