"""How every command runs its flows: the one place a series is locked, the one choice of task runner
(threads, one child process per episode; or Dask), and the one way episodes are mapped over it.

The command line calls ``execute``; the service's deployment runs call the flows themselves, which then
take the lock on their own. Both go through ``series_lock``.
"""
from __future__ import annotations

import contextlib
import os

from prefect.task_runners import ThreadPoolTaskRunner

from anitrack.worker import EpisodeSpec
from anitrack.lake import Lake, LakeError
from anitrack.tasks.ingest import ingest_episode_task

DASK_CONNECT_TIMEOUT_S = 10
RUNNERS = ("thread", "dask")


@contextlib.contextmanager
def series_lock(lake: str, series: str, command: str, held: str | None = None):
    """Hold ``series``' lock while a flow writes it; yields its token.

    ``held``: the token of a lock this command already took (``execute`` takes it before Prefect starts,
    so a busy series fails at once in one line); the flow checks it still holds that lock instead of
    taking it a second time.
    """
    lk = Lake(lake)
    if held is None:
        with lk.lock(series, command) as token:
            yield token
        return
    if not lk.holds(series, held):
        raise LakeError(f"series {series} is no longer locked by this {command} (its lock was removed)")
    yield held


def episode_workers(n_episodes: int, parallel: int = 0) -> tuple[int, int]:
    """(episodes at once, threads and detector processes per episode): the cores shared out evenly."""
    cores = os.cpu_count() or 1
    workers = max(1, min(n_episodes or 1, parallel or cores))
    return workers, max(1, cores // workers)


def map_episodes(specs: list[EpisodeSpec]) -> list[dict]:
    """Ingest (or recompute) each episode as a task of the flow's task runner; results in ``specs`` order."""
    dask = any(s.in_process for s in specs)
    task = ingest_episode_task.with_options(retries=1) if dask else ingest_episode_task
    return task.map(specs).result()


def task_runner(runner: str = "thread", parallel: int = 0, dask_address: str | None = None):
    """Threads (``parallel`` episodes at once, each a child process), or Dask: the scheduler at
    ``dask_address``, else a local cluster of ``parallel`` worker processes."""
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    if runner == "thread":
        return ThreadPoolTaskRunner(max_workers=parallel or os.cpu_count() or 1)
    from prefect_dask import DaskTaskRunner

    if dask_address:
        check_scheduler(dask_address)
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": parallel or os.cpu_count() or 1, "processes": True,
                                          "threads_per_worker": 1, "dashboard_address": None})


def execute(flow_fn, lake: str, series: str, command: str, held: str | None = None,
            dask_address: str | None = None, **params):
    """Run ``flow_fn`` for one command: the series lock first, then the flow on the task runner its
    ``runner`` and ``parallel`` parameters choose (threads when it has none)."""
    from anitrack.flows import claim_local_api_port

    claim_local_api_port()
    runner = params.get("runner", "thread")
    runs_on = task_runner(runner, params.get("parallel", 0), dask_address)
    with series_lock(lake, series, command, held) as token:
        with shared_api() if runner == "dask" else contextlib.nullcontext():
            return flow_fn.with_options(task_runner=runs_on)(lake=lake, series=series, lock=token, **params)


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


def check_scheduler(address: str, timeout_s: float = DASK_CONNECT_TIMEOUT_S) -> None:
    from distributed import Client

    try:
        Client(address, timeout=timeout_s, set_as_default=False).close()
    except Exception as exc:  # noqa: BLE001 - refused, timed out, or not a Dask address
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConnectionError(f"cannot reach Dask scheduler at {address}: {text}") from None
