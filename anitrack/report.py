"""A self-contained static HTML report of one series' current identity run.

Everything comes from the lake's DuckDB views and the named queries in ``anitrack.queries`` (screen time,
co-appearance), so the page shows the same numbers as ``anitrack sql``. Plots are Matplotlib PNGs, written
beside ``index.html`` and also inlined as data URIs, so the page opens from disk with no server and makes
no network fetches; crops are inlined from the lake's ``crops`` table.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from anitrack.lake import Lake
from anitrack.queries import check_names, run_named
from anitrack.sql import QueryError, connect, run_query
from anitrack.stages import PIPELINE

MAX_POINTS = 2000  # tracklet vectors sampled for the similarity histogram and the projection
CROPS_PER_CHARACTER = 4
QUALITY_METRICS = ("silhouette", "davies_bouldin", "calinski_harabasz", "n_clusters", "noise_fraction",
                   "adjusted_rand", "bcubed_precision", "bcubed_recall", "bcubed_f1", "naming_accuracy",
                   "mean_screen_time_error", "named_wrong_share", "gallery_credited_share", "named_seconds")


class ReportError(RuntimeError):
    """The report cannot be written (unknown series, no identity run); one line for the user."""


def write_report(lake: Lake, series: str, out: Path) -> Path:
    """Write ``out/index.html`` (plus its PNGs) for ``series``; returns the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    con = connect(lake)
    try:
        check_names(con, series)
    except QueryError as exc:
        raise ReportError(str(exc)) from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    screen = _rows(con, "screen-time-series", series=series)
    colours = _colours([r["character"] for r in screen] + [r["character"] for r in _characters(con, series)])
    run = _sql(con, "SELECT * FROM identity_runs WHERE series = $s AND current", s=series)[0]
    body = [
        f"<h1>{_e(series)}</h1><p class=sub>identity run {_e(run['run_id'])} ({_e(run['mode'])}), "
        f"{_e(str(run['created_at'])[:19])} UTC, model {_e(run['model'])}</p>",
        _screen_section(screen),
        _timeline_section(con, series, out, colours),
        _gallery_section(con, series, screen, colours),
        _naming_section(run),
        _coappearance_section(con, series, out, screen),
        _quality_section(con, series, out, run, colours),
        _metadata_section(con, series, run),
    ]
    page = out / "index.html"
    page.write_text(_PAGE.format(title=_e(f"anitrack report: {series}"), body="\n".join(body)), encoding="utf-8")
    return page


# -- data ------------------------------------------------------------------------------------------
def _sql(con, query: str, **params) -> list[dict]:
    return run_query(con, query, params=params or None).to_pylist()


def _rows(con, name: str, **params) -> list[dict]:
    return run_named(con, name, **params).to_pylist()


def _characters(con, series: str) -> list[dict]:
    return _sql(con, "SELECT * FROM characters WHERE series = $s ORDER BY NOT named, character", s=series)


def _colours(names: list[str]) -> dict[str, tuple]:
    """One colour per character, the same in every plot (ordered by screen time)."""
    from matplotlib import colormaps

    order = list(dict.fromkeys(names))
    cmap = colormaps["tab10" if len(order) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(order)}


# -- sections --------------------------------------------------------------------------------------
def _screen_section(screen: list[dict]) -> str:
    rows = [[r["character"], f"{r['seconds']:.1f}", f"{100 * r['share']:.1f}%", r["episodes"]] for r in screen]
    return _section("Screen time", _table(["character", "seconds", "share", "episodes"], rows)
                    + "<p class=sub>Openings, endings, recaps and previews are left out (see the timelines; "
                      "<code>anitrack segments</code> lists them).</p>")


