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
    passed: np.ndarray    # (N,) bool: a name on its own evidence (its character's calibrated threshold)
    stranger: np.ndarray  # (N,) bool: closest to a noise label (the gallery's extras) by the margin

    def name(self, i: int) -> str | None:
        return str(self.best[i]) if self.passed[i] else None


@dataclass
class Calibration:
    """The naming rule of one run and the evidence it rests on (recorded with the run).

    ``thresholds`` holds one threshold per character: a character that other characters' drawings
    resemble (a look-alike's sister) needs a higher score than one nobody resembles. ``threshold``
    applies to characters without their own (a default, a fixed value) and is reported as the
    rule's headline (the median of the per-character ones). ``evidence`` counts what each source
    gave and says what ``false_rate`` was measured on.
    """

    threshold: float
    margin: float
    max_false_rate: float
    source: str                 # "gallery" | "default" | "published" | "fixed"
    thresholds: dict[str, float] = field(default_factory=dict)
    n_genuine: int = 0
    n_impostor: int = 0
    genuine_accept: float | None = None   # share of held-out references named right (thresholds of other folds)
    false_rate: float | None = None       # share of open-set trials named (thresholds of other folds)
    genuine_pair_low: float | None = None  # 10th percentile of same-character pairs (cluster view)
    published_threshold: float | None = None
    warning: str | None = None
    evidence: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the user: the rule, what it rests on, what it measured."""
        if self.thresholds:
            values = sorted(self.thresholds.values())
            bar = f"per-character thresholds {values[0]:.2f}-{values[-1]:.2f} (median {self.threshold:.2f})"
        else:
            bar = f"threshold {self.threshold:.2f}"
        if self.source == "gallery":
            ev = self.evidence
            how = (f"for a false-name rate of {self.max_false_rate:g} from {ev.get('gallery_impostors', 0)} "
                   f"held-out references of other characters, {ev.get('noise_references', 0)} _noise references "
                   f"and a floor of {ev.get('genuine_floor') or 0:.2f} from {self.n_genuine} same-character "
                   f"pairs (held out: {self.false_rate or 0:.3f} of {self.n_impostor} open-set trials named, "
                   f"{100 * (self.genuine_accept or 0):.0f}% of references named right)")
        else:
            how = {"default": "the embedder's conservative default (gallery too small to calibrate)",
                   "published": "the model's published threshold", "fixed": "fixed by name.threshold"}[self.source]
        raised = self.evidence.get("raised_by_series") or {}
        series = (f"; raised for {len(raised)} character(s) where two tracklets on screen together both passed"
                  if raised else "")
        return f"naming: {bar}, {how}, margin {self.margin:g}{series}"

    def threshold_of(self, label: str) -> float:
        return self.thresholds.get(str(label), self.threshold)

    def judge(self, sims: np.ndarray, ref_labels) -> Verdicts:
        """The calibrated test on a (rows x references) score matrix (higher is closer)."""
        chars, score = per_character(sims, ref_labels)
        n = len(score)
        if len(chars) == 0 or n == 0:
            return Verdicts(np.array([""] * n, object), np.full(n, -np.inf), np.zeros(n), np.zeros(n, bool),
                            np.zeros(n, bool))
        order = np.argsort(-score, axis=1, kind="stable")
        best = score[np.arange(n), order[:, 0]]
        second = score[np.arange(n), order[:, 1]] if len(chars) > 1 else np.full(n, -np.inf)
        label = chars[order[:, 0]]
        lead = best - second
        bar = np.array([self.threshold_of(c) for c in chars])[order[:, 0]]
        noise = np.array([is_noise_label(c) for c in label], bool)
        clear = (lead >= self.margin) & ~noise
        return Verdicts(label.astype(object), best.astype(np.float64), lead.astype(np.float64),
                        (best >= bar) & clear, noise & (lead >= self.margin))

    def check_series(self, sims: np.ndarray, ref_labels, pair_i: np.ndarray, pair_j: np.ndarray,
                     mutual: np.ndarray) -> None:
        """The series' own open-set evidence: two tracklets on screen together are two characters, so
        when both would be named X, X's threshold admits someone else; it is raised above the lower of
        the two. Pairs as alike as the gallery's genuine matches (``mutual``; without them, as the headline
        threshold) are no evidence: one face tracked twice, or two faces this embedder cannot tell apart,
        which clustering keeps apart and of which only one keeps a name. Records what the pairs gave."""
        v = self.judge(sims, ref_labels)
        alike = self.evidence.get("genuine_median")
        alike = self.threshold if alike is None else alike
        both = (v.best[pair_i] == v.best[pair_j]) & v.passed[pair_i] & v.passed[pair_j] & (mutual < alike)
        raised: dict[str, float] = {}
        for a, b in zip(pair_i[both], pair_j[both]):
            c = str(v.best[a])
            raised[c] = max(raised.get(c, -np.inf), float(min(v.score[a], v.score[b])))
        for c, low in raised.items():
            self.thresholds[c] = float(np.nextafter(max(low, self.threshold_of(c)), np.inf))
        self.evidence["cooccurring_pairs"] = int(len(pair_i))
        self.evidence["cooccurring_both_named"] = int(both.sum())
        self.evidence["raised_by_series"] = {c: round(self.thresholds[c], 4) for c in sorted(raised)}


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
                     margin: float, dims: int = 100) -> tuple[Space, Calibration]:
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

    cal = _calibrate(scores, labels, _folds(labels), max_false_rate, margin)
    cal.genuine_pair_low = genuine_pair_low(space.cluster(refs), labels)
    high = impostor_pair_high(space.cluster(refs), labels)
    if cal.genuine_pair_low is not None and high is not None:
        cal.evidence["join"] = float(max(cal.genuine_pair_low, high))
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


def impostor_pair_high(refs: np.ndarray, labels: np.ndarray) -> float | None:
    """The highest cosine between drawings of two different gallery characters (cluster view)."""
    real = np.array([not is_noise_label(c) for c in labels], bool)
    if real.sum() < 2:
        return None
    sims = refs[real] @ refs[real].T
    other = labels[real][:, None] != labels[real][None, :]
    return float(sims[other].max()) if other.any() else None


def calibrate_scores(score_fn, ref_labels, max_false_rate: float, margin: float, published: float) -> Calibration:
    """The naming rule for a fixed metric (CCIP: 1 - difference), from the gallery when it is big enough."""
    labels = np.asarray([str(s) for s in ref_labels])
    problem, note = _gallery_problems(labels) if len(labels) else ("no reference gallery", None)
    if problem:
        return Calibration(published, margin, max_false_rate, "published", published_threshold=published,
                           warning=problem)
    cal = _calibrate(lambda train, test: score_fn(test, train), labels, _folds(labels), max_false_rate, margin)
    cal.published_threshold = published
    cal.warning = joined_warnings(cal.warning, note)
    return cal


CONFIDENCE = 0.75     # how sure the held-out count must make us that the false-name rate is met


def rate_bound(named: int, trials: int) -> float:
    """The false-name rate that ``named`` of ``trials`` cannot rule out at ``CONFIDENCE`` (Poisson upper
    bound). A hundred trials with one named still allow 2.7%: the thresholds then go on up the tail
    model until the bound meets the rate (on real art, characters outside the gallery that look like
    one inside it are named about as often as that bound, not as the bare count, says)."""
    from scipy.stats import gamma

    return float(gamma.ppf(CONFIDENCE, named + 1)) / max(trials, 1)


GENUINE_FLOOR = 0.0   # quantile of genuine reference pairs under which nothing is named (0: the lowest pair)
TAIL = 0.2            # the share of each character's impostor scores its tail model is fitted to
PRIOR = 10            # pseudo-scores pulling a character's tail towards the pooled one
STEP, MAX_LEVEL = 0.25, 12.0  # steps of the tail model's level and of a character's reach (in decay lengths)


@dataclass
class _Fit:
    """What held-out evidence from some folds says, all but the tail model's level (see :func:`_fit`)."""

    tail: dict[str, float]     # where each character's impostor tail starts
    spread: float              # the tail's decay length (the embedder's, pooled)
    landed: dict[str, float]   # the highest open-set trial that landed on each character
    reach: dict[str, float]    # how far above it, in decay lengths
    floor: float | None        # the genuine floor

    def thresholds(self, level: float, lift: dict[str, float] | None = None) -> dict[str, float]:
        """X's threshold is the highest of: its impostor tail at ``level`` decay lengths above the tail's
        start; its landed trials' top plus its reach (and its ``lift``, for a look-alike); and the floor."""
        floor = -np.inf if self.floor is None else self.floor
        lift = lift or {}
        guard = {c: top + (self.reach.get(c, 0.0) + lift.get(c, 0.0)) * self.spread for c, top in self.landed.items()}
        return {c: float(max(t + level * self.spread, guard.get(c, -np.inf), floor)) for c, t in self.tail.items()}


