"""Where a series' vectors are compared, and how sure a name must be: the naming space and its calibration.

A naming threshold belongs to an embedder and a gallery, not to the code. Each identity
run therefore

1. fits a *space* from the series itself: the mean of its tracklet and reference vectors
   is subtracted (it is what every crop of one series shares; ImageNet features need this
   most), then, when the gallery holds enough labelled images, PCA to ``dims`` and
   within-class whitening learned from the gallery (WCCN, shrunk towards the identity):
   directions in which one character's drawings differ count less than those in which
   characters differ;
2. *calibrates* in that space from the gallery alone: every reference is held out in
   turn (3 folds, the space refitted without it) and compared with the rest. Its best
   score for another character, with its own character removed as if it were not in the
   gallery (open set), is an impostor trial; the threshold is the lowest score at which
   at most ``max_false_rate`` of those trials would name someone, given the margin. Its
   scores for its own character's references are genuine pairs: a cluster far looser than
   them has collapsed.

Too small a gallery (fewer than two characters with 3 images each) keeps the embedder's
conservative default and says how many images to add; a character short of images takes
part and is named in the warning.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NOISE_LABELS = ("_noise", "noise")  # gallery folders of extras: impostors, never a name
MIN_PER_CHARACTER = 3   # images a character needs for its references to be held out in turn
MIN_CHARACTERS = 2
FOLDS = 3
WHITEN_MIN_REFS = 12    # labelled references below which the space is centred only
SHRINK = 0.3            # within-class covariance shrunk this far towards its mean variance


def is_noise_label(label: str) -> bool:
    return str(label).lower() in NOISE_LABELS


def unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class SpaceRule:
    """What an embedder's vectors need: centring before cosine, its clustering thresholds, and the
    naming threshold used when the gallery is too small to calibrate."""

    centre: bool
    merge: float
    assign: float
    default_threshold: float      # in the centred space (or the raw one for embedders that never centre)
    raw_default_threshold: float  # too few vectors to centre on (a one-shot clip)


# The descriptor's Hellinger histograms are already a calibrated cosine space (centring them only
# amplifies sparse bins); ImageNet features share a large common component that centring removes.
# Thresholds measured on the synthetic series (clustering) and on real art (naming, ~1% false names):
# benchmarks/identity_bench.py and benchmarks/realart_bench.py.
SPACE_RULES: dict[str | None, SpaceRule] = {
    "descriptor": SpaceRule(centre=False, merge=0.92, assign=0.8, default_threshold=0.94, raw_default_threshold=0.94),
    "hybrid": SpaceRule(centre=True, merge=0.6, assign=0.35, default_threshold=0.62, raw_default_threshold=0.775),
    None: SpaceRule(centre=False, merge=0.92, assign=0.8, default_threshold=0.9, raw_default_threshold=0.9),
}
MIN_CENTRE = 20  # vectors a series' mean needs: centring two vectors makes them opposite


@dataclass
class Space:
    """A series' two views of its vectors: ``cluster`` (centred when the embedder needs it) for
    clustering, and ``name`` (the cluster view, whitened within characters) for naming."""

    mean: np.ndarray | None = None          # centring; None keeps the embedder's own cosine
    naming_mean: np.ndarray | None = None   # the cluster view's mean, removed before the projection
    projection: np.ndarray | None = None    # (D, k) PCA + within-character whitening; None: naming = cluster

    @property
    def kind(self) -> str:
        base = "centred" if self.mean is not None else "raw"
        return base if self.projection is None else f"{base}+whitened-{self.projection.shape[1]}"

    def cluster(self, x: np.ndarray) -> np.ndarray:
        y = unit(x)
        return y if self.mean is None else unit(y - self.mean)

    def name(self, x: np.ndarray) -> np.ndarray:
        y = self.cluster(x)
        return y if self.projection is None else unit((y - self.naming_mean) @ self.projection)

    def to_row(self) -> dict:
        def listed(a):
            return None if a is None else np.asarray(a, np.float32).ravel().tolist()

        given = [a for a in (self.mean, self.naming_mean) if a is not None]
        return {"kind": self.kind, "dim": len(given[0]) if given else None, "mean": listed(self.mean), "naming_mean": listed(self.naming_mean),
                "projection": listed(self.projection),
                "projection_dims": None if self.projection is None else int(self.projection.shape[1])}

    @classmethod
    def from_row(cls, row: dict) -> "Space":
        def array(v):
            return None if v is None else np.asarray(v, np.float32)

        p = array(row["projection"])
        return cls(array(row["mean"]), array(row["naming_mean"]),
                   None if p is None else p.reshape(-1, row["projection_dims"]))


def fit_space(vectors: np.ndarray, refs: np.ndarray, ref_labels, rule: SpaceRule, dims: int = 100) -> Space:
    """Centre on the series (tracklets and references alike) when the rule says so; whiten the naming
    view within characters when the gallery has enough labelled images."""
    x = unit(np.concatenate([vectors, refs])) if len(refs) else unit(vectors)
    space = Space(x.mean(axis=0).astype(np.float32) if rule.centre and len(x) >= MIN_CENTRE else None)
    labels = np.asarray([str(s) for s in ref_labels])
    keep = np.array([not is_noise_label(c) for c in labels], bool)
    chars, counts = np.unique(labels[keep], return_counts=True) if keep.any() else (np.zeros(0), np.zeros(0))
    usable = chars[counts >= 2]
    if dims <= 0 or len(usable) < MIN_CHARACTERS or np.isin(labels, usable).sum() < WHITEN_MIN_REFS:
        return space
    y = space.cluster(x)
    mu = y.mean(axis=0)
    k = int(min(dims, len(y) - 1, y.shape[1]))
    _, _, vt = np.linalg.svd((y - mu).astype(np.float64), full_matrices=False)
    basis = vt[:k].T  # (D, k)
    z = (space.cluster(refs) - mu) @ basis
    within = np.zeros((k, k))
    n = 0
    for c in usable:
        g = z[labels == c]
        g = g - g.mean(axis=0)
        within += g.T @ g
        n += len(g)
    within /= max(n, 1)
    within = (1 - SHRINK) * within + SHRINK * np.trace(within) / k * np.eye(k)
    w, v = np.linalg.eigh(within)
    whiten = v / np.sqrt(np.maximum(w, 1e-12))
    return Space(space.mean, mu.astype(np.float32), (basis @ whiten).astype(np.float32))


def per_character(sims: np.ndarray, ref_labels) -> tuple[np.ndarray, np.ndarray]:
    """Gallery labels and each row's best score per label.

    The best, not the mean, over a label's references: they show different looks, and a
    row matches its own look's reference, not an average of looks.
    """
    labels = np.asarray([str(s) for s in ref_labels])
    chars, inv = np.unique(labels, return_inverse=True)
    inv = inv.ravel()
    score = np.full((len(sims), len(chars)), -np.inf, np.float32)
    for ch in range(len(chars)):
        if np.any(inv == ch):
            score[:, ch] = np.asarray(sims)[:, inv == ch].max(axis=1)
    return chars, score


@dataclass
class Verdicts:
    """Each row's best character, its score, its lead over the runner-up, and whether it passed."""

    best: np.ndarray      # (N,) label, may be a noise label
    score: np.ndarray     # (N,)
    margin: np.ndarray    # (N,) best - second best (inf with one label)
    passed: np.ndarray    # (N,) bool: a name on its own evidence (the calibrated threshold)
    supports: np.ndarray  # (N,) bool: backs its cluster's name for ``best`` (the looser support bar)
    stranger: np.ndarray  # (N,) bool: closest to a noise label (the gallery's extras) by the margin
    anchors: np.ndarray   # (N,) bool: passes the common level, without its character's look-alike lift

    def name(self, i: int) -> str | None:
        return str(self.best[i]) if self.passed[i] else None


