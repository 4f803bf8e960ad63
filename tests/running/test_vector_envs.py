"""``gym.make_vec`` for every registered id: batched spaces and autoreset semantics (docs/vector_envs.md).

tests/core/test_env_battery.py already checks that async and sync vector envs return identical
observations; here each sub-env of a vector env must replay exactly the standalone env with the
same seed and actions, including the autoreset step, in both vectorization modes and both
autoreset modes, through the text interface (``wrappers=[vlm_envs.TextActions]``).
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

import vlm_envs
from tests.utils import AVAILABLE_SPECS

IDS = [spec.id for spec in AVAILABLE_SPECS]
NUM_ENVS = 2
STEPS = 24


def scripted_texts(vocab_or_commands, rng: np.random.Generator) -> str:
    """A model-like output: usually a valid action, sometimes unparseable text."""
    if rng.random() < 0.15:
        return "I am not sure."
    return json.dumps({"action": vocab_or_commands[int(rng.integers(len(vocab_or_commands)))]})


def _choices(env: gym.Env, info: dict) -> list[str]:
    names = getattr(env.unwrapped, "action_names", ())
    return list(names) if names else list(info.get("admissible_commands") or ["look"])


def _standalone(env_id: str, seed: int, texts: list[str], autoreset: AutoresetMode) -> list[tuple]:
    """What sub-env ``i`` of a vector env must produce, by hand: one env, gymnasium's autoreset rule."""
    env = vlm_envs.TextActions(gym.make(env_id))
    obs, info = env.reset(seed=seed)
    out, needs_reset = [(obs, info)], False
    for text in texts:
        if autoreset == AutoresetMode.NEXT_STEP and needs_reset:
            obs, info = env.reset()
            out.append((obs, 0.0, False, False, info, None))
            needs_reset = False
            continue
        obs, reward, terminated, truncated, info = env.step(text)
        final = None
        if autoreset == AutoresetMode.SAME_STEP and (terminated or truncated):
            final = (obs, info)
            obs, info = env.reset()
        needs_reset = terminated or truncated
        out.append((obs, float(reward), bool(terminated), bool(truncated), info, final))
    env.close()
    return out


def _sub(infos: dict, i: int) -> dict:
    """Sub-env ``i``'s own info dict out of a vector env's merged infos."""
    return {k: (_sub(v, i) if isinstance(v, dict) else v[i]) for k, v in infos.items()
            if not k.startswith("_") and infos.get("_" + k, np.ones(i + 1, bool))[i]}


def _same_info(vector_info: dict, info: dict) -> bool:
    """Equal up to numpy scalar types (vector envs batch ``True`` into ``np.bool_`` arrays)."""
    keys = set(vector_info) - {"final_obs", "final_info"}
    return keys == set(info) and all(np.array_equal(np.asarray(vector_info[k], dtype=object), np.asarray(info[k], dtype=object))
                                     for k in keys)


@pytest.mark.parametrize("autoreset", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP], ids=["next_step", "same_step"])
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("env_id", IDS)
def test_each_sub_env_replays_the_standalone_env(env_id, mode, autoreset):
    envs = gym.make_vec(env_id, NUM_ENVS, vectorization_mode=mode, wrappers=[vlm_envs.TextActions],
                        vector_kwargs={"autoreset_mode": autoreset})
    assert isinstance(envs.single_action_space, spaces.Text)
    assert envs.observation_space["image"].shape == (NUM_ENVS, *envs.single_observation_space["image"].shape)
    rng = np.random.default_rng(0)
    obs, infos = envs.reset(seed=10)
    probe = gym.make(env_id)
    texts: list[list[str]] = [[] for _ in range(NUM_ENVS)]
    steps = [(obs, infos)]
    for _ in range(STEPS):
        batch = tuple(scripted_texts(_choices(probe, _sub(infos, i)), rng) for i in range(NUM_ENVS))
        for i, text in enumerate(batch):
            texts[i].append(text)
        obs, rewards, terms, truncs, infos = envs.step(batch)
        steps.append((obs, rewards, terms, truncs, infos))
    envs.close()

    for i in range(NUM_ENVS):
        expected = _standalone(env_id, 10 + i, texts[i], autoreset)
        assert tuple(steps[0][0]["text"])[i] == expected[0][0]["text"]
        assert np.array_equal(steps[0][0]["image"][i], expected[0][0]["image"])
        for t, (obs, rewards, terms, truncs, infos) in enumerate(steps[1:], start=1):
            e_obs, e_reward, e_term, e_trunc, e_info, e_final = expected[t]
            assert tuple(obs["text"])[i] == e_obs["text"], (i, t)
            assert np.array_equal(obs["image"][i], e_obs["image"]), (i, t)
            assert (rewards[i], terms[i], truncs[i]) == (e_reward, e_term, e_trunc), (i, t)
            info = _sub(infos, i)
            if e_final is not None:  # same-step: the finished episode's last obs/info ride along
                assert info["final_obs"]["text"] == e_final[0]["text"]
                assert np.array_equal(info["final_obs"]["image"], e_final[0]["image"])
                assert _same_info(info["final_info"], e_final[1])
            else:
                assert "final_obs" not in info
            assert _same_info(info, e_info)


@pytest.mark.parametrize("autoreset", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_actor_vector_env_on_threads_matches_sync(autoreset):
    """The actor-based vector env is public and needs no Ray: on ThreadWorkers (as the remote client
    uses it) it returns what SyncVectorEnv returns, two workers of two and one sub-env."""
    from gymnasium.utils.env_checker import data_equivalence

    from vlm_envs.running import ActorVectorEnv, EnvWorker, ThreadWorkers

    make = lambda: vlm_envs.TextActions(gym.make("gym_cards/EZPoints-v0"))  # noqa: E731
    sizes = (2, 2, 1)
    workers = ThreadWorkers([lambda size=size: EnvWorker([make] * size, autoreset.value) for size in sizes], sizes)
    threaded = ActorVectorEnv(workers, autoreset_mode=autoreset)
    sync = gym.make_vec("gym_cards/EZPoints-v0", 5, vectorization_mode="sync", wrappers=[vlm_envs.TextActions],
                        vector_kwargs={"autoreset_mode": autoreset})
    assert data_equivalence(threaded.reset(seed=4), sync.reset(seed=4))
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        texts = tuple(scripted_texts(sync.unwrapped.get_attr("action_names")[0], rng) for _ in range(5))
        assert data_equivalence(threaded.step(texts), sync.step(texts))
    assert threaded.get_attr("prompt_task") == sync.get_attr("prompt_task")
    threaded.close()
    sync.close()
