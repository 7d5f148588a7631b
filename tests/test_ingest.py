"""End-to-end ingestion through the real CLI, Prefect, PyAV, TransNetV2, animeface and the lake."""
from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest

from anitrack.lake import Lake
from anitrack.shots import model_version, native_bf16
from anitrack.sql import connect, run_query
from tests.conftest import real_clip, run_cli

pytestmark = pytest.mark.slow  # runs the pipeline over video


def q(lake_path, sql: str) -> list[dict]:
    return run_query(connect(Lake(str(lake_path), create=False)), sql).to_pylist()


def test_every_episode_is_ingested(ingested_lake, synth_truth):
    rows = q(ingested_lake, "SELECT episode, status, n_frames FROM episodes ORDER BY episode")
    truth = {e["episode"]: e["n_frames"] for e in synth_truth["episodes"]}
    assert {r["episode"]: (r["status"], r["n_frames"]) for r in rows} == {e: ("ok", n) for e, n in truth.items()}
    for table in ("shots", "detections", "tracklets", "crops", "embeddings"):
        per_episode = q(ingested_lake, f"SELECT count(DISTINCT episode) AS n FROM {table}")[0]["n"]
        assert per_episode == len(truth), table


def test_shot_boundaries_are_exact_on_hard_cuts_and_transitions_are_labelled(ingested_lake, synth_truth):
    """Hard cuts at their frame; a fade or dissolve within one frame of its middle, with its kind."""
    kinds = set()
    for ep in synth_truth["episodes"]:
        found = q(ingested_lake, f"SELECT start_frame, reason, transition FROM shots WHERE episode = "
                                 f"'{ep['episode']}' ORDER BY shot_id")
        assert len(found) == len(ep["shots"]), ep["episode"]
        assert (found[0]["reason"], found[0]["transition"]) == ("start", "none")
        for row, truth in zip(found[1:], ep["shots"][1:]):
            slack = 0 if truth["transition"] == "cut" else 1
            assert abs(row["start_frame"] - truth["start_frame"]) <= slack, (ep["episode"], row, truth)
            assert row["transition"] == truth["transition"], (ep["episode"], row, truth)
            assert row["reason"] in ("change", "transnetv2", "difference")
            kinds.add(truth["transition"])
    assert "cut" in kinds


def test_shot_times_come_from_timestamps(ingested_lake, synth_truth):
    fps = synth_truth["fps"]
    for row in q(ingested_lake, "SELECT start_frame, start_s, end_frame, end_s FROM shots"):
        assert row["start_s"] == pytest.approx(row["start_frame"] / fps, abs=1e-3)
        assert row["end_s"] == pytest.approx(row["end_frame"] / fps, abs=1e-3)


def test_no_tracklet_crosses_a_cut(ingested_lake, synth_truth):
    for ep in synth_truth["episodes"]:
        shots = [(s["start_frame"], s["end_frame"]) for s in ep["shots"]]
        rows = q(ingested_lake, f"SELECT tracklet_id, start_frame, end_frame, n_detections FROM tracklets "
                                f"WHERE episode = '{ep['episode']}'")
        assert rows, ep["episode"]
        for r in rows:
            assert any(s <= r["start_frame"] and r["end_frame"] <= e for s, e in shots), r
            assert r["n_detections"] >= 3


