"""Backfill, runs, the series lock and content-hash episode identity, through the real CLI on a small series.

The session's identified series (3 episodes of 16 s) moves to this module's own copy of its sources; each
test changes its own copy of that lake (and of the sources, where it changes them) and proves from
``stage_runs`` and from file hashes what was recomputed, what was decoded and what stayed byte for byte.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from anitrack.lake import Lake
from anitrack.sql import connect, run_query
from tests.conftest import ANITRACK, run_cli

pytestmark = pytest.mark.slow  # runs the pipeline over video

STAGES = ("episodes", "shots", "detections", "tracklets", "crops", "embeddings")


@pytest.fixture(scope="module")
def series(synth_series, identified_lake, tmp_path_factory):
    """(source folder, references, lake): the session's identified series, its sources copied to a folder
    we may rename and change; ingesting that folder moves the lake's episodes there (found by content)."""
    out = tmp_path_factory.mktemp("backfill")
    folder = Path(shutil.copytree(synth_series, out / "mini"))
    lake = Path(shutil.copytree(identified_lake, out / "lake"))
    moved = run_cli("ingest", str(folder), "--lake", str(lake), "--series", "mini", "--format", "json", check=True)
    assert all(json.loads(line)["status"] == "skipped" for line in moved.stdout.splitlines())
    assert all(r["uri"].startswith(str(folder)) for r in q(lake, "SELECT uri FROM episodes"))
    return folder, synth_series.parent / "references", lake


@pytest.fixture
def lake(series, tmp_path) -> Path:
    """This test's own copy of the series' lake."""
    return Path(shutil.copytree(series[2], tmp_path / "lake"))


def q(lake: Path, sql: str, run: str | None = None) -> list[dict]:
    return run_query(connect(Lake(str(lake), create=False), run=run), sql).to_pylist()


def stage_files(lake: Path) -> dict[str, str]:
    """Every file (Parquet parts and _COMMIT.json) of the per-episode stage tables, with its hash."""
    return {str(p.relative_to(lake)): hashlib.sha256(p.read_bytes()).hexdigest()
            for table in STAGES for p in sorted((lake / table).rglob("*")) if p.is_file()}


