"""ALFWorld as an image+text gymnasium environment, offline, on the real TextWorld engine.

Importing this package is light (no alfworld, no textworld): it only names the task types and
registers the environment ids. The engine is imported by :mod:`vlm_envs.alfworld_wrap.env` when
an environment is made; without the ``alfworld`` extra that raises
``gymnasium.error.DependencyNotInstalled`` with the ``pip install`` to run.

Ids (``gym.make`` after ``import vlm_envs``):

==================================  ===============================================
``alfworld/ALFWorld-v0``            all six task types
``alfworld/ALFWorld-Pick-v0``       ``pick_and_place_simple``
``alfworld/ALFWorld-Look-v0``       ``look_at_obj_in_light``
``alfworld/ALFWorld-Clean-v0``      ``pick_clean_then_place_in_recep``
``alfworld/ALFWorld-Heat-v0``       ``pick_heat_then_place_in_recep``
``alfworld/ALFWorld-Cool-v0``       ``pick_cool_then_place_in_recep``
``alfworld/ALFWorld-Pick2-v0``      ``pick_two_obj_and_place``
==================================  ===============================================
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# alfworld's numbering (alfworld.agents.environment.alfred_tw_env.TASK_TYPES) and the paper's columns.
TASK_TYPES: dict[int, str] = {
    1: "pick_and_place_simple",
    2: "look_at_obj_in_light",
    3: "pick_clean_then_place_in_recep",
    4: "pick_heat_then_place_in_recep",
    5: "pick_cool_then_place_in_recep",
    6: "pick_two_obj_and_place",
}
TASK_SHORT_NAMES: dict[int, str] = {1: "Pick", 2: "Look", 3: "Clean", 4: "Heat", 5: "Cool", 6: "Pick2"}
SPLITS: tuple[str, ...] = ("train", "eval_in_distribution", "eval_out_of_distribution")

ENTRY_POINT = "vlm_envs.alfworld_wrap.env:ALFWorldEnv"
ENV_IDS: dict[str, dict] = {"alfworld/ALFWorld-v0": {}}
ENV_IDS.update({f"alfworld/ALFWorld-{short}-v0": {"task_types": (tid,)} for tid, short in TASK_SHORT_NAMES.items()})


def cache_root() -> Path | None:
    """Where vlm_envs keeps generated data: ``$VLM_ENVS_CACHE``, else ``$XDG_CACHE_HOME`` (default
    ``~/.cache``) ``/vlm_envs``; ``None`` when ``VLM_ENVS_CACHE`` is ``off`` (or empty, 0, none, false)."""
    import os

    root = os.environ.get("VLM_ENVS_CACHE")
    if root is not None and root.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    if root is None:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vlm_envs")
    return Path(root)


def official_games_dir() -> Path:
    """Where ``generate --preset official`` writes by default (the full 3,553-game train split)."""
    root = cache_root()
    return (root if root is not None else Path.home() / ".cache" / "vlm_envs") / "alfworld-games-official"


def shipped_games_dir() -> Path:
    """The folder of the game set shipped with the package (``games/<split>/<task type>-.../trial_*``)."""
    return Path(str(resources.files("vlm_envs.alfworld_wrap") / "games"))


def register_envs() -> None:
    """Register the ALFWorld ids (string entry points: nothing heavy is imported here).

    The env enforces its own step limit (``max_steps=50``, ``truncated=True``), so no
    ``TimeLimit`` is added.
    """
    from vlm_envs.core.registration import register

    for env_id, kwargs in ENV_IDS.items():
        register(env_id, ENTRY_POINT, dict(kwargs), max_episode_steps=None)


__all__ = ["ENV_IDS", "SPLITS", "TASK_SHORT_NAMES", "TASK_TYPES", "cache_root", "official_games_dir", "register_envs",
           "shipped_games_dir"]
