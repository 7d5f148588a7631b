"""Openings, endings, recaps and previews: stretches of footage that repeat across a series' episodes.

Every decoded frame already becomes the 48x27 frame the shot stage sees; its 64-bit difference hash
(the sign of each horizontal step of a 9x8 grey thumbnail) is the episode's video fingerprint, stored
in ``frame_hashes`` without a second decode. Two episodes share a stretch when, at one frame offset,
their hashes agree (within a few bits) for at least ``segments.min_seconds``: re-encoding at another
size or bitrate flips few bits, and a credit line over an ending flips few more. Flat frames (black
fades) carry no evidence and neither break nor make a run.

A stretch found in the episodes near their start is the opening, near their end the ending (a cold
open before the opening, or a different ending song in later episodes, only moves or splits the runs).
Footage an episode shares with one earlier episode only, near its own start, is a recap; footage it
shares with one later episode only, near its own end, is a preview; anything else shared is a repeat.
An episode with no other episode to compare against gets no segments and says so.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import cv2
import numpy as np

HASH = "dhash64-tiny48x27"  # how the stored hashes were made (a change makes every frame_hashes partition stale)
FLAT = 0  # the hash of a frame without structure: no evidence either way
KINDS = ("opening", "ending", "recap", "preview", "repeat")
_BANDS = 4  # a candidate pair of frames agrees exactly on one of four 16-bit bands of the hash
_COMMON = 64  # a band value seen more often than this in one episode (a held still) casts no votes


def frame_hash(tiny_rgb: np.ndarray) -> int:
    """The difference hash of a tiny frame; ``FLAT`` where the frame has too little structure to tell."""
    grey = cv2.cvtColor(tiny_rgb, cv2.COLOR_RGB2GRAY)
    if float(grey.std()) < 4.0:
        return FLAT
    thumb = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (thumb[:, 1:] > thumb[:, :-1]).ravel()
    value = int(np.packbits(bits).view(">u8")[0])
    return value or 1  # a structured frame is never mistaken for a flat one


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


@dataclass
class Run:
    """Frames [a0, a1) of one episode show frames [a0 + offset, a1 + offset) of another."""
    a0: int
    a1: int
    offset: int
    matched: float  # share of the run's informative frames that agree


def shared_runs(a: np.ndarray, b: np.ndarray, min_frames: int, max_bits: int = 8, gap: int = 12) -> list[Run]:
    """Stretches of ``a`` that reappear in ``b`` (hash arrays, uint64), longest evidence first.

    Offsets are proposed by frames agreeing exactly on a band of their hash, then each offset is checked
    frame by frame; runs may hold gaps of up to ``gap`` frames (a changed credit, a flat frame) and a
    frame of ``a`` belongs to one run at most."""
    a, b = np.asarray(a, np.uint64), np.asarray(b, np.uint64)
    if len(a) < min_frames or len(b) < min_frames:
        return []
    # offsets proposed by frame pairs that agree exactly on a band: from where a new picture starts (a held
    # still is one pair at its true offset, not a smear over every pair of its frames) and from every other
    # frame of moving footage; each pair counts once, whatever bands it agrees on
    pairs = np.unique(np.concatenate([_band_pairs(a, b, _starts(a), _starts(b), None),
                                      _band_pairs(a, b, np.arange(0, len(a), 2), np.arange(len(b)), _COMMON)]))
    offsets_of = pairs % (len(a) + len(b)) - len(a)
    found, votes = np.unique(offsets_of, return_counts=True)
    offsets = found[np.argsort(-votes, kind="stable")][:200].tolist()
    taken = np.zeros(len(a), bool)
    runs = []
    for d in offsets:
        lo, hi = max(0, -d), min(len(a), len(b) - d)
        if hi - lo < min_frames:
            continue
        ha, hb = a[lo:hi], b[lo + d:hi + d]
        informative = (ha != FLAT) & (hb != FLAT)
        agree = informative & (_popcount(ha ^ hb) <= max_bits)
        flat = (ha == FLAT) & (hb == FLAT)
        for r0, r1 in _runs(agree, informative, gap):
            while r0 > 0 and flat[r0 - 1]:  # flat in both at this offset (a dark or blank shot): the same footage
                r0 -= 1
            while r1 < len(flat) and flat[r1]:
                r1 += 1
            r0, r1 = r0 + lo, r1 + lo
            if r1 - r0 < min_frames or taken[r0:r1].mean() > 0.5:
                continue
            inside = informative[r0 - lo:r1 - lo]
            matched = float(agree[r0 - lo:r1 - lo].sum() / max(int(inside.sum()), 1))
            runs.append(Run(r0, r1, d, matched))
            taken[r0:r1] = True
    return sorted(runs, key=lambda r: r.a0)


def _band_pairs(a: np.ndarray, b: np.ndarray, ia: np.ndarray, jb: np.ndarray, common: int | None) -> np.ndarray:
    """Frame pairs (i of ``ia``, j of ``jb``) agreeing on a 16-bit band, as ``i * (len(a)+len(b)) + j - i +
    len(a)``; band values more frequent than ``common`` in ``jb`` are skipped."""
    ia, jb = ia[a[ia] != FLAT], jb[b[jb] != FLAT]
    width = len(a) + len(b)
    out = []
    for band in range(_BANDS):
        ka = ((a[ia] >> np.uint64(16 * band)) & np.uint64(0xFFFF)).astype(np.int64)
        kb = ((b[jb] >> np.uint64(16 * band)) & np.uint64(0xFFFF)).astype(np.int64)
        order = np.argsort(kb, kind="stable")
        keys, first, count = np.unique(kb[order], return_index=True, return_counts=True)
        if common is not None:
            keys, first, count = keys[count <= common], first[count <= common], count[count <= common]
        at = np.searchsorted(keys, ka)
        hit = (at < len(keys)) & (keys[np.minimum(at, len(keys) - 1)] == ka) if len(keys) else np.zeros(len(ka), bool)
        i, k = ia[hit], at[hit]
        n = count[k]
        rep_i = np.repeat(i, n)
        offsets = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        j = jb[order[np.repeat(first[k], n) + offsets]]
        out.append(rep_i * width + (j - rep_i + len(a)))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _starts(h: np.ndarray) -> np.ndarray:
    """Frames whose hash differs from the previous frame's (and is not flat)."""
    change = np.ones(len(h), bool)
    change[1:] = h[1:] != h[:-1]
    return np.flatnonzero(change & (h != FLAT))


