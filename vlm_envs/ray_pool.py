"""A gymnasium ``VectorEnv`` whose sub-environments are Ray actors (``pip install "vlm-envs[ray]"``).

Same API and same results as ``gymnasium.vector.SyncVectorEnv``: batched ``reset``/``step``,
``autoreset_mode`` (next-step by default; same-step; disabled), ``options={"reset_mask": ...}``,
``call``/``get_attr``/``set_attr``/``render``, infos merged with gymnasium's ``_key`` masks. The
sub-envs live in actor processes placed by Ray anywhere in the cluster, so envs whose steps are
expensive (ALFWorld's text engine) scale past one machine's cores::

    from vlm_envs.ray_pool import make_ray_vec

    envs = make_ray_vec("gym_cards/Points24-v0", 8, wrappers=[vlm_envs.TextActions])
    obs, infos = envs.reset(seed=0)          # the same arrays gym.make_vec(..., "sync") returns
    obs, rewards, terms, truncs, infos = envs.step(['{"action": "8"}'] * 8)
    envs.close()                             # kills the actors (and Ray, if this pool started it)

Ray is imported only when a pool is made; ``import vlm_envs.ray_pool`` is light. If Ray is not
initialised, the pool calls ``ray.init(**ray_init_kwargs)`` and shuts Ray down again on
``close()``; to use a cluster, call ``ray.init(address=...)`` yourself first.

Each actor holds ``envs_per_actor`` sub-envs (default 1); a vector step is one method call per
actor, all issued before waiting on any, so the actors step in parallel. The price is a round
trip through Ray per actor and step (a millisecond or more on one machine): worth it when a step
costs more than that, or when the envs outgrow one machine; for cheap envs put several in each
actor (``benchmarks/vector_throughput.py``, docs/vector_envs.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from copy import deepcopy
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from vlm_envs.optional import require

__all__ = ["ActorVectorEnv", "RayVectorEnv", "make_ray_vec"]

class _EnvWorker:
    """Holds one or more envs inside a Ray actor; ``step`` applies the autoreset rule where the envs live.

    Plain Python (not decorated): ``RayVectorEnv`` wraps it with ``ray.remote`` at run time, so this
    module imports without Ray, and the class can be tested in-process.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], autoreset_mode: str):
        import vlm_envs  # noqa: F401  (registers the ids in the actor's process)

        self.envs = [fn() for fn in env_fns]
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.needs_reset = [False] * len(self.envs)

    def spaces(self) -> list[tuple[gym.Space, gym.Space, dict, str | None]]:
        return [(env.observation_space, env.action_space, dict(env.metadata), env.render_mode) for env in self.envs]

    def reset(self, slots: list[int], seeds: list[int | None], options: dict | None) -> list[tuple]:
        results = []
        for slot, seed in zip(slots, seeds):
            self.needs_reset[slot] = False
            results.append(self.envs[slot].reset(seed=seed, options=options))
        return results

    def step(self, actions: list) -> list[tuple]:
        """Per env: ``(obs, reward, terminated, truncated, info, final)``; ``final`` is the same-step extra info."""
        return [self._step(slot, action) for slot, action in enumerate(actions)]

    def _step(self, slot: int, action) -> tuple:
        env, final = self.envs[slot], None
        if self.autoreset_mode == AutoresetMode.NEXT_STEP and self.needs_reset[slot]:
            obs, info = env.reset()
            reward, terminated, truncated = 0.0, False, False
        else:
            if self.autoreset_mode == AutoresetMode.DISABLED and self.needs_reset[slot]:
                raise RuntimeError("autoreset_mode=DISABLED: reset this sub-env (options={'reset_mask': ...}) before stepping it")
            obs, reward, terminated, truncated, info = env.step(action)
            if self.autoreset_mode == AutoresetMode.SAME_STEP and (terminated or truncated):
                final = {"final_obs": obs, "final_info": info}
                obs, info = env.reset()
        self.needs_reset[slot] = bool(terminated or truncated)
        return obs, float(reward), bool(terminated), bool(truncated), info, final

    def call(self, name: str, args: tuple, kwargs: dict) -> list:
        results = []
        for env in self.envs:
            attr = env.get_wrapper_attr(name)
            results.append(attr(*args, **kwargs) if callable(attr) else attr)
        return results

    def set_attr(self, name: str, values: list) -> None:
        for env, value in zip(self.envs, values):
            env.set_wrapper_attr(name, value)

    def render(self) -> list:
        return [env.render() for env in self.envs]

    def close(self) -> None:
        for env in self.envs:
            env.close()


