"""Video input: probing, hashing and streaming decode with presentation timestamps; H.264 output.

Frames are streamed one at a time (a 22-minute 480p episode is ~29 GB raw), and
each frame carries its own timestamp from the container's PTS, because anime
releases are often variable frame rate and ``index / fps`` drifts.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import av
import fsspec
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".ts", ".m2ts", ".flv", ".wmv", ".mpg", ".mpeg")


class VideoError(RuntimeError):
    """A file that cannot be read as video; the message is one line for the user."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    n_frames: int  # container's count; 0 when unknown
    duration_s: float
    codec: str


@dataclass(frozen=True)
class Frame:
    index: int
    t_s: float
    rgb: np.ndarray


def content_hash(uri: str, chunk: int = 1 << 22) -> tuple[str, int]:
    """BLAKE2b of the file's bytes (renames keep it, edits change it) and its size."""
    digest = hashlib.blake2b(digest_size=16)
    size = 0
    with fsspec.open(uri, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


@dataclass(frozen=True)
class Numbering:
    """Season and episode read from a release's file name; ``label`` says what was read, or why nothing."""
    season: int | None
    episode: int | None
    label: str


def release_numbering(file_name: str) -> Numbering:
    """Season and episode of a release name, read by anitopy (a parser kept for anime release names) rather
    than a regex: "[Group] Show - 01 [1080p HEVC 10bit].mkv" is episode 1, not 10; "Show S01E05" season 1,
    episode 5; "Show - 05v2" episode 5. A name with no episode number (or a special such as 12.5) gets
    ``episode`` None and a label that says so."""
    import anitopy

    parsed = anitopy.parse(file_name) or {}
    season_text = parsed.get("anime_season")
    season_text = season_text[0] if isinstance(season_text, list) else season_text
    season = int(season_text) if season_text and str(season_text).isdigit() else None
    raw = parsed.get("episode_number")
    numbers = raw if isinstance(raw, list) else [raw] if raw else []
    if not numbers:
        return Numbering(season, None, "no episode number in the name")
    first = str(numbers[0])
    shown = (f"S{season:02d}" if season is not None else "") + "E" + "-".join(str(n) for n in numbers)
    if not first.isdigit():
        return Numbering(season, None, f"{shown} (not a whole episode number)")
    return Numbering(season, int(first), shown)


def _open(uri: str):
    try:
        handle = fsspec.open(uri, "rb").open()
    except FileNotFoundError:
        raise VideoError(f"{uri}: file not found") from None
    except OSError as exc:
        raise VideoError(f"{uri}: cannot open ({exc})") from None
    try:
        container = av.open(handle, mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        handle.close()
        raise VideoError(f"{uri}: not a readable video ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        handle.close()
        raise VideoError(f"{uri}: has no video stream")
    return container, handle


def _reason(exc: Exception) -> str:
    """FFmpeg's own words, without the errno and the repeated file name."""
    text = getattr(exc, "strerror", None) or (str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    return (text or type(exc).__name__)[:160]


def probe(uri: str) -> VideoInfo:
    container, handle = _open(uri)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 24.0
        duration = float(stream.duration * stream.time_base) if stream.duration else (
            container.duration / 1e6 if container.duration else 0.0)
        return VideoInfo(stream.codec_context.width, stream.codec_context.height, fps,
                         int(stream.frames or 0), duration, stream.codec_context.name)
    finally:
        container.close()
        handle.close()


def iter_frames(uri: str) -> Iterator[Frame]:
    """Decode every frame once, in presentation order, as RGB with its PTS in seconds."""
    container, handle = _open(uri)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        base = stream.time_base
        start = stream.start_time or 0
        fps = float(stream.average_rate or stream.guessed_rate or 24.0)
        index = 0
        try:
            for frame in container.decode(stream):
                if frame.pts is not None and base is not None:
                    t_s = float((frame.pts - start) * base)
                else:
                    t_s = index / fps
                yield Frame(index, t_s, frame.to_ndarray(format="rgb24"))
                index += 1
        except av.error.FFmpegError as exc:
            if index == 0:
                raise VideoError(f"{uri}: cannot decode ({_reason(exc)})") from None
            raise VideoError(f"{uri}: decoding stopped at frame {index} ({_reason(exc)})") from None
        if index == 0:
            raise VideoError(f"{uri}: contains no decodable frames")
        expected = int(stream.frames or 0)
        if expected and index < expected - max(2, expected // 100):
            raise VideoError(f"{uri}: truncated (decoded {index} of {expected} frames)")
    finally:
        container.close()
        handle.close()


def h264_stream(container, rate, width: int, height: int, crf: int = 23, threads: int = 0):
    """Add a yuv420p H.264 stream whose bitstream depends only on the frames written to it.

    x264's macroblock-tree rate control, on its AVX-512 code path, read uninitialised memory at
    widths such as 848 and 854 px (not at 640): identical frames encoded to different files
    depending on what the heap held. With mbtree off the output is fixed (and equal to AVX2's).
    """
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.time_base = 1 / rate
    stream.codec_context.thread_count = threads
    stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0"}
    return stream
