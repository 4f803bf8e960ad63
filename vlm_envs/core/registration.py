"""Register environment ids with gymnasium, and read what each registered env's constructor takes.

``import vlm_envs`` registers every id: the card games of :data:`CARD_ENVS` and ALFWorld's
(:func:`vlm_envs.alfworld_wrap.register_envs`). Entry points are strings, so nothing here imports
an env."""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

from vlm_envs.core.arguments import names_server_path

# id -> (entry point, reference constructor defaults); max_episode_steps=300 as the reference.
CARD_ENVS: dict[str, tuple[str, dict]] = {
    "gym_cards/NumberLine-v0": ("vlm_envs.cards.number_line:NumberLineEnv", {"max_position": 5}),
    "gym_cards/EZPoints-v0": ("vlm_envs.cards.ez_points:EZPointsEnv", {"target_points": 12}),
    "gym_cards/Points24-v0": ("vlm_envs.cards.points24:Points24Env", {"treat_face_cards_as_10": True, "target_points": 24}),
    "gym_cards/Blackjack-v0": ("vlm_envs.cards.blackjack:BlackjackEnv", {"natural": False, "sab": False}),
}
MAX_EPISODE_STEPS = 300


def register(env_id: str, entry_point: str, kwargs: dict | None = None,
             max_episode_steps: int | None = MAX_EPISODE_STEPS) -> None:
    """Register ``env_id`` unless this package already did (re-imports and reloads are harmless)."""
    existing = gym.registry.get(env_id)
    if existing is not None and existing.entry_point == entry_point:
        return
    gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs or {}, max_episode_steps=max_episode_steps)


def registered_ids() -> list[str]:
    """Every id this package registered, in registration order (the card games, then ALFWorld)."""
    return [spec.id for spec in gym.registry.values() if str(spec.entry_point).startswith("vlm_envs.")]


@functools.lru_cache(maxsize=None)  # one entry per registered id at most: others raise first
def _constructor_annotations(env_id: str) -> tuple[tuple[str, Any], ...]:
    if env_id not in registered_ids():
        raise ValueError(f"{env_id!r} is not an id registered by vlm_envs; known: {', '.join(registered_ids())}")
    env_class = load_env_creator(gym.spec(env_id).entry_point)  # our own registry entry
    found: dict[str, Any] = {}
    for klass in env_class.__mro__:  # an __init__ with **kwargs passes the rest to its base class
        if "__init__" not in klass.__dict__:
            continue
        init = klass.__dict__["__init__"]
        hints = typing.get_type_hints(init, include_extras=True)
        params = list(inspect.signature(init).parameters.values())[1:]
        for p in params:
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in found:
                found[p.name] = hints.get(p.name, Any)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return tuple(found.items())


def constructor_arguments(env_id: str) -> tuple[str, ...]:
    """The named arguments of the constructor of a registered env (``render_mode`` included),
    following ``**kwargs`` to the base classes that take them; ``ValueError`` for an id vlm_envs
    did not register."""
    return tuple(name for name, _ in _constructor_annotations(env_id))


def path_arguments(env_id: str) -> frozenset[str]:
    """The constructor arguments of a registered env that name files or folders of the machine it
    runs on: those annotated :data:`vlm_envs.core.arguments.ServerPath` (also inside ``Sequence[...]``
    or ``... | None``), e.g. ``card_art``, ``game_dir``, ``game_files``.

    Read from the signature, so an argument added later with that annotation is found too. An env
    server must let only its own configuration set these: a client must not choose what the
    server reads. ``ValueError`` for an id vlm_envs did not register.
    """
    return frozenset(name for name, annotation in _constructor_annotations(env_id) if names_server_path(annotation))
