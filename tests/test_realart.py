"""Identity on real anime art (../shared/data/realart), not only on synthetic renders.

The floors are what the offline embedders really reach (benchmarks/realart_bench.py prints the
same figures, both through ``anitrack.identity.evaluation``); the point of the second test is the one a wiki editor cares about: names given on
real drawings, end to end through ``anitrack run``, are right, and the rest stay unknown.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from anitrack.lake import Lake
from anitrack.sql import connect, run_query
from tests.conftest import REPO, run_cli

REALART = REPO.parent / "shared" / "data" / "realart"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (REALART / "manifest.json").is_file(),
                                 reason=f"real art {REALART} is not available (expected ../shared beside the repo)")]

# measured 2026-12-05 on the 1,050 crops (6 references, a quarter of the characters left out, 3 galleries),
# open-set calibration with held-out counts bounded at 75% confidence: nearest 0.45 / 0.75, named right
# 0.05 / 0.09, named wrong 0.016 / 0.001 (descriptor / hybrid)
FLOOR_HYBRID_NEAREST = 0.65
FLOOR_HYBRID_RIGHT = 0.08


@pytest.fixture(scope="module")
def crops():
    from anitrack.embed import ColorShapeDescriptor, HybridEmbedder
    from anitrack.identity.evaluation import embed_views, load_labelled_art

    images, labels = load_labelled_art(REALART)
    views = [(img, None) for img in images]
    return labels, {"descriptor": embed_views(ColorShapeDescriptor(), views),
                    "hybrid": embed_views(HybridEmbedder(), views)}


def test_hybrid_names_real_art_better_and_calibration_holds(crops):
    from anitrack.config import load_config, resolve_profile
    from anitrack.identity.calibration import SPACE_RULES
    from anitrack.identity.evaluation import gallery_naming_figures

    labels, vectors = crops
    config = resolve_profile(load_config(environ={}), "offline")
    rate = config["name"]["max_false_rate"]
    got = {name: gallery_naming_figures(v, v, labels, SPACE_RULES[name], config, range(3)) for name, v in vectors.items()}
    assert got["hybrid"]["nearest"] > got["descriptor"]["nearest"] + 0.15
    assert got["hybrid"]["nearest"] >= FLOOR_HYBRID_NEAREST
    assert got["hybrid"]["named_right"] >= FLOOR_HYBRID_RIGHT
    for name, figures in got.items():  # out-of-gallery characters named at all count as wrong
        assert figures["named_wrong"] <= 2 * rate, (name, figures)


def test_a_series_of_real_drawings_names_few_characters_wrong(tmp_path):
    """Shots of one or two real drawings, a gallery that leaves a quarter of the characters out:
    whatever anitrack names is (nearly always) right, and every name says how sure it is."""
    made = run_cli("synth", str(tmp_path / "art"), "--drawings", str(REALART), "--series", "art",
                   "--episodes", "2", "--seconds", "24", "--seed", "4", check=True)
    folder = Path(made.stdout.strip().splitlines()[-1])
    truth = json.loads((folder / "truth.json").read_text())
    assert 0 < len(truth["gallery"]) < len(truth["characters"])
    lake = tmp_path / "lake"
    proc = run_cli("run", str(folder), "--lake", str(lake), "--series", "art", "--references",
                   str(folder.parent / "references"), "--truth", str(folder / "truth.json"), check=True)
    assert "naming: per-character thresholds" in proc.stderr
    con = connect(Lake(str(lake), create=False))

    def metric(name):
        return run_query(con, f"SELECT value FROM quality WHERE metric = '{name}'").to_pylist()[0]["value"]

    wrong = metric("named_wrong_share")
    assert wrong is None or wrong <= 0.05
    assert metric("gallery_credited_share") is not None
    chars = run_query(con, "SELECT * FROM characters").to_pylist()
    assert chars and all(c["confidence"] is not None and c["threshold"] is not None for c in chars)
    run = run_query(con, "SELECT * FROM identity_runs WHERE current").to_pylist()[0]
    given = sum(1 for p in (folder.parent / "references").rglob("*.png"))
    kept = run_query(con, 'SELECT count(*) AS n FROM "references"').to_pylist()[0]["n"]
    assert run["calibration"] == "gallery" and run["n_impostor"] == kept  # every kept reference is a trial
    assert kept == given or f"{given - kept} reference image(s) show no face" in run["calibration_warning"]
    top = max(c["confidence"] for c in chars)
    sure = run_query(con, f"SELECT DISTINCT character FROM screen_time WHERE confidence >= {top}").to_pylist()
    query = run_cli("query", "screen-time", "--lake", str(lake), "--series", "art", "--min-confidence", str(top),
                    "--format", "json", check=True)
    rows = [json.loads(line) for line in query.stdout.splitlines() if line.strip()]
    assert rows and {r["character"] for r in rows} == {r["character"] for r in sure}
    assert all(r["confidence"] >= top for r in rows)
