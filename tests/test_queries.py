"""Named analytics queries: exact interval arithmetic on a hand-made lake, then the real pipeline on a
synthetic series with known truth, through the real CLI (DuckDB over real Parquet)."""
from __future__ import annotations

import datetime as dt
import io
import itertools
import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from anitrack.lake import Lake
from anitrack.queries import QUERIES, run_named
from anitrack.sql import QueryError, connect, run_query
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # runs the pipeline over video

CEIL_SCREEN_TIME_ERROR = 0.35  # the identity issue's tolerance (mean per-character relative error)


# -- exact: a lake written by hand ----------------------------------------------------------------
def _hand_lake(root) -> Lake:
    """Three episodes of 120 s; A's own appearances overlap, A and B overlap, C skips episode 2."""
    lake = Lake(str(root))
    for i, ep in enumerate(("ep1", "ep2", "ep3"), 1):
        lake.commit("episodes", pa.Table.from_pylist([{"series": "s", "episode": ep, "episode_number": i,
                                                       "duration_s": 120.0, "status": "ok", "fps": 24.0,
                                                       "width": 640, "height": 360}]), series="s", episode=ep)
        lake.commit("shots", pa.Table.from_pylist([
            {"series": "s", "episode": ep, "shot_id": k, "start_frame": k * 720, "end_frame": (k + 1) * 720,
             "start_s": k * 30.0, "end_s": (k + 1) * 30.0} for k in range(4)]), series="s", episode=ep)
    apps = [("ep1", "A", 10, 50), ("ep1", "A", 40, 70), ("ep1", "B", 45, 80), ("ep1", "B", 75, 100),
            ("ep1", "C", 100, 110), ("ep3", "C", 0, 20), ("ep2", "A", 50, 65)]
    run = "r1"
    rows = [{"series": "s", "run_id": run, "episode": e, "character": c, "cluster_id": ord(c), "tracklet_id": f"t{i}",
             "start_s": float(a), "end_s": float(b)} for i, (e, c, a, b) in enumerate(apps)]
    keys = {"series": "s", "run": run}
    lake.commit("appearances", pa.Table.from_pylist(rows), **keys)
    lake.commit("characters", pa.Table.from_pylist([{"series": "s", "run_id": run, "cluster_id": ord(c), "character": c,
                                                     "named": True, "confidence": conf}
                                                    for c, conf in zip("ABC", (1.0, 0.6, 0.9))]), **keys)
    lake.commit("identity_runs", pa.Table.from_pylist([{"series": "s", "run_id": run,
                                                        "created_at": dt.datetime.now(dt.timezone.utc)}]), **keys)
    return lake


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    return connect(_hand_lake(tmp_path_factory.mktemp("hand") / "lake"))


def rows(con, name, **params):
    return run_named(con, name, series="s", **params).to_pylist()


def test_screen_time_is_an_interval_union(hand):
    got = {(r["episode"], r["character"]): (r["seconds"], r["share"]) for r in rows(hand, "screen-time")}
    assert got == {("ep1", "A"): (60.0, 0.5), ("ep1", "B"): (55.0, pytest.approx(55 / 120)),
                   ("ep1", "C"): (10.0, pytest.approx(1 / 12)), ("ep3", "C"): (20.0, pytest.approx(1 / 6)),
                   ("ep2", "A"): (15.0, 0.125)}
    series = {r["character"]: r for r in rows(hand, "screen-time-series")}
    assert series["A"]["seconds"] == 75.0 and series["A"]["episodes"] == 2
    assert series["A"]["share"] == pytest.approx(75 / 360)


def test_coappearance_is_the_intersection_of_unions(hand):
    got = {(r["episode"], r["character_a"], r["character_b"]): r["seconds"] for r in rows(hand, "coappearance")}
    # A = [10,70], B = [45,100]: 25 s together (summing raw overlaps would give 30); B and C only touch
    assert got == {("ep1", "A", "B"): 25.0, (None, "A", "B"): 25.0}


def test_presence_and_absence(hand):
    got = {r["character"]: r for r in rows(hand, "presence")}
    assert got["A"]["first_episode"] == "ep1" and got["A"]["first_s"] == 10.0
    assert got["A"]["last_episode"] == "ep2" and got["A"]["last_s"] == 65.0
    assert got["B"]["episodes_present"] == 1 and got["B"]["longest_absence_episodes"] == 0
    assert got["C"]["episodes_present"] == 2 and got["C"]["longest_absence_episodes"] == 1
    assert (got["C"]["first_s"], got["C"]["last_episode"], got["C"]["last_s"]) == (100.0, "ep3", 20.0)


