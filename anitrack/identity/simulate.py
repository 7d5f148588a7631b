"""CCIP-like vector series with ground truth: the "bring your own vectors" case, generated.

Real galleries are small and their characters often look nothing alike, while the series is full
of people the gallery leaves out. :func:`open_set_series` builds that case as vectors, so naming
can be measured where it must say "unknown": a main cast of which only some are in the gallery,
one-shot extras, look-alike pairs inside the gallery, and tracklets on screen together (which are
never one character). Each vector mixes a shared style direction, one of a few archetypes, the
character's own direction, one of its looks and per-tracklet noise; the weights set the cosine
between characters (about ``between``) and within one (about 0.8).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


@dataclass
class VectorSeries:
    """Tracklets (id, episode, start, end, vector, true character) and a gallery (vector, label)."""

    ids: list[str]
    episodes: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    vectors: np.ndarray
    truth: np.ndarray           # character name per tracklet ("extra_<n>" for one-shot extras)
    ref_vectors: np.ndarray
    ref_labels: np.ndarray
    gallery: list[str]          # the characters the gallery holds
    lookalikes: list[tuple[str, str]]

    def tables(self, series: str, model: str = "my-ccip-like") -> dict[str, pa.Table]:
        """The tables a user imports with ``anitrack lake import``: tracklets and embeddings per episode,
        and the references."""
        out = {}
        for ep in sorted(set(self.episodes.tolist())):
            m = np.flatnonzero(self.episodes == ep)
            ids = [self.ids[i] for i in m]
            fps = 24.0
            out[f"tracklets/{ep}"] = pa.table({
                "tracklet_id": ids, "shot_id": pa.array([0] * len(m), pa.int32()),
                "start_frame": [int(self.starts[i] * fps) for i in m], "end_frame": [int(self.ends[i] * fps) + 1 for i in m],
                "start_s": self.starts[m].tolist(), "end_s": self.ends[m].tolist(),
                "n_detections": pa.array([8] * len(m), pa.int32())})
            out[f"embeddings/{ep}"] = pa.table({"tracklet_id": ids, "model": [model] * len(m),
                                                "vector": self.vectors[m].tolist()})
        out["references"] = pa.table({
            "character": self.ref_labels.tolist(), "image_id": [f"{c}/{i}" for i, c in enumerate(self.ref_labels)],
            "model": [model] * len(self.ref_labels), "vector": self.ref_vectors.tolist()})
        return out


def open_set_series(seed: int = 0, episodes: int = 8, tracklets: int = 900, main: int = 12, in_gallery: int = 8,
                    refs: int = 6, extras: int = 40, lookalike_pairs: int = 2, noise_refs: int = 0,
                    dim: int = 256, between: float = 0.38, noise: float = 0.12,
                    lookalike: float = 0.78) -> VectorSeries:
    """A series of ``episodes`` with ``tracklets`` in all: ``main`` recurring characters (the first
    ``in_gallery`` in the gallery, ``refs`` references each; ``lookalike_pairs`` pairs of them look alike,
    cosine about ``lookalike`` between their own directions), ``extras`` one-shot extras, and shots of one to
    three characters on screen together. ``noise_refs`` adds ``_noise`` references of extras never seen."""
    rng = np.random.default_rng(seed)
    w_style = between * 0.7          # shared by every character
    w_arch = between * 0.3 * 2       # shared by characters of one archetype (about half of the pairs)
    w_look = 0.06
    w_char = max(0.05, 1.0 - w_style - w_arch - w_look - noise)
    style = _unit(rng.standard_normal(dim))
    n_arch = 2
    arche = _unit(rng.standard_normal((n_arch, dim)))
    own = _unit(rng.standard_normal((main + extras, dim)))
    arch_of = rng.integers(0, n_arch, main + extras)
    pairs = []
    order = rng.permutation(in_gallery)
    for p in range(min(lookalike_pairs, in_gallery // 2)):
        a, b = int(order[2 * p]), int(order[2 * p + 1])
        own[b] = _unit(lookalike * own[a] + np.sqrt(1 - lookalike ** 2) * _unit(rng.standard_normal(dim)))
        arch_of[b] = arch_of[a]
        pairs.append((a, b))
    looks = [_unit(rng.standard_normal((int(rng.integers(2, 4)), dim))) for _ in range(main + extras)]
    names = [f"char_{c:02d}" for c in range(main)] + [f"extra_{e:02d}" for e in range(extras)]

    def vector(c: int, k: int, strength: np.ndarray) -> np.ndarray:
        look = looks[c][rng.integers(0, len(looks[c]), k)]
        base = (np.sqrt(w_style) * style + np.sqrt(w_arch) * arche[arch_of[c]] + np.sqrt(w_char) * own[c]
                + np.sqrt(w_look) * look)
        return _unit(base + np.sqrt(noise * strength)[:, None] * _unit(rng.standard_normal((k, dim))))

    weight = 1.0 / np.arange(1, main + 1) ** 0.6
    extra_at = set(rng.choice(tracklets, size=extras, replace=False).tolist())
    per_episode = tracklets / episodes
    who, eps, starts, ends = [], [], [], []
    next_extra = main
    t, ep = 0.0, 0
    while len(who) < tracklets:
        if len(who) >= (ep + 1) * per_episode:
            ep, t = ep + 1, 0.0
        dur = rng.uniform(1.5, 8.0)
        k = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        on = rng.choice(main, size=k, replace=False, p=weight / weight.sum())
        for c in on:
            if len(who) in extra_at and next_extra < main + extras:
                c, next_extra = next_extra, next_extra + 1
            who.append(int(c))
            eps.append(f"ep{ep + 1:02d}")
            starts.append(t + rng.uniform(0, 0.3 * dur))
            ends.append(t + dur - rng.uniform(0, 0.3 * dur))
        t += dur + rng.uniform(0.0, 1.0)
    who_a = np.array(who[:tracklets])
    # most tracklets are clean; some blurry or small; 8% hard (profile, occluded)
    strength = np.where(rng.random(len(who_a)) < 0.08, rng.uniform(2.5, 4.0, len(who_a)),
                        rng.uniform(0.5, 1.6, len(who_a)))
    vecs = np.empty((len(who_a), dim), np.float32)
    for c in np.unique(who_a):
        m = np.flatnonzero(who_a == c)
        vecs[m] = vector(int(c), len(m), strength[m])
    ref_who = np.repeat(np.arange(in_gallery), refs)
    ref_vecs = np.vstack([vector(int(c), 1, rng.uniform(0.5, 1.2, 1)) for c in ref_who])
    ref_labels = np.array([names[c] for c in ref_who], object)
    if noise_refs:
        hidden = _unit(rng.standard_normal((noise_refs, dim)))
        extra_vecs = _unit(np.sqrt(w_style) * style + np.sqrt(w_arch) * arche[rng.integers(0, n_arch, noise_refs)]
                           + np.sqrt(w_char + w_look) * hidden
                           + np.sqrt(noise) * _unit(rng.standard_normal((noise_refs, dim))))
        ref_vecs = np.vstack([ref_vecs, extra_vecs])
        ref_labels = np.concatenate([ref_labels, np.array(["_noise"] * noise_refs, object)])
    n = len(who_a)
    return VectorSeries(ids=[f"{eps[i]}:t{i:04d}" for i in range(n)], episodes=np.array(eps[:n]),
                        starts=np.array(starts[:n]), ends=np.array(ends[:n]), vectors=vecs,
                        truth=np.array([names[c] for c in who_a], object), ref_vectors=ref_vecs.astype(np.float32),
                        ref_labels=ref_labels, gallery=names[:in_gallery],
                        lookalikes=[(names[a], names[b]) for a, b in pairs])
