"""benchmarks/experiments.py: every experiment is a command the trainer accepts, on its preset."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from baselines.vlm_ppo.config import parse_args


def _load_experiments():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "experiments.py"
    spec = importlib.util.spec_from_file_location("benchmarks_experiments", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


experiments = _load_experiments()


@pytest.mark.parametrize("name", sorted(experiments.EXPERIMENTS))
def test_every_experiment_parses_on_its_preset(name):
    command = experiments.trainer_command(name, 1, Path("OUT"))
    assert command[1:4] == ["-m", "baselines.vlm_ppo", "demo"]
    _, cfg = parse_args(command[3:])
    assert cfg.preset == experiments.EXPERIMENTS[name].preset and cfg.output_dir == "OUT"
    if name.endswith("-smollm2"):
        assert (cfg.model, cfg.conv_template) == ("smollm2-vlm", "chat_template")


@pytest.mark.parametrize("name", [n for n in sorted(experiments.EXPERIMENTS) if n.endswith(("-grpo", "-gigpo"))])
def test_critic_free_experiments_keep_their_ppo_start_and_budget(name):
    """Each critic-free experiment trains from its PPO experiment's SFT recipe at its env-step budget."""
    base = name.rsplit("-", 1)[0]
    _, cfg = parse_args(experiments.trainer_command(name, 1, Path("OUT"))[3:])
    _, ppo = parse_args(experiments.trainer_command(base, 1, Path("OUT"))[3:])
    assert (cfg.algo, cfg.group_size, ppo.algo) == (name.rsplit("-", 1)[1], experiments.GROUP_SIZE, "ppo")
    assert cfg.num_updates * cfg.num_steps * cfg.num_envs == ppo.num_updates * ppo.num_steps * ppo.num_envs
    sft = [f.name for f in dataclasses.fields(cfg) if f.name.startswith(("sft_", "align_", "aux_"))]
    assert all(getattr(cfg, f) == getattr(ppo, f) for f in sft + ["env_id", "model", "seed", "cot", "env_kwargs"])
