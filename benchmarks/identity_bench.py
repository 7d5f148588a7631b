"""Cross-episode identity (clustering + temporal pruning + merge) at series scale.

Generates CCIP-like tracklet vectors and runs ``anitrack.identity.cluster_tracklets``
on them, printing seconds, peak memory and B-cubed F1 per size::

    python benchmarks/identity_bench.py --sizes 1000 10000 100000 300000
    python benchmarks/identity_bench.py --open-set --seeds 0 1 2 3 4 5 6 7

``--open-set`` runs whole identity runs (calibration and naming included) on imported vectors of the
shape users bring (``anitrack.identity.simulate.open_set_series``: 12 main characters, 8 of them in
the gallery with 6 references each and two look-alike pairs, 40 one-shot extras, 8 episodes) through a
real lake, and prints what the naming got right and wrong per seed.

The generated series is meant to be hard in the ways real ones are: each
vector mixes a shared "anime style" direction, one of a dozen archetypes
(hair/colour families), the character, one of its 2-4 looks (outfits) and
per-tracklet noise whose strength varies (blurry or small faces; 8% hard ones:
profile, occluded, motion blur). That gives
cosine ~0.9 within a look, ~0.8 across looks of one character, 0.3-0.5
between characters and ~0.75 between look-alike pairs (twins, siblings).
Episodes hold ~300 tracklets in shots of 1-3 characters on screen together
(overlapping tracklets are always different characters); a recurring cast
grows with the series (a main cast in every episode, arc characters in a run
of episodes) and ~5% of tracklets are one-off extras (each its own identity).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# squared weights of the vector's parts (they sum to 1 before noise varies)
W_STYLE, W_ARCH, W_CHAR, W_LOOK, W_NOISE = 0.34, 0.20, 0.31, 0.05, 0.10
HARD = 0.08  # fraction of hard tracklets (noise 3-6x)
N_ARCHETYPES = 12
DIM = 768


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def make_series(n_tracklets: int, dim: int = DIM, per_episode: int = 300, extras: float = 0.05,
                lookalike_fraction: float = 0.06, refs_per_character: int = 0, seed: int = 0) -> dict:
    """A synthetic series: vectors, episodes, starts, ends, truth (character ids; extras unique) and ids.

    With refs_per_character > 0 also a reference gallery (one look per reference, cycling)
    in ``ref_vectors`` / ``ref_labels`` (labels ``c<id>``) plus ``_noise`` references made
    from extras that never appear in the series.
    """
    rng = np.random.default_rng(seed)
    n_eps = max(1, int(round(n_tracklets / per_episode)))
    n_main = 8
    n_rec = 12 + n_eps // 2
    n_chars = n_main + n_rec
    style = _unit(rng.standard_normal(dim))
    arche = _unit(rng.standard_normal((N_ARCHETYPES, dim)))
    char_arch = rng.integers(0, N_ARCHETYPES, n_chars)
    own = _unit(rng.standard_normal((n_chars, dim)))
    # look-alike pairs: a later character copies most of an earlier one's own direction
    lookalikes = []
    for b in rng.choice(np.arange(1, n_chars), size=max(1, int(lookalike_fraction * n_chars)), replace=False):
        a = int(rng.integers(0, b))
        lookalikes.append((a, int(b)))
        char_arch[b] = char_arch[a]
        own[b] = _unit(0.78 * own[a] + np.sqrt(1 - 0.78 ** 2) * _unit(rng.standard_normal(dim)))
    n_looks = rng.integers(2, 5, n_chars)
    looks = [_unit(rng.standard_normal((k, dim))) for k in n_looks]
    look_p = [rng.dirichlet(np.ones(k) * 2) for k in n_looks]
    base = np.sqrt(W_STYLE) * style + np.sqrt(W_ARCH) * arche[char_arch] + np.sqrt(W_CHAR) * own

    # who is on screen when: main cast everywhere, arc characters in a run of episodes
    arc_start = rng.integers(0, n_eps, n_rec)
    arc_len = np.minimum(rng.geometric(1 / 12, n_rec), n_eps)
    weight = np.concatenate([1.0 / np.arange(1, n_main + 1) ** 0.7 * 6, rng.uniform(0.3, 1.5, n_rec)])

    episodes, starts, ends, truth = [], [], [], []
    next_extra = n_chars
    for e in range(n_eps):
        rec = np.flatnonzero((arc_start <= e) & (e < arc_start + arc_len)) + n_main
        cast = np.concatenate([np.arange(n_main), rec])
        p = weight[cast] / weight[cast].sum()
        t, count = 0.0, 0
        while count < per_episode:
            dur = rng.uniform(1.5, 8.0)
            k = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
            who = list(rng.choice(cast, size=min(k, len(cast)), replace=False, p=p))
            for i in range(len(who)):
                if rng.random() < extras:
                    who[i] = next_extra
                    next_extra += 1
            for c in who:
                a = t + rng.uniform(0, 0.3 * dur)
                b = t + dur - rng.uniform(0, 0.3 * dur)
                episodes.append(e)
                starts.append(a)
                ends.append(b)
                truth.append(c)
                count += 1
            t += dur + rng.uniform(0.0, 1.0)
    episodes = np.array(episodes, np.int64)
    truth = np.array(truth, np.int64)
    n = len(truth)
    vectors = _compose(rng, truth, base, looks, look_p, style, arche, dim, n_chars)
    ids = np.array([f"ep{e:04d}_t{i:05d}" for i, e in enumerate(episodes)])
    out = {"vectors": vectors, "episodes": episodes, "starts": np.array(starts), "ends": np.array(ends),
           "truth": truth, "ids": ids, "n_characters": n_chars, "n_extras": int(next_extra - n_chars),
           "lookalikes": lookalikes}
    if refs_per_character:
        labels = np.repeat(np.arange(n_chars), refs_per_character)
        out["ref_vectors"] = _compose(rng, labels, base, looks, look_p, style, arche, dim, n_chars,
                                      cycle_looks=refs_per_character)
        out["ref_labels"] = np.array([f"c{c}" for c in labels])
        fake = np.arange(10 ** 6, 10 ** 6 + 8)
        out["ref_vectors"] = np.vstack([out["ref_vectors"],
                                        _compose(rng, fake, base, looks, look_p, style, arche, dim, n_chars)])
        out["ref_labels"] = np.concatenate([out["ref_labels"], ["_noise"] * len(fake)])
    return out


def _compose(rng, who, base, looks, look_p, style, arche, dim, n_chars, cycle_looks=0) -> np.ndarray:
    """Vectors for identities ``who`` (ids >= n_chars are extras: fresh character, one look)."""
    n = len(who)
    out = np.empty((n, dim), np.float32)
    chunk = 20000
    for s in range(0, n, chunk):
        w = who[s:s + chunk]
        m = len(w)
        v = np.empty((m, dim), np.float32)
        known = w < n_chars
        kc = w[known]
        if cycle_looks:
            li = [int(j % len(looks[c])) for j, c in zip(range(s, s + m), kc)]
        else:
            li = [int(rng.choice(len(looks[c]), p=look_p[c])) for c in kc]
        look_vec = np.array([looks[c][j] for c, j in zip(kc, li)]).reshape(-1, dim)
        v[known] = base[kc] + np.sqrt(W_LOOK) * look_vec
        ne = int((~known).sum())
        if ne:
            ex_own = _unit(rng.standard_normal((ne, dim)))
            ex_look = _unit(rng.standard_normal((ne, dim)))
            v[~known] = (np.sqrt(W_STYLE) * style + np.sqrt(W_ARCH) * arche[rng.integers(0, N_ARCHETYPES, ne)]
                         + np.sqrt(W_CHAR) * ex_own + np.sqrt(W_LOOK) * ex_look)
        # per-tracklet noise strength: mostly clean, some blurry/small faces, 8% hard (profile,
        # occluded, motion blur) that sit about as close to their character as look-alikes do
        strength = np.where(rng.random(m) < HARD, rng.uniform(3.0, 6.0, m), rng.uniform(0.5, 2.2, m))
        noise_w = np.sqrt(W_NOISE * strength)[:, None]
        v += noise_w * _unit(rng.standard_normal((m, dim)))
        out[s:s + chunk] = _unit(v)
    return out


class PeakRSS:
    """Peak resident memory above the starting level, polled (numpy/BLAS buffers are not traced)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self.rss()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss() - self.base)


