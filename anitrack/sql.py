"""Read-only, sandboxed DuckDB over the lake: one view per table, built from commit markers.

User SQL is treated like user code: only SELECT/EXPLAIN statements run, file
access is limited to the lake's directory, extensions cannot be installed or
loaded, Python objects are not reachable by name, the configuration is locked,
and memory, threads and time are bounded.
"""
from __future__ import annotations

import threading

import duckdb

from anitrack.errors import first_line
from anitrack.lake import Lake
from anitrack.schemas.tables import IDENTITY_TABLES, PARTITIONS, TABLES, with_version

ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class QueryError(RuntimeError):
    """A query that was refused or failed; one line for the user."""


def _view_sql(lake: Lake, table: str) -> str | None:
    files = lake.files(table)
    if not files:
        return None
    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    types = ", ".join(f"'{k}': 'VARCHAR'" for k in PARTITIONS[table])
    return (f"SELECT * FROM read_parquet([{listing}], hive_partitioning = true, "
            f"hive_types = {{{types}}}, union_by_name = true)")


IDENTITY_VIEWS = [
    # the current identity run of each series: its latest committed run
    """CREATE VIEW current_runs AS
       SELECT series, arg_max(run_id, created_at) AS run_id FROM identity_runs_all GROUP BY series""",
    *[f"""CREATE VIEW {t} AS SELECT x.* FROM {t}_all x JOIN current_runs USING (series, run_id)"""
      for t in IDENTITY_TABLES if t != "identity_runs"],
    """CREATE VIEW identity_runs AS
       SELECT r.*, c.run_id IS NOT NULL AS current FROM identity_runs_all r LEFT JOIN current_runs c
       USING (series, run_id)""",
    # each character's time on screen as disjoint spans: overlapping appearances merged (interval union)
    """CREATE VIEW appearance_spans AS
       WITH ordered AS (
           SELECT series, episode, character, start_s, end_s,
                  max(end_s) OVER (PARTITION BY series, episode, character ORDER BY start_s, end_s
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
           FROM appearances),
       grouped AS (
           SELECT *, sum(CASE WHEN reach IS NULL OR start_s > reach THEN 1 ELSE 0 END)
                     OVER (PARTITION BY series, episode, character ORDER BY start_s, end_s) AS island
           FROM ordered),
       islands AS (
           SELECT series, episode, character, min(start_s) AS s, max(end_s) AS e
           FROM grouped GROUP BY series, episode, character, island)
       SELECT series, episode, character, s AS start_s, e AS end_s FROM islands""",
    # seconds on screen over everything, openings and endings included: overlapping appearances of one
    # character count once; confidence: how sure the name is (the lowest of its clusters' shares of
    # tracklets backing it; 1 for a user's label)
    """CREATE VIEW screen_time_all AS
       SELECT s.series, s.episode, s.character, sum(s.end_s - s.start_s) AS seconds, any_value(c.confidence)
              AS confidence
       FROM appearance_spans s LEFT JOIN (SELECT series, character, min(confidence) AS confidence
                                          FROM characters GROUP BY ALL) c USING (series, character)
       GROUP BY ALL""",
    # each character's spans with the segments left out cut away (what the named queries count): the pieces
    # between a span's start, the segments inside it, and its end; {counted}: the segment kinds that count as
    # story after all (an episode's segments are disjoint)
    """CREATE VIEW story_spans AS
       WITH cuts AS (
           SELECT s.series, s.episode, s.character, s.start_s, s.end_s,
                  greatest(g.start_s, s.start_s) AS c0, least(g.end_s, s.end_s) AS c1
           FROM appearance_spans s JOIN segments g
             ON g.series = s.series AND g.episode = s.episode AND g.start_s < s.end_s AND g.end_s > s.start_s
                AND NOT list_contains({counted}::VARCHAR[], g.kind)),
       pieces AS (
           SELECT series, episode, character, c1 AS start_s,
                  lead(c0, 1, end_s) OVER (PARTITION BY series, episode, character, start_s ORDER BY c0) AS end_s
           FROM cuts
           UNION ALL
           SELECT series, episode, character, start_s, min(c0) FROM cuts GROUP BY series, episode, character, start_s
           UNION ALL
           SELECT s.series, s.episode, s.character, s.start_s, s.end_s FROM appearance_spans s
           ANTI JOIN cuts c USING (series, episode, character, start_s))
       SELECT * FROM pieces WHERE end_s > start_s""",
    # what screen-time answers by default: the story's seconds, openings, endings, recaps, previews and
    # other repeated footage left out (``excluded_s`` says how many seconds were)
    """CREATE VIEW screen_time AS
       SELECT a.series, a.episode, a.character, coalesce(t.seconds, 0.0) AS seconds,
              a.seconds - coalesce(t.seconds, 0.0) AS excluded_s, a.confidence
       FROM screen_time_all a LEFT JOIN (SELECT series, episode, character, sum(end_s - start_s) AS seconds
                                         FROM story_spans GROUP BY ALL) t USING (series, episode, character)""",
]


