"""Held-out evaluation of the trainer's policy, played by vlm_envs' evaluation runner.

The episodes are the held-out env (``held_out(cfg)``) reset with the seeds ``eval_seed + k``,
below every training seed (:mod:`vlm_envs.evaluation.seeds`); :func:`vlm_envs.evaluation.runner.play`
plays them, with the trainer's policy as a :class:`~vlm_envs.evaluation.policies.Policy`
(:class:`TrainerPolicy`, its greedy answers through :class:`GreedyCache`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import numpy as np
import torch

from baselines.vlm_ppo.envs import held_out
from vlm_envs.evaluation.manifests import seeds_manifest
from vlm_envs.evaluation.policies import Request
from vlm_envs.evaluation.runner import Settings, play
from vlm_envs.evaluation.seeds import check_eval_seeds


def observation_key(request: Request) -> str:
    """Equal for requests that show the model the same prompt and image."""
    return hashlib.sha1(np.ascontiguousarray(request.image).tobytes() + request.prompt.encode()).hexdigest()


class TrainerPolicy:
    """The trainer's ``ActorCritic`` as an evaluation policy: one ``generate`` call answers every request of a step.

    Sampled answers are drawn together from torch's generator, so they depend on which requests
    share the call; :func:`evaluate` makes that fixed (each batch of episodes plays alone, from its
    own seed). ``start_keys`` records each episode's first observation (:func:`observation_key`).
    """

    needs_oracle = False

    def __init__(self, policy, *, greedy: bool, max_new_tokens: int):
        self.policy, self.greedy, self.max_new_tokens = policy, greedy, max_new_tokens
        self.start_keys: dict[int, str] = {}

    def describe(self) -> dict[str, Any]:
        return {"name": "trainer", "greedy": self.greedy, "max_new_tokens": self.max_new_tokens}

    def act(self, requests: Sequence[Request]) -> list[str]:
        self.start_keys.update((r.episode, observation_key(r)) for r in requests if r.step == 0)
        encoder = self.policy.encoder
        prompts = encoder.encode([r.prompt for r in requests], [r.image for r in requests])
        answers = self.policy.generate(prompts, greedy=self.greedy, max_new_tokens=self.max_new_tokens)
        return encoder.tokenizer.batch_decode(answers, skip_special_tokens=True)

    def close(self) -> None:
        pass


class GreedyCache:
    """A greedy policy that decodes each distinct observation once: its answer depends on nothing else."""

    def __init__(self, policy: TrainerPolicy):
        self.policy = policy
        self.needs_oracle = policy.needs_oracle
        self.answers: dict[str, str] = {}

    def describe(self) -> dict[str, Any]:
        return self.policy.describe()

    def act(self, requests: Sequence[Request]) -> list[str]:
        keys = [observation_key(r) for r in requests]
        todo = {key: r for key, r in zip(keys, requests) if key not in self.answers}  # first request of each new key
        if todo:
            self.answers.update(zip(todo, self.policy.act(list(todo.values()))))
        self.policy.start_keys.update((r.episode, key) for key, r in zip(keys, requests) if r.step == 0)
        return [self.answers[key] for key in keys]

    def close(self) -> None:
        self.policy.close()


@torch.no_grad()
def evaluate(cfg, policy, *, greedy: bool, episodes: int | None = None, accelerator=None) -> dict[str, float]:
    """Play ``episodes`` episodes on the seeds ``eval_seed + k``; success, return, length, parse-failure rate.

    Episodes are played in batches of fixed width, each batch by one :func:`play` with one env
    slot per episode; with an ``accelerator`` of several processes the batches are dealt out
    round-robin and the results gathered, so every process returns the same numbers as one
    process playing them all. Each batch samples under its own seed (``eval_seed`` + its first
    episode) in a forked RNG, so evaluating never changes the training run's stream and a batch's
    episodes do not depend on which process plays it.

    Greedy answers are deterministic per observation, so they are decoded once per distinct
    observation and cached (``eval_greedy_episodes`` can then be large at little cost);
    ``start_success`` is the mean success over distinct start observations, each counted once
    (on NumberLine with enough episodes: the exact greedy success over all 30 start states).
    """
    episodes = episodes or ((cfg.eval_greedy_episodes or cfg.eval_episodes) if greedy else cfg.eval_episodes)
    check_eval_seeds(cfg.eval_seed, episodes)
    if cfg.eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be at least 1, got {cfg.eval_batch_size}")
    width = min(episodes, cfg.eval_batch_size if greedy else max(cfg.num_envs, 8))
    rank, processes = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    starts = list(range(0, episodes, width))[rank::processes]
    manifest = seeds_manifest([cfg.env_id], episodes, cfg.eval_seed, json.loads(held_out(cfg).env_kwargs))
    settings = Settings(cot=cfg.cot, wording=cfg.prompt_wording, parse_mode=cfg.parse_mode,
                        on_parse_failure=cfg.on_parse_failure, format_penalty=cfg.format_penalty)
    answering = TrainerPolicy(policy, greedy=greedy, max_new_tokens=cfg.max_new_tokens)
    records: dict[int, dict] = {}
    if starts:
        was_training = policy.training
        policy.eval()
        device = policy.device
        cached = GreedyCache(answering) if greedy else answering
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for start in starts:
                torch.manual_seed(cfg.eval_seed + start)
                batch = range(start, min(start + width, episodes))
                records |= play(manifest, cached, indices=batch, num_envs=len(batch), settings=settings,
                                max_steps=cfg.eval_max_steps)
        policy.train(was_training)
    rows = [(i, r["success"], r["return"], r["length"], r["parse_failures"] / max(r["length"], 1),
             answering.start_keys[i]) for i, r in records.items()]
    if accelerator is not None:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
    return summarize(sorted(rows))


def summarize(rows: list[tuple]) -> dict[str, float]:
    """The logged numbers (``eval/{mode}_{key}``) of rows ``(episode, success, return, length, parse-failure rate, start key)``."""
    arr = np.asarray([row[1:5] for row in rows], dtype=float)
    per_start: dict[str, list[bool]] = {}
    for row in rows:
        per_start.setdefault(row[5], []).append(row[1])
    return {"success": arr[:, 0].mean(), "return": arr[:, 1].mean(), "length": arr[:, 2].mean(),
            "parse_fail": arr[:, 3].mean(), "start_success": float(np.mean([np.mean(v) for v in per_start.values()])),
            "starts": float(len(per_start)), "episodes": float(len(arr))}