def backfill(lake: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("backfill", "--lake", str(lake), "--series", "mini", *args)


def last_run(lake: Path) -> str:
    return q(lake, "SELECT run_id FROM identity_runs WHERE current")[0]["run_id"]


def run_rows(lake: Path, run_id: str) -> list[dict]:
    return q(lake, f"SELECT episode, stage, reused, frames_decoded FROM stage_runs WHERE run_id = '{run_id}' "
                   "ORDER BY episode, stage")


def test_renamed_file_is_not_reingested_and_a_changed_file_is(series, lake, tmp_path):
    from anitrack.synth import synthesize_series

    folder = Path(shutil.copytree(series[0], tmp_path / "source"))
    (folder / "episode_01.mp4").rename(folder / "first.mp4")
    other = synthesize_series(tmp_path, series="other", episodes=1, characters=2, seconds=6, seed=5)
    shutil.copy(next(other.glob("*.mp4")), folder / "episode_03.mp4")
    before = stage_files(lake)
    proc = run_cli("ingest", str(folder), "--lake", str(lake), "--series", "mini", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    results = {r["episode"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert results["first"]["status"] == "skipped" and results["first"]["note"] == "renamed from episode_01"
    assert results["episode_03"]["status"] == "ok" and results["episode_03"]["frames"] == 144
    assert results["episode_02"]["status"] == "skipped"
    assert [r["episode"] for r in q(lake, "SELECT episode FROM episodes ORDER BY 1")] == \
        ["episode_01", "episode_02", "episode_03"]  # no duplicate partition for the renamed file
    assert q(lake, "SELECT uri FROM episodes WHERE episode = 'episode_01'")[0]["uri"].endswith("first.mp4")
    after = stage_files(lake)
    stages_of_two = [k for k in set(before) | set(after) if "episode_02" in k and not k.startswith("episodes/")]
    assert all(after.get(k) == before.get(k) for k in stages_of_two)  # untouched; its row follows the file
    assert q(lake, "SELECT uri FROM episodes WHERE episode = 'episode_02'")[0]["uri"] == str(folder / "episode_02.mp4")
    assert {k for k in after if "episode_03" in k and after[k] != before.get(k)}


def test_cluster_threshold_backfill_decodes_nothing_and_reuses_every_partition(lake):
    before_files = stage_files(lake)
    old_run = last_run(lake)
    old_screen = q(lake, "SELECT episode, character, seconds FROM screen_time ORDER BY 1, 2")
    dry = backfill(lake, "--set", "cluster.merge_threshold=0.5", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "identity (full)" in dry.stdout and last_run(lake) == old_run  # a dry run changes nothing

    done = backfill(lake, "--set", "cluster.merge_threshold=0.5")
    assert done.returncode == 0, done.stderr
    assert "identity (full)" in done.stdout and "0 frames decoded" in done.stderr
    new_run = last_run(lake)
    assert new_run != old_run
    rows = run_rows(lake, new_run)  # what this backfill did, from stage_runs
    assert [(r["stage"], r["frames_decoded"], r["reused"]) for r in rows] == [("identity", 0, False)]
    assert stage_files(lake) == before_files  # unchanged partitions: same files, same _COMMIT.json

    # both runs stay: listed with their parameters, one current, the old one still queryable
    listed = [json.loads(line) for line in run_cli("runs", "--lake", str(lake), "--series", "mini", "--format",
                                                   "json", check=True).stdout.splitlines()]
    assert [r["run_id"] for r in listed] == [old_run, new_run]
    assert [r["current"] for r in listed] == ["", "*"]
    assert listed[0]["parameters"] == "defaults" and listed[1]["parameters"] == "cluster.merge_threshold=0.5"
    assert q(lake, "SELECT episode, character, seconds FROM screen_time ORDER BY 1, 2", run=old_run) == old_screen
    old_cli = run_cli("sql", "--lake", str(lake), "--run", old_run, "--format", "json",
                      "SELECT DISTINCT run_id FROM appearances", check=True)
    assert json.loads(old_cli.stdout) == {"run_id": old_run}
    assert q(lake, "SELECT count(*) AS n FROM identity_runs WHERE current")[0]["n"] == 1

    again = backfill(lake, "--set", "cluster.merge_threshold=0.5")  # already there: nothing to do
    assert again.returncode == 0 and "nothing to do" in again.stderr and last_run(lake) == new_run


def test_a_batch_size_backfill_has_nothing_to_do(lake):
    """``embed.batch`` says how many crops go through the network at once, not what comes out."""
    before, run = stage_files(lake), last_run(lake)
    done = backfill(lake, "--set", "embed.batch=8")
    assert done.returncode == 0 and "nothing to do" in done.stderr, done.stderr
    assert stage_files(lake) == before and last_run(lake) == run


def test_embedding_change_reembeds_stored_crops_without_decoding(lake):
    before = stage_files(lake)
    crop_ids = q(lake, "SELECT crop_id FROM embeddings WHERE kind = 'crop' ORDER BY crop_id")
    done = backfill(lake, "--set", "embed.model=descriptor")
    assert done.returncode == 0, done.stderr
    rows = run_rows(lake, last_run(lake))
    assert sum(r["frames_decoded"] for r in rows) == 0
    recomputed = {(r["episode"], r["stage"]) for r in rows if not r["reused"]}
    episodes = {"episode_01", "episode_02", "episode_03"}
    assert recomputed == {(e, "embeddings") for e in episodes} | {("all", "identity")}
    after = stage_files(lake)
    changed = {k.split("/")[0] for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed == {"embeddings", "episodes"}  # crops, tracklets, detections, shots: byte for byte
    assert q(lake, "SELECT crop_id FROM embeddings WHERE kind = 'crop' ORDER BY crop_id") == crop_ids
    assert q(lake, "SELECT DISTINCT model FROM embeddings") == [{"model": "descriptor-v2"}]


def test_detection_backfill_of_one_episode_recomputes_it_and_keeps_the_others(lake):
    before = stage_files(lake)
    done = backfill(lake, "--set", "detect.conf=0.9", "--episodes", "2")
    assert done.returncode == 0, done.stderr
    rows = run_rows(lake, last_run(lake))
    by_stage = {r["stage"]: r for r in rows if r["episode"] == "episode_02"}
    assert {r["episode"] for r in rows} == {"episode_02", "all"}
    frames = q(lake, "SELECT n_frames FROM episodes WHERE episode = 'episode_02'")[0]["n_frames"]
    assert by_stage["decode"]["frames_decoded"] == frames  # the one episode, decoded once
    assert by_stage["shots"]["reused"] and not by_stage["detections"]["reused"]
    assert not any(by_stage[s]["reused"] for s in ("tracklets", "crops", "embeddings"))
    after = stage_files(lake)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed and all("episode=episode_02" in k for k in changed)
    assert not any(k.startswith("shots/") for k in changed)
    assert q(lake, "SELECT min(score) AS s FROM detections WHERE episode = 'episode_02'")[0]["s"] >= 0.9


def test_bad_input_is_one_line_and_leaves_the_lake_alone(series, lake):
    folder = series[0]
    before = stage_files(lake)
    current = last_run(lake)
    cases = [(("--set", "cluster.merge_threshold=high"), 2, "cluster.merge_threshold: expected float"),
             (("--set", "cluster.nope=1"), 2, "unknown parameter 'cluster.nope'"),
             (("--set", "detect.conf=0.3", "--episodes", "40-50"), 2, "episodes: episode_01, episode_02"),
             (("--set", "detect.conf=0.3", "--episodes", "episode_9"), 2, "no episode 'episode_9'")]
    for args, code, text in cases:
        proc = backfill(lake, *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert text in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    other = run_cli("backfill", "--lake", str(lake), "--series", "nope", "--set", "detect.conf=0.3")
    assert other.returncode == 2 and "series 'nope' is not in the lake" in other.stderr

    # the source of an episode is gone: that episode fails alone and keeps its partitions
    source = folder / "episode_03.mp4"
    aside = source.with_suffix(".moved")
    source.rename(aside)
    try:
        proc = backfill(lake, "--set", "detect.conf=0.3", "--episodes", "3")
    finally:
        aside.rename(source)
    assert proc.returncode == 1
    assert "episode episode_03 failed (its partitions are unchanged): cannot read" in proc.stderr
    assert stage_files(lake) == before
    assert q(lake, "SELECT status FROM episodes WHERE episode = 'episode_03'") == [{"status": "ok"}]
    assert last_run(lake) == current  # nothing was recomputed, so no new identity run


def test_two_backfills_at_once_one_refuses_and_the_lake_stays_consistent(lake):
    procs = [subprocess.Popen([*ANITRACK, "backfill", "--lake", str(lake), "--series", "mini", "--set",
                               f"cluster.merge_threshold={t}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for t in ("0.7", "0.75")]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, _, err in results if code == 1)
    assert refused.startswith("anitrack: series mini is busy: backfill by pid ")
    assert f"(remove {lake}/_locks/mini.json if that process is gone)" in refused
    assert not (lake / "_locks" / "mini.json").exists()  # released
    assert q(lake, "SELECT count(*) AS n FROM identity_runs WHERE current")[0]["n"] == 1
    lk = Lake(str(lake), create=False)
    for table in ("clusters", "characters", "appearances", "identity_runs", *STAGES):
        for commit in lk.commits(table):
            for name in commit["files"]:
                assert Path(commit["dir"], name).is_file(), (table, commit)
    winner = q(lake, "SELECT parameters FROM identity_runs WHERE current")[0]["parameters"]
    assert json.loads(winner)["cluster"]["merge_threshold"] in (0.7, 0.75)


def test_backfill_flow_keeps_naming_parameters_for_the_next_backfill(lake, prefect_harness):
    """The Prefect flow (the deployments' entrypoint) runs the same backfill and records what it named with."""
    from anitrack.backfill import plan, runs_table
    from anitrack.flows.backfill import backfill_series

    dry = backfill_series(str(lake), "mini", ["name.threshold=0.7"], dry_run=True)
    assert dry["run_id"] is None and dry["plan"][-1]["stage"] == "identity (incremental)"
    done = backfill_series(str(lake), "mini", ["name.threshold=0.7"])
    assert done["frames_decoded"] == 0 and done["episodes"] == [] and done["identity"]["mode"] == "incremental"
    lk = Lake(str(lake), create=False)
    current = [r for r in runs_table(lk, "mini").to_pylist() if r["current"]]
    assert current[0]["run_id"] == done["run_id"] and "name.threshold=0.7" in current[0]["parameters"]
    later = plan(lk, "mini", ["cluster.merge_threshold=0.8"])
    assert later.identity_config["name"]["threshold"] == 0.7 and later.full and not later.recompute
    # a plain identify records what it named with too, so the next backfill starts from it
    run_cli("identify", "--lake", str(lake), "--series", "mini", "--set", "name.threshold=0.6", check=True)
    assert plan(Lake(str(lake), create=False), "mini", []).identity_config["name"]["threshold"] == 0.6


def hold_lock(lake: str, series: str) -> subprocess.Popen:
    """Another process holding ``series``' lock as an ingest would, until it is killed."""
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom anitrack.lake import Lake\n"
                               f"with Lake({lake!r}).lock({series!r}, 'ingest'):\n"
                               "    print('held', flush=True)\n    time.sleep(300)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_series_lock_names_a_live_holder_and_breaks_a_stale_one(tmp_path):
    import socket

    from anitrack.lake import LakeBusy

    lake = Lake(str(tmp_path / "lake"))
    holder = hold_lock(str(lake.root), "s")
    try:
        with pytest.raises(LakeBusy, match=rf"series s is busy: ingest by pid {holder.pid} on "
                                           rf"{socket.gethostname()} since .* \(remove .*_locks/s.json if"):
            with lake.lock("s", "backfill"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with lake.lock("s", "backfill"):  # the holder died without releasing: its lock is stale
        assert json.loads((tmp_path / "lake" / "_locks" / "s.json").read_text())["command"] == "backfill"
    assert not (tmp_path / "lake" / "_locks" / "s.json").exists()


def test_series_lock_contenders_starting_together_each_see_the_winner(tmp_path):
    """Processes released at one instant: one wins, every loser names the winner's pid (never a half-written lock)."""
    import sys
    import time

    root = str(tmp_path / "lake")
    Lake(root)
    go = time.time() + 3
    script = ("import sys, time\nfrom anitrack.lake import Lake, LakeBusy\nlake = Lake(sys.argv[1], create=False)\n"
              "time.sleep(max(0, float(sys.argv[2]) - time.time()))\n"
              "try:\n    with lake.lock('s', 'ingest'):\n        print('won', flush=True)\n        time.sleep(2)\n"
              "except LakeBusy as exc:\n    print(exc, flush=True)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, root, str(go)], stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    outs = [(p.pid, p.communicate(timeout=120)[0].strip()) for p in procs]
    winners = [pid for pid, out in outs if out == "won"]
    assert len(winners) == 1, outs
    for pid, out in outs:
        if pid != winners[0]:
            assert out.startswith(f"series s is busy: ingest by pid {winners[0]} on "), outs
    assert sorted(p.name for p in (tmp_path / "lake" / "_locks").iterdir()) == []  # no claim files left behind


def test_a_flow_given_the_commands_lock_checks_it_instead_of_taking_it_again(tmp_path):
    """``execute`` takes the lock before Prefect starts and hands its token to the flow: the flow accepts only
    the lock that is really held, and without a token (a deployment run) takes the lock itself."""
    from anitrack.lake import LakeBusy, LakeError
    from anitrack.flows.executor import series_lock

    root = str(tmp_path / "lake")
    lake = Lake(root)
    with series_lock(root, "s", "backfill") as token:
        assert lake.holds("s", token) and not lake.holds("s", "not-the-token")
        with series_lock(root, "s", "backfill", held=token) as inner:
            assert inner == token
        with pytest.raises(LakeError, match="no longer locked"):
            with series_lock(root, "s", "backfill", held="not-the-token"):
                pass
        with pytest.raises(LakeBusy):
            with series_lock(root, "s", "ingest"):  # no re-entry: a second hold is a second writer
                pass
    assert not lake.holds("s", token)
    with pytest.raises(LakeError, match="no longer locked"):
        with series_lock(root, "s", "backfill", held=token):
            pass


def test_every_writing_command_refuses_a_busy_series_in_one_line_and_writes_nothing(series, lake):
    """The lock is taken before Prefect starts, by the one executor every command runs through."""

    before = stage_files(lake)
    runs = q(lake, "SELECT count(*) AS n FROM identity_runs")
    cluster = str(q(lake, "SELECT min(cluster_id) AS c FROM characters")[0]["c"])
    holder = hold_lock(str(lake), "mini")
    try:
        commands = [("ingest", str(series[0]), "--lake", str(lake), "--series", "mini"),
                    ("identify", "--lake", str(lake), "--series", "mini"),
                    ("label", "--lake", str(lake), "--series", "mini", "--undo"),
                    ("label", "--lake", str(lake), "--series", "mini", "--cluster", cluster, "--noise"),
                    ("backfill", "--lake", str(lake), "--series", "mini", "--set", "cluster.merge_threshold=0.7")]
        for args in commands:
            proc = run_cli(*args)
            assert proc.returncode == 1, (args, proc.stderr)
            lines = [line for line in proc.stderr.splitlines() if line.strip() and "recording" not in line]
            assert len(lines) == 1 and lines[0].startswith(f"anitrack: series mini is busy: ingest by pid "
                                                           f"{holder.pid}"), (args, proc.stderr)
    finally:
        holder.kill()
        holder.wait()
    assert stage_files(lake) == before and q(lake, "SELECT count(*) AS n FROM identity_runs") == runs