def _timeline_section(con, series: str, out: Path, colours: dict) -> str:
    """Stage 8: one row per character, bars where it is on screen, shot boundaries as thin lines."""
    import matplotlib.pyplot as plt

    episodes = _sql(con, """SELECT episode, duration_s FROM episodes WHERE series = $s AND status = 'ok'
                            ORDER BY episode_number NULLS LAST, episode""", s=series)
    spans = _sql(con, "SELECT episode, character, start_s, end_s FROM appearance_spans WHERE series = $s",
                 s=series)
    cuts = _sql(con, "SELECT episode, start_s FROM shots WHERE series = $s AND start_s > 0", s=series)
    segments = _sql(con, "SELECT episode, kind, start_s, end_s FROM segments WHERE series = $s", s=series)
    names = list(colours)
    parts = []
    for ep in episodes:
        e = ep["episode"]
        length = ep["duration_s"] or max([s["end_s"] for s in spans if s["episode"] == e], default=1.0)
        fig, ax = plt.subplots(figsize=(11, 0.42 * len(names) + 1.3))
        for c in cuts:
            if c["episode"] == e:
                ax.axvline(c["start_s"], color="#b8b8b8", lw=0.8, zorder=0)
        for g in segments:  # openings, endings, recaps, previews: shaded, left out of the screen time above
            if g["episode"] == e:
                ax.axvspan(g["start_s"], g["end_s"], color="#ffd9a8", alpha=0.5, zorder=0)
                ax.text(g["start_s"], -0.45, g["kind"], fontsize=8, va="bottom", color="#8a5a00")
        for i, name in enumerate(names):
            bars = [(s["start_s"], s["end_s"] - s["start_s"]) for s in spans
                    if s["episode"] == e and s["character"] == name]
            ax.broken_barh(bars, (i - 0.35, 0.7), color=colours[name])
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xlim(0, length)
        ax.set_xlabel("seconds (grey lines: shot boundaries; shaded: openings, endings, recaps, previews)")
        n_shots = sum(c["episode"] == e for c in cuts) + 1
        ax.set_title(f"{e}: {length:.1f} s, {n_shots} shots", loc="left")
        ax.grid(axis="x", alpha=0.2)
        parts.append(_figure(fig, out / f"timeline_{e}.png", f"timeline of {e}"))
    return _section("Timelines", "".join(parts) or "<p>no episodes</p>")


def _gallery_section(con, series: str, screen: list[dict], colours: dict) -> str:
    """Each character: name, screen time, tracklets, best crops, closest reference."""
    seconds = {r["character"]: r["seconds"] for r in screen}
    crops = _sql(con, f"""
        WITH scored AS (
            SELECT a.character, c.tracklet_id, c.image, c.image_format,
                   coalesce(c.face_score, 0) * coalesce((c.face_x2 - c.face_x1) * (c.face_y2 - c.face_y1), 1)
                       AS score
            FROM crops c JOIN appearances a USING (series, episode, tracklet_id)
            WHERE c.series = $s AND c.image IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY a.character, c.tracklet_id ORDER BY score DESC) = 1)
        SELECT character, image, image_format FROM scored
        QUALIFY row_number() OVER (PARTITION BY character ORDER BY score DESC, tracklet_id)
                <= {CROPS_PER_CHARACTER}""", s=series)
    cards = []
    for ch in sorted(_characters(con, series), key=lambda c: -seconds.get(c["character"], 0.0)):
        name = ch["character"]
        images = "".join(f'<img class=crop alt="{_e(name)}" src="data:image/{_e(r["image_format"] or "png")};'
                         f'base64,{base64.b64encode(r["image"]).decode()}">'
                         for r in crops if r["character"] == name)
        closest = (f"{_e(ch['closest'])} ({ch['similarity']:.3f})" if ch["closest"] and ch["similarity"] is not None
                   else "none")
        sure = ("&ndash;" if ch["confidence"] is None else
                f"{100 * ch['confidence']:.0f}% of tracklets back it, "
                + (f"lead {ch['margin']:.2f}" if ch["named"] else f"missed by {-ch['margin']:.2f}")
                + (f", threshold {ch['threshold']:.2f}" if ch["threshold"] is not None else ""))
        swatch = "#%02x%02x%02x" % tuple(int(255 * v) for v in colours.get(name, (0.5, 0.5, 0.5))[:3])
        cards.append(
            f'<div class=card data-character="{_e(name)}"><h3><span class=swatch style="background:{swatch}">'
            f'</span>{_e(name)}</h3><div class=crops>{images or "<em>no crops</em>"}</div>'
            f"<dl><dt>screen time</dt><dd class=seconds>{seconds.get(name, 0.0):.1f} s</dd>"
            f"<dt>tracklets</dt><dd>{ch['n_tracklets']}</dd>"
            f"<dt>named by</dt><dd>{_e(ch['source'] or '')}</dd>"
            f"<dt>how sure</dt><dd class=confidence>{sure}</dd>"
            f"<dt>closest reference</dt><dd>{closest}</dd></dl></div>")
    return _section("Characters", f"<div class=gallery>{''.join(cards)}</div>")


