"""Shared fixtures: real clips from ../shared, small synthetic series, a Prefect harness."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
ANITRACK = [sys.executable, "-m", "anitrack"]


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


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 900,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``anitrack`` command line in a child process."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([*ANITRACK, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"anitrack {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def synth_series(tmp_path_factory) -> Path:
    """A small synthetic series (3 episodes of 16 s) with truth.json, rendered once per session."""
    from anitrack.synth import synthesize_series

    out = tmp_path_factory.mktemp("synth")
    return synthesize_series(out, series="mini", episodes=3, characters=4, seconds=16, seed=11)


@pytest.fixture(scope="session")
def synth_truth(synth_series) -> dict:
    return json.loads((synth_series / "truth.json").read_text())


@pytest.fixture(scope="session")
def ingested_lake(synth_series, tmp_path_factory) -> Path:
    """The synthetic series ingested once, offline, through the real CLI (Prefect ephemeral mode)."""
    lake = tmp_path_factory.mktemp("lakes") / "lake"
    run_cli("ingest", str(synth_series), "--lake", str(lake), "--series", "mini", check=True)
    return lake


IDENTITY_TABLES = ("clusters", "characters", "appearances", "quality", "identity_runs", "identity_spaces",
                   "labels", "unknown_registry", "references")


def copy_lake(src: Path, dst: Path) -> Path:
    """A copy of a lake without its identity tables (shared fixtures are never written to)."""
    shutil.copytree(src, dst, ignore=lambda folder, names: [n for n in names if Path(folder) == src
                                                            and n in IDENTITY_TABLES])
    return dst


@pytest.fixture(scope="session")
def identified_lake(ingested_lake, synth_series, tmp_path_factory) -> Path:
    """A copy of the ingested series identified once with its gallery and truth; tests only read it."""
    lake = copy_lake(ingested_lake, tmp_path_factory.mktemp("identified") / "lake")
    run_cli("identify", "--lake", str(lake), "--series", "mini", "--references",
            str(synth_series.parent / "references"), "--truth", str(synth_series / "truth.json"), check=True)
    return lake


@pytest.fixture(scope="session")
def cast_series(tmp_path_factory):
    """4 episodes, 6 characters including a look-alike pair, with a reference gallery."""
    from anitrack.synth import synthesize_series

    out = tmp_path_factory.mktemp("idsynth")
    return synthesize_series(out, series="cast", episodes=4, characters=6, seconds=20, seed=5, lookalikes=1)


@pytest.fixture(scope="session")
def cast_identified(cast_series, tmp_path_factory):
    """The cast series run end to end with its gallery and truth: (lake, the run's process); tests only read it."""
    lake = tmp_path_factory.mktemp("idlake") / "lake"
    proc = run_cli("run", str(cast_series), "--lake", str(lake), "--series", "cast",
                   "--references", str(cast_series.parent / "references"), "--truth",
                   str(cast_series / "truth.json"), check=True)
    return lake, proc


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
