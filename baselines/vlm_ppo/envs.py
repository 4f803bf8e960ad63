"""The trainer's view of the environments: gymnasium's vector API plus the ``vlm_envs`` text interface.

:class:`TrainingEnvs` is the one owner of the training seed stream and of each env's episode
record. Every episode starts from an explicit seed, ``episode_seed(run seed, process, group, k)``
(a group is one env, or ``--group-size`` envs that play each episode from the same seed), and the
trainer resets finished envs itself (gymnasium's ``AutoresetMode.DISABLED`` with a
``reset_mask``), so an env's state is fully described by its episode seed and the texts sent
since that reset. A checkpoint stores exactly that (plain JSON) and :meth:`TrainingEnvs.restore`
rebuilds the envs by replaying it, in any vectorization mode.

Training seeds are drawn from ``[2**31, 2**32)`` and evaluation seeds must lie below ``2**31``, so
the two streams are disjoint for every run seed (:mod:`vlm_envs.evaluation.seeds`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, get_args

import gymnasium as gym
import numpy as np

import vlm_envs
from baselines.vlm_ppo.config import Vectorization
from vlm_envs.evaluation.seeds import train_seed
from vlm_envs.running.agent_loop import info_item, step_infos
from vlm_envs.text import build_prompt

VECTORIZATIONS: tuple[Vectorization, ...] = get_args(Vectorization)


def episode_seed(run_seed: int, process: int, group: int, episode: int) -> int:
    """The reset seed of training episode ``episode`` of group ``group`` (of env ``group`` when groups
    are single envs) in process ``process``."""
    return train_seed(run_seed, process, group, episode)


def with_env_kwargs(cfg, **extra):
    """The config with ``extra`` laid over its ``env_kwargs``."""
    return dataclasses.replace(cfg, env_kwargs=json.dumps({**json.loads(cfg.env_kwargs), **extra}))


def held_out(cfg):
    """The config the held-out evaluation plays: ``env_kwargs`` with ``eval_env_kwargs`` laid over it."""
    extra = json.loads(cfg.eval_env_kwargs)
    return with_env_kwargs(cfg, **extra) if extra else cfg


def with_oracle_labels(cfg):
    """The config whose envs add ``info["state_key"]`` (:mod:`vlm_envs.core.labels`): GiGPO groups steps by it."""
    return with_env_kwargs(cfg, oracle_labels=True)


def make_env(cfg) -> gym.Env:
    """One plain (index-action) env, for SFT data collection."""
    return gym.make(cfg.env_id, **json.loads(cfg.env_kwargs))


def text_actions_kwargs(cfg) -> dict:
    """How the envs parse model text (``vlm_envs.TextActions`` arguments), locally and on a server."""
    return dict(mode=cfg.parse_mode, on_parse_failure=cfg.on_parse_failure, format_penalty=cfg.format_penalty)


def make_vec_env(cfg, num_envs: int, vectorization: str | None = None,
                 autoreset_mode=gym.vector.AutoresetMode.DISABLED) -> gym.vector.VectorEnv:
    """``num_envs`` envs, each taking the model's raw text as its action, run as ``vectorization`` says."""
    vectorization = vectorization or cfg.vectorization
    if vectorization not in VECTORIZATIONS:
        raise ValueError(f"vectorization must be one of {VECTORIZATIONS}, got {vectorization!r}")
    vector_kwargs = {"autoreset_mode": autoreset_mode}
    if vectorization == "remote":
        from vlm_envs.remote import make_remote_vec  # raises DependencyNotInstalled without the serve extra

        if not cfg.env_url:
            raise ValueError("--vectorization remote needs --env-url (a `python -m vlm_envs serve` address)")
        token = cfg.env_token or os.environ.get("VLM_ENVS_TOKEN") or None
        return make_remote_vec(cfg.env_url, num_envs, vector_kwargs=vector_kwargs, env_id=cfg.env_id,
                               env_kwargs=json.loads(cfg.env_kwargs), text_actions=text_actions_kwargs(cfg), token=token)
    text = text_actions_kwargs(cfg)
    kwargs = dict(vector_kwargs=vector_kwargs, wrappers=[lambda env: vlm_envs.TextActions(env, **text)],
                  **json.loads(cfg.env_kwargs))
    if vectorization == "ray":
        from vlm_envs.running.ray_pool import make_ray_vec  # raises DependencyNotInstalled without the ray extra

        return make_ray_vec(cfg.env_id, num_envs, **kwargs)
    return gym.make_vec(cfg.env_id, num_envs, vectorization_mode=vectorization, **kwargs)