def _naming_section(run: dict) -> str:
    """The run's naming rule and what it rests on: a name is only as good as its calibration."""
    if run.get("name_threshold") is None:
        return _section("Naming", "<p>this run predates calibrated naming</p>")
    per = json.loads(run["character_thresholds"] or "{}").get("threshold", {})
    rows = [["space", run["space"]], ["threshold (median)", f"{run['name_threshold']:.3f}"],
            ["margin over the runner-up", f"{run['name_margin']:.3f}"],
            ["calibration", run["calibration"]], ["false-name rate asked", run["max_false_rate"]],
            ["false-name rate measured on held-out references",
             "n/a" if run["calibrated_false_rate"] is None else f"{run['calibrated_false_rate']:.3f}"],
            ["held-out references named right",
             "n/a" if run["genuine_accept"] is None else f"{100 * run['genuine_accept']:.0f}%"],
            ["impostor trials / genuine pairs", f"{run['n_impostor']} / {run['n_genuine']}"]]
    if run["published_threshold"] is not None:
        rows.append(["model's published threshold (1 - difference)", f"{run['published_threshold']:.3f}"])
    warning = f"<p class=warning>{_e(run['calibration_warning'])}</p>" if run["calibration_warning"] else ""
    chars = _table(["character", "threshold"], [[c, f"{t:.3f}"] for c, t in sorted(per.items())]) if per else ""
    return _section("Naming", warning + _table(["", ""], rows) + chars)


def _coappearance_section(con, series: str, out: Path, screen: list[dict]) -> str:
    """Seconds two characters share the screen over the series: a heatmap and a network."""
    import matplotlib.pyplot as plt
    import networkx as nx

    names = [r["character"] for r in screen]
    pairs = [r for r in _rows(con, "coappearance", series=series) if r["episode"] is None]
    m = np.full((len(names), len(names)), np.nan)
    index = {n: i for i, n in enumerate(names)}
    for r in pairs:
        i, j = index[r["character_a"]], index[r["character_b"]]
        m[i, j] = m[j, i] = r["seconds"]
    size = max(4.2, 1.6 + 0.7 * len(names))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(np.nan_to_num(m), cmap="Blues")
    for i in range(len(names)):
        for j in range(len(names)):
            if i != j:
                ax.text(j, i, f"{np.nan_to_num(m[i, j]):.0f}", ha="center", va="center", fontsize=8,
                        color="white" if np.nan_to_num(m[i, j]) > 0.6 * np.nanmax(m, initial=1) else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    fig.colorbar(image, ax=ax, label="seconds on screen together")
    ax.set_title("seconds together, all episodes", loc="left")
    heat = _figure(fig, out / "coappearance.png", "co-appearance heatmap")

    graph = nx.Graph()
    graph.add_nodes_from(names)
    graph.add_weighted_edges_from((r["character_a"], r["character_b"], r["seconds"]) for r in pairs)
    pos = nx.spring_layout(graph, weight="weight", seed=1)
    fig, ax = plt.subplots(figsize=(6, 4.6))
    widest = max([r["seconds"] for r in pairs], default=1.0)
    most = max([r["seconds"] for r in screen], default=1.0)
    nx.draw_networkx_edges(graph, pos, ax=ax, edge_color="#6a8caf",
                           width=[0.5 + 6 * graph[a][b]["weight"] / widest for a, b in graph.edges])
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color="#f4d58d", edgecolors="#555",
                           node_size=[300 + 1800 * r["seconds"] / most for r in screen])
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=10)
    nx.draw_networkx_edge_labels(graph, pos, ax=ax, font_size=8,
                                 edge_labels={(a, b): f"{d['weight']:.0f} s" for a, b, d in graph.edges(data=True)})
    ax.margins(0.15)
    ax.set_title("who shares the screen (edge width: seconds together)", loc="left")
    ax.axis("off")
    net = _figure(fig, out / "network.png", "co-appearance network")
    rows = [[r["character_a"], r["character_b"], f"{r['seconds']:.1f}"] for r in pairs]
    return _section("Co-appearance", f"<div class=row>{heat}{net}</div>"
                    + _table(["character", "with", "seconds together"], rows))