def sims_summary(data: dict, rng) -> dict:
    """Measured cosine levels of the generated set (within look/character, between, look-alikes)."""
    v, t = data["vectors"], data["truth"]
    i = rng.integers(0, len(t), 4000)
    j = rng.integers(0, len(t), 4000)
    s = np.einsum("ij,ij->i", v[i], v[j])
    same = (t[i] == t[j]) & (i != j)
    within = []
    for c in np.unique(t)[:50]:
        m = np.flatnonzero(t == c)[:40]
        if len(m) > 1:
            g = v[m] @ v[m].T
            within.append(g[np.triu_indices(len(m), 1)].mean())
    pair = []
    for a, b in data["lookalikes"]:
        ma, mb = np.flatnonzero(t == a)[:40], np.flatnonzero(t == b)[:40]
        if len(ma) and len(mb):
            pair.append(float((v[ma] @ v[mb].T).mean()))
    return {"within_character": float(np.mean(within)) if within else float("nan"),
            "lookalike_pairs": float(np.mean(pair)) if pair else float("nan"),
            "between": float(s[~same].mean()), "between_p99": float(np.quantile(s[~same], 0.99))}


def bench(n: int, seed: int = 0) -> dict:
    from anitrack.identity.clustering import IdentityParams, cluster_tracklets
    from anitrack.identity.evaluation import truth_metrics

    t = time.perf_counter()
    data = make_series(n, seed=seed)
    gen_s = time.perf_counter() - t
    params = IdentityParams()
    with PeakRSS() as mem:
        tracemalloc.start()
        t = time.perf_counter()
        labels = cluster_tracklets(data["vectors"], data["episodes"], data["starts"], data["ends"], params, seed=seed)
        secs = time.perf_counter() - t
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    m = truth_metrics(labels, data["truth"])
    return {"n": len(labels), "episodes": int(data["episodes"].max() + 1), "characters": data["n_characters"],
            "extras": data["n_extras"], "gen_s": gen_s, "seconds": secs, "peak_mib": mem.peak / 2**20, "traced_mib": traced / 2**20,
            "clusters": int(labels.max() + 1), "noise": float((labels < 0).mean()), **m,
            "sims": sims_summary(data, np.random.default_rng(1)) if n <= 20000 else None}