class ActorVectorEnv(VectorEnv):
    """The batching half of :class:`RayVectorEnv`, over any workers that answer like Ray actors.

    A worker holds one or more sub-envs (as :class:`_EnvWorker` does); ``worker.method.remote(*args)``
    returns a future and ``gather(futures)`` waits for a list of them. :class:`RayVectorEnv` passes
    Ray actors and ``ray.get``; :class:`vlm_envs.remote.RemoteVectorEnv` passes threads that talk to
    an env server. Everything else (seeds, ``reset_mask``, autoreset infos, ``call``/``get_attr``/
    ``set_attr``) is this class, so every pool behaves as ``SyncVectorEnv``.
    """

    def __init__(
        self,
        actors: Sequence[Any],
        envs_per_actor: Sequence[int],
        gather: Callable[[list], list],
        copy: bool = True,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
    ):
        super().__init__()
        self.actors = list(actors)
        self._gather = gather
        self.copy = copy
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        # sub-env i lives in actor self._where[i][0], at slot self._where[i][1]
        self._where = [(a, slot) for a, size in enumerate(envs_per_actor) for slot in range(size)]
        self.num_envs = len(self._where)

        specs = [spec for specs in gather([actor.spaces.remote() for actor in self.actors]) for spec in specs]
        observation_space, action_space, metadata, render_mode = specs[0]
        for other in specs[1:]:
            if other[0] != observation_space or other[1] != action_space:
                raise RuntimeError(f"sub-env spaces differ: {other[0]}, {other[1]} vs {observation_space}, {action_space}")
        self.single_observation_space = observation_space
        self.single_action_space = action_space
        self.observation_space = batch_space(observation_space, self.num_envs)
        self.action_space = batch_space(action_space, self.num_envs)
        self.metadata = {**metadata, "autoreset_mode": self.autoreset_mode}
        self.render_mode = render_mode

        self._observations = create_empty_array(observation_space, n=self.num_envs, fn=np.zeros)
        self._env_obs: list[Any] = [None] * self.num_envs

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset every sub-env (or those in ``options["reset_mask"]``); seeds as ``SyncVectorEnv``."""
        if seed is None:
            seed = [None] * self.num_envs
        elif isinstance(seed, int):
            seed = [seed + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"If seeds are passed as a list the length must match num_envs={self.num_envs} but got length={len(seed)}.")
        options = dict(options) if options is not None else None
        mask = np.ones(self.num_envs, dtype=np.bool_)
        if options is not None and "reset_mask" in options:
            mask = options.pop("reset_mask")
            if not isinstance(mask, np.ndarray) or mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise TypeError(f"options['reset_mask'] must be a bool numpy array of shape ({self.num_envs},), got {mask!r}")
            if not mask.any():
                raise ValueError("options['reset_mask'] must contain at least one True value")
        indices = [int(i) for i in np.flatnonzero(mask)]
        by_actor: dict[int, list[int]] = {}
        for i in indices:
            by_actor.setdefault(self._where[i][0], []).append(i)
        futures = [self.actors[a].reset.remote([self._where[i][1] for i in envs], [seed[i] for i in envs], options)
                   for a, envs in by_actor.items()]
        results = dict(zip([i for envs in by_actor.values() for i in envs],
                           [r for rs in self._gather(futures) for r in rs]))
        infos: dict[str, Any] = {}
        for i in indices:
            obs, info = results[i]
            self._env_obs[i] = obs
            infos = self._add_info(infos, info, i)
        self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        return (deepcopy(self._observations) if self.copy else self._observations), infos

    def step(self, actions):
        """Step every sub-env (one call per actor, all in flight at once) and batch the results."""
        per_actor = self._per_actor(iterate(self.action_space, actions))
        futures = [actor.step.remote(acts) for actor, acts in zip(self.actors, per_actor)]
        results = [r for rs in self._gather(futures) for r in rs]
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminations = np.zeros(self.num_envs, dtype=np.bool_)
        truncations = np.zeros(self.num_envs, dtype=np.bool_)
        infos: dict[str, Any] = {}
        for i, (obs, reward, terminated, truncated, info, final) in enumerate(results):
            self._env_obs[i], rewards[i], terminations[i], truncations[i] = obs, reward, terminated, truncated
            if final is not None:
                infos = self._add_info(infos, final, i)
            infos = self._add_info(infos, info, i)
        self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        return (deepcopy(self._observations) if self.copy else self._observations), rewards, terminations, truncations, infos

    def render(self) -> tuple[Any, ...]:
        return tuple(f for frames in self._gather([actor.render.remote() for actor in self.actors]) for f in frames)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call ``name`` (or read it, if not callable) on every sub-env; a tuple of the results."""
        return tuple(r for rs in self._gather([actor.call.remote(name, args, kwargs) for actor in self.actors]) for r in rs)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self.call(name)

    def set_attr(self, name: str, values: Any) -> None:
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"Values must be a list or tuple with length equal to the number of environments. Got {len(values)}.")
        per_actor = self._per_actor(values)
        self._gather([actor.set_attr.remote(name, vals) for actor, vals in zip(self.actors, per_actor)])

    def _per_actor(self, values) -> list[list]:
        """One value per sub-env, grouped into one list per actor in slot order."""
        per_actor: list[list] = [[] for _ in self.actors]
        for (a, _), value in zip(self._where, values):
            per_actor[a].append(value)
        return per_actor


