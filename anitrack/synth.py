"""Synthetic anime-style episodes with exact ground truth.

Why: the tracking pipeline (shot detection, animeface face detection, IoU
tracking, appearance clustering, gallery naming) needs test videos whose every
cut, every on-screen interval and every character identity is known exactly.
Everything here is drawn with OpenCV primitives from a seed, so the same
arguments always give the same files.

Layout written by :func:`synthesize_series`::

    <out>/<series>/episode_01.mp4 ...   H.264 (libx264, yuv420p, constant fps, pts = frame index)
    <out>/<series>/truth.json           cuts, appearances, screen time (see synthesize_series)
    <out>/<series>/face_boxes.csv       per-frame face boxes of everyone on screen
    <out>/references/<Name>/ref_NN.png  6 gallery images per named character
    <out>/references/_noise/noise_NN.png  background people that are not in the cast

What an episode contains: scenes of 2-7 shots at one location (street, park, room,
classroom, abstract backdrop) with one colour grade (none / night = dark blue /
sunset = orange, strength `grading`); hard cuts inside a scene (jump cuts: same place, the camera
moved), and between scenes a hard cut or, for a share `transitions` of them, a fade through black
or a dissolve; ~10% very short shots (8-14 frames);
1-3 people per shot as bust shots with 90-200 px faces (at 480 lines), slow drift,
bobbing, talking mouths, blinks (3 frames every 2.5-5 s, which animeface mostly misses),
walk-ins/walk-outs at the frame edges, foreground desks/railings/bushes hiding bodies
(never faces), some empty scenery shots, and one-off unnamed extras.
"""

from __future__ import annotations

import itertools
import json
import math
import queue
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from anitrack.intervals import union_length

__all__ = ["EXTRA", "Design", "make_cast", "render_character", "render_portrait", "synthesize_series",
           "write_references"]

EXTRA = "_extra"  # character name used in truth appearances for unnamed background people
SS = 3  # supersampling factor: sprites are drawn 3x large without AA, then area-downsampled

# --------------------------------------------------------------------------------------
# Character designs
# --------------------------------------------------------------------------------------

# One list per initial so a cast reads "Akane, Beni, Chiyo, ..." and the seed picks the variant.
_NAMES = [
    ["Akane", "Aiko", "Ayumi"], ["Beni", "Botan"], ["Chiyo", "Chika"], ["Daichi", "Daisuke"],
    ["Emi", "Eri"], ["Fumiko", "Fuyu"], ["Goro", "Gin"], ["Haru", "Hina"], ["Izumi", "Isamu"],
    ["Jun", "Junko"], ["Kaede", "Kenji"], ["Mei", "Mio"], ["Nao", "Natsu"], ["Osamu", "Otome"],
    ["Rin", "Ren"], ["Sora", "Saki"], ["Taro", "Tomo"], ["Ume", "Ushio"], ["Wakana", "Wataru"],
    ["Yui", "Yuki"], ["Zen", "Zenko"],
]

_HAIR = [(40, 38, 52), (112, 70, 44), (242, 212, 122), (205, 52, 50), (246, 150, 190),
         (70, 112, 222), (204, 208, 218), (80, 172, 100), (142, 90, 192), (242, 140, 50),
         (50, 168, 170), (38, 50, 112), (150, 60, 40), (192, 172, 232)]
_EYES = [(50, 110, 225), (205, 45, 60), (55, 165, 80), (150, 85, 40), (160, 80, 205),
         (235, 170, 40), (45, 170, 185), (95, 95, 110), (230, 95, 150)]
_SKIN = [(255, 230, 212), (252, 220, 196), (246, 210, 182), (236, 196, 166), (222, 178, 142)]
_OUTFIT = [(32, 42, 96), (210, 212, 222), (165, 32, 42), (42, 96, 62), (232, 200, 92),
           (92, 62, 122), (62, 62, 66), (122, 172, 222), (232, 132, 152), (152, 112, 72)]
_ACCENT = [(220, 40, 50), (250, 250, 250), (40, 60, 140), (240, 200, 60), (60, 160, 90), (20, 20, 24)]
_BANGS = ["spiky", "straight", "swept", "parted"]
_LENGTH = ["short", "medium", "long"]
_TAIL = ["none", "ponytail", "twintails", "bun", "sidetail"]
_OUTFIT_STYLE = ["sailor", "blazer", "hoodie", "dress", "jacket"]


@dataclass(frozen=True)
class Design:
    """Everything that makes a character recognisable; rendering is a pure function of it."""

    name: str
    hair: tuple
    eyes: tuple
    skin: tuple
    outfit: tuple
    accent: tuple
    bangs: str
    length: str
    tail: str
    outfit_style: str
    ahoge: bool = False
    blush: bool = False
    spikes: int = 5
    spike_seed: int = 0  # jitter of individual bang spikes, part of the hair shape


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _random_design(rng: np.random.Generator, name: str, avoid_hair=()) -> Design:
    """A random design; used for extras and as the base of cast designs.

    Extras pass the cast's hair colours in `avoid_hair` so a background person is never a
    near-copy of a named character (unless the palette is exhausted).
    """
    hairs = [h for h in _HAIR if h not in set(avoid_hair)] or _HAIR
    return Design(
        name=name, hair=_pick(rng, hairs), eyes=_pick(rng, _EYES), skin=_pick(rng, _SKIN),
        outfit=_pick(rng, _OUTFIT), accent=_pick(rng, _ACCENT), bangs=_pick(rng, _BANGS),
        length=_pick(rng, _LENGTH), tail=_pick(rng, _TAIL), outfit_style=_pick(rng, _OUTFIT_STYLE),
        ahoge=bool(rng.random() < 0.25), blush=bool(rng.random() < 0.4),
        spikes=int(rng.integers(4, 8)), spike_seed=int(rng.integers(1 << 30)),
    )


def _cast_names(n: int, rng: np.random.Generator) -> list[str]:
    names = []
    for i in range(n):
        group = _NAMES[i % len(_NAMES)]
        name = group[int(rng.integers(len(group)))]
        names.append(name if i < len(_NAMES) else f"{name}{i // len(_NAMES) + 1}")
    return names


def _lookalike_pairs(n: int, lookalikes: int) -> list[tuple[int, int]]:
    """Indices (1,2), (3,4), ...: never the protagonist (0), so pair roles stay stable."""
    pairs = []
    for k in range(max(0, lookalikes)):
        a, b = 1 + 2 * k, 2 + 2 * k
        if b >= n:
            break
        pairs.append((a, b))
    return pairs


def make_cast(characters: int, seed: int = 7, lookalikes: int = 1) -> list[Design]:
    """Deterministic cast of `characters` designs.

    Hair colour, eye colour, outfit colour and outfit style are drawn from shuffled
    palettes so that (up to the palette size) no two characters share them.  Each
    lookalike pair copies hair colour and hair shape and skin from its partner and keeps
    its own eyes and outfit: they differ only in the face details and clothes.
    """
    rng = np.random.default_rng([seed, 101])
    names = _cast_names(characters, rng)
    hair = rng.permutation(len(_HAIR))
    eyes = rng.permutation(len(_EYES))
    outfit = rng.permutation(len(_OUTFIT))
    ostyle = rng.permutation(len(_OUTFIT_STYLE))
    bangs = rng.permutation(len(_BANGS))
    tails = rng.permutation(len(_TAIL))
    cast = []
    for i, name in enumerate(names):
        d = _random_design(rng, name)
        d = replace(
            d, hair=_HAIR[hair[i % len(_HAIR)]], eyes=_EYES[eyes[i % len(_EYES)]],
            outfit=_OUTFIT[outfit[i % len(_OUTFIT)]],
            outfit_style=_OUTFIT_STYLE[ostyle[i % len(_OUTFIT_STYLE)]],
            bangs=_BANGS[bangs[i % len(_BANGS)]], tail=_TAIL[tails[i % len(_TAIL)]],
            length=_LENGTH[(i + int(rng.integers(3))) % len(_LENGTH)],
        )
        cast.append(d)
    for a, b in _lookalike_pairs(characters, lookalikes):
        src = cast[a]
        cast[b] = replace(cast[b], hair=src.hair, bangs=src.bangs, length=src.length, tail=src.tail,
                          ahoge=src.ahoge, spikes=src.spikes, spike_seed=src.spike_seed, skin=src.skin)
    return cast


