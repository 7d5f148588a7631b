"""The review app: a real `anitrack review` server driven by a real headless Chromium (Playwright).

Every correction a user makes in the page must land in the ``labels`` table, show in the
``characters`` view and ``screen_time``, and survive a later ``anitrack identify``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from anitrack.lake import Lake
from anitrack.sql import connect, run_query
from tests.conftest import chromium, run_cli

pytestmark = pytest.mark.slow  # needs the identified cast series
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("ANITRACK_ARTIFACTS", ROOT / "artifacts")) / "review"


def q(lake, sql):
    return run_query(connect(Lake(str(lake), create=False)), sql).to_pylist()


class Server:
    """`anitrack review` in a child process; ``url`` carries the token it printed."""

    def __init__(self, lake: Path, series: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "anitrack", "review", "--lake", str(lake),
                                      "--series", series, "--no-browser"],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        deadline, self.url = time.time() + 120, None
        while time.time() < deadline and self.url is None:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise AssertionError("anitrack review exited before serving")
            found = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", line)
            self.url = found.group(1) if found else None
        assert self.url, "anitrack review printed no URL"
        parts = urlsplit(self.url)
        self.port, self.token = parts.port, parts.query.split("=", 1)[1]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def lake_copy(cast_identified, tmp_path) -> Path:
    lake, _ = cast_identified
    return Path(shutil.copytree(lake, tmp_path / "lake"))


@pytest.fixture
def server(lake_copy):
    srv = Server(lake_copy, "cast")
    yield srv
    srv.stop()


@pytest.fixture
def client(lake_copy):
    """The same app in-process through FastAPI's TestClient (as if at 127.0.0.1): the guard tests need no
    server process; the browser test below drives a real one."""
    from fastapi.testclient import TestClient

    from anitrack.config import load_config, resolve_profile
    from anitrack.flows.corrections import review_writes
    from anitrack.web.review import make_app

    config = resolve_profile(load_config(environ={}), "offline")
    token = "a-test-token"
    app = make_app(Lake(str(lake_copy), create=False), "cast", review_writes(str(lake_copy), "cast", config), token)
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client, token


def test_requests_without_the_token_or_from_a_foreign_host_are_refused(client, lake_copy):
    http, token = client
    assert http.get("/").status_code == 403
    assert http.get("/?token=wrong").status_code == 403
    assert http.get(f"/?token={token}", headers={"Host": "evil.example:80"}).status_code == 403
    page = http.get(f"/?token={token}")
    assert page.status_code == 200 and "class=card" in page.text
    assert "anitrack_review" in http.cookies  # later pages carry the cookie
    assert http.get("/timeline").status_code == 200
    before = q(lake_copy, "SELECT count(*) AS n FROM labels")[0]["n"]
    body = {"kind": "noise", "cluster": 0}
    # a foreign page can send the cookie, never the token header: refused, nothing written
    refused = http.post("/api/correct", json=body)
    assert refused.status_code == 403 and "token header" in refused.json()["error"]
    assert http.post("/api/correct", json=body, headers={"X-Review-Token": token, "Host": "attacker.test"}
                     ).status_code == 403
    assert q(lake_copy, "SELECT count(*) AS n FROM labels")[0]["n"] == before


def test_a_correction_on_a_run_that_changed_writes_nothing(client, lake_copy):
    http, token = client
    reply = http.post("/api/correct", json={"kind": "noise", "cluster": 0, "run_id": "not-the-current-run"},
                      headers={"X-Review-Token": token})
    assert reply.status_code == 409 and "no longer current" in reply.json()["error"]
    assert q(lake_copy, "SELECT count(*) AS n FROM labels")[0]["n"] == 0


def test_bad_input_is_one_line_before_any_server_starts(cast_identified, ingested_lake, tmp_path):
    lake, _ = cast_identified
    proc = run_cli("review", "--lake", str(lake), "--series", "nope", "--no-browser", timeout=120)
    assert proc.returncode == 1 and "not in the lake" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("review", "--lake", str(ingested_lake), "--series", "mini", "--no-browser", timeout=120)
    assert proc.returncode == 1 and "no identity run" in proc.stderr
    proc = run_cli("review", "--lake", str(tmp_path / "missing"), "--series", "cast", "--no-browser", timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"anitrack: error: no lake at {tmp_path / 'missing'}"


def _cards(page) -> list[dict]:
    return page.eval_on_selector_all(".card", """cs => cs.map(c => ({cluster: +c.dataset.cluster,
        name: c.querySelector('h3 a').textContent, images: c.querySelectorAll('.strip img').length}))""")


def _images_loaded(page) -> bool:
    """Every image on the page decoded (waits for the page's images to finish, loaded or broken)."""
    page.wait_for_load_state("load")
    page.wait_for_function("[...document.images].every(i => i.complete)", timeout=30_000)
    return page.evaluate("[...document.images].every(i => i.naturalWidth > 0)")


def _wait_done(page) -> str:
    page.wait_for_function("(s => s && !s.startsWith('re-identifying'))(document.getElementById('status')"
                           ".textContent)", timeout=180_000)
    status = page.inner_text("#status")
    assert status.startswith("re-identified in"), status
    return status


def _cluster_of(lake, tracklet: str) -> int:
    return q(lake, f"SELECT cluster_id FROM clusters WHERE tracklet_id = '{tracklet}'")[0]["cluster_id"]


def _members(lake, cluster: int) -> list[str]:
    return [r["tracklet_id"] for r in q(lake, f"SELECT tracklet_id FROM clusters WHERE cluster_id = {cluster} "
                                              "ORDER BY tracklet_id")]


def test_every_correction_from_the_browser_lands_in_the_lake_and_survives_identify(server, lake_copy):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url)
        page.screenshot(path=str(ARTIFACTS / "characters.png"), full_page=True)
        cards = _cards(page)
        assert len(cards) >= 4 and all(c["images"] > 0 for c in cards), cards  # no empty card
        assert _images_loaded(page)

        # rename the top card
        top = cards[0]["cluster"]
        top_tracklet = _members(lake_copy, top)[0]
        page.fill(f".card[data-cluster='{top}'] .name-input", "Renamed Hero")
        page.click(f".card[data-cluster='{top}'] .do-name")
        assert "re-identified in" in _wait_done(page)
        assert q(lake_copy, "SELECT count(*) AS n FROM labels WHERE action = 'name' AND value = 'Renamed Hero'"
                 )[0]["n"] > 0
        assert q(lake_copy, "SELECT source FROM characters WHERE character = 'Renamed Hero'")[0]["source"] == "label"
        assert q(lake_copy, "SELECT sum(seconds) AS s FROM screen_time WHERE character = 'Renamed Hero'")[0]["s"] > 0

        # merge two other clusters
        cards = _cards(page)
        a, b = [c["cluster"] for c in cards if c["name"] != "Renamed Hero"][:2]
        a_tracklet, b_tracklet = _members(lake_copy, a)[0], _members(lake_copy, b)[0]
        n_before = q(lake_copy, "SELECT count(*) AS n FROM characters")[0]["n"]
        page.select_option(f".card[data-cluster='{a}'] .merge-target", str(b))
        page.click(f".card[data-cluster='{a}'] .do-merge")
        _wait_done(page)
        assert _cluster_of(lake_copy, a_tracklet) == _cluster_of(lake_copy, b_tracklet)
        assert q(lake_copy, "SELECT count(*) AS n FROM characters")[0]["n"] == n_before - 1

        # split one tracklet off the merged cluster
        merged = _cluster_of(lake_copy, a_tracklet)
        page.goto(f"http://127.0.0.1:{server.port}/cluster/{merged}")
        assert _images_loaded(page)
        page.screenshot(path=str(ARTIFACTS / "cluster.png"), full_page=True)
        page.check(f".pick[value='{b_tracklet}']")
        page.click("#do-split")
        _wait_done(page)
        assert q(lake_copy, f"SELECT action FROM labels WHERE tracklet_id = '{b_tracklet}' AND action = 'split'")
        assert _cluster_of(lake_copy, b_tracklet) != _cluster_of(lake_copy, a_tracklet)

        # move one tracklet of the renamed cluster to the merged one
        renamed = _cluster_of(lake_copy, top_tracklet)
        mover = next(t for t in _members(lake_copy, renamed) if t != top_tracklet)
        page.goto(f"http://127.0.0.1:{server.port}/cluster/{renamed}")
        page.check(f".pick[value='{mover}']")
        page.select_option("#move-target", str(_cluster_of(lake_copy, a_tracklet)))
        page.click("#do-move")
        _wait_done(page)
        assert _cluster_of(lake_copy, mover) == _cluster_of(lake_copy, a_tracklet) != _cluster_of(lake_copy,
                                                                                                 top_tracklet)
        merged = _cluster_of(lake_copy, a_tracklet)
        assert q(lake_copy, f"SELECT character FROM characters WHERE cluster_id = {merged}"
                 )[0]["character"] != "Renamed Hero"  # a moved tracklet does not carry its old cluster's name

        # mark the split-off tracklet's cluster as noise: nobody's screen time
        page.goto(server.url.split("?")[0])
        noise = _cluster_of(lake_copy, b_tracklet)
        noise_name = q(lake_copy, f"SELECT character FROM characters WHERE cluster_id = {noise}")[0]["character"]
        seconds_before = q(lake_copy, "SELECT sum(seconds) AS s FROM screen_time")[0]["s"]
        page.click(f".card[data-cluster='{noise}'] .do-noise")
        _wait_done(page)
        assert _cluster_of(lake_copy, b_tracklet) == -1
        assert q(lake_copy, "SELECT sum(seconds) AS s FROM screen_time")[0]["s"] < seconds_before
        assert noise_name.startswith("unknown_") or not q(
            lake_copy, f"SELECT 1 FROM appearances WHERE tracklet_id = '{b_tracklet}'")

        # add two crops of the renamed cluster to the gallery as a new reference character
        renamed = _cluster_of(lake_copy, top_tracklet)
        page.goto(f"http://127.0.0.1:{server.port}/cluster/{renamed}")
        crops = page.eval_on_selector_all(".crops img", "xs => xs.slice(0, 2).map(x => x.dataset.crop)")
        for crop in crops:
            page.click(f".crops img[data-crop='{crop}']")
        page.fill("#gallery-name", "Gallery Pick")
        page.click("#do-reference")
        _wait_done(page)
        rows = q(lake_copy, "SELECT crop_id FROM labels WHERE action = 'reference' AND value = 'Gallery Pick'")
        assert sorted(r["crop_id"] for r in rows) == sorted(crops)
        thresholds = json.loads(q(lake_copy, "SELECT character_thresholds FROM identity_runs WHERE current"
                                  )[0]["character_thresholds"])
        assert "Gallery Pick" in thresholds["threshold"]  # the gallery holds the new character
        assert page.eval_on_selector_all("#names option", "os => os.map(o => o.value)").count("Gallery Pick") == 1

        # undo removes the last correction only
        page.click("#undo")
        _wait_done(page)
        assert not q(lake_copy, "SELECT 1 FROM labels WHERE action = 'reference'")
        thresholds = json.loads(q(lake_copy, "SELECT character_thresholds FROM identity_runs WHERE current"
                                  )[0]["character_thresholds"])
        assert "Gallery Pick" not in thresholds["threshold"]
        assert q(lake_copy, "SELECT 1 FROM labels WHERE action = 'noise'")

        # the timeline shows the shots and who is on screen; a bar opens its tracklet's crops
        page.goto(f"http://127.0.0.1:{server.port}/timeline")
        assert page.locator("svg.timeline").count() == 4
        page.click("svg.timeline rect >> nth=0")
        page.wait_for_selector(".crops img")
        assert _images_loaded(page)

        # a fixed naming threshold: previewed in the page, then applied as an identity backfill
        page.goto(f"http://127.0.0.1:{server.port}/thresholds")
        named_now = q(lake_copy, "SELECT count(*) AS n FROM characters WHERE named")[0]["n"]
        page.evaluate("(() => {const s = document.getElementById('threshold'); s.value = 0.99;"
                      " s.dispatchEvent(new Event('input'))})()")
        preview = page.inner_text("#summary")
        assert preview.endswith(f"(now {named_now})") and int(preview.split()[0]) < named_now, preview
        page.click("#apply")
        _wait_done(page)
        run = q(lake_copy, "SELECT calibration, name_threshold FROM identity_runs WHERE current")[0]
        assert run["calibration"] == "fixed" and run["name_threshold"] == pytest.approx(0.99)
        named_after = q(lake_copy, "SELECT count(*) AS n FROM characters WHERE named")[0]["n"]
        assert named_after == int(preview.split()[0]), (named_after, preview)
        browser.close()
    server.stop()

    run_cli("identify", "--lake", str(lake_copy), "--series", "cast", "--full", check=True)
    assert q(lake_copy, f"""SELECT c.character FROM clusters k JOIN characters c USING (series, run_id, cluster_id)
                            WHERE k.tracklet_id = '{top_tracklet}'""")[0]["character"] == "Renamed Hero"
    assert _cluster_of(lake_copy, b_tracklet) == -1
    assert _cluster_of(lake_copy, a_tracklet) >= 0
    assert _cluster_of(lake_copy, mover) == _cluster_of(lake_copy, a_tracklet)


