"""What a user who knows the truth must do to get a right table, counted in the review app's actions.

The simulated user corrects through the same calls as the review app and ``anitrack label``
(``identity.corrections``), one click at a time, in the order the Characters page proposes, and the
series is re-identified after each click, as the app does. Figures are shares of the *tracked* screen
time (the tracklets the pipeline found): what the user can fix, not what the detector missed.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from anitrack.identity import corrections
from anitrack.identity.inputs import current_run
from anitrack.lake import Lake


@dataclass
class Step:
    action: str        # what the user clicked ("start" before any)
    right: float       # share of the known characters' tracked time credited to the right name
    wrong: float       # share of the named tracked time credited to a wrong name
    seconds: float     # re-identification time of this action


def credited(lake: Lake, series: str) -> dict[str, str | None]:
    """Each tracklet's credited name in the current run (None: unknown cluster or noise)."""
    run = current_run(lake, series)["run_id"]
    names = {r["cluster_id"]: r["character"] if r["named"] else None
             for r in lake.read("characters", series).to_pylist() if r["run_id"] == run}
    return {r["tracklet_id"]: names.get(r["cluster_id"])
            for r in lake.read("clusters", series, columns=["run_id", "tracklet_id", "cluster_id"]).to_pylist()
            if r["run_id"] == run}


def shares(credit: dict[str, str | None], true_of: dict[str, str], seconds: dict[str, float],
           known: set[str]) -> tuple[float, float]:
    """(right share of the known characters' tracked time, wrong share of the named tracked time)."""
    total = sum(s for t, s in seconds.items() if true_of.get(t) in known)
    right = sum(s for t, s in seconds.items() if true_of.get(t) in known and credit.get(t) == true_of[t])
    named = sum(s for t, s in seconds.items() if credit.get(t))
    wrong = sum(s for t, s in seconds.items() if credit.get(t) and credit[t] != true_of.get(t))
    return right / total if total else 1.0, wrong / named if named else 0.0


def known_truth(lake: Lake, series: str, folder: Path) -> tuple[dict[str, str], set[str]]:
    """(each tracklet's true character, the characters a user knows) from a rendered series' truth."""
    from anitrack.identity.evaluation import true_characters
    from anitrack.identity.inputs import load_inputs

    truth = json.loads((Path(folder) / "truth.json").read_text())
    return true_characters(load_inputs(lake, series), truth, Path(folder) / "face_boxes.csv"), set(truth["characters"])


def next_action(cards, noise: list[str], true_of: dict[str, str], seconds: dict[str, float],
                known: set[str], tried: set = frozenset()) -> tuple[str, int, dict] | None:
    """The first click the page order leads to: (kind, cluster, arguments), or None when all is right.

    Per card: an unnamed or misnamed cluster is named after the character holding most of its time (or
    marked noise when that is nobody the user knows); then the tracklets of each other character are
    given to theirs, the largest share first. Then the noise bin: its tracklets of one character at a time.
    An action already clicked (in ``tried``) is not clicked again: where it did not hold, a second would not.
    """
    for action in _candidates(cards, noise, true_of, seconds, known):
        if _key(action) not in tried:
            return action
    return None


def _key(action: tuple[str, int, dict]) -> tuple:
    kind, cluster, args = action
    return kind, cluster, args.get("name"), tuple(sorted(args.get("tracklets", ())))


def _candidates(cards, noise, true_of, seconds, known):
    for card in cards:
        time_of = defaultdict(float)
        for t in card.tracklets:
            time_of[true_of.get(t, "_none")] += seconds.get(t, 0.0)
        if not time_of:
            continue
        major = max(time_of, key=time_of.get)
        if (not card.named or card.character != major) and len(time_of) > 1 and major in known:
            # a mixed cluster about to be (re)named: its other characters go first, so no click names them wrong
            other = min((c for c in time_of if c != major), key=time_of.get)
            chosen = [t for t in card.tracklets if true_of.get(t, "_none") == other]
            yield ("name", card.cluster_id, {"name": other, "tracklets": chosen}) if other in known else \
                ("noise", card.cluster_id, {"tracklets": chosen})
            continue
        if major not in known and not (card.named and any(c in known for c in time_of)):
            yield "noise", card.cluster_id, {}  # (a named one keeps its known tracklets: the others go)
            continue
        if major in known and (not card.named or card.character != major):
            yield "name", card.cluster_id, {"name": major}
            continue
        strays = {c: s for c, s in time_of.items() if c != (card.character if card.named else major)}
        if strays:
            other = max(strays, key=strays.get)
            chosen = [t for t in card.tracklets if true_of.get(t, "_none") == other]
            if other in known:
                yield "name", card.cluster_id, {"name": other, "tracklets": chosen}
            else:
                yield "noise", card.cluster_id, {"tracklets": chosen}
    waiting = defaultdict(list)
    for t in noise:
        if true_of.get(t) in known:
            waiting[true_of[t]].append(t)
    for character in sorted(waiting, key=lambda c: -sum(seconds.get(t, 0.0) for t in waiting[c])):
        yield "name", -1, {"name": character, "tracklets": waiting[character]}


def simulate(lake: Lake, series: str, config: dict, true_of: dict[str, str], known: set[str],
             max_actions: int = 60, report=None) -> list[Step]:
    """Correct the current identity run of ``series`` until nothing is left to fix (or ``max_actions``);
    returns the figures before the first action and after each one. ``report(step)`` sees each as it comes."""
    from anitrack.identity.run import identify
    from anitrack.identity.review import Review

    seconds = {r["tracklet_id"]: r["end_s"] - r["start_s"] for r in lake.read("tracklets", series).to_pylist()}
    steps = [Step("start", *shares(credited(lake, series), true_of, seconds, known), 0.0)]
    if report:
        report(steps[-1])
    tried: set = set()
    for _ in range(max_actions):
        review = Review(lake, series)
        action = next_action(review.order(), review.members.get(-1, []), true_of, seconds, known, tried)
        if action is None:
            break
        tried.add(_key(action))
        kind, cluster, args = action
        rows = corrections.correction_rows(lake, series, kind, cluster, run_id=review.run_id, **args)
        started = time.perf_counter()
        corrections.record(lake, series, rows)
        identify(lake, series, corrections.reidentify_config(lake, series, config))
        what = f"{kind} #{cluster}" + (f" {args['name']}" if "name" in args else "") + \
            (f" ({len(args['tracklets'])} tracklets)" if "tracklets" in args else "")
        steps.append(Step(what, *shares(credited(lake, series), true_of, seconds, known),
                          time.perf_counter() - started))
        if report:
            report(steps[-1])
    return steps


def actions_to_reach(steps: list[Step], share: float, max_wrong: float = 1.0) -> int | None:
    """Actions until the right share first reaches ``share`` (None: never)."""
    for n, step in enumerate(steps):
        if step.right >= share and step.wrong <= max_wrong:
            return n
    return None