def test_keyframes_give_the_tracklets_of_detecting_every_sampled_frame_for_less_detector_work(
        ingested_lake, synth_series):
    """The default (keyframes, the frames between them detected only where they disagree) against the
    detector on every sampled frame, on the same real episode: the same tracklets, fewer detector calls;
    interpolated boxes are recorded as such and no crop is cut from one."""
    from anitrack.config import load_config, resolve_profile
    from anitrack.episode import EpisodePipeline

    episode = "episode_01"
    config = resolve_profile(load_config(["detect.keyframe_every=1", "detect.workers=1"], environ={}), "offline")
    pipeline = EpisodePipeline(config)
    try:
        every = pipeline.run(str(synth_series / f"{episode}.mp4"), "mini", episode)
    finally:
        pipeline.close()
    stride = config["detect"]["stride"]
    dense = sorted((r["start_frame"], r["end_frame"]) for r in every.tables["tracklets"].to_pylist())
    keyed = sorted((r["start_frame"], r["end_frame"]) for r in q(
        ingested_lake, f"SELECT start_frame, end_frame FROM tracklets WHERE episode = '{episode}'"))
    assert len(keyed) == len(dense)
    assert all(abs(a - c) <= stride and abs(b - d) <= stride for (a, b), (c, d) in zip(keyed, dense)), (keyed, dense)
    calls = q(ingested_lake, f"SELECT model_calls FROM stage_runs WHERE stage = 'detections' AND episode = '{episode}'")
    assert calls[0]["model_calls"] < 0.75 * every.clock.calls["detect"]
    kinds = {r["detector"]: r["n"] for r in q(ingested_lake, "SELECT detector, count(*) AS n FROM detections GROUP BY 1")}
    assert set(kinds) == {"animeface", "interpolated"} and kinds["interpolated"] > 0
    cut_from_interpolated = q(ingested_lake, """
        SELECT c.crop_id FROM crops c JOIN detections d USING (episode, tracklet_id, frame)
        WHERE d.detector = 'interpolated'""")
    assert cut_from_interpolated == []


def test_episodes_run_on_their_stored_shots_give_the_lakes_detections_tracklets_and_crops(
        ingested_lake, synth_series):
    """A resumed or backfilled episode reuses its committed shots instead of re-running the shot detector;
    the frames it detects, its boxes, tracklets and crops must still be those of a clean run."""
    from anitrack.config import load_config, resolve_profile
    from anitrack.episode import EpisodePipeline

    boxes = ["frame", "detector", "x1", "y1", "x2", "y2", "tracklet_id"]
    pipeline = EpisodePipeline(resolve_profile(load_config(["detect.workers=1"], environ={}), "offline"))
    try:
        for episode in ("episode_01", "episode_02", "episode_03"):
            where = f"WHERE episode = '{episode}'"
            shots = q(ingested_lake, f"SELECT * FROM shots {where} ORDER BY shot_id")
            again = pipeline.run(str(synth_series / f"{episode}.mp4"), "mini", episode, shots=shots).tables
            assert sorted(map(repr, again["detections"].select(boxes).to_pylist())) == \
                sorted(map(repr, q(ingested_lake, f"SELECT {', '.join(boxes)} FROM detections {where}"))), episode
            for table, key in (("tracklets", "tracklet_id"), ("crops", "crop_id")):
                assert sorted(again[table].column(key).to_pylist()) == \
                    [r[key] for r in q(ingested_lake, f"SELECT {key} FROM {table} {where} ORDER BY 1")], episode
    finally:
        pipeline.close()


def test_every_character_is_in_some_tracklet(ingested_lake, synth_series, synth_truth):
    """Each kept detection is matched to the truth face box containing its centre."""
    import csv

    truth_boxes = {}
    with open(synth_series / "face_boxes.csv") as fh:
        for row in csv.DictReader(fh):
            truth_boxes.setdefault((row["episode"], int(row["frame"])), []).append(row)
    found = set()
    for d in q(ingested_lake, "SELECT episode, frame, x1, y1, x2, y2 FROM detections WHERE tracklet_id IS NOT NULL"):
        cx, cy = (d["x1"] + d["x2"]) / 2, (d["y1"] + d["y2"]) / 2
        for box in truth_boxes.get((d["episode"], d["frame"]), []):
            x, y, w, h = (float(box[k]) for k in "xywh")
            if x <= cx <= x + w and y <= cy <= y + h:
                found.add(box["character"])
    on_screen = {a["character"] for e in synth_truth["episodes"] for a in e["appearances"]} - {"_extra"}
    assert on_screen == set(synth_truth["characters"])
    assert on_screen <= found


