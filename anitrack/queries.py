"""Named analytics queries over the lake's views, defined once for the CLI, the report and the tests.

Every query reads the current identity run (``story_spans``, ``screen_time`` in ``anitrack.sql``: the
story, with the openings, endings, recaps, previews and repeats left out unless the connection includes
them; ``timeline-shots`` lists every shot, segments included, as the clips export marks them) and
``episodes`` / ``shots``. Times are unions of intervals, never sums of overlapping appearances.
Parameters are bound as DuckDB ``$name`` placeholders, never formatted into SQL.

Optional filters: ``episode`` keeps rows of one episode (queries with an ``episode`` column),
``character`` keeps rows naming that character (``character``, or either side of a co-appearance pair)
and ``min_confidence`` keeps names at least that sure (queries with a ``confidence`` column).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI builds its commands from QUERIES without loading DuckDB or Arrow
    import pyarrow as pa


@dataclass(frozen=True)
class NamedQuery:
    name: str
    help: str
    sql: str
    params: tuple[str, ...]  # required parameters; ``episode`` / ``character`` filters are optional otherwise
    needs_identity: bool = True  # False: it reads ingestion's tables only, and runs before any identity run


# episodes of the series in order (episode_number, then name); idx is 1-based
_EPISODE_ORDER = """eps AS (
    SELECT episode, duration_s, row_number() OVER (ORDER BY episode_number NULLS LAST, episode) AS idx
    FROM episodes WHERE series = $series AND status = 'ok')"""

_QUERIES = [
    NamedQuery("episodes", "Each episode's ingestion status, length, shots and tracklets.", """
        SELECT e.episode, e.status, round(e.duration_s, 1) AS seconds,
               (SELECT count(*) FROM shots s WHERE s.series = e.series AND s.episode = e.episode) AS shots,
               (SELECT count(*) FROM tracklets t WHERE t.series = e.series AND t.episode = e.episode) AS tracklets
        FROM episodes e WHERE e.series = $series
        ORDER BY e.episode_number NULLS LAST, e.episode""", ("series",), needs_identity=False),
    NamedQuery("screen-time", "Seconds on screen per character per episode, with the share of the episode.", """
        SELECT s.series, s.episode, s.character, s.seconds, e.duration_s AS episode_seconds,
               s.seconds / e.duration_s AS share, s.confidence
        FROM screen_time s JOIN episodes e USING (series, episode)
        WHERE s.series = $series
        ORDER BY s.episode, s.seconds DESC, s.character""", ("series",)),
    NamedQuery("screen-time-series", "Seconds on screen per character over the series, share of all episode "
               "time, episodes present.", f"""
        WITH {_EPISODE_ORDER}
        SELECT s.series, s.character, sum(s.seconds) AS seconds,
               sum(s.seconds) / (SELECT sum(duration_s) FROM eps) AS share, count(*) AS episodes,
               min(s.confidence) AS confidence
        FROM screen_time s JOIN eps USING (episode)
        WHERE s.series = $series
        GROUP BY s.series, s.character
        ORDER BY seconds DESC, s.character""", ("series",)),
    NamedQuery("presence", "First and last appearance of each character, episodes present, and the longest "
               "absence (most consecutive episodes missed between two appearances).", f"""
        WITH {_EPISODE_ORDER},
        per AS (
            SELECT a.character, a.episode, eps.idx, min(a.start_s) AS first_s, max(a.end_s) AS last_s
            FROM story_spans a JOIN eps USING (episode) WHERE a.series = $series GROUP BY ALL),
        gaps AS (
            SELECT *, idx - lag(idx) OVER (PARTITION BY character ORDER BY idx) - 1 AS gap FROM per)
        SELECT character, arg_min(episode, idx) AS first_episode, arg_min(first_s, idx) AS first_s,
               arg_max(episode, idx) AS last_episode, arg_max(last_s, idx) AS last_s,
               count(*) AS episodes_present, coalesce(max(gap), 0) AS longest_absence_episodes
        FROM gaps GROUP BY character
        ORDER BY min(idx), first_s, character""", ("series",)),
    NamedQuery("coappearance", "Seconds two characters share the screen (intersection of their interval "
               "unions) per episode; rows with episode NULL are the series total.", """
        SELECT a.episode, a.character AS character_a, b.character AS character_b,
               sum(least(a.end_s, b.end_s) - greatest(a.start_s, b.start_s)) AS seconds
        FROM story_spans a JOIN story_spans b
          ON a.series = b.series AND a.episode = b.episode AND a.character < b.character
             AND a.start_s < b.end_s AND b.start_s < a.end_s
        WHERE a.series = $series
        GROUP BY GROUPING SETS ((a.episode, a.character, b.character), (a.character, b.character))
        ORDER BY a.episode NULLS FIRST, seconds DESC, character_a, character_b""", ("series",)),
    NamedQuery("timeline-shots", "Who is on screen in each shot, and for how many seconds of it.", """
        SELECT s.episode, s.shot_id, s.start_s, s.end_s, p.character,
               sum(least(p.end_s, s.end_s) - greatest(p.start_s, s.start_s)) AS seconds_in_shot
        FROM shots s JOIN appearance_spans p
          ON p.series = s.series AND p.episode = s.episode AND p.start_s < s.end_s AND s.start_s < p.end_s
        WHERE s.series = $series
        GROUP BY ALL
        ORDER BY s.episode, s.shot_id, seconds_in_shot DESC, p.character""", ("series",)),
    NamedQuery("timeline-minutes", "Seconds on screen per character in each minute of an episode "
               "(minute 0 is the first 60 s).", """
        WITH cut AS (
            SELECT episode, character, start_s, end_s,
                   unnest(range(floor(start_s / 60)::BIGINT, ceil(end_s / 60)::BIGINT)) AS minute
            FROM story_spans WHERE series = $series)
        SELECT episode, minute, character,
               sum(least(end_s, 60.0 * (minute + 1)) - greatest(start_s, 60.0 * minute)) AS seconds
        FROM cut GROUP BY ALL HAVING seconds > 0
        ORDER BY episode, minute, seconds DESC, character""", ("series",)),
    NamedQuery("top-episodes", "The episodes that feature a character most, ranked by seconds on screen.", """
        SELECT s.episode, s.seconds, s.seconds / e.duration_s AS share,
               rank() OVER (ORDER BY s.seconds DESC) AS rank
        FROM screen_time s JOIN episodes e USING (series, episode)
        WHERE s.series = $series AND s.character = $character
        ORDER BY rank, s.episode""", ("series", "character")),
]
QUERIES: dict[str, NamedQuery] = {q.name: q for q in _QUERIES}


def run_named(con, name: str, **params) -> pa.Table:
    """Run a named query after checking that its series, episode and character exist (one-line errors)."""
    from anitrack.sql import QueryError, run_query

    if name not in QUERIES:
        raise QueryError(f"unknown query {name!r}; queries: {', '.join(QUERIES)}")
    query = QUERIES[name]
    params = {k: v for k, v in params.items() if v is not None}
    missing = [p for p in query.params if p not in params]
    if missing:
        raise QueryError(f"query {name} needs --{missing[0]}")
    unknown = set(params) - {"series", "episode", "character", "min_confidence"}
    if unknown:
        raise QueryError(f"query {name} has no parameter {sorted(unknown)[0]!r}")
    check_names(con, params["series"], params.get("episode"), params.get("character"), query.needs_identity)
    sql, bound = query.sql, {k: params[k] for k in query.params}
    filters = []
    columns = _columns(con, query)
    for key in ("episode", "character"):
        if key in params and key not in query.params:
            if key in columns:
                filters.append(f"{key} = ${key}")
            elif key == "character" and "character_a" in columns:
                filters.append("(character_a = $character OR character_b = $character)")
            else:
                raise QueryError(f"query {name} has no per-{key} rows; leave out --{key}")
            bound[key] = params[key]
    if "min_confidence" in params:
        if "confidence" not in columns:
            raise QueryError(f"query {name} has no confidence column; leave out --min-confidence")
        filters.append("confidence >= $min_confidence")
        bound["min_confidence"] = float(params["min_confidence"])
    if filters:
        sql = f"SELECT * FROM ({sql}) WHERE {' AND '.join(filters)}"
    return run_query(con, sql, params=bound)


def _columns(con, query: NamedQuery) -> list[str]:
    """Output columns of a query (run on no rows)."""
    return [d[0] for d in con.execute(f"SELECT * FROM ({query.sql}) LIMIT 0",
                                      {k: None for k in query.params}).description]


def check_names(con, series: str, episode: str | None = None, character: str | None = None,
                identity: bool = True) -> None:
    """Refuse an unknown series, episode or character (or, with ``identity``, a series never identified)
    in one line, naming the choices when few."""
    from anitrack.sql import QueryError

    known = _values(con, "SELECT DISTINCT series FROM episodes", {})
    if series not in known:
        raise QueryError(f"series {series!r} is not in the lake{_choices('series', known)}")
    if episode is not None:
        episodes = _values(con, "SELECT DISTINCT episode FROM episodes WHERE series = $s", {"s": series})
        if episode not in episodes:
            raise QueryError(f"episode {episode!r} is not in series {series!r}{_choices('episodes', episodes)}")
    names = _values(con, "SELECT DISTINCT character FROM characters WHERE series = $s", {"s": series})
    if identity and not names:
        raise QueryError(f"series {series!r} has no identity run yet (run anitrack identify first)")
    if character is not None:
        if character not in names:
            raise QueryError(f"character {character!r} is not in series {series!r}"
                             f"{_choices('characters', names)}")


def _values(con, sql: str, params: dict) -> list[str]:
    return sorted(r[0] for r in con.execute(sql, params).fetchall())


def _choices(what: str, names: list[str], most: int = 12) -> str:
    if not names:
        return f" (no {what})"
    return f" ({what}: {', '.join(names)})" if len(names) <= most else f" ({len(names)} {what})"


__all__ = ["NamedQuery", "QUERIES", "run_named", "check_names"]
