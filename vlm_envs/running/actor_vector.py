"""A gymnasium ``VectorEnv`` over env workers that run elsewhere: Ray actors, threads, any pool.

An :class:`EnvWorker` holds one or more sub-envs and applies gymnasium's autoreset rule where
they live. A :class:`Workers` pool says where the workers run: it starts a method on a worker
(``call``) and waits for the answers (``gather``). :class:`ActorVectorEnv` does everything else
(seeds, ``reset_mask``, autoreset infos, ``call``/``get_attr``/``set_attr``), once for every pool,
so each behaves as ``SyncVectorEnv`` does:

* :class:`vlm_envs.running.ray_pool.RayVectorEnv`: workers in Ray actors (``RayWorkers``);
* :class:`vlm_envs.remote.RemoteVectorEnv`: workers in this process, one thread each
  (:class:`ThreadWorkers`), each holding a client of an env server.

A vector step starts the method on every worker before waiting on any, so the workers step in
parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from copy import deepcopy
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

__all__ = ["ActorVectorEnv", "EnvWorker", "ThreadWorkers", "Workers"]


class EnvWorker:
    """Holds one or more envs where they run; ``step`` applies the autoreset rule there.

    Plain Python: a pool runs it as it likes (``ray.remote(EnvWorker)`` in a Ray actor, or in a
    thread of this process), and it can be tested in-process.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], autoreset_mode: str):
        # Importing this module (as unpickling the class does in an actor) ran vlm_envs/__init__,
        # which registered the env ids.
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


class Workers(Protocol):
    """Where :class:`EnvWorker` s run, as :class:`ActorVectorEnv` drives them."""

    envs_per_worker: Sequence[int]
    """How many sub-envs each worker holds, in order."""

    def call(self, worker: int, method: str, *args: Any) -> Any:
        """Start ``EnvWorker.method(*args)`` on worker ``worker``; a handle that :meth:`gather` waits for."""

    def gather(self, handles: list) -> list:
        """Wait for ``handles``; their results, in order."""

    def close(self) -> None:
        """Close every worker's envs and release the workers."""


class ThreadWorkers:
    """:class:`EnvWorker` s in this process, one thread each: for envs whose steps wait on I/O (an env server).

    ``make_workers``: one callable per worker that builds it, run on a pool thread;
    ``envs_per_worker``: how many sub-envs each holds (default: one each).
    """

    def __init__(self, make_workers: Sequence[Callable[[], EnvWorker]], envs_per_worker: Sequence[int] | None = None,
                 thread_name_prefix: str = "env-worker"):
        if envs_per_worker is not None and len(envs_per_worker) != len(make_workers):
            raise ValueError(f"envs_per_worker has {len(envs_per_worker)} entries for {len(make_workers)} workers")
        self._pool = ThreadPoolExecutor(max_workers=len(make_workers), thread_name_prefix=thread_name_prefix)
        self._workers: list[Future] = [self._pool.submit(make) for make in make_workers]
        self.envs_per_worker = list(envs_per_worker or [1] * len(make_workers))

    def call(self, worker: int, method: str, *args: Any) -> Future:
        built = self._workers[worker]
        return self._pool.submit(lambda: getattr(built.result(), method)(*args))

    def gather(self, handles: list) -> list:
        return [handle.result() for handle in handles]

    def close(self) -> None:
        """Close the workers that were built (a failed build has nothing to close), then the threads."""
        for built in self._workers:
            if built.done() and built.exception() is None:
                built.result().close()
        self._workers = []
        self._pool.shutdown(wait=False, cancel_futures=True)


class ActorVectorEnv(VectorEnv):
    """``SyncVectorEnv``'s behaviour over :class:`EnvWorker` s that run in a :class:`Workers` pool.

    Args:
        workers: the pool; :meth:`close` closes it.
        copy: return copies of the batched observations (as ``SyncVectorEnv``).
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (default), ``SAME_STEP`` or ``DISABLED``, with
            gymnasium's semantics; the workers must have been built with the same mode.
    """

    def __init__(self, workers: Workers, copy: bool = True, autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP):
        super().__init__()
        self.workers = workers
        self.copy = copy
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        # sub-env i lives in worker self._where[i][0], at slot self._where[i][1]
        self._where = [(w, slot) for w, size in enumerate(workers.envs_per_worker) for slot in range(size)]
        self.num_envs = len(self._where)
        self._num_workers = len(workers.envs_per_worker)

        specs = [spec for specs in self._on_every_worker("spaces") for spec in specs]
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

    def _on_every_worker(self, method: str, args_per_worker: Sequence[tuple] | None = None) -> list:
        """``method`` started on every worker (with its own args) before waiting on any; each worker's answer."""
        args_per_worker = args_per_worker or [()] * self._num_workers
        return self.workers.gather([self.workers.call(w, method, *args) for w, args in enumerate(args_per_worker)])

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
        by_worker: dict[int, list[int]] = {}
        for i in indices:
            by_worker.setdefault(self._where[i][0], []).append(i)
        handles = [self.workers.call(w, "reset", [self._where[i][1] for i in envs], [seed[i] for i in envs], options)
                   for w, envs in by_worker.items()]
        results = dict(zip([i for envs in by_worker.values() for i in envs],
                           [r for rs in self.workers.gather(handles) for r in rs]))
        infos: dict[str, Any] = {}
        for i in indices:
            obs, info = results[i]
            self._env_obs[i] = obs
            infos = self._add_info(infos, info, i)
        self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        return (deepcopy(self._observations) if self.copy else self._observations), infos

    def step(self, actions):
        """Step every sub-env (one call per worker, all in flight at once) and batch the results."""
        per_worker = self._per_worker(iterate(self.action_space, actions))
        results = [r for rs in self._on_every_worker("step", [(acts,) for acts in per_worker]) for r in rs]
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
        return tuple(f for frames in self._on_every_worker("render") for f in frames)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call ``name`` (or read it, if not callable) on every sub-env; a tuple of the results."""
        return tuple(r for rs in self._on_every_worker("call", [(name, args, kwargs)] * self._num_workers) for r in rs)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self.call(name)

    def set_attr(self, name: str, values: Any) -> None:
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"Values must be a list or tuple with length equal to the number of environments. Got {len(values)}.")
        self._on_every_worker("set_attr", [(name, vals) for vals in self._per_worker(values)])

    def close_extras(self, **kwargs: Any) -> None:
        """Close every sub-env and release the workers."""
        if hasattr(self, "workers"):  # not when __init__ failed before the pool existed
            self.workers.close()

    def _per_worker(self, values) -> list[list]:
        """One value per sub-env, grouped into one list per worker in slot order."""
        per_worker: list[list] = [[] for _ in range(self._num_workers)]
        for (w, _), value in zip(self._where, values):
            per_worker[w].append(value)
        return per_worker