def test_crops_are_images_in_the_lake(ingested_lake):
    from anitrack.crops import decode

    rows = q(ingested_lake, "SELECT tracklet_id, count(*) AS n, any_value(image) AS image, "
                            "any_value(anchor) AS anchor FROM crops GROUP BY 1")
    assert rows and all(1 <= r["n"] <= 20 for r in rows)
    image = decode(rows[0]["image"])
    assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 20


def test_embeddings_per_crop_and_per_tracklet(ingested_lake):
    rows = q(ingested_lake, """
        SELECT t.tracklet_id, count(e.crop_id) AS crops, count(*) FILTER (WHERE e.kind = 'tracklet') AS pooled,
               any_value(e.model) AS model, any_value(len(e.vector)) AS dim
        FROM tracklets t JOIN embeddings e USING (series, episode, tracklet_id) GROUP BY 1""")
    n_tracklets = q(ingested_lake, "SELECT count(*) AS n FROM tracklets")[0]["n"]
    assert len(rows) == n_tracklets
    from anitrack.embed import HybridEmbedder

    dim = HybridEmbedder().dim
    assert all(r["pooled"] == 1 and r["crops"] >= 1 and r["model"].startswith("hybrid-v1:descriptor-v2+"
                                                                              "efficientnet-lite0@")
               and r["dim"] == dim for r in rows)
    vec = np.array(q(ingested_lake, "SELECT vector FROM embeddings WHERE kind = 'tracklet' LIMIT 1")[0]["vector"])
    assert vec.dtype == np.float64 and abs(np.linalg.norm(vec) - 1) < 1e-4


def test_tracklet_ids_are_deterministic_and_stage_runs_recorded(ingested_lake):
    ids = [r["tracklet_id"] for r in q(ingested_lake, "SELECT tracklet_id FROM tracklets ORDER BY 1")]
    assert len(ids) == len(set(ids))
    runs = q(ingested_lake, "SELECT stage, sum(frames_decoded) AS frames, count(*) AS n FROM stage_runs GROUP BY 1")
    stages = {r["stage"]: r for r in runs}
    assert {"decode", "shots", "detections", "tracklets", "crops", "embeddings"} <= set(stages)
    total_frames = q(ingested_lake, "SELECT sum(n_frames) AS n FROM episodes")[0]["n"]
    assert stages["decode"]["frames"] == total_frames  # each frame decoded exactly once
    # the shot run records the arithmetic it used: bf16 where the CPU has bf16 instructions
    shot_models = {r["model"] for r in q(ingested_lake, "SELECT DISTINCT model FROM stage_runs WHERE stage = 'shots'")}
    assert shot_models == {model_version("transnetv2") + ("+bf16" if native_bf16() else "")}


def test_reingesting_an_unchanged_series_does_no_work(ingested_lake, synth_series):
    before = {p: p.stat().st_mtime_ns for p in ingested_lake.rglob("*.parquet")}
    proc = run_cli("ingest", str(synth_series), "--lake", str(ingested_lake), "--series", "mini",
                   "--format", "json", check=True)
    statuses = [json.loads(line)["status"] for line in proc.stdout.splitlines()]
    assert statuses and set(statuses) == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in ingested_lake.rglob("*.parquet")} == before


def test_sql_command_formats(ingested_lake):
    proc = run_cli("sql", "--lake", str(ingested_lake), "--format", "csv",
                   "SELECT episode, count(*) AS n FROM tracklets GROUP BY 1 ORDER BY 1", check=True)
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == '"episode","n"' and len(lines) == 4
    proc = run_cli("sql", "--lake", str(ingested_lake), "COPY tracklets TO 'x.csv'")
    assert proc.returncode == 1 and "read-only" in proc.stderr and "Traceback" not in proc.stderr


