"""Deployments on a real local Prefect server: ``anitrack serve``, runs started through Prefect's API client,
identify-series started by the server's trigger, and a new episode ingested alone."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anitrack.lake import Lake
from anitrack.stages import STAGE_TABLES
from anitrack.sql import connect, run_query
from tests.conftest import free_port, run_cli, start_prefect_server, stop_process_group

PREFECT = Path(sys.executable).with_name("prefect")
REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not PREFECT.exists(), reason="the prefect command line is not installed")]


_free_port = free_port
_stop = stop_process_group


def _wait(what: str, check, timeout: float, procs=(), interval: float = 1.0):
    """Poll ``check`` until it returns something truthy; fail early if a server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, log in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: {proc.args[1:4]} exited {proc.returncode}:\n"
                                     f"{log.read_text()[-3000:]}")
        value = check()
        if value:
            return value
        time.sleep(interval)
    tails = "\n".join(log.read_text()[-3000:] for _, log in procs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A server of this module's own (deployments, workers): the session's serves the other CLI calls."""
    home = tmp_path_factory.mktemp("prefect-home")
    proc, env = start_prefect_server(home)
    try:
        yield env, proc, home / "server.log"
    finally:
        _stop(proc)


def _lake_rows(lake: Path, query: str) -> list[dict]:
    return run_query(connect(Lake(str(lake), create=False)), query).to_pylist()


def _markers(lake: Path, episodes: tuple[str, ...]) -> dict[str, tuple[bytes, int]]:
    """The commit marker of every partition these episodes' own ingestion writes (its stages and its
    ``episodes`` row), with its bytes and mtime; segments and the run log are the series' to rewrite."""
    return {str(p.relative_to(lake)): (p.read_bytes(), p.stat().st_mtime_ns)
            for e in episodes for table in (*STAGE_TABLES, "episodes")
            for p in lake.glob(f"{table}/series=svc/episode={e}/_COMMIT.json")}


def test_serve_ingests_new_episodes_and_triggers_identify(prefect_server, tmp_path):
    from anitrack.synth import synthesize_series

    env, server, server_log = prefect_server
    api = env["PREFECT_API_URL"]
    rendered = synthesize_series(tmp_path / "rendered", series="svc", episodes=3, characters=3, seconds=8, seed=5)
    source = tmp_path / "incoming" / "svc"
    source.mkdir(parents=True)
    for name in ("episode_01.mp4", "episode_02.mp4"):
        shutil.copy(rendered / name, source / name)
    lake = tmp_path / "lake"
    serve_log = tmp_path / "serve.log"
    with serve_log.open("w") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "anitrack", "serve", "--source", str(source), "--lake", str(lake),
             "--references", str(rendered.parent / "references"), "--set", "shots.backend=content"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    procs = [(server, server_log), (serve, serve_log)]
    try:
        with _client(api) as client:
            _check_serve(client, procs, rendered, source, lake)
    finally:
        _stop(serve)


