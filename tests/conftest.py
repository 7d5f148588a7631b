"""Shared fixtures: real clips from ../shared, small synthetic series, a Prefect harness."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
ANITRACK = [sys.executable, "-m", "anitrack"]


# The longest modules first (minutes on 2 cores), so that no worker is left with one at the end while the
# others idle; the first two build different session lakes at once. Every other module follows, as collected.
LONGEST_FIRST = ("test_ingest", "test_identify", "test_realart", "test_hub_models", "test_s3", "test_crash",
                 "test_backfill", "test_segments", "test_service", "test_dask", "test_queries",
                 "test_shot_boundaries", "test_demo", "test_review", "test_synth")


def pytest_collection_modifyitems(items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the rest keep their order


def real_clip(name: str) -> Path:
    path = REAL / name
    if not path.exists():
        pytest.skip(f"real clip {path} is not available (expected ../shared beside the repo)")
    return path


def chromium() -> str:
    """The system Chromium the browser tests drive (skips where it is missing)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prefect_server(home: Path, timeout: float = 180) -> tuple[subprocess.Popen, dict]:
    """A real `prefect server start` (SQLite in ``home``) on a free loopback port: (process, its env)."""
    import httpx

    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
    log = home / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                                 "127.0.0.1", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                return proc, env
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_process_group(proc)
    raise AssertionError(f"prefect server did not answer in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a child and everything it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


_SESSION_SERVER: list = []  # (process, api url) once a CLI call needed it


def session_api_url() -> str:
    """One Prefect server for every CLI call of the test session (a temporary server per call costs
    seconds each); started on first use, stopped by the ``_session_prefect_server`` fixture."""
    if not _SESSION_SERVER:
        home = Path(tempfile.mkdtemp(prefix="anitrack-prefect-"))
        proc, env = start_prefect_server(home)
        _SESSION_SERVER.append((proc, env["PREFECT_API_URL"]))
    return _SESSION_SERVER[0][1]


@pytest.fixture(scope="session", autouse=True)
def _session_prefect_server():
    yield
    for proc, _ in _SESSION_SERVER:
        stop_process_group(proc)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 900,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``anitrack`` command line against the session's Prefect server: in this process (its
    imports are paid once per session, not per call), or in a child process when ``env`` is given
    (PREFECT_API_URL "" there means Prefect's temporary server)."""
    if env is None:
        proc = _run_cli_here(list(args), cwd)
    else:
        full_env = dict(os.environ, **env)
        full_env.setdefault("PREFECT_API_URL", session_api_url())
        proc = subprocess.run([*ANITRACK, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                              timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"anitrack {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def _run_cli_here(args: list[str], cwd: Path | None) -> subprocess.CompletedProcess:
    """``anitrack.cli.main`` as ``python -m anitrack`` would run it: its own argv (which also names the program
    in usage messages), working folder, exit code, stdout and stderr (Prefect's console log and Python's
    default warnings included). No timeout of its own: pytest-timeout bounds the test."""
    import contextlib
    import io
    import logging
    import warnings

    from prefect.logging.handlers import PrefectConsoleHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from anitrack.cli import main

    out, err = io.StringIO(), io.StringIO()
    consoles = [h for name in ("", *logging.root.manager.loggerDict) for h in logging.getLogger(name).handlers
                if isinstance(h, PrefectConsoleHandler)]
    files = [h.console.file for h in consoles]
    argv, here, api = sys.argv, os.getcwd(), session_api_url()
    saved_api = os.environ.get("PREFECT_API_URL")
    code = 0
    try:
        sys.argv = ["anitrack", *args]
        os.environ["PREFECT_API_URL"] = api
        if cwd is not None:
            os.chdir(cwd)
        for h in consoles:
            h.console.file = err
        with temporary_settings({PREFECT_API_URL: api}), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.resetwarnings()  # Python's defaults, not pytest's: what a user's terminal would show
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(here)
        for h, f in zip(consoles, files):
            h.console.file = f
        if saved_api is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved_api
    return subprocess.CompletedProcess(["anitrack", *args], code, out.getvalue(), err.getvalue())


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` once per test session, however many pytest-xdist workers ask for it: the first
    builds it under a file lock, the others wait for it and share it (shared fixtures are only read).
    ``build`` returns the path the fixture gives, inside ``folder``."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent  # the session's folder, above every worker's own
    done = root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            folder = root / name
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed half way left
            folder.mkdir()
            done.write_text(str(build(folder)))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def synth_series(tmp_path_factory) -> Path:
    """A small synthetic series (3 episodes of 16 s) with truth.json, rendered once per session."""
    from anitrack.synth import synthesize_series

    return built_once(tmp_path_factory, "synth", lambda out: synthesize_series(
        out, series="mini", episodes=3, characters=4, seconds=16, seed=11))


@pytest.fixture(scope="session")
def synth_truth(synth_series) -> dict:
    return json.loads((synth_series / "truth.json").read_text())


@pytest.fixture(scope="session")
def ingested_lake(synth_series, tmp_path_factory) -> Path:
    """The synthetic series ingested once, offline, through the real CLI."""
    def build(out: Path) -> Path:
        run_cli("ingest", str(synth_series), "--lake", str(out / "lake"), "--series", "mini", check=True)
        return out / "lake"

    return built_once(tmp_path_factory, "lakes", build)


IDENTITY_TABLES = ("clusters", "characters", "appearances", "quality", "identity_runs", "identity_spaces",
                   "labels", "unknown_registry", "references")


def copy_lake(src: Path, dst: Path, episodes: tuple[str, ...] | None = None) -> Path:
    """A copy of a lake without its identity tables (shared fixtures are never written to), and with only
    ``episodes``' partitions when given (as if the others had not arrived yet)."""
    def ignore(folder, names):
        return [n for n in names if (Path(folder) == src and n in IDENTITY_TABLES)
                or (episodes is not None and n.startswith("episode=") and n[len("episode="):] not in episodes)]

    shutil.copytree(src, dst, ignore=ignore)
    return dst


@pytest.fixture(scope="session")
def identified_lake(ingested_lake, synth_series, tmp_path_factory) -> Path:
    """A copy of the ingested series identified once with its gallery and truth; tests only read it."""
    def build(out: Path) -> Path:
        lake = copy_lake(ingested_lake, out / "lake")
        run_cli("identify", "--lake", str(lake), "--series", "mini", "--references",
                str(synth_series.parent / "references"), "--truth", str(synth_series / "truth.json"), check=True)
        return lake

    return built_once(tmp_path_factory, "identified", build)


@pytest.fixture(scope="session")
def cast_series(tmp_path_factory):
    """4 episodes, 6 characters including a look-alike pair, with a reference gallery."""
    from anitrack.synth import synthesize_series

    return built_once(tmp_path_factory, "idsynth", lambda out: synthesize_series(
        out, series="cast", episodes=4, characters=6, seconds=20, seed=5, lookalikes=1))


@pytest.fixture(scope="session")
def cast_identified(cast_series, tmp_path_factory):
    """The cast series run end to end with its gallery and truth: (lake, the run's process, its output
    kept beside the lake); tests only read it."""
    def build(out: Path) -> Path:
        proc = run_cli("run", str(cast_series), "--lake", str(out / "lake"), "--series", "cast",
                       "--references", str(cast_series.parent / "references"), "--truth",
                       str(cast_series / "truth.json"), check=True)
        (out / "stdout.txt").write_text(proc.stdout)
        (out / "stderr.txt").write_text(proc.stderr)
        return out / "lake"

    lake = built_once(tmp_path_factory, "idlake", build)
    stdout, stderr = ((lake.parent / name).read_text() for name in ("stdout.txt", "stderr.txt"))
    return lake, subprocess.CompletedProcess(["anitrack", "run"], 0, stdout, stderr)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


# -- hub models: a fake cache the model wrappers must read without the network ------------------------
@pytest.fixture(scope="session")
def imgutils_loaded():
    """Import imgutils once, outside the timed sections (its import alone takes seconds)."""
    import imgutils.detect
    import imgutils.metrics

    assert imgutils.detect and imgutils.metrics


@pytest.fixture(scope="session")
def silent_endpoint():
    """A server that accepts connections and never answers: any hub request made stalls until timeout."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"


@pytest.fixture
def hub(tmp_path, monkeypatch, imgutils_loaded, silent_endpoint):
    """An empty model cache (``ANITRACK_MODELS/hf/hub``) behind a silent endpoint, so a test is slow if
    anything skips the cache; huggingface_hub's own cache points elsewhere, as a site-wide one might."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("ANITRACK_MODELS", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "site-wide"))  # models.py must not read it
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # models.py must force offline itself
    monkeypatch.setattr(constants, "ENDPOINT", silent_endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        silent_endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    return cache
