"""Backfill: re-run a series with changed parameters, recomputing only what the change touches.

The plan compares, per episode, the fingerprints the new parameters give with the
committed ones (the fingerprints ingestion skips by), so a clustering or naming
change recomputes identity only and decodes nothing, an embedding change
re-embeds the stored crops, and a detection change recomputes detection and
everything downstream for the selected episodes. The series' parameters are the
ones it was last run with: per episode from ``stage_runs`` (episodes may differ
after a partial backfill), for identity from the current identity run. Every
identity run stays in the lake (``<table>_all``, ``anitrack sql --run``).
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field

import pyarrow as pa

from anitrack.config import defaults, parse_sets, resolve_profile, set_value
from anitrack.ingest import fingerprints, model_ids, stale_tables
from anitrack.worker import EpisodeSpec
from anitrack.lake import Lake, new_run_id
from anitrack.identity.inputs import IDENTITY_SECTIONS, current_run, identity_config, latest_run_row
from anitrack.segments import segments_config
from anitrack.stages import STAGE_TABLES, STAGES, needs_frames

class BackfillError(ValueError):
    """Backfill input that matches nothing or cannot be planned; one line, exit code 2."""


@dataclass
class EpisodePlan:
    episode: str
    uri: str
    content_hash: str
    n_frames: int
    config: dict
    stale: list[str]  # stage tables to recompute


@dataclass
class Plan:
    lake: str
    series: str
    sets: list[str]
    profile: str
    episodes: list[EpisodePlan]  # the selected episodes
    identity_config: dict
    identity_changed: bool  # cluster / name parameters differ from the current identity run
    full: bool  # re-cluster from scratch (cluster parameters changed)
    n_episodes: int = 0  # ok episodes in the series: those not selected are reused as they are
    rates: dict[str, float] = field(default_factory=dict)  # stage -> seconds per frame, from stage_runs
    identity_seconds: float = 0.0
    run_id: str = field(default_factory=new_run_id)
    segments_config: dict = field(default_factory=dict)  # the series step's parameters after the change
    segments_changed: bool = False

    @property
    def recompute(self) -> list[EpisodePlan]:
        return [e for e in self.episodes if e.stale]

    @property
    def identity(self) -> bool:
        return self.identity_changed or bool(self.recompute)

    @property
    def todo(self) -> bool:
        """Anything to recompute: episodes, the segments step or identity."""
        return self.identity or self.segments_changed

    @property
    def frames_to_decode(self) -> int:
        return sum(e.n_frames for e in self.recompute if needs_frames(e.stale))

    def estimate_s(self) -> float:
        return sum(r["estimate_s"] for r in self.rows())

    def rows(self) -> list[dict]:
        """One row per stage: episode partitions recomputed / reused, frames decoded, estimated seconds."""
        decoding = [e for e in self.recompute if needs_frames(e.stale)]
        rows = [{"stage": "decode", "recompute": len(decoding), "reuse": self.n_episodes - len(decoding),
                 "frames_to_decode": self.frames_to_decode,
                 "estimate_s": self.rates.get("decode", 0.0) * self.frames_to_decode}]
        for table in STAGE_TABLES:
            todo = [e for e in self.episodes if table in e.stale]
            frames = sum(e.n_frames for e in todo)
            rows.append({"stage": table, "recompute": len(todo), "reuse": self.n_episodes - len(todo),
                         "frames_to_decode": 0, "estimate_s": self.rates.get(table, 0.0) * frames})
        mode = "full" if self.full else "incremental"
        rows.append({"stage": "segments", "recompute": int(self.segments_changed or bool(decoding)),
                     "reuse": int(not (self.segments_changed or decoding)), "frames_to_decode": 0, "estimate_s": 0.0})
        rows.append({"stage": f"identity ({mode})" if self.identity else "identity",
                     "recompute": int(self.identity), "reuse": int(not self.identity), "frames_to_decode": 0,
                     "estimate_s": self.identity_seconds if self.identity else 0.0})
        return rows


# -- what the series was last run with -------------------------------------------------
def episode_config(lake: Lake, series: str, episode: str, runs: list[dict]) -> dict:
    """The parameters an episode's committed stage partitions were made with (stage_runs rows that match)."""
    config = defaults()
    for stage in STAGES:
        fp = lake.fingerprint(stage.table, series=series, episode=episode)
        row = latest_run_row([r for r in runs if r["episode"] == episode and r["stage"] == stage.table
                       and r["fingerprint"] == fp])
        if row is not None:
            config[stage.section].update(json.loads(row["parameters"]))
    return config


