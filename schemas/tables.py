"""The lake's public contract: one Arrow schema per table.

Evolution is additive only (new nullable columns); readers use DuckDB's
``union_by_name`` so older partitions keep working. ``SCHEMA_VERSION`` is
written into every Parquet file's metadata.
"""
import pyarrow as pa

SCHEMA_VERSION = "1"

# Partition columns live in the hive path, but are also stored in the file so a
# single Parquet file is self-describing when copied out of the lake.
_PART = [pa.field("series", pa.string(), nullable=False), pa.field("episode", pa.string(), nullable=False)]

EPISODES = pa.schema(_PART + [
    pa.field("episode_number", pa.int32()),
    pa.field("uri", pa.string()),
    pa.field("content_hash", pa.string()),
    pa.field("size_bytes", pa.int64()),
    pa.field("fps", pa.float64()),
    pa.field("n_frames", pa.int64()),
    pa.field("duration_s", pa.float64()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("status", pa.string()),  # "ok" | "failed"
    pa.field("error", pa.string()),
    pa.field("profile", pa.string()),
    pa.field("ingested_at", pa.timestamp("us", tz="UTC")),
    # read from the release's file name (anitopy): season when the name gives one; numbering says what was
    # read ("S01E05", "E12.5 (not a whole episode number)") or that the name carries no episode number
    pa.field("season", pa.int32()),
    pa.field("numbering", pa.string()),
])

SHOTS = pa.schema(_PART + [
    pa.field("shot_id", pa.int32(), nullable=False),
    pa.field("start_frame", pa.int64(), nullable=False),
    pa.field("end_frame", pa.int64(), nullable=False),  # exclusive
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("backend", pa.string()),
    # what decided the boundary this shot starts at: transnetv2 (probability over the threshold), difference
    # (a lower TransNetV2 peak that the frame change confirms), content / adaptive (PySceneDetect); start for shot 0
    pa.field("reason", pa.string()),
    pa.field("transition", pa.string()),  # how it begins: cut, fade, dissolve; none for shot 0
])

DETECTIONS = pa.schema(_PART + [
    pa.field("frame", pa.int64(), nullable=False),
    pa.field("t_s", pa.float64(), nullable=False),
    pa.field("shot_id", pa.int32()),
    pa.field("tracklet_id", pa.string()),  # null: dropped by the tracker (too short)
    pa.field("x1", pa.float32()), pa.field("y1", pa.float32()),
    pa.field("x2", pa.float32()), pa.field("y2", pa.float32()),
    pa.field("score", pa.float32()),
    # the detector that saw the box, or "interpolated": between two detected frames that agree
    # (detect.keyframe_every), on the line between their boxes; tracked, but cut no crop
    pa.field("detector", pa.string()),
])

TRACKLETS = pa.schema(_PART + [
    pa.field("tracklet_id", pa.string(), nullable=False),
    pa.field("shot_id", pa.int32(), nullable=False),
    pa.field("start_frame", pa.int64(), nullable=False),
    pa.field("end_frame", pa.int64(), nullable=False),  # exclusive
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("n_detections", pa.int32(), nullable=False),
    pa.field("mean_score", pa.float32()),
])

CROPS = pa.schema(_PART + [
    pa.field("tracklet_id", pa.string(), nullable=False),
    pa.field("crop_id", pa.string(), nullable=False),
    pa.field("frame", pa.int64(), nullable=False),
    pa.field("t_s", pa.float64()),
    pa.field("x1", pa.int32()), pa.field("y1", pa.int32()),
    pa.field("x2", pa.int32()), pa.field("y2", pa.int32()),
    pa.field("anchor", pa.string()),  # "face" | "upper_body"
    pa.field("face_score", pa.float32()),
    # the face inside the crop, in crop pixels (null for upper-body fallbacks)
    pa.field("face_x1", pa.int32()), pa.field("face_y1", pa.int32()),
    pa.field("face_x2", pa.int32()), pa.field("face_y2", pa.int32()),
    pa.field("width", pa.int32()), pa.field("height", pa.int32()),
    pa.field("image_format", pa.string()),
    pa.field("image", pa.binary()),
])

EMBEDDINGS = pa.schema(_PART + [
    pa.field("tracklet_id", pa.string(), nullable=False),
    pa.field("crop_id", pa.string()),  # null: the tracklet's pooled vector
    pa.field("kind", pa.string(), nullable=False),  # "crop" | "tracklet"
    pa.field("model", pa.string(), nullable=False),
    pa.field("metric", pa.string()),  # "cosine" | "ccip"
    pa.field("dim", pa.int32()),
    pa.field("vector", pa.list_(pa.float32()), nullable=False),
])

# the video fingerprint of an episode, from the decode that ingestion does anyway: one row per episode
FRAME_HASHES = pa.schema(_PART + [
    pa.field("method", pa.string()),  # how the hashes were made (anitrack.segments.HASH)
    pa.field("fps", pa.float64()),
    pa.field("n_frames", pa.int64()),
    pa.field("hashes", pa.list_(pa.uint64())),  # per frame; 0: a flat frame (no evidence)
])

# openings, endings, recaps, previews and other repeats, found across the series' episodes
SEGMENTS = pa.schema(_PART + [
    pa.field("kind", pa.string(), nullable=False),  # opening | ending | recap | preview | repeat
    pa.field("start_frame", pa.int64(), nullable=False),
    pa.field("end_frame", pa.int64(), nullable=False),  # exclusive
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("matched_in", pa.list_(pa.string())),  # the other episodes that show the same footage
    pa.field("score", pa.float64()),  # share of the stretch's frames that agree with the other episodes
    pa.field("source", pa.string()),  # found | label (a user's correction)
])

# a user's corrections of segments (``anitrack segments --mark``): kept per series, applied on every run
SEGMENT_LABELS = pa.schema([
    pa.field("series", pa.string(), nullable=False),
    pa.field("episode", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),  # a segment kind, or "none": no segment here
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC")),
])

STAGE_RUNS = pa.schema(_PART + [
    pa.field("run_id", pa.string()),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("parameters", pa.string()),  # canonical JSON
    pa.field("model", pa.string()),
    pa.field("fingerprint", pa.string()),
    pa.field("reused", pa.bool_()),
    pa.field("seconds", pa.float64()),
    pa.field("frames_decoded", pa.int64()),
    pa.field("model_calls", pa.int64()),
    pa.field("rows", pa.int64()),
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
])

REFERENCES = pa.schema([
    pa.field("series", pa.string(), nullable=False),
    pa.field("character", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("vector", pa.list_(pa.float32()), nullable=False),
])

# Identity (cross-episode) tables: one partition per series and identity run.
CLUSTERS = pa.schema([
    pa.field("series", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("episode", pa.string(), nullable=False),
    pa.field("tracklet_id", pa.string(), nullable=False),
    pa.field("cluster_id", pa.int64(), nullable=False),  # -1: noise (extras, background people)
    pa.field("rescued", pa.bool_()),  # a noise tracklet named from the gallery alone (name.rescue_margin)
    # the tracklet's own naming verdict: its closest reference character, the score and the lead over the
    # runner-up in the run's naming view, and whether it passed the calibrated test on its own
    pa.field("best", pa.string()), pa.field("score", pa.float64()), pa.field("lead", pa.float64()),
    pa.field("passed", pa.bool_()),
])

CHARACTERS = pa.schema([
    pa.field("series", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("cluster_id", pa.int64(), nullable=False),
    pa.field("character", pa.string(), nullable=False),  # a reference name, a label, or unknown_<n>
    pa.field("named", pa.bool_(), nullable=False),
    pa.field("source", pa.string()),  # "reference" | "label" | "unknown"
    pa.field("closest", pa.string()),  # closest reference character, even when unnamed
    pa.field("similarity", pa.float64()),  # median best score of its tracklets for ``closest``
    pa.field("n_tracklets", pa.int64()),
    pa.field("best_tracklet_id", pa.string()),
    # how sure the name is: share of its tracklets that pass the calibrated test for it on their own, their
    # median lead over the runner-up (unknown: similarity - threshold, negative = missed by), the threshold
    pa.field("confidence", pa.float64()),
    pa.field("margin", pa.float64()),
    pa.field("threshold", pa.float64()),
    pa.field("n_passed", pa.int64()),
])

APPEARANCES = pa.schema([
    pa.field("series", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("episode", pa.string(), nullable=False),
    pa.field("character", pa.string(), nullable=False),
    pa.field("cluster_id", pa.int64()),
    pa.field("tracklet_id", pa.string(), nullable=False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
])

QUALITY = pa.schema([
    pa.field("series", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("metric", pa.string(), nullable=False),
    pa.field("value", pa.float64()),
    pa.field("character", pa.string()),  # per-character metrics (screen-time error)
])

IDENTITY_RUNS = pa.schema([
    pa.field("series", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("parameters", pa.string()),
    pa.field("model", pa.string()),
    pa.field("mode", pa.string()),  # "full" | "incremental"
    pa.field("n_tracklets", pa.int64()),
    pa.field("n_clusters", pa.int64()),
    pa.field("seconds", pa.float64()),
    pa.field("created_at", pa.timestamp("us", tz="UTC")),
    # the naming rule and what it rests on (anitrack.identity.calibration)
    pa.field("space", pa.string()),  # "centred" | "whitened-<k>" | "ccip"
    pa.field("name_threshold", pa.float64()),  # the median of the per-character thresholds
    pa.field("character_thresholds", pa.string()),  # JSON {"threshold": {name: t}}
    pa.field("name_margin", pa.float64()),
    pa.field("max_false_rate", pa.float64()),
    pa.field("calibration", pa.string()),  # "gallery" | "default" | "published" | "fixed"
    pa.field("n_genuine", pa.int64()),  # held-out same-character reference pairs
    pa.field("n_impostor", pa.int64()),  # held-out open-set impostor trials
    pa.field("genuine_accept", pa.float64()),  # share of held-out references named right at the threshold
    pa.field("calibrated_false_rate", pa.float64()),  # share of impostor trials named at the threshold
    pa.field("genuine_pair_low", pa.float64()),  # 10th percentile of genuine pair scores: looser clusters split
    pa.field("published_threshold", pa.float64()),  # CCIP: 1 - the model's own threshold
    pa.field("calibration_warning", pa.string()),
    # JSON: what each source of evidence gave (held-out references, _noise references, genuine matches and
    # the floor they set, tracklet pairs on screen together and the thresholds they raised) and what the
    # false-name rate was measured on
    pa.field("calibration_evidence", pa.string()),
])

# The space an identity run compared vectors in (cosine embedders): incremental runs reuse it.
IDENTITY_SPACES = pa.schema([
    pa.field("series", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("model", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("dim", pa.int32()),
    pa.field("mean", pa.list_(pa.float32())),  # subtracted for clustering; null: the embedder's raw cosine
    pa.field("naming_mean", pa.list_(pa.float32())),
    pa.field("projection", pa.list_(pa.float32())),  # (dim x projection_dims) row-major, naming; null: none
    pa.field("projection_dims", pa.int32()),
])

LABELS = pa.schema([
    pa.field("series", pa.string(), nullable=False),
    pa.field("tracklet_id", pa.string(), nullable=False),
    pa.field("action", pa.string(), nullable=False),  # "name" | "split" | "merge" | "noise" | "reference"
    pa.field("value", pa.string(), nullable=False),  # name ("" clears it), split / merge group, "1": noise
    pa.field("created_at", pa.timestamp("us", tz="UTC")),  # one correction's rows share it (undo)
    pa.field("crop_id", pa.string()),  # reference: the crop that joins the gallery
])

UNKNOWN_REGISTRY = pa.schema([
    pa.field("series", pa.string(), nullable=False),
    pa.field("tracklet_id", pa.string(), nullable=False),
    pa.field("n", pa.int64(), nullable=False),
])

TABLES: dict[str, pa.Schema] = {
    "episodes": EPISODES,
    "shots": SHOTS,
    "detections": DETECTIONS,
    "tracklets": TRACKLETS,
    "crops": CROPS,
    "embeddings": EMBEDDINGS,
    "frame_hashes": FRAME_HASHES,
    "segments": SEGMENTS,
    "segment_labels": SEGMENT_LABELS,
    "stage_runs": STAGE_RUNS,
    "references": REFERENCES,
    "clusters": CLUSTERS,
    "characters": CHARACTERS,
    "appearances": APPEARANCES,
    "quality": QUALITY,
    "identity_runs": IDENTITY_RUNS,
    "identity_spaces": IDENTITY_SPACES,
    "labels": LABELS,
    "unknown_registry": UNKNOWN_REGISTRY,
}

IDENTITY_TABLES = ("clusters", "characters", "appearances", "quality", "identity_runs", "identity_spaces")

# Hive partition keys per table; every key is a string (pinned, never auto-cast).
PARTITIONS: dict[str, tuple[str, ...]] = {name: ("series", "episode") for name in TABLES}
PARTITIONS["references"] = ("series",)
for _name in IDENTITY_TABLES:
    PARTITIONS[_name] = ("series", "run")
PARTITIONS["labels"] = ("series",)
PARTITIONS["unknown_registry"] = ("series",)
PARTITIONS["segment_labels"] = ("series",)


def with_version(schema: pa.Schema) -> pa.Schema:
    """Schema carrying the version marker written into Parquet metadata."""
    return schema.with_metadata({b"anitrack.schema_version": SCHEMA_VERSION.encode()})