class RayVectorEnv(ActorVectorEnv):
    """``num_envs`` environments in Ray actors, behind gymnasium's ``VectorEnv`` API.

    Args:
        env_fns: one callable per sub-env that builds it (run inside the actor, so it must be
            picklable by cloudpickle: functions, lambdas and ``functools.partial`` all are).
        copy: return copies of the batched observations (as ``SyncVectorEnv``).
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (default), ``SAME_STEP`` or ``DISABLED``,
            with gymnasium's semantics (docs/vector_envs.md).
        envs_per_actor: sub-envs per actor (default 1). Several per actor cut the Ray round trips
            per step (they step one after another inside the actor): use it for cheap envs.
        num_cpus_per_env: Ray CPU reservation of each actor; ``None`` keeps Ray's default for
            actors (no CPU held while running, so more envs than cores still start).
        actor_options: any other ``ray.remote`` options per actor (``resources``, ``scheduling_strategy``...).
        ray_init_kwargs: used only if Ray is not initialised yet; the pool then owns that Ray
            instance and shuts it down on ``close()``.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        copy: bool = True,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        envs_per_actor: int = 1,
        num_cpus_per_env: float | None = None,
        actor_options: dict[str, Any] | None = None,
        ray_init_kwargs: dict[str, Any] | None = None,
    ):
        if envs_per_actor < 1:
            raise ValueError(f"envs_per_actor must be positive, got {envs_per_actor}")
        ray = require("ray", "ray", "RayVectorEnv")
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(**{"include_dashboard": False, "log_to_driver": False, **(ray_init_kwargs or {})})
        self.env_fns = env_fns
        mode = AutoresetMode(autoreset_mode)
        options = dict(actor_options or {})
        if num_cpus_per_env is not None:
            options["num_cpus"] = num_cpus_per_env
        actor_class = ray.remote(_EnvWorker)
        if options:
            actor_class = actor_class.options(**options)
        chunks = [list(env_fns[i:i + envs_per_actor]) for i in range(0, len(env_fns), envs_per_actor)]
        actors = [actor_class.remote(chunk, mode.value) for chunk in chunks]
        super().__init__(actors, [len(chunk) for chunk in chunks], ray.get, copy=copy, autoreset_mode=mode)

    def close_extras(self, **kwargs: Any) -> None:
        """Close every sub-env, end the actors, and shut Ray down if this pool started it."""
        ray = getattr(self, "_ray", None)
        if ray is None or not ray.is_initialized():
            return
        try:
            ray.get([actor.close.remote() for actor in self.actors], timeout=30)
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []
            if self._owns_ray:
                ray.shutdown()


def make_ray_vec(
    env_id: str,
    num_envs: int = 1,
    wrappers: Sequence[Callable[[gym.Env], gym.Wrapper]] | None = None,
    vector_kwargs: dict[str, Any] | None = None,
    **env_kwargs: Any,
) -> RayVectorEnv:
    """``gym.make_vec``'s signature with Ray actors: ``make_ray_vec(id, n, wrappers=[...], vector_kwargs={...}, **env_kwargs)``.

    ``vector_kwargs`` go to :class:`RayVectorEnv` (``autoreset_mode``, ``num_cpus_per_env``,
    ``ray_init_kwargs``, ...); ``env_kwargs`` to ``gym.make`` in every actor.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be positive, got {num_envs}")
    env_fn = _EnvFactory(env_id, tuple(wrappers or ()), env_kwargs)
    return RayVectorEnv([env_fn] * num_envs, **(vector_kwargs or {}))


class _EnvFactory:
    """``gym.make(env_id, **kwargs)`` with ``wrappers`` applied in order; picklable."""

    def __init__(self, env_id: str, wrappers: tuple, env_kwargs: dict):
        self.env_id, self.wrappers, self.env_kwargs = env_id, wrappers, env_kwargs

    def __call__(self) -> gym.Env:
        env = gym.make(self.env_id, **self.env_kwargs)
        for wrapper in self.wrappers:
            env = wrapper(env)
        return env
