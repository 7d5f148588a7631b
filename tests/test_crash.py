"""Kill the ingest process at random points; a re-run must give the same lake as a clean run."""
import os
import random
import signal
import subprocess
import time

from anitrack.lake import Lake
from schemas.tables import TABLES
from tests.conftest import ANITRACK, run_cli

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


def test_kill_at_random_points_then_rerun_equals_clean_run(tmp_path, synth_series, ingested_lake):
    lake = tmp_path / "lake"
    rng = random.Random(2026)
    args = [*ANITRACK, "ingest", str(synth_series), "--lake", str(lake), "--series", "mini"]
    for _ in range(3):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(4.0, 25.0))
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, Prefect's server and every episode process
        proc.wait()
    run_cli("ingest", str(synth_series), "--lake", str(lake), "--series", "mini", check=True)
    assert lake_content(lake) == lake_content(ingested_lake)
