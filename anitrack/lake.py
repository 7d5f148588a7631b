"""The lake: every write goes through ``Lake.commit``.

Layout: ``<lake>/<table>/series=<s>/episode=<e>/part-<uuid>.parquet`` plus a
``_COMMIT.json`` per partition that names the live files. A partition becomes
visible only when its commit marker is written, and the marker is written last:
data is staged under ``_staging/``, its footer verified, moved to a unique name
in the partition, and only then is the marker replaced. Readers (``Lake.read``,
the DuckDB views) list files from markers, never by globbing, so a crash at any
point leaves either the old partition or the new one. Unique names plus a
marker written last also hold on object stores that have no atomic rename.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from anitrack.errors import first_line

from anitrack.schemas.tables import PARTITIONS, SCHEMA_VERSION, TABLES, with_version

COMMIT = "_COMMIT.json"
STAGING = "_staging"
LOCKS = "_locks"
REMOTE_TIMEOUT_S = 20.0  # opening a remote lake: bucket check
READ_ATTEMPTS = 5  # a read that lost a file to a concurrent commit lists the commits again, this many times
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def new_run_id() -> str:
    """A run's id: when it started (UTC, so ids sort by time) and a random tail."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


class LakeError(RuntimeError):
    """A lake operation that cannot proceed; the message is user-facing."""


class LakeUnreachable(LakeError):
    """A remote lake that cannot be opened (missing bucket, bad credentials, no answer): exit code 1."""


class ImportKeyError(LakeError):
    """A user's table that names no known table, or lacks a partition key: a usage error."""


class LakeBusy(LakeError):
    """Another process holds the series lock (ingest, identify or backfill)."""


def slug(name: str) -> str:
    """A partition-safe version of a user-given name (series from a folder name)."""
    text = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._-]+", "-", name)).strip("-._")  # "Show - 01" -> Show-01
    return text[:128] or "series"


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise LakeError(f"invalid {kind} name {value!r}: use letters, digits, '.', '_' or '-'")
    return value


@dataclass(frozen=True)
class Partition:
    table: str
    keys: tuple[tuple[str, str], ...]

    @property
    def relpath(self) -> str:
        return "/".join([self.table] + [f"{k}={v}" for k, v in self.keys])


