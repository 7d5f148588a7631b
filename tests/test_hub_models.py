"""The hub models as a connected user gets them: `anitrack models pull`, then ingest and identify.

A local fake hub serves the real repository and file names (CCIP, the imgutils face detector)
over huggingface_hub's own download protocol, with tiny ONNX stand-ins, and YOLO weights from
a release mirror; the CLI runs in fresh processes with a fresh HOME and none of HF_HOME,
HF_HUB_CACHE, HF_HUB_OFFLINE or ANITRACK_MODELS set.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest

from anitrack import imgutils_adapter, models
from anitrack.sampling import INTERPOLATED
from anitrack.synth import synthesize_series
from tests.conftest import run_cli
from tests.fake_hub import serving, yolo_weights


@pytest.fixture(scope="module")
def tiny_series(tmp_path_factory) -> Path:
    """One 8-second episode of three characters with its gallery (a full-profile ingest is slow on CPU)."""
    return synthesize_series(tmp_path_factory.mktemp("hubseries"), series="tiny", episodes=1, characters=3,
                             seconds=8, seed=5)


@pytest.fixture(scope="module")
def yolo_file(tmp_path_factory) -> Path:
    return yolo_weights(tmp_path_factory.mktemp("yolo") / "stand-in.pt")


def user_env(home: Path, hub_url: str, **extra: str) -> dict:
    """A user's shell: their own HOME, no model-location variables; the hub (and YOLO mirror) at ``hub_url``."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "ANITRACK_", "HUGGINGFACE_"))}
    env.update(HOME=str(home), HF_ENDPOINT=hub_url, ANITRACK_YOLO_RELEASES=f"{hub_url}/yolo", **extra)
    return env


def lake_models(lake: Path) -> dict[str, set[str]]:
    """The models that made each table's rows (boxes interpolated between keyframes come from none)."""
    con = duckdb.connect()
    out = {}
    for table, column in (("embeddings", "model"), ("detections", "detector")):
        rows = con.execute(f"SELECT DISTINCT {column} FROM read_parquet('{lake}/{table}/**/*.parquet', "
                           f"hive_partitioning = true) WHERE {column} != '{INTERPOLATED}'").fetchall()
        out[table] = {r[0] for r in rows}
    return out


def stage_models(lake: Path) -> dict[str, str]:
    con = duckdb.connect()
    rows = con.execute(f"SELECT stage, model FROM read_parquet('{lake}/stage_runs/**/*.parquet', "
                       "hive_partitioning = true)").fetchall()
    return dict(rows)


@pytest.mark.slow
def test_pull_with_no_options_then_full_profile_ingest_and_identify(tmp_path, tiny_series, yolo_file):
    ccip, face = imgutils_adapter.default_ccip_model(), models.DEFAULT_FACE_MODEL
    home = tmp_path / "home"
    with serving(ccip=(ccip,), faces=(face,), yolo={"yolov8m.pt": yolo_file}) as hub:
        env = user_env(home, hub.url)
        pulled = run_cli("models", "pull", env=env, cwd=tmp_path, check=True, timeout=120)
        asked = len(hub.requests)
        cache = home / ".cache" / "anitrack" / "models"
        assert str(cache / "yolov8m.pt") in pulled.stdout
        assert f"models--deepghs--ccip_onnx/snapshots/{hub.commit(models.CCIP_REPO)}/{ccip}" in pulled.stdout
        lake = tmp_path / "lake"
        run_cli("ingest", str(tiny_series), "--lake", str(lake), "--profile", "full", "--set", "shots.backend=content",
                "--set", "detect.stride=6", env=env, cwd=tmp_path, check=True)  # CPU time: not the subject
        identified = run_cli("identify", "--lake", str(lake), "--series", "tiny", "--profile", "full",
                             "--references", str(tiny_series.parent / "references"), "--format", "json",
                             env=env, cwd=tmp_path, check=True)
        after_pull = hub.requests[asked:]
    # every vector names the model and the hub commit its files came from; YOLO by its weights' hash
    ccip_id = f"{ccip}@{hub.commit(models.CCIP_REPO)[:12]}"
    assert lake_models(lake)["embeddings"] == {ccip_id}
    assert lake_models(lake)["detections"] == {"yolo"}
    ran = stage_models(lake)
    assert ran["detections"] == models.yolo_model_id(cache / "yolov8m.pt")
    assert ran["crops"] == f"{models.FACE_REPO}/{face}@{hub.commit(models.FACE_REPO)[:12]}"
    rows = [json.loads(line) for line in identified.stdout.splitlines() if line.strip()]
    assert any(r.get("character") for r in rows)  # characters were formed from the CCIP vectors
    run = duckdb.connect().execute(f"SELECT model FROM read_parquet('{lake}/identity_runs/**/*.parquet', "
                                   "hive_partitioning = true)").fetchall()
    assert run == [(ccip_id,)]
    assert asked > 0 and after_pull == []  # only the pull talked to the hub: ingest and identify read the cache