@dataclass
class Calibration:
    """The naming rule of one run and the evidence it rests on (recorded with the run).

    ``thresholds`` holds one threshold per character: a character that other characters' drawings
    resemble (a look-alike's sister) needs a higher score than one nobody resembles. ``threshold``
    applies to characters without their own (a default, a fixed value) and is reported as the
    rule's headline (the median of the per-character ones).
    """

    threshold: float
    margin: float
    max_false_rate: float
    source: str                 # "gallery" | "default" | "published" | "fixed"
    thresholds: dict[str, float] = field(default_factory=dict)
    support: dict[str, float] = field(default_factory=dict)  # the looser bar at which members back a name
    anchor: dict[str, float] = field(default_factory=dict)  # the common level without the look-alike lift
    n_genuine: int = 0
    n_impostor: int = 0
    genuine_accept: float | None = None   # share of held-out references named right
    false_rate: float | None = None       # share of open-set impostor trials named
    genuine_pair_low: float | None = None  # 10th percentile of same-character pairs (cluster view)
    published_threshold: float | None = None
    warning: str | None = None
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the user: the rule, what it rests on, what it measured."""
        if self.thresholds:
            values = sorted(self.thresholds.values())
            bar = f"per-character thresholds {values[0]:.2f}-{values[-1]:.2f} (median {self.threshold:.2f})"
        else:
            bar = f"threshold {self.threshold:.2f}"
        if self.source == "gallery":
            how = (f"calibrated on {self.n_impostor} held-out references for a false-name rate of "
                   f"{self.max_false_rate:g} (measured {self.false_rate or 0:.3f}; "
                   f"{100 * (self.genuine_accept or 0):.0f}% of held-out references named right)")
        else:
            how = {"default": "the embedder's conservative default (gallery too small to calibrate)",
                   "published": "the model's published threshold", "fixed": "fixed by name.threshold"}[self.source]
        return f"naming: {bar}, {how}, margin {self.margin:g}"

    def threshold_of(self, label: str) -> float:
        return self.thresholds.get(str(label), self.threshold)

    def support_of(self, label: str) -> float:
        return self.support.get(str(label), self.threshold_of(label))

    def anchor_of(self, label: str) -> float:
        return self.anchor.get(str(label), self.threshold_of(label))

    def judge(self, sims: np.ndarray, ref_labels) -> Verdicts:
        """The calibrated test on a (rows x references) score matrix (higher is closer)."""
        chars, score = per_character(sims, ref_labels)
        n = len(score)
        if len(chars) == 0 or n == 0:
            return Verdicts(np.array([""] * n, object), np.full(n, -np.inf), np.zeros(n), np.zeros(n, bool),
                            np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool))
        order = np.argsort(-score, axis=1, kind="stable")
        best = score[np.arange(n), order[:, 0]]
        second = score[np.arange(n), order[:, 1]] if len(chars) > 1 else np.full(n, -np.inf)
        label = chars[order[:, 0]]
        lead = best - second
        bar = np.array([self.threshold_of(c) for c in chars])[order[:, 0]]
        low = np.array([self.support_of(c) for c in chars])[order[:, 0]]
        mid = np.array([self.anchor_of(c) for c in chars])[order[:, 0]]
        noise = np.array([is_noise_label(c) for c in label], bool)
        clear = (lead >= self.margin) & ~noise
        return Verdicts(label.astype(object), best.astype(np.float64), lead.astype(np.float64),
                        (best >= bar) & clear, (best >= low) & clear, noise & (lead >= self.margin),
                        (best >= mid) & clear)


def _folds(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Fold of each reference, spread evenly within each label."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % FOLDS
    return out


def _gallery_problems(labels: np.ndarray) -> tuple[str | None, str | None]:
    """(why the gallery cannot be calibrated, or None; which characters have too few images to be held
    out in turn). Characters short of images still take part: their images are trials, and the other
    characters' drawings give their impostor scores; only their own genuine evidence is thin."""
    real = np.array([not is_noise_label(c) for c in labels], bool)
    chars, counts = np.unique(labels[real], return_counts=True)
    short = [f"{c} ({n})" for c, n in zip(chars, counts) if n < MIN_PER_CHARACTER]
    note = (f"few reference images of {', '.join(short[:5])}{' ...' if len(short) > 5 else ''}: "
            f"add images to reach {MIN_PER_CHARACTER} per character") if short else None
    if len(chars) < MIN_CHARACTERS:
        return (f"the gallery holds {len(chars)} character(s); naming needs at least {MIN_CHARACTERS} "
                f"with {MIN_PER_CHARACTER}+ images each to calibrate its threshold"), note
    if int((counts >= MIN_PER_CHARACTER).sum()) < MIN_CHARACTERS:
        return f"too few reference images to calibrate the naming threshold; {note}", note
    return None, note


