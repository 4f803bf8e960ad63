"""What ``oracle_labels=True`` costs a step, per env id (a benchmark, not a test).

    python benchmarks/oracle_labels_cost.py [--steps 3000] [--repeats 5] [--ids alfworld/ALFWorld-v0 ...]

Each id plays seeded random actions (ALFWorld: random admissible commands, one game) with labels
off and on, alternating, ``--repeats`` times after a warm-up, each repeat on a new seed (so the
point games' completion search meets new hands, as in an evaluation, with cold caches); the table gives the
fastest time per step of each (resets included: the fastest run is the one other jobs on the
machine disturbed least). A separate short run checks that labels change nothing but ``info``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import data_equivalence

import vlm_envs
from vlm_envs.evaluation.card import format_table
from vlm_envs.core.labels import LABEL_KEYS
from vlm_envs.core.registration import registered_ids


def play(env_id: str, steps: int, labels: bool, seed: int = 0, record: bool = False) -> tuple[float, list]:
    """Seconds per step, and (with ``record``) every step's result without the label keys."""
    text_actions = env_id.startswith("alfworld")
    env = gym.make(env_id, oracle_labels=labels)
    rng = np.random.default_rng(seed)
    options = {"game_index": 0} if text_actions else None
    trajectory = []
    start = time.perf_counter()
    _, info = env.reset(seed=seed, options=options)
    for _ in range(steps):
        if text_actions:
            commands = info["admissible_commands"]
            action = json.dumps({"action": commands[int(rng.integers(len(commands)))]})
        else:
            action = int(rng.integers(env.action_space.n))
        obs, reward, terminated, truncated, info = env.step(action)
        if record:
            trajectory.append((obs, reward, terminated, truncated, {k: v for k, v in info.items() if k not in LABEL_KEYS}))
        if terminated or truncated:
            _, info = env.reset(options=options)
    seconds = (time.perf_counter() - start) / steps
    env.close()
    return seconds, trajectory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="steps per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ids", nargs="*", default=None, help="default: the card games, and ALFWorld if its extra is installed")
    args = parser.parse_args()
    ids = args.ids or [i for i in registered_ids() if i.startswith("gym_cards/")]
    if args.ids is None and importlib.util.find_spec("textworld") is not None:
        ids.append("alfworld/ALFWorld-v0")
    rows = []
    for env_id in ids:
        same = data_equivalence(*(play(env_id, 300, labels, record=True)[1] for labels in (False, True)))  # also the warm-up
        times: dict[bool, list[float]] = {False: [], True: []}
        for repeat in range(args.repeats):
            for labels in (False, True):  # a new seed per repeat: new hands, so the solver's caches start cold
                times[labels].append(play(env_id, args.steps, labels, seed=1 + repeat)[0])
        off, on = min(times[False]), min(times[True])
        rows.append([env_id, f"{1e3 * off:.3f}", f"{1e3 * on:.3f}", f"{1e3 * (on - off):+.3f}", f"{on / off:.2f}x",
                     "yes" if same else "NO"])
    header = ["env", "ms/step, labels off", "ms/step, labels on", "difference", "ratio", "same game"]
    print(f"vlm_envs {vlm_envs.__version__}, {args.steps} random steps, fastest of {args.repeats}")
    print(format_table(rows, header))


if __name__ == "__main__":
    main()
