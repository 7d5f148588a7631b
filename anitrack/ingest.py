"""Ingestion without the orchestrator: find episodes, fingerprint, run each in a child process.

Decoding untrusted video can crash the interpreter (PyAV on truncated files),
so every episode runs in its own child process (``python -m anitrack.worker``);
a crash fails that episode only. The child commits the stage tables; the
``episodes`` row is committed last and carries the episode's fingerprint, so
an episode is skipped only when every stage of it committed.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import PurePosixPath
from typing import Callable

import fsspec
import pyarrow as pa

from anitrack.config import canonical
from anitrack.detect import detector_id, face_finder_id
from anitrack.embed import embedder_id
from anitrack.worker import EpisodeSpec, episode_row
from anitrack.lake import Lake, slug
from anitrack.shots import model_version as shot_model_version
from anitrack.stages import STAGE_TABLES, STAGES, needs_frames
from anitrack.segments import HASH as FRAME_HASH
from anitrack.video import VIDEO_EXTENSIONS

PIPELINE_VERSION = "1"  # bump when a stage's output for the same input and parameters changes


class SourceError(RuntimeError):
    """The source cannot be listed; one line for the user."""


def discover(source: str) -> list[str]:
    """Video files named by a file, a directory, a glob or any fsspec URL, sorted."""
    try:
        fs, path = fsspec.core.url_to_fs(source)
    except (ValueError, ImportError) as exc:
        raise SourceError(f"cannot open source {source!r}: {exc}") from None
    try:
        if any(ch in path for ch in "*?["):
            paths = fs.glob(path)
        elif fs.isdir(path):
            paths = [p for p in fs.ls(path, detail=False) if fs.isfile(p)]
        elif fs.isfile(path):
            return [source]
        else:
            raise SourceError(f"source {source!r} does not exist")
    except (OSError, PermissionError) as exc:
        raise SourceError(f"cannot list source {source!r}: {exc}") from None
    videos = sorted(p for p in paths if p.lower().endswith(VIDEO_EXTENSIONS))
    if not videos:
        raise SourceError(f"no video files ({', '.join(VIDEO_EXTENSIONS[:4])}, ...) in {source!r}")
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    return [p if local else fs.unstrip_protocol(p) for p in videos]


def default_series(source: str) -> str:
    """The source folder's name (or the file's folder for a single file / glob)."""
    path = PurePosixPath(fsspec.core.url_to_fs(source)[1].rstrip("/"))
    if any(ch in str(path) for ch in "*?[") or PurePosixPath(path).suffix.lower() in VIDEO_EXTENSIONS:
        path = path.parent
    return slug(path.name or "series")


def episode_name(uri: str) -> str:
    return slug(PurePosixPath(uri.rstrip("/")).stem)


def _digest(*parts) -> str:
    return hashlib.sha256(canonical(parts).encode()).hexdigest()[:24]


def model_ids(config: dict) -> dict[str, str]:
    """Model identities for fingerprints, found without loading any model."""
    ids = {"shots": shot_model_version(config["shots"]["backend"]), "detect": detector_id(config)}
    ids["embed"] = embedder_id(config)
    ids["faces"] = face_finder_id(config)
    ids["hashes"] = FRAME_HASH
    return ids


def fingerprints(content_hash: str, config: dict, models: dict[str, str]) -> dict[str, str]:
    """One fingerprint per stage table: input content, parameters, model, code, and upstream fingerprints."""
    fp = {}
    for stage in STAGES:
        inputs = [fp[t] for t in stage.upstream] or [content_hash]
        settings = {k: v for k, v in config[stage.section].items()
                    if k not in stage.how_not_what and (k, v) not in stage.added}
        model = [models[stage.model]] if stage.model and models.get(stage.model) else []
        fp[stage.table] = _digest(stage.table, *inputs, settings, *model, PIPELINE_VERSION)
    fp["episodes"] = _digest("episode", *[fp[t] for t in STAGE_TABLES])
    return fp


def stale_tables(lake: Lake, keys: dict, fps: dict[str, str]) -> list[str]:
    """Stage tables whose committed fingerprint differs from ``fps`` (they must be recomputed)."""
    return [t for t in STAGE_TABLES if lake.fingerprint(t, **keys) != fps[t]]


def ingest_episode(spec: EpisodeSpec, progress: Callable[[int, int], None] | None = None,
                   timeout_s: float | None = None) -> dict:
    """Hash, skip if unchanged or already ingested under another name, else run the child process.

    ``spec.expect_hash`` (backfill): the episode's recorded content. The source is read only
    when a stage needs frames and must still hold that content; a failure then
    leaves the lake untouched instead of recording a failed episode.
    """
    from anitrack.video import content_hash

    lake = Lake(spec.lake)
    started = time.perf_counter()
    keys = {"series": spec.series, "episode": spec.episode}
    expect_hash = spec.expect_hash
    record = expect_hash is None
    models = model_ids(spec.config)
    if expect_hash and not needs_frames(stale_tables(lake, keys, fingerprints(expect_hash, spec.config, models))):
        digest, size = expect_hash, 0  # vectors only: recomputed from stored crops, the video is not read
    else:
        try:
            digest, size = content_hash(spec.uri)
        except (OSError, FileNotFoundError) as exc:
            return _failed(lake, spec, "", 0, f"cannot read {spec.uri}: {exc}", started, record)
        if expect_hash and digest != expect_hash:
            return _failed(lake, spec, digest, size, f"source {spec.uri} changed since it was ingested "
                           f"(ingest it again instead of a backfill)", started, record)
    prints = fingerprints(digest, spec.config, models)
    note, shown, rows = None, spec.episode, []
    if record:
        rows = lake.read("episodes", spec.series).to_pylist()
        twin = _same_content(rows, spec, digest)
        if twin is not None:  # already ingested under another name: keep that episode, do not duplicate it
            note = f"renamed from {twin['episode']}"
            spec = EpisodeSpec(**dict(asdict(spec), episode=twin["episode"]))
            keys["episode"] = twin["episode"]
    if lake.fingerprint("episodes", **keys) == prints["episodes"]:
        for row in rows:  # a renamed or moved file: backfills read the source from where it is now
            if row["episode"] == keys["episode"] and row["uri"] != spec.uri:
                lake.commit("episodes", pa.Table.from_pylist([dict(row, uri=spec.uri)]),
                            fingerprint=prints["episodes"], run_id=spec.run_id, **keys)
        return {"episode": shown, "status": "skipped", "error": None, "seconds": 0.0, "uri": spec.uri,
                "note": note}
    stale = stale_tables(lake, keys, prints)
    local, cleanup = _local_copy(spec.uri) if needs_frames(stale) else (spec.uri, lambda: None)
    try:
        job = dict(asdict(spec), video=local, content_hash=digest, size=size, fingerprints=prints, stale=stale)
        ok, message = _run_here(job, progress) if spec.in_process else _run_child(job, progress, timeout_s)
    finally:
        cleanup()
    if not ok:
        return _failed(lake, spec, digest, size, message, started, record)
    result = json.loads(message)
    result.update(episode=spec.episode, uri=spec.uri, seconds=time.perf_counter() - started, note=note)
    return result


def _same_content(rows: list[dict], spec: EpisodeSpec, digest: str) -> dict | None:
    """The ok episode of the series' ``rows`` holding exactly this file content under another name, if any."""
    if any(r["episode"] == spec.episode and r["content_hash"] == digest for r in rows):
        return None
    return next((r for r in rows if r["status"] == "ok" and r["content_hash"] == digest), None)