def joined_warnings(*warnings: str | None) -> str | None:
    return "; ".join(w for w in warnings if w) or None


def calibrate_cosine(vectors: np.ndarray, refs: np.ndarray, ref_labels, rule: SpaceRule, max_false_rate: float,
                     margin: float, support_rate: float, dims: int = 100) -> tuple[Space, Calibration]:
    """The run's space and naming rule for cosine embedders (see the module docstring)."""
    labels = np.asarray([str(s) for s in ref_labels])
    space = fit_space(vectors, refs, labels, rule, dims)
    problem, note = _gallery_problems(labels) if len(labels) else ("no reference gallery", None)
    if problem:
        default = rule.default_threshold if space.mean is not None or not rule.centre else rule.raw_default_threshold
        return space, Calibration(default, margin, max_false_rate, "default", warning=problem)

    def scores(train, test):
        fold = fit_space(vectors, refs[train], labels[train], rule, dims)
        return fold.name(refs[test]) @ fold.name(refs[train]).T

    cal = _calibrate(scores, labels, _folds(labels), max_false_rate, margin, support_rate)
    cal.genuine_pair_low = genuine_pair_low(space.cluster(refs), labels)
    cal.warning = joined_warnings(cal.warning, note)
    return space, cal


def genuine_pair_low(refs: np.ndarray, labels: np.ndarray) -> float | None:
    """10th percentile of same-character reference pair cosines (cluster view): a cluster whose typical
    pair is looser than this has gathered several characters."""
    pairs = []
    for c in np.unique(labels):
        if is_noise_label(c):
            continue
        g = refs[labels == c]
        if len(g) > 1:
            pairs.extend((g @ g.T)[np.triu_indices(len(g), 1)].tolist())
    return float(np.quantile(pairs, 0.1)) if pairs else None


