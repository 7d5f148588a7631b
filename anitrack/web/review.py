"""Review and correct a series' identity in the browser: a local FastAPI app over the lake, the application
layer beside the command line.

Pages are rendered on the server from the read model (:mod:`anitrack.identity.review`; crops from the
``crops`` table, local or ``s3://``); each correction is one click that writes the ``labels`` table (rows from
:mod:`anitrack.identity.corrections`) and re-identifies, through the ``Writes`` it is given (the command line
gives it the flows, which hold the series lock). Safe by default: it binds the loopback interface, every
request carries the token minted at start (query, cookie or header), and the Host header must name the
loopback.
"""
from __future__ import annotations

import html
import json
import secrets
import threading
import time
from collections import defaultdict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from anitrack.identity import corrections
from anitrack.identity.review import Review, Writes
from anitrack.lake import Lake, LakeBusy

LOOPBACK = ("127.0.0.1", "localhost")
STATIC = Path(__file__).with_name("static")
STYLE, SCRIPT, THRESHOLD_SCRIPT = (STATIC / name for name in ("review.css", "review.js", "thresholds.js"))


# -- pages -------------------------------------------------------------------------
def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"





def _page(title: str, body: str, review: Review, token: str) -> str:
    names = "".join(f"<option value='{_e(n)}'>" for n in review.names)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<meta name=token content='{_e(token)}'><meta name=run content='{_e(review.run_id)}'>"
            f"<style>{STYLE.read_text()}</style></head><body><header><b>anitrack review · {_e(review.series)}</b>"
            f"<a href='/'>Characters</a><a href='/noise'>Noise ({len(review.members.get(-1, []))})</a>"
            f"<a href='/timeline'>Timeline</a><a href='/thresholds'>Thresholds</a>"
            f"<button onclick=\"send('/api/undo',{{}})\" id=undo>Undo last correction</button>"
            f"<span>run {_e(review.run_id)}</span><span id=status></span></header><main>{body}</main>"
            f"<datalist id=names>{names}</datalist><script>{SCRIPT.read_text()}</script></body></html>")


def _img(crop_id: str, cls: str = "") -> str:
    return f"<img src='/crop/{_e(crop_id)}' data-crop='{_e(crop_id)}' alt='crop {_e(crop_id)}' {cls}>"


def characters_page(review: Review, token: str) -> str:
    cards = []
    others = review.order()
    for c in others:
        k = c.cluster_id
        options = "".join(f"<option value={o.cluster_id}>{_e(o.character)} (#{o.cluster_id})</option>"
                          for o in others if o.cluster_id != k)
        cards.append(
            f"<div class=card data-cluster={k} data-priority='{c.priority:.3f}'>"
            f"<h3><a href='/cluster/{k}'>{_e(c.character)}</a> <span class='tag {_e(c.source)}'>{_e(c.source)}</span>"
            f" <small>#{k}</small></h3>"
            f"<div class=meta>similarity {_num(c.similarity)} · margin {_num(c.margin)} · threshold "
            f"{_num(c.threshold)} · backing {_num(c.confidence)}</div>"
            f"<div class=meta><b>{c.seconds:.1f} s</b> on screen ({c.priority:.1f} s in doubt) · "
            f"{len(c.tracklets)} tracklets · {c.episodes} "
            f"episodes · closest reference: {_e(c.closest or '–')}</div>"
            f"<div class=strip>{''.join(_img(x) for x in c.crops)}</div>"
            f"<div class=actions><input list=names class=name-input placeholder='character name' size=14>"
            f"<button class=do-name onclick=\"correct('name',{k},{{name:this.previousElementSibling.value}})\">"
            f"Name</button><select class=merge-target>{options}</select>"
            f"<button class=do-merge onclick=\"correct('merge',{k},{{other:+this.previousElementSibling.value}})\">"
            f"Merge</button><button class=do-noise onclick=\"correct('noise',{k})\">Noise</button></div></div>")
    body = (f"<p>{len(cards)} clusters, most screen time in doubt first. Click a name to see its tracklets."
            f"</p><div class=cards>{''.join(cards)}</div>")
    return _page("Characters", body, review, token)


def _tracklet_block(review: Review, t: str, ticked: bool = False) -> str:
    row = review.tracklets.get(t, {"start_s": 0.0, "end_s": 0.0})
    crops = "".join(_img(r["crop_id"], f"title='{r['t_s']:.1f} s'") for r in review.crops_of[t])
    return (f"<div class='tracklet{' picked' if ticked else ''}' data-tracklet='{_e(t)}'><label><input "
            f"type=checkbox class=pick value='{_e(t)}'{' checked' if ticked else ''}> {_e(t)} · "
            f"{row['start_s']:.1f}–{row['end_s']:.1f} s</label><div class=crops>{crops}</div></div>")