def select_episodes(rows: list[dict], spec: str | None, series: str) -> list[dict]:
    """``1-12``, ``3``, ``episode_03,episode_05`` or a mix; every name must exist and something must match."""
    if spec is None:
        return rows
    listing = ", ".join(r["episode"] for r in rows) or "none"
    chosen = set()
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        numbers = re.fullmatch(r"(\d+)(?:-(\d+))?", token)
        if numbers:
            lo = int(numbers.group(1))
            hi = int(numbers.group(2) or lo)
            chosen |= {r["episode"] for r in rows if r["episode_number"] is not None
                       and lo <= r["episode_number"] <= hi}
        elif token in {r["episode"] for r in rows}:
            chosen.add(token)
        else:
            raise BackfillError(f"--episodes: no episode {token!r} in series {series} (episodes: {listing})")
    if not chosen:
        raise BackfillError(f"--episodes {spec!r} matches no episode of series {series} (episodes: {listing})")
    return [r for r in rows if r["episode"] in chosen]


# -- the plan ---------------------------------------------------------------------------
def plan(lake: Lake, series: str, sets: list[str], episodes: str | None = None) -> Plan:
    """What a backfill with ``sets`` (``stage.key=value``) would recompute and reuse, and how long it takes."""
    if series not in lake.series():
        raise BackfillError(f"series {series!r} is not in the lake (series: {', '.join(lake.series()) or 'none'})")
    pairs = parse_sets(sets)
    for key, value in pairs.items():  # validate every key and value once, before anything else
        set_value(defaults(), key, value)
    ok = [r for r in lake.read("episodes", series).to_pylist() if r["status"] == "ok"]
    if not ok:
        raise BackfillError(f"series {series!r} has no successfully ingested episode to backfill")
    ok.sort(key=lambda r: r["episode"])
    runs = lake.read("stage_runs", series).to_pylist()
    profile = ok[0]["profile"] or "offline"
    planned = []
    for row in select_episodes(ok, episodes, series):
        config = episode_config(lake, series, row["episode"], runs)
        for key, value in pairs.items():
            if key.split(".")[0] not in IDENTITY_SECTIONS:
                set_value(config, key, value)
        config = resolve_profile(config, row["profile"] or profile)
        fps = fingerprints(row["content_hash"], config, model_ids(config))
        stale = stale_tables(lake, {"series": series, "episode": row["episode"]}, fps)
        planned.append(EpisodePlan(row["episode"], row["uri"], row["content_hash"], row["n_frames"] or 0,
                                   config, stale))
    before = identity_config(lake, series, runs=runs)
    after = copy.deepcopy(before)
    for key, value in pairs.items():
        if key.split(".")[0] in IDENTITY_SECTIONS:
            set_value(after, key, value)
    has_run = bool(lake.commits("identity_runs", series))
    changed = {s for s in IDENTITY_SECTIONS if before[s] != after[s]}
    result = Plan(lake.url, series, list(sets), profile, planned, after, bool(changed) or not has_run,
                  "cluster" in changed or not has_run, n_episodes=len(ok))
    result.rates, result.identity_seconds = _rates(lake, series, ok, runs)
    before_segments = segments_config(lake, series)
    result.segments_config = dict(before_segments)
    for key, value in pairs.items():
        if key.split(".")[0] == "segments":
            holder = {"segments": result.segments_config}
            set_value(holder, key, value)
    result.segments_changed = result.segments_config != before_segments
    return result


