"""Environment throughput: steps/s per id with random actions, resets included.

    python benchmarks/env_throughput.py [--steps 20000] [--ids gym_cards/Points24-v0 ...]

Single env (``gymnasium.make``, with its default wrappers) and ``gymnasium.make_vec`` with 2
async workers. The reference RL4VLM numbers were measured on this machine class (issue 2).
It also checks that the cached fast renderer gives the same pixels as a from-scratch render.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import vlm_envs
from vlm_envs.evaluation.card import format_table
from vlm_envs.core.registration import CARD_ENVS

REFERENCE_STEPS_PER_S = {
    "gym_cards/NumberLine-v0": 1477,
    "gym_cards/EZPoints-v0": 72,
    "gym_cards/Points24-v0": 79,
    "gym_cards/Blackjack-v0": 9,
}


def single_env_rate(env_id: str, steps: int, seed: int = 0) -> float:
    env = gym.make(env_id)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def vector_env_rate(env_id: str, steps: int, num_envs: int = 2, seed: int = 0) -> float:
    # shared_memory=False: gymnasium's shared memory corrupts Text observations (docs/vector.md).
    envs = gym.make_vec(env_id, num_envs, vectorization_mode="async", vector_kwargs={"shared_memory": False})
    envs.action_space.seed(seed)
    envs.reset(seed=seed)
    envs.step(envs.action_space.sample())  # start-up
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        envs.step(envs.action_space.sample())  # autoreset is built in
    rate = (steps // num_envs) * num_envs / (time.perf_counter() - start)
    envs.close()
    return rate


def renders_identical(env_id: str, episodes: int = 20) -> bool:
    """Frames from the cached renderer equal frames rendered after dropping every cache."""
    env = gym.make(env_id)
    env.action_space.seed(0)
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        done = False
        while not done:
            fresh = _uncached_frame(env.unwrapped)
            if not np.array_equal(obs["image"], fresh):
                return False
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    return True


def _uncached_frame(env) -> np.ndarray:
    from vlm_envs.core import rendering
    from vlm_envs.cards import drawing, number_line

    for cached in (drawing._procedural_card, rendering.font, rendering._glyph_mask, rendering.text_advance):
        cached.cache_clear()
    for cached in (drawing.card_sprite, number_line._layout):  # bounded in bytes (vlm_envs.core.caching)
        cached.cache.clear()
    for attr in ("_canvas", "_frame"):
        if hasattr(env, attr):
            setattr(env, attr, None)
    return env._render_frame()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20000, help="steps per measurement")
    parser.add_argument("--ids", nargs="*", default=list(CARD_ENVS))
    args = parser.parse_args()
    rows = []
    for env_id in args.ids:
        single = single_env_rate(env_id, args.steps)
        vec = vector_env_rate(env_id, args.steps)
        ref = REFERENCE_STEPS_PER_S.get(env_id)
        rows.append([
            env_id,
            f"{single:,.0f}",
            f"{vec:,.0f}",
            f"{ref:,}" if ref else "-",
            f"{single / ref:,.0f}x" if ref else "-",
            "yes" if renders_identical(env_id) else "NO",
        ])
    header = ["env", "single steps/s", "async x2 steps/s", "reference steps/s", "speed-up (single)", "identical images"]
    print(f"vlm_envs {vlm_envs.__version__}, {args.steps} random steps per measurement")
    print(format_table(rows, header))


if __name__ == "__main__":
    main()