def _quality_section(con, series: str, out: Path, run: dict, colours: dict) -> str:
    """The quality figures, the within/between similarity histogram and a 2-D projection of the vectors."""
    import matplotlib.pyplot as plt

    quality = _sql(con, "SELECT metric, value, character FROM quality WHERE series = $s", s=series)
    overall = {r["metric"]: r["value"] for r in quality if r["character"] is None}
    order = [m for m in QUALITY_METRICS if m in overall] + sorted(set(overall) - set(QUALITY_METRICS))
    rows = [[m, "n/a" if overall[m] is None else f"{overall[m]:.3f}"] for m in order]
    parts = [_table(["metric", "value"], rows, cls="quality")]
    errors = [[r["character"], "n/a" if r["value"] is None else f"{100 * r['value']:.1f}%"]
              for r in quality if r["character"] is not None]
    if errors:
        parts.append("<h3>Screen-time error against the truth</h3>" + _table(["character", "error"], errors))

    vectors = _sql(con, """
        SELECT e.vector, coalesce(ch.character, '(noise)') AS character, k.cluster_id
        FROM embeddings e JOIN clusters k USING (series, episode, tracklet_id)
        LEFT JOIN characters ch USING (series, cluster_id)
        WHERE e.series = $s AND e.kind = 'tracklet' AND e.model = $m
        ORDER BY e.episode, e.tracklet_id""", s=series, m=run["model"])
    if len(vectors) >= 3:
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(len(vectors), size=min(len(vectors), MAX_POINTS), replace=False))
        x = np.asarray([vectors[i]["vector"] for i in pick], np.float64)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        labels = np.array([vectors[i]["cluster_id"] for i in pick])
        names = [vectors[i]["character"] for i in pick]
        sim = x @ x.T
        upper = np.triu(np.ones_like(sim, bool), 1)
        same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        bins = np.linspace(max(-1.0, float(sim[upper].min()) - 0.02), 1, 50)
        ax.hist(sim[upper & ~same], bins=bins, density=True, alpha=0.6, label="different clusters", color="#d1495b")
        ax.hist(sim[upper & same], bins=bins, density=True, alpha=0.6, label="same cluster", color="#00798c")
        ax.set_xlabel("cosine similarity of tracklet vectors")
        ax.set_ylabel("density")
        ax.legend()
        ax.set_title("similarity within vs between clusters", loc="left")
        hist = _figure(fig, out / "similarity.png", "similarity histogram")

        centred = x - x.mean(axis=0)
        xy = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
        fig, ax = plt.subplots(figsize=(6.5, 4.8))
        for name in dict.fromkeys(names):
            k = np.array([n == name for n in names])
            ax.scatter(xy[k, 0], xy[k, 1], s=18, label=name, alpha=0.85,
                       color=colours.get(name, (0.6, 0.6, 0.6)), marker="x" if name == "(noise)" else "o")
        ax.legend(fontsize=8, loc="best")
        ax.set_title(f"tracklet vectors, PCA to 2-D ({len(pick)} of {len(vectors)})", loc="left")
        proj = _figure(fig, out / "projection.png", "2-D projection of the embeddings")
        parts.append(f"<div class=row>{hist}{proj}</div>")
    return _section("Quality", "".join(parts))