def noise_page(review: Review, token: str) -> str:
    """The noise bin: tracklets no cluster took, grouped by the character their own verdict is closest to;
    a group (its ticked tracklets) goes to a character in one click."""
    groups = defaultdict(list)
    for t in review.members.get(-1, []):
        groups[(review.verdict_of.get(t) or {}).get("best") or ""].append(t)
    seconds = lambda ts: sum(review.tracklets[t]["end_s"] - review.tracklets[t]["start_s"]  # noqa: E731
                             for t in ts if t in review.tracklets)
    blocks = []
    for n, (closest, tids) in enumerate(sorted(groups.items(), key=lambda g: -seconds(g[1]))):
        blocks.append(
            f"<section class=group id=group-{n}><h2>closest to {_e(closest or 'nobody in the gallery')} "
            f"<small>{len(tids)} tracklets · {seconds(tids):.1f} s</small></h2><div class=actions>"
            f"<input list=names class=name-input placeholder='character name' value='{_e(closest)}'>"
            f"<button class=do-name onclick=\"correct('name',-1,{{name:this.previousElementSibling.value,"
            f"tracklets:picked(this.closest('section'))}})\">Ticked are this character</button></div>"
            f"{''.join(_tracklet_block(review, t, ticked=True) for t in sorted(tids))}</section>")
    body = (f"<h1>Noise <small>{len(review.members.get(-1, []))} tracklets no cluster took</small></h1>"
            f"<p>Untick those that are not the group's character; the ticked ones become a cluster of the "
            f"name given.</p>{''.join(blocks) or '<p>The noise bin is empty.</p>'}")
    return _page("Noise", body, review, token)


def cluster_page(review: Review, k: int, token: str) -> str:
    c = review.cards[k]
    groups = defaultdict(list)
    for t in c.tracklets:
        row = review.tracklets.get(t, {"episode": t.split(":")[0], "shot_id": -1, "start_s": 0.0, "end_s": 0.0})
        groups[(row["episode"], row["shot_id"])].append((row, t))
    blocks = []
    for (episode, shot), items in sorted(groups.items()):
        blocks.append(f"<h2>{_e(episode)} · shot {shot}</h2>")
        blocks += [_tracklet_block(review, t) for row, t in sorted(items, key=lambda x: x[0]["start_s"])]
    options = "".join(f"<option value={o.cluster_id}>{_e(o.character)} (#{o.cluster_id})</option>"
                      for o in review.order() if o.cluster_id != k)
    body = (f"<h1>{_e(c.character)} <small>#{k} · {c.seconds:.1f} s · {len(c.tracklets)} tracklets</small></h1>"
            f"<p>Tick tracklets, or click crops to choose them.</p><div class=actions>"
            f"<input list=names id=ticked-name placeholder='character name' size=14><button id=do-name-ticked "
            f"onclick=\"correct('name',{k},{{tracklets:picked(),name:document.getElementById('ticked-name').value}})\">"
            f"Ticked are this character</button>"
            f"<button id=do-split onclick=\"correct('split',{k},{{tracklets:picked()}})\">Split ticked off</button>"
            f"<button id=do-noise onclick=\"correct('noise',{k},{{tracklets:picked()}})\">Ticked are noise</button>"
            f"<select id=move-target>{options}</select><button id=do-move onclick=\"correct('move',{k},"
            f"{{tracklets:picked(),other:+document.getElementById('move-target').value}})\">Move ticked</button>"
            f"<input list=names id=gallery-name placeholder='character name' value='{_e(c.character if c.named else '')}'>"
            f"<button id=do-reference onclick=\"correct('reference',{k},{{crops:chosenCrops(),"
            f"name:document.getElementById('gallery-name').value}})\">Add chosen crops to the gallery</button>"
            f"</div>{''.join(blocks)}")
    return _page(c.character, body, review, token)


