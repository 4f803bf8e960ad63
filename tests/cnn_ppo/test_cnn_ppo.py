"""baselines.cnn_ppo: the image-only wrapper passes SB3's env checker, and a short run writes its results."""

from __future__ import annotations

import csv
import sys

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env

from baselines.cnn_ppo import ImageObservation, main, make_env
from tests.utils import CARD_SPECS


@pytest.mark.parametrize("env_id", [s.id for s in CARD_SPECS])
def test_image_wrapper_passes_sb3_check_env(env_id):
    env = make_env(env_id, 84)
    check_env(env, warn=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (84, 84, 3) and obs.dtype == np.uint8


def test_wrapper_resizes_when_the_env_renders_another_size():
    env = ImageObservation(gym.make("gym_cards/Blackjack-v0"), size=48)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (48, 48, 3) and env.observation_space.contains(obs)
    with pytest.raises(TypeError, match="Dict observation"):
        ImageObservation(gym.make("CartPole-v1"))


def test_short_learn_run_writes_csvs_curves_and_summary(tmp_path):
    main(["--env", "gym_cards/NumberLine-v0", "--total-timesteps", "256", "--num-envs", "2", "--n-steps", "64",
          "--n-epochs", "1", "--eval-every", "128", "--eval-episodes", "4", "--out", str(tmp_path)])
    with open(tmp_path / "NumberLine_seed0_episodes.csv") as f:
        episodes = list(csv.DictReader(f))
    with open(tmp_path / "NumberLine_seed0_eval.csv") as f:
        evals = list(csv.DictReader(f))
    assert len(episodes) > 10 and {r["success"] for r in episodes} <= {"0", "1"}
    assert [int(r["timestep"]) for r in evals][-1] == 256 and len(evals) >= 3
    assert all(0 <= float(r["greedy_success"]) <= 100 for r in evals)
    assert "| NumberLine | 87.1 |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_missing_sb3_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    with pytest.raises(gym.error.DependencyNotInstalled, match=r"vlm-envs\[sb3\]"):
        main(["--env", "gym_cards/NumberLine-v0", "--total-timesteps", "8"])
