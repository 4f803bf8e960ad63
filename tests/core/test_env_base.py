"""The base class owns ``reset`` and ``step``: an env is its hooks, and every registered env plays through them."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.envs.registration import load_env_creator
from gymnasium.utils.env_checker import check_env

from tests.utils import ALL_SPECS
from vlm_envs.core import Transition, VLMEnv
from vlm_envs.core.labels import StateLabels


class Countdown(VLMEnv):
    """The smallest env: count down from a drawn number; action 1 counts, action 0 wastes a step."""

    prompt_task = "numberline"
    action_names = ("wait", "count")

    def __init__(self, fail_reset: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.action_space = spaces.Discrete(2)
        self.fail_reset = fail_reset
        self.left = 0

    def _start_episode(self, options: dict[str, Any]) -> dict[str, Any]:
        if self.fail_reset:
            raise ValueError("no episode today")
        self.left = int(self.np_random.integers(1, 4))
        return {"left": self.left}

    def _apply_action(self, action: int) -> Transition:
        self.left -= action
        return Transition(float(action), self.left == 0, False, {"left": self.left})

    def _render_frame(self) -> np.ndarray:
        return np.full((*self.image_size, 3), self.left, dtype=np.uint8)

    def _text(self) -> str:
        return str(self.left)

    def _describe(self) -> str:
        return f"{self.left} left"

    def oracle_action(self) -> int:
        return 1

    def _full_state(self) -> dict[str, Any]:
        return {"left": self.left}

    def _action_optimal(self, action: int, before: StateLabels) -> bool:
        return action == before.oracle_action


def test_an_env_is_its_hooks():
    """Hooks only: the base class gives a gymnasium env with checked actions, observations and labels."""
    env = Countdown(oracle_labels=True, image_size=(16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs["text"] == str(info["left"]) and obs["image"][0, 0, 0] == info["left"]
    assert info["oracle_action"] == 1 and len(info["state_key"]) == 64
    obs, reward, terminated, truncated, info = env.step(0)
    assert (reward, truncated, info["action_optimal"]) == (0.0, False, False)
    with pytest.raises(ValueError, match="not in Discrete"):
        env.step(2)
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(1)
    assert info["action_optimal"] and "oracle_action" not in info  # terminal: nothing left to do


def test_a_missing_hook_is_refused_at_construction():
    class NoStep(Countdown):
        _apply_action = VLMEnv._apply_action  # still abstract

    with pytest.raises(TypeError, match="_apply_action"):
        NoStep()


def test_a_failed_reset_leaves_nothing_to_step():
    env = Countdown()
    env.reset(seed=0)
    env.fail_reset = True
    with pytest.raises(ValueError, match="no episode"):
        env.reset(seed=1)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(1)


@pytest.mark.parametrize("env_id", [spec.id for spec in ALL_SPECS])
def test_every_registered_env_resets_and_steps_through_the_base_class(env_id):
    """No env re-assembles validation, labels, observation and rendering: ``reset`` and ``step`` are VLMEnv's."""
    env_class = load_env_creator(gym.spec(env_id).entry_point)
    assert issubclass(env_class, VLMEnv)
    assert (env_class.reset, env_class.step, env_class._validate_action) == (VLMEnv.reset, VLMEnv.step,
                                                                              VLMEnv._validate_action)