def timeline_page(review: Review, token: str) -> str:
    by_episode = defaultdict(list)
    for a in review.appearances:
        by_episode[a["episode"]].append(a)
    colour = {c.character: f"hsl({(i * 137) % 360},60%,55%)" for i, c in enumerate(review.order())}
    width, row_h, left = 900, 18, 120
    parts = []
    for episode in sorted(review.durations):
        rows = sorted({a["character"] for a in by_episode[episode]})
        dur = review.durations[episode] or max((a["end_s"] for a in by_episode[episode]), default=1.0)
        height = row_h * max(len(rows), 1) + 20
        x = lambda t: left + (width - left) * t / dur  # noqa: E731
        svg = [f"<svg width={width} height={height} class=timeline data-episode='{_e(episode)}'>"]
        svg += [f"<line x1={x(s):.1f} x2={x(s):.1f} y1=0 y2={height - 20} stroke='#bbb'/>"
                for s in review.shots[episode] if s > 0]
        for i, ch in enumerate(rows):
            y = i * row_h
            svg.append(f"<text x=0 y={y + 13} font-size=12>{_e(ch)}</text>")
            for a in by_episode[episode]:
                if a["character"] == ch:
                    svg.append(f"<a href='/tracklet/{_e(a['tracklet_id'])}'><rect x={x(a['start_s']):.1f} y={y + 2}"
                               f" width={max(x(a['end_s']) - x(a['start_s']), 1):.1f} height={row_h - 4}"
                               f" fill='{colour.get(ch, '#888')}'><title>{_e(ch)} {a['start_s']:.1f}–"
                               f"{a['end_s']:.1f} s</title></rect></a>")
        svg.append(f"<text x={left} y={height - 4} font-size=11>0 s</text><text x={width - 40} y={height - 4}"
                   f" font-size=11>{dur:.0f} s</text></svg>")
        parts.append(f"<h2>{_e(episode)}</h2>" + "".join(svg))
    return _page("Timeline", "<p>Who is on screen; grey lines are shot boundaries; click a bar.</p>"
                 + "".join(parts), review, token)




def thresholds_page(review: Review, token: str) -> str:
    """A fixed naming threshold previewed on the tracklets' recorded verdicts (a cluster is named when more
    than ``name.agreement`` of its tracklets pass it for one character), then applied as an identity
    backfill."""
    cards = [{"character": c.character, "named": c.named, "source": c.source, "seconds": round(c.seconds, 2),
              "verdicts": [[v["best"], v["score"], v["lead"]] for v in map(review.verdict_of.get, c.tracklets) if v]}
             for c in review.order()]
    from anitrack.identity.inputs import identity_config

    margin = review.run.get("name_margin") or 0.0
    agreement = identity_config(review.lake, review.series)["name"]["agreement"]
    start = review.run.get("name_threshold") or 0.5
    rule = ("a fixed threshold" if review.run.get("calibration") == "fixed"
            else f"per-character thresholds ({review.run.get('calibration') or 'calibrated'}), median")
    data = html.escape(json.dumps(cards), quote=False)
    body = (f"<h1>Naming threshold</h1><p>Now: {rule} {start:.2f}. Drag "
            f"to preview a fixed threshold; labels stay as the user set them.</p>"
            f"<input type=range id=threshold min=0 max=1 step=0.01 value={start:.2f} style='width:400px'> "
            f"<b id=shown></b> <button id=apply onclick=\"send('/api/thresholds',"
            f"{{threshold:+document.getElementById('threshold').value}})\">Apply as a backfill</button> "
            f"<button id=calibrated onclick=\"send('/api/thresholds',{{threshold:0}})\">Back to calibrated</button>"
            f"<p id=summary></p><table><thead><tr><th>character</th><th>seconds now</th><th>seconds after</th>"
            f"</tr></thead><tbody id=rows></tbody></table>"
            f"<script type=application/json id=cards data-margin='{margin}' data-agreement='{agreement}'>{data}</script><script>{THRESHOLD_SCRIPT.read_text()}</script>")
    return _page("Thresholds", body, review, token)


def tracklet_page(review: Review, tid: str, token: str) -> str:
    cluster = next((k for k, ts in review.members.items() if tid in ts), None)
    owner = (f"<a href='/cluster/{cluster}'>{_e(review.cards[cluster].character)}</a>"
             if cluster in review.cards else "noise")
    crops = "".join(_img(r["crop_id"], f"title='{r['t_s']:.1f} s'") for r in review.crops_of[tid])
    return _page(tid, f"<h1>{_e(tid)}</h1><p>in {owner}</p><div class=crops>{crops}</div>", review, token)