class Lake:
    """A lake rooted at a local path or any fsspec URL."""

    def __init__(self, url: str, create: bool = True):
        self.url = str(url)
        self.fs, root = fsspec.core.url_to_fs(self.url, **_storage_options(self.url))
        self.root = root.rstrip("/")
        self.is_local = "file" in _protocols(self.fs)
        if not self.is_local:
            self._check_remote()
        if self.is_local:
            path = Path(self.root)
            if not path.parent.exists():
                raise LakeError(f"lake parent directory {path.parent} does not exist")
            if path.exists() and not path.is_dir():
                raise LakeError(f"lake path {path} is a file, not a directory")
            if create:
                path.mkdir(exist_ok=True)
            elif not path.exists():
                raise LakeError(f"no lake at {path}")

    def _check_remote(self, timeout_s: float = REMOTE_TIMEOUT_S) -> None:
        """Fail at open time, in one line and within ``timeout_s``, on a missing bucket or bad credentials."""
        bucket = self.root.split("/", 1)[0]
        if not bucket:  # memory:// and other stores without buckets
            return
        where = self.fs.unstrip_protocol(bucket)
        outcome: list = []

        def probe():
            try:
                outcome.append(self.fs.ls(bucket, detail=False))
            except Exception as exc:  # noqa: BLE001 - judged below, in the caller's thread
                outcome.append(exc)

        worker = threading.Thread(target=probe, daemon=True)  # a hung store cannot hold the process at exit
        worker.start()
        worker.join(timeout_s)
        if not outcome:
            raise LakeUnreachable(f"{where}: no answer within {timeout_s:.0f} s (check AWS_ENDPOINT_URL)")
        error = outcome[0]
        if isinstance(error, FileNotFoundError):
            raise LakeUnreachable(f"{where}: bucket does not exist")
        if isinstance(error, PermissionError):
            raise LakeUnreachable(f"{where}: access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): "
                                  f"{first_line(error)}")
        if isinstance(error, Exception):  # botocore's connection errors are not OSErrors
            raise LakeUnreachable(f"{where}: cannot open the lake: {first_line(error)}")

    # -- paths ---------------------------------------------------------------
    def _join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def full_url(self, path: str) -> str:
        """A path inside this lake as a URL other tools (DuckDB, pyarrow) accept."""
        if self.is_local:
            return path
        return self.fs.unstrip_protocol(path)

    def partition(self, table: str, **keys: str) -> Partition:
        if table not in TABLES:
            raise LakeError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        names = PARTITIONS[table]
        if set(keys) != set(names):
            raise LakeError(f"table {table} is partitioned by {', '.join(names)}")
        return Partition(table, tuple((k, check_name(k, keys[k])) for k in names))

    # -- commits -------------------------------------------------------------
    def read_commit(self, part: Partition) -> dict | None:
        path = self._join(part.relpath, COMMIT)
        try:
            with self.fs.open(path, "rb") as fh:
                return json.loads(fh.read())
        except FileNotFoundError:
            return None

    def fingerprint(self, table: str, **keys: str) -> str | None:
        commit = self.read_commit(self.partition(table, **keys))
        return commit["fingerprint"] if commit else None

    def commit(self, table: str, data: pa.Table, *, fingerprint: str = "", append: bool = False,
               run_id: str = "", **keys: str) -> str:
        """Validate ``data`` against the table schema and publish it atomically.

        ``append`` keeps the partition's live files and adds this one (stage_runs);
        otherwise the new file replaces them. Returns the new file's path.
        """
        part = self.partition(table, **keys)
        data = conform(table, data)
        for key, value in part.keys:
            if key in data.column_names and data.num_rows and set(data.column(key).to_pylist()) != {value}:
                raise LakeError(f"{table}: column {key!r} must be {value!r} in every row of this partition")
        name = f"part-{uuid.uuid4().hex}.parquet"
        staged = self._join(STAGING, name)
        final = self._join(part.relpath, name)
        self.fs.makedirs(self._join(STAGING), exist_ok=True)
        self.fs.makedirs(self._join(part.relpath), exist_ok=True)
        with self.fs.open(staged, "wb") as fh:
            pq.write_table(data, fh, compression="zstd")
        with self.fs.open(staged, "rb") as fh:  # verify the footer before publishing
            if pq.ParquetFile(fh).metadata.num_rows != data.num_rows:
                raise LakeError(f"{table}: staged file failed verification")
        self.fs.mv(staged, final)
        previous = self.read_commit(part)
        files = (previous["files"] if previous and append else []) + [name]
        marker = {
            "table": table, "keys": dict(part.keys), "files": files, "fingerprint": fingerprint,
            "rows": data.num_rows + (previous.get("rows", 0) if previous and append else 0),
            "schema_version": SCHEMA_VERSION, "run_id": run_id,
            "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        tmp = self._join(part.relpath, f"_tmp-{uuid.uuid4().hex}.json")
        with self.fs.open(tmp, "wb") as fh:
            fh.write(json.dumps(marker, indent=1).encode())
        self.fs.mv(tmp, self._join(part.relpath, COMMIT))  # the commit point
        self._drop_unreferenced(part, set(files))
        return final

    def _drop_unreferenced(self, part: Partition, live: set[str]) -> None:
        """Remove files of this partition that no commit names (replaced or crashed writes)."""
        for path in self.fs.ls(self._join(part.relpath), detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name != COMMIT and name not in live:
                self.fs.rm(path)

    def delete(self, table: str, **keys: str) -> None:
        """Unpublish a partition (marker first, then its files)."""
        part = self.partition(table, **keys)
        path = self._join(part.relpath)
        if self.fs.exists(self._join(part.relpath, COMMIT)):
            self.fs.rm(self._join(part.relpath, COMMIT))
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def clean_staging(self, older_than_s: float = 3600) -> None:
        """Remove staged files abandoned by crashed writers."""
        base = self._join(STAGING)
        if not self.fs.exists(base):
            return
        for info in self.fs.ls(base, detail=True):
            mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
            stamp = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime or 0)
            if time.time() - stamp > older_than_s:
                self.fs.rm(info["name"])

    # -- reading -------------------------------------------------------------
    def commits(self, table: str, series: str | None = None) -> list[dict]:
        if table not in TABLES:
            raise LakeError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        base = self._join(table) if series is None else self._join(table, f"series={series}")
        depth = len(PARTITIONS[table]) - (0 if series is None else 1)
        pattern = base + "/*" * depth + "/" + COMMIT
        out = []
        for path in sorted(self.fs.glob(pattern)):
            with self.fs.open(path, "rb") as fh:
                commit = json.loads(fh.read())
            commit["dir"] = path.rsplit("/", 1)[0]
            out.append(commit)
        return out

    def files(self, table: str, series: str | None = None) -> list[str]:
        """Committed Parquet files of a table, as URLs."""
        return [self.full_url(f"{c['dir']}/{name}") for c in self.commits(table, series) for name in c["files"]]

    def read(self, table: str, series: str | None = None, episode: str | None = None,
             columns: list[str] | None = None) -> pa.Table:
        """Committed rows of a table (optionally one series / episode) as one Arrow table.

        A partition another writer replaces meanwhile (its old file is removed right after the new commit) is
        read again from its new commit: parallel episode tasks read the series' rows while others commit."""
        schema = with_version(TABLES[table])
        for attempt in range(READ_ATTEMPTS):
            commits = self.commits(table, series)
            if episode is not None:
                commits = [c for c in commits if c["keys"].get("episode") == episode]
            paths = [f"{c['dir']}/{name}" for c in commits for name in c["files"]]
            if not paths:
                empty = schema.empty_table()
                return empty.select(columns) if columns else empty
            try:
                parts = [pq.read_table(p, filesystem=self.fs, columns=columns) for p in paths]
                return pa.concat_tables([conform(table, t, columns) for t in parts])
            except FileNotFoundError:
                if attempt == READ_ATTEMPTS - 1:
                    raise

    # -- series lock ---------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, series: str, owner: str):
        """Hold the series' exclusive lock ``_locks/<series>.json`` (host, pid, start, command) or raise LakeBusy;
        yields the lock's token (``holds`` checks it).

        Two writers of one series (two backfills, a backfill and an ingest) would
        otherwise race on the same partitions and identity runs. Locally the lock
        is created with O_EXCL; elsewhere each contender writes a uniquely named
        claim and the lowest name wins. A lock whose pid is dead on this host is stale.
        """
        check_name("series", series)
        path = self._join(LOCKS, f"{series}.json")
        info = {"host": socket.gethostname(), "pid": os.getpid(), "command": owner, "token": uuid.uuid4().hex,
                "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        release = self._lock_local(path, info) if self.is_local else self._lock_claim(path, info)
        try:
            yield info["token"]
        finally:
            release()

    def holds(self, series: str, token: str) -> bool:
        """Whether the series' lock is the one ``lock`` yielded ``token`` for (and is still held)."""
        path = self._join(LOCKS, f"{series}.json")
        if self.is_local:
            return (_read_json(path) or {}).get("token") == token
        folder = path[:-len(".json")] + ".claims"
        try:
            names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False))
        except FileNotFoundError:
            return False
        return bool(names) and names[0].endswith(f"-{token}.json")

    def _busy(self, series_path: str, holder: dict | None, shown: str) -> LakeBusy:
        series = series_path.rsplit("/", 1)[-1][:-len(".json")]
        who = (f"{holder.get('command', '?')} by pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
               f"since {holder.get('since', '?')}") if holder else "a lock being written"
        return LakeBusy(f"series {series} is busy: {who} (remove {self.full_url(shown)} if that process is gone)")

    def _lock_local(self, path: str, info: dict):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # the claim is written in full first and then hard-linked into place: link() fails if the
        # lock exists, so a contender never sees a lock file without its holder's details
        mine = f"{path}.{info['token']}"
        with open(mine, "w") as fh:
            json.dump(info, fh)
        try:
            for _ in range(5):
                try:
                    os.link(mine, path)
                except FileExistsError:
                    holder = _read_json(path)
                    if holder is None and not os.path.exists(path):
                        continue  # released meanwhile
                    if holder is None or not _stale(holder):
                        raise self._busy(path, holder, path) from None
                    _break_stale(path, holder)
                    continue

                def release():
                    if (_read_json(path) or {}).get("token") == info["token"]:
                        os.unlink(path)
                return release
            raise self._busy(path, _read_json(path), path)
        finally:
            os.unlink(mine)

    def _lock_claim(self, path: str, info: dict):
        folder = path[:-len(".json")] + ".claims"
        self.fs.makedirs(folder, exist_ok=True)
        mine = f"{folder}/{time.time_ns():020d}-{info['token']}.json"
        with self.fs.open(mine, "wb") as fh:
            fh.write(json.dumps(info).encode())
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False))
        for name in names:
            claim = f"{folder}/{name}"
            if claim == mine:
                return lambda: self.fs.rm(mine)
            try:
                with self.fs.open(claim, "rb") as fh:
                    holder = json.loads(fh.read() or b"null")
            except FileNotFoundError:
                continue
            if holder and _stale(holder):
                self.fs.rm(claim)
                continue
            self.fs.rm(mine)
            raise self._busy(path, holder, claim)
        return lambda: self.fs.rm(mine)

    def series(self) -> list[str]:
        """Series with ingested episodes or with imported tracklets or embeddings (bring your own vectors)."""
        found = set()
        for table in ("episodes", "tracklets", "embeddings"):
            base = self._join(table)
            if self.fs.exists(base):
                found |= {p.rsplit("series=", 1)[-1] for p in self.fs.ls(base, detail=False) if "series=" in p}
        return sorted(found)


