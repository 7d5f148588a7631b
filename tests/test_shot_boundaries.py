"""Shot boundaries on a synthetic series with every kind the generator draws, through the real ingest.

Jump cuts (the same place, the camera moved), exits, very short shots, fades and dissolves, all
from the generator's defaults; the truth is the generator's own plan.
"""
from __future__ import annotations

import json

import pytest

from anitrack.lake import Lake
from anitrack.sql import connect, run_query
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # runs the pipeline over video


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from anitrack.synth import synthesize_series

    out = tmp_path_factory.mktemp("cuts")
    folder = synthesize_series(out, series="cuts", episodes=2, characters=5, seconds=75, seed=31, transitions=0.3)
    lake = out / "lake"
    run_cli("ingest", str(folder), "--lake", str(lake), "--series", "cuts", check=True, timeout=900)
    truth = json.loads((folder / "truth.json").read_text())
    db = connect(Lake(str(lake), create=False))
    return truth, lambda sql: run_query(db, sql).to_pylist()


def test_the_series_holds_every_kind_of_boundary(series):
    truth, _ = series
    shots = [s for e in truth["episodes"] for s in e["shots"]]
    kinds = {s["transition"] for s in shots}
    assert kinds == {"none", "cut", "fade", "dissolve"}
    assert sum(s["end_frame"] - s["start_frame"] < 15 for s in shots) >= 4  # very short shots


def test_boundaries_match_the_truth_within_one_frame(series):
    truth, q = series
    hits = wrong_kind = false = boundaries = n_shots = 0
    for ep in truth["episodes"]:
        expected = {s["start_frame"]: s["transition"] for s in ep["shots"][1:]}
        found = q(f"SELECT start_frame, reason, transition FROM shots WHERE episode = '{ep['episode']}' "
                  f"AND shot_id > 0 ORDER BY shot_id")
        for frame, kind in expected.items():
            near = [r for r in found if abs(r["start_frame"] - frame) <= 1]
            hits += bool(near)
            wrong_kind += bool(near) and near[0]["transition"] != kind
        false += sum(not any(abs(r["start_frame"] - f) <= 1 for f in expected) for r in found)
        boundaries += len(expected)
        n_shots += len(ep["shots"])
    print(f"boundaries found {hits}/{boundaries}, false {false} in {n_shots} shots, wrong kind {wrong_kind}")
    assert hits >= 0.99 * boundaries
    assert false <= 0.01 * n_shots
    assert wrong_kind == 0
    reasons = {r["reason"] for r in q("SELECT DISTINCT reason FROM shots")}
    assert reasons <= {"start", "change", "transnetv2", "difference"}


def test_no_tracklet_crosses_a_true_boundary(series):
    truth, q = series
    for ep in truth["episodes"]:
        shots = [(s["start_frame"], s["end_frame"]) for s in ep["shots"]]
        rows = q(f"SELECT tracklet_id, start_frame, end_frame FROM tracklets WHERE episode = '{ep['episode']}'")
        assert rows
        crossing = [r for r in rows if not any(s <= r["start_frame"] and r["end_frame"] <= e for s, e in shots)]
        assert crossing == [], ep["episode"]
