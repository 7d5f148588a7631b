"""The HTML report, checked as a person would: opened from disk in headless Chromium."""
from __future__ import annotations

import base64
import html
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import chromium, copy_lake, run_cli

pytestmark = pytest.mark.slow  # runs the pipeline over video


def q(lake: Path, query: str) -> list[dict]:
    from anitrack.lake import Lake
    from anitrack.sql import connect, run_query

    return run_query(connect(Lake(str(lake), create=False)), query).to_pylist()


@pytest.fixture(scope="module")
def report(identified_lake, tmp_path_factory):
    lake = identified_lake
    out = tmp_path_factory.mktemp("report") / "report"
    proc = run_cli("report", "--lake", str(lake), "--series", "mini", "--out", str(out), check=True)
    assert proc.stdout.strip() == str(out / "index.html")
    return {"lake": lake, "out": out, "page": (out / "index.html").read_text()}


def section(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert match, f"section {anchor} is missing"
    return match.group(1)


def test_report_holds_every_section(report):
    page, out, lake = report["page"], report["out"], report["lake"]
    episodes = [r["episode"] for r in q(lake, "SELECT episode FROM episodes WHERE status = 'ok' ORDER BY 1")]
    assert len(episodes) == 3
    # every plot is a PNG file and the same PNG inline, so index.html alone is enough
    inline = dict(re.findall(r'data-file="([^"]+)" src="data:image/png;base64,([^"]+)"', page))
    expected = [f"timeline_{e}.png" for e in episodes] + ["coappearance.png", "network.png", "similarity.png",
                                                           "projection.png"]
    for name in expected:
        data = (out / name).read_bytes()
        assert base64.b64decode(inline[name]) == data, name
        with Image.open(out / name) as im:
            assert im.width > 300 and im.height > 150
    timelines = section(page, "timelines")
    assert all(f"timeline_{e}.png" in timelines for e in episodes)

    # one gallery card per character, with the screen time of the screen_time view and its crops
    seconds = {r["character"]: r["s"] for r in q(lake, "SELECT character, sum(seconds) AS s FROM screen_time "
                                                       "GROUP BY 1")}
    characters = q(lake, "SELECT character, n_tracklets, closest, similarity, confidence, threshold FROM characters")
    assert len(characters) >= 2
    cards = dict(re.findall(r'<div class=card data-character="([^"]+)">(.*?)</dl></div>', section(page, "characters"),
                            re.S))
    assert set(map(html.unescape, cards)) == {c["character"] for c in characters}
    for c in characters:
        card = cards[html.escape(c["character"])]
        assert f"<dd class=seconds>{seconds[c['character']]:.1f} s</dd>" in card
        assert f"<dd>{c['n_tracklets']}</dd>" in card
        if c["closest"]:
            assert f"{html.escape(c['closest'])} ({c['similarity']:.3f})" in card
        assert card.count('<img class=crop') >= 1
        assert f"{100 * c['confidence']:.0f}% of tracklets back it" in card  # how sure each name is
        assert f"threshold {c['threshold']:.2f}" in card

    # the naming rule each name rests on: threshold, margin, rate asked and measured, what it rests on
    naming = section(page, "naming")
    rule = q(lake, "SELECT * FROM identity_runs WHERE current")[0]
    assert f"{rule['name_threshold']:.3f}" in naming and f"{rule['name_margin']:.3f}" in naming
    assert f"{rule['n_impostor']} / {rule['n_genuine']}" in naming and rule["calibration"] in naming

    coappear = section(page, "co-appearance")
    assert "coappearance.png" in coappear and "network.png" in coappear
    quality = section(page, "quality")
    for metric in ("silhouette", "davies_bouldin", "calinski_harabasz", "bcubed_f1", "naming_accuracy"):
        assert f"<td>{metric}</td>" in quality
    assert "similarity.png" in quality and "projection.png" in quality
    run = q(lake, "SELECT run_id FROM identity_runs WHERE current")[0]["run_id"]
    meta = section(page, "run")
    assert run in meta and "merge_threshold" in meta
    for stage in ("decode", "shots", "detections", "tracklets", "crops", "embeddings"):
        assert f"<td>{stage}</td>" in meta


def test_report_makes_no_network_fetches(report):
    page = report["page"]
    links = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]+)', page)
    assert links and all(link.startswith("data:") for link in links)
    assert not re.search(r"https?://", " ".join(links)) and "url(" not in page and "@import" not in page
    assert "<script" not in page


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]

# appended to a copy of the page: once everything has loaded, write what a reader would see into the DOM
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images], cells = [...document.querySelectorAll('td')];
  const probe = document.createElement('pre');
  probe.id = 'probe';
  probe.textContent = JSON.stringify({
    images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    tables: document.querySelectorAll('table').length, cells: cells.length,
    filled: cells.filter(c => c.textContent.trim() !== '').length,
    empty_tables: [...document.querySelectorAll('table')].filter(t => t.tBodies[0].rows.length === 0).length,
    overflow: document.documentElement.scrollWidth > window.innerWidth});
  document.body.appendChild(probe);
});
</script>"""


def test_report_renders_in_a_headless_browser(report, tmp_path):
    browser = chromium()
    out = report["out"]
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1280,4000", (out / "index.html").as_uri()],
                   capture_output=True, timeout=180, check=True)
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.shape == (4000, 1280)
    assert pixels.std() > 20 and (pixels < 200).mean() > 0.05  # not a blank page: plots and crops are drawn

    probe_page = tmp_path / "probe.html"
    probe_page.write_text(report["page"].replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                          "--virtual-time-budget=5000", "--window-size=1280,2000", "--dump-dom",
                          probe_page.as_uri()], capture_output=True, text=True, timeout=180, check=True).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the page's load handler never ran"
    probe = json.loads(html.unescape(found.group(1)))
    n_characters = len(q(report["lake"], "SELECT character FROM characters"))
    assert probe["images"] >= 7 + n_characters  # 3 timelines, 4 plots, at least one crop per character
    assert probe["loaded"] == probe["images"]
    assert probe["tables"] >= 6 and probe["empty_tables"] == 0
    assert probe["filled"] == probe["cells"] > 0
    assert not probe["overflow"]  # nothing sticks out sideways


def test_report_refuses_bad_input(report, ingested_lake, tmp_path):
    lake, out = report["lake"], report["out"]
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = run_cli("report", "--lake", str(lake), "--series", "mini", "--out", str(out))
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before

    proc = run_cli("report", "--lake", str(lake), "--series", "nope", "--out", str(tmp_path / "a"))
    assert proc.returncode == 1 and "nope" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a" / "index.html").exists()

    plain = copy_lake(ingested_lake, tmp_path / "plain")
    proc = run_cli("report", "--lake", str(plain), "--series", "mini", "--out", str(tmp_path / "b"))
    assert proc.returncode == 1 and "no identity run" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

    proc = run_cli("report", "--lake", str(lake), "--series", "mini", "--out", str(out), "--force", check=True)
    assert Path(proc.stdout.strip()).read_text().count("<section") == 7
