"""An ``s3://`` lake on a real S3-compatible server (moto) on loopback: ingest, identify and SQL end to end,
uploads that fail part-way never publish a partial partition, and a missing bucket or bad credentials fail
in one line."""
from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import free_port, run_cli

pytestmark = pytest.mark.slow  # runs the pipeline over video

BUCKET = "anitrack-test"
LAKE = f"s3://{BUCKET}/lake"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _start_moto(**env) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, **env))
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with one bucket; yields the environment the CLI needs to reach it."""
    import boto3

    proc, endpoint = _start_moto()
    env = dict(KEYS, AWS_ENDPOINT_URL=endpoint)
    try:
        client = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in KEYS.items()
                                                              if k != "AWS_DEFAULT_REGION"},
                              region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield {"env": env, "client": client, "endpoint": endpoint}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def direct_env(s3):
    """This process reads the lake straight from moto (never through the failing proxy)."""
    saved = {k: os.environ.get(k) for k in s3["env"]}
    os.environ.update(s3["env"])
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from anitrack.synth import synthesize_series

    return synthesize_series(tmp_path_factory.mktemp("s3synth"), series="mini", episodes=2, characters=3,
                             seconds=8, seed=3)


def _sql(s3, query: str) -> list[dict]:
    proc = run_cli("sql", "--lake", LAKE, "--format", "json", query, env=s3["env"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_ingest_identify_and_query_an_s3_lake(s3, series, direct_env):
    for video in sorted(series.glob("*.mp4")):  # the episodes themselves come from the bucket too
        s3["client"].upload_file(str(video), BUCKET, f"videos/mini/{video.name}")
    run_cli("ingest", f"s3://{BUCKET}/videos/mini", "--lake", LAKE, env=s3["env"], check=True)
    run_cli("identify", "--lake", LAKE, "--series", "mini", "--references", str(series.parent / "references"),
            env=s3["env"], check=True)

    from anitrack.lake import Lake

    lake = Lake(LAKE)
    assert lake.series() == ["mini"]
    episodes = lake.read("episodes").to_pylist()
    assert sorted((r["episode"], r["status"]) for r in episodes) == [("episode_01", "ok"), ("episode_02", "ok")]
    assert all(r["uri"].startswith(f"s3://{BUCKET}/videos/mini/") for r in episodes)
    n_tracklets = lake.read("tracklets").num_rows
    assert n_tracklets > 0
    assert _sql(s3, "SELECT count(*) AS n FROM tracklets") == [{"n": n_tracklets}]
    screen = _sql(s3, "SELECT character, sum(seconds) AS s FROM screen_time GROUP BY 1 ORDER BY 2 DESC")
    assert screen and all(r["s"] > 0 for r in screen)
    named = {r["character"] for r in screen}
    gallery = {d.name for d in (series.parent / "references").iterdir() if not d.name.startswith("_")}
    assert named & gallery, (named, gallery)  # named from the reference gallery

    # the SQL sandbox holds on s3 too: nothing outside the lake's prefix is readable
    proc = run_cli("sql", "--lake", LAKE, f"SELECT count(*) FROM read_parquet('s3://{BUCKET}/videos/**')",
                   env=s3["env"], timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


class _FailingProxy(ThreadingHTTPServer):
    """A reverse proxy in front of moto that answers 500 to the PUTs ``fail`` selects (after its retries)."""

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream.split("//", 1)[1]
        self.fail = lambda method, path: False
        self.failed: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return body
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self):
        body = self._body()
        if self.server.fail(self.command, self.path):
            self.server.failed.append(f"{self.command} {self.path}")
            payload = b"<Error><Code>InternalError</Code><Message>injected failure</Message></Error>"
            self.send_response(500)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "expect")}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.server.upstream, timeout=60)
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "server", "date", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD"
                         else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


@pytest.fixture()
def proxy(s3):
    server = _FailingProxy(s3["endpoint"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _shots(version: int, n: int) -> pa.Table:
    return pa.Table.from_pylist([{"series": "inj", "episode": "e1", "shot_id": i, "start_frame": 10 * i,
                                  "end_frame": 10 * i + 10, "start_s": i * 1.0, "end_s": i + 1.0,
                                  "backend": f"v{version}"} for i in range(n)])


# (what fails, the PUTs the proxy refuses): the staged upload, the copy into the partition, the marker
FAILURES = {
    "staged upload": lambda m, p: m == "PUT" and "/_staging/" in p,
    "publish copy": lambda m, p: m == "PUT" and "/shots/" in p and "/part-" in p,
    "commit marker": lambda m, p: m == "PUT" and "_COMMIT.json" in p,
    "temporary marker": lambda m, p: m == "PUT" and "/_tmp-" in p,
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_failed_uploads_never_publish_a_partial_partition(s3, direct_env, proxy, tmp_path, failure):
    from anitrack.lake import Lake
    from anitrack.sql import connect, run_query

    lake = Lake(LAKE)
    lake.commit("shots", _shots(1, 3), series="inj", episode="e1")
    new = tmp_path / "v2.parquet"
    pq.write_table(_shots(2, 5), new)
    proxy.fail = FAILURES[failure]
    proc = run_cli("lake", "import", "shots", str(new), "--lake", LAKE, "--series", "inj", "--episode", "e1",
                   env=dict(s3["env"], AWS_ENDPOINT_URL=proxy.endpoint), timeout=300)
    assert proxy.failed, "the proxy refused nothing"
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr

    seen = Lake(LAKE).read("shots", "inj", "e1")  # a fresh reader: the old partition, whole
    assert seen.num_rows == 3 and set(seen.column("backend").to_pylist()) == {"v1"}
    rows = run_query(connect(Lake(LAKE)), "SELECT backend, count(*) AS n FROM shots WHERE series = 'inj' "
                                          "GROUP BY 1").to_pylist()
    assert rows == [{"backend": "v1", "n": 3}]

    Lake(LAKE).clean_staging(older_than_s=0)  # leftovers of the failed writer go away
    assert not lake.fs.exists(f"{BUCKET}/lake/_staging") or not lake.fs.ls(f"{BUCKET}/lake/_staging")
    proxy.fail = lambda m, p: False
    proc = run_cli("lake", "import", "shots", str(new), "--lake", LAKE, "--series", "inj", "--episode", "e1",
                   env=dict(s3["env"], AWS_ENDPOINT_URL=proxy.endpoint), timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = Lake(LAKE).read("shots", "inj", "e1")
    assert seen.num_rows == 5 and set(seen.column("backend").to_pylist()) == {"v2"}
    names = [p.rsplit("/", 1)[-1] for p in lake.fs.ls(f"{BUCKET}/lake/shots/series=inj/episode=e1")]
    assert sorted(n for n in names if not re.match(r"part-[0-9a-f]{32}\.parquet$", n)) == ["_COMMIT.json"]
    assert len(names) == 2  # the marker and the one live file: orphans of the failed write are gone


def test_missing_bucket_is_one_line(s3, tmp_path):
    proc = run_cli("sql", "--lake", "s3://no-such-bucket/lake", "SELECT 1", env=s3["env"], timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["anitrack: error: s3://no-such-bucket: bucket does not exist"]
    proc = run_cli("ingest", str(tmp_path), "--lake", "s3://no-such-bucket/lake", env=s3["env"], timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["anitrack: error: s3://no-such-bucket: bucket does not exist"]


def test_wrong_credentials_are_one_line():
    proc, endpoint = _start_moto(INITIAL_NO_AUTH_ACTION_COUNT="0")  # this server checks access keys
    try:
        result = run_cli("sql", "--lake", LAKE, "SELECT 1", timeout=120,
                         env=dict(KEYS, AWS_ACCESS_KEY_ID="wrong", AWS_ENDPOINT_URL=endpoint))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"anitrack: error: s3://{BUCKET}: access denied"), lines[0]


def test_unreachable_endpoint_is_one_line():
    result = run_cli("sql", "--lake", LAKE, "SELECT 1", timeout=120,
                     env=dict(KEYS, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"anitrack: error: s3://{BUCKET}: cannot open the lake"), \
        result.stderr


def test_silent_endpoint_fails_within_the_stated_timeout():
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        result = run_cli("sql", "--lake", LAKE, "SELECT 1", timeout=120,
                         env=dict(KEYS, AWS_ENDPOINT_URL=f"http://127.0.0.1:{silent.getsockname()[1]}"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"anitrack: error: s3://{BUCKET}: no answer within 20 s (check AWS_ENDPOINT_URL)"]
