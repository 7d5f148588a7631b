"""The README's main job, as a new user runs it (smaller, to keep CI short)."""
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # runs the pipeline over video


def test_demo_runs_end_to_end(tmp_path):
    proc = run_cli("demo", "--out", str(tmp_path / "demo"), "--episodes", "2", "--seconds", "12", check=True)
    assert "episode_01" in proc.stdout and "episode_02" in proc.stdout
    assert "bcubed_f1" in proc.stdout and "seconds" in proc.stdout
    assert (tmp_path / "demo" / "lake" / "screen_time").exists() is False  # a view, not a table
    assert (tmp_path / "demo" / "lake" / "appearances").is_dir()
    # it ends with the report's path, and the page is there with its plots
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("report: ")
    page = last[len("report: "):]
    assert page.endswith("index.html")
    from pathlib import Path

    html = Path(page).read_text()
    assert "<img" in html and "data:image/png;base64," in html
