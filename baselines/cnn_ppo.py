"""The paper's CNN+RL row: stable-baselines3 PPO with a CNN policy on the image observation.

```bash
pip install -e ".[sb3]"
python -m baselines.cnn_ppo --env gym_cards/NumberLine-v0            # one env, seed 0, 15k steps
python -m baselines.cnn_ppo --env all --seeds 0 1 2 --out docs/cnn_ppo  # the committed results
```

What the agent sees: :class:`ImageObservation` keeps ``obs["image"]`` (the formula of the point
games and every number of NumberLine/Blackjack are drawn in it) and resizes it to 84x84, the
Atari convention SB3's ``NatureCNN`` was designed for. ``obs["text"]`` is dropped: a CNN policy
reads pixels only, as the paper's baseline. Nothing of SB3 is forked or patched.

What is reported (the paper's metric): ``info["success"]`` of every finished
training episode, as a rolling success rate over the last ``--window`` episodes (200; 1000 for
Blackjack, as the reference). The paper's table reports the **peak** of that curve within the
budget; we print the peak and the final value. Independently, every ``--eval-every`` steps the
greedy policy (``deterministic=True``) plays ``--eval-episodes`` held-out episodes reset with the
fixed seeds ``100_000 + i`` (``vlm_envs.evaluation.seeds.HELD_OUT_SEED``), which no training episode uses.

Outputs under ``--out``: ``<Env>_seed<S>_episodes.csv`` (one row per training episode),
``<Env>_seed<S>_eval.csv`` (one row per greedy evaluation), ``curves.png`` (every run found in the
folder) and ``summary.md`` (the table, mean over seeds).
"""

from __future__ import annotations

import csv
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image

import vlm_envs  # noqa: F401  (registers the ids)
from vlm_envs.optional import require
from vlm_envs.core.registration import CARD_ENVS
from vlm_envs.evaluation.seeds import HELD_OUT_SEED

PAPER_CNN_RL = {"NumberLine": 87.1, "EZPoints": 0.0, "Points24": 0.0, "Blackjack": 38.8}


class ImageObservation(gym.ObservationWrapper):
    """Keep only ``obs["image"]``, resized to ``size x size`` (bilinear), for CNN policies.

    ``ImageObservation(gym.make("gym_cards/NumberLine-v0"))`` has the observation space
    ``Box(0, 255, (84, 84, 3), uint8)``: what SB3's ``CnnPolicy`` expects (it transposes to
    channel-first itself). For speed, card envs can render at the target size directly
    (``gym.make(id, image_size=(84, 84))``); the wrapper then only picks the key.
    """

    def __init__(self, env: gym.Env, size: int = 84):
        super().__init__(env)
        if not isinstance(env.observation_space, spaces.Dict) or "image" not in env.observation_space.spaces:
            raise TypeError(f"ImageObservation needs a Dict observation with an 'image' key, got {env.observation_space}")
        self.size = int(size)
        self.observation_space = spaces.Box(0, 255, (self.size, self.size, 3), dtype=np.uint8)

    def observation(self, observation: dict) -> np.ndarray:
        image = observation["image"]
        if image.shape[:2] != (self.size, self.size):
            resized = Image.fromarray(image).resize((self.size, self.size), Image.Resampling.BILINEAR)
            image = np.asarray(resized, dtype=np.uint8)
        return image


def make_env(env_id: str, size: int = 84, **env_kwargs) -> gym.Env:
    """One image-only env; card envs render at ``size`` directly."""
    if env_id in CARD_ENVS:
        env_kwargs.setdefault("image_size", (size, size))
    return ImageObservation(gym.make(env_id, **env_kwargs), size)


@dataclass
class Config:
    env: str = "gym_cards/NumberLine-v0"
    """environment id, or 'all' for the four card games (run one after another)"""
    seeds: list[int] = field(default_factory=lambda: [0])
    """one training run per seed (python, numpy, torch, env resets)"""
    total_timesteps: int = 15_000
    """environment steps per run (the paper's gym_cards budget is about 15k)"""
    image_size: int = 84
    """the CNN's input is image_size x image_size x 3"""
    num_envs: int = 4
    """parallel envs (SB3 DummyVecEnv)"""
    n_steps: int = 128
    """steps per env per PPO rollout (rollout = num_envs * n_steps)"""
    batch_size: int = 64
    """PPO minibatch size (SB3's default)"""
    n_epochs: int = 10
    """PPO epochs per rollout (SB3's default; 4 learned nothing on NumberLine within 15k steps)"""
    learning_rate: float = 3e-4
    """Adam learning rate (SB3's default)"""
    gamma: float = 0.99
    """discount"""
    ent_coef: float = 0.01
    """entropy bonus"""
    clip_range: float = 0.2
    """PPO clip (SB3's default)"""
    window: int = 0
    """rolling window of training episodes for the success rate; 0: 200, or 1000 for Blackjack (the reference)"""
    eval_every: int = 2_500
    """greedy held-out evaluation every this many env steps (and at the end)"""
    eval_episodes: int = 200
    """held-out episodes per evaluation, reset with seeds 100000 + i"""
    threads: int = 1
    """torch CPU threads"""
    out: str = "docs/cnn_ppo"
    """folder for the CSVs, curves.png and summary.md"""


