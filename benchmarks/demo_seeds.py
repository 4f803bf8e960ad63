"""The README's main job over several seeds: held-out greedy success before and after PPO.

``python benchmarks/demo_seeds.py --seeds 1 2 3 --out runs/demo_seeds``

Runs ``python -m baselines.vlm_ppo demo --seed S --output-dir OUT/seed_S`` for each seed (one
after another; each takes ~12 min on an idle 2-core CPU, more under load, since PPO stops at the
preset's 11-minute limit) and prints, per seed and as mean (min-max), the greedy success over
every NumberLine start state at the SFT start, after 10 updates, at the best evaluation and at
the end, plus whether the curve was stable (once at 0.90, no later evaluation more than 0.10
below the running best). ``--summarize`` only reads existing run folders.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

KEY = "eval/greedy_start_success"


def curve(run: Path) -> list[tuple[int, float]]:
    with open(run / "metrics.csv") as f:
        return [(int(r["update"]), float(r[KEY])) for r in csv.DictReader(f) if r.get(KEY)]


def stable(points: list[tuple[int, float]], reach: float = 0.90, drop: float = 0.10) -> bool:
    best, reached = 0.0, False
    for _, v in points:
        if reached and v < best - drop:
            return False
        best = max(best, v)
        reached = reached or v >= reach
    return reached


def summarize(runs: list[Path]) -> None:
    rows = []
    for run in runs:
        pts = curve(run)
        after10 = next((v for u, v in pts if u >= 9), float("nan"))
        rows.append((run.name, pts[0][1], after10, max(v for _, v in pts), pts[-1][1], pts[-1][0] + 1, stable(pts)))
    print("| run | SFT start | after 10 updates | best | end | updates | stable |")
    print("|---|---|---|---|---|---|---|")
    for name, start, a10, best, end, n, ok in rows:
        print(f"| {name} | {start:.2f} | {a10:.2f} | {best:.2f} | {end:.2f} | {n} | {'yes' if ok else 'no'} |")
    cols = list(zip(*rows))
    fmt = lambda xs: f"{sum(xs) / len(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"  # noqa: E731
    print(f"| mean (min-max) | {fmt(cols[1])} | {fmt(cols[2])} | {fmt(cols[3])} | {fmt(cols[4])} | | "
          f"{sum(cols[6])}/{len(rows)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default="runs/demo_seeds")
    parser.add_argument("--summarize", nargs="*", metavar="RUN_DIR", help="only summarise these finished runs")
    args = parser.parse_args()
    if args.summarize:
        summarize([Path(p) for p in args.summarize])
        return
    runs = []
    for seed in args.seeds:
        run = Path(args.out) / f"seed_{seed}"
        subprocess.run([sys.executable, "-m", "baselines.vlm_ppo", "demo", "--seed", str(seed), "--output-dir", str(run)],
                       check=True)
        runs.append(run)
    summarize(runs)


if __name__ == "__main__":
    main()
