"""``--runner dask``: a real LocalCluster of 2 worker processes gives the same lake as the default runner,
loads the models once per worker, survives a worker killed mid-run, and refuses a dead scheduler fast."""
from __future__ import annotations

import re
import socket
import subprocess
import time
from collections import Counter

import numpy as np
import psutil
import pytest

from anitrack.lake import Lake
from tests.conftest import ANITRACK, run_cli

pytestmark = pytest.mark.slow  # runs the pipeline over video

STAGES = ("shots", "detections", "tracklets", "crops")
WORKER_LINE = re.compile(r"episode (\S+) ran on worker (\S+) \(models (loaded|reused)\)")


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from anitrack.synth import synthesize_series

    return synthesize_series(tmp_path_factory.mktemp("dask"), series="mini", episodes=3, characters=3, seconds=8,
                             seed=5)


@pytest.fixture(scope="module")
def thread_lake(series, tmp_path_factory):
    lake = tmp_path_factory.mktemp("thread") / "lake"
    run_cli("ingest", str(series), "--lake", str(lake), check=True)
    return lake


def _workers(pid: int) -> list:
    """The Dask worker processes under ``pid`` (processes that exit or turn zombie meanwhile are skipped)."""
    found = []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return found
    for child in children:
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def dask_run(series, tmp_path_factory):
    """Ingest on a 2-worker LocalCluster and SIGKILL one worker process while episodes are running."""
    folder = tmp_path_factory.mktemp("dask")
    lake, log = folder / "lake", folder / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([*ANITRACK, "ingest", str(series), "--lake", str(lake), "--runner", "dask",
                                 "--dask-workers", "2"], stdout=subprocess.PIPE, stderr=err, text=True)
    killed, committed_at_kill = None, None
    deadline = time.monotonic() + 600
    while proc.poll() is None and killed is None and time.monotonic() < deadline:
        workers = _workers(proc.pid)
        if len(workers) == 2 and "Dask dashboard" in log.read_text():
            time.sleep(3)  # the episodes are being decoded now
            committed_at_kill = len(Lake(str(lake)).commits("episodes"))
            killed = workers[0].pid
            workers[0].kill()
        time.sleep(0.5)
    out, _ = proc.communicate(timeout=900)
    return {"lake": lake, "rc": proc.returncode, "stdout": out, "stderr": log.read_text(), "killed": killed,
            "committed_at_kill": committed_at_kill}


def _rows(lake, table):
    return sorted(Lake(str(lake), create=False).read(table).to_pylist(), key=repr)


def test_dask_lake_equals_single_process_run_despite_a_killed_worker(dask_run, thread_lake):
    assert dask_run["rc"] == 0, dask_run["stderr"][-3000:]
    assert dask_run["killed"] is not None and dask_run["committed_at_kill"] < 3  # killed mid-run
    episodes = Lake(str(dask_run["lake"]), create=False).read("episodes").to_pylist()
    assert sorted(r["episode"] for r in episodes if r["status"] == "ok") == ["episode_01", "episode_02",
                                                                           "episode_03"]
    for table in STAGES:
        dask_rows, thread_rows = _rows(dask_run["lake"], table), _rows(thread_lake, table)
        assert dask_rows, table
        assert dask_rows == thread_rows, table
    key = ("episode", "crop_id", "tracklet_id", "kind")

    def vectors(lake):
        return sorted(Lake(str(lake), create=False).read("embeddings").to_pylist(),
                      key=lambda r: [r[k] or "" for k in key])

    dask_vec, thread_vec = vectors(dask_run["lake"]), vectors(thread_lake)
    assert [[r[k] for k in key] for r in dask_vec] == [[r[k] for k in key] for r in thread_vec]
    assert np.allclose(np.array([r["vector"] for r in dask_vec]), np.array([r["vector"] for r in thread_vec]),
                       atol=1e-6)


def test_each_dask_worker_loads_the_models_once(dask_run):
    assert dask_run["rc"] == 0, dask_run["stderr"][-3000:]
    reports = WORKER_LINE.findall(dask_run["stderr"])
    assert sorted(r[0] for r in reports) == ["episode_01", "episode_02", "episode_03"]
    loads = Counter(worker for _, worker, what in reports if what == "loaded")
    assert all(n == 1 for n in loads.values()), loads
    assert any(what == "reused" for *_, what in reports), reports  # 3 episodes on at most 2 live workers
    assert f":{dask_run['killed']}" not in " ".join(w for _, w, _ in reports)  # the killed worker finished none


def test_unreachable_scheduler_fails_in_one_line(series, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_cli("ingest", str(series), "--lake", str(tmp_path / "lake"), "--runner", "dask",
                   "--dask-address", f"tcp://127.0.0.1:{port}", timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"anitrack: error: cannot reach Dask scheduler at tcp://127.0.0.1:{port}")
    assert not (tmp_path / "lake" / "episodes").exists()


def test_dask_flags_need_the_dask_runner(series, tmp_path):
    proc = run_cli("ingest", str(series), "--lake", str(tmp_path / "lake"), "--dask-workers", "2")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "anitrack: error: --dask-address and --dask-workers need --runner dask"