def prompt_task(envs) -> str:
    return envs.get_attr("prompt_task")[0] if hasattr(envs, "get_attr") else envs.unwrapped.prompt_task


def task_prompter(cfg, envs):
    """``obs["text"] -> task prompt`` for these envs (CoT or action-only, in the chosen wording)."""
    task = prompt_task(envs)
    params = dict(envs.get_attr("prompt_params")[0])  # the env's own prompt parameters (point-game target)
    return lambda obs_text: build_prompt(task, obs_text, cot=cfg.cot, wording=cfg.prompt_wording, **params)


@dataclass
class EnvStep:
    """One vector step, with finished envs already reset to their next episode."""

    obs: dict
    """Next observations (a new episode's first one where an episode ended)."""
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    infos: list[dict[str, Any]]
    """Each env's own step info (``success``, ``parse_ok``)."""
    final_obs: list[dict | None]
    """The observation that ended a truncated episode (for bootstrapping its value), else None."""


def _step_infos(infos: dict, done: np.ndarray) -> list[dict[str, Any]]:
    """Each env's own ``success`` and ``parse_ok`` for the step it just took."""
    return [{k: info_item(step_infos(infos, done[i]), k, i) for k in ("success", "parse_ok")} for i in range(len(done))]


class TrainingEnvs:
    """The training envs of one process: explicit episode seeds, episode records, replayable state.

    Envs ``g*G .. g*G+G-1`` form group ``g`` (``G = cfg.group_size``): they start every episode from
    the same seed and, stepped by :meth:`step_groups`, start their next one together.
    """

    def __init__(self, cfg, process_index: int = 0):
        self.seed, self.process = cfg.seed, process_index
        self.num_envs, self.group_size = cfg.num_envs, cfg.group_size
        self.envs = make_vec_env(with_oracle_labels(cfg) if cfg.algo == "gigpo" else cfg, cfg.num_envs)
        self.prompt_for = task_prompter(cfg, self.envs)
        self.episodes = [0] * self.num_envs  # episodes started so far, per env
        self.records: list[list[str]] = [[] for _ in range(self.num_envs)]  # texts sent since the last reset
        self.obs: dict | None = None
        self.state_keys: list[str | None] = [None] * self.num_envs
        """``info["state_key"]`` of each env's current observation (None unless the envs give one)."""

    @property
    def num_groups(self) -> int:
        return self.num_envs // self.group_size

    def _seed(self, i: int, ahead: int = 0) -> int:
        return episode_seed(self.seed, self.process, i // self.group_size, self.episodes[i] + ahead)

    def reset(self) -> dict:
        obs, infos = self.envs.reset(seed=[self._seed(i) for i in range(self.num_envs)])
        self._observe(obs, infos, range(self.num_envs))
        return self.obs

    def _observe(self, obs: dict, infos: dict, changed) -> None:
        self.obs = obs
        for i in changed:
            self.state_keys[i] = info_item(infos, "state_key", i)

    def _reset_some(self, seeds: list[int | None]) -> dict:
        """Reset the envs given a seed (the others keep their state); returns the new observations."""
        mask = np.array([s is not None for s in seeds])
        obs, infos = self.envs.reset(seed=seeds, options={"reset_mask": mask})
        self._observe(obs, infos, np.flatnonzero(mask))
        return obs

    def step(self, texts: list[str]) -> EnvStep:
        obs, rewards, terminated, truncated, infos = self.envs.step(tuple(texts))
        done = terminated | truncated
        final_obs = [None] * self.num_envs
        for i in range(self.num_envs):
            self.records[i].append(texts[i])
            if truncated[i] and not terminated[i]:
                final_obs[i] = {"image": np.array(obs["image"][i]), "text": obs["text"][i]}
        self._observe(obs, infos, range(self.num_envs))
        for i in np.flatnonzero(done):
            self.episodes[i] += 1
        obs = self._reset_finished(obs, done)
        return EnvStep(obs, np.asarray(rewards, dtype=np.float64), np.asarray(terminated), np.asarray(truncated),
                       _step_infos(infos, done), final_obs)

    def _reset_finished(self, obs: dict, done: np.ndarray) -> dict:
        """Reset the envs whose episode just ended, from their next episode seed (a finished env
        cannot be stepped); returns the observations the envs now show."""
        if not done.any():
            return obs
        for i in np.flatnonzero(done):
            self.records[i] = []
        return self._reset_some([self._seed(i) if done[i] else None for i in range(self.num_envs)])

    def start_groups(self, groups) -> dict:
        """Reset every member of ``groups`` to its group's current episode seed (the same for all)."""
        seeds: list[int | None] = [None] * self.num_envs
        for g in groups:
            for i in range(g * self.group_size, (g + 1) * self.group_size):
                seeds[i] = self._seed(i)
                self.records[i] = []
        return self._reset_some(seeds)

    def step_groups(self, texts: list[str], active: np.ndarray) -> tuple[EnvStep, list[int]]:
        """One step of the ``active`` envs, and the groups whose episode it ended (none of their
        members active any more; their episode count moves on, :meth:`start_groups` starts the next).

        A vector env steps all its envs, so an idle env is stepped too, with a void text, its result
        ignored; any env whose episode (real or void) ends is reset at once, because a finished env
        cannot be stepped. A group's members are reset again when it starts its next episode, so
        nothing void carries over, and a checkpoint between rollouts needs no replay.
        """
        obs, rewards, terminated, truncated, infos = self.envs.step(tuple(t if a else "" for t, a in zip(texts, active)))
        done = terminated | truncated
        self._observe(obs, infos, range(self.num_envs))
        for i in np.flatnonzero(active):
            self.records[i].append(texts[i])
        still = np.asarray(active) & ~done
        ended = [g for g in range(self.num_groups)
                 if active[g * self.group_size:(g + 1) * self.group_size].any()
                 and not still[g * self.group_size:(g + 1) * self.group_size].any()]
        for g in ended:
            for i in range(g * self.group_size, (g + 1) * self.group_size):
                self.episodes[i] += 1
        obs = self._reset_finished(obs, done)
        return EnvStep(obs, np.asarray(rewards, dtype=np.float64), np.asarray(terminated), np.asarray(truncated),
                       _step_infos(infos, done), [None] * self.num_envs), ended

    def state(self) -> dict[str, Any]:
        """Plain data that :meth:`restore` turns back into the same envs."""
        return {"episodes": list(self.episodes), "records": [list(r) for r in self.records],
                "seeds": [self._seed(i) for i in range(self.num_envs)]}

    def restore(self, state: dict[str, Any]) -> dict:
        """Rebuild every env's current episode by replaying its seed and the texts sent since its reset."""
        if len(state["episodes"]) != self.num_envs:
            raise ValueError(f"checkpoint has {len(state['episodes'])} envs per process, this run has {self.num_envs}")
        self.episodes = [int(e) for e in state["episodes"]]
        self.records = [[str(t) for t in r] for r in state["records"]]
        if [self._seed(i) for i in range(self.num_envs)] != list(state["seeds"]):
            raise ValueError("the checkpoint's episode seeds are not this run's: resume with the --seed it was written with")
        records = [vlm_envs.EpisodeRecord(self._seed(i), tuple(r)) for i, r in enumerate(self.records)]
        obs, infos = vlm_envs.restore_episodes(self.envs, records)
        self._observe(obs, infos, range(self.num_envs))
        return self.obs

    def close(self) -> None:
        self.envs.close()
