"""Helpers shared by the tests: the registry-parametrised list of every vlm_envs id, scripted actions, a free port, card art,
checkpoint copies, the table of moved modules, and the skip of a test folder whose optional extra is not installed."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import socket

import gymnasium as gym
import numpy as np
import pytest

import vlm_envs  # noqa: F401  (registers the ids)
from vlm_envs.core.registration import registered_ids


def _needs(spec) -> str | None:
    """The module an id needs beyond the core, if any (ALFWorld ids need the alfworld extra)."""
    return "alfworld" if "alfworld" in str(spec.entry_point) else None


def skip_unless_extra(extra: str, *modules: str) -> None:
    """From a test folder's ``conftest.py``: skip the whole folder unless every module of ``extra`` imports."""
    for module in modules:
        pytest.importorskip(module, reason=f'needs the "{extra}" extra (pip install "vlm-envs[{extra}]")')


# Module paths from before a move, and where each module lives now (each old path is a shim kept for one version).
MOVED_MODULES = {**{f"vlm_envs.{name}": f"vlm_envs.core.{name}"
                    for name in ("spaces", "rendering", "labels", "registration", "arguments", "caching")},
                 **{f"vlm_envs.{name}": f"vlm_envs.running.{name}" for name in ("wrappers", "agent_loop", "ray_pool", "branching")},
                 **{f"vlm_envs.{name}": f"vlm_envs.tools.{name}" for name in ("play", "gallery")}}

ALL_SPECS = [gym.spec(env_id) for env_id in registered_ids()]
AVAILABLE_SPECS = [s for s in ALL_SPECS if _needs(s) is None or importlib.util.find_spec(_needs(s)) is not None]
CARD_SPECS = [s for s in ALL_SPECS if s.id.startswith("gym_cards/")]


def vectorization_server(vectorization: str, env_id: str, max_sessions: int = 16):
    """The context a trainer run with ``--vectorization VECTORIZATION`` needs: an env server of
    ``env_id`` for ``remote`` (it yields the ``--env-url``), nothing otherwise (it yields ``""``).
    Skips the test when the mode's extra is not installed."""
    if vectorization == "ray":
        pytest.importorskip("ray")
    if vectorization != "remote":
        return contextlib.nullcontext("")
    pytest.importorskip("openenv.core")
    from vlm_envs.remote.server import create_app, serve_in_thread

    return serve_in_thread(create_app(env_id, max_sessions=max_sessions))


def scripted_actions(env: gym.Env, rng: np.random.Generator) -> str:
    """A mix of the oracle's move, a random word and unparseable text (which exercises the fallback draws)."""
    roll = rng.random()
    if roll < 0.2:
        return "no idea"
    base = env.unwrapped
    if isinstance(base.action_space, gym.spaces.Text):  # ALFWorld: a command, admissible or not
        return base.oracle_action() if roll < 0.8 else "go to the moon"
    names = base.action_names
    index = base.oracle_action() if roll < 0.6 else int(rng.integers(len(names)))
    return json.dumps({"action": names[index]})


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server that must come back on the same address)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_card_art(folder, skip: str = "") -> None:
    """A card-art folder (a PNG per card and ``back``) for ``card_art``; ``skip``: a card left out."""
    from PIL import Image

    from vlm_envs.cards.deck import FULL_DECK

    folder.mkdir(parents=True, exist_ok=True)
    for code in (*FULL_DECK, "back"):
        if code != skip:
            Image.new("RGB", (10, 14), (200, 10 * len(code), 30)).save(folder / f"{code}.png")


def checkpoint_copy(run_dir, new_dir, update: int = 0):
    """A fresh output dir holding only ``run_dir``'s checkpoint of ``update`` (and its metrics), marked latest."""
    import shutil
    from pathlib import Path

    name = f"update_{update:05d}"
    new_dir = Path(new_dir)
    (new_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(Path(run_dir) / "checkpoints" / name, new_dir / "checkpoints" / name)
    if (Path(run_dir) / "metrics.csv").exists():
        shutil.copy(Path(run_dir) / "metrics.csv", new_dir / "metrics.csv")
    (new_dir / "checkpoints" / "latest").write_text(name)
    return new_dir


def family_config(tmp_path, path, family: str = "llava", **overrides):
    """A trainer ``Config`` for a few seconds of PPO on ``family``'s tiny checkpoint at ``path``."""
    from baselines.vlm_ppo.config import Config
    from tests.tiny_families import CONV_TEMPLATES

    base = dict(output_dir=str(tmp_path), model=str(path), threads=1, num_envs=2, num_steps=2, num_updates=1,
                ppo_epochs=2, minibatch_size=2, grad_accum_steps=2, lr=1e-3, end_lr=1e-4, max_grad_norm=1.0,
                temperature=1.0, max_new_tokens=10, eval_every=0, save_every=1, missing_action_key="last5",
                conv_template=CONV_TEMPLATES[family], eval_sampled=False, eval_greedy_episodes=2, eval_episodes=2)
    return Config(**{**base, **overrides})