def parse_args(argv: list[str] | None = None) -> Config:
    """Every Config field is a flag (``--total-timesteps``); its docstring is the help text."""
    import sys

    from baselines.cli import parse_config

    return parse_config(Config, sys.argv[1:] if argv is None else argv, prog="python -m baselines.cnn_ppo",
                        description=__doc__.split("\n\n")[0])


def short_name(env_id: str) -> str:
    return env_id.split("/")[-1].removesuffix("-v0")


def _require_sb3():
    for module in ("stable_baselines3", "torch"):
        require(module, "sb3", "the CNN baseline")


def evaluate_greedy(model, env_id: str, episodes: int, size: int = 84) -> float:
    """Success rate (%) of the greedy policy over held-out seeds ``100000 .. 100000 + episodes - 1``."""
    env = make_env(env_id, size)
    successes = 0
    for i in range(episodes):
        obs, info = env.reset(seed=HELD_OUT_SEED + i)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, terminated, truncated, info = env.step(int(action))
            done = terminated or truncated
        successes += bool(info["success"])
    env.close()
    return 100.0 * successes / episodes


def train(cfg: Config, env_id: str, seed: int) -> dict:
    """One SB3 PPO run; writes the two CSVs and returns the summary row."""
    _require_sb3()
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(cfg.threads)
    name = short_name(env_id)
    window = cfg.window or (1000 if name == "Blackjack" else 200)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    # make_vec_env seeds env i with seed + i at the first reset and wraps each in a Monitor, which
    # copies info["success"] into the episode record ("info_keywords").
    envs = make_vec_env(
        lambda: make_env(env_id, cfg.image_size),
        n_envs=cfg.num_envs,
        seed=seed,
        monitor_kwargs={"info_keywords": ("success",)},
    )
    model = PPO(
        "CnnPolicy", envs, n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.n_epochs,
        learning_rate=cfg.learning_rate, gamma=cfg.gamma, ent_coef=cfg.ent_coef, clip_range=cfg.clip_range,
        seed=seed, device="cpu", verbose=0,
    )

    episodes: list[tuple] = []
    evals: list[tuple] = []
    recent: deque[bool] = deque(maxlen=window)
    start = time.perf_counter()

    class Recorder(BaseCallback):
        """Collects every finished episode and runs the greedy evaluations."""

        next_eval = 0

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    ep = info["episode"]
                    recent.append(bool(ep["success"]))
                    episodes.append((self.num_timesteps, len(episodes), round(float(ep["r"]), 3), ep["l"],
                                     int(ep["success"]), round(100.0 * float(np.mean(recent)), 2)))
            if self.num_timesteps >= self.next_eval:
                self._evaluate()
            return True

        def _evaluate(self) -> None:
            success = evaluate_greedy(self.model, env_id, cfg.eval_episodes, cfg.image_size)
            evals.append((self.num_timesteps, success))
            rolling = 100.0 * np.mean(recent) if recent else float("nan")
            sps = self.num_timesteps / max(time.perf_counter() - start, 1e-9)
            print(f"{name} seed {seed} step {self.num_timesteps:>6}: greedy held-out {success:5.1f}%  "
                  f"rolling({window}) {rolling:5.1f}%  episodes {len(episodes)}  {sps:.0f} steps/s", flush=True)
            self.next_eval += cfg.eval_every

        def _on_training_end(self) -> None:
            if not evals or evals[-1][0] != self.num_timesteps:
                self._evaluate()

    model.learn(total_timesteps=cfg.total_timesteps, callback=Recorder())
    envs.close()

    stem = f"{name}_seed{seed}"
    _write_csv(out / f"{stem}_episodes.csv", ["timestep", "episode", "return", "length", "success", "rolling_success"], episodes)
    _write_csv(out / f"{stem}_eval.csv", ["timestep", "greedy_success"], evals)
    rolling = [row[-1] for row in episodes]
    return {
        "env": name, "seed": seed, "steps": model.num_timesteps, "episodes": len(episodes),
        "peak_rolling": max(rolling[window - 1:] or rolling[-1:] or [0.0]), "final_rolling": rolling[-1] if rolling else 0.0,
        "final_greedy": evals[-1][1], "seconds": time.perf_counter() - start,
    }


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in (rows[0] if rows else {})}