def connect(lake: Lake, memory_limit: str = "2GB", threads: int = 2, run: str | None = None,
            include: tuple[str, ...] = ()) -> duckdb.DuckDBPyConnection:
    """A locked-down connection whose views show the lake's committed partitions.

    ``run``: the identity views show that identity run instead of each series' current one
    (compare results before and after a backfill). ``include``: segment kinds (opening, ending, recap,
    preview, repeat) that ``story_spans`` and ``screen_time`` count as story; by default none of them."""
    from anitrack.segments import KINDS

    unknown = [k for k in include if k not in KINDS]
    if unknown:
        raise QueryError(f"unknown segment kind {unknown[0]!r}; kinds: {', '.join(KINDS)}")
    con = duckdb.connect(":memory:", config={"threads": threads, "memory_limit": memory_limit,
                                              "autoinstall_known_extensions": False,
                                              "autoload_known_extensions": False,
                                              "python_enable_replacements": False})
    if not lake.is_local:  # s3:// and other fsspec stores: DuckDB reads through the lake's own filesystem
        con.register_filesystem(lake.fs)
    for table in TABLES:
        sql = _view_sql(lake, table)
        if sql is None:
            empty = with_version(TABLES[table]).empty_table()
            con.register(f"_empty_{table}", empty)
            sql = f"SELECT * FROM _empty_{table}"
        # identity tables keep every run (``<table>_all``); the plain view shows the current run
        name = f"{table}_all" if table in IDENTITY_TABLES else table
        con.execute(f'CREATE VIEW "{name}" AS {sql}')
    if run is not None:
        known = [r[0] for r in con.execute("SELECT DISTINCT run_id FROM identity_runs_all ORDER BY 1").fetchall()]
        if run not in known:
            raise QueryError(f"no identity run {run!r} in the lake (runs: {', '.join(known) or 'none'})")
        con.execute("CREATE VIEW current_runs AS SELECT DISTINCT series, run_id FROM identity_runs_all "
                    "WHERE run_id = '" + run.replace("'", "''") + "'")
    counted = "[" + ", ".join(f"'{k}'" for k in include) + "]"  # names checked against KINDS above
    for statement in IDENTITY_VIEWS[0 if run is None else 1:]:  # the first defines current_runs
        con.execute(statement.replace("{counted}", counted))
    con.execute("SET allowed_directories = [?]", [lake.full_url(lake.root).rstrip("/") + "/"])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def run_query(con: duckdb.DuckDBPyConnection, query: str, timeout_s: float = 120.0, params: dict | None = None):
    """Run one read-only query; returns a pyarrow Table. ``params`` bind ``$name`` placeholders of the last
    statement (values are never formatted into SQL)."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise QueryError(first_line(exc)) from None
    if not statements:
        raise QueryError("empty query")
    refused = [s.type.name for s in statements if s.type not in ALLOWED]
    if refused:
        raise QueryError(f"only read-only queries (SELECT) are allowed, not {refused[0]}")
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.start()
    try:
        *before, last = statements
        for statement in before:
            con.execute(statement.query)
        return con.sql(last.query, params=params).to_arrow_table()
    except duckdb.InterruptException:
        raise QueryError(f"query cancelled after {timeout_s:.0f} s") from None
    except duckdb.Error as exc:
        raise QueryError(first_line(exc)) from None
    finally:
        timer.cancel()