def _fit(impostor_of: dict[str, list[tuple[int, float]]], trials: list[tuple[int, str, float, float]],
         pairs: list[tuple[int, float]], margin: float, folds: set[int]) -> _Fit:
    """The naming rule's parts from the evidence of ``folds``.

    * Impostors: an exponential tail above each character's top ``TAIL`` of impostor scores (peaks over
      a threshold, as extreme-value practice estimates small false-accept rates); the tail starts at
      the character's own quantile, shrunk towards all characters', and decays with one length for
      the embedder (the median excess, robust to a look-alike's few high scores).
    * Look-alikes: the open-set trials that landed on a character (drawings of someone else that would
      be named X were their own character missing) set a guard just above the highest; its reach is
      the least that, fold by fold within ``folds``, keeps every landed trial below the guard the
      other folds set (a few drawings of a sister cannot show her highest score).
    * The genuine floor: the score all but ``GENUINE_FLOOR`` of the gallery's same-character pairs
      reach: a name needs at least the similarity a character's own drawings have to each other,
      whatever the gallery's impostors show.
    """
    scores = {c: [x for g, x in v if g in folds] for c, v in impostor_of.items()}
    tails = {c: float(np.quantile(v, 1 - TAIL)) for c, v in scores.items() if v}
    excess = [x - tails[c] for c, v in scores.items() if v for x in v if x > tails[c]]
    pooled = float(np.median(list(tails.values()))) if tails else 0.0
    spread = float(np.median(excess)) / np.log(2) if excess else 0.0
    tail = {c: (len(v) * tails.get(c, pooled) + PRIOR * pooled) / (len(v) + PRIOR) for c, v in scores.items()}
    landed_by: dict[str, dict[int, float]] = {}
    for g, c, sc, lead in trials:
        if g in folds and lead >= margin:
            landed_by.setdefault(c, {})[g] = max(landed_by.get(c, {}).get(g, -np.inf), sc)
    reach = {}
    for c, tops in landed_by.items():
        r = 0.0
        while r < MAX_LEVEL and any(top >= max((t for h, t in tops.items() if h != g), default=np.inf) + r * spread
                                    for g, top in tops.items()):
            r += STEP
        reach[c] = r
    genuine = [x for g, x in pairs if g in folds]
    return _Fit(tail, spread, {c: float(np.nextafter(max(t.values()), np.inf)) for c, t in landed_by.items()},
                reach, float(np.quantile(genuine, GENUINE_FLOOR)) if genuine else None)


