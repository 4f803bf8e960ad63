"""Moved to :mod:`baselines.vlm_ppo.hf_policy` (the ``train`` extra). ``HFPolicy`` is served from here until the
next version, with a DeprecationWarning, through the policy registry: vlm_envs never imports the trainer."""

from __future__ import annotations

import warnings

from vlm_envs.evaluation import registry


def __getattr__(name: str):
    if name != "HFPolicy":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"{__name__}.HFPolicy has moved to baselines.vlm_ppo.hf_policy.HFPolicy: import it from there "
                  f"({__name__}.HFPolicy goes in the next version)", DeprecationWarning, stacklevel=2)
    return registry.policy_factory("hf")
