"""The per-episode pipeline: one decode pass feeds shots, detection, tracking and crops.

Each frame is decoded once. The shot detector sees every frame; the detector
sees every ``stride``-th frame in small batches; crops are cut from the frame
while it is in memory and kept encoded, thinned so a long tracklet holds at
most twice the crops it will keep. Tracklets are split at the shot boundaries
once the shot detector has finished, then crops are sampled and embedded.
"""
from __future__ import annotations

import ctypes
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from anitrack import crops as cropping
from anitrack.config import batch_size
from anitrack.detect import FACE_FIRST, make_detector, make_face_finder
from anitrack.detections import Detections
from anitrack.embed import make_embedder, pool
from anitrack.lake import conform
from anitrack.sampling import INTERPOLATED, FrameSampler
from anitrack.segments import HASH as FRAME_HASH
from anitrack.shots import FrameChange, cuts_to_shots, make_shot_detector, run_model_id, tiny_frame
from anitrack.tracking import IouTracker, split_at_cuts
from anitrack.video import iter_frames
from anitrack.schemas.tables import TABLES

TRIM_EVERY = 500  # frames


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS.

    Decoded frames (~1.2 MB each) come and go while small long-lived objects
    (encoded crops) are allocated between them; glibc then keeps the freed frame
    memory in a fragmented heap and the process grows with episode length.
    malloc_trim returns those pages; it is a no-op elsewhere.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class Candidate:
    frame: int
    box: np.ndarray  # crop box in frame pixels
    face: np.ndarray | None  # face box in crop pixels
    anchor: str
    face_score: float
    image: bytes
    quality: float  # crops.crop_quality, computed only for the best-crops selection (0 otherwise)


@dataclass
class StageClock:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, stage: str, since: float, calls: int = 0) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - since
        self.calls[stage] += calls
        return now


@dataclass
class EpisodeOutput:
    tables: dict[str, pa.Table]
    n_frames: int
    fps: float
    duration_s: float
    clock: StageClock
    models: dict[str, str]


def shot_params(config: dict, device: str) -> dict:
    params = {"min_shot_frames": config["shots"]["min_shot_frames"], "device": device}
    if config["shots"]["threshold"] > 0:
        params["threshold"] = config["shots"]["threshold"]
    if config["shots"]["backend"] == "transnetv2":
        params.update(gate=config["shots"]["gate"], context=config["shots"]["context"],
                      precision=config["shots"]["precision"])
    return params


