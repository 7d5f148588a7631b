"""Exports through the real CLI on an identified synthetic series: subtitles read back, datasets decoded,
clips cut with PyAV and probed, tables re-read with pyarrow."""
from __future__ import annotations

import csv
import re
import shutil

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anitrack.lake import Lake
from anitrack.sql import connect, run_query
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # runs the pipeline over video


@pytest.fixture(scope="module")
def lake(identified_lake):
    """The session's synthetic series, identified with its reference gallery (read only)."""
    return identified_lake


def q(lake, sql, **params):
    return run_query(connect(Lake(str(lake), create=False)), sql, params=params or None).to_pylist()


def one_line_error(proc, code=1):
    return proc.returncode == code and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def parse_ass(text: str) -> tuple[dict, list[dict]]:
    """A small ASS reader: styles by name and dialogue events, each as a dict keyed by its Format line."""
    section, formats, styles, events = None, {}, {}, []
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip()
        elif line.startswith("Format:"):
            formats[section] = [f.strip() for f in line[7:].split(",")]
        elif line.startswith("Style:"):
            style = dict(zip(formats[section], (v.strip() for v in line[6:].split(","))))
            styles[style["Name"]] = style
        elif line.startswith("Dialogue:"):
            keys = formats[section]
            events.append(dict(zip(keys, (v.strip() for v in line[9:].split(",", len(keys) - 1)))))
    return styles, events


def ass_seconds(t: str) -> float:
    h, m, s = t.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_ass_subtitles_match_appearances(lake, tmp_path):
    out = tmp_path / "ep1.ass"
    run_cli("export", "subtitles", "--lake", str(lake), "--series", "mini", "--episode", "episode_01",
            "--format", "ass", "--out", str(out), check=True)
    styles, events = parse_ass(out.read_text())
    apps = q(lake, "SELECT character, start_s, end_s FROM appearances WHERE series = 'mini' AND episode = $e "
                   "ORDER BY start_s, end_s, character, tracklet_id", e="episode_01")
    assert apps and len(events) == len(apps)
    for event, app in zip(events, apps):
        assert event["Text"] == app["character"]
        assert abs(ass_seconds(event["Start"]) - app["start_s"]) <= 0.010
        assert abs(ass_seconds(event["End"]) - app["end_s"]) <= 0.010
        assert event["Style"] in styles
    by_character = {e["Text"]: e["Style"] for e in events}
    assert len(set(by_character.values())) == len(by_character) == len(styles)  # one style per character
    assert len({s["PrimaryColour"] for s in styles.values()}) == len(styles)


def test_srt_subtitles_parse(lake, tmp_path):
    out = tmp_path / "ep2.srt"
    run_cli("export", "subtitles", "--lake", str(lake), "--series", "mini", "--episode", "episode_02",
            "--format", "srt", "--out", str(out), check=True)
    blocks = [b.splitlines() for b in out.read_text().strip().split("\n\n")]
    apps = q(lake, "SELECT character, start_s, end_s FROM appearances WHERE episode = 'episode_02' "
                   "ORDER BY start_s, end_s, character, tracklet_id")
    assert len(blocks) == len(apps)
    stamp = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)$")
    for i, (block, app) in enumerate(zip(blocks, apps), 1):
        assert block[0] == str(i) and block[2] == app["character"]
        h, m, s, ms, h2, m2, s2, ms2 = map(int, stamp.match(block[1]).groups())
        assert abs(h * 3600 + m * 60 + s + ms / 1000 - app["start_s"]) <= 0.001
        assert abs(h2 * 3600 + m2 * 60 + s2 + ms2 / 1000 - app["end_s"]) <= 0.001