@pytest.mark.slow
def test_hub_cpu_with_another_ccip_model_from_the_config_runs_air_gapped(tmp_path, tiny_series):
    """The config names another CCIP model: the pull fetches that one; the pulled folder then runs with
    ANITRACK_MODELS alone and the hub gone (the air-gapped recipe), faces first, CCIP on the best crops."""
    from anitrack.config import load_config, resolve_profile

    other = "ccip-other-model"
    face = resolve_profile(load_config(environ={}), "hub-cpu")["detect"]["face_model"]  # its own, lighter one
    (tmp_path / "anitrack.toml").write_text(f'[embed]\nccip_model = "{other}"\n')
    shared = tmp_path / "shared-models"
    with serving(ccip=(other,), faces=(face,)) as hub:
        run_cli("models", "pull", "--profile", "hub-cpu", "--to", str(shared),
                env=user_env(tmp_path / "online-home", hub.url), cwd=tmp_path, check=True, timeout=120)
        commit = hub.commit(models.CCIP_REPO)
    assert not list(shared.glob("*.pt"))  # hub-cpu runs no person detector: no YOLO pulled
    env = user_env(tmp_path / "worker-home", "http://127.0.0.1:9", ANITRACK_MODELS=str(shared))
    lake = tmp_path / "lake"
    run_cli("ingest", str(tiny_series), "--lake", str(lake), "--profile", "hub-cpu", env=env, cwd=tmp_path,
            check=True)
    run_cli("identify", "--lake", str(lake), "--series", "tiny", "--profile", "hub-cpu",
            "--references", str(tiny_series.parent / "references"), env=env, cwd=tmp_path, check=True)
    assert lake_models(lake) == {"embeddings": {f"{other}@{commit[:12]}"}, "detections": {"imgutils"}}
    con = duckdb.connect()
    per = con.execute(f"SELECT max(n), count(*) FROM (SELECT tracklet_id, count(*) AS n FROM "
                      f"read_parquet('{lake}/crops/**/*.parquet', hive_partitioning = true) GROUP BY 1)").fetchone()
    assert per[1] > 0 and per[0] <= 4  # the hub-cpu profile embeds each tracklet's best four crops at most
    # without the config's model, the same machine says what is missing and how to get it
    (tmp_path / "anitrack.toml").unlink()
    proc = run_cli("ingest", str(tiny_series), "--lake", str(tmp_path / "lake2"), "--profile", "hub-cpu",
                   env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1 and imgutils_adapter.default_ccip_model() in proc.stderr
    assert str(shared / "hf" / "hub") in proc.stderr and "anitrack models pull" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_pull_cut_off_half_way_leaves_nothing_a_run_would_take(tmp_path, yolo_file, imgutils_loaded,
                                                                   monkeypatch):
    ccip = imgutils_adapter.default_ccip_model()
    with serving(ccip=(ccip,), faces=(models.DEFAULT_FACE_MODEL,), yolo={"yolov8m.pt": yolo_file}) as hub:
        hub.fail_after["/yolo/yolov8m.pt"] = 1000
        env = user_env(tmp_path / "home", hub.url)
        proc = run_cli("models", "pull", env=env, cwd=tmp_path, timeout=120)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
        cache = tmp_path / "home" / ".cache" / "anitrack" / "models"
        assert not (cache / "yolov8m.pt").exists() and not list(cache.glob("*.part")) \
            and not list(cache.glob(".*.part"))
        hub.fail_after.clear()
        hub.fail_after[f"/{models.CCIP_REPO}/resolve/main/{ccip}/model_feat.onnx"] = 1000
        proc = run_cli("models", "pull", env=env, cwd=tmp_path, timeout=120)
        assert proc.returncode == 1
        hub.fail_after.clear()
        # the cut file is reported missing, not taken half-written
        monkeypatch.setenv("ANITRACK_MODELS", str(cache))
        with pytest.raises(models.ModelMissingError, match="model_feat.onnx"):
            models.ccip_model_id(ccip)
        run_cli("models", "pull", env=env, cwd=tmp_path, check=True, timeout=120)  # and a retry completes it
    assert (cache / "yolov8m.pt").read_bytes() == yolo_file.read_bytes()
    assert models.ccip_model_id(ccip).startswith(ccip + "@")
