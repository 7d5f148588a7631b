"""Corrections as labels rows: what each kind writes, what it refuses, and how re-clustering applies them."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from anitrack.identity.corrections import CorrectionError, StaleRun, apply_corrections, correction_rows, noise_mask
from anitrack.lake import Lake

IDS = ["e1:a", "e1:b", "e1:c", "e2:d", "e2:e", "e2:f"]
CLUSTERS = [0, 0, 1, 1, 2, 2]


def run_lake(folder, clusters) -> Lake:
    """A lake holding one identity run r1 of series s, the tracklets IDS in ``clusters``."""
    lk = Lake(str(folder / "lake"))
    keys = {"series": "s", "run": "r1"}
    lk.commit("clusters", pa.Table.from_pylist([
        {"series": "s", "run_id": "r1", "episode": t.split(":")[0], "tracklet_id": t, "cluster_id": k,
         "rescued": False} for t, k in zip(IDS, clusters)]), run_id="r1", **keys)
    lk.commit("identity_runs", pa.Table.from_pylist([{"series": "s", "run_id": "r1", "parameters": "{}",
                                                      "created_at": dt.datetime.now(dt.timezone.utc)}]),
              run_id="r1", **keys)
    return lk


@pytest.fixture
def lake(tmp_path) -> Lake:
    """Clusters 0, 1, 2 of two tracklets each."""
    return run_lake(tmp_path, CLUSTERS)


def apply(rows, labels=CLUSTERS):
    return apply_corrections(np.array(labels), IDS, rows).tolist()


def test_name_and_merge_cover_every_tracklet_of_the_clusters(lake):
    rows = correction_rows(lake, "s", "name", 1, name=" Frieren ")
    assert [(r["tracklet_id"], r["action"], r["value"]) for r in rows] == [("e1:c", "name", "Frieren"),
                                                                          ("e2:d", "name", "Frieren")]
    assert len({r["created_at"] for r in rows}) == 1  # one correction, one undo
    merged = apply(correction_rows(lake, "s", "merge", 0, other=2))
    assert merged == [0, 0, 1, 1, 0, 0]
    # a re-run that leaves merged tracklets as noise (or placed them only by naming) still keeps them together
    assert apply(correction_rows(lake, "s", "merge", 0, other=2), labels=[0, -1, 1, 1, -1, 2]) == [0, 0, 1, 1, 0, 0]
    alone = apply(correction_rows(lake, "s", "merge", 0, other=2), labels=[-1, -1, 1, 1, -1, -1])
    assert alone[2:4] == [1, 1] and len(set(alone[:2] + alone[4:])) == 1 and alone[0] not in (-1, 1)


def test_move_takes_tracklets_out_of_one_cluster_into_another(lake):
    rows = correction_rows(lake, "s", "move", 0, tracklets=["e1:b"], other=1)
    moved = apply(rows)
    assert moved[1] == moved[2] == moved[3] and moved[0] == 0 and moved[1] != 0
    # the moved tracklet's name label is cleared (cluster 1 has no label), so it cannot rename cluster 1
    assert [(r["tracklet_id"], r["value"]) for r in rows if r["action"] == "name"] == [("e1:b", "")]


def test_split_and_noise(lake):
    split = apply(correction_rows(lake, "s", "split", 2, tracklets=["e2:f"]))
    assert split[:5] == CLUSTERS[:5] and split[5] not in CLUSTERS
    noise = correction_rows(lake, "s", "noise", 1)
    assert apply(noise) == [0, 0, -1, -1, 2, 2]
    assert noise_mask(IDS, noise).tolist() == [False, False, True, True, False, False]


def test_refusals_write_nothing_and_say_why(lake):
    with pytest.raises(CorrectionError, match="cluster 7 does not exist"):
        correction_rows(lake, "s", "name", 7, name="X")
    with pytest.raises(CorrectionError, match="needs a character name"):
        correction_rows(lake, "s", "name", 0, name="  ")
    with pytest.raises(CorrectionError, match="e2:d is not in cluster 0"):
        correction_rows(lake, "s", "split", 0, tracklets=["e2:d"])
    with pytest.raises(CorrectionError, match="itself"):
        correction_rows(lake, "s", "merge", 0, other=0)
    with pytest.raises(StaleRun, match="no longer current"):
        correction_rows(lake, "s", "noise", 0, run_id="r0")
    with pytest.raises(CorrectionError, match="no identity run"):
        correction_rows(lake, "other", "noise", 0)
    with pytest.raises(CorrectionError, match="is not one of this cluster's crops"):
        correction_rows(lake, "s", "reference", 0, crops=["nope"], name="X")
    assert lake.read("labels", "s").num_rows == 0


def test_the_latest_correction_of_a_tracklet_wins(lake):
    first = correction_rows(lake, "s", "split", 2, tracklets=["e2:f"])
    later = [dict(r, created_at=r["created_at"] + dt.timedelta(seconds=1))
             for r in correction_rows(lake, "s", "merge", 0, other=2)]
    labels = apply(first + later)
    assert labels[0] == labels[4] == labels[5]  # the merge, made later, took the split-off tracklet along


def later(rows, seconds: int):
    return [dict(r, created_at=r["created_at"] + dt.timedelta(seconds=seconds)) for r in rows]


def test_a_split_after_a_merge_takes_the_tracklet_out_of_the_merged_cluster(lake):
    merge = correction_rows(lake, "s", "merge", 0, other=2)
    split = later(correction_rows(lake, "s", "split", 2, tracklets=["e2:f"]), 1)
    labels = apply(merge + split)
    assert labels[0] == labels[1] == labels[4] and labels[5] not in (labels[0], labels[2])


def test_a_moved_tracklet_leaves_the_noise(lake):
    noise = correction_rows(lake, "s", "noise", 0, tracklets=["e1:a"])
    move = later(correction_rows(lake, "s", "move", 0, tracklets=["e1:a"], other=1), 1)
    assert apply(noise)[0] == -1
    labels = apply(noise + move)
    assert labels[0] == labels[2] == labels[3] >= 0


def test_any_tracklet_noise_included_goes_to_a_character_in_one_correction(tmp_path):
    with_noise = [0, 0, 1, 1, -1, -1]  # the clustering left e2:e and e2:f in the noise
    lk = run_lake(tmp_path, with_noise)
    rows = correction_rows(lk, "s", "name", -1, name="Frieren", tracklets=["e2:e", "e2:f"])
    assert {(r["tracklet_id"], r["value"]) for r in rows if r["action"] == "name"} == {("e2:e", "Frieren"),
                                                                                      ("e2:f", "Frieren")}
    labels = apply(rows, labels=with_noise)
    assert labels[4] == labels[5] and labels[4] not in (-1, 0, 1)  # out of the noise, as a cluster of their own
    some = correction_rows(lk, "s", "name", 0, name="Fern", tracklets=["e1:b"])  # part of a cluster: it leaves
    parted = apply(some, labels=with_noise)
    assert parted[0] == 0 and parted[1] not in (-1, 0, 1)
    assert {r["value"] for r in some if r["action"] == "name"} == {"Fern"}
    with pytest.raises(CorrectionError, match="needs the tracklets to take out of the noise"):
        correction_rows(lk, "s", "name", -1, name="Frieren")
    with pytest.raises(CorrectionError, match="cluster -1 does not exist"):
        correction_rows(lk, "s", "merge", -1, other=0)
    assert lk.read("labels", "s").num_rows == 0