def test_the_review_order_puts_the_costliest_mistakes_first(cast_identified, cast_series):
    """Clusters at the top are those whose correction moves the most screen time (by the truth)."""
    from anitrack.identity.inputs import load_inputs
    from anitrack.identity.evaluation import true_characters
    from anitrack.intervals import union_length
    from anitrack.identity.review import Review

    lake, _ = cast_identified
    lk = Lake(str(lake), create=False)
    truth = json.loads((cast_series / "truth.json").read_text())
    data = load_inputs(lk, "cast")
    true_of = true_characters(data, truth, cast_series / "face_boxes.csv")
    gallery = set(truth.get("gallery", truth["characters"]))
    review = Review(lk, "cast")
    order = review.order()
    by_id = {r["tracklet_id"]: r for r in data["rows"]}

    def moved(card) -> float:  # seconds a right correction of this cluster would re-credit
        wrong = []
        for t in card.tracklets:
            truly = true_of.get(t, "_none")
            right = truly == card.character if card.named else truly not in gallery
            if not right:
                wrong.append((by_id[t]["episode"], by_id[t]["start_s"], by_id[t]["end_s"]))
        return sum(union_length([(s, e) for ep2, s, e in wrong if ep2 == ep]) for ep in {w[0] for w in wrong})

    impact = [moved(c) for c in order]
    print("review order (cluster, character, priority, moved s):",
          [(c.cluster_id, c.character, round(c.priority, 1), round(m, 1)) for c, m in zip(order, impact)])
    assert sum(impact) > 0, "the series has mistakes to correct"
    k = 2  # the first two cards hold most of what the best two would (a confident mistake shows nowhere)
    best = sum(sorted(impact, reverse=True)[:k])
    assert sum(impact[:k]) >= 0.8 * best, (impact, best)
    by_time = sorted(range(len(order)), key=lambda i: -order[i].seconds)  # the naive order: screen time
    for first in (1, 2, 3):  # every first few cards move at least what the naive order's do
        assert sum(impact[:first]) >= sum(impact[i] for i in by_time[:first]), first