def import_table(lake: Lake, table: str, data: pa.Table, source: str, series: str, episode: str | None = None) -> dict:
    """Commit a user's own table (bring your own detections or embeddings) like a stage output: under the
    table's partition keys, with the columns that follow from the others filled, checked against the schema
    by ``commit``. Returns the keys; ``ImportKeyError`` names an unknown table or a key not given."""
    if table not in PARTITIONS:
        raise ImportKeyError(f"unknown table {table!r}; tables: {', '.join(PARTITIONS)}")
    keys = {k: {"series": series, "episode": episode}[k] for k in PARTITIONS[table]}
    missing = [k for k, v in keys.items() if v is None]
    if missing:
        raise ImportKeyError(f"table {table} is kept per {' and '.join(missing)}: give --{' --'.join(missing)}")
    lake.commit(table, with_derived_columns(table, data, keys), fingerprint="import:" + source, **keys)
    return keys


def with_derived_columns(table: str, data: pa.Table, keys: dict[str, str]) -> pa.Table:
    """Fill the columns of a user's file that follow from the others: partition keys, and for
    ``embeddings`` ``kind`` (``tracklet`` without a ``crop_id``), ``metric`` (cosine) and ``dim``
    (the vector's length). Columns that do not follow are left missing, for ``conform`` to name."""
    n = data.num_rows
    for k, v in keys.items():
        if k not in data.column_names:
            data = data.append_column(k, pa.array([v] * n, pa.string()))
    if table == "embeddings":
        if "kind" not in data.column_names:
            crop = data.column("crop_id").to_pylist() if "crop_id" in data.column_names else [None] * n
            data = data.append_column("kind", pa.array(["tracklet" if c is None else "crop" for c in crop]))
        if "metric" not in data.column_names:
            data = data.append_column("metric", pa.array(["cosine"] * n))
        if "dim" not in data.column_names and "vector" in data.column_names:
            data = data.append_column("dim", pa.array([None if v is None else len(v)
                                                       for v in data.column("vector").to_pylist()], pa.int32()))
    return data


