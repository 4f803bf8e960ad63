"""benchmarks/experiments.py: every experiment is a command the trainer accepts, on its preset."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from baselines.vlm_ppo.config import CRITIC_FREE, parse_args


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


def _variant_of(name):
    """``(base, algo, options)`` of an experiment that reruns ``base`` with another algorithm or
    option (``ezpoints-gigpo``, ``blackjack-gigpo-penalty``, ``ezpoints-vclip0``), else None."""
    base, _, rest = name.partition("-")
    if not rest or base not in experiments.EXPERIMENTS or rest.endswith(("nocot", "smollm2")):
        return None
    parts = rest.split("-")
    algo = parts[0] if parts[0] in CRITIC_FREE else "ppo"
    return base, algo, set(parts) - {algo}


# What a variant may change beside its algorithm and named options: the evaluation cadence and the
# env-step shape (num_envs x num_steps), whose product the test holds to PPO's budget.
_FREE = {"algo", "group_size", "eval_every", "num_envs", "num_steps", "num_updates", "output_dir"}
_OPTIONS = {"vclip0": {"value_clip": 0.0},
            "penalty": {"on_parse_failure": "penalty", "keep_format_failures": True}}


@pytest.mark.parametrize("name", [n for n in sorted(experiments.EXPERIMENTS) if _variant_of(n)])
def test_variants_keep_their_ppo_start_and_budget(name):
    """Each variant of an env's PPO experiment trains from its SFT recipe at its env-step budget,
    with the algorithm and options its name says (groups of ``GROUP_SIZE`` for the critic-free
    ones) and nothing else changed."""
    base, algo, options = _variant_of(name)
    _, cfg = parse_args(experiments.trainer_command(name, 1, Path("OUT"))[3:])
    _, ppo = parse_args(experiments.trainer_command(base, 1, Path("OUT"))[3:])
    assert (cfg.algo, ppo.algo) == (algo, "ppo")
    assert cfg.group_size == (experiments.GROUP_SIZE if algo in CRITIC_FREE else 1)
    assert cfg.num_updates * cfg.num_steps * cfg.num_envs == ppo.num_updates * ppo.num_steps * ppo.num_envs
    promised = {field: value for option in options for field, value in _OPTIONS[option].items()}
    assert all(getattr(cfg, field) == value != getattr(ppo, field) for field, value in promised.items())
    changed = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(ppo, f.name)}
    assert changed <= _FREE | set(promised), changed - _FREE - set(promised)