class EpisodePipeline:
    """Holds the models for one process; ``run`` may be called for many episodes."""

    def __init__(self, config: dict, device: str = "cpu"):
        self.config = config
        self.device = device
        self.detector = make_detector(config, device)
        self.face_first = config["detect"]["detector"] in FACE_FIRST
        self.face_finder = None if self.face_first else make_face_finder(config, device)
        self.embedder = make_embedder(config, device)

    def models(self) -> dict[str, str]:
        shots = self.config["shots"]
        return {"shots": run_model_id(shots["backend"], shots["precision"], self.device),
                "detect": self.detector.model_id, "embed": self.embedder.model_id,
                "faces": getattr(self.face_finder, "model_id", "") if self.face_finder else "", "hashes": FRAME_HASH}

    def close(self) -> None:
        for part in (self.detector, self.face_finder):
            if part is not None and hasattr(part, "close"):
                part.close()

    def run(self, uri: str, series: str, episode: str, progress: Callable[[int], None] | None = None,
            shots: list[dict] | None = None) -> EpisodeOutput:
        """``shots``: the episode's committed ``shots`` rows when they are still valid, so a detection
        change does not pay for the shot detector again."""
        cfg = self.config
        stride = cfg["detect"]["stride"]
        shot_detector = None if shots else make_shot_detector(cfg["shots"]["backend"], **shot_params(cfg, self.device))
        tracker = IouTracker(iou=cfg["track"]["iou"], max_gap=cfg["track"]["max_gap"])
        clock = StageClock()
        pts: list[float] = []
        found: list[Detections] = []  # per detected frame, with its frame and det_id columns
        n_found = 0
        candidates: dict[int, Candidate] = {}
        kept: dict[int, list[int]] = defaultdict(list)  # id(track) -> det ids with a candidate
        keep, best = cfg["crops"]["per_tracklet"], cfg["crops"]["select"] == "best"
        limit = 2 * max(keep, 10) if best else 2 * keep  # the best few are picked from at least 20 spread out

        def track(frame, dets: Detections, detected: bool):
            """Cut the crops of a detected frame and track its boxes (frames arrive in order)."""
            nonlocal n_found
            t = time.perf_counter()
            h, w = frame.rgb.shape[:2]
            ids = np.arange(n_found, n_found + len(dets))
            dets = dets.by_score().with_data(frame=frame.index, det_id=ids,
                                             detector=self.detector.name if detected else INTERPOLATED)
            n_found += len(dets)
            made = self._candidates(frame, dets, w, h) if detected else [None] * len(dets)
            t = clock.add("crops", t)
            tracks = tracker.update(frame.index, dets)
            found.append(dets)
            for det_id, tracked, cand in zip(ids.tolist(), tracks, made):
                if cand is None:
                    continue
                candidates[det_id] = cand
                mine = kept[id(tracked)]
                mine.append(det_id)
                if len(mine) > limit:  # thin evenly, keep memory bounded per tracklet
                    for dropped in mine[1::2]:
                        candidates.pop(dropped, None)
                    mine[:] = mine[::2]
            clock.add("track", t)

        def detect(rgb: list):
            """Start a batch (in the background where the detector can); the detect clock also counts
            the time spent waiting for its results."""
            t = time.perf_counter()
            if hasattr(self.detector, "submit"):
                wait = self.detector.submit(rgb)
            else:
                results = self.detector.detect(rgb)
                wait = lambda: results  # noqa: E731
            clock.add("detect", t, calls=len(rgb))

            def result():
                t = time.perf_counter()
                out = wait()
                clock.add("detect", t)
                return out
            return result

        # where the picture may cut, for the sampler: always the frame change (TransNetV2's own, else kept here),
        # never the stored shots, so a resumed or backfilled episode samples the frames a clean run samples
        change = getattr(shot_detector, "change", None)
        own_change = change is None
        if own_change:
            change = FrameChange()
        sampler = FrameSampler(detect, track, stride, cfg["detect"]["keyframe_every"], cfg["track"]["iou"],
                               batch_size(cfg, "detect", self.device), change.cut_between)

        t = time.perf_counter()
        for frame in iter_frames(uri):
            t = clock.add("decode", t)
            pts.append(frame.t_s)
            if shot_detector is not None:
                shot_detector.push(frame.index, frame.rgb)
                t = clock.add("shots", t)
            if own_change:
                change.push(tiny_frame(frame.rgb))
            sampler.offer(frame)
            if progress and frame.index % 50 == 0:
                progress(frame.index)
            if frame.index % TRIM_EVERY == TRIM_EVERY - 1:
                _release_freed_memory()
            t = time.perf_counter()
        sampler.finish()
        _release_freed_memory()
        n = len(pts)
        fps = (n - 1) / (pts[-1] - pts[0]) if n > 1 and pts[-1] > pts[0] else 24.0
        frame_end = pts + [pts[-1] + 1.0 / fps]  # end time of frame i is the start of i+1
        t = time.perf_counter()
        if shot_detector is not None:
            shot_detector.finish()
            decided = {b.frame: (b.reason, b.transition) for b in shot_detector.boundaries}
            shots = cuts_to_shots(list(decided), n, cfg["shots"]["min_shot_frames"])
            how = [("start", "none")] + [decided[s] for s, _ in shots[1:]]
        else:
            stored, shots = shots, [(r["start_frame"], r["end_frame"]) for r in shots]
            how = [(r["reason"], r["transition"]) for r in stored]
            if shots[-1][1] != n:
                raise RuntimeError(f"{episode}: the stored shots end at frame {shots[-1][1]}, the video has {n} frames")
        t = clock.add("shots", t, calls=getattr(shot_detector, "windows_run", 0))

        pieces = [(s, p) for s, p in split_at_cuts(tracker.finish(), shots)
                  if len(p.frames) >= cfg["track"]["min_detections"]]
        pieces.sort(key=lambda sp: (sp[0], sp[1].frames[0], float(sp[1].boxes[0][0])))
        tracklet_rows, det_tracklet, dets_of = [], {}, {}
        seen = defaultdict(int)
        for shot_id, piece in pieces:
            start = piece.frames[0]
            end = min(piece.frames[-1] + stride, shots[shot_id][1])
            k = seen[(shot_id, start)]
            seen[(shot_id, start)] += 1
            tid = f"{episode}:s{shot_id:04d}:f{start:06d}:{k}"
            for d in piece.det_ids:
                det_tracklet[d] = tid
            dets_of[tid] = piece.det_ids
            tracklet_rows.append({
                "series": series, "episode": episode, "tracklet_id": tid, "shot_id": shot_id,
                "start_frame": start, "end_frame": end, "start_s": frame_end[start], "end_s": frame_end[end],
                "n_detections": len(piece.frames), "mean_score": float(np.mean(piece.scores))})
        t = clock.add("track", t)

        crop_rows = []
        for row in tracklet_rows:
            have = [d for d in dets_of[row["tracklet_id"]] if d in candidates]
            own = cropping.best_sample(have, [candidates[d].quality for d in have], keep) if best \
                else cropping.even_sample(have, keep)
            for d in own:
                c = candidates[d]
                face = c.face if c.face is not None else [None] * 4
                crop_rows.append({
                    "series": series, "episode": episode, "tracklet_id": row["tracklet_id"],
                    "crop_id": f"{row['tracklet_id']}:{c.frame:06d}", "frame": c.frame, "t_s": pts[c.frame],
                    "x1": int(c.box[0]), "y1": int(c.box[1]), "x2": int(c.box[2]), "y2": int(c.box[3]),
                    "anchor": c.anchor, "face_score": c.face_score,
                    "face_x1": face[0], "face_y1": face[1], "face_x2": face[2], "face_y2": face[3],
                    "width": int(c.box[2] - c.box[0]), "height": int(c.box[3] - c.box[1]),
                    "image_format": cfg["crops"]["format"], "image": c.image})
        t = clock.add("crops", t)
        embedding_rows = embed_rows(self.embedder, batch_size(cfg, "embed", self.device), crop_rows, clock)

        shot_rows = [{"series": series, "episode": episode, "shot_id": i, "start_frame": s, "end_frame": e,
                      "start_s": frame_end[s], "end_s": frame_end[e], "backend": cfg["shots"]["backend"],
                      "reason": how[i][0], "transition": how[i][1]}
                     for i, (s, e) in enumerate(shots)]
        shot_of = np.searchsorted([s for s, _ in shots], np.arange(n), side="right") - 1
        none = np.zeros(0, np.int64)
        dets = Detections.concat(found) if found else Detections.empty().with_data(
            frame=none, det_id=none, detector=np.zeros(0, str))
        at = dets.data["frame"]
        det_table = dets.with_data(
            series=series, episode=episode, t_s=np.asarray(pts)[at], shot_id=shot_of[at],
            tracklet_id=np.array([det_tracklet.get(i) for i in dets.data["det_id"].tolist()], object),
            ).to_arrow().drop_columns(["class_id", "tracker_id", "det_id"])
        def table(name, rows):
            return conform(name, pa.Table.from_pylist(rows, schema=TABLES[name]))

        tables = {"shots": table("shots", shot_rows), "detections": conform("detections", det_table),
                  "tracklets": table("tracklets", tracklet_rows), "crops": table("crops", crop_rows),
                  "embeddings": table("embeddings", embedding_rows),
                  "frame_hashes": table("frame_hashes", [hash_row(series, episode, fps, change.hashes)])}
        return EpisodeOutput(tables, n, fps, frame_end[-1] - frame_end[0], clock, self.models())

    def _candidates(self, frame, dets: Detections, w, h) -> list[Candidate]:
        cfg = self.config["crops"]
        out = []
        boxes = dets.xyxy
        if self.face_first:
            faces = [(b, float(s)) for b, s in zip(boxes, dets.score)]
        else:
            regions = [cropping.clip_box(np.array([b[0], b[1], b[2], b[1] + 0.6 * (b[3] - b[1])]), w, h)
                       for b in boxes]
            found = self.face_finder.find_faces([frame.rgb[r[1]:r[3], r[0]:r[2]] for r in regions]) if len(boxes) \
                else []
            faces = [None if f is None else (f[0] + np.array([r[0], r[1], r[0], r[1]]), f[1])
                     for f, r in zip(found, regions)]
        for person, face in zip(boxes, faces):
            if face is not None:
                box = cropping.face_anchored_box(face[0], w, h, cfg["up_ratio"], cfg["pad"])
                fb = np.round(face[0] - np.array([box[0], box[1], box[0], box[1]])).astype(int)
                anchor, score = "face", face[1]
            else:
                box = cropping.upper_body_box(person, w, h, cfg["pad"])
                fb, anchor, score = None, "upper_body", 0.0
            rgb = np.ascontiguousarray(frame.rgb[box[1]:box[3], box[0]:box[2]])
            quality = cropping.crop_quality(score, box[2] - box[0], box[3] - box[1], cropping.sharpness(rgb)) \
                if face is not None and cfg["select"] == "best" else 0.0  # ranked only by the best-crops selection
            out.append(Candidate(frame.index, box, fb, anchor, score, cropping.encode(rgb, cfg["format"]), quality))
        return out

