"""The SQL sandbox: ordinary lake queries work, everything else is refused."""
import pyarrow as pa
import pytest

from anitrack.lake import Lake
from anitrack.sql import QueryError, connect, run_query


@pytest.fixture()
def lake(tmp_path):
    lk = Lake(str(tmp_path / "lake"))
    rows = [{"series": "s", "episode": "e01", "tracklet_id": f"t{i}", "shot_id": 0, "start_frame": i,
             "end_frame": i + 10, "start_s": i / 24, "end_s": (i + 10) / 24, "n_detections": 4} for i in range(3)]
    lk.commit("tracklets", pa.Table.from_pylist(rows), series="s", episode="e01")
    (tmp_path / "secret.csv").write_text("a\n1\n")
    return lk


def test_views_answer_ordinary_queries(lake):
    con = connect(lake)
    rows = run_query(con, "SELECT episode, count(*) AS n FROM tracklets GROUP BY 1").to_pylist()
    assert rows == [{"episode": "e01", "n": 3}]
    # partition columns keep their zero-padded string type
    assert run_query(con, "SELECT typeof(episode) AS t FROM tracklets LIMIT 1").to_pylist() == [{"t": "VARCHAR"}]
    assert run_query(con, "SELECT count(*) AS n FROM embeddings").to_pylist() == [{"n": 0}]  # empty table, a view


@pytest.mark.parametrize("query", [
    "COPY (SELECT 1) TO '{lake}/out.csv'",
    "COPY tracklets TO '{tmp}/out.parquet'",
    "SELECT * FROM read_csv('{tmp}/secret.csv')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "ATTACH '{tmp}/other.db' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET memory_limit = '20GB'",
    "SET enable_external_access = true",
    "CREATE TABLE x AS SELECT 1",
    "DROP VIEW tracklets",
    "PRAGMA enable_profiling",
])
def test_sandbox_refuses(lake, tmp_path, query):
    con = connect(lake)
    with pytest.raises(QueryError):
        run_query(con, query.format(lake=lake.root, tmp=tmp_path))
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.db").exists()
    assert run_query(con, "SELECT count(*) AS n FROM tracklets").to_pylist() == [{"n": 3}]


def test_python_objects_are_not_reachable(lake):
    secret = pa.table({"x": [1]})  # noqa: F841 - a replacement scan would find it by name
    with pytest.raises(QueryError):
        run_query(connect(lake), "SELECT * FROM secret")


def test_long_queries_are_cancelled(lake):
    with pytest.raises(QueryError, match="cancelled"):
        run_query(connect(lake), "SELECT count(*) FROM range(100000000000) a", timeout_s=1)


def test_syntax_error_is_one_line(lake):
    with pytest.raises(QueryError) as info:
        run_query(connect(lake), "SELEC 1")
    assert "\n" not in str(info.value)
