"""Register every environment id with gymnasium (called on ``import vlm_envs``)."""

from __future__ import annotations

import gymnasium as gym

# id -> (entry point, reference constructor defaults); max_episode_steps=300 as the reference.
CARD_ENVS: dict[str, tuple[str, dict]] = {
    "gym_cards/NumberLine-v0": ("vlm_envs.cards.number_line:NumberLineEnv", {"max_position": 5}),
    "gym_cards/EZPoints-v0": ("vlm_envs.cards.ez_points:EZPointsEnv", {"target_points": 12}),
    "gym_cards/Points24-v0": ("vlm_envs.cards.points24:Points24Env", {"treat_face_cards_as_10": True, "target_points": 24}),
    "gym_cards/Blackjack-v0": ("vlm_envs.cards.blackjack:BlackjackEnv", {"natural": False, "sab": False}),
}
MAX_EPISODE_STEPS = 300


def register(env_id: str, entry_point: str, kwargs: dict | None = None, max_episode_steps: int = MAX_EPISODE_STEPS) -> None:
    """Register ``env_id`` unless this package already did (re-imports and reloads are harmless)."""
    existing = gym.registry.get(env_id)
    if existing is not None and existing.entry_point == entry_point:
        return
    gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs or {}, max_episode_steps=max_episode_steps)


def registered_ids() -> list[str]:
    """Every id this package registered, in registration order (the card games, then ALFWorld)."""
    return [spec.id for spec in gym.registry.values() if str(spec.entry_point).startswith("vlm_envs.")]


def register_envs() -> None:
    from vlm_envs import alfworld_wrap  # light: names and ids only, the engine loads at make()

    for env_id, (entry_point, kwargs) in CARD_ENVS.items():
        register(env_id, entry_point, kwargs)
    alfworld_wrap.register_envs()
