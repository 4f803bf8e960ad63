"""A gymnasium ``VectorEnv`` whose sub-environments are Ray actors (``pip install "vlm-envs[ray]"``).

Same API and same results as ``gymnasium.vector.SyncVectorEnv``: batched ``reset``/``step``,
``autoreset_mode`` (next-step by default; same-step; disabled), ``options={"reset_mask": ...}``,
``call``/``get_attr``/``set_attr``/``render``, infos merged with gymnasium's ``_key`` masks. The
sub-envs live in actor processes placed by Ray anywhere in the cluster, so envs whose steps are
expensive (ALFWorld's text engine) scale past one machine's cores::

    from vlm_envs.running.ray_pool import make_ray_vec

    envs = make_ray_vec("gym_cards/Points24-v0", 8, wrappers=[vlm_envs.TextActions])
    obs, infos = envs.reset(seed=0)          # the same arrays gym.make_vec(..., "sync") returns
    obs, rewards, terms, truncs, infos = envs.step(['{"action": "8"}'] * 8)
    envs.close()                             # kills the actors (and Ray, if this pool started it)

Ray is imported only when a pool is made; ``import vlm_envs.running.ray_pool`` is light. If Ray is not
initialised, the pool calls ``ray.init(**ray_init_kwargs)`` and shuts Ray down again on
``close()``; to use a cluster, call ``ray.init(address=...)`` yourself first.

Each actor holds ``envs_per_actor`` sub-envs (default 1) in an
:class:`~vlm_envs.running.actor_vector.EnvWorker`; :class:`~vlm_envs.running.actor_vector.ActorVectorEnv`
does the batching, so a vector step is one method call per actor, all issued before waiting on
any, and the actors step in parallel. The price is a round
trip through Ray per actor and step (a millisecond or more on one machine): worth it when a step
costs more than that, or when the envs outgrow one machine; for cheap envs put several in each
actor (``benchmarks/vector_throughput.py``, docs/vector_envs.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode

from vlm_envs.optional import require
from vlm_envs.running.actor_vector import ActorVectorEnv, EnvWorker

__all__ = ["RayVectorEnv", "RayWorkers", "make_ray_vec"]

class RayWorkers:
    """:class:`EnvWorker` s in Ray actors (the :class:`~vlm_envs.running.actor_vector.Workers` pool of :class:`RayVectorEnv`)."""

    def __init__(self, ray, chunks: list[list[Callable[[], gym.Env]]], mode: AutoresetMode, options: dict[str, Any], owns_ray: bool):
        self._ray, self._owns_ray = ray, owns_ray
        actor_class = ray.remote(EnvWorker)
        if options:
            actor_class = actor_class.options(**options)
        self.actors = [actor_class.remote(chunk, mode.value) for chunk in chunks]
        self.envs_per_worker = [len(chunk) for chunk in chunks]

    def call(self, worker: int, method: str, *args: Any):
        return getattr(self.actors[worker], method).remote(*args)

    def gather(self, handles: list) -> list:
        return self._ray.get(handles)

    def close(self) -> None:
        """Close every sub-env, end the actors, and shut Ray down if this pool started it."""
        ray = self._ray
        if not ray.is_initialized():
            return
        try:
            ray.get([actor.close.remote() for actor in self.actors], timeout=30)
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []
            if self._owns_ray:
                ray.shutdown()


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
        owns_ray = not ray.is_initialized()
        if owns_ray:
            ray.init(**{"include_dashboard": False, "log_to_driver": False, **(ray_init_kwargs or {})})
        self.env_fns = env_fns
        mode = AutoresetMode(autoreset_mode)
        options = dict(actor_options or {})
        if num_cpus_per_env is not None:
            options["num_cpus"] = num_cpus_per_env
        chunks = [list(env_fns[i:i + envs_per_actor]) for i in range(0, len(env_fns), envs_per_actor)]
        super().__init__(RayWorkers(ray, chunks, mode, options, owns_ray), copy=copy, autoreset_mode=mode)

    @property
    def actors(self) -> list:
        """The Ray actors, each holding ``envs_per_actor`` sub-envs (the last one the rest)."""
        return self.workers.actors


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
