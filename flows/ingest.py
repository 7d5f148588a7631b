"""The ingestion flow: list a series' episodes and ingest them in parallel, one child process each
(or, with ``runner="dask"``, one task per episode on Dask worker processes that keep their models)."""
from __future__ import annotations

import contextlib
import os

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from anitrack.config import load_config, resolve_profile
from anitrack.ingest import episode_name, new_run_id
from anitrack.job import EpisodeSpec
from anitrack.lake import Lake
from flows import artifact_key
from tasks.ingest import discover_episodes, ingest_episode_task


def parallel_episodes(n_episodes: int, requested: int = 0) -> int:
    return max(1, min(n_episodes, requested or os.cpu_count() or 1))


DASK_CONNECT_TIMEOUT_S = 10


def run_ingest(source: str, lake: str, series: str, config: dict, profile: str = "offline",
               parallel: int = 0, device: str = "cpu", runner: str = "thread", dask_address: str | None = None
               ) -> list[dict]:
    """Run the flow with as many episode threads as episodes may run at once (each is a child process),
    or on Dask: the scheduler at ``dask_address``, else a local cluster of ``parallel`` worker processes."""
    if runner == "dask":
        task_runner = dask_runner(dask_address, parallel)
    else:
        parallel = parallel or os.cpu_count() or 1
        task_runner = ThreadPoolTaskRunner(max_workers=parallel)
    with shared_api() if runner == "dask" else contextlib.nullcontext():
        return ingest_series.with_options(task_runner=task_runner)(source, lake, series, config, profile, parallel,
                                                                   device, runner=runner)


@contextlib.contextmanager
def shared_api():
    """Dask workers are other processes: without a configured Prefect API each would start its own temporary
    server. Start this process's temporary server now and hand its URL to the workers it spawns."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    server = SubprocessASGIServer()  # the instance Prefect's ephemeral mode would start; stopped at exit
    server.start()
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by the local cluster's worker processes
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


def dask_runner(address: str | None, n_workers: int = 0):
    """A Prefect Dask task runner; an address that does not answer fails within DASK_CONNECT_TIMEOUT_S."""
    from prefect_dask import DaskTaskRunner

    if address:
        check_scheduler(address)
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": n_workers or os.cpu_count() or 1, "processes": True,
                                          "threads_per_worker": 1, "dashboard_address": None})


def check_scheduler(address: str, timeout_s: float = DASK_CONNECT_TIMEOUT_S) -> None:
    from distributed import Client

    try:
        Client(address, timeout=timeout_s, set_as_default=False).close()
    except Exception as exc:  # noqa: BLE001 - refused, timed out, or not a Dask address
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConnectionError(f"cannot reach Dask scheduler at {address}: {text}") from None


@flow(name="ingest-series", log_prints=True,  # deployment runs: one episode per core, not all at once
      task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1))
def ingest_series(source: str, lake: str, series: str, config: dict | None = None, profile: str = "offline",
                  parallel: int = 0, device: str = "cpu", sets: list[str] | None = None,
                  runner: str = "thread") -> list[dict]:
    """Ingest every episode of ``source`` into ``lake``; unchanged episodes are skipped.

    Deployments pass ``sets`` (``stage.key=value`` strings, plain JSON) instead of a full ``config``.
    """
    logger = get_run_logger()
    config = resolve_profile(config if config is not None else load_config(sets), profile)
    Lake(lake).clean_staging()
    uris = discover_episodes(source)
    workers = parallel_episodes(len(uris), parallel)
    cores = os.cpu_count() or 1
    per_episode = max(1, cores // workers)
    dask = runner == "dask"
    if dask:  # one episode per worker thread; daemonic worker processes cannot start a detector pool
        per_episode = config["detect"]["workers"] = 1
    if config["detect"]["workers"] == 0:
        config["detect"]["workers"] = per_episode
    run_id = new_run_id()
    specs = [EpisodeSpec(uri=u, series=series, episode=episode_name(u), lake=lake, config=config,
                         profile=profile, device=device, threads=per_episode, run_id=run_id, in_process=dask)
             for u in uris]
    names = [s.episode for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("two source files map to the same episode name: " + ", ".join(sorted(names)))
    logger.info("ingesting %d episodes of %s, %d at a time", len(specs), series, workers)
    with Lake(lake).lock(series, "ingest"):  # re-entered when the CLI already holds it
        task = ingest_episode_task.with_options(retries=1) if dask else ingest_episode_task
        results = task.map(specs).result()
    create_table_artifact(
        key=artifact_key("ingest", series),
        table=[{k: r.get(k) for k in ("episode", "status", "frames", "shots", "tracklets", "crops", "seconds",
                                      "error")} for r in results],
        description=f"ingestion of {series} into {lake} (run {run_id})")
    return results
