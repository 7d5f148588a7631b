"""Openings, endings, recaps and previews: footage repeated across episodes, found from the frame hashes
ingestion stores, and left out of screen time by default.

The fast tests match real footage re-encoded at another size and bitrate; the slow ones run a synthetic
series with an opening, an ending with credits that change per episode, a cold open, a recap and a
preview through the real CLI (ingest, a later episode, identify, backfill, corrections).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from anitrack.lake import Lake
from anitrack.segments import FLAT, apply_labels, find_segments, frame_hash
from anitrack.shots import tiny_frame
from anitrack.sql import connect, run_query
from anitrack.video import iter_frames
from tests.conftest import real_clip, run_cli

PARAMS = {"min_seconds": 4.0, "max_bits": 8, "gap_frames": 12, "opening_within": 0.3, "ending_within": 0.3}


def _write(path: Path, frames: list[np.ndarray], size: tuple[int, int], crf: int, fps: int = 24) -> None:
    """Frames (RGB) into an H.264 file at ``size`` (width, height) and ``crf``."""
    import cv2

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _hashes(path: Path) -> np.ndarray:
    return np.array([frame_hash(tiny_frame(f.rgb)) for f in iter_frames(str(path))], np.uint64)


def test_flat_frames_carry_no_evidence_and_a_frame_keeps_its_hash_through_a_re_encode():
    clip = [f.rgb for f in iter_frames(str(real_clip("onepiece_demo.mp4")))]
    assert frame_hash(tiny_frame(np.zeros((480, 640, 3), np.uint8))) == FLAT
    assert frame_hash(tiny_frame(np.full((480, 640, 3), 200, np.uint8))) == FLAT
    import cv2

    small = cv2.resize(cv2.resize(clip[50], (320, 240), interpolation=cv2.INTER_AREA), (640, 480))
    a, b = frame_hash(tiny_frame(clip[50])), frame_hash(tiny_frame(small))
    assert bin(a ^ b).count("1") <= 4
    c = frame_hash(tiny_frame(clip[150]))  # the other shot
    assert bin(a ^ c).count("1") > 16


def test_real_footage_shared_by_two_episodes_is_found_through_another_size_and_bitrate(tmp_path):
    """Episode 1: a real clip (the opening) at 854x480, then its frames mirrored; episode 2: the same clip
    at 426x240 and a low bitrate, then its frames upside down. Only the opening is shared (the frames
    backwards would not do: the clip's held stills are the same pictures played backwards)."""
    clip = [f.rgb for f in iter_frames(str(real_clip("onepiece_demo.mp4")))]
    one, two = tmp_path / "ep1.mp4", tmp_path / "ep2.mp4"
    _write(one, clip + [np.ascontiguousarray(f[:, ::-1]) for f in clip], (854, 480), crf=18)
    _write(two, clip + [np.ascontiguousarray(f[::-1]) for f in clip], (426, 240), crf=38)
    episodes = [{"episode": "ep1", "fps": 24.0, "hashes": _hashes(one)},
                {"episode": "ep2", "fps": 24.0, "hashes": _hashes(two)}]
    found = find_segments(episodes, PARAMS)
    opening_end = len(clip) / 24.0
    for name in ("ep1", "ep2"):
        assert [r["kind"] for r in found[name]] == ["opening"], found[name]
        row = found[name][0]
        assert abs(row["start_s"]) <= 0.5 and abs(row["end_s"] - opening_end) <= 0.5, row
    alone = find_segments(episodes[:1], PARAMS)
    assert alone == {"ep1": []}


def test_a_label_replaces_what_it_overlaps_and_none_removes_it():
    import datetime as dt

    found = [{"kind": "opening", "start_frame": 0, "end_frame": 240, "start_s": 0.0, "end_s": 10.0,
              "matched_in": ["b"], "score": 1.0},
             {"kind": "repeat", "start_frame": 480, "end_frame": 600, "start_s": 20.0, "end_s": 25.0,
              "matched_in": ["b"], "score": 0.9}]
    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    rows = apply_labels(found, [{"kind": "none", "start_s": 21.0, "end_s": 22.0, "created_at": at},
                                {"kind": "ending", "start_s": 50.0, "end_s": 60.0, "created_at": at}], 24.0)
    assert [(r["kind"], r["start_s"], r["source"]) for r in rows] == [("opening", 0.0, "found"),
                                                                       ("ending", 50.0, "label")]


# -- the whole pipeline on a synthetic series -----------------------------------------------------------
@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(folder, truth): 3 episodes of 14 s of story each, plus opening, ending, cold open, recap, preview."""
    from anitrack.synth import synthesize_series

    out = tmp_path_factory.mktemp("segments")
    folder = synthesize_series(out, series="op", episodes=3, characters=3, seconds=14, seed=12, segments=True,
                               extras=False)
    return folder, json.loads((folder / "truth.json").read_text())


@pytest.fixture(scope="module")
def lake(made, tmp_path_factory):
    """Episodes 1 and 2 ingested first, episode 3 arriving later (as scheduled ingestion would bring it),
    then identified with the gallery and the truth."""
    folder, _ = made
    first = tmp_path_factory.mktemp("first") / "op"
    first.mkdir()
    for name in ("episode_01.mp4", "episode_02.mp4"):
        shutil.copy(folder / name, first / name)
    lake = tmp_path_factory.mktemp("seglake") / "lake"
    run_cli("ingest", str(first), "--lake", str(lake), "--series", "op", check=True)
    early = q(lake, "SELECT episode, kind, start_s, end_s FROM segments ORDER BY episode, start_s")
    run_cli("ingest", str(folder), "--lake", str(lake), "--series", "op", check=True)
    run_cli("identify", "--lake", str(lake), "--series", "op", "--references", str(folder.parent / "references"),
            "--truth", str(folder / "truth.json"), check=True)
    return lake, early


def q(lake: Path, sql: str, **kw) -> list[dict]:
    return run_query(connect(Lake(str(lake), create=False), **kw), sql).to_pylist()


def _found(lake: Path) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for r in q(lake, "SELECT episode, kind, start_s, end_s FROM segments ORDER BY episode, start_s"):
        out.setdefault(r["episode"], []).append((r["kind"], r["start_s"], r["end_s"]))
    return out


@pytest.mark.slow
def test_every_segment_is_found_within_half_a_second(made, lake):
    _, truth = made
    found = _found(lake[0])
    for ep in truth["episodes"]:
        want = [(s["kind"], s["start_s"], s["end_s"]) for s in ep["segments"]]
        got = found.get(ep["episode"], [])
        assert [k for k, _, _ in got] == [k for k, _, _ in want], (ep["episode"], got, want)
        for (_, s0, e0), (_, s1, e1) in zip(got, want):
            assert abs(s0 - s1) <= 0.5 and abs(e0 - e1) <= 0.5, (ep["episode"], got, want)


@pytest.mark.slow
def test_the_first_two_episodes_already_had_their_opening_and_the_later_one_gets_it(made, lake):
    _, truth = made
    lake_path, early = lake
    assert {r["episode"] for r in early} == {"episode_01", "episode_02"}
    assert {r["kind"] for r in early} >= {"opening", "ending"}
    got = _found(lake_path)["episode_03"]
    op = next(s for s in truth["episodes"][2]["segments"] if s["kind"] == "opening")
    assert any(k == "opening" and abs(s - op["start_s"]) <= 0.5 for k, s, _ in got)


@pytest.mark.slow
def test_screen_time_leaves_the_segments_out_unless_asked(made, lake):
    """Against the truth: the story's seconds by default, everything with --include."""
    _, truth = made
    lake_path = lake[0]
    fps = truth["fps"]
    story, every = {}, {}
    for ep in truth["episodes"]:
        cut = [(s["start_frame"], s["end_frame"]) for s in ep["segments"]]
        for a in ep["appearances"]:
            if a["character"] not in truth["characters"]:
                continue
            inside = sum(max(0, min(a["end_frame"], e) - max(a["start_frame"], s)) for s, e in cut)
            story[a["character"]] = story.get(a["character"], 0.0) + (a["end_frame"] - a["start_frame"] - inside) / fps
            every[a["character"]] = every.get(a["character"], 0.0) + (a["end_frame"] - a["start_frame"]) / fps
    default = {r["character"]: r for r in q(lake_path, "SELECT character, sum(seconds) AS seconds, "
                                                       "sum(excluded_s) AS excluded FROM screen_time GROUP BY 1")}
    everything = {r["character"]: r["seconds"] for r in q(lake_path, "SELECT character, sum(seconds) AS seconds "
                                                                     "FROM screen_time_all GROUP BY 1")}
    named = [c for c in truth["characters"] if c in default]
    assert named, default
    for c in named:
        assert default[c]["excluded"] > 0  # everyone is in the opening
        assert abs(default[c]["seconds"] + default[c]["excluded"] - everything[c]) < 1e-6
    # the exclusion moves the totals toward the story's, not away from it
    error_default = sum(abs(default[c]["seconds"] - story[c]) for c in named)
    error_all = sum(abs(everything[c] - story[c]) for c in named)
    assert error_default < error_all
    included = q(lake_path, "SELECT character, sum(seconds) AS s FROM screen_time GROUP BY 1",
                 include=("opening", "ending", "recap", "preview", "repeat"))
    assert {r["character"]: round(r["s"], 6) for r in included} == {c: round(v, 6) for c, v in everything.items()}
    proc = run_cli("query", "screen-time-series", "--lake", str(lake_path), "--series", "op", "--include",
                   "openings,endings,recaps,previews,repeats", "--format", "json", check=True)
    rows = {r["character"]: r["seconds"] for r in map(json.loads, proc.stdout.splitlines())}
    assert rows and all(abs(rows[c] - everything[c]) < 1e-6 for c in rows)
    bad = run_cli("query", "screen-time", "--lake", str(lake_path), "--series", "op", "--include", "credits")
    assert bad.returncode == 2 and "unknown segment kind 'credit'" in bad.stderr


@pytest.mark.slow
def test_the_other_named_queries_count_the_story_only_too(lake):
    """Co-appearance, the per-minute timeline and presence leave the segments out as screen time does."""
    from anitrack.queries import run_named

    every = ("opening", "ending", "recap", "preview", "repeat")

    def rows(name, **kw):
        return run_named(connect(Lake(str(lake[0]), create=False), **kw), name, series="op").to_pylist()

    for kw in ({}, {"include": every}):  # the minutes add up to the screen time, with or without the segments
        minutes = sum(r["seconds"] for r in rows("timeline-minutes", **kw))
        assert abs(minutes - sum(r["seconds"] for r in rows("screen-time", **kw))) < 1e-6

    def pairs(**kw):
        return {(r["character_a"], r["character_b"]): r["seconds"] for r in rows("coappearance", **kw)
                if r["episode"] is None}

    story, everything = pairs(), pairs(include=every)
    assert everything and all(story.get(k, 0.0) <= v + 1e-9 for k, v in everything.items())
    assert sum(story.values()) < sum(everything.values())  # the cast shares the opening
    segments = q(lake[0], "SELECT episode, start_s, end_s FROM segments WHERE kind = 'opening'")
    for r in rows("presence"):  # a first appearance is never inside an opening
        opening = [s for s in segments if s["episode"] == r["first_episode"]]
        assert not any(s["start_s"] < r["first_s"] < s["end_s"] for s in opening), (r, opening)


@pytest.mark.slow
def test_subtitles_and_the_report_show_the_segments(made, lake, tmp_path):
    _, truth = made
    srt = tmp_path / "ep3.srt"
    run_cli("export", "subtitles", "--lake", str(lake[0]), "--series", "op", "--episode", "episode_03",
            "--out", str(srt), check=True)
    text = srt.read_text()
    for kind in {s["kind"] for s in truth["episodes"][2]["segments"]}:
        assert f"[{kind}]" in text
    clips = tmp_path / "clips.csv"
    run_cli("export", "clips", "--lake", str(lake[0]), "--series", "op", "--out", str(clips), check=True)
    import csv

    rows = list(csv.DictReader(clips.open()))
    truth_of = {ep["episode"]: ep["segments"] for ep in truth["episodes"]}
    for r in rows:  # a clip inside an opening says so; a story clip says nothing
        mid = (float(r["start_s"]) + float(r["end_s"])) / 2
        inside = [s["kind"] for s in truth_of[r["episode"]] if s["start_s"] + 0.5 < mid < s["end_s"] - 0.5]
        if inside:
            assert inside[0] in r["segment"], r
    assert any(r["segment"] for r in rows) and any(not r["segment"] for r in rows)
    run_cli("report", "--lake", str(lake[0]), "--series", "op", "--out", str(tmp_path / "report"), check=True)
    assert "Openings, endings, recaps and previews are left out" in (tmp_path / "report" / "index.html").read_text()


@pytest.mark.slow
def test_a_segment_threshold_backfill_decodes_nothing_and_a_correction_survives_it(lake, tmp_path):
    lake_path = Path(shutil.copytree(lake[0], tmp_path / "lake"))
    before = _found(lake_path)
    proc = run_cli("backfill", "--lake", str(lake_path), "--series", "op", "--set", "segments.min_seconds=30",
                   "--format", "json", check=True)
    assert "0 frames decoded" in proc.stderr
    assert _found(lake_path) == {}  # no repeated stretch lasts 30 s
    run_cli("backfill", "--lake", str(lake_path), "--series", "op", "--set", "segments.min_seconds=4", check=True)
    assert _found(lake_path) == before
    start, end = next((s, e) for k, s, e in before["episode_02"] if k == "ending")
    marked = run_cli("segments", "--lake", str(lake_path), "--series", "op", "--episode", "episode_02", "--mark",
                     "none", "--start", str(start), "--end", str(end), "--format", "json", check=True)
    assert all(json.loads(line)["kind"] != "ending" for line in marked.stdout.splitlines())
    run_cli("backfill", "--lake", str(lake_path), "--series", "op", "--set", "segments.max_bits=6", check=True)
    after = _found(lake_path)
    assert [k for k, _, _ in after["episode_02"]] == [k for k, _, _ in before["episode_02"] if k != "ending"]
    assert [k for k, _, _ in after["episode_01"]] == [k for k, _, _ in before["episode_01"]]


@pytest.mark.slow
def test_a_series_without_repeats_has_no_segment(ingested_lake, identified_lake):
    assert q(ingested_lake, "SELECT count(*) AS n FROM frame_hashes")[0]["n"] == 3
    assert q(ingested_lake, "SELECT count(*) AS n FROM segments")[0]["n"] == 0
    proc = run_cli("segments", "--lake", str(ingested_lake), "--series", "mini", "--format", "json", check=True)
    assert proc.stdout.strip() == ""
    same = q(identified_lake, "SELECT sum(seconds) AS a, sum(excluded_s) AS x FROM screen_time")[0]
    assert same["x"] == 0 and abs(same["a"] - q(identified_lake, "SELECT sum(seconds) AS a FROM screen_time_all")
                                  [0]["a"]) < 1e-9
    bad = run_cli("segments", "--lake", str(ingested_lake), "--series", "mini", "--episode", "nope")
    assert bad.returncode == 2 and "no episode 'nope'" in bad.stderr
