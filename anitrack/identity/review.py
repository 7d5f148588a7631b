"""What the review pages show and write with: the current identity run of a series as cards (the read
model), and the ``Writes`` a correction goes through. The web app (:mod:`anitrack.web.review`) renders it;
the simulated user of :mod:`anitrack.identity.effort` reads the same order a person sees.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from anitrack.identity import corrections
from anitrack.identity.inputs import current_run
from anitrack.intervals import union_length
from anitrack.lake import Lake

STRIP = 6  # crops on a character card


@dataclass(frozen=True)
class Writes:
    """What the page writes with; each returns an identity summary (``undo``: None if there was nothing)."""
    correct: Callable[[list[dict]], dict]    # append one correction's rows, re-identify
    undo: Callable[[], dict | None]          # drop the latest correction, re-identify in full
    backfill: Callable[[list[str]], dict]    # ``stage.key=value`` settings: the backfill's result


@dataclass
class Card:
    """One cluster of the current run as the characters page shows it."""
    cluster_id: int
    character: str
    source: str
    named: bool
    closest: str | None
    similarity: float | None
    margin: float | None
    threshold: float | None
    confidence: float | None
    seconds: float
    tracklets: list[str]
    episodes: int
    crops: list[str] = field(default_factory=list)

    priority: float = 0.0  # seconds on screen a correction would likely move (``Review.priority``)


class Review:
    """The current identity run of one series, read from the lake (reloaded after every correction)."""

    def __init__(self, lake: Lake, series: str):
        self.lake, self.series = lake, series
        self.crop_rows = lake.read("crops", series, columns=["episode", "tracklet_id", "crop_id", "t_s",
                                                            "face_score"]).to_pylist()
        self.crop_episode = {r["crop_id"]: r["episode"] for r in self.crop_rows}
        self.crops_of = defaultdict(list)
        for r in sorted(self.crop_rows, key=lambda r: r["t_s"]):
            self.crops_of[r["tracklet_id"]].append(r)
        self.tracklets = {r["tracklet_id"]: r for r in lake.read("tracklets", series).to_pylist()}
        self.shots = defaultdict(list)
        for r in lake.read("shots", series, columns=["episode", "start_s"]).to_pylist():
            self.shots[r["episode"]].append(r["start_s"])
        self.durations = {r["episode"]: r["duration_s"] or 0.0 for r in lake.read("episodes", series).to_pylist()}
        self._images: dict[str, dict[str, tuple[str, bytes]]] = {}
        self.reload()

    def reload(self) -> None:
        self.run_id, self.members = corrections.current_members(self.lake, self.series)
        run = self.run_id
        self.run = current_run(self.lake, self.series)
        self.verdict_of = {r["tracklet_id"]: r for r in self.lake.read("clusters", self.series).to_pylist()
                           if r["run_id"] == run}  # each tracklet's own verdict (noise ones too)
        chars = [r for r in self.lake.read("characters", self.series).to_pylist() if r["run_id"] == run]
        self.appearances = [r for r in self.lake.read("appearances", self.series).to_pylist() if r["run_id"] == run]
        spans = defaultdict(list)
        for a in self.appearances:
            spans[(a["cluster_id"], a["episode"])].append((a["start_s"], a["end_s"]))
        seconds = defaultdict(float)
        for (k, _), s in spans.items():
            seconds[k] += union_length(s)
        self.cards = {}
        for c in chars:
            k = c["cluster_id"]
            tids = self.members.get(k, [])
            self.cards[k] = Card(k, c["character"], c["source"], c["named"], c["closest"], c["similarity"],
                                 c["margin"], c["threshold"], c["confidence"], seconds[k], tids,
                                 len({self.tracklets[t]["episode"] for t in tids if t in self.tracklets}),
                                 self._strip(tids, c["best_tracklet_id"]))
            self.cards[k].priority = self.priority(self.cards[k])
        gallery = {r["character"] for r in self.lake.read("references", self.series, columns=["character"]).to_pylist()}
        chosen = {r["value"] for r in self.lake.read("labels", self.series, columns=["action", "value"]).to_pylist()
                  if r["action"] in ("name", "reference")}
        self.names = sorted(gallery | chosen | {c.character for c in self.cards.values() if c.named})

    def priority(self, card: Card) -> float:
        """Seconds on screen a correction would likely move.

        A user's label: none. An unknown cluster: all its time (naming it credits it). A reference name:
        its time times the cluster's doubt (its backing share falls short of 1, its median lead over the
        runner-up under 0.1), plus the time of tracklets whose own verdict points at another character.
        Mistakes the embedding makes with confidence show in none of these; they rank by screen time.
        """
        if card.source == "label":
            return 0.0
        if not card.named:
            return card.seconds
        lead = min(max((card.margin or 0.0) / 0.1, 0.0), 1.0)
        doubt = 1.0 - (card.confidence or 0.0) * (0.5 + 0.5 * lead)
        against = 0.0
        for t in card.tracklets:
            row, verdict = self.tracklets.get(t), self.verdict_of.get(t) or {}
            if row and verdict.get("best") not in (None, card.character):
                against += row["end_s"] - row["start_s"]
        return card.seconds * doubt + against

    def _strip(self, tids: list[str], best: str | None) -> list[str]:
        """The best crops of a cluster: its best tracklet's sharpest face first, then one per tracklet."""
        ranked = sorted(tids, key=lambda t: (t != best, -len(self.crops_of[t]), t))
        picks = [max(self.crops_of[t], key=lambda r: r["face_score"] or 0.0)["crop_id"]
                 for t in ranked if self.crops_of[t]]
        return picks[:STRIP]

    def order(self) -> list[Card]:
        """Cards by what a correction would change most: screen time of uncertain clusters first."""
        return sorted(self.cards.values(), key=lambda c: (-c.priority, -c.seconds, c.cluster_id))

    def image(self, crop_id: str) -> tuple[str, bytes] | None:
        episode = self.crop_episode.get(crop_id)
        if episode is None:
            return None
        if episode not in self._images:
            table = self.lake.read("crops", self.series, episode=episode,
                                   columns=["crop_id", "image_format", "image"]).to_pylist()
            self._images[episode] = {r["crop_id"]: (r["image_format"] or "jpeg", r["image"]) for r in table}
        return self._images[episode].get(crop_id)


def check_reviewable(lake: Lake, series: str) -> None:
    """Refuse, before any server starts, a series the lake lacks or one without an identity run."""
    known = lake.series()
    if series not in known:
        raise corrections.CorrectionError(f"series {series!r} is not in the lake (it holds: "
                                          f"{', '.join(known) or 'nothing'})")
    if current_run(lake, series) is None:
        raise corrections.CorrectionError(f"series {series!r} has no identity run yet (run anitrack identify first)")


__all__ = ["Card", "Review", "Writes", "check_reviewable"]