def summarize(out: str | Path) -> str:
    """Write ``summary.md`` and ``curves.png`` from every run's CSVs in ``out``; return the table.

    Peak rolling success (the paper's metric) counts only once the window is full, so an early
    lucky streak of a few episodes cannot set it.
    """
    out = Path(out)
    runs: dict[str, list[tuple[int, dict, dict]]] = {}
    for path in sorted(out.glob("*_seed*_episodes.csv")):
        name, seed = path.name.removesuffix("_episodes.csv").rsplit("_seed", 1)
        runs.setdefault(name, []).append((int(seed), _read_csv(path), _read_csv(path.with_name(f"{name}_seed{seed}_eval.csv"))))
    order = [n for n in PAPER_CNN_RL if n in runs] + sorted(set(runs) - set(PAPER_CNN_RL))
    lines = [
        "| env | paper CNN+RL | ours: peak rolling success | ours: final rolling success | ours: greedy held-out (final) | seeds | env steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in order:
        window = 1000 if name == "Blackjack" else 200
        peaks, finals, greedy, steps = [], [], [], []
        for _, ep, ev in runs[name]:
            rolling = ep.get("rolling_success", np.zeros(0))
            peaks.append(rolling[window - 1:].max() if len(rolling) >= window else (rolling[-1] if len(rolling) else 0.0))
            finals.append(rolling[-1] if len(rolling) else 0.0)
            greedy.append(ev["greedy_success"][-1])
            steps.append(int(ev["timestep"][-1]))
        # Mean (min-max): with a handful of seeds the range says more than a standard deviation.
        fmt = lambda v: f"{np.mean(v):.1f} ({np.min(v):.1f}-{np.max(v):.1f})" if len(v) > 1 else f"{v[0]:.1f}"  # noqa: E731
        paper = PAPER_CNN_RL.get(name)
        lines.append(f"| {name} | {'–' if paper is None else paper} | {fmt(peaks)} | {fmt(finals)} | {fmt(greedy)} | "
                     f"{len(runs[name])} | {max(steps)} |")
    table = "\n".join(lines)
    (out / "summary.md").write_text(
        "# CNN+RL (SB3 PPO, CnnPolicy, 84x84 image only)\n\n"
        "Generated by `python -m baselines.cnn_ppo`; mean (min-max) over seeds. Rolling success: last 200 training "
        "episodes (1000 for Blackjack), peak taken once the window is full. Greedy: 200 held-out seeded episodes.\n\n"
        + table + "\n"
    )
    _plot(runs, order, out / "curves.png")
    return table


def _plot(runs: dict, order: list[str], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib is not installed (pip install "vlm-envs[sb3]"); skipping curves.png', file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(order), figsize=(4 * len(order), 3.4), squeeze=False)
    for ax, name in zip(axes[0], order):
        window = 1000 if name == "Blackjack" else 200
        for i, (seed, ep, ev) in enumerate(sorted(runs[name], key=lambda r: r[0])):
            color = f"C{i}"
            full = ep["episode"] >= window - 1 if len(ep.get("episode", [])) else []  # once the window is full
            if np.any(full):
                ax.plot(ep["timestep"][full], ep["rolling_success"][full], color=color,
                        label=f"seed {seed}: training episodes (rolling)")
            ax.plot(ev["timestep"], ev["greedy_success"], "o--", color=color, ms=3, alpha=0.7, label=f"seed {seed}: greedy, 200 held-out seeds")
        if name in PAPER_CNN_RL:
            ax.axhline(PAPER_CNN_RL[name], color="k", ls=":", label="paper CNN+RL")
        ax.set(title=f"{name}: rolling over {window} episodes", xlabel="env steps", ylabel="success %", ylim=(-2, 102))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("CNN+RL (SB3 PPO, CnnPolicy, 84x84 image only): success rate", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    env_ids = list(CARD_ENVS) if cfg.env == "all" else [cfg.env]
    for env_id in env_ids:
        if env_id not in gym.registry:
            raise SystemExit(f"unknown env id {env_id!r}; registered by vlm_envs: {', '.join(CARD_ENVS)}")
    _require_sb3()
    for seed in cfg.seeds:  # seed-major: every env gets its first run before any gets a second
        for env_id in env_ids:
            row = train(cfg, env_id, seed)
            print(f"done {row['env']} seed {seed}: peak rolling {row['peak_rolling']:.1f}%, final rolling "
                  f"{row['final_rolling']:.1f}%, greedy {row['final_greedy']:.1f}% ({row['seconds']:.0f} s)", flush=True)
            summarize(cfg.out)
    print(summarize(cfg.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
