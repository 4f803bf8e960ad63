"""Helpers shared by the tests: the registry-parametrised list of every vlm_envs id."""

from __future__ import annotations

import importlib.util

import gymnasium as gym

import vlm_envs  # noqa: F401  (registers the ids)
from vlm_envs.registration import registered_ids


def _needs(spec) -> str | None:
    """The module an id needs beyond the core, if any (ALFWorld ids need the alfworld extra)."""
    return "alfworld" if "alfworld" in str(spec.entry_point) else None


ALL_SPECS = [gym.spec(env_id) for env_id in registered_ids()]
AVAILABLE_SPECS = [s for s in ALL_SPECS if _needs(s) is None or importlib.util.find_spec(_needs(s)) is not None]
CARD_SPECS = [s for s in ALL_SPECS if s.id.startswith("gym_cards/")]
