"""Held-out evaluation of a policy on fixed seeds (below ``2**31``, disjoint from training's)."""

from __future__ import annotations

import collections
import hashlib

import gymnasium as gym
import numpy as np
import torch

from baselines.vlm_ppo.envs import check_eval_seeds, held_out, make_vec_env, task_prompter
from vlm_envs.running.agent_loop import info_item


@torch.no_grad()
def evaluate(cfg, policy, *, greedy: bool, episodes: int | None = None, accelerator=None) -> dict[str, float]:
    """Play ``episodes`` episodes on the seeds ``eval_seed + k``; success, return, length, parse-failure rate.

    Episodes are played in batches of fixed width; with an ``accelerator`` of several processes
    the batches are dealt out round-robin and the results gathered, so every process returns the
    same numbers as one process playing them all. Each batch samples under its own seed
    (``eval_seed`` + its first episode) in a forked RNG, so evaluating never changes the training
    run's stream and a batch's episodes do not depend on which process plays it.

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
    rows = []  # (episode, success, return, length, parse-failure rate, start observation key)
    if starts:
        was_training = policy.training
        policy.eval()
        # Finished envs reset in the same step and idle (their answers are ignored) until the batch ends.
        envs = make_vec_env(held_out(cfg), width, vectorization="sync",
                            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        cache: dict[str, str] = {}  # greedy: observation key -> answer text
        device = policy.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for start in starts:
                torch.manual_seed(cfg.eval_seed + start)
                rows += play_batch(cfg, policy, envs, start, min(width, episodes - start), greedy, cache)
        envs.close()
        policy.train(was_training)
    if accelerator is not None:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
    rows.sort()
    arr = np.asarray([row[1:5] for row in rows], dtype=float)
    per_start = collections.defaultdict(list)
    for row in rows:
        per_start[row[5]].append(row[1])
    return {"success": arr[:, 0].mean(), "return": arr[:, 1].mean(), "length": arr[:, 2].mean(),
            "parse_fail": arr[:, 3].mean(), "start_success": float(np.mean([np.mean(v) for v in per_start.values()])),
            "starts": float(len(per_start)), "episodes": float(len(arr))}


def observation_key(text: str, image) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + text.encode()).hexdigest()


def play_batch(cfg, policy, envs, start: int, count: int, greedy: bool, cache: dict[str, str]) -> list[tuple]:
    """Play the episodes on seeds ``eval_seed + start ...`` at once, one per env; the first ``count`` rows."""
    width = envs.num_envs
    prompt_for = task_prompter(cfg, envs)
    tokenizer = policy.encoder.tokenizer
    obs, _ = envs.reset(seed=[cfg.eval_seed + start + i for i in range(width)])
    first = [observation_key(obs["text"][i], obs["image"][i]) for i in range(width)]
    active = np.ones(width, bool)
    ret, length, parse_fail = np.zeros(width), np.zeros(width), np.zeros(width)
    success = np.zeros(width, bool)
    for _ in range(cfg.eval_max_steps):
        idx = np.flatnonzero(active)
        keys = {i: observation_key(obs["text"][i], obs["image"][i]) for i in idx}
        todo = list({keys[i]: i for i in idx if keys[i] not in cache}.values()) if greedy else list(idx)
        fresh = {}
        if todo:
            prompts = policy.encoder.encode_observations(
                {"text": [obs["text"][i] for i in todo], "image": [obs["image"][i] for i in todo]}, prompt_for)
            answers = policy.generate(prompts, greedy=greedy, max_new_tokens=cfg.max_new_tokens)
            fresh = dict(zip(todo, tokenizer.batch_decode(answers, skip_special_tokens=True)))
            if greedy:
                cache.update({keys[i]: text for i, text in fresh.items()})
        answers = [""] * width
        for i in idx:
            answers[i] = cache[keys[i]] if greedy else fresh[i]
        obs_next, rewards, term, trunc, infos = envs.step(tuple(answers))
        for i in idx:
            done = bool(term[i] or trunc[i])
            own = infos["final_info"] if done else infos  # the finished step's own info
            ret[i] += rewards[i]
            length[i] += 1
            parse_fail[i] += not bool(info_item(own, "parse_ok", i))
            if done:
                success[i] = bool(info_item(own, "success", i))
                active[i] = False
        obs = obs_next
        if not active.any():
            break
    return [(start + i, bool(success[i]), float(ret[i]), float(length[i]), float(parse_fail[i] / max(length[i], 1)),
             first[i]) for i in range(count)]