def test_timelines_split_at_shot_and_minute_edges(hand):
    shots = {(r["episode"], r["shot_id"], r["character"]): r["seconds_in_shot"] for r in rows(hand, "timeline-shots")}
    assert shots[("ep1", 0, "A")] == 20.0 and shots[("ep1", 1, "A")] == 30.0 and shots[("ep1", 2, "A")] == 10.0
    assert shots[("ep1", 1, "B")] == 15.0 and shots[("ep1", 2, "B")] == 30.0 and shots[("ep1", 3, "B")] == 10.0
    minutes = {(r["episode"], r["minute"], r["character"]): r["seconds"] for r in rows(hand, "timeline-minutes")}
    assert minutes[("ep1", 0, "A")] == 50.0 and minutes[("ep1", 1, "A")] == 10.0
    assert minutes[("ep1", 0, "B")] == 15.0 and minutes[("ep1", 1, "B")] == 40.0 and ("ep1", 2, "B") not in minutes  # ends exactly at 100 s


def test_top_episodes_and_filters(hand):
    top = rows(hand, "top-episodes", character="A")
    assert [(r["episode"], r["rank"]) for r in top] == [("ep1", 1), ("ep2", 2)]
    assert {r["episode"] for r in rows(hand, "screen-time", episode="ep2")} == {"ep2"}
    assert {(r["character_a"], r["character_b"]) for r in rows(hand, "coappearance", character="B")} == {("A", "B")}
    with pytest.raises(QueryError, match="character 'Z' is not in series 's' .*A, B, C"):
        rows(hand, "top-episodes", character="Z")
    with pytest.raises(QueryError, match="series 'x' is not in the lake"):
        run_named(hand, "screen-time", series="x")
    with pytest.raises(QueryError, match="episode 'ep9'"):
        rows(hand, "screen-time", episode="ep9")
    with pytest.raises(QueryError, match="needs --character"):
        rows(hand, "top-episodes")


def test_parameters_are_bound_not_formatted(hand):
    with pytest.raises(QueryError, match="not in the lake"):
        run_named(hand, "screen-time", series="s' OR '1'='1")


# -- the real pipeline on a synthetic series -------------------------------------------------------
@pytest.fixture(scope="module")
def lake(identified_lake):
    """The session's synthetic series, identified with its reference gallery (read only)."""
    return identified_lake


def cli_rows(lake, name, *args):
    proc = run_cli("query", name, "--lake", str(lake), "--series", "mini", "--format", "json", *args, check=True)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_screen_time_matches_truth(lake, synth_truth):
    truth = synth_truth
    got = {r["character"]: r["seconds"] for r in cli_rows(lake, "screen-time-series")}
    errors = []
    for character in truth["characters"]:
        expected = sum(e["screen_time_s"].get(character, 0.0) for e in truth["episodes"])
        if expected > 0:
            errors.append(abs(got.get(character, 0.0) - expected) / expected)
    assert errors and sum(errors) / len(errors) <= CEIL_SCREEN_TIME_ERROR
    per_episode = cli_rows(lake, "screen-time")
    durations = {e["episode"]: e["n_frames"] / truth["fps"] for e in truth["episodes"]}
    for r in per_episode:
        assert r["episode_seconds"] == pytest.approx(durations[r["episode"]], abs=0.05)
        assert r["share"] == pytest.approx(r["seconds"] / r["episode_seconds"])


def test_coappearance_follows_the_generator(lake, synth_truth):
    truth = synth_truth
    pairs = {(r["character_a"], r["character_b"]): r["seconds"] for r in cli_rows(lake, "coappearance")
             if r["episode"] is None}
    together = tuple(sorted(truth["together"]))
    never = tuple(sorted(truth["never_together"]))
    assert pairs.get(together, 0.0) > 0, pairs
    found = {r["character"] for r in cli_rows(lake, "screen-time-series")}
    assert set(never) <= found, found  # both were identified, so their zero is a real answer
    assert pairs.get(never, 0.0) == 0.0, pairs
    # every pair against the generator's own intersection of interval unions
    fps = truth["fps"]
    for a, b in itertools.combinations(sorted(truth["characters"]), 2):
        expected = 0.0
        for ep in truth["episodes"]:
            spans = {c: _union([(x["start_frame"] / fps, x["end_frame"] / fps) for x in ep["appearances"]
                                if x["character"] == c]) for c in (a, b)}
            expected += sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in spans[a] for s2, e2 in spans[b])
        if expected == 0:
            assert pairs.get((a, b), 0.0) == 0.0, (a, b)
        elif (a, b) in pairs:  # a character identity missed entirely is the identity step's error, not ours
            assert abs(pairs[(a, b)] - expected) / expected <= CEIL_SCREEN_TIME_ERROR, (a, b, pairs[(a, b)], expected)
    per_episode = [r for r in cli_rows(lake, "coappearance") if r["episode"] is not None]
    assert all(r["character_a"] < r["character_b"] and r["seconds"] > 0 for r in per_episode)