def _audio_only(path):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            frame.time_base = Fraction(1, 16000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_bad_files_fail_alone(tmp_path, synth_series):
    src = tmp_path / "src"
    src.mkdir()
    good = sorted(synth_series.glob("*.mp4"))[0]
    shutil.copy(good, src / "[Fansub] Demo - 01 [1080p HEVC 10bit].mp4")  # a release name: episode 1, not 10
    data = good.read_bytes()
    (src / "ep_02.mp4").write_bytes(data[: len(data) // 2])  # truncated
    (src / "ep_03.mp4").write_bytes(b"")  # zero length
    (src / "ep_04.mkv").write_text("this is not a video\n")
    _audio_only(src / "ep_05.mp4")
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 3: len(corrupt) // 3 + 20000] = bytes(20000)
    (src / "ep_06.mp4").write_bytes(bytes(corrupt[:200]) + bytes(5000))  # header only, garbage after
    lake = tmp_path / "lake"
    proc = run_cli("ingest", str(src), "--lake", str(lake), "--series", "bad")
    assert proc.returncode == 1, proc.stderr
    rows = {r["episode"]: r for r in q(lake, "SELECT episode, episode_number, numbering, status, error FROM episodes")}
    good_one = "Fansub-Demo-01-1080p-HEVC-10bit"
    assert rows[good_one]["status"] == "ok"
    assert (rows[good_one]["episode_number"], rows[good_one]["numbering"]) == (1, "E01")
    assert rows["ep_04"]["episode_number"] == 4  # numbered from its name even when it fails
    for name in ("ep_02", "ep_03", "ep_04", "ep_05", "ep_06"):
        assert rows[name]["status"] == "failed" and rows[name]["error"], name
        line = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"anitrack: episode {name} failed")]
        assert len(line) == 1, proc.stderr
    assert "no video stream" in rows["ep_05"]["error"]
    assert "Traceback" not in proc.stderr
    # failed episodes leave no stage partitions behind; the good one is complete
    assert q(lake, "SELECT DISTINCT episode FROM tracklets") == [{"episode": good_one}]


@pytest.mark.parametrize("args, message", [
    (["--lake", "/definitely/not/here/lake"], "does not exist"),
    (["--lake", "{tmp}/lake", "--set", "detect.conf=high"], "expected float"),
    (["--lake", "{tmp}/lake", "--set", "cluster.nope=1"], "unknown parameter"),
    (["--lake", "{tmp}/lake", "--profile", "fast"], "profile"),
])
def test_usage_errors_exit_2(tmp_path, synth_series, args, message):
    proc = run_cli("ingest", str(synth_series), *[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_source_fails_cleanly(tmp_path):
    proc = run_cli("ingest", str(tmp_path / "nothing-here"), "--lake", str(tmp_path / "lake"))
    assert proc.returncode == 1 and "does not exist" in proc.stderr


def test_real_onepiece_cut_and_faces(tmp_path):
    clip = real_clip("onepiece_demo.mp4")
    lake = tmp_path / "lake"
    run_cli("ingest", str(clip), "--lake", str(lake), "--series", "onepiece", check=True)
    shots = q(lake, "SELECT start_frame FROM shots ORDER BY 1")
    assert [r["start_frame"] for r in shots] == [0, 100]
    # an episode alone: nothing to compare it with, so no opening is guessed, and the command says why
    assert q(lake, "SELECT n_frames, len(hashes) AS n FROM frame_hashes") == [{"n_frames": 181, "n": 181}]
    segments = run_cli("segments", "--lake", str(lake), "--series", "onepiece", check=True)
    assert "no other episode to compare it with" in segments.stderr
    assert q(lake, "SELECT count(*) AS n FROM segments")[0]["n"] == 0
    assert q(lake, "SELECT count(*) AS n FROM detections WHERE frame < 100")[0]["n"] >= 1  # Luffy in shot 1


def test_real_anya_is_found_and_named_from_one_reference_drawing(tmp_path):
    """One shot, one tracklet: too few to cluster, so the name comes from the gallery alone."""
    clip = real_clip("anidoc_sample1.mp4")
    lake = tmp_path / "lake"
    run_cli("ingest", str(clip), "--lake", str(lake), "--series", "anidoc", check=True)
    assert q(lake, "SELECT count(*) AS n FROM detections")[0]["n"] >= 1
    assert q(lake, "SELECT count(*) AS n FROM shots")[0]["n"] == 1
    gallery = tmp_path / "refs" / "Anya"
    gallery.mkdir(parents=True)
    shutil.copy(real_clip("anidoc_sample1_ref.png"), gallery / "ref.png")
    run_cli("identify", "--lake", str(lake), "--series", "anidoc", "--references", str(gallery.parent), check=True)
    assert q(lake, "SELECT character, named FROM characters") == [{"character": "Anya", "named": True}]
    assert q(lake, "SELECT bool_and(rescued) AS r FROM clusters") == [{"r": True}]
    off = run_cli("backfill", "--lake", str(lake), "--series", "anidoc", "--set", "name.rescue=false",
                  check=True)
    assert "0 frames decoded" in off.stderr
    assert q(lake, "SELECT count(*) AS n FROM characters")[0]["n"] == 0  # without the gallery rescue: noise


def test_fsspec_memory_source(tmp_path, synth_series, prefect_harness):
    """Any fsspec URL is a source: here an in-memory filesystem, ingested by the flow in-process."""
    import fsspec

    from anitrack.config import load_config
    from anitrack.flows.executor import execute
    from anitrack.flows.ingest import ingest_series

    fs = fsspec.filesystem("memory")
    good = sorted(synth_series.glob("*.mp4"))[0]
    fs.pipe("/series-x/ep_07.mp4", good.read_bytes())
    results = execute(ingest_series, str(tmp_path / "lake"), "x", "ingest", source="memory://series-x/",
                      config=load_config(environ={}), profile="offline")
    assert [r["status"] for r in results] == ["ok"]
    uri = q(tmp_path / "lake", "SELECT uri FROM episodes")[0]["uri"]
    assert uri.startswith("memory://") and uri.endswith("/series-x/ep_07.mp4")


def test_lake_import_validates_against_the_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "emb.parquet"
    pq.write_table(pa.table({"tracklet_id": ["t1", "t2"], "kind": ["tracklet"] * 2, "model": ["mine"] * 2,
                             "vector": [[0.1, 0.2], [0.3, 0.4]]}), good)
    lake = tmp_path / "lake"
    proc = run_cli("lake", "import", "embeddings", str(good), "--lake", str(lake), "--series", "s",
                   "--episode", "e1", check=True)
    assert "imported 2 rows" in proc.stdout
    assert q(lake, "SELECT count(*) AS n FROM embeddings WHERE model = 'mine'")[0]["n"] == 2
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"tracklet_id": ["t1"], "kind": ["tracklet"], "model": ["m"], "vector": ["oops"]}), bad)
    proc = run_cli("lake", "import", "embeddings", str(bad), "--lake", str(lake), "--series", "s", "--episode", "e2")
    assert proc.returncode == 1 and "'vector'" in proc.stderr
    assert q(lake, "SELECT count(DISTINCT episode) AS n FROM embeddings")[0]["n"] == 1
    for args, message in ((("embeddings", str(good)), "table embeddings is kept per episode: give --episode"),
                          (("nope", str(good), "--episode", "e3"), "unknown table 'nope'")):
        proc = run_cli("lake", "import", *args, "--lake", str(lake), "--series", "s")
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert q(lake, "SELECT count(DISTINCT episode) AS n FROM embeddings")[0]["n"] == 1


