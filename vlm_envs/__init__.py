"""vlm_envs: image+text gymnasium environments for training vision-language models with RL.

``import vlm_envs`` registers every id (``gym_cards/NumberLine-v0``, ``gym_cards/EZPoints-v0``,
``gym_cards/Points24-v0``, ``gym_cards/Blackjack-v0``, and the ALFWorld ids) and imports only
gymnasium, numpy and pillow.
"""

from vlm_envs._version import __version__
from vlm_envs import alfworld_wrap
from vlm_envs.core.registration import CARD_ENVS, register
from vlm_envs.running import TextActions, make_ray_vec, run_agent
from vlm_envs.running.branching import EpisodeRecord, branch, restore_episode, restore_episodes
from vlm_envs.text.prompts import build_prompt, chat_messages, conversation

__all__ = ["EpisodeRecord", "TextActions", "branch", "build_prompt", "chat_messages", "conversation", "make_ray_vec",
           "restore_episode", "restore_episodes", "run_agent", "__version__"]


def _register_envs() -> None:
    for env_id, (entry_point, kwargs) in CARD_ENVS.items():
        register(env_id, entry_point, kwargs)
    alfworld_wrap.register_envs()  # light: names and ids only, the engine loads at make()


_register_envs()
