"""What the env caches hold after many distinct image sizes and targets, against their byte budgets.

    python benchmarks/cache_memory.py [--sizes 1000] [--targets 1000] [--max-side 2048]

An env server builds envs with whatever sizes and targets its clients send. Each size renders a
NumberLine and a Blackjack frame; each Points24 target is reset and stepped with oracle labels
on (the solver's and the completion search's caches). The table gives
each named cache (vlm_envs.core.caching) and the process's resident memory before and after.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np

from vlm_envs.core.caching import cache_budgets, cache_bytes
from vlm_envs.cards import BlackjackEnv, NumberLineEnv, Points24Env
from vlm_envs.evaluation.card import format_table

MiB = 2**20


def rss() -> int:
    """Resident memory of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, default=1000, help="distinct image sizes")
    parser.add_argument("--targets", type=int, default=1000, help="distinct Points24 targets")
    parser.add_argument("--max-side", type=int, default=2048, help="largest image side drawn")
    args = parser.parse_args()
    gc.collect()
    start_rss, start = rss(), time.perf_counter()
    rng = np.random.default_rng(0)
    sizes: set[tuple[int, int]] = set()
    while len(sizes) < args.sizes:
        sizes.add(tuple(int(v) for v in rng.integers(16, args.max_side + 1, size=2)))
    for i, size in enumerate(sorted(sizes)):
        NumberLineEnv(image_size=size).reset(seed=i)
        BlackjackEnv(image_size=size).reset(seed=i)
    targets = sorted(Points24Env.reachable_targets())
    for i, target in enumerate(targets[:: max(1, len(targets) // args.targets)][: args.targets]):
        env = Points24Env(target_points=target, oracle_labels=True, image_size=(64, 64))
        env.reset(seed=i)
        env.step(0)
    gc.collect()
    held, budgets = cache_bytes(), cache_budgets()
    rows = [[name, f"{held[name] / MiB:.1f}", f"{budgets[name] / MiB:.1f}"] for name in sorted(held)]
    rows.append(["all caches", f"{sum(held.values()) / MiB:.1f}", f"{sum(budgets.values()) / MiB:.1f}"])
    print(f"{args.sizes} image sizes (sides 16..{args.max_side}), {args.targets} Points24 targets with oracle labels; "
          f"{time.perf_counter() - start:.0f} s")
    print(format_table(rows, ["cache", "holds MiB", "budget MiB"]))
    print(f"resident memory: {start_rss / MiB:.0f} MiB before, {rss() / MiB:.0f} MiB after")


if __name__ == "__main__":
    main()