def _failed(lake: Lake, spec: EpisodeSpec, digest: str, size: int, error: str, started: float,
            record: bool = True) -> dict:
    if record:
        row = episode_row(spec, digest, size, "failed", error)
        lake.commit("episodes", pa.Table.from_pylist([row]), fingerprint="failed", run_id=spec.run_id,
                    series=spec.series, episode=spec.episode)
    return {"episode": spec.episode, "status": "failed", "error": error, "uri": spec.uri,
            "seconds": time.perf_counter() - started}


def _local_copy(uri: str) -> tuple[str, Callable[[], None]]:
    """PyAV reads local files; an episode on any fsspec URL (memory://, s3://, ...) is copied to a temporary file."""
    if "://" not in uri or uri.startswith("file://"):
        return uri, lambda: None
    fd, path = tempfile.mkstemp(suffix=PurePosixPath(uri).suffix)
    with os.fdopen(fd, "wb") as out, fsspec.open(uri, "rb") as src:
        while block := src.read(1 << 22):
            out.write(block)
    return path, lambda: os.unlink(path)


def _run_here(job: dict, progress) -> tuple[bool, str]:
    """Run one episode in this process, reusing its models; (ok, result JSON or one-line error)."""
    from anitrack.worker import run_episode

    try:
        return True, json.dumps(run_episode(job, progress, cached=True))
    except Exception as exc:  # noqa: BLE001 - a failed episode is data, like a failed child process
        return False, (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _run_child(job: dict, progress, timeout_s) -> tuple[bool, str]:
    """Run one episode in ``python -m anitrack.worker``; (ok, result JSON or one-line error)."""
    # OpenMP threads that spin while they wait take cores from the detector's processes beside them
    # (about 4% of an episode's CPU on 2 cores)
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(job["threads"])}
    proc = subprocess.Popen([sys.executable, "-m", "anitrack.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    errors: list[str] = []

    def read_stderr():
        for line in proc.stderr:
            if line.startswith("@progress "):
                numbers = line.split()[1:3]
                if progress and len(numbers) == 2 and all(n.isdigit() for n in numbers):
                    progress(int(numbers[0]), int(numbers[1]))
            elif line.strip():
                errors.append(line.rstrip())

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        proc.stdin.write(json.dumps(job))
        proc.stdin.close()
    except BrokenPipeError:  # the child died before reading its job; its exit code tells
        pass
    timer = threading.Timer(timeout_s, proc.kill) if timeout_s else None
    if timer:
        timer.start()
    out = proc.stdout.read()
    proc.wait()
    if timer:
        timer.cancel()
    reader.join(timeout=10)
    if timeout_s and proc.returncode == -9 and not out:
        return False, f"timed out after {timeout_s:.0f} s"
    if proc.returncode == 0:
        return True, out.strip().splitlines()[-1]
    reasons = [e for e in errors if e.startswith("@error ")]
    if reasons:
        return False, reasons[-1][len("@error "):]
    if proc.returncode < 0:
        return False, f"decoder process crashed (signal {-proc.returncode})"
    tail = errors[-1] if errors else f"exit code {proc.returncode}"
    return False, f"episode process failed: {tail[:200]}"


__all__ = ["SourceError", "discover", "default_series", "episode_name",
           "fingerprints", "ingest_episode", "model_ids", "stale_tables"]
