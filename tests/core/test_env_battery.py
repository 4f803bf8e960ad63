"""The battery every registered id gets by being registered (gymnasium's own test pattern)."""

from __future__ import annotations

import copy
import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

from tests.utils import AVAILABLE_SPECS, CARD_SPECS

IDS = [spec.id for spec in AVAILABLE_SPECS]


def test_all_card_ids_registered():
    assert {s.id for s in CARD_SPECS} == {
        "gym_cards/NumberLine-v0",
        "gym_cards/EZPoints-v0",
        "gym_cards/Points24-v0",
        "gym_cards/Blackjack-v0",
    }
    assert all(s.max_episode_steps == 300 for s in CARD_SPECS)


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_passes_without_warnings(env_id):
    env = gym.make(env_id, render_mode="rgb_array").unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=False)
    env.close()


def _rollout(env_id: str, seed: int, steps: int = 40):
    env = gym.make(env_id)
    env.action_space.seed(seed)
    records = [env.reset(seed=seed)]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        records.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            records.append(env.reset())
    env.close()
    return records


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_trajectory(env_id):
    assert data_equivalence(_rollout(env_id, seed=7), _rollout(env_id, seed=7))


@pytest.mark.parametrize("env_id", IDS)
def test_different_seeds_differ(env_id):
    first = [_rollout(env_id, seed=s, steps=0)[0][0]["image"] for s in range(5)]
    assert any(not np.array_equal(first[0], other) for other in first[1:])


@pytest.mark.parametrize("env_id", IDS)
def test_observations_stay_in_space(env_id):
    env = gym.make(env_id)
    for record in _rollout(env_id, seed=1, steps=100):
        assert env.observation_space.contains(record[0])


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("clone", [copy.deepcopy, lambda e: pickle.loads(pickle.dumps(e))], ids=["deepcopy", "pickle"])
def test_clone_continues_identically(env_id, clone):
    env = gym.make(env_id)
    env.action_space.seed(3)
    env.reset(seed=3)
    env.step(env.action_space.sample())
    twin = clone(env)
    action = env.action_space.sample()
    assert data_equivalence(env.step(action), twin.step(action))


@pytest.mark.parametrize("env_id", IDS)
def test_rgb_array_render_is_the_observation_image(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert np.array_equal(env.render(), obs["image"])


@pytest.mark.parametrize("env_id", IDS)
def test_human_render_opens_a_window(env_id):
    pytest.importorskip("pygame")
    env = gym.make(env_id, render_mode="human")
    env.reset(seed=0)
    env.step(env.action_space.sample())
    assert env.unwrapped._window is not None
    env.close()
    assert env.unwrapped._window is None


@pytest.mark.parametrize("env_id", [s.id for s in CARD_SPECS])
@pytest.mark.parametrize("size", [(96, 96), (120, 200)])
def test_image_size_is_configurable(env_id, size):
    env = gym.make(env_id, image_size=size)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (*size, 3) and env.observation_space.contains(obs)


@pytest.mark.parametrize("env_id", [s.id for s in CARD_SPECS])
def test_out_of_range_action_is_a_clear_error(env_id):
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not in Discrete"):
        env.step(env.action_space.n)


@pytest.mark.parametrize("env_id", [s.id for s in CARD_SPECS])
def test_bad_constructor_arguments_are_clear_errors(env_id):
    with pytest.raises(ValueError, match="render_mode"), pytest.warns(UserWarning, match="render_mode"):
        gym.make(env_id, render_mode="vr")
    with pytest.raises(ValueError, match="image_size"):
        gym.make(env_id, image_size=(4, 4))
    with pytest.raises(ValueError, match="at most 2048"):  # refused before any frame is allocated
        gym.make(env_id, image_size=(40_000, 40_000))
    with pytest.raises(ValueError, match="text_mode"):
        gym.make(env_id, text_mode="verbose")


def test_make_without_import_uses_module_prefix():
    import subprocess
    import sys

    code = "import gymnasium as gym; e = gym.make('vlm_envs:gym_cards/Points24-v0'); print(e.reset(seed=0)[0]['image'].shape)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(300, 300, 3)"


def test_core_import_stays_light():
    import subprocess
    import sys

    heavy = ("torch", "pygame", "alfworld", "textworld", "transformers", "ray", "stable_baselines3", "openenv", "fastapi",
             "uvicorn", "websockets")
    code = f"import sys, vlm_envs; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("env_id", IDS)
def test_async_vector_env_matches_sync(env_id):
    """gymnasium's shared memory used to freeze Text observations (docs/vector_envs.md); ours stay live."""
    async_envs = gym.make_vec(env_id, 2, vectorization_mode="async")
    sync_envs = gym.make_vec(env_id, 2, vectorization_mode="sync")
    async_envs.action_space.seed(0)
    results = [async_envs.reset(seed=0)[0], sync_envs.reset(seed=0)[0]]
    assert data_equivalence(tuple(results[0]["text"]), tuple(results[1]["text"]))
    for _ in range(30):
        action = async_envs.action_space.sample()
        a, b = async_envs.step(action), sync_envs.step(action)
        assert tuple(a[0]["text"]) == tuple(b[0]["text"])
        assert np.array_equal(a[0]["image"], b[0]["image"])
        assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    async_envs.close()
    sync_envs.close()


@pytest.mark.parametrize("env_id", [s.id for s in CARD_SPECS])
def test_step_before_reset_is_a_clear_error(env_id):
    with pytest.raises(RuntimeError, match="reset"):
        gym.make(env_id, disable_env_checker=True).unwrapped.step(0)


def test_human_mode_without_pygame_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pygame", None)  # makes `import pygame` fail
    env = gym.make("gym_cards/NumberLine-v0", render_mode="human")
    with pytest.raises(gym.error.DependencyNotInstalled, match=r"vlm-envs\[human\]"):
        env.reset(seed=0)