@contextlib.contextmanager
def _client(api: str):
    """Prefect's own API client (it retries while a busy SQLite server answers 503)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


def _check_serve(client, procs, rendered: Path, source: Path, lake: Path) -> None:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import ObjectNotFound

    def deployment(name):
        try:
            return client.read_deployment_by_name(f"{name}/{name}")
        except ObjectNotFound:
            return None

    ingest = _wait("the ingest-series deployment", lambda: deployment("ingest-series"), 120, procs)
    identify = _wait("the identify-series deployment", lambda: deployment("identify-series"), 30, procs)
    assert ingest.schedules[0].schedule.cron == "0 * * * *"
    assert ingest.parameters["sets"] == ["shots.backend=content"]
    assert identify.parameters["references"] == str(rendered.parent / "references")
    backfill = _wait("the backfill deployment", lambda: deployment("backfill"), 30, procs)  # registered last
    assert backfill.schedules == []  # registered, runs only when asked

    def run_and_wait() -> None:
        run = client.create_flow_run_from_deployment(ingest.id)

        def finished():
            state = client.read_flow_run(run.id).state
            return state if state.is_final() else None

        state = _wait(f"flow run {run.name}", finished, 300, procs, interval=2)
        assert state.is_completed(), state

    def identify_runs(n: int):
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[identify.id])))
        done = [r for r in runs if r.state and r.state.is_completed()]
        return done if len(done) >= n else None

    # First run: both episodes are ingested, then the server's trigger starts identify-series.
    run_and_wait()
    rows = _lake_rows(lake, "SELECT episode, status FROM episodes WHERE series = 'svc' ORDER BY 1")
    assert rows == [{"episode": "episode_01", "status": "ok"}, {"episode": "episode_02", "status": "ok"}]
    [first_identify] = _wait("identify-series after the first ingest", lambda: identify_runs(1), 120, procs)
    assert first_identify.parameters["lake"] == str(lake)
    assert first_identify.parameters["series"] == "svc"
    assert first_identify.parameters["sets"] == ["shots.backend=content"]
    assert _lake_rows(lake, "SELECT count(*) AS n FROM identity_runs_all WHERE series = 'svc'") == [{"n": 1}]
    before = _markers(lake, ("episode_01", "episode_02"))
    assert len(before) == 2 * (len(STAGE_TABLES) + 1)

    # A new episode arrives: the next run ingests only it, and identity is refreshed over all three.
    shutil.copy(rendered / "episode_03.mp4", source / "episode_03.mp4")
    run_and_wait()
    assert _markers(lake, ("episode_01", "episode_02")) == before
    rows = _lake_rows(lake, "SELECT episode, count(DISTINCT run_id) AS runs FROM stage_runs "
                            "WHERE series = 'svc' AND stage NOT IN ('identity', 'segments') GROUP BY 1 ORDER BY 1")
    assert [r["episode"] for r in rows] == ["episode_01", "episode_02", "episode_03"]
    assert all(r["runs"] == 1 for r in rows)
    runs = _lake_rows(lake, "SELECT DISTINCT run_id FROM stage_runs WHERE series = 'svc' "
                            "AND stage NOT IN ('identity', 'segments')")
    assert len(runs) == 2  # episode_03 came from the second ingest run, alone
    # ... and the series step compared every episode with the two others (the older ones are redone:
    # a third episode can turn a two-episode "preview" into an ending)
    compared = _lake_rows(lake, "SELECT episode, json_extract(arg_max(parameters, finished_at), '$.compared_with') "
                                "AS n FROM stage_runs WHERE series = 'svc' AND stage = 'segments' GROUP BY 1")
    assert sorted((r["episode"], int(r["n"])) for r in compared) == [("episode_01", 2), ("episode_02", 2),
                                                                    ("episode_03", 2)]
    _wait("identify-series after the second ingest", lambda: identify_runs(2), 120, procs)
    assert _lake_rows(lake, "SELECT count(*) AS n FROM identity_runs_all WHERE series = 'svc'") == [{"n": 2}]
    covered = _lake_rows(lake, "SELECT count(DISTINCT episode) AS n FROM clusters WHERE series = 'svc'")
    assert covered == [{"n": 3}]


def test_prefect_yaml_deploys_to_the_server(prefect_server, tmp_path):
    """`prefect deploy --all` accepts deployments/prefect.yaml: schedule, trigger and parameters as documented."""
    env, _, _ = prefect_server
    env = dict(env, PWD=str(REPO), ANITRACK_SOURCE=str(tmp_path / "src"), ANITRACK_SERIES="yaml",
               ANITRACK_LAKE=str(tmp_path / "lake"), ANITRACK_REFERENCES=str(tmp_path / "refs"))
    subprocess.run([str(PREFECT), "work-pool", "create", "anitrack-yaml", "--type", "process"], env=env,
                   check=True, capture_output=True, timeout=120)
    text = (REPO / "deployments" / "prefect.yaml").read_text().replace("name: anitrack\n    work_queue",
                                                                      "name: anitrack-yaml\n    work_queue")
    (tmp_path / "prefect.yaml").write_text(text)
    done = subprocess.run([str(PREFECT), "--no-prompt", "deploy", "--all", "--prefect-file",
                           str(tmp_path / "prefect.yaml")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    with _client(env["PREFECT_API_URL"]) as client:
        found = {d.name: d for d in client.read_deployments(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=["anitrack-yaml"])))}
        assert set(found) == {"ingest-series", "identify-series", "backfill"}
        assert found["ingest-series"].parameters["source"] == str(tmp_path / "src")
        assert found["ingest-series"].schedules[0].schedule.cron == "0 * * * *"
        assert found["backfill"].schedules == []
        assert found["identify-series"].pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
        trigger = [a for a in client.read_automations()
                   if any(getattr(x, "deployment_id", None) == found["identify-series"].id for x in a.actions)]
        assert len(trigger) == 1 and trigger[0].trigger.expect == {"prefect.flow-run.Completed"}
        assert trigger[0].actions[0].parameters["series"] == "{{ flow_run.parameters.series }}"


def test_serve_refuses_to_run_without_a_real_server(tmp_path):
    """No server, no silent ephemeral fallback: one line, a non-zero exit, and no lake created."""
    source = tmp_path / "incoming"
    source.mkdir()
    args = ("serve", "--source", str(source), "--lake", str(tmp_path / "lake"))
    home = {"PREFECT_HOME": str(tmp_path / "home")}
    unset = run_cli(*args, env={**home, "PREFECT_API_URL": ""}, timeout=120)
    assert unset.returncode == 2
    assert "prefect server start" in unset.stderr and len(unset.stderr.strip().splitlines()) == 1
    down = run_cli(*args, env={**home, "PREFECT_API_URL": f"http://127.0.0.1:{_free_port()}/api"}, timeout=120)
    assert down.returncode == 1
    assert "no Prefect server answers" in down.stderr and "Traceback" not in down.stderr
    assert not (tmp_path / "lake").exists()
