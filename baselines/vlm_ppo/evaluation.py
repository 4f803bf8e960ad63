"""Held-out evaluation of a policy on fixed seeds (below ``2**31``, disjoint from training's)."""

from __future__ import annotations

import collections
import hashlib

import gymnasium as gym
import numpy as np
import torch

from baselines.vlm_ppo.envs import check_eval_seeds, held_out, make_vec_env, task_prompter
from vlm_envs.agent_loop import info_item


@torch.no_grad()
def evaluate(cfg, policy, *, greedy: bool, episodes: int | None = None) -> dict[str, float]:
    """Play ``episodes`` episodes on the seeds ``eval_seed + k``; success, return, length, parse-failure rate.

    Greedy answers are deterministic per observation, so they are decoded once per distinct
    observation and cached (``eval_greedy_episodes`` can then be large at little cost);
    ``start_success`` is the mean success over distinct start observations, each counted once
    (on NumberLine with enough episodes: the exact greedy success over all 30 start states).
    Runs under its own torch RNG (forked), so evaluating never changes the training run's stream.
    """
    episodes = episodes or ((cfg.eval_greedy_episodes or cfg.eval_episodes) if greedy else cfg.eval_episodes)
    check_eval_seeds(cfg.eval_seed, episodes)
    if cfg.eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be at least 1, got {cfg.eval_batch_size}")
    width = min(episodes, cfg.eval_batch_size if greedy else max(cfg.num_envs, 8))
    was_training = policy.training
    policy.eval()
    # Finished envs reset in the same step and idle (their answers are ignored) until the batch ends.
    envs = make_vec_env(held_out(cfg), width, vectorization="sync", autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    prompt_for = task_prompter(cfg, envs)
    tokenizer = policy.encoder.tokenizer
    results, start_keys = [], []
    cache: dict[str, str] = {}  # greedy: observation key -> answer text
    key_of = lambda text, image: hashlib.sha1(np.ascontiguousarray(image).tobytes() + text.encode()).hexdigest()  # noqa: E731
    device = policy.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.eval_seed)
        for start in range(0, episodes, width):
            obs, _ = envs.reset(seed=[cfg.eval_seed + start + i for i in range(width)])
            first = [key_of(obs["text"][i], obs["image"][i]) for i in range(width)]
            active = np.ones(width, bool)
            ret, length, parse_fail = np.zeros(width), np.zeros(width), np.zeros(width)
            success = np.zeros(width, bool)
            for _ in range(cfg.eval_max_steps):
                idx = np.flatnonzero(active)
                keys = {i: key_of(obs["text"][i], obs["image"][i]) for i in idx}
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
            for i in range(min(width, episodes - start)):
                results.append((success[i], ret[i], length[i], parse_fail[i] / max(length[i], 1)))
                start_keys.append(first[i])
    envs.close()
    policy.train(was_training)
    arr = np.asarray(results, dtype=float)
    per_start = collections.defaultdict(list)
    for k, r in zip(start_keys, arr[:, 0]):
        per_start[k].append(r)
    return {"success": arr[:, 0].mean(), "return": arr[:, 1].mean(), "length": arr[:, 2].mean(),
            "parse_fail": arr[:, 3].mean(), "start_success": float(np.mean([np.mean(v) for v in per_start.values()])),
            "starts": float(len(per_start)), "episodes": float(len(arr))}