def conform(table: str, data: pa.Table, columns: list[str] | None = None) -> pa.Table:
    """Cast ``data`` to the table's schema; a mismatch names the offending column."""
    schema = with_version(TABLES[table])
    if columns:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    missing = [f.name for f in schema if f.name not in data.column_names and not f.nullable]
    if missing:
        raise LakeError(f"{table}: missing required column {missing[0]!r}")
    extra = [c for c in data.column_names if c not in schema.names]
    if extra:
        raise LakeError(f"{table}: unexpected column {extra[0]!r} (expected: {', '.join(schema.names)})")
    arrays = []
    for field in schema:
        if field.name not in data.column_names:
            arrays.append(pa.nulls(data.num_rows, field.type))
            continue
        column = data.column(field.name)
        try:
            column = column.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise LakeError(f"{table}: column {field.name!r} has type {column.type}, expected {field.type}"
                            f" ({first_line(exc)})") from None
        if not field.nullable and column.null_count:
            raise LakeError(f"{table}: column {field.name!r} has nulls but is required")
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=schema)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as fh:
            return json.loads(fh.read() or "null")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _stale(holder: dict) -> bool:
    """The holder ran on this host and its process is gone."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _break_stale(path: str, holder: dict) -> None:
    """Move a stale lock aside; if another process replaced it meanwhile with a live one, put that back."""
    aside = f"{path}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if (_read_json(aside) or {}).get("token") != holder.get("token"):
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    os.unlink(aside)


def _storage_options(url: str) -> dict:
    """No listing cache (another process may have committed since), and bounded waits on S3."""
    options = {"use_listings_cache": False}
    if url.startswith(("s3://", "s3a://")):  # endpoint and credentials come from AWS_* variables
        options["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}}
    return options


def _protocols(fs) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)