def open_set(seeds: list[int]) -> None:
    """Identity runs on imported open-set vector series: the figures of tests/test_open_set.py per seed."""
    import tempfile

    from anitrack.config import load_config
    from anitrack.identity.evaluation import open_set_figures
    from anitrack.identity.run import identify
    from anitrack.identity.simulate import open_set_series
    from anitrack.lake import Lake, import_table

    print(f"{'seed':>4} {'tracklets':>9} {'outside named':>13} {'gallery right':>13} {'gallery wrong':>13} "
          f"{'B3 F1':>6} {'shared names':>12} {'thresholds':>11} {'seconds':>7}")
    rows = []
    for seed in seeds:
        series = open_set_series(seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            lake = Lake(tmp)
            for key, table in series.tables("v").items():
                name, _, episode = key.partition("/")
                import_table(lake, name, table, "bench", "v", episode or None)
            t = time.perf_counter()
            summary = identify(lake, "v", load_config(environ={}))
            secs = time.perf_counter() - t
            cluster = {r["tracklet_id"]: r["cluster_id"] for r in lake.read("clusters", "v").to_pylist()}
            chars = {r["cluster_id"]: r for r in lake.read("characters", "v").to_pylist()}
        named = {t: chars[k]["character"] if k >= 0 and chars[k]["named"] else None for t, k in cluster.items()}
        r = open_set_figures(series.ids, series.truth, series.gallery, series.episodes, series.starts, series.ends,
                             cluster, named)
        rows.append(r)
        th = sorted(__import__("json").loads(summary["calibration"]["character_thresholds"])["threshold"].values())
        print(f"{seed:>4} {len(series.ids):>9} {r['outside_named']:>13.3f} {r['gallery_right']:>13.3f} "
              f"{r['gallery_wrong']:>13.3f} {r['bcubed_f1']:>6.3f} {r['shared_names']:>12} "
              f"{th[0]:>5.2f}-{th[-1]:<5.2f} {secs:>7.1f}", flush=True)
    print(f"mean {'':>9} {np.mean([r['outside_named'] for r in rows]):>13.3f} "
          f"{np.mean([r['gallery_right'] for r in rows]):>13.3f} {np.mean([r['gallery_wrong'] for r in rows]):>13.3f} "
          f"{np.mean([r['bcubed_f1'] for r in rows]):>6.3f} {sum(r['shared_names'] for r in rows):>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000, 300000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--open-set", action="store_true", help="identity runs on open-set vector series")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    args = parser.parse_args()
    if args.open_set:
        open_set(args.seeds)
        return
    import hdbscan  # noqa: F401  (imports are not part of the measured memory)
    import sklearn.cluster  # noqa: F401
    import sklearn.metrics  # noqa: F401
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"machine: {platform.machine()} {cpu}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, Python {platform.python_version()}")
    print("peak MiB: resident memory above the level before the call (polled); traced: numpy/Python peak (tracemalloc)")
    print(f"{'tracklets':>10} {'episodes':>8} {'chars':>6} {'extras':>6} {'seconds':>8} {'peak MiB':>9} {'traced':>7} "
          f"{'clusters':>8} {'noise':>6} {'B3 P':>6} {'B3 R':>6} {'B3 F1':>6} {'ARI':>6}")
    for n in args.sizes:
        r = bench(n, args.seed)
        print(f"{r['n']:>10} {r['episodes']:>8} {r['characters']:>6} {r['extras']:>6} {r['seconds']:>8.2f} "
              f"{r['peak_mib']:>9.0f} {r['traced_mib']:>7.0f} {r['clusters']:>8} {r['noise']:>6.3f} {r['bcubed_precision']:>6.3f} "
              f"{r['bcubed_recall']:>6.3f} {r['bcubed_f1']:>6.3f} {r['adjusted_rand']:>6.3f}", flush=True)
        if r["sims"]:
            print("           generated cosine levels: " + ", ".join(f"{k} {v:.2f}" for k, v in r["sims"].items()))
    print(f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