def look_alikes(trial_of: list[str], trials: list[tuple[int, str, float, float]], margin: float
                ) -> set[tuple[str, str]]:
    """(B, A) pairs where most of B's held-out drawings, B left out, would be named A and most of A's, B: a
    look-alike pair (twins, sisters), as opposed to the scattered trials of characters an embedder merely
    confuses."""
    count: dict[tuple[str, str], int] = {}
    total: dict[str, int] = {}
    for own, (_, c, _, lead) in zip(trial_of, trials):
        total[own] = total.get(own, 0) + 1
        if lead >= margin:
            count[(own, c)] = count.get((own, c), 0) + 1
    most = {pair for pair, n in count.items() if n >= max(2, 0.5 * total[pair[0]])}
    return {(b, a) for b, a in most if (a, b) in most}


def _calibrate(scores, labels: np.ndarray, folds: np.ndarray, max_false_rate: float, margin: float) -> Calibration:
    """Per-character thresholds from held-out references (see :func:`_fit`).

    Each held-out reference gives, for every other character X, an impostor score for X (how much
    X resembles a drawing of someone else; ``_noise`` references are impostors of everyone), one
    open-set trial (its best other character, as if its own were not in the gallery) and, unless
    it is an extra, a genuine match (its best score for its own character). The rates reported are
    measured fold by fold with thresholds learnt on the other folds: thresholds checked on the very
    scores they were fitted to would look safer than they are.
    """
    impostor_of: dict[str, list[tuple[int, float]]] = {}
    trials: list[tuple[int, str, float, float]] = []  # (fold, best other character, its score, its lead)
    genuine: list[tuple[int, str, float, float]] = []  # (fold, own character, its score, its lead over the rest)
    pair_scores: list[tuple[int, float]] = []  # (fold, same-character pair score)
    trial_of: list[str] = []  # each trial's own character
    n_noise = 0
    for f in range(FOLDS):
        test, train = np.flatnonzero(folds == f), np.flatnonzero(folds != f)
        if len(test) == 0 or len(train) == 0:
            continue
        sims = scores(train, test)
        chars, score = per_character(sims, labels[train])
        noise_col = np.array([is_noise_label(c) for c in chars], bool)
        for row, i in enumerate(test):
            own = labels[i]
            n_noise += is_noise_label(own)
            same = labels[train] == own
            if same.any() and not is_noise_label(own):
                pair_scores.extend((f, float(x)) for x in sims[row, same])
            others = np.array([c != own for c in chars], bool) & ~noise_col
            for c in chars[others]:
                impostor_of.setdefault(str(c), []).append((f, float(score[row, chars == c][0])))
            if others.any():  # open set: as if ``own`` were not in the gallery at all
                s = score[row, others]
                k = int(np.argmax(s))
                rest = np.concatenate([np.delete(s, k), score[row, noise_col]])
                trials.append((f, str(chars[others][k]), float(s[k]),
                               float(s[k] - rest.max()) if len(rest) else np.inf))
                trial_of.append(str(own))
            if not is_noise_label(own) and own in chars:
                k = int(np.flatnonzero(chars == own)[0])
                rest = np.delete(score[row], k)
                genuine.append((f, str(own), float(score[row, k]),
                                float(score[row, k] - rest.max()) if len(rest) else np.inf))

    every = {t[0] for t in trials} | {g for g, _ in pair_scores}
    guarding = [t for own, t in zip(trial_of, trials) if not is_noise_label(own)]
    apart = {f: _fit(impostor_of, guarding, pair_scores, margin, every - {f}) for f in sorted(every)}

    alike = look_alikes(trial_of, trials, margin)

    def held_out(level: float, lift: dict[str, float]) -> tuple[int, int, set[str], bool]:
        """Open-set trials named, genuine matches accepted, the look-alikes named trials landed on, and
        whether any named trial is not of a look-alike pair (nor a ``_noise`` extra's, which meets the
        margin against its own references); each fold judged by the thresholds of the others."""
        named = accepted = 0
        sisters: set[str] = set()
        other = False
        for f, fit in apart.items():
            bars = fit.thresholds(level, lift)
            for own, (g, c, sc, lead) in zip(trial_of, trials):
                if g == f and lead >= margin and sc >= bars.get(c, np.inf):
                    named += 1
                    if (own, c) in alike:
                        sisters.add(c)
                    elif not is_noise_label(own):
                        other = True
            accepted += sum(1 for g, c, sc, lead in genuine if g == f and lead >= margin and sc >= bars.get(c, np.inf))
        return named, accepted, sisters, other

    # raised until the held-out trials are named within the rate: where named trials are look-alikes'
    # (sisters, twins), those characters alone are lifted; otherwise the tail's level, one for every
    # character (levels fitted per character to these few trials would promise more than they keep); a
    # count that cannot show the rate with confidence (always, for fewer than 1 / rate trials) extrapolates
    # along the tail beyond it
    allowed = int(np.floor(max_false_rate * len(trials)))
    level, lift = 0.0, {}
    named, accepted, sisters, other = held_out(level, lift)
    while named > allowed and level < MAX_LEVEL and (sisters or other):
        if sisters and all(lift.get(c, 0.0) < MAX_LEVEL for c in sisters):
            for c in sisters:
                lift[c] = lift.get(c, 0.0) + STEP
        elif other or sisters:
            level += STEP
        named, accepted, sisters, other = held_out(level, lift)
    fit = _fit(impostor_of, guarding, pair_scores, margin, every)
    used = level + max(0.0, float(np.log(rate_bound(named, len(trials)) / max_false_rate)))
    thresholds, floor = fit.thresholds(used, lift), fit.floor
    warning = None
    if len(trials) < 1 / max_false_rate:
        warning = (f"{len(trials)} held-out references cannot show a false-name rate of {max_false_rate:g}: "
                   f"the thresholds extrapolate a model of the impostor scores; add reference images (at least "
                   f"{int(np.ceil(1 / max_false_rate))} in all) to measure it")
    genuine_scores = [sc for _, _, sc, _ in genuine]
    evidence = {"gallery_impostors": len(trials) - n_noise, "noise_references": n_noise,
                "look_alikes": sorted([a, b] for a, b in alike), "lift": {c: x for c, x in sorted(lift.items())},
                "level": used, "rate_bound": rate_bound(named, len(trials)), "reach": {c: r for c, r in sorted(fit.reach.items()) if r}, "genuine_matches": len(genuine), "genuine_pairs": len(pair_scores), "genuine_floor": floor,
                "genuine_median": float(np.median(genuine_scores)) if genuine_scores else None,
                "false_rate_measured_on": (f"{len(trials)} held-out references (other characters and _noise), "
                                           "each judged by thresholds learnt without its fold")}
    headline = float(np.median(list(thresholds.values()))) if thresholds else float("inf")
    return Calibration(headline, margin, max_false_rate, "gallery", thresholds=thresholds, n_genuine=len(pair_scores),
                       n_impostor=len(trials), genuine_accept=accepted / len(genuine) if genuine else None,
                       false_rate=named / len(trials) if trials else None, warning=warning, evidence=evidence)
