"""Read-only, sandboxed DuckDB over the lake: one view per table, built from commit markers.

User SQL is treated like user code: only SELECT/EXPLAIN statements run, file
access is limited to the lake's directory, extensions cannot be installed or
loaded, Python objects are not reachable by name, the configuration is locked,
and memory, threads and time are bounded.
"""
from __future__ import annotations

import threading

import duckdb

from anitrack.lake import Lake
from schemas.tables import PARTITIONS, TABLES, with_version

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


def connect(lake: Lake, memory_limit: str = "2GB", threads: int = 2) -> duckdb.DuckDBPyConnection:
    """A locked-down connection whose views show the lake's committed partitions."""
    con = duckdb.connect(":memory:", config={"threads": threads, "memory_limit": memory_limit,
                                              "autoinstall_known_extensions": False,
                                              "autoload_known_extensions": False,
                                              "python_enable_replacements": False})
    for table in TABLES:
        sql = _view_sql(lake, table)
        if sql is None:
            empty = with_version(TABLES[table]).empty_table()
            con.register(f"_empty_{table}", empty)
            sql = f"SELECT * FROM _empty_{table}"
        con.execute(f'CREATE VIEW "{table}" AS {sql}')
    if lake.is_local:
        con.execute("SET allowed_directories = [?]", [lake.root.rstrip("/") + "/"])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def run_query(con: duckdb.DuckDBPyConnection, query: str, timeout_s: float = 120.0):
    """Run one read-only query; returns a pyarrow Table."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from None
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
        return con.sql(last.query).to_arrow_table()
    except duckdb.InterruptException:
        raise QueryError(f"query cancelled after {timeout_s:.0f} s") from None
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from None
    finally:
        timer.cancel()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]