def hash_row(series: str, episode: str, fps: float, hashes: list[int]) -> dict:
    """The ``frame_hashes`` row of an episode (see anitrack.segments)."""
    return {"series": series, "episode": episode, "method": FRAME_HASH, "fps": fps, "n_frames": len(hashes),
            "hashes": hashes}


def embed_rows(embedder, batch_size: int, crop_rows: list[dict], clock: StageClock) -> list[dict]:
    """Per-crop and pooled per-tracklet vectors from stored (encoded) crops: needs no video, so an
    embedding change is recomputed from the lake's ``crops`` table alone."""
    t = time.perf_counter()
    vectors = []
    for i in range(0, len(crop_rows), batch_size):
        chunk = crop_rows[i:i + batch_size]
        images = [cropping.decode(r["image"]) for r in chunk]
        faces = [None if r["face_x1"] is None else np.array([r["face_x1"], r["face_y1"], r["face_x2"],
                                                              r["face_y2"]]) for r in chunk]
        vectors.append(embedder.embed(images, faces))
    clock.add("embed", t, calls=len(vectors))
    if not crop_rows:
        return []
    matrix = np.concatenate(vectors)
    model, metric, dim = embedder.model_id, embedder.metric, matrix.shape[1]
    rows, by_tracklet = [], defaultdict(list)
    for r, v in zip(crop_rows, matrix):
        by_tracklet[r["tracklet_id"]].append(v)
        rows.append({"series": r["series"], "episode": r["episode"], "tracklet_id": r["tracklet_id"],
                     "crop_id": r["crop_id"], "kind": "crop", "model": model, "metric": metric, "dim": dim,
                     "vector": v.tolist()})
    series, episode = crop_rows[0]["series"], crop_rows[0]["episode"]
    for tid, vs in by_tracklet.items():
        rows.append({"series": series, "episode": episode, "tracklet_id": tid, "crop_id": None,
                     "kind": "tracklet", "model": model, "metric": metric, "dim": dim,
                     "vector": pool(np.stack(vs)).tolist()})
    return rows
