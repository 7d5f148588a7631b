"""The lake's guarantees: schema validation, atomic visibility, crash safety."""
import json
import multiprocessing as mp
import os
import signal
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anitrack.lake import COMMIT, Lake, LakeError
from anitrack.sql import connect, run_query


def shots(n: int, episode: str = "e1", series: str = "s") -> pa.Table:
    return pa.Table.from_pylist([{"series": series, "episode": episode, "shot_id": i, "start_frame": 10 * i,
                                  "end_frame": 10 * i + 10, "start_s": i / 2.4, "end_s": (i + 1) / 2.4}
                                 for i in range(n)])


def test_commit_and_read_roundtrip(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.commit("shots", shots(3), fingerprint="fp1", series="s", episode="e1")
    lake.commit("shots", shots(2, "e2"), fingerprint="fp2", series="s", episode="e2")
    table = lake.read("shots")
    assert table.num_rows == 5
    assert lake.fingerprint("shots", series="s", episode="e1") == "fp1"
    meta = pq.read_metadata(lake.files("shots")[0]).metadata
    assert meta[b"anitrack.schema_version"] == b"1"
    # the hive layout users expect
    assert (tmp_path / "lake" / "shots" / "series=s" / "episode=e1" / COMMIT).exists()


def test_replacing_a_partition_leaves_one_live_file(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.commit("shots", shots(3), series="s", episode="e1")
    lake.commit("shots", shots(5), series="s", episode="e1")
    part = tmp_path / "lake" / "shots" / "series=s" / "episode=e1"
    assert len(list(part.glob("*.parquet"))) == 1
    assert lake.read("shots").num_rows == 5


def test_append_keeps_earlier_files(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    row = {"series": "s", "episode": "e1", "stage": "shots", "seconds": 1.0}
    lake.commit("stage_runs", pa.Table.from_pylist([row]), append=True, series="s", episode="e1")
    lake.commit("stage_runs", pa.Table.from_pylist([row, row]), append=True, series="s", episode="e1")
    assert lake.read("stage_runs").num_rows == 3


@pytest.mark.parametrize("bad, column", [
    (lambda t: t.drop_columns(["start_frame"]), "start_frame"),
    (lambda t: t.set_column(t.schema.get_field_index("start_s"), "start_s", pa.array(["x"] * t.num_rows)),
     "start_s"),
    (lambda t: t.append_column("colour", pa.array([1] * t.num_rows)), "colour"),
])
def test_schema_mismatch_names_the_column_and_writes_nothing(tmp_path, bad, column):
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(LakeError, match=column):
        lake.commit("shots", bad(shots(2)), series="s", episode="e1")
    assert lake.read("shots").num_rows == 0


def test_partition_value_must_match_rows(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(LakeError, match="episode"):
        lake.commit("shots", shots(2, episode="other"), series="s", episode="e1")


def test_missing_parent_and_bad_names(tmp_path):
    with pytest.raises(LakeError, match="does not exist"):
        Lake(str(tmp_path / "nope" / "lake"))
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(LakeError, match="invalid series"):
        lake.commit("shots", shots(1, series="a/b"), series="a/b", episode="e1")


def test_uncommitted_files_are_invisible(tmp_path):
    """A half-written file in a partition (a crashed writer) never reaches readers or SQL."""
    lake = Lake(str(tmp_path / "lake"))
    lake.commit("shots", shots(3), series="s", episode="e1")
    part = tmp_path / "lake" / "shots" / "series=s" / "episode=e1"
    (part / "part-deadbeef.parquet").write_bytes(b"PAR1 this is not a parquet file")
    (tmp_path / "lake" / "_staging").mkdir(exist_ok=True)
    (tmp_path / "lake" / "_staging" / "part-x.parquet").write_bytes(b"partial")
    assert lake.read("shots").num_rows == 3
    con = connect(lake)
    assert run_query(con, "SELECT count(*) AS n FROM shots").to_pylist() == [{"n": 3}]
    # the next commit of that partition removes the debris
    lake.commit("shots", shots(4), series="s", episode="e1")
    assert sorted(p.name for p in part.iterdir() if p.suffix == ".parquet") == \
        [json.loads((part / COMMIT).read_text())["files"][0]]


def _writer(root: str) -> None:
    lake = Lake(root)
    i = 0
    while True:
        i += 1
        lake.commit("shots", shots(1 + i % 7), fingerprint=str(i), series="s", episode="e1")


def test_killing_a_writer_mid_commit_never_breaks_readers(tmp_path):
    """SIGKILL a process that commits in a loop, many times; the partition always reads whole."""
    root = str(tmp_path / "lake")
    Lake(root).commit("shots", shots(1), fingerprint="0", series="s", episode="e1")
    ctx = mp.get_context("spawn")
    for delay in (0.35, 0.5, 0.65, 0.8, 0.95):
        proc = ctx.Process(target=_writer, args=(root,))
        proc.start()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        lake = Lake(root)
        commit = lake.read_commit(lake.partition("shots", series="s", episode="e1"))
        table = lake.read("shots")
        assert table.num_rows == commit["rows"] == 1 + int(commit["fingerprint"]) % 7
        assert run_query(connect(lake), "SELECT count(*) AS n FROM shots").to_pylist()[0]["n"] == table.num_rows


def test_reading_while_another_process_replaces_the_partition_always_reads_a_whole_commit(tmp_path):
    """Parallel episode tasks read the series' rows while others commit theirs; a replaced partition's old file
    is gone right after the new commit, and the read must then take the new one, never fail or mix them."""
    root = str(tmp_path / "lake")
    Lake(root).commit("shots", shots(1), fingerprint="0", series="s", episode="e1")
    proc = mp.get_context("spawn").Process(target=_writer, args=(root,))
    proc.start()
    try:
        lake, commits_seen = Lake(root), set()
        deadline = time.monotonic() + 20
        while len(commits_seen) < 30 and time.monotonic() < deadline:
            table = lake.read("shots")
            shot_ids = table.column("shot_id").to_pylist()
            assert shot_ids == list(range(len(shot_ids))), "rows of two commits mixed"
            commits_seen.add(lake.read_commit(lake.partition("shots", series="s", episode="e1"))["fingerprint"])
        assert len(commits_seen) >= 30, "the writer committed too little to race with the reads"
    finally:
        proc.kill()
        proc.join()