def _metadata_section(con, series: str, run: dict) -> str:
    """Parameters, models, when, and how long each stage took."""
    try:
        params = json.dumps(json.loads(run["parameters"] or "{}"), indent=2, sort_keys=True)
    except ValueError:
        params = run["parameters"] or ""
    ident = _table(["run", "mode", "model", "created (UTC)", "tracklets", "clusters", "seconds"],
                   [[run["run_id"], run["mode"], run["model"], str(run["created_at"])[:19], run["n_tracklets"],
                     run["n_clusters"], f"{run['seconds']:.2f}"]])
    episodes = _sql(con, """SELECT episode, status, profile, round(duration_s, 1) AS duration_s, fps, n_frames,
                                   width || 'x' || height AS size, strftime(ingested_at, '%Y-%m-%d %H:%M:%S') AS at
                            FROM episodes WHERE series = $s ORDER BY episode_number NULLS LAST, episode""",
                    s=series)
    stages = _sql(con, """SELECT stage, string_agg(DISTINCT model, ', ') AS model, count(*) AS runs,
                                 sum(seconds) AS seconds, sum(CASE WHEN reused THEN 1 ELSE 0 END) AS reused,
                                 any_value(parameters) AS parameters
                          FROM stage_runs WHERE series = $s GROUP BY stage""", s=series)
    stages.sort(key=lambda r: (PIPELINE.index(r["stage"]) if r["stage"] in PIPELINE else len(PIPELINE), r["stage"]))
    return _section("Run", "<h3>Identity run</h3>" + ident + f"<pre>{_e(params)}</pre>"
                    + "<h3>Episodes</h3>" + _table(list(episodes[0]) if episodes else ["episode"],
                                                   [list(r.values()) for r in episodes])
                    + "<h3>Ingest stages (all episodes)</h3>"
                    + _table(["stage", "model", "runs", "seconds", "reused", "parameters"],
                             [[r["stage"], r["model"] or "", r["runs"], f"{r['seconds'] or 0:.2f}", r["reused"],
                               r["parameters"] or ""] for r in stages]))


# -- html ------------------------------------------------------------------------------------------
def _e(text) -> str:
    return html.escape("" if text is None else str(text))


def _section(title: str, inner: str) -> str:
    anchor = title.lower().replace(" ", "-")
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{inner}</section>'


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v) if v not in (None, '') else '&ndash;'}</td>" for v in row)
                   + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figure(fig, path: Path, alt: str) -> str:
    """Save a Matplotlib figure as a PNG file and return it inlined as an <img>."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path.write_bytes(buf.getvalue())
    return (f'<figure><img alt="{_e(alt)}" data-file="{_e(path.name)}" '
            f'src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"></figure>')


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1250px; padding: 1rem 2rem; color: #222; }}
h1 {{ margin-bottom: 0; }} .sub {{ color: #666; margin-top: .2rem; }}
section {{ border-top: 1px solid #ddd; margin-top: 1.5rem; }}
table {{ border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }}
th, td {{ border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
td {{ max-width: 38rem; overflow-wrap: anywhere; }}
figure {{ margin: .5rem 0; }} figure img {{ max-width: 100%; }}
.row {{ display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }}
.row figure {{ flex: 1 1 480px; }}
.gallery {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 1rem; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: .6rem; }}
.card h3 {{ margin: 0 0 .4rem; }}
.swatch {{ display: inline-block; width: .8em; height: .8em; border-radius: 50%; margin-right: .4em; }}
.crops {{ display: flex; gap: 4px; flex-wrap: wrap; }}
.crop {{ height: 96px; border-radius: 3px; }}
dl {{ display: grid; grid-template-columns: auto 1fr; gap: .1rem .8rem; margin: .5rem 0 0; font-size: .9rem; }}
dt {{ color: #666; }} dd {{ margin: 0; }}
pre {{ background: #f6f6f6; padding: .6rem; font-size: .8rem; overflow-x: auto; }}
.warning {{ background: #fff4d6; border-left: 4px solid #e0a800; padding: .4rem .6rem; }}
</style></head>
<body>
{body}
</body></html>
"""
