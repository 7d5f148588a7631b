"""Kill the ingest process at three points of a run; a re-run must give the same lake as a clean run.

The points are chosen by watching the lake, not the clock, and each kill is checked to have
landed where it was meant to: while episodes are being decoded and nothing is committed, just
after the first stage partition is committed (its ``episodes`` row, written last, not yet), and
after an episode is complete but before the others are.
"""
import os
import signal
import subprocess
import time

import psutil
import pytest

from anitrack.lake import Lake, LakeError
from anitrack.stages import STAGE_TABLES
from anitrack.schemas.tables import TABLES
from tests.conftest import ANITRACK, run_cli, session_api_url

pytestmark = pytest.mark.slow  # runs the pipeline over video

VOLATILE = {"episodes": ["ingested_at"], "stage_runs": None}  # None: the whole table is a log of runs


def lake_content(path) -> dict:
    lake = Lake(str(path), create=False)
    out = {}
    for table in TABLES:
        if table in VOLATILE and VOLATILE[table] is None:
            continue
        data = lake.read(table)
        if table in VOLATILE:
            data = data.drop_columns(VOLATILE[table])
        out[table] = sorted(map(repr, data.to_pylist()))
    return out


def committed(path) -> tuple[int, int]:
    """(stage partitions, episodes) committed so far."""
    try:
        lake = Lake(str(path), create=False)
    except LakeError:
        return 0, 0
    return sum(len(lake.commits(t)) for t in STAGE_TABLES), len(lake.commits("episodes"))


def decoding(pid: int) -> bool:
    """An episode child process (``python -m anitrack.worker``) is running under the CLI."""
    try:
        return any("anitrack.worker" in " ".join(p.cmdline()) for p in psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return False


def kill_when(args, ready, lake) -> tuple[int, int]:
    """Start ingest, kill its whole process group as soon as ``ready(pid)`` holds; the lake's state then."""
    env = dict(os.environ, PREFECT_API_URL=session_api_url())  # the session's server: no server start per run
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)
    deadline = time.monotonic() + 600
    while not ready(proc.pid):
        assert proc.poll() is None, "ingest finished before the kill point"
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and every episode process
    proc.wait()
    return committed(lake)


def test_kills_mid_run_then_rerun_equals_clean_run(tmp_path, synth_series, ingested_lake):
    lake = tmp_path / "lake"
    n = len(Lake(str(ingested_lake), create=False).commits("episodes"))
    args = [*ANITRACK, "ingest", str(synth_series), "--lake", str(lake), "--series", "mini"]

    assert kill_when(args, decoding, lake) == (0, 0)  # decoding, nothing committed

    stages, episodes = kill_when(args, lambda pid: committed(lake)[0] > 0, lake)
    assert stages > 0 and episodes < n  # stage partitions committed, the episodes not all done

    before = committed(lake)[1]
    stages, episodes = kill_when(args, lambda pid: committed(lake)[1] > before, lake)
    assert before < episodes < n  # an episode complete, another not

    run_cli("ingest", str(synth_series), "--lake", str(lake), "--series", "mini", check=True)
    assert lake_content(lake) == lake_content(ingested_lake)
