"""Play a scripted policy through the text interface and report the paper's metrics.

``python -m vlm_envs evaluate --env gym_cards/Points24-v0 --policy oracle --episodes 100 --seed 0``

The policy's action is written as model text (``{"action": "8"}``) and goes through
:class:`vlm_envs.TextActions`, so the whole path a VLM's output takes is exercised.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image

from vlm_envs.wrappers import TextActions

POLICIES = ("oracle", "random")


@dataclass
class EvalResult:
    env_id: str
    policy: str
    episodes: int
    successes: int
    total_return: float
    total_steps: int
    parse_failures: int
    seconds: float

    def row(self) -> list[str]:
        return [
            self.env_id,
            self.policy,
            str(self.episodes),
            f"{100 * self.successes / self.episodes:.1f}",
            f"{self.total_return / self.episodes:.3f}",
            f"{self.total_steps / self.episodes:.2f}",
            str(self.parse_failures),
            f"{self.total_steps / max(self.seconds, 1e-9):.0f}",
        ]


HEADER = ["env", "policy", "episodes", "success %", "mean return", "mean length", "parse failures", "steps/s"]


def policy_text(env: gym.Env, policy: str, rng: np.random.Generator, info: dict) -> str:
    """The policy's next action written as model output."""
    base = env.unwrapped
    if policy == "oracle":
        action = base.oracle_action()
    elif isinstance(base.action_space, spaces.Discrete):
        action = int(rng.integers(base.action_space.n))
    else:
        commands = info["admissible_commands"]
        action = commands[int(rng.integers(len(commands)))]
    name = base.action_names[action] if isinstance(action, int) else action
    return json.dumps({"action": name})


def evaluate(
    env_id: str,
    policy: str = "oracle",
    episodes: int = 100,
    seed: int = 0,
    save_frames: str | None = None,
    progress: bool = True,
) -> EvalResult:
    """Run ``episodes`` episodes with seeds ``seed, seed + 1, ...``; optionally save PNG frames of the first."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if episodes < 1:
        raise ValueError(f"episodes must be positive, got {episodes}")
    env = TextActions(gym.make(env_id))
    rng = np.random.default_rng(seed)
    result = EvalResult(env_id, policy, episodes, 0, 0.0, 0, 0, 0.0)
    start = time.perf_counter()
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        frames = [obs["image"]]
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy_text(env, policy, rng, info))
            result.total_return += float(reward)
            result.total_steps += 1
            result.parse_failures += not info["parse_ok"]
            frames.append(obs["image"])
            done = terminated or truncated
        result.successes += bool(info["success"])
        if save_frames and episode == 0:
            _save_frames(frames, Path(save_frames), env_id)
        if progress:
            _progress(env_id, episode + 1, episodes)
    result.seconds = time.perf_counter() - start
    env.close()
    return result


def _save_frames(frames: list[np.ndarray], folder: Path, env_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stem = env_id.replace("/", "_")
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{stem}_step{i:03d}.png")


def _progress(label: str, done: int, total: int, width: int = 30) -> None:
    filled = width * done // total
    sys.stderr.write(f"\r{label:<28} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def format_table(rows: list[list[str]], header: list[str] = HEADER) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