def calibrate_scores(score_fn, ref_labels, max_false_rate: float, margin: float, support_rate: float,
                     published: float) -> Calibration:
    """The naming rule for a fixed metric (CCIP: 1 - difference), from the gallery when it is big enough."""
    labels = np.asarray([str(s) for s in ref_labels])
    problem, note = _gallery_problems(labels) if len(labels) else ("no reference gallery", None)
    if problem:
        return Calibration(published, margin, max_false_rate, "published", published_threshold=published,
                           warning=problem)
    cal = _calibrate(lambda train, test: score_fn(test, train), labels, _folds(labels), max_false_rate, margin,
                     support_rate)
    cal.published_threshold = published
    cal.warning = joined_warnings(cal.warning, note)
    return cal


LEVELS = (0.5, *np.round(np.linspace(0.8, 1.0, 41), 3), *np.round(np.linspace(1.1, 2.0, 10), 2))


def _bar(scores: list[float], level: float) -> float:
    """A threshold at ``level``: a quantile of the scores up to 1, beyond it the maximum plus
    (level - 1) times the distance from the median to the maximum (few scores cannot show the tail)."""
    v = np.asarray(scores)
    if level <= 1:
        return float(np.nextafter(np.quantile(v, level, method="higher"), np.inf))
    top = float(v.max())
    return float(np.nextafter(top + (level - 1) * (top - float(np.median(v))), np.inf))


def _own_levels(impostor_of, trials, margin, folds) -> dict[str, float]:
    """Per character, the lowest level at which no trial landing on it passes, judged fold by fold
    with thresholds learnt on the other folds (a look-alike's sister needs a high one)."""
    levels = {}
    for c, scores in impostor_of.items():
        mine = [t for t in trials if t[1] == c]
        for level in LEVELS:
            hits = 0
            for f in folds:
                train = [x for g, x in scores if g != f]
                if train:
                    bar = _bar(train, level)
                    hits += sum(1 for g, _, sc, lead in mine if g == f and sc >= bar and lead >= margin)
            if hits == 0:
                break
        levels[c] = level
    return levels


def _per_character(impostor_of, trials, margin, rate) -> tuple[dict[str, float], dict, float, int, dict]:
    """Per-character thresholds: character X's impostor scores at level max(L, own_X), where own_X
    lifts the characters other characters' drawings land on, and L, common to all, is the lowest
    at which at most ``rate`` of the open-set trials pass. Returns the thresholds (from every fold),
    the levels, L, the trials named and every character's threshold at L alone (without its lift).

    ``impostor_of``: character -> [(fold, score)]; ``trials``: [(fold, best other, score, lead)].
    Every trial is judged by thresholds learnt without its fold, the own levels included (they are
    chosen on the remaining folds): a threshold fitted to the very trials it is checked on would
    look safer than it is. The last result, a cluster's anchor bar, uses the lowest level that keeps
    within the rate the trials of characters that level alone decides (a lifted character's trials
    are its lift's business): a cluster's name also needs most of its tracklets to back it.
    """
    folds = sorted({t[0] for t in trials})
    allowed = int(np.floor(rate * len(trials)))
    inner = {f: _own_levels({c: [(g, x) for g, x in v if g != f] for c, v in impostor_of.items()},
                            [t for t in trials if t[0] != f], margin, [g for g in folds if g != f]) for f in folds}
    hits = {}  # level -> (every trial named, trials of characters the level alone decides named)
    for common in LEVELS:
        named = free = 0
        for f in folds:
            for g, c, sc, lead in trials:
                if g != f or c not in impostor_of:
                    continue
                train = [x for h, x in impostor_of[c] if h != f]
                own = inner[f].get(c, common)
                if train and lead >= margin and sc >= _bar(train, max(common, own)):
                    named += 1
                    free += own <= common
        hits[common] = (named, free)
        if named <= allowed:
            break
    common = next(lv for lv in LEVELS if lv in hits and hits[lv][0] <= allowed) if any(
        h[0] <= allowed for h in hits.values()) else LEVELS[-1]
    anchor_level = next((lv for lv in LEVELS if lv in hits and hits[lv][1] <= allowed), common)
    own = _own_levels(impostor_of, trials, margin, folds)
    levels = {c: max(common, own[c]) for c in impostor_of}
    return ({c: _bar([x for _, x in v], levels[c]) for c, v in impostor_of.items()}, levels, common,
            hits[common][0], {c: _bar([x for _, x in v], anchor_level) for c, v in impostor_of.items()})