def _rates(lake: Lake, series: str, episodes: list[dict], runs: list[dict]) -> tuple[dict[str, float], float]:
    """Seconds per frame of each stage when it was last computed, and the last identity run's seconds."""
    frames = {r["episode"]: r["n_frames"] or 0 for r in episodes}
    spent, seen = {}, {}
    for r in runs:
        if not r["reused"] and r["episode"] in frames and r["seconds"] is not None:
            spent[r["stage"]] = spent.get(r["stage"], 0.0) + r["seconds"]
            seen[r["stage"]] = seen.get(r["stage"], 0) + frames[r["episode"]]
    rates = {s: spent[s] / seen[s] for s in spent if seen[s]}
    identity = [r["seconds"] or 0.0 for r in lake.read("identity_runs", series).to_pylist()]
    return rates, (sum(identity) / len(identity) if identity else 0.0)


# -- running it (``flows.backfill`` maps the specs, then identifies) ----------------------
def episode_specs(plan_: Plan, threads: int, device: str = "cpu") -> list[EpisodeSpec]:
    """One spec per episode to recompute: its own parameters, and the content it must still have (an
    episode whose source is missing or changed fails alone and keeps its old partitions)."""
    specs = []
    for e in plan_.recompute:
        config = copy.deepcopy(e.config)
        config["detect"]["workers"] = threads
        specs.append(EpisodeSpec(uri=e.uri, series=plan_.series, episode=e.episode, lake=plan_.lake,
                                 config=config, profile=plan_.profile, device=device, threads=threads,
                                 run_id=plan_.run_id, expect_hash=e.content_hash))
    return specs


def needs_identity(plan_: Plan, results: list[dict]) -> bool:
    """A new identity run follows when its parameters changed or an episode's tracklets were recomputed."""
    return plan_.identity_changed or any(r["status"] == "ok" for r in results)


def frames_decoded(lake: Lake, plan_: Plan) -> int:
    return sum(r["frames_decoded"] or 0 for r in lake.read("stage_runs", plan_.series).to_pylist()
               if r["run_id"] == plan_.run_id)


def changed_parameters(config: dict) -> dict[str, object]:
    """``stage.key`` -> value for the cluster / name parameters that differ from the defaults."""
    base = defaults()
    return {f"{s}.{k}": v for s in IDENTITY_SECTIONS for k, v in config[s].items() if base[s].get(k) != v}



def runs_table(lake: Lake, series: str) -> pa.Table:
    """The series' identity runs, oldest first: parameters that differ from the defaults, characters, screen
    seconds (overlaps counted once) and run seconds; ``current`` marks the one the views show."""
    from anitrack.intervals import union_length

    current = current_run(lake, series)
    stage_runs = lake.read("stage_runs", series).to_pylist()
    chars, spans = {}, {}
    for r in lake.read("characters", series).to_pylist():
        chars[r["run_id"]] = chars.get(r["run_id"], 0) + 1
    for a in lake.read("appearances", series).to_pylist():
        spans.setdefault((a["run_id"], a["episode"], a["character"]), []).append((a["start_s"], a["end_s"]))
    screen = {}
    for (run_id, _, _), intervals in spans.items():
        screen[run_id] = screen.get(run_id, 0.0) + union_length(intervals)
    rows = []
    for r in sorted(lake.read("identity_runs", series).to_pylist(), key=lambda r: (r["created_at"], r["run_id"])):
        changed = changed_parameters(identity_config(lake, series, r["run_id"], stage_runs))
        rows.append({"run_id": r["run_id"], "created_at": r["created_at"].isoformat(timespec="seconds"),
                     "current": "*" if current and r["run_id"] == current["run_id"] else "",
                     "mode": r["mode"], "parameters": " ".join(f"{k}={v}" for k, v in changed.items()) or "defaults",
                     "characters": chars.get(r["run_id"], 0), "screen_s": round(screen.get(r["run_id"], 0.0), 1),
                     "seconds": r["seconds"]})
    return pa.Table.from_pylist(rows)


__all__ = ["BackfillError", "Plan", "changed_parameters", "episode_specs", "plan", "runs_table"]