def _runs(agree: np.ndarray, informative: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """[start, end) of stretches that begin and end on agreeing frames, with no more than ``gap`` frames
    in a row that are informative and disagree."""
    out, start, last, misses = [], None, None, 0
    for i in range(len(agree)):
        if agree[i]:
            start = i if start is None else start
            last, misses = i, 0
        elif start is not None and informative[i]:
            misses += 1
            if misses > gap:
                out.append((start, last + 1))
                start, misses = None, 0
    if start is not None:
        out.append((start, last + 1))
    return out


@dataclass
class Occurrence:
    """A stretch of one episode and where each partner episode shows it (relative start and end)."""
    episode: str
    start: int  # frames, end exclusive
    end: int
    where: dict = field(default_factory=dict)  # partner -> (start share, end share) of the partner's length
    matched: list = field(default_factory=list)
    links: frozenset = frozenset()  # (partner, frame offset) pairs: the same footage, continuing


def find_segments(episodes: list[dict], params: dict) -> dict[str, list[dict]]:
    """Segments of every episode: ``episodes`` in series order, each ``{"episode", "fps", "hashes"}``.

    Returns episode -> rows ``{"kind", "start_frame", "end_frame", "start_s", "end_s", "matched_in",
    "score"}``; an episode alone in its series gets none."""
    order = {e["episode"]: k for k, e in enumerate(episodes)}
    length = {e["episode"]: max(len(e["hashes"]), 1) for e in episodes}
    runs: dict[str, list[tuple]] = defaultdict(list)  # episode -> (start, end, partner, offset, matched)
    for i, x in enumerate(episodes):
        for y in episodes[i + 1:]:
            frames = max(8, int(round(params["min_seconds"] * min(x["fps"], y["fps"]))))
            for run in shared_runs(x["hashes"], y["hashes"], frames, params["max_bits"], params["gap_frames"]):
                runs[x["episode"]].append((run.a0, run.a1, y["episode"], run.offset, run.matched))
                runs[y["episode"]].append((run.a0 + run.offset, run.a1 + run.offset, x["episode"], -run.offset,
                                           run.matched))
    out = {}
    for e in episodes:
        name, fps = e["episode"], e["fps"]
        rows = []
        for occ in _pieces(name, runs[name], length, params["gap_frames"]):
            kind = _kind(occ, length[name], order, params)
            if kind is None:  # the story an earlier preview or a later recap shows: not a segment here
                continue
            if rows and rows[-1]["kind"] == kind and rows[-1]["end_frame"] == occ.start:
                rows[-1].update(end_frame=occ.end, end_s=occ.end / fps,
                                matched_in=sorted(set(rows[-1]["matched_in"]) | set(occ.where), key=order.get))
                continue
            rows.append({"kind": kind, "start_frame": occ.start, "end_frame": occ.end,
                         "start_s": occ.start / fps, "end_s": occ.end / fps,
                         "matched_in": sorted(occ.where, key=order.get),
                         "score": round(float(np.mean(occ.matched)), 4)})
        out[name] = rows
    return out


def _pieces(episode: str, runs: list[tuple], length: dict[str, int], gap: int) -> list[Occurrence]:
    """The episode cut wherever the footage stops continuing in the same other episodes at the same offsets
    (a recap of a cold open that runs straight into the opening is two pieces: one seen in one episode, one
    in all; an ending followed by a preview is two pieces, though both are seen in the same episodes);
    slivers shorter than ``gap`` frames (run ends that differ by a frame or two) join their neighbour."""
    edges = sorted({p for r in runs for p in r[:2]})
    pieces: list[Occurrence] = []
    for u, v in zip(edges, edges[1:]):
        covering = [r for r in runs if r[0] <= u and v <= r[1]]
        if not covering:
            continue
        where, matched = {}, []
        for r0, r1, partner, offset, share in covering:  # where the whole run lies in the partner
            size = length[partner]
            start, end = (r0 + offset) / size, (r1 + offset) / size
            old = where.get(partner, (start, end))
            where[partner] = (min(old[0], start), max(old[1], end))
            matched.append(share)
        pieces.append(Occurrence(episode, u, v, where, matched, frozenset((r[2], r[3]) for r in covering)))
    merged: list[Occurrence] = []
    for occ in pieces:
        last = merged[-1] if merged else None
        touching = last is not None and last.end == occ.start
        if touching and (last.links == occ.links or occ.end - occ.start < gap or last.end - last.start < gap):
            keep = set(occ.where) if last.end - last.start < gap <= occ.end - occ.start else set(last.where)
            for partner in keep:  # a sliver's own partners do not spread over its neighbour
                spans = [w[partner] for w in (last.where, occ.where) if partner in w]
                last.where[partner] = (min(p[0] for p in spans), max(p[1] for p in spans))
            last.where = {k: v for k, v in last.where.items() if k in keep}
            last.links = occ.links if keep == set(occ.where) else last.links
            last.end = occ.end
            last.matched += occ.matched
        else:
            merged.append(occ)
    return merged


LAST = 0.97  # a stretch ending this close to its episode's end is where previews are (after the ending)
_PRIORITY = ("opening", "ending", "recap", "preview", "repeat")


def _kind(occ: Occurrence, n_frames: int, order: dict[str, int], params: dict) -> str | None:
    """What the stretch is here, from where it sits in this episode and in each partner.

    Near the start here and in two or more other episodes (in the only other one of a two-episode series):
    the opening; near the end likewise: the ending. Shared with one other episode: near my start and from an earlier
    episode a recap, near my end and in a later one a preview; the source of someone else's recap or
    preview is story (None). Anything else shared is a repeat."""
    def early(start, end):
        return start <= params["opening_within"]

    def late(start, end):
        return end >= 1 - params["ending_within"]

    me = (occ.start / n_frames, occ.end / n_frames)
    enough = 1 if len(order) == 2 else 2  # other episodes that must show it in the same place
    if early(*me) and sum(early(*w) for w in occ.where.values()) >= enough:
        return "opening"
    if late(*me) and sum(late(*w) for w in occ.where.values()) >= enough:
        return "ending"
    verdicts = []
    for partner, theirs in occ.where.items():  # a preview is the last thing an episode shows
        if order[occ.episode] < order[partner]:
            verdicts.append("preview" if me[1] >= LAST else None if early(*theirs) else "repeat")
        else:
            verdicts.append(None if theirs[1] >= LAST else "recap" if early(*me) else "repeat")
    named = [v for v in verdicts if v is not None]
    return min(named, key=_PRIORITY.index) if named else None


def subtract(spans: list[tuple[float, float]], cut: list[tuple[float, float]]) -> float:
    """Seconds of ``spans`` (disjoint) outside ``cut``."""
    total = 0.0
    for s, e in spans:
        kept = e - s
        for c0, c1 in cut:
            kept -= max(0.0, min(e, c1) - max(s, c0))
        total += max(kept, 0.0)
    return total


# -- the series step: stored hashes in, one ``segments`` partition per episode out ---------------------
def series_episodes(lake, series: str) -> list[dict]:
    """The series' ok episodes in order (episode number, then name) with their stored hashes."""
    rows = [r for r in lake.read("episodes", series).to_pylist() if r["status"] == "ok"]
    rows.sort(key=lambda r: (r["episode_number"] is None, r["episode_number"] or 0, r["episode"]))
    out = []
    for r in rows:
        stored = lake.read("frame_hashes", series, r["episode"]).to_pylist()
        if stored:
            out.append({"episode": r["episode"], "fps": stored[0]["fps"] or r["fps"] or 24.0,
                        "hashes": np.asarray(stored[0]["hashes"], np.uint64),
                        "fingerprint": lake.fingerprint("frame_hashes", series=series, episode=r["episode"])})
    return out


def segments_config(lake, series: str) -> dict:
    """The ``segments`` parameters the series was last segmented with (the defaults before any run)."""
    import json

    from anitrack.config import defaults

    config = defaults()["segments"]
    runs = [r for r in lake.read("stage_runs", series).to_pylist() if r["stage"] == "segments"]
    if runs:
        last = max(runs, key=lambda r: (r["finished_at"], r["run_id"] or ""))
        config.update({k: v for k, v in json.loads(last["parameters"]).items() if k in config})
    return config


def apply_labels(found: list[dict], labels: list[dict], fps: float) -> list[dict]:
    """A user's corrections over the found segments: each label replaces what it overlaps (``none`` leaves
    nothing there); the latest label wins where labels overlap."""
    rows = [dict(r, source="found") for r in found]
    for label in sorted(labels, key=lambda r: r["created_at"]):
        s0, s1 = label["start_s"], label["end_s"]
        rows = [r for r in rows if not (r["start_s"] < s1 and r["end_s"] > s0)]
        if label["kind"] != "none":
            rows.append({"kind": label["kind"], "start_frame": int(round(s0 * fps)), "end_frame": int(round(s1 * fps)),
                         "start_s": s0, "end_s": s1, "matched_in": [], "score": 1.0, "source": "label"})
    return sorted(rows, key=lambda r: r["start_s"])


def segment_series(lake, series: str, config: dict, run_id: str = "") -> dict:
    """Find (or keep) every episode's segments from the stored hashes; nothing is decoded.

    Each episode's partition carries a fingerprint of the parameters, the labels and the hashes of the
    whole series, so a new episode or a threshold change rewrites them and anything else is reused."""
    import datetime as dt
    import time

    import pyarrow as pa

    from anitrack.config import canonical
    from anitrack.lake import conform
    from anitrack.schemas.tables import TABLES

    started, started_at = time.perf_counter(), dt.datetime.now(dt.timezone.utc)
    params = dict(config["segments"])
    episodes = series_episodes(lake, series)
    labels = lake.read("segment_labels", series).to_pylist()
    digest = _digest(HASH, canonical(params), [(e["episode"], e["fingerprint"]) for e in episodes],
                     canonical(sorted((r["episode"], r["kind"], r["start_s"], r["end_s"], r["created_at"].isoformat())
                                      for r in labels)))
    current = [lake.fingerprint("segments", series=series, episode=e["episode"]) for e in episodes]
    if episodes and all(fp == digest for fp in current):
        return {"episodes": len(episodes), "segments": None, "reused": True, "alone": len(episodes) == 1}
    found = find_segments(episodes, params) if len(episodes) > 1 else {e["episode"]: [] for e in episodes}
    total, runs = 0, []
    for e in episodes:
        keys = {"series": series, "episode": e["episode"]}
        rows = apply_labels(found[e["episode"]], [r for r in labels if r["episode"] == e["episode"]], e["fps"])
        table = conform("segments", pa.Table.from_pylist([{**keys, **r} for r in rows], schema=TABLES["segments"]))
        lake.commit("segments", table, fingerprint=digest, run_id=run_id, **keys)
        total += len(rows)
        runs.append({**keys, "run_id": run_id, "stage": "segments", "model": HASH, "fingerprint": digest,
                     "parameters": canonical({**params, "compared_with": len(episodes) - 1}), "reused": False,
                     "seconds": None, "frames_decoded": 0, "model_calls": 0, "rows": len(rows),
                     "started_at": started_at})
    finished_at, seconds = dt.datetime.now(dt.timezone.utc), time.perf_counter() - started
    for row in runs:
        row.update(seconds=seconds / max(len(runs), 1), finished_at=finished_at)
        lake.commit("stage_runs", pa.Table.from_pylist([row]), append=True, run_id=run_id,
                    series=row["series"], episode=row["episode"])
    return {"episodes": len(episodes), "segments": total, "reused": False, "alone": len(episodes) == 1,
            "seconds": seconds}


def _digest(*parts) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


__all__ = ["FLAT", "HASH", "KINDS", "Run", "apply_labels", "find_segments", "frame_hash", "segment_series",
           "segments_config", "series_episodes", "shared_runs"]
