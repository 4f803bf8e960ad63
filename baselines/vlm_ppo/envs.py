"""The trainer's view of the environments: gymnasium's API plus the ``vlm_envs`` text interface.

Vector envs step the raw model text (``vlm_envs.TextActions``) and reset in the same step
(``AutoresetMode.SAME_STEP``), so the observation after a finished episode is already the next
episode's first one; the finished step's info and observation are in ``final_info`` / ``final_obs``.
"""

from __future__ import annotations

import json
from typing import Any

import gymnasium as gym

import vlm_envs
from vlm_envs.agent_loop import info_item
from vlm_envs.text import build_prompt, chat_messages, conversation


def make_env(cfg) -> gym.Env:
    """One plain (index-action) env, for SFT data collection."""
    return gym.make(cfg.env_id, **json.loads(cfg.env_kwargs))


VECTORIZATIONS = ("sync", "async", "ray")


def make_vec_env(cfg, num_envs: int) -> gym.vector.VectorEnv:
    """``num_envs`` envs, each taking the model's raw text as its action, run as ``cfg.vectorization`` says."""
    if cfg.vectorization not in VECTORIZATIONS:
        raise ValueError(f"vectorization must be one of {VECTORIZATIONS}, got {cfg.vectorization!r}")
    wrapper = lambda env: vlm_envs.TextActions(  # noqa: E731
        env, mode=cfg.parse_mode, on_parse_failure=cfg.on_parse_failure, format_penalty=cfg.format_penalty
    )
    kwargs = dict(
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        wrappers=[wrapper], **json.loads(cfg.env_kwargs),
    )
    if cfg.vectorization == "ray":
        from vlm_envs.ray_pool import make_ray_vec  # raises DependencyNotInstalled without the ray extra

        return make_ray_vec(cfg.env_id, num_envs, **kwargs)
    return gym.make_vec(cfg.env_id, num_envs, vectorization_mode=cfg.vectorization, **kwargs)


def prompt_task(envs) -> str:
    return envs.get_attr("prompt_task")[0] if hasattr(envs, "get_attr") else envs.unwrapped.prompt_task


def full_prompt(cfg, processor, task: str, obs_text: str) -> str:
    """The model input text for one step: the task prompt (from ``obs["text"]``) in the conversation wrapper."""
    prompt = build_prompt(task, obs_text, cot=cfg.cot, wording=cfg.prompt_wording)
    if cfg.conv_template == "chat_template":
        return processor.apply_chat_template(chat_messages(prompt), add_generation_prompt=True, tokenize=False)
    return conversation(prompt, cfg.conv_template)


def step_info(infos: dict, i: int, done: bool, keys=("success", "parse_ok")) -> dict[str, Any]:
    """The info of env ``i``'s own step (``final_info`` when the episode just ended)."""
    source = infos["final_info"] if done and "final_info" in infos else infos
    return {k: info_item(source, k, i) for k in keys}


def final_obs(infos: dict, i: int) -> dict:
    return infos["final_obs"][i]
