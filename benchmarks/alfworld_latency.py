"""Reset and step latency of the ALFWorld env on the shipped games (a benchmark, not a test).

::

    python benchmarks/alfworld_latency.py                # markdown table on stdout
    python benchmarks/alfworld_latency.py --csv out.csv  # and a CSV

Measured on the shipped evaluation games, then on the shipped train games with at least
``--min-receptacles`` receptacles (the paper's rooms have about 10-30):

* ``eval game, first reset on a new machine``: a shipped evaluation game, its grammar parse and
  translation read from the package (an empty disk cache, nothing of the game in memory), in a
  process that has loaded the libraries (by resetting a train game);
* ``eval game, first reset of a new process``: the same, as the first reset a process makes
  (the planner library's one-time setup included; textworld is imported when the env is made,
  before the timing; one process per game);
* ``reset, first time``: fast-downward translates the PDDL problem (an empty disk cache);
* ``reset, new to the process``: the translation comes from the on-disk cache;
* ``reset, played before``: the translation is in memory;
* ``step``: one step with a random admissible command written as model output (matching,
  engine, goal progress, schematic image);
* ``make_vec async``: ``gym.make_vec(..., vectorization_mode="async")`` with
  ``shared_memory=False``, stepping random admissible commands, autoresets included.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("ALFWORLD_DATA", os.path.join(tempfile.gettempdir(), "vlm_envs_alfworld_data"))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import vlm_envs  # noqa: E402,F401
from vlm_envs.alfworld_wrap import register_envs  # noqa: E402
from vlm_envs.alfworld_wrap.env import ALFWorldEnv  # noqa: E402

register_envs()


def _ms(values):
    values = sorted(values)
    return {
        "median_ms": 1000 * statistics.median(values),
        "p90_ms": 1000 * values[math.ceil(0.9 * len(values)) - 1],  # nearest rank: never below the median
        "n": len(values),
    }


def _receptacles(game) -> int:
    with open(os.path.join(os.path.dirname(game.game_file), "traj_data.json")) as f:
        return json.load(f)["num_receptacles"]


def shipped_eval_first_reset(seed: int) -> list[dict]:
    """The first reset of every shipped evaluation game, as on a machine that never played it."""
    from vlm_envs.alfworld_wrap import engine

    rows = []
    ALFWorldEnv(split="train").reset(seed=seed)  # loads the libraries; nothing of an evaluation game
    for split in ("eval_in_distribution", "eval_out_of_distribution"):
        os.environ["VLM_ENVS_CACHE"] = tempfile.mkdtemp(prefix="vlm_envs_bench_cache_")  # an empty disk cache
        engine._LOGIC_CACHE.clear()
        engine._SAS_CACHE.clear()
        env = ALFWorldEnv(split=split)
        times = []
        for i in range(len(env.games)):
            t = time.perf_counter()
            env.reset(seed=seed + i, options={"game_index": i})
            times.append(time.perf_counter() - t)
        rooms = sorted(_receptacles(g) for g in env.games)
        rows.append({"setting": "single env", "what": f"{split} game, first reset on a new machine (shipped translation)",
                     "games": f"{len(env.games)} games, {rooms[0]}-{rooms[-1]} receptacles", **_ms(times)})
    return rows


_FIRST_RESET_OF_A_PROCESS = """
import os, sys, tempfile, time
os.environ["VLM_ENVS_CACHE"] = tempfile.mkdtemp(prefix="vlm_envs_bench_cache_")
from vlm_envs.alfworld_wrap.env import ALFWorldEnv
env = ALFWorldEnv(split=sys.argv[1])
t = time.perf_counter()
env.reset(seed=0, options={"game_index": int(sys.argv[2])})
print(time.perf_counter() - t)
"""


def new_process_first_reset(games: int) -> list[dict]:
    """The first reset a fresh process makes, of ``games`` evaluation games spread over the split."""
    import subprocess

    times = []
    for split in ("eval_in_distribution", "eval_out_of_distribution"):
        total = len(ALFWorldEnv(split=split).games)
        for i in range(0, total, max(1, total // games)):
            out = subprocess.run([sys.executable, "-c", _FIRST_RESET_OF_A_PROCESS, split, str(i)],
                                 capture_output=True, text=True, check=True).stdout
            times.append(float(out.split()[-1]))
    return [{"setting": "single env", "what": "evaluation game, first reset of a new process (library loading included)",
             "games": f"{len(times)} games, both splits", **_ms(times)}]


def single_env(min_receptacles: int, steps_per_game: int, seed: int) -> list[dict]:
    games = list(ALFWorldEnv(split="train", game_dir=str(vlm_envs.alfworld_wrap.shipped_games_dir())).games)
    sizes = {g.game_file: _receptacles(g) for g in games}
    games = [g for g in games if sizes[g.game_file] >= min_receptacles]
    from vlm_envs.alfworld_wrap import engine

    os.environ["VLM_ENVS_CACHE"] = tempfile.mkdtemp(prefix="vlm_envs_bench_cache_")  # an empty disk cache
    env = ALFWorldEnv(game_files=[g.game_file for g in games])
    rng = np.random.default_rng(seed)
    cold, disk, warm, steps = [], [], [], []
    for i in range(len(games)):
        t = time.perf_counter()
        obs, info = env.reset(seed=seed + i, options={"game_index": i})
        cold.append(time.perf_counter() - t)
        for _ in range(steps_per_game):
            command = info["admissible_commands"][int(rng.integers(len(info["admissible_commands"])))]
            t = time.perf_counter()
            obs, _, term, trunc, info = env.step(json.dumps({"action": command}))
            steps.append(time.perf_counter() - t)
            if term or trunc:
                env.reset(options={"game_index": i})
    engine._SAS_CACHE.clear()  # as in a new process: only the disk cache is left
    for i in range(len(games)):
        t = time.perf_counter()
        env.reset(seed=seed + i, options={"game_index": i})
        disk.append(time.perf_counter() - t)
    for i in range(len(games)):
        env.reset(options={"game_index": (i + 1) % len(games)})  # switch game, then come back
        t = time.perf_counter()
        env.reset(seed=seed + i, options={"game_index": i})
        warm.append(time.perf_counter() - t)
    rooms = sorted(sizes[g.game_file] for g in games)
    label = f"{len(games)} games, {rooms[0]}-{rooms[-1]} receptacles"
    return [
        {"setting": "single env", "what": "reset, first time a game is ever loaded (PDDL translation)", "games": label, **_ms(cold)},
        {"setting": "single env", "what": "reset, game new to the process (disk cache)", "games": label, **_ms(disk)},
        {"setting": "single env", "what": "reset, game played before in the process", "games": label, **_ms(warm)},
        {"setting": "single env", "what": "step (random admissible command)", "games": label, **_ms(steps)},
    ]


def vector_env(num_envs: int, steps: int, seed: int) -> list[dict]:
    envs = gym.make_vec("alfworld/ALFWorld-v0", num_envs=num_envs, vectorization_mode="async",
                        vector_kwargs={"shared_memory": False})
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    obs, info = envs.reset(seed=seed)
    reset_s = time.perf_counter() - t
    latencies = []
    start = time.perf_counter()
    for _ in range(steps):
        commands = info["admissible_commands"]
        actions = [json.dumps({"action": c[int(rng.integers(len(c)))]}) for c in commands]
        t = time.perf_counter()
        obs, _, _, _, info = envs.step(actions)
        latencies.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    envs.close()
    label = f"{num_envs} async workers, all shipped train games"
    return [
        {"setting": f"make_vec async x{num_envs}", "what": "reset (all workers, cold)", "games": label,
         "median_ms": 1000 * reset_s, "p90_ms": 1000 * reset_s, "n": 1},
        {"setting": f"make_vec async x{num_envs}", "what": "step (all workers; autoresets included)", "games": label,
         **_ms(latencies), "env_steps_per_s": num_envs * steps / total},
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-receptacles", type=int, default=10)
    parser.add_argument("--steps-per-game", type=int, default=30)
    parser.add_argument("--vec-envs", type=int, default=2)
    parser.add_argument("--vec-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--new-process-games", type=int, default=10, help="per evaluation split")
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    rows = shipped_eval_first_reset(args.seed) + new_process_first_reset(args.new_process_games)
    rows += single_env(args.min_receptacles, args.steps_per_game, args.seed)
    rows += vector_env(args.vec_envs, args.vec_steps, args.seed)
    print("| setting | measured | games | median (ms) | p90 (ms) | n | env steps/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        sps = f"{r['env_steps_per_s']:.0f}" if "env_steps_per_s" in r else ""
        print(f"| {r['setting']} | {r['what']} | {r['games']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['n']} | {sps} |")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["setting", "what", "games", "median_ms", "p90_ms", "n", "env_steps_per_s"])
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