# -- the application ----------------------------------------------------------------
def make_app(lake: Lake, series: str, writes: Writes, token: str):
    """The FastAPI app over ``series``; every write goes through ``writes``."""
    review = Review(lake, series)
    writing = threading.Lock()
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    cookie = "anitrack_review"

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if host not in LOOPBACK:
            return JSONResponse({"error": f"refused: Host {host!r} is not the loopback"}, status_code=403)
        given = (request.query_params.get("token") or request.headers.get("x-review-token")
                 or request.cookies.get(cookie) or "")
        if not secrets.compare_digest(given, token):
            return JSONResponse({"error": "refused: this page needs the token printed by anitrack review"},
                                status_code=403)
        if request.method == "POST" and not secrets.compare_digest(request.headers.get("x-review-token", ""), token):
            return JSONResponse({"error": "refused: writes carry the token header"}, status_code=403)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(cookie, token, httponly=True, samesite="strict")
        return response

    def page(text: str) -> HTMLResponse:
        return HTMLResponse(text, headers={"Cache-Control": "no-store"})

    @app.get("/")
    def characters():
        return page(characters_page(review, token))

    @app.get("/cluster/{k}")
    def cluster(k: int):
        if k not in review.cards:
            return HTMLResponse(f"cluster {k} is not in the current run <a href='/'>back</a>", status_code=404)
        return page(cluster_page(review, k, token))

    @app.get("/noise")
    def noise():
        return page(noise_page(review, token))

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/timeline")
    def timeline():
        return page(timeline_page(review, token))

    @app.get("/thresholds")
    def thresholds():
        return page(thresholds_page(review, token))

    @app.get("/tracklet/{tid}")
    def tracklet(tid: str):
        if tid not in review.crops_of and tid not in review.tracklets:
            return HTMLResponse(f"no tracklet {_e(tid)}", status_code=404)
        return page(tracklet_page(review, tid, token))

    @app.get("/crop/{crop_id}")
    def crop(crop_id: str):
        found = review.image(crop_id)
        if found is None:
            return Response(status_code=404)
        fmt, data = found
        return Response(data, media_type=f"image/{'jpeg' if fmt in ('jpg', 'jpeg') else fmt}",
                        headers={"Cache-Control": "private, max-age=3600"})

    def write(action) -> JSONResponse:
        if not writing.acquire(blocking=False):
            return JSONResponse({"error": "another correction is running; try again when it ends"}, status_code=409)
        try:
            started = time.perf_counter()
            summary = action()
            review.reload()
            seconds = time.perf_counter() - started
            return JSONResponse({"message": f"re-identified in {seconds:.1f} s (run {review.run_id})",
                                 "seconds": seconds, "run_id": review.run_id, "mode": summary["mode"]})
        except corrections.StaleRun as exc:
            review.reload()
            return JSONResponse({"error": f"{exc}; reloading"}, status_code=409)
        except LakeBusy as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except corrections.CorrectionError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        finally:
            writing.release()

    @app.post("/api/correct")
    async def correct(request: Request):
        body = await request.json()
        def act():
            rows = corrections.correction_rows(
                lake, series, str(body.get("kind")), _int(body.get("cluster")), name=body.get("name"),
                tracklets=body.get("tracklets"), other=_int(body.get("other")), crops=body.get("crops"),
                run_id=body.get("run_id"))
            return writes.correct(rows)
        return await run_in_threadpool(write, act)

    @app.post("/api/undo")
    async def undo(request: Request):
        def act():
            summary = writes.undo()
            if summary is None:
                raise corrections.CorrectionError("there is no correction to undo")
            return summary
        return await run_in_threadpool(write, act)

    @app.post("/api/thresholds")
    async def apply_threshold(request: Request):
        body = await request.json()

        def act():
            try:
                value = float(body.get("threshold"))
            except (TypeError, ValueError):
                raise corrections.CorrectionError(f"{body.get('threshold')!r} is not a threshold") from None
            if not 0.0 <= value <= 1.0:
                raise corrections.CorrectionError("the naming threshold lies in [0, 1] (0: calibrated)")
            result = writes.backfill([f"name.threshold={value:.4f}"])
            return result["identity"] or {"mode": "unchanged"}
        return await run_in_threadpool(write, act)

    app.state.review = review
    return app


def _int(value) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        raise corrections.CorrectionError(f"{value!r} is not a cluster id") from None



def serve(lake: Lake, series: str, writes: Writes, port: int = 0, announce=print) -> None:
    """Run the app on 127.0.0.1 until Ctrl-C; ``announce`` gets the URL with the token."""
    import socket

    import uvicorn

    token = secrets.token_urlsafe(24)
    app = make_app(lake, series, writes, token)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)  # connections queue from now on, so the URL works the moment it is printed
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/?token={token}"
    announce(url)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


__all__ = ["make_app", "serve"]
