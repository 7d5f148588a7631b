"""Exports out of the lake: subtitles of who is on screen, face-crop datasets, single-character clips, tables.

Everything reads the sandboxed DuckDB views (``anitrack.sql``) of the current identity run. Files are
written under a temporary name and renamed into place, so an interrupted export never leaves a half file
where the user asked for one.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pyarrow as pa

from anitrack.queries import QUERIES, check_names
from anitrack.sql import run_query


class ExportError(RuntimeError):
    """An export that cannot be done; one line for the user."""


# -- writing -------------------------------------------------------------------
def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")


def save_table(table: pa.Table, path: Path, fmt: str) -> None:
    """Write a table as csv, json (one object a line) or parquet; atomically."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt == "csv" and any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in table.schema):
        raise ExportError("this table has binary columns (images); use --format parquet")
    tmp = _partial(path)
    try:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        elif fmt == "csv":
            pacsv.write_csv(table, tmp)
        elif fmt == "json":
            with open(tmp, "w") as fh:
                for row in table.to_pylist():
                    fh.write(json.dumps(row, default=str) + "\n")
        else:
            raise ExportError(f"cannot write format {fmt!r} to a file (csv, json or parquet)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _replace_dir(staged: Path, out: Path) -> None:
    """Move a finished folder into place; an existing one is removed only if an export wrote it."""
    if out.exists():
        if out.is_dir() and (any(out.glob("labels.*")) or not any(out.iterdir())):
            shutil.rmtree(out)
        else:
            raise ExportError(f"refusing to replace {out}: it is not an anitrack export")
    os.replace(staged, out)


def safe_name(name: str) -> str:
    """A character name usable as one path component."""
    cleaned = "".join("_" if c in '/\\:*?"<>|\0' or ord(c) < 32 else c for c in name).strip(" .")
    return cleaned or "_"


# -- subtitles -----------------------------------------------------------------
# ASS colours are &HAABBGGRR; a palette of distinct, readable colours, one per character
_PALETTE = ["FFD34A", "4AB8FF", "FF6B8B", "7CE07C", "C58CFF", "FFA54A", "4AE0D0", "F0F0F0", "FF8CE0", "B8D94A"]


def appearance_rows(con, series: str, episode: str) -> list[dict]:
    """The current run's appearances of one episode, in time order (one subtitle event each)."""
    check_names(con, series, episode)
    rows = run_query(con, """
        SELECT character, tracklet_id, start_s, end_s FROM appearances
        WHERE series = $series AND episode = $episode ORDER BY start_s, end_s, character, tracklet_id""",
                     params={"series": series, "episode": episode}).to_pylist()
    if not rows:
        raise ExportError(f"episode {episode!r} of {series!r} has no appearances")
    return rows


def _ass_time(t: float) -> str:
    cs = int(round(t * 100))
    return f"{cs // 360000}:{cs // 6000 % 60:02d}:{cs // 100 % 60:02d}.{cs % 100:02d}"


def _srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def _ass_text(name: str) -> str:
    return name.replace("\\", "/").replace("{", "(").replace("}", ")").replace("\n", " ")


def segment_rows(con, series: str, episode: str) -> list[dict]:
    """The episode's openings, endings, recaps and previews (left out of screen time), in time order."""
    return run_query(con, "SELECT kind, start_s, end_s FROM segments WHERE series = $s AND episode = $e "
                          "ORDER BY start_s", params={"s": series, "e": episode}).to_pylist()


def subtitles(con, series: str, episode: str, fmt: str = "ass") -> str:
    """Subtitle text: one event per appearance naming the character (ASS: one coloured style per character),
    and one per segment (``[opening]``, top right) so a viewer sees which seconds screen time leaves out."""
    rows = appearance_rows(con, series, episode)
    marks = segment_rows(con, series, episode)
    if fmt == "srt":
        events = sorted([(r["start_s"], r["end_s"], r["character"]) for r in rows]
                        + [(m["start_s"], m["end_s"], f"[{m['kind']}]") for m in marks])
        return "".join(f"{i}\n{_srt_time(s)} --> {_srt_time(e)}\n{text}\n\n" for i, (s, e, text) in enumerate(events, 1))
    if fmt != "ass":
        raise ExportError(f"unknown subtitle format {fmt!r} (ass or srt)")
    size = run_query(con, "SELECT width, height FROM episodes WHERE series = $s AND episode = $e",
                     params={"s": series, "e": episode}).to_pylist()
    width, height = (size[0]["width"] or 854, size[0]["height"] or 480) if size else (854, 480)
    names = sorted({r["character"] for r in rows})
    style = {n: f"{i:02d} {_ass_text(n).replace(',', ' ')}" for i, n in enumerate(names)}
    fontsize = max(16, height // 20)
    lines = ["[Script Info]", f"Title: {series} {episode}", "ScriptType: v4.00+", f"PlayResX: {width}",
             f"PlayResY: {height}", "WrapStyle: 0", "ScaledBorderAndShadow: yes", "", "[V4+ Styles]",
             "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, "
             "Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, "
             "Alignment, MarginL, MarginR, MarginV, Encoding"]
    for i, n in enumerate(names):
        rgb = _PALETTE[i % len(_PALETTE)]
        bgr = rgb[4:6] + rgb[2:4] + rgb[0:2]
        lines.append(f"Style: {style[n]},Arial,{fontsize},&H00{bgr},&H000000FF,&H00101010,&H80000000,"
                     "-1,0,0,0,100,100,0,0,1,2,1,7,20,20,20,1")
    if marks:
        lines.append(f"Style: segment,Arial,{fontsize},&H00A8D9FF,&H000000FF,&H00101010,&H80000000,"
                     "-1,0,0,0,100,100,0,0,1,2,1,9,20,20,20,1")
    lines += ["", "[Events]", "Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text"]
    for m in marks:
        lines.append(f"Dialogue: 1,{_ass_time(m['start_s'])},{_ass_time(m['end_s'])},segment,{m['kind']},0,0,0,,"
                     f"[{m['kind']}]")
    for r in rows:
        lines.append(f"Dialogue: 0,{_ass_time(r['start_s'])},{_ass_time(r['end_s'])},{style[r['character']]},"
                     f"{r['tracklet_id']},0,0,0,,{_ass_text(r['character'])}")
    return "\n".join(lines) + "\n"


def write_subtitles(con, series: str, episode: str, fmt: str, out: Path) -> int:
    """Write the subtitle file atomically; returns the number of events."""
    text = subtitles(con, series, episode, fmt)
    tmp = _partial(out)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return text.count("\nDialogue:") if fmt == "ass" else text.count(" --> ")


# -- datasets ------------------------------------------------------------------
_EXT = {"webp": "webp", "png": "png", "jpeg": "jpg", "jpg": "jpg"}


def dataset_query(con, series: str, character: str | None = None, min_size: int = 0,
                  per_tracklet: int | None = None):
    """Face crops of identified tracklets (``appearances``), at most N per tracklet (the best face scores),
    smaller sides below ``min_size`` left out; a DuckDB relation to read in batches."""
    check_names(con, series, character=character)
    params = {"series": series, "min_size": int(min_size), "per": per_tracklet or 2 ** 31 - 1}
    where = ""
    if character is not None:
        where, params["character"] = "AND a.character = $character", character
    return con.sql(f"""
        SELECT a.character, c.tracklet_id, c.episode, c.crop_id, c.frame, c.image_format, c.image,
               c.width, c.height
        FROM crops c JOIN appearances a
          ON a.series = c.series AND a.episode = c.episode AND a.tracklet_id = c.tracklet_id
        WHERE c.series = $series AND least(c.width, c.height) >= $min_size {where}
        QUALIFY row_number() OVER (PARTITION BY c.episode, c.tracklet_id
                                   ORDER BY c.face_score DESC NULLS LAST, c.frame) <= $per
        ORDER BY a.character, c.episode, c.tracklet_id, c.frame""", params=params)


def export_dataset(con, series: str, out: Path, fmt: str = "imagefolder", character: str | None = None,
                   min_size: int = 0, per_tracklet: int | None = None) -> dict[str, int]:
    """Write crops per character: ``out/<character>/<tracklet>_<k>.<ext>`` plus ``labels.csv``, or one
    Parquet file (character, tracklet_id, episode, image, width, height). Returns crops per character."""
    import pyarrow.parquet as pq

    if fmt not in ("imagefolder", "parquet"):
        raise ExportError(f"unknown dataset format {fmt!r} (imagefolder or parquet)")
    result = dataset_query(con, series, character, min_size, per_tracklet)
    reader = result.to_arrow_reader(256)
    nth: dict[str, int] = {}
    counts: dict[str, int] = {}
    staged = _partial(out)
    try:
        if fmt == "parquet":
            with pq.ParquetWriter(staged, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    for name in batch.column("character").to_pylist():
                        counts[name] = counts.get(name, 0) + 1
            if not counts:
                raise ExportError("no crops match (check --character and --min-size)")
            if out.exists() and not out.is_file():
                raise ExportError(f"{out} is not a file")
            os.replace(staged, out)
            return counts
        staged.mkdir(parents=True)
        labels = []
        for batch in reader:
            for r in batch.to_pylist():
                counts[r["character"]] = counts.get(r["character"], 0) + 1
                k = nth[r["tracklet_id"]] = nth.get(r["tracklet_id"], 0) + 1
                folder = staged / safe_name(r["character"])
                folder.mkdir(exist_ok=True)
                name = f"{safe_name(r['tracklet_id'])}_{k:03d}.{_EXT.get(r['image_format'] or '', 'png')}"
                (folder / name).write_bytes(r["image"])
                labels.append({"file": f"{folder.name}/{name}", "character": r["character"],
                               "tracklet_id": r["tracklet_id"], "episode": r["episode"], "crop_id": r["crop_id"],
                               "width": r["width"], "height": r["height"]})
        if not counts:
            raise ExportError("no crops match (check --character and --min-size)")
        save_table(pa.Table.from_pylist(labels), staged / "labels.csv", "csv")
        _replace_dir(staged, out)
        return counts
    finally:
        if staged.is_dir():
            shutil.rmtree(staged)
        staged.unlink(missing_ok=True)


# -- single-character clips ----------------------------------------------------
def single_character_shots(con, series: str, character: str | None = None, min_coverage: float = 0.5) -> pa.Table:
    """Shots with exactly one character on screen, for at least ``min_coverage`` of the shot (talking heads);
    ``segment`` names the opening, ending, recap or preview a shot lies in (empty for the story)."""
    check_names(con, series, character=character)
    params = {"series": series, "cover": float(min_coverage)}
    where = ""
    if character is not None:
        where, params["character"] = "WHERE character = $character", character
    return run_query(con, f"""
        WITH timeline AS ({QUERIES['timeline-shots'].sql}),
        single AS (
            SELECT episode, shot_id, start_s, end_s, any_value(character) AS character
            FROM timeline GROUP BY episode, shot_id, start_s, end_s
            HAVING count(*) = 1 AND max(seconds_in_shot) >= $cover * (end_s - start_s))
        SELECT $series AS series, s.episode, s.shot_id, s.start_s, s.end_s, s.character,
               sh.start_frame, sh.end_frame,
               (SELECT string_agg(DISTINCT g.kind, ',') FROM segments g  -- an opening's shot, a recap's, ...
                WHERE g.series = $series AND g.episode = s.episode AND g.start_s < s.end_s AND g.end_s > s.start_s)
               AS segment
        FROM single s JOIN shots sh ON sh.series = $series AND sh.episode = s.episode AND sh.shot_id = s.shot_id
        {where}
        ORDER BY s.character, s.episode, s.shot_id""", params=params)


def cut_clips(con, clips: pa.Table, out: Path) -> list[Path]:
    """Cut each clip from its episode's source video (``episodes.uri``) into
    ``out/<character>/<episode>_s<shot>.mp4``: frames [start_frame, end_frame), H.264 at the episode's rate."""
    from fractions import Fraction

    import av
    import cv2

    from anitrack.video import VideoError, h264_stream, iter_frames

    by_episode: dict[str, list[dict]] = {}
    for r in clips.to_pylist():
        by_episode.setdefault(r["episode"], []).append(r)
    written = []
    for episode, rows in sorted(by_episode.items()):
        info = run_query(con, "SELECT uri, fps FROM episodes WHERE series = $s AND episode = $e",
                         params={"s": rows[0]["series"], "e": episode}).to_pylist()
        uri = info[0]["uri"] if info else None
        if not uri:
            raise ExportError(f"episode {episode!r} has no source video recorded")
        rate = Fraction(info[0]["fps"] or 24.0).limit_denominator(1001)
        rows.sort(key=lambda r: r["start_frame"])
        pending, current, container, stream = list(rows), None, None, None
        try:
            for frame in iter_frames(uri):
                if current is not None and frame.index >= current["end_frame"]:
                    container.mux(stream.encode(None))
                    container.close()
                    current = container = None
                if current is None and pending and frame.index >= pending[0]["start_frame"]:
                    current = pending.pop(0)
                    path = out / safe_name(current["character"]) / f"{safe_name(episode)}_s{current['shot_id']}.mp4"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    written.append(path)
                    container = av.open(str(path), mode="w")
                    h, w = frame.rgb.shape[:2]
                    stream = h264_stream(container, rate, w - w % 2, h - h % 2, crf=20)
                    first = frame.index
                if current is not None:
                    rgb = frame.rgb[:stream.height, :stream.width]
                    vf = av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
                    vf.pts, vf.time_base = frame.index - first, stream.codec_context.time_base
                    container.mux(stream.encode(vf))
                if current is None and not pending:
                    break
            if current is not None:
                container.mux(stream.encode(None))
        except VideoError as exc:
            raise ExportError(f"cannot cut clips of {episode}: {exc}") from None
        finally:
            if container is not None:
                container.close()
    return written


def export_clips(con, series: str, out: Path, fmt: str = "csv", character: str | None = None,
                 min_coverage: float = 0.5, cut: bool = False) -> int:
    """Write the single-character shots as a table file; with ``cut``, ``out`` is a folder holding the
    clips and ``labels.<fmt>``. Returns the number of clips."""
    clips = single_character_shots(con, series, character, min_coverage)
    if clips.num_rows == 0:
        raise ExportError("no single-character shots match")
    if not cut:
        save_table(clips, out, fmt)
        return clips.num_rows
    staged = _partial(out)
    try:
        cut_clips(con, clips, staged)
        save_table(clips, staged / f"labels.{fmt}", fmt)
        _replace_dir(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return clips.num_rows


# -- tables --------------------------------------------------------------------
def view_names(con) -> list[str]:
    """Every table and view a user can export (the lake tables and the identity views)."""
    return sorted(r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND view_name NOT LIKE '\\_%' ESCAPE '\\'"
    ).fetchall())


def table_rows(con, name: str, series: str | None = None) -> pa.Table:
    """All rows of one view (of one series when given)."""
    names = view_names(con)
    if name not in names:
        raise ExportError(f"unknown table {name!r}; tables: {', '.join(names)}")
    if series is None:
        return run_query(con, f'SELECT * FROM "{name}"')
    check_names(con, series, identity=False)
    columns = [d[0] for d in con.execute(f'DESCRIBE "{name}"').fetchall()]
    if "series" not in columns:
        raise ExportError(f"table {name} has no series column; leave out --series")
    return run_query(con, f'SELECT * FROM "{name}" WHERE series = $series', params={"series": series})


__all__ = ["ExportError", "save_table", "subtitles", "export_dataset", "single_character_shots", "cut_clips",
           "table_rows", "view_names", "safe_name"]
