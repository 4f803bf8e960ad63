"""RayVectorEnv gives the same trajectories as gymnasium's SyncVectorEnv (local Ray, loopback only)."""

from __future__ import annotations

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode

import vlm_envs
from tests.running.test_vector_envs import scripted_texts
from tests.utils import AVAILABLE_SPECS
from vlm_envs.running.ray_pool import RayVectorEnv, make_ray_vec

# Every card game and one ALFWorld id: the pool does not care which task types an id samples, and
# each ALFWorld actor imports the whole TextWorld stack (~15 s per id here); the per-id make_vec
# battery (tests/running/test_vector_envs.py) covers every id.
IDS = [s.id for s in AVAILABLE_SPECS if s.id.startswith("gym_cards/")]
IDS += [s.id for s in AVAILABLE_SPECS if s.id.startswith("alfworld/")][:1]


@pytest.fixture(scope="module")
def local_ray():
    """A bounded local Ray: 2 CPUs, loopback address, small object store, no dashboard; shut down after."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=200 * 1024**2,
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _play_both(env_id: str, n: int, steps: int, autoreset: AutoresetMode = AutoresetMode.NEXT_STEP, **pool_kwargs):
    kwargs = {"wrappers": [vlm_envs.TextActions], "vector_kwargs": {"autoreset_mode": autoreset}}
    pool = make_ray_vec(env_id, n, wrappers=kwargs["wrappers"], vector_kwargs={**kwargs["vector_kwargs"], **pool_kwargs})
    sync = gym.make_vec(env_id, n, vectorization_mode="sync", **kwargs)
    assert pool.single_observation_space == sync.single_observation_space
    assert pool.single_action_space == sync.single_action_space
    results = [(pool.reset(seed=3), sync.reset(seed=3))]
    probe = gym.make(env_id).unwrapped
    rng = np.random.default_rng(1)
    choices = list(probe.action_names) or ["look", "inventory", "go to cabinet 1"]
    for _ in range(steps):
        batch = tuple(scripted_texts(choices, rng) for _ in range(n))
        results.append((pool.step(batch), sync.step(batch)))
    return pool, sync, results


@pytest.mark.parametrize("env_id", IDS)
def test_ray_pool_matches_sync_vector_env(local_ray, env_id):
    pool, sync, results = _play_both(env_id, n=2, steps=25)
    for ray_result, sync_result in results:
        assert data_equivalence(ray_result, sync_result)
    assert pool.get_attr("prompt_task") == sync.get_attr("prompt_task")
    pool.close()
    sync.close()


def test_ray_pool_same_step_autoreset_matches(local_ray):
    pool, sync, results = _play_both("gym_cards/Blackjack-v0", n=3, steps=12, autoreset=AutoresetMode.SAME_STEP)
    assert any("final_obs" in r[0][4] for r in results[1:]), "no episode ended: the test checked nothing"
    for ray_result, sync_result in results:
        assert data_equivalence(ray_result, sync_result)
    pool.close()
    sync.close()


def test_several_envs_per_actor_match_sync(local_ray):
    pool, sync, results = _play_both("gym_cards/EZPoints-v0", n=5, steps=15, envs_per_actor=2)  # actors of 2, 2, 1
    assert len(pool.actors) == 3
    for ray_result, sync_result in results:
        assert data_equivalence(ray_result, sync_result)
    mask = np.array([False, True, False, True, True])
    assert data_equivalence(pool.reset(seed=9, options={"reset_mask": mask}),
                            sync.reset(seed=9, options={"reset_mask": mask.copy()}))
    pool.set_attr("custom_flag", [0, 1, 2, 3, 4])
    assert pool.get_attr("custom_flag") == (0, 1, 2, 3, 4)
    assert pool.call("oracle_action") == sync.call("oracle_action")
    pool.close()
    sync.close()


def test_ray_pool_reset_mask_call_set_attr_render(local_ray):
    pool = RayVectorEnv([lambda: gym.make("gym_cards/NumberLine-v0", render_mode="rgb_array")] * 2,
                        autoreset_mode=AutoresetMode.DISABLED)
    first, _ = pool.reset(seed=0)
    again, _ = pool.reset(seed=[None, 5], options={"reset_mask": np.array([False, True])})
    assert np.array_equal(first["image"][0], again["image"][0])
    assert np.array_equal(again["image"][1], gym.make("gym_cards/NumberLine-v0").reset(seed=5)[0]["image"])
    frames = pool.render()
    assert len(frames) == 2 and np.array_equal(frames[1], again["image"][1])
    pool.set_attr("custom_flag", [1, 2])
    assert pool.get_attr("custom_flag") == (1, 2)
    sync = gym.make_vec("gym_cards/NumberLine-v0", 2, vectorization_mode="sync")
    sync.reset(seed=[0, 5])
    assert pool.call("oracle_action") == sync.call("oracle_action")
    with pytest.raises(ValueError, match="reset_mask"):
        pool.reset(options={"reset_mask": np.array([False, False])})
    pool.close()
    assert pool.closed


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(gym.error.DependencyNotInstalled, match=r"vlm-envs\[ray\]"):
        make_ray_vec("gym_cards/NumberLine-v0", 2)


def test_importing_the_pool_does_not_import_ray():
    code = "import sys, vlm_envs.running.ray_pool, vlm_envs.running.agent_loop; print([m for m in ('ray', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_trainer_ray_switch_matches_sync(local_ray):
    """``--vectorization ray`` in the PPO trainer steps exactly like its default sync vector env."""
    pytest.importorskip("torch")
    from baselines.vlm_ppo.config import Config
    from baselines.vlm_ppo.envs import make_vec_env

    import gymnasium as gym

    same_step = gym.vector.AutoresetMode.SAME_STEP
    envs = {mode: make_vec_env(Config(vectorization=mode), 2, autoreset_mode=same_step) for mode in ("ray", "sync")}
    results = {mode: [e.reset(seed=5)] for mode, e in envs.items()}
    for texts in [('"action": "+"', "junk"), ('"action": "-"', '"action": "+"')] * 6:
        for mode, e in envs.items():
            results[mode].append(e.step(texts))
    assert data_equivalence(results["ray"], results["sync"])
    for e in envs.values():
        e.close()


def test_trainer_rejects_unknown_vectorization():
    from baselines.vlm_ppo.config import Config
    from baselines.vlm_ppo.envs import make_vec_env

    with pytest.raises(ValueError, match="vectorization must be one of"):
        make_vec_env(Config(vectorization="threads"), 2)