def _calibrate(scores, labels: np.ndarray, folds: np.ndarray, max_false_rate: float, margin: float,
               support_rate: float) -> Calibration:
    """Per-character thresholds at one common level, the lowest that keeps open-set trials within the rate.

    Each held-out reference gives, for every other character X, an impostor score for X (how much
    X resembles a drawing of someone else), and one open-set trial: its best other character, as
    if its own were not in the gallery. X's threshold is the ``level`` quantile of its impostor
    scores; the level rises until at most ``max_false_rate`` of the trials would be named (all
    of them with a small gallery, where the level reaches the maximum).
    """
    impostor_of: dict[str, list[tuple[int, float]]] = {}
    trials: list[tuple[int, str, float, float]] = []  # (fold, best other character, its score, its lead)
    genuine: list[tuple[str, float, float]] = []  # (own character, its score, its lead over the rest)
    pairs: list[float] = []
    for f in range(FOLDS):
        test, train = np.flatnonzero(folds == f), np.flatnonzero(folds != f)
        if len(test) == 0 or len(train) == 0:
            continue
        sims = scores(train, test)
        chars, score = per_character(sims, labels[train])
        noise_col = np.array([is_noise_label(c) for c in chars], bool)
        for row, i in enumerate(test):
            own = labels[i]
            same = labels[train] == own
            if same.any() and not is_noise_label(own):
                pairs.extend(sims[row, same].tolist())
            others = np.array([c != own for c in chars], bool) & ~noise_col
            for c in chars[others]:
                impostor_of.setdefault(str(c), []).append((f, float(score[row, chars == c][0])))
            if others.any():  # open set: as if ``own`` were not in the gallery at all
                s = score[row, others]
                k = int(np.argmax(s))
                rest = np.concatenate([np.delete(s, k), score[row, noise_col]])
                trials.append((f, str(chars[others][k]), float(s[k]),
                               float(s[k] - rest.max()) if len(rest) else np.inf))
            if not is_noise_label(own) and own in chars:
                k = int(np.flatnonzero(chars == own)[0])
                rest = np.delete(score[row], k)
                genuine.append((str(own), float(score[row, k]), float(score[row, k] - rest.max())
                                if len(rest) else np.inf))
    # a gallery of n trials cannot certify a rate below 1/n: hold it to the strictest it can show
    rate = max(max_false_rate, 1.0 / max(len(trials), 1))
    thresholds, levels, common, named, unlifted = _per_character(impostor_of, trials, margin, rate)
    # backing a cluster's name: a score at most ``support_rate`` of other characters' drawings reach for X
    support = {c: float(np.quantile([x for _, x in v], 1 - min(0.5, support_rate))) for c, v in impostor_of.items()}
    false = named / len(trials) if trials else None
    accept = (float(np.mean([sc >= thresholds.get(c, np.inf) and lead >= margin for c, sc, lead in genuine]))
              if genuine else None)
    warning = None
    if rate > max_false_rate:
        warning = (f"{len(trials)} held-out references cannot show a false-name rate of {max_false_rate:g}; "
                   f"calibrated for {rate:.3f} instead: add reference images (at least "
                   f"{int(np.ceil(1 / max_false_rate))} in all)")
    headline = float(np.median(list(thresholds.values()))) if thresholds else float("inf")
    return Calibration(headline, margin, max_false_rate, "gallery", thresholds=thresholds,
                       support={c: min(support[c], t) for c, t in thresholds.items()},
                       anchor={c: min(unlifted[c], t) for c, t in thresholds.items()}, n_genuine=len(pairs),
                       n_impostor=len(trials), genuine_accept=accept, false_rate=false,
                       warning=warning,
                       extra={"levels": levels, "common_level": common})