# --------------------------------------------------------------------------------------
# Character sprite rendering
# --------------------------------------------------------------------------------------

def _mix(c, other, t):
    return tuple(int(round(a * (1 - t) + b * t)) for a, b in zip(c, other))


def _dark(c, t):
    return _mix(c, (0, 0, 0), t)


def _light(c, t):
    return _mix(c, (255, 255, 255), t)


def _arc(cx, cy, rx, ry, a0, a1, n=40):
    """Points of an ellipse arc, angles in degrees, OpenCV orientation (y down)."""
    t = np.radians(np.linspace(a0, a1, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


class _Canvas:
    """Supersampled RGB + coverage canvas with coordinates in face units.

    Face-box coordinates: (0,0) is the face box top-left, (1,1) its bottom-right,
    x scaled by face width W and y by face height H.  Drawing without anti-aliasing
    at SS x resolution then INTER_AREA downsampling gives clean anti-aliased sprites
    and an alpha channel for free.
    """

    def __init__(self, face_w, face_h, x0, x1, y0, y1):
        self.W, self.H = face_w * SS, face_h * SS
        self.ox, self.oy = -x0 * self.W, -y0 * self.H
        cw = int(math.ceil((x1 - x0) * face_w)) * SS
        ch = int(math.ceil((y1 - y0) * face_h)) * SS
        self.rgb = np.zeros((ch, cw, 3), np.uint8)
        self.mask = np.zeros((ch, cw), np.uint8)

    def pts(self, p):
        p = np.asarray(p, np.float64)
        q = np.empty_like(p)
        q[:, 0] = p[:, 0] * self.W + self.ox
        q[:, 1] = p[:, 1] * self.H + self.oy
        return np.round(q).astype(np.int32)

    def poly(self, p, color, cover=True):
        q = [self.pts(p)]
        cv2.fillPoly(self.rgb, q, color)
        if cover:
            cv2.fillPoly(self.mask, q, 255)

    def line(self, p, color, width, closed=False):
        q = [self.pts(p)]
        t = max(1, int(round(width * self.H)))
        cv2.polylines(self.rgb, q, closed, color, t)
        cv2.polylines(self.mask, q, closed, 255, t)

    def ell(self, cx, cy, rx, ry, color, a0=0, a1=360):
        self.poly(_arc(cx, cy, rx, ry, a0, a1, 48), color)

    def finish(self):
        """Downsample; return premultiplied RGB and alpha (uint8)."""
        h, w = self.mask.shape[0] // SS, self.mask.shape[1] // SS
        a = cv2.resize(self.mask, (w, h), interpolation=cv2.INTER_AREA)
        prem = self.rgb.astype(np.uint16) * self.mask[..., None].astype(np.uint16) // 255
        prem = cv2.resize(prem.astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA)
        return prem, a


# sprite extent in face units; the face box is [0,1]x[0,1]
_X0, _X1, _Y0, _Y1 = -0.95, 1.95, -0.45, 2.4
ASPECT = 0.82  # face width / face height


def _back_hair(cv, d: Design):
    hair, shade = d.hair, _dark(d.hair, 0.22)
    line = _dark(d.hair, 0.6)
    # tails go behind everything
    if d.tail in ("ponytail", "sidetail"):
        side = 1 if d.tail == "ponytail" else -1
        bx = 0.5 + side * 0.45
        tail = [(bx, 0.05), (bx + side * 0.45, 0.2), (bx + side * 0.55, 0.8), (bx + side * 0.35, 1.45),
                (bx + side * 0.4, 1.0), (bx + side * 0.2, 0.5), (bx - side * 0.05, 0.35)]
        cv.poly(tail, shade)
        cv.line(tail, line, 0.012, closed=True)
        cv.ell(bx, 0.12, 0.07, 0.07, d.accent)
    elif d.tail == "twintails":
        for side in (-1, 1):
            bx = 0.5 + side * 0.55
            tail = [(bx, -0.02), (bx + side * 0.35, 0.15), (bx + side * 0.48, 0.9), (bx + side * 0.3, 1.7),
                    (bx + side * 0.3, 1.1), (bx + side * 0.08, 0.45), (bx - side * 0.05, 0.25)]
            cv.poly(tail, shade)
            cv.line(tail, line, 0.012, closed=True)
            cv.ell(bx, 0.05, 0.08, 0.08, d.accent)
    elif d.tail == "bun":
        cv.ell(0.5, -0.28, 0.26, 0.2, hair)
        cv.line(_arc(0.5, -0.28, 0.26, 0.2, 0, 360), line, 0.012, closed=True)
    # mass of hair behind the head
    bottom = {"short": 0.72, "medium": 1.15, "long": 1.75}[d.length]
    back = list(_arc(0.5, 0.38, 0.66, 0.58, 180, 360)) + [(1.16, bottom - 0.1), (1.0, bottom), (0.82, bottom - 0.08),
                                                          (0.18, bottom - 0.08), (0.0, bottom), (-0.16, bottom - 0.1)]
    cv.poly(back, shade)
    cv.line(back, line, 0.012, closed=True)


def _body(cv, d: Design):
    skin_shade = _dark(d.skin, 0.12)
    o, od = d.outfit, _dark(d.outfit, 0.35)
    cv.poly([(0.36, 0.75), (0.64, 0.75), (0.66, 1.25), (0.34, 1.25)], skin_shade)  # neck
    torso = [(-0.75, _Y1 + 0.1), (-0.7, 1.5), (-0.5, 1.3), (0.12, 1.13), (0.88, 1.13), (1.5, 1.3), (1.7, 1.5),
             (1.75, _Y1 + 0.1)]
    cv.poly(torso, o)
    cv.line(torso[1:-1], od, 0.014)
    st = d.outfit_style
    if st == "sailor":
        collar = [(0.05, 1.13), (0.5, 1.62), (0.95, 1.13), (1.45, 1.35), (0.5, 1.95), (-0.45, 1.35)]
        cv.poly(collar, d.accent if d.accent != o else (245, 245, 245))
        cv.line(collar, od, 0.012, closed=True)
        cv.poly([(0.5, 1.62), (0.3, 1.9), (0.5, 1.85), (0.7, 1.9)], (215, 40, 55))
    elif st == "blazer":
        cv.poly([(0.2, 1.13), (0.5, 1.75), (0.8, 1.13)], (245, 245, 245))
        cv.poly([(0.45, 1.25), (0.55, 1.25), (0.58, 1.8), (0.5, 1.9), (0.42, 1.8)], d.accent)
        cv.line([(0.12, 1.13), (0.5, 1.95), (0.88, 1.13)], od, 0.03)
    elif st == "hoodie":
        cv.poly(list(_arc(0.5, 1.15, 0.55, 0.14, 0, 180)), _dark(o, 0.15))
        cv.line([(0.35, 1.25), (0.32, 1.7)], (240, 240, 240), 0.018)
        cv.line([(0.65, 1.25), (0.68, 1.7)], (240, 240, 240), 0.018)
    elif st == "dress":
        cv.poly(list(_arc(0.5, 1.13, 0.34, 0.3, 0, 180)), d.skin)
        cv.line(list(_arc(0.5, 1.13, 0.36, 0.32, 0, 180)), d.accent, 0.035)
    else:  # jacket with high collar
        cv.poly([(0.25, 1.0), (0.75, 1.0), (0.85, 1.2), (0.15, 1.2)], _dark(o, 0.2))
        cv.line([(0.5, 1.2), (0.5, _Y1 + 0.1)], d.accent, 0.03)


def _front_locks(cv, d: Design):
    """Long hair falls over the shoulders in front of the body."""
    if d.length != "long":
        return
    line = _dark(d.hair, 0.6)
    for side in (-1, 1):
        x = 0.5 + side * 0.55
        lock = [(x - side * 0.02, 0.45), (x + side * 0.12, 0.45), (x + side * 0.2, 1.2), (x + side * 0.1, 1.75),
                (x - side * 0.02, 1.3), (x - side * 0.06, 0.8)]
        cv.poly(lock, d.hair)
        cv.line(lock, line, 0.012, closed=True)


def _face(cv, d: Design, facing: int, mouth: int, blink: bool):
    skin, line = d.skin, (60, 36, 36)
    s = 0.06 * facing  # feature shift for a 3/4 view
    # ears, then the face with a pointed chin
    cv.ell(-0.02, 0.55, 0.07, 0.12, _dark(skin, 0.05))
    cv.ell(1.02, 0.55, 0.07, 0.12, _dark(skin, 0.05))
    face = list(_arc(0.5, 0.42, 0.5, 0.42, 180, 360, 30)) + [
        (1.0, 0.45), (0.97, 0.62), (0.86, 0.8), (0.5 + 1.3 * s, 1.0), (0.14, 0.8), (0.03, 0.62), (0.0, 0.45)]
    cv.poly(face, skin)
    cv.line(face[29:] + [face[0]], _dark(skin, 0.55), 0.012)
    if d.blush:
        for bx in (0.22, 0.78):
            cv.ell(bx + s, 0.72, 0.09, 0.03, _mix(skin, (240, 120, 140), 0.35))
    # eyes
    eye_y = 0.56
    for k, ex in enumerate((0.29, 0.71)):
        ex += s
        far = (k == 0 and facing > 0) or (k == 1 and facing < 0)
        rx, ry = 0.13 * (0.85 if far else 1.0), 0.115
        if blink:
            cv.line(_arc(ex, eye_y - 0.02, rx * 1.1, 0.05, 20, 160), (40, 25, 25), 0.03)
            continue
        cv.ell(ex, eye_y, rx, ry, (252, 252, 252))
        # iris: dark rim and a shadowed top keep the eye contrasty whatever the iris colour
        cv.ell(ex, eye_y + 0.008, rx * 0.8, ry * 0.97, _dark(d.eyes, 0.55))
        cv.ell(ex, eye_y + 0.012, rx * 0.7, ry * 0.88, d.eyes)
        cv.ell(ex, eye_y - 0.01, rx * 0.7, ry * 0.6, _dark(d.eyes, 0.35), 180, 360)
        cv.ell(ex, eye_y + 0.045, rx * 0.55, ry * 0.45, _light(d.eyes, 0.35), 0, 180)
        cv.ell(ex, eye_y, rx * 0.4, ry * 0.52, _dark(d.eyes, 0.75))
        cv.ell(ex - rx * 0.3, eye_y - ry * 0.38, rx * 0.3, rx * 0.3, (255, 255, 255))
        cv.ell(ex + rx * 0.32, eye_y + ry * 0.42, rx * 0.13, rx * 0.13, (255, 255, 255))
        outer = 1 if ex > 0.5 + s else -1
        lash = list(_arc(ex, eye_y + 0.005, rx * 1.08, ry * 1.05, 195, 345, 16))
        cv.line(lash, (30, 20, 22), 0.032)
        tip = lash[-1] if outer > 0 else lash[0]
        cv.line([tip, (tip[0] + outer * 0.05, tip[1] - 0.015)], (30, 20, 22), 0.022)
        # eyebrow, usually half hidden by bangs
        cv.line(_arc(ex, eye_y - 0.17, rx, 0.03, 200, 340, 8), _dark(d.hair, 0.45), 0.014)
    # nose and mouth
    cv.line([(0.5 + 1.3 * s, 0.71), (0.51 + 1.3 * s, 0.735)], _dark(skin, 0.35), 0.01)
    mx = 0.5 + 1.2 * s
    if mouth:
        cv.ell(mx, 0.855, 0.06, 0.035, (150, 45, 58))
        cv.ell(mx, 0.875, 0.035, 0.014, (225, 110, 120))
    else:
        cv.line(_arc(mx, 0.83, 0.06, 0.02, 30, 150, 8), line, 0.012)


def _bangs(cv, d: Design):
    hair, line = d.hair, _dark(d.hair, 0.6)
    rng = np.random.default_rng(d.spike_seed)
    top = list(_arc(0.5, 0.38, 0.62, 0.55, 180, 360, 36))  # from left (-0.12, 0.38) over the top
    right_lock = [(1.12, 0.42), (1.05, 0.82), (0.93, 0.4)]
    left_lock = [(0.07, 0.4), (-0.05, 0.82), (-0.12, 0.42)]
    edge = []
    n = d.spikes
    xs = np.linspace(0.93, 0.07, 2 * n + 1)
    if d.bangs == "straight":  # blunt fringe with short regular teeth; a fully flat edge hides the
        for i, x in enumerate(xs):  # forehead and animeface then misses dark-haired faces
            edge.append((x, 0.36 if i % 2 else 0.3))
    elif d.bangs == "parted":
        for i, x in enumerate(xs):
            dist = abs(x - 0.5)
            y = 0.05 + dist * 0.8 if i % 2 == 0 else 0.25 + dist * 0.4
            edge.append((x, min(y, 0.42)))
        edge[n] = (0.5, 0.02)
    else:
        lean = -0.06 if d.bangs == "swept" else 0.0
        for i, x in enumerate(xs):
            if i % 2:  # spike tip
                edge.append((x + lean, 0.36 + 0.05 * rng.random()))
            else:  # root between spikes
                edge.append((x, 0.2 + 0.06 * rng.random()))
    poly = top + right_lock + edge + left_lock
    cv.poly(poly, hair)
    cv.line(poly, line, 0.012, closed=True)
    cv.line(_arc(0.5, 0.12, 0.42, 0.16, 200, 340, 20), _light(hair, 0.45), 0.035)  # shine band
    if d.ahoge:
        cv.line([(0.5, -0.16), (0.6, -0.32), (0.7, -0.3)], hair, 0.03)


def render_character(design: Design, face_h: int, facing: int = 0, mouth: int = 0, blink: bool = False):
    """Render one character as a sprite.

    Returns (premultiplied_rgb uint8 HxWx3, alpha uint8 HxW, face_box (x, y, w, h)) where
    face_box is the skin face region (forehead to chin, cheek to cheek) in sprite pixels.
    `facing` in {-1, 0, 1} shifts the features for a 3/4 view; `mouth` 1 = open.
    """
    face_h = int(face_h)
    face_w = face_h * ASPECT
    cv = _Canvas(face_w, face_h, _X0, _X1, _Y0, _Y1)
    _back_hair(cv, design)
    _body(cv, design)
    _front_locks(cv, design)
    _face(cv, design, facing, mouth, blink)
    _bangs(cv, design)
    prem, alpha = cv.finish()
    box = (int(round(-_X0 * face_w)), int(round(-_Y0 * face_h)), int(round(face_w)), face_h)
    return prem, alpha, box


def render_portrait(design: Design, face_h: int, size=(360, 420), background=(235, 235, 240), **pose) -> np.ndarray:
    """RGB image of a character on a flat background, face centred in the upper half."""
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = background
    prem, alpha, (fx, fy, fw, fh) = render_character(design, face_h, **pose)
    x = w // 2 - (fx + fw // 2)
    y = int(h * 0.42) - (fy + fh // 2)
    _composite(img, prem, alpha, x, y)
    return img


def _composite(frame, prem, alpha, x, y, extend=False):
    """Alpha-composite a premultiplied sprite at integer (x, y), clipped to the frame.

    With extend=True the sprite's last row is repeated down to the frame bottom (bodies
    continue below the sprite instead of ending mid-air).
    """
    fh, fw = frame.shape[:2]
    sh, sw = alpha.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + sw, fw), min(y + sh, fh)
    if x1 > x0 and y1 > y0:
        p = prem[y0 - y:y1 - y, x0 - x:x1 - x]
        a = alpha[y0 - y:y1 - y, x0 - x:x1 - x]
        _blend(frame[y0:y1, x0:x1], p, a)
    if extend and y + sh < fh and x1 > x0:
        yb = max(y + sh, 0)
        p = np.broadcast_to(prem[-1:, x0 - x:x1 - x], (fh - yb, x1 - x0, 3))
        a = np.broadcast_to(alpha[-1:, x0 - x:x1 - x], (fh - yb, x1 - x0))
        _blend(frame[yb:fh, x0:x1], p, a)


def _blend(dst, prem, alpha):
    inv = (255 - alpha.astype(np.uint16))[..., None]
    dst[:] = ((dst.astype(np.uint16) * inv + 127) // 255 + prem).clip(0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------
# Backgrounds and colour grading
# --------------------------------------------------------------------------------------

_LOCATION_KINDS = ["street", "park", "room", "classroom", "abstract"]


def _rand_color(rng, lo=40, hi=230):
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _vgrad(img, y0, y1, c0, c1):
    """Vertical gradient from c0 to c1 over rows y0..y1."""
    n = max(1, y1 - y0)
    t = np.linspace(0.0, 1.0, n)[:, None]
    row = (np.array(c0, np.float32)[None] * (1 - t) + np.array(c1, np.float32)[None] * t).astype(np.uint8)
    img[y0:y1] = row[:, None, :]


def _make_location(rng: np.random.Generator, kind: str, w: int, h: int) -> np.ndarray:
    """A flat-colour scene (RGB) bigger than the frame; shots crop and pan over it."""
    img = np.zeros((h, w, 3), np.uint8)
    if kind in ("street", "park"):
        horizon = int(h * rng.uniform(0.55, 0.7))
        sky_top = _pick(rng, [(70, 130, 220), (110, 160, 235), (150, 190, 240), (90, 120, 200)])
        _vgrad(img, 0, horizon, sky_top, _light(sky_top, 0.55))
        for _ in range(int(rng.integers(2, 6))):  # clouds
            cx, cy = int(rng.integers(w)), int(rng.integers(h * 0.05, horizon * 0.6))
            for k in range(3):
                cv2.ellipse(img, (cx + k * 35 - 35, cy - (k % 2) * 12), (int(rng.integers(30, 60)), 22), 0, 0, 360,
                            (250, 250, 252), -1, cv2.LINE_AA)
        if kind == "street":
            _vgrad(img, horizon, h, (120, 120, 128), (85, 85, 92))
            x = -int(rng.integers(0, 60))
            while x < w:
                bw, bh = int(rng.integers(90, 220)), int(rng.integers(int(h * 0.2), int(horizon * 0.95)))
                col = _rand_color(rng, 90, 220)
                cv2.rectangle(img, (x, horizon - bh), (x + bw, horizon), col, -1)
                win = _dark(col, 0.35) if rng.random() < 0.5 else _light(col, 0.5)
                for wy in range(horizon - bh + 18, horizon - 30, 42):
                    for wx in range(x + 14, x + bw - 28, 38):
                        cv2.rectangle(img, (wx, wy), (wx + 18, wy + 24), win, -1)
                cv2.rectangle(img, (x, horizon - bh), (x + bw, horizon), _dark(col, 0.4), 2)
                x += bw + int(rng.integers(0, 25))
            cv2.rectangle(img, (0, horizon), (w, horizon + 14), (175, 172, 165), -1)
            for lx in range(0, w, 120):
                cv2.rectangle(img, (lx, int(h * 0.9)), (lx + 60, int(h * 0.9) + 8), (235, 235, 235), -1)
        else:
            grass = _pick(rng, [(96, 170, 80), (120, 180, 90), (80, 150, 95)])
            for _ in range(3):
                cv2.ellipse(img, (int(rng.integers(w)), horizon + 20), (int(rng.integers(200, 420)), 90), 0, 180, 360,
                            _dark(grass, 0.15), -1, cv2.LINE_AA)
            _vgrad(img, horizon, h, grass, _dark(grass, 0.3))
            for _ in range(int(rng.integers(4, 9))):
                tx, th = int(rng.integers(w)), int(rng.integers(90, 200))
                cv2.rectangle(img, (tx - 10, horizon - th // 2), (tx + 10, horizon + 10), (110, 75, 50), -1)
                leaf = _dark(grass, float(rng.uniform(0.1, 0.4)))
                for k in range(3):
                    cv2.circle(img, (tx + (k - 1) * 30, horizon - th // 2 - (k % 2) * 30), int(th * 0.35), leaf, -1,
                               cv2.LINE_AA)
    elif kind in ("room", "classroom"):
        wall = _rand_color(rng, 150, 240)
        floor_y = int(h * rng.uniform(0.7, 0.8))
        _vgrad(img, 0, floor_y, _light(wall, 0.2), _dark(wall, 0.15))
        floor = _pick(rng, [(160, 120, 80), (190, 160, 120), (120, 120, 130), (170, 140, 110)])
        _vgrad(img, floor_y, h, floor, _dark(floor, 0.3))
        cv2.line(img, (0, floor_y), (w, floor_y), _dark(wall, 0.5), 4)
        for _ in range(int(rng.integers(1, 4))):  # windows
            wx, ww = int(rng.integers(0, w - 200)), int(rng.integers(140, 260))
            wy0, wy1 = int(h * 0.12), int(h * rng.uniform(0.45, 0.6))
            _vgrad(img[:, wx:wx + ww], wy0, wy1, (110, 165, 235), (200, 225, 250))
            cv2.rectangle(img, (wx, wy0), (wx + ww, wy1), (245, 245, 245), 8)
            cv2.line(img, (wx + ww // 2, wy0), (wx + ww // 2, wy1), (245, 245, 245), 6)
        if kind == "classroom":
            bx = int(rng.integers(0, w // 2))
            cv2.rectangle(img, (bx, int(h * 0.15)), (bx + int(w * 0.4), int(h * 0.5)), (40, 85, 60), -1)
            cv2.rectangle(img, (bx, int(h * 0.15)), (bx + int(w * 0.4), int(h * 0.5)), (120, 90, 60), 10)
            for k in range(4):
                y = int(h * 0.2) + k * 22
                cv2.line(img, (bx + 30, y), (bx + 30 + int(rng.integers(80, 300)), y), (230, 230, 220), 3, cv2.LINE_AA)
        else:
            for _ in range(int(rng.integers(1, 4))):  # door, shelves, posters
                x0, bw = int(rng.integers(0, w - 150)), int(rng.integers(60, 160))
                y0 = int(h * rng.uniform(0.15, 0.45))
                col = _rand_color(rng, 60, 220)
                cv2.rectangle(img, (x0, y0), (x0 + bw, floor_y if rng.random() < 0.5 else y0 + bw), col, -1)
                cv2.rectangle(img, (x0, y0), (x0 + bw, floor_y if rng.random() < 0.5 else y0 + bw), _dark(col, 0.4), 3)
    else:  # abstract backdrop used for dramatic close-ups
        c0, c1 = _rand_color(rng, 60, 240), _rand_color(rng, 60, 240)
        _vgrad(img, 0, h, c0, c1)
        step = int(rng.integers(40, 90))
        stripe = _mix(c0, c1, 0.5)
        for x in range(-h, w, step * 2):
            pts = np.array([[x, h], [x + h, 0], [x + h + step, 0], [x + step, h]], np.int32)
            cv2.fillPoly(img, [pts], stripe, cv2.LINE_AA)
    return img


TRANSITION_HALF = {"fade": 6, "dissolve": 5}  # frames on each side of the boundary


def _plan_transitions(shots: list, rng: np.random.Generator, share: float) -> None:
    """Turn a share of the scene changes into fades and dissolves (as openings, endings and flashbacks do).

    Drawn from their own random stream, so the rest of the plan is the same with or without them. Both
    shots must outlast the transition, so a very short shot keeps its hard cut.
    """
    if not shots:
        return
    shots[0].transition = "none"
    for prev, shot in zip(shots, shots[1:]):
        draw = rng.random()
        if not shot.scene_start or draw >= share:
            continue
        kind = "fade" if draw < share / 2 else "dissolve"
        h = TRANSITION_HALF[kind]
        if min(prev.end - prev.start, shot.end - shot.start) >= 2 * h + 4:
            shot.transition, shot.half = kind, h


def _blend_transition(kind: str, h: int, tail: list, head: list) -> None:
    """Blend the outgoing shot's last `h` frames with the incoming shot's first `h`, in place.

    A fade darkens to black and back, the boundary between the two darkest frames; a dissolve mixes
    the moving outgoing shot with the incoming shot's first frame, then the outgoing shot's last frame
    with the moving incoming shot, the mix crossing one half at the boundary.
    """
    last, first = tail[-1][1].astype(np.float32), head[0][1].astype(np.float32)
    for j, item in enumerate(tail + head):
        frame = item[1].astype(np.float32)
        if kind == "fade":
            out = frame * (abs(j - h + 0.5) / h)
        else:
            w = (j + 0.5) / (2 * h)
            out = (1 - w) * frame + w * first if j < h else (1 - w) * last + w * frame
        item[1][...] = np.clip(out + 0.5, 0, 255).astype(np.uint8)


_GRADES = ["none", "night", "sunset"]


def _grade_lut(kind: str, strength: float) -> np.ndarray | None:
    """Per-channel affine colour grade as a (256,1,3) LUT; night = dark blue, sunset = orange."""
    if kind == "none" or strength <= 0:
        return None
    s = float(strength)
    if kind == "night":
        gain, off = (1 - 0.62 * s, 1 - 0.5 * s, 1 - 0.15 * s), (0, 8 * s, 45 * s)
    else:
        gain, off = (1 - 0.05 * s, 1 - 0.25 * s, 1 - 0.55 * s), (55 * s, 18 * s, 0)
    v = np.arange(256, dtype=np.float32)
    lut = np.stack([np.clip(v * g + o, 0, 255) for g, o in zip(gain, off)], axis=1)
    return np.round(lut).astype(np.uint8).reshape(256, 1, 3)


# --------------------------------------------------------------------------------------
# Episode planning: shots, scenes, who is where on every frame
# --------------------------------------------------------------------------------------

@dataclass
class _Actor:
    """One character in one shot; per-frame arrays are indexed by frame - shot.start."""

    name: str  # cast name, or EXTRA
    design: Design
    face_h: int
    x: np.ndarray  # face-box centre x (float, frame pixels)
    y: np.ndarray  # face-box top y
    facing: np.ndarray
    mouth: np.ndarray
    blink: np.ndarray

    @property
    def face_w(self) -> int:
        return int(round(self.face_h * ASPECT))

    def visible(self, width: int) -> np.ndarray:
        """On screen = face-box centre inside the frame (at least half the face visible)."""
        return (self.x >= 0) & (self.x < width)


@dataclass
class _Shot:
    start: int
    end: int
    location: int
    grade: str
    crop: tuple  # (x, y, w, h) window in location pixels at the shot's first frame
    pan: float  # background pan, frame pixels per frame
    actors: list = field(default_factory=list)
    scene_start: bool = False  # the first shot of a new scene (a new place)
    occluder: tuple | None = None  # (top_y, colour, style)
    transition: str = "cut"  # how the shot begins: cut, fade (through black) or dissolve; "none" for the first
    half: int = 0  # a fade or dissolve spans frames [start - half, start + half)


def _shot_lengths(rng, n_frames, mean_frames):
    """Log-normal shot lengths around the mean with ~10% very short (8-14 frame) shots."""
    lengths, total = [], 0
    lo = max(16, int(0.35 * mean_frames))
    while total < n_frames:
        if rng.random() < 0.1:
            n = int(rng.integers(8, 15))
        else:
            n = int(np.clip(rng.lognormal(math.log(mean_frames * 0.92), 0.45), lo, 3.5 * mean_frames))
        rest = n_frames - total
        if n >= rest or rest - n < 8:
            n = rest
        if n < 8 and lengths:  # too short to be a shot of its own
            lengths[-1] += n
        else:
            lengths.append(n)
        total += n
    return lengths


def _weighted_pick(rng, pool, k, weights, never, chosen=()):
    """Extend `chosen` to up to k distinct members of pool, weighted, never both of the `never` pair."""
    chosen = list(chosen)
    cand = [c for c in pool if c not in chosen]
    if never:
        for c in chosen:
            if c in never:
                cand = [x for x in cand if x not in never]
    while cand and len(chosen) < k:
        w = np.array([weights[c] for c in cand], np.float64)
        c = cand[int(rng.choice(len(cand), p=w / w.sum()))]
        chosen.append(c)
        cand.remove(c)
        if never and c in never:
            other = never[1] if c == never[0] else never[0]
            if other in cand:
                cand.remove(other)
    return chosen


def _moved(item, shift: int, caption: str | None):
    i, frame, boxes = item
    if caption:
        lines = caption.splitlines()
        for k, line in enumerate(lines):
            y = frame.shape[0] - 18 - 22 * (len(lines) - 1 - k)
            cv2.putText(frame, line, (24, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 4, cv2.LINE_AA)
            cv2.putText(frame, line, (24, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return i + shift, frame, boxes


class _Episode:
    """Plan of one episode; rendering and truth both read the same per-frame arrays."""

    def __init__(self, rng, cast, episode_cast, n_frames, fps, width, height, grading, mean_shot_s,
                 extras, never, together, transitions=(None, 0.0)):
        self.width, self.height, self.n_frames = width, height, n_frames
        self.cast, self.grading = cast, grading
        self.shots: list[_Shot] = []
        self._locations: dict[int, np.ndarray] = {}
        weights = {name: 1.0 / (1.0 + 0.25 * i) for i, name in enumerate(cast)}  # protagonist first
        lengths = _shot_lengths(rng, n_frames, mean_shot_s * fps)
        # locations: a few per episode, reused by several scenes
        n_loc = int(min(8, max(3, len(lengths) // 6)))
        kinds = [_LOCATION_KINDS[i % 4] for i in rng.permutation(n_loc)]
        kinds = [k if rng.random() > 0.15 else "abstract" for k in kinds]
        self.loc_seeds = [int(s) for s in rng.integers(1 << 31, size=n_loc)]
        self.loc_kinds = kinds
        self.loc_size = (int(height * 1.3), int(width * 1.7))
        # scenes: runs of 2-7 shots at one location with one grade and one scene cast
        start, i, prev_loc, first_scene = 0, 0, -1, True
        while i < len(lengths):
            n_sh = int(rng.integers(2, 8))
            loc = int(rng.integers(n_loc))
            if loc == prev_loc:
                loc = (loc + 1) % n_loc
            prev_loc = loc
            gr = _GRADES[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
            k = int(rng.choice([1, 2, 3], p=[0.2, 0.45, 0.35]))
            if first_scene and together and all(t in episode_cast for t in together):
                # guaranteed co-appearance in every episode holding both
                members = _weighted_pick(rng, episode_cast, max(k, 2), weights, never, chosen=together)
                first_scene = False
            else:
                members = _weighted_pick(rng, episode_cast, k, weights, never)
            scene_lengths = lengths[i:i + n_sh]
            group_at = next((j for j, n in enumerate(scene_lengths) if n >= 16), 0)
            prev_x = None
            for j, n in enumerate(scene_lengths):
                shot = self._plan_shot(rng, start, start + n, loc, gr, members, j == group_at, prev_x, extras)
                prev_x = shot.crop[0]
                shot.scene_start = j == 0
                self.shots.append(shot)
                start += n
            i += n_sh
        self._ensure_everyone(episode_cast)
        if transitions[0] is not None:
            _plan_transitions(self.shots, *transitions)

    # -- shots --------------------------------------------------------------------------------
    def _plan_shot(self, rng, start, end, loc, grade, members, group, prev_x, extras):
        """Who is in the shot, where the camera looks, and every person's per-frame state.

        `group` shots show the whole scene cast (so scene members really share a shot); other
        shots show one or two of them, sometimes nobody (scenery), sometimes plus one extra.
        """
        n = end - start
        W, H = self.width, self.height
        lh, lw = self.loc_size
        if group:
            names = list(members)
        elif n < 15:
            names = [] if rng.random() < 0.2 else [_pick(rng, members)]
        else:
            r = rng.random()
            if r < 0.1:
                names = []
            elif r < 0.7 or len(members) < 2:
                names = [_pick(rng, members)]
            else:
                names = [members[i] for i in sorted(rng.choice(len(members), 2, replace=False))]
        k = len(names)
        kind = "close" if k == 1 and rng.random() < 0.5 else ("wide" if k >= 3 else "medium")
        if k == 1 and n < 15:
            kind = "close"
        # camera: crop window on the location, different from the previous shot, optional pan
        zoom = float(rng.uniform(0.62, 0.95)) if kind != "close" else float(rng.uniform(0.5, 0.7))
        ch = lh * zoom
        cw = ch * W / H
        pan = 0.0 if rng.random() < 0.6 or n < 15 else float(rng.choice([-1, 1]) * rng.uniform(0.5, 2.0))
        span = abs(pan) * (n - 1) * ch / H  # location pixels covered by the pan
        if cw + span > lw:
            pan, span = 0.0, 0.0
        xmax = lw - cw - span
        x = float(rng.uniform(0, xmax))
        if prev_x is not None and abs(x - prev_x) < 0.25 * lw:
            x = (x + 0.5 * lw) % max(xmax, 1.0)
        y = float(rng.uniform(0, lh - ch))
        shot = _Shot(start, end, loc, grade, (x, y, cw, ch), pan)
        # extras: unnamed background people, each appears in one shot only
        if extras and kind != "close" and k < 3 and n >= 15 and rng.random() < 0.15:
            names = names + [EXTRA]
            k += 1
            kind = "wide" if k == 3 else kind
        lo, hi = {"close": (164, 200), "medium": (120, 160), "wide": (90, 118)}[kind]  # face px at 480 lines
        lo, hi = lo * H / 480, hi * H / 480
        slots = {1: [rng.uniform(0.3, 0.7)], 2: [rng.uniform(0.22, 0.34), rng.uniform(0.66, 0.78)],
                 3: [0.18 + rng.uniform(-0.02, 0.02), 0.5 + rng.uniform(-0.03, 0.03), 0.82 + rng.uniform(-0.02, 0.02)]}
        xs = slots.get(k, [])
        order = list(rng.permutation(k)) if k else []
        talker = int(rng.integers(k + 1)) if k else 0  # == k means nobody talks
        t = np.arange(n, dtype=np.float64)
        for slot, ai in zip(xs, order):
            name = names[ai]
            design = (_random_design(rng, EXTRA, [d.hair for d in self.cast.values()]) if name == EXTRA
                      else self.cast[name])
            fh = max(24, int(round(rng.uniform(lo, hi) / 4) * 4))
            top = {"close": (0.08, 0.18), "medium": (0.12, 0.26), "wide": (0.18, 0.34)}[kind]
            y0 = float(rng.uniform(*top)) * H
            x0 = slot * W
            drift = float(rng.uniform(-1, 1)) * min(0.3, 0.04 * W / max(n, 1))
            bob_a, bob_p = float(rng.uniform(0, 3.5)), float(rng.uniform(30, 70))
            x = x0 + drift * t
            y = y0 + bob_a * np.sin(2 * np.pi * t / bob_p + rng.uniform(0, 6.3))
            look = 0 if abs(slot - 0.5) < 0.1 or rng.random() < 0.3 else (1 if slot < 0.5 else -1)
            facing = np.full(n, look, np.int8)
            # walk-ins / walk-outs for the outermost people in longer shots
            outer = k == 1 or slot == min(xs) or slot == max(xs)
            side = -1 if slot < 0.5 else 1  # edge they come from / go to
            speed = float(rng.uniform(6, 10))
            if outer and kind != "close" and n >= 48:
                if rng.random() < 0.25:
                    ta = int(rng.integers(12, max(13, int(0.45 * n))))
                    before = t < ta
                    x[before] = x[ta] + side * speed * (ta - t[before])
                    y[before] += 5 * np.abs(np.sin(t[before] * 0.5))
                    facing[before] = -side
                if rng.random() < 0.2:
                    tl = int(rng.integers(int(0.55 * n), n - 12))
                    after = t > tl
                    x[after] = x[tl] + side * speed * (t[after] - tl)
                    y[after] += 5 * np.abs(np.sin(t[after] * 0.5))
                    facing[after] = side
            mouth = np.zeros(n, np.uint8)
            if ai == talker:
                a = int(rng.integers(0, max(1, n // 3)))
                b = int(rng.integers(min(n, a + 8), n + 1))
                mouth[a:b] = ((t[a:b] // 4) % 2).astype(np.uint8)
            blink = np.zeros(n, bool)
            tb = int(rng.integers(10, 90))
            while tb < n:
                blink[tb:tb + 3] = True
                tb += int(rng.integers(60, 130))
            shot.actors.append(_Actor(name, design, fh, x, y, facing, mouth, blink))
        shot.actors.sort(key=lambda a: a.face_h)  # bigger = closer = drawn last
        if shot.actors and kind != "close" and rng.random() < 0.25:
            top_y = max(float(a.y.max()) + 1.45 * a.face_h for a in shot.actors)
            if top_y < H - 25:
                shot.occluder = (int(top_y), _rand_color(rng, 60, 200), int(rng.integers(3)))
        return shot

    def _ensure_everyone(self, episode_cast, min_shots=2):
        """Give each member of the episode cast `min_shots` shots, taking single-person shots from
        whoever has most, so minor characters are not reduced to a one-second cameo.

        Very short episodes may not have enough shots; then some members stay absent.
        """
        for need in range(1, min_shots + 1):
            for name in episode_cast:
                counts = Counter(a.name for s in self.shots for a in s.actors)
                if counts[name] >= need:
                    continue
                cands = [s for s in self.shots if len(s.actors) == 1 and s.actors[0].name != EXTRA
                         and counts[s.actors[0].name] > need]
                if not cands:
                    continue
                shot = min(cands, key=lambda s: (-counts[s.actors[0].name], -(s.end - s.start), s.start))
                shot.actors[0].name, shot.actors[0].design = name, self.cast[name]

    # -- truth --------------------------------------------------------------------------------
    def appearances(self, shots=None, shift: int = 0):
        """Runs of frames each person's face is on screen (of ``shots``, moved by ``shift`` frames)."""
        out = []
        for s in self.shots if shots is None else shots:
            for a in s.actors:
                vis = a.visible(self.width)
                if not vis.any():
                    continue
                edges = np.flatnonzero(np.diff(np.concatenate([[0], vis.astype(np.int8), [0]])))
                for b, e in zip(edges[::2], edges[1::2]):
                    out.append({"character": a.name, "start_frame": s.start + shift + int(b),
                                "end_frame": s.start + shift + int(e)})
        out.sort(key=lambda r: (r["start_frame"], r["end_frame"], r["character"]))
        return out

    # -- rendering ----------------------------------------------------------------------------
    def frames(self, shots=None, shift: int = 0, caption: str | None = None):
        """Yield (frame_index, RGB uint8 frame, [(name, x, y, w, h) visible face boxes]).

        ``shots``: a run of this episode's shots (default all), its frames moved by ``shift``; the run's
        first shot begins with a cut. ``caption``: text drawn over the bottom of every frame (credits).
        The frames either side of a fade or dissolve are held back until both sides are drawn.
        """
        shots = self.shots if shots is None else shots
        held: list = []
        for k, s in enumerate(shots):
            hold = shots[k + 1].half if k + 1 < len(shots) else 0
            mine = self._shot_frames(s)
            if s.half and k:
                head = [next(mine) for _ in range(s.half)]
                _blend_transition(s.transition, s.half, held, head)
                mine = itertools.chain(head, mine)
            for item in held:
                yield _moved(item, shift, caption)
            held = []
            for item in mine:
                held.append(item)
                if len(held) > hold:
                    yield _moved(held.pop(0), shift, caption)
        for item in held:
            yield _moved(item, shift, caption)

    def _shot_frames(self, s):
        W, H = self.width, self.height
        n = s.end - s.start
        strip = self._background(s)
        fg = self._occluder(s)
        lut = _grade_lut(s.grade, self.grading)
        sprites = {}
        span = strip.shape[1] - W
        for t in range(n):
            off = int(round(abs(s.pan) * t)) if s.pan >= 0 else span - int(round(abs(s.pan) * t))
            frame = strip[:, off:off + W].copy()  # never draw into the cached strip
            boxes = []
            for a in s.actors:
                key = (id(a.design), int(a.facing[t]), int(a.mouth[t]), bool(a.blink[t]), a.face_h)
                if key not in sprites:
                    sprites[key] = render_character(a.design, a.face_h, int(a.facing[t]), int(a.mouth[t]),
                                                    bool(a.blink[t]))
                prem, alpha, (bx, by, bw, bh) = sprites[key]
                cx, top = int(round(a.x[t])), int(round(a.y[t]))
                _composite(frame, prem, alpha, cx - bx - bw // 2, top - by, extend=True)
                if 0 <= a.x[t] < W:  # on screen; report the box clipped to the frame
                    x0, x1 = max(cx - bw // 2, 0), min(cx - bw // 2 + bw, W)
                    y0, y1 = max(top, 0), min(top + bh, H)
                    boxes.append((a.name, x0, y0, x1 - x0, y1 - y0))
            if fg is not None:
                _composite(frame, fg[0], fg[1], 0, s.occluder[0])
            if lut is not None:
                cv2.LUT(frame, lut, dst=frame)
            yield s.start + t, frame, boxes

    def _location(self, i: int) -> np.ndarray:
        if i not in self._locations:
            self._locations[i] = _make_location(np.random.default_rng(self.loc_seeds[i]), self.loc_kinds[i],
                                                self.loc_size[1], self.loc_size[0])
        return self._locations[i]

    def _background(self, s: _Shot) -> np.ndarray:
        """Shot background strip (frame height, frame width + pan span) cut from its location."""
        loc = self._location(s.location)
        x, y, cw, ch = s.crop
        n = s.end - s.start
        span_out = int(math.ceil(abs(s.pan) * (n - 1)))
        span_loc = span_out * ch / self.height
        x0, y0 = int(round(x)), int(round(y))
        x1 = min(loc.shape[1], int(round(x + cw + span_loc)))
        y1 = min(loc.shape[0], int(round(y + ch)))
        return cv2.resize(loc[y0:y1, x0:x1], (self.width + span_out, self.height), interpolation=cv2.INTER_AREA)

    def _occluder(self, s: _Shot):
        """Foreground band (desk, railing or bushes) that hides bodies but not faces."""
        if s.occluder is None:
            return None
        top, col, style = s.occluder
        h, w = self.height - top, self.width
        c = _Canvas(1, 1, 0, w, 0, h)
        if style == 0:  # desk / counter
            c.poly([(0, 10), (w, 10), (w, h), (0, h)], col)
            c.poly([(0, 0), (w, 0), (w, 14), (0, 14)], _light(col, 0.3))
        elif style == 1:  # railing
            c.poly([(0, 0), (w, 0), (w, 12), (0, 12)], _dark(col, 0.2))
            for x in range(10, w, 46):
                c.poly([(x, 0), (x + 12, 0), (x + 12, h), (x, h)], _dark(col, 0.2))
        else:  # bushes
            for x in range(-30, w + 60, 70):
                c.ell(x, 40 + (x // 70 % 2) * 12, 60, 48, _dark((90, 160, 80), 0.1 + 0.1 * (x // 70 % 3)))
            c.poly([(0, 40), (w, 40), (w, h), (0, h)], (80, 140, 70))
        return c.finish()


# --------------------------------------------------------------------------------------
# Series: cast per episode, encoding, references, truth
# --------------------------------------------------------------------------------------

def _episode_casts(rng, n_chars, episodes, cast_overlap):
    """Core cast (first round(overlap*n), at least 2) is in every episode; the rest in about half.

    Every character is in at least one episode.
    """
    core = min(n_chars, max(2, int(round(cast_overlap * n_chars))))
    casts = [list(range(core)) for _ in range(episodes)]
    for c in range(core, n_chars):
        member = rng.random(episodes) < 0.5
        if not member.any():
            member[int(rng.integers(episodes))] = True
        for e in range(episodes):
            if member[e]:
                casts[e].append(c)
    return casts


def _prefetch(iterable, depth: int = 8):
    """Run a generator in a worker thread so rendering overlaps the (GIL-free) x264 encoding.

    Items keep their order, so output stays deterministic.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in iterable:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # hand the error to the consumer
            q.put(exc)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)


def _encode(path: Path, frames, fps: Fraction, width: int, height: int, on_frame=None) -> int:
    """Stream RGB frames into an H.264 mp4; frame i gets pts i in time base 1/fps."""
    import av

    from anitrack.video import h264_stream

    n = 0
    with av.open(str(path), mode="w") as container:
        # one encoder thread: the render thread (_prefetch) has the other core
        stream = h264_stream(container, fps, width, height, threads=1)

        def yuv():
            for i, frame, extra in frames:
                # OpenCV's I420 conversion (BT.601 limited range, what decoders assume) beats swscale
                yield i, cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420), extra

        for i, planes, extra in _prefetch(yuv()):
            vf = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            vf.pts = i
            vf.time_base = stream.codec_context.time_base
            container.mux(stream.encode(vf))
            if on_frame is not None:
                on_frame(i, extra)
            n += 1
        container.mux(stream.encode(None))
    return n


def _write_png(path: Path, rgb: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _reference_image(rng, design: Design) -> np.ndarray:
    """A gallery picture: random size, pose, expression and backdrop, sometimes mildly graded."""
    w, h = _pick(rng, [(360, 420), (420, 420), (480, 360), (400, 480)])
    face_h = int(rng.integers(100, min(200, int(h * 0.45)) + 1))
    kind = _pick(rng, _LOCATION_KINDS + ["flat", "flat"])
    if kind == "flat":
        img = np.empty((h, w, 3), np.uint8)
        _vgrad(img, 0, h, _rand_color(rng, 150, 250), _rand_color(rng, 100, 230))
    else:
        loc = _make_location(rng, kind, int(w * 1.5), int(h * 1.3))
        x0, y0 = int(rng.integers(0, loc.shape[1] - w)), int(rng.integers(0, loc.shape[0] - h))
        img = np.ascontiguousarray(loc[y0:y0 + h, x0:x0 + w])
    prem, alpha, (bx, by, bw, bh) = render_character(design, face_h, int(rng.integers(-1, 2)), int(rng.random() < 0.3))
    cx = int(w * rng.uniform(0.4, 0.6))
    top = int(h * rng.uniform(0.12, 0.3))
    _composite(img, prem, alpha, cx - bx - bw // 2, top - by, extend=True)
    lut = _grade_lut(_pick(rng, _GRADES), 0.25)
    if lut is not None:
        cv2.LUT(img, lut, dst=img)
    return img


def write_references(out_dir: Path, cast: list[Design], seed: int, extras: bool, per_character: int = 6) -> Path:
    """<out>/references/<Name>/ref_NN.png for each character, plus _noise/ background people."""
    ref = Path(out_dir) / "references"
    for i, d in enumerate(cast):
        rng = np.random.default_rng([seed, 202, i])
        for k in range(per_character):
            _write_png(ref / d.name / f"ref_{k + 1:02d}.png", _reference_image(rng, d))
    if extras:
        rng = np.random.default_rng([seed, 303])
        for k in range(4):
            extra = _random_design(rng, EXTRA, [d.hair for d in cast])
            _write_png(ref / "_noise" / f"noise_{k + 1:02d}.png", _reference_image(rng, extra))
    return ref


# seconds of each repeated part in a series drawn with ``segments`` (tests keep episodes short; real
# openings run 15 s to 2 min)
SEGMENT_SECONDS = {"opening": 10.0, "ending": 8.0, "recap": 5.0, "preview": 5.0, "cold_open": 3.0}


def _run_of(shots: list, frames: int, rng: np.random.Generator, first: bool = False) -> list:
    """Consecutive whole shots lasting at least ``frames`` (from the start when ``first``)."""
    ends = np.cumsum([s.end - s.start for s in shots])
    starts = [0] if first else [i for i in range(len(shots)) if ends[-1] - (ends[i - 1] if i else 0) >= frames]
    i = int(starts[int(rng.integers(len(starts)))]) if starts else 0
    run = []
    for shot in shots[i:]:
        run.append(shot)
        if sum(x.end - x.start for x in run) >= frames:
            break
    return run


def _pieces(e: int, eps: list, op, ed, seed: int, fps: float) -> list:
    """What episode ``e`` is made of, in order: (segment kind or None, source episode, its shots, caption).

    Every episode: the opening and the ending (the same shots, credits that change per episode). Odd
    episodes open cold (the story's first shots before the opening); from the third, even episodes begin
    with a recap of the previous episode and even episodes before the last end with a preview of the next.
    Recaps and previews show footage that plays uninterrupted in its own episode (after its cold open).
    """
    frames = {k: int(round(v * fps)) for k, v in SEGMENT_SECONDS.items()}

    def cold(j: int) -> list:
        shots = eps[j][1].shots
        return _run_of(shots, frames["cold_open"], np.random.default_rng([seed, 709, j, 0]), first=True) \
            if j % 2 == 1 else []

    def story(j: int, kind: str, stream: int) -> list:
        shots = eps[j][1].shots[len(cold(j)):] or eps[j][1].shots
        return _run_of(shots, frames[kind], np.random.default_rng([seed, 709, e, stream]))

    main = eps[e][1]
    pieces = []
    if e >= 2 and e % 2 == 0:
        pieces.append(("recap", eps[e - 1][1], story(e - 1, "recap", 1), None))
    opening = cold(e)
    if opening:
        pieces.append((None, main, opening, None))
    credits = f"EPISODE {e + 1:02d}\nSCRIPT  {'ABCDEFGH'[e % 8]}. {('Sato', 'Ito', 'Mori', 'Abe', 'Ono')[e % 5]}"
    pieces += [("opening", op, op.shots, None), (None, main, main.shots[len(opening):], None),
               ("ending", ed, ed.shots, credits)]
    if e % 2 == 0 and e + 1 < len(eps):
        pieces.append(("preview", eps[e + 1][1], story(e + 1, "preview", 2), None))
    return [p for p in pieces if p[2]]


def _plan_series(series, episodes, characters, seconds, seed, fps, width, height, lookalikes, grading,
                 mean_shot_seconds, cast_overlap, extras, transitions, segments=False) -> dict:
    """Everything random about a series, decided up front from the seed (no pixels yet)."""
    rate = Fraction(fps).limit_denominator(1001)
    n_frames = max(8, int(round(seconds * float(rate))))
    designs = make_cast(characters, seed, lookalikes)
    names = [d.name for d in designs]
    cast = {d.name: d for d in designs}
    pairs = _lookalike_pairs(characters, lookalikes)
    never = (names[-2], names[-1]) if characters >= 4 else None
    together = (names[pairs[0][0]], names[pairs[0][1]]) if pairs else (tuple(names[:2]) if characters >= 2 else None)
    casts = _episode_casts(np.random.default_rng([seed, 404]), characters, episodes, cast_overlap)
    truth = {"series": series, "fps": float(rate), "width": width, "height": height, "characters": names,
             "lookalikes": [[names[a], names[b]] for a, b in pairs],
             "never_together": list(never) if never else [], "together": list(together) if together else [],
             "episodes": []}
    eps = []
    for e in range(episodes):
        stem = f"episode_{e + 1:02d}"
        rng = np.random.default_rng([seed, 505, e])
        eps.append((stem, _Episode(rng, cast, [names[i] for i in casts[e]], n_frames, float(rate), width, height,
                                   grading, mean_shot_seconds, extras, never, together,
                                   (np.random.default_rng([seed, 606, e]), transitions))))
    if segments:  # the opening and ending: one plan each, every character, played in every episode
        op, ed = (_Episode(np.random.default_rng([seed, 707 + k]), cast, names, int(round(SEGMENT_SECONDS[kind]
                           * float(rate))), float(rate), width, height, grading, mean_shot_seconds, False, never,
                           None) for k, kind in enumerate(("opening", "ending")))
    renders = []
    for e, (stem, ep) in enumerate(eps):
        pieces = _pieces(e, eps, op, ed, seed, float(rate)) if segments else [(None, ep, ep.shots, None)]
        shots, apps, parts, frames, at = [], [], [], [], 0
        for kind, source, run, caption in pieces:
            shift = at - run[0].start
            for k, s in enumerate(run):
                how = s.transition if (k or not segments) else ("none" if at == 0 else "cut")
                shots.append({"start_frame": s.start + shift, "end_frame": s.end + shift, "transition": how})
            apps += source.appearances(run, shift)
            length = run[-1].end - run[0].start
            if kind is not None:
                parts.append({"kind": kind, "start_frame": at, "end_frame": at + length,
                              "start_s": round(at / float(rate), 6), "end_s": round((at + length) / float(rate), 6),
                              "source": next(st for st, x in eps if x is source) if kind in ("recap", "preview")
                              else None})
            frames.append((source, run, shift, caption))
            at += length
        apps.sort(key=lambda r: (r["start_frame"], r["end_frame"], r["character"]))
        screen = {}
        for name in names:
            ivs = [(a["start_frame"], a["end_frame"]) for a in apps if a["character"] == name]
            screen[name] = round(union_length(ivs) / float(rate), 6)
        entry = {"episode": stem, "file": f"{stem}.mp4", "n_frames": at, "shots": shots, "appearances": apps,
                 "screen_time_s": screen}
        if segments:
            entry["segments"] = parts
        truth["episodes"].append(entry)
        renders.append((stem, frames))
    return {"rate": rate, "designs": designs, "truth": truth, "episodes": renders}


def synthesize_series(out_dir: str | Path, series: str = "synth", episodes: int = 3, characters: int = 5,
                      seconds: float = 90.0, seed: int = 7, fps: float = 24.0, width: int = 854, height: int = 480,
                      lookalikes: int = 1, grading: float = 0.5, mean_shot_seconds: float = 3.0,
                      cast_overlap: float = 0.6, extras: bool = True, transitions: float = 0.0,
                      segments: bool = False) -> Path:
    """Render a synthetic series and its ground truth; returns <out_dir>/<series>.

    Writes ``<series>/episode_NN.mp4``, ``<series>/truth.json``, ``<series>/face_boxes.csv``
    and the gallery ``<out_dir>/references/<Name>/ref_NN.png`` (+ ``_noise/`` if extras).

    truth.json::

        {"series", "fps", "width", "height", "characters": [names],
         "lookalikes": [[A, B], ...],   # pairs sharing hair colour/shape and skin (differ in eyes, outfit)
         "never_together": [A, B],      # never in the same shot anywhere in the series ([] if < 4 characters)
         "together": [C, D],            # share at least one shot in every episode that has both
         "episodes": [{"episode": "episode_01", "file": "episode_01.mp4", "n_frames",
                       "shots": [{"start_frame", "end_frame",         # end exclusive, contiguous, cover all frames
                                  "transition"}],   # how it begins: none (first), cut, fade or dissolve
                       "appearances": [{"character", "start_frame", "end_frame"}],
                       "screen_time_s": {name: seconds},
                       "segments": [{"kind", "start_frame", "end_frame", "start_s", "end_s",  # only with segments
                                     "source"}]}]}          # the episode a recap or preview shows

    Appearances are the maximal runs of frames in which a person's face-box centre is
    inside the frame; they never cross a shot boundary (a fade or dissolve of ``2 * half`` frames is
    centred on its boundary: the outgoing shot's people are on screen until it, the incoming shot's from
    it; see TRANSITION_HALF).  ``transitions`` is the share of scene changes drawn as a fade or a
    dissolve (default 0, hard cuts only, so the test series stay as their floors were measured; `anitrack synth` draws 0.3).  Background people (extras, each seen in
    one shot only) are included with character ``"_extra"`` but are not in
    ``characters`` nor in ``screen_time_s``.  ``screen_time_s`` lists every named
    character (0.0 when absent from the episode) and equals the union of its appearance
    intervals divided by fps.  face_boxes.csv has one row per visible face per frame:
    ``episode,frame,character,x,y,w,h`` (the skin face region, forehead to chin,
    clipped to the frame).  Rows only for frames where the person is on screen.

    ``segments``: every episode also plays the same opening and ending (the ending's credits change per
    episode), odd episodes open cold before the opening, and recaps and previews repeat other episodes'
    shots (see ``_pieces``); episodes are then longer than ``seconds`` by those parts, and the main story
    is exactly what the same seed renders without them.
    """
    if width % 2 or height % 2:
        raise ValueError("width and height must be even for yuv420p")
    if episodes < 1 or characters < 1:
        raise ValueError("need at least one episode and one character")
    out_dir = Path(out_dir)
    folder = out_dir / series
    folder.mkdir(parents=True, exist_ok=True)
    plan = _plan_series(series, episodes, characters, seconds, seed, fps, width, height, lookalikes, grading,
                        mean_shot_seconds, cast_overlap, extras, transitions, segments)
    truth, rate = plan["truth"], plan["rate"]
    write_references(out_dir, plan["designs"], seed, extras)
    with open(folder / "face_boxes.csv", "w", newline="\n") as boxes_file:
        boxes_file.write("episode,frame,character,x,y,w,h\n")
        for stem, pieces in plan["episodes"]:

            def on_frame(i, boxes, stem=stem):
                for name, x, y, w, h in boxes:
                    boxes_file.write(f"{stem},{i},{name},{x},{y},{w},{h}\n")

            frames = itertools.chain.from_iterable(source.frames(run, shift, caption)
                                                   for source, run, shift, caption in pieces)
            _encode(folder / f"{stem}.mp4", frames, rate, width, height, on_frame)
    (folder / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return folder