def _union(intervals):
    out = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def test_presence_and_timelines_agree_with_screen_time(lake):
    screen = {(r["episode"], r["character"]): r["seconds"] for r in cli_rows(lake, "screen-time")}
    for name, key in (("timeline-minutes", "seconds"), ("timeline-shots", "seconds_in_shot")):
        sums = {}
        for r in cli_rows(lake, name):
            sums[(r["episode"], r["character"])] = sums.get((r["episode"], r["character"]), 0.0) + r[key]
        assert sums.keys() == screen.keys()
        for k, v in screen.items():
            assert sums[k] == pytest.approx(v, abs=1e-6), (name, k)
    presence = {r["character"]: r for r in cli_rows(lake, "presence")}
    assert presence.keys() == {c for _, c in screen}
    for character, r in presence.items():
        assert r["episodes_present"] == sum(1 for _, c in screen if c == character)
        assert (r["first_episode"], character) in screen and (r["last_episode"], character) in screen


def test_top_episodes_ranks_by_seconds(lake):
    screen = cli_rows(lake, "screen-time")
    character = max(screen, key=lambda r: r["seconds"])["character"]
    top = cli_rows(lake, "top-episodes", "--character", character)
    expected = sorted((r for r in screen if r["character"] == character), key=lambda r: -r["seconds"])
    assert [r["episode"] for r in top] == [r["episode"] for r in expected]
    assert [r["rank"] for r in top] == list(range(1, len(top) + 1))


def test_formats_and_out(lake, tmp_path):
    base = ("query", "screen-time", "--lake", str(lake), "--series", "mini")
    csv = run_cli(*base, "--format", "csv", check=True).stdout
    table = pacsv.read_csv(io.BytesIO(csv.encode()))
    assert table.column_names == ["series", "episode", "character", "seconds", "episode_seconds", "share",
                                  "confidence"]
    out = tmp_path / "st.parquet"
    run_cli(*base, "--format", "parquet", "--out", str(out), check=True)
    assert pq.read_table(out).num_rows == table.num_rows
    proc = run_cli(*base, "--format", "parquet", "--out", str(out))
    assert proc.returncode != 0 and "exists" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    run_cli(*base, "--format", "json", "--out", str(out), "--force", check=True)
    assert len(out.read_text().splitlines()) == table.num_rows
    proc = run_cli(*base, "--format", "parquet")
    assert proc.returncode == 2 and "--out" in proc.stderr
    sql = run_cli("sql", "--lake", str(lake), "--format", "parquet", "--out", str(tmp_path / "s.parquet"),
                  "SELECT * FROM appearance_spans", check=True)
    assert sql.returncode == 0 and pq.read_table(tmp_path / "s.parquet").num_rows > 0


@pytest.mark.parametrize("args, message", [
    (("query", "top-episodes", "--series", "mini", "--character", "Nobody"), "character 'Nobody' is not in series"),
    (("query", "screen-time", "--series", "nope"), "series 'nope' is not in the lake"),
    (("query", "screen-time", "--series", "mini", "--episode", "episode_99"), "episode 'episode_99'"),
    (("query", "timeline-shots", "--series", "mini", "--character", "Nobody"), "character 'Nobody'"),
    (("sql", "SELEC * FROM episodes"), "syntax error"),
])
def test_bad_input_is_one_line(lake, args, message):
    proc = run_cli(*args[:2], "--lake", str(lake), *args[2:]) if args[0] == "query" else \
        run_cli(args[0], "--lake", str(lake), *args[1:])
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_empty_result_exits_1(tmp_path):
    lake = _hand_lake(tmp_path / "lake")
    proc = run_cli("query", "coappearance", "--lake", lake.root, "--series", "s", "--character", "C")
    assert proc.returncode == 1 and "no rows" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_screen_time_keeps_only_names_sure_enough(hand):
    from anitrack.sql import QueryError

    assert {r["character"] for r in rows(hand, "screen-time", min_confidence=0.8)} == {"A", "C"}
    assert {r["character"]: r["confidence"] for r in rows(hand, "screen-time-series", min_confidence=0.95)} == \
        {"A": 1.0}
    with pytest.raises(QueryError, match="no confidence column"):
        rows(hand, "coappearance", min_confidence=0.5)


def test_every_named_query_has_its_columns(hand):
    expected = {
        "episodes": ["episode", "status", "seconds", "shots", "tracklets"],
        "screen-time": ["series", "episode", "character", "seconds", "episode_seconds", "share", "confidence"],
        "screen-time-series": ["series", "character", "seconds", "share", "episodes", "confidence"],
        "presence": ["character", "first_episode", "first_s", "last_episode", "last_s", "episodes_present",
                     "longest_absence_episodes"],
        "coappearance": ["episode", "character_a", "character_b", "seconds"],
        "timeline-shots": ["episode", "shot_id", "start_s", "end_s", "character", "seconds_in_shot"],
        "timeline-minutes": ["episode", "minute", "character", "seconds"],
        "top-episodes": ["episode", "seconds", "share", "rank"],
    }
    assert set(QUERIES) == set(expected)
    for name, columns in expected.items():
        params = {"character": "A"} if "character" in QUERIES[name].params else {}
        assert run_named(hand, name, series="s", **params).column_names == columns
    assert run_query(hand, "SELECT count(*) AS n FROM appearance_spans").to_pylist() == [{"n": 5}]  # A overlaps merged
