"""Synthetic series generator: ground truth is consistent with the video it describes."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from collections import Counter
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from anitrack.synth import EXTRA, synthesize_series
from tests.conftest import run_cli

animeface = pytest.importorskip("animeface")

W, H = 854, 480


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    folder = synthesize_series(out, episodes=2, characters=4, seconds=12, seed=3)
    truth = json.loads((folder / "truth.json").read_text())
    return out, folder, truth


def _union(intervals):
    covered = set()
    for s, e in intervals:
        covered.update(range(s, e))
    return len(covered)


def _decode(path):
    """RGB frames and their presentation times (seconds)."""
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            yield f.to_ndarray(format="rgb24"), float(f.pts * f.time_base)


def _shot_of(shots, frame):
    return next(i for i, s in enumerate(shots) if s["start_frame"] <= frame < s["end_frame"])


def test_layout(series):
    out, folder, truth = series
    assert folder == out / "synth"
    assert [e["file"] for e in truth["episodes"]] == ["episode_01.mp4", "episode_02.mp4"]
    for e in truth["episodes"]:
        assert (folder / e["file"]).is_file() and e["episode"] == e["file"][:-4]
    names = truth["characters"]
    assert len(names) == len(set(names)) == 4 and EXTRA not in names
    for name in names:
        assert len(list((out / "references" / name).glob("*.png"))) == 6
    assert len(list((out / "references" / "_noise").glob("*.png"))) >= 1


def test_truth_is_consistent(series):
    _, _, truth = series
    fps, names = truth["fps"], truth["characters"]
    assert fps == 24.0
    for e in truth["episodes"]:
        n, shots = e["n_frames"], e["shots"]
        assert n == 12 * 24
        assert shots[0]["start_frame"] == 0 and shots[-1]["end_frame"] == n
        for a, b in zip(shots, shots[1:]):
            assert a["end_frame"] == b["start_frame"]
        assert all(s["end_frame"] > s["start_frame"] for s in shots)
        for app in e["appearances"]:
            assert app["character"] in names or app["character"] == EXTRA
            s = shots[_shot_of(shots, app["start_frame"])]
            assert app["start_frame"] < app["end_frame"] <= s["end_frame"], "appearance crosses a cut"
        assert set(e["screen_time_s"]) == set(names)
        for name in names:
            ivs = [(a["start_frame"], a["end_frame"]) for a in e["appearances"] if a["character"] == name]
            assert e["screen_time_s"][name] == pytest.approx(_union(ivs) / fps, abs=1e-5)
    # every named character is on screen somewhere in the series
    seen = {a["character"] for e in truth["episodes"] for a in e["appearances"]}
    assert set(names) <= seen


def test_never_together_and_together(series):
    _, _, truth = series
    never, together = truth["never_together"], truth["together"]
    assert len(never) == 2 and len(together) == 2
    pairs = Counter()
    for e in truth["episodes"]:
        by_shot = {}
        for a in e["appearances"]:
            if a["character"] != EXTRA:
                by_shot.setdefault(_shot_of(e["shots"], a["start_frame"]), set()).add(a["character"])
        for people in by_shot.values():
            pairs.update(itertools.combinations(sorted(people), 2))
    assert pairs[tuple(sorted(never))] == 0
    assert pairs[tuple(sorted(together))] >= 1


def test_face_boxes_match_appearances(series):
    _, folder, truth = series
    rows = list(csv.DictReader(open(folder / "face_boxes.csv")))
    for e in truth["episodes"]:
        mine = [r for r in rows if r["episode"] == e["episode"]]
        counts = Counter(r["character"] for r in mine)
        for name in truth["characters"]:
            assert counts[name] == round(e["screen_time_s"][name] * truth["fps"])
        for r in mine:
            x, y, w, h = (int(r[k]) for k in "xywh")
            assert 0 <= x and x + w <= W and 0 <= y and y + h <= H and w > 0 and h > 0


def test_video_matches_truth(series):
    _, folder, truth = series
    for e in truth["episodes"]:
        with av.open(str(folder / e["file"])) as c:
            s = c.streams.video[0]
            assert s.codec_context.name == "h264" and s.average_rate == Fraction(24)
        n = 0
        for i, (img, t) in enumerate(_decode(folder / e["file"])):
            assert img.shape == (H, W, 3)
            assert t == pytest.approx(i / truth["fps"], abs=1e-9)
            n += 1
        assert n == e["n_frames"]


def test_hard_cuts(series):
    _, folder, truth = series
    e = truth["episodes"][0]
    cuts = {s["start_frame"] for s in e["shots"][1:]}
    across, within, prev = [], [], None
    for i, (img, _) in enumerate(_decode(folder / e["file"])):
        cur = img.astype(np.int16)
        if prev is not None:
            (across if i in cuts else within).append(np.abs(cur - prev).mean())
        prev = cur
    assert across and within
    assert np.mean(across) > 5 * np.mean(within)
    assert min(across) > np.percentile(within, 95)


def test_fades_and_dissolves_are_drawn_as_the_truth_says(tmp_path):
    """With every scene change a transition: a fade's middle frames are dark, a dissolve's middle is the
    mix of the shots either side; and drawing them changes nothing else in the plan."""
    plain = synthesize_series(tmp_path / "plain", series="t", episodes=1, characters=3, seconds=30, seed=5,
                              transitions=0.0)
    mixed = synthesize_series(tmp_path / "mixed", series="t", episodes=1, characters=3, seconds=30, seed=5,
                              transitions=1.0)
    before, after = (json.loads((f / "truth.json").read_text())["episodes"][0] for f in (plain, mixed))
    assert {s["transition"] for s in before["shots"][1:]} == {"cut"}
    assert [(s["start_frame"], s["end_frame"]) for s in before["shots"]] == \
        [(s["start_frame"], s["end_frame"]) for s in after["shots"]]
    assert before["appearances"] == after["appearances"]
    frames = [img.astype(np.float32) for img, _ in _decode(mixed / "episode_01.mp4")]
    seen = set()
    for shot in after["shots"]:
        b, kind = shot["start_frame"], shot["transition"]
        if kind == "fade":
            assert max(frames[b - 1].mean(), frames[b].mean()) < 0.2 * min(frames[b - 7].mean(), frames[b + 6].mean())
        elif kind == "dissolve":
            a_end, b_start = frames[b - 6], frames[b + 5]  # the last clean frame either side
            mix = np.abs(frames[b] - (a_end + b_start) / 2).mean()
            assert mix < 0.35 * np.abs(b_start - a_end).mean()
        seen.add(kind)
    assert {"fade", "dissolve"} <= seen


def test_references_are_detected(series):
    out, _, truth = series
    for name in truth["characters"]:
        found = [len(animeface.detect(Image.open(p))) > 0 for p in sorted((out / "references" / name).glob("*.png"))]
        assert sum(found) >= 5, (name, found)


def test_faces_in_frames_are_detected(series):
    """animeface finds most on-screen faces, at the place face_boxes.csv says they are."""
    _, folder, truth = series
    boxes = {}
    for r in csv.DictReader(open(folder / "face_boxes.csv")):
        boxes.setdefault((r["episode"], int(r["frame"])), []).append(tuple(int(r[k]) for k in "xywh"))
    rng = np.random.default_rng(0)
    hits = total = 0
    for e in truth["episodes"]:
        frames = sorted(f for (ep, f) in boxes if ep == e["episode"])
        sample = set(rng.choice(frames, size=min(10, len(frames)), replace=False).tolist())
        for i, (img, _) in enumerate(_decode(folder / e["file"])):
            if i not in sample:
                continue
            dets = [d.face.pos for d in animeface.detect(Image.fromarray(img))]
            for d in dets:
                assert 0 <= d.x and d.x + d.width <= W and 0 <= d.y and d.y + d.height <= H
            for x, y, w, h in boxes[(e["episode"], i)]:
                total += 1
                hits += any(x <= d.x + d.width / 2 <= x + w and y <= d.y + d.height / 2 <= y + h for d in dets)
    assert total >= 20
    assert hits / total >= 0.7, (hits, total)


def _digest(folder):
    h = hashlib.sha256()
    for img, _ in _decode(folder / "episode_01.mp4"):
        h.update(img.tobytes())
    return h.hexdigest()


def test_deterministic(tmp_path):
    """Same arguments, same files: byte for byte, whatever the memory the process was handed.

    Each render runs in its own process with glibc filling fresh allocations with a different
    byte (MALLOC_PERTURB_) and serving large ones from the heap rather than zeroed pages, so
    an encoder or renderer that reads uninitialised memory shows up here, not as a rare flake.
    """
    def render(folder, seed, perturb):
        env = {"MALLOC_PERTURB_": str(perturb), "MALLOC_MMAP_THRESHOLD_": str(1 << 30)}
        run_cli("synth", str(folder), "--episodes", "1", "--characters", "4", "--seconds", "3", "--seed",
                str(seed), env=env, check=True)
        return folder / "synth"

    a, b, c = render(tmp_path / "a", 5, 1), render(tmp_path / "b", 5, 200), render(tmp_path / "c", 6, 1)
    assert (a / "truth.json").read_bytes() == (b / "truth.json").read_bytes()
    assert (a / "episode_01.mp4").read_bytes() == (b / "episode_01.mp4").read_bytes()
    assert _digest(a) == _digest(b)
    first = [next(_decode(x / "episode_01.mp4"))[0] for x in (a, b, c)]
    assert np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2])
    assert (a / "truth.json").read_bytes() != (c / "truth.json").read_bytes()
    ref_a = sorted((tmp_path / "a" / "references").rglob("*.png"))
    ref_b = sorted((tmp_path / "b" / "references").rglob("*.png"))
    assert [p.read_bytes() for p in ref_a] == [p.read_bytes() for p in ref_b]