def test_bring_your_own_vectors_imports_with_derived_columns_and_identifies(tmp_path):
    """Only series, episode, tracklet_id, model and vector: kind, metric and dim follow; a lake holding
    nothing but imported vectors and references can be identified; a column that does not follow is named."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2)
    centres = rng.standard_normal((3, 16))
    lake = tmp_path / "lake"
    for ep in ("e1", "e2"):
        ids = [f"{ep}:{c}{i}" for c in "abc" for i in range(5)]
        vecs = [(centres["abc".index(t[3])] + 0.1 * rng.standard_normal(16)).tolist() for t in ids]
        path = tmp_path / f"{ep}.parquet"
        pq.write_table(pa.table({"series": ["byo"] * len(ids), "episode": [ep] * len(ids), "tracklet_id": ids,
                                 "model": ["my-model"] * len(ids), "vector": vecs}), path)
        run_cli("lake", "import", "embeddings", str(path), "--lake", str(lake), "--series", "byo", "--episode", ep,
                check=True)
    assert q(lake, "SELECT DISTINCT kind, metric, dim FROM embeddings") == [{"kind": "tracklet", "metric": "cosine",
                                                                              "dim": 16}]
    refs = tmp_path / "refs.parquet"
    pq.write_table(pa.table({"character": [n for n in ("Aki", "Bo") for _ in range(4)],
                             "image_id": [f"{n}/{i}" for n in ("Aki", "Bo") for i in range(4)],
                             "model": ["my-model"] * 8,
                             "vector": [(centres[k] + 0.1 * rng.standard_normal(16)).tolist()
                                        for k in (0, 1) for _ in range(4)]}), refs)
    run_cli("lake", "import", "references", str(refs), "--lake", str(lake), "--series", "byo", check=True)
    proc = run_cli("identify", "--lake", str(lake), "--series", "byo", check=True)
    named = {r["character"]: r["n"] for r in q(lake, "SELECT a.character, count(*) AS n FROM appearances a "
                                                     "JOIN characters c USING (series, cluster_id) WHERE c.named "
                                                     "GROUP BY 1")}
    assert named == {"Aki": 10, "Bo": 10}, proc.stderr
    no_model = tmp_path / "no_model.parquet"
    pq.write_table(pa.table({"tracklet_id": ["t1"], "vector": [[0.1, 0.2]]}), no_model)
    proc = run_cli("lake", "import", "embeddings", str(no_model), "--lake", str(lake), "--series", "byo",
                   "--episode", "e3")
    assert proc.returncode == 1 and "missing required column 'model'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_full_profile_without_models_fails_at_once(tmp_path, synth_series):
    env = {"ANITRACK_MODELS": str(tmp_path / "models"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    (tmp_path / "models").mkdir()
    proc = run_cli("ingest", str(synth_series), "--lake", str(tmp_path / "lake"), "--profile", "full", env=env,
                   timeout=60)
    assert proc.returncode == 1
    for part in ("yolov8m.pt", str(tmp_path / "models"), "anitrack models pull", "--profile offline"):
        assert part in proc.stderr
    assert not (tmp_path / "lake" / "tracklets").exists()
    # with a person detector available, a missing CCIP model is named just as clearly
    proc = run_cli("ingest", str(synth_series), "--lake", str(tmp_path / "lake"), "--profile", "full",
                   "--set", "detect.detector=animeface", env=env, timeout=60)
    assert proc.returncode == 1 and "CCIP" in proc.stderr and "anitrack models pull" in proc.stderr


def test_ingest_runs_when_prefects_usual_ports_are_all_taken(tmp_path):
    """Prefect's temporary server normally takes a random port in 8000-8999 (and two commands starting
    together could share one); anitrack asks the kernel for a free port instead."""
    import re
    import sys

    from anitrack.synth import synthesize_series

    folder = synthesize_series(tmp_path / "src", series="tiny", episodes=1, characters=2, seconds=2, seed=3)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys\nheld = []\nfor port in range(8000, 9000):\n    s = socket.socket()\n"
        "    try:\n        s.bind(('127.0.0.1', port)); s.listen(); held.append(s)\n    except OSError:\n"
        "        s.close()\nprint(len(held), flush=True)\nsys.stdin.read()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert int(holder.stdout.readline()) > 900
        proc = run_cli("ingest", str(folder), "--lake", str(tmp_path / "lake"), "--series", "tiny",
                       env={"PREFECT_API_URL": ""})
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    port = int(re.search(r"Starting temporary server on http://127\.0\.0\.1:(\d+)", proc.stderr).group(1))
    assert not 8000 <= port < 9000
    assert q(tmp_path / "lake", "SELECT status FROM episodes") == [{"status": "ok"}]
