"""The per-episode stages, in one place: what each writes, reads and is keyed by.

Fingerprints, staleness, the worker's commits and ``stage_runs``, backfill plans and the
report's pipeline table all read ``STAGES``; a new stage is one entry here (and its code).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    table: str                   # the lake table it writes, one partition per episode
    section: str                 # its config section (also its key in the episode's stage clock)
    upstream: tuple[str, ...]    # stage tables it reads; none: it reads the episode's video content
    model: str | None            # its key in ``ingest.model_ids`` (None: no model of its own)
    reads_frames: bool           # needs the decoded video (the alternative: stored crops)
    how_not_what: tuple[str, ...] = ()  # settings that say how it runs, not what it writes: in no fingerprint
    # settings added later, at the value that writes what the stage wrote before they existed: left out of
    # the fingerprint at that value, so adding a setting does not make every existing lake stale
    added: tuple[tuple[str, object], ...] = ()


STAGES = (
    Stage("shots", "shots", (), "shots", True, ("precision",)),
    Stage("detections", "detect", (), "detect", True, ("workers", "batch"), added=(("face_model", ""), ("keyframe_every", 1))),
    Stage("tracklets", "track", ("shots", "detections"), None, True),
    Stage("crops", "crops", ("tracklets",), "faces", True, added=(("select", "even"),)),  # person-first: the finder that cuts the faces
    Stage("embeddings", "embed", ("crops",), "embed", False, ("batch",)),
    # the video fingerprint the segments step matches across episodes: what it writes depends on the
    # content only (its thresholds are the series step's, see anitrack.segments)
    Stage("frame_hashes", "segments", (), "hashes", True,
          ("min_seconds", "max_bits", "gap_frames", "opening_within", "ending_within")),
)
STAGE_TABLES = tuple(s.table for s in STAGES)
BY_TABLE = {s.table: s for s in STAGES}
PIPELINE = ("decode", *STAGE_TABLES)  # the order an episode goes through (decoding first)


def needs_frames(stale) -> bool:
    """Whether recomputing these stage tables needs the video decoded."""
    return any(BY_TABLE[t].reads_frames for t in stale)


def recorded_model(stage: Stage, models: dict[str, str]) -> str:
    """The model a stage run records: its own, else the detector whose boxes it works from."""
    return (models.get(stage.model) if stage.model else None) or models.get("detect", "")
