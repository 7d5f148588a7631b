"""Review effort: how many clicks a user who knows the truth needs to get a right screen-time table.

For each series (rendered here, then run end to end with ``anitrack run``), a simulated user corrects
the identity through the review app's own calls (``anitrack.identity.effort``): in the Characters
page's order, one click per action (name a cluster, give ticked tracklets to a character, mark noise,
name tracklets in the noise bin), re-identifying after each. After every action it prints the share of
the tracked screen time credited to the right name (every character the user knows) and the share of
the named tracked time that is wrong; then the actions needed to reach 80%, 90% and 95% right, and
actions per character on screen.

Series: ``cast`` (the synthetic series the tests use: 4 episodes, 6 characters, a look-alike pair) and
``drawings`` (real drawings of ``../shared/data/realart`` put on screen by ``anitrack synth --drawings``:
4 episodes of 40 s, a quarter of the characters left out of the gallery).

    python benchmarks/review_effort.py                 # both series
    python benchmarks/review_effort.py --series cast
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REALART = Path(__file__).resolve().parents[2] / "shared" / "data" / "realart"


def render(kind: str, out: Path) -> tuple[Path, Path]:
    """(the series folder, its reference gallery)."""
    from anitrack.synth import synthesize_series

    if kind == "cast":
        folder = synthesize_series(out, series="cast", episodes=4, characters=6, seconds=20, seed=5, lookalikes=1)
    else:
        made = subprocess.run([sys.executable, "-m", "anitrack", "synth", str(out), "--drawings", str(REALART),
                               "--series", "drawings", "--episodes", "4", "--seconds", "40", "--seed", "4"],
                              capture_output=True, text=True, check=True)
        folder = Path(made.stdout.strip().splitlines()[-1])
    return folder, folder.parent / "references"


def measure(kind: str, work: Path, max_actions: int) -> dict:
    from anitrack.config import load_config, resolve_profile
    from anitrack.identity import effort
    from anitrack.lake import Lake

    folder, references = render(kind, work / kind)
    series = folder.name
    lake = work / f"{kind}-lake"
    subprocess.run([sys.executable, "-m", "anitrack", "run", str(folder), "--lake", str(lake), "--series", series,
                    "--references", str(references)], capture_output=True, text=True, check=True)
    lk = Lake(str(lake), create=False)
    true_of, known = effort.known_truth(lk, series, folder)
    on_screen = {c for c in true_of.values() if c in known}
    config = resolve_profile(load_config(environ={}), "offline")
    print(f"\n== {kind}: {len(on_screen)} characters on screen, {len(true_of)} tracklets ==")
    print(f"{'action':>4}  {'right':>6}  {'wrong':>6}  {'re-id s':>7}  what")

    def show(step, n=[0]):
        print(f"{n[0]:>4}  {step.right:6.3f}  {step.wrong:6.3f}  {step.seconds:7.1f}  {step.action}", flush=True)
        n[0] += 1

    steps = effort.simulate(lk, series, config, true_of, known, max_actions=max_actions, report=show)
    reach = {share: effort.actions_to_reach(steps, share) for share in (0.8, 0.9, 0.95)}
    worst = max(s.wrong for s in steps[1:]) if len(steps) > 1 else steps[0].wrong
    for share, n in reach.items():
        per = f"{n / len(on_screen):.2f} per character" if n is not None else "not reached"
        print(f"{share:.0%} right after {n if n is not None else '-'} actions ({per})")
    print(f"wrong names: {steps[0].wrong:.3f} before, at most {worst:.3f} after any action, "
          f"{steps[-1].wrong:.3f} at the end; {len(steps) - 1} actions in all")
    return {"series": kind, "characters": len(on_screen), "reach": reach, "worst_wrong": worst,
            "start_right": steps[0].right, "end_right": steps[-1].right, "actions": len(steps) - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", choices=["cast", "drawings"], action="append")
    parser.add_argument("--max-actions", type=int, default=60)
    args = parser.parse_args()
    kinds = args.series or ["cast", "drawings"]
    if "drawings" in kinds and not (REALART / "manifest.json").is_file():
        sys.exit(f"review_effort: real art {REALART} is not available")
    print(f"machine: {platform.machine()}, {platform.python_version()}, offline profile")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            measure(kind, Path(tmp), args.max_actions)


if __name__ == "__main__":
    main()