def test_imagefolder_dataset(lake, tmp_path):
    sizes = q(lake, "SELECT least(c.width, c.height) AS side FROM crops c "
                    "JOIN appearances a USING (episode, tracklet_id)")
    min_size = int(np.median([r["side"] for r in sizes]))
    out = tmp_path / "faces"
    run_cli("export", "dataset", "--lake", str(lake), "--series", "mini", "--out", str(out),
            "--min-size", str(min_size), "--per-tracklet", "2", check=True)
    characters = {r["character"] for r in q(lake, "SELECT DISTINCT character FROM appearances")}
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    assert folders and folders <= characters
    per_tracklet = {}
    for image in out.glob("*/*.*"):
        rgb = cv2.imdecode(np.frombuffer(image.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert rgb is not None and min(rgb.shape[:2]) >= min_size
        tracklet = image.stem.rsplit("_", 1)[0]
        per_tracklet[tracklet] = per_tracklet.get(tracklet, 0) + 1
    assert per_tracklet and max(per_tracklet.values()) <= 2
    with open(out / "labels.csv") as fh:
        labels = list(csv.DictReader(fh))
    assert len(labels) == sum(per_tracklet.values())
    assert all((out / r["file"]).is_file() and r["file"].split("/")[0] == r["character"] for r in labels)
    proc = run_cli("export", "dataset", "--lake", str(lake), "--series", "mini", "--out", str(out))
    assert one_line_error(proc, 2) and "exists" in proc.stderr
    run_cli("export", "dataset", "--lake", str(lake), "--series", "mini", "--out", str(out), "--force",
            "--per-tracklet", "1", check=True)
    assert len(list(out.glob("*/*.*"))) < sum(per_tracklet.values())  # replaced, not mixed with the old export


def test_parquet_dataset_for_one_character(lake, tmp_path):
    character = q(lake, "SELECT character, count(*) AS n FROM appearances GROUP BY 1 ORDER BY 2 DESC LIMIT 1")[0]
    out = tmp_path / "faces.parquet"
    run_cli("export", "dataset", "--lake", str(lake), "--series", "mini", "--character", character["character"],
            "--format", "parquet", "--out", str(out), check=True)
    table = pq.read_table(out)
    assert {"character", "tracklet_id", "episode", "image", "width", "height"} <= set(table.column_names)
    assert set(table.column("character").to_pylist()) == {character["character"]}
    for row in table.slice(0, 5).to_pylist():
        rgb = cv2.imdecode(np.frombuffer(row["image"], np.uint8), cv2.IMREAD_COLOR)
        assert rgb.shape[:2] == (row["height"], row["width"])


def test_cut_clips_have_the_shot_duration(lake, tmp_path):
    out = tmp_path / "clips"
    run_cli("export", "clips", "--lake", str(lake), "--series", "mini", "--out", str(out), "--cut",
            "--format", "parquet", check=True)
    clips = pq.read_table(out / "labels.parquet").to_pylist()
    assert clips
    timeline = q(lake, "SELECT episode, shot_id, count(DISTINCT character) AS n FROM appearance_spans p JOIN shots s "
                       "USING (series, episode) WHERE p.start_s < s.end_s AND s.start_s < p.end_s GROUP BY ALL")
    crowded = {(r["episode"], r["shot_id"]) for r in timeline if r["n"] > 1}
    for clip in clips:
        assert (clip["episode"], clip["shot_id"]) not in crowded
        path = out / clip["character"] / f"{clip['episode']}_s{clip['shot_id']}.mp4"
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            rate = float(stream.average_rate)
        assert frames == clip["end_frame"] - clip["start_frame"]
        assert frames / rate == pytest.approx(clip["end_s"] - clip["start_s"], abs=1.5 / rate)
    listing = tmp_path / "clips.csv"
    run_cli("export", "clips", "--lake", str(lake), "--series", "mini", "--out", str(listing), check=True)
    with open(listing) as fh:
        assert len(list(csv.DictReader(fh))) == len(clips)


def test_cut_with_a_missing_source_is_one_line(lake, tmp_path):
    copy = tmp_path / "lake"
    shutil.copytree(lake, copy)
    lk = Lake(str(copy), create=False)
    episodes = lk.read("episodes", "mini").to_pylist()
    for row in episodes:
        row["uri"] = str(tmp_path / "gone" / f"{row['episode']}.mp4")
        lk.commit("episodes", pa.Table.from_pylist([row]), series="mini", episode=row["episode"])
    proc = run_cli("export", "clips", "--lake", str(copy), "--series", "mini", "--out", str(tmp_path / "c"), "--cut")
    assert one_line_error(proc) and "not found" in proc.stderr
    assert not (tmp_path / "c").exists()


def test_export_table(lake, tmp_path):
    out = tmp_path / "screen.parquet"
    run_cli("export", "table", "screen_time", "--lake", str(lake), "--format", "parquet", "--out", str(out),
            check=True)
    assert pq.read_table(out).num_rows == q(lake, "SELECT count(*) AS n FROM screen_time")[0]["n"]
    out = tmp_path / "apps.csv"
    run_cli("export", "table", "appearances", "--lake", str(lake), "--series", "mini", "--out", str(out), check=True)
    with open(out) as fh:
        assert len(list(csv.DictReader(fh))) == q(lake, "SELECT count(*) AS n FROM appearances")[0]["n"]
    proc = run_cli("export", "table", "crops", "--lake", str(lake), "--out", str(tmp_path / "crops.csv"))
    assert one_line_error(proc) and "parquet" in proc.stderr


@pytest.mark.parametrize("args, code, message", [
    (("subtitles", "--series", "mini", "--episode", "episode_99", "--out", "{tmp}/x.ass"), 1, "episode 'episode_99'"),
    (("subtitles", "--series", "nope", "--episode", "episode_01", "--out", "{tmp}/x.ass"), 1, "series 'nope'"),
    (("dataset", "--series", "mini", "--character", "Nobody", "--out", "{tmp}/d"), 1, "character 'Nobody'"),
    (("dataset", "--series", "mini", "--min-size", "100000", "--out", "{tmp}/d"), 1, "no crops match"),
    (("table", "nope", "--out", "{tmp}/t.csv"), 1, "unknown table 'nope'"),
    (("subtitles", "--series", "mini", "--episode", "episode_01", "--out", "{tmp}/exists"), 2, "exists"),
])
def test_bad_export_input_is_one_line(lake, tmp_path, args, code, message):
    (tmp_path / "exists").write_text("keep me")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = run_cli("export", args[0], "--lake", str(lake), *args[1:])
    assert one_line_error(proc, code) and message in proc.stderr, proc.stderr
    assert (tmp_path / "exists").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]  # nothing half-written
