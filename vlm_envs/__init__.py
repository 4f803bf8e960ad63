"""vlm_envs: image+text gymnasium environments for training vision-language models with RL.

``import vlm_envs`` registers every id (``gym_cards/NumberLine-v0``, ``gym_cards/EZPoints-v0``,
``gym_cards/Points24-v0``, ``gym_cards/Blackjack-v0``, and the ALFWorld ids) and imports only
gymnasium, numpy and pillow.
"""

from vlm_envs._version import __version__
from vlm_envs.registration import register_envs as _register_envs
from vlm_envs.running import TextActions, make_ray_vec, run_agent
from vlm_envs.running.branching import EpisodeRecord, branch, restore_episode, restore_episodes
from vlm_envs.text.prompts import build_prompt, chat_messages, conversation

__all__ = ["EpisodeRecord", "TextActions", "branch", "build_prompt", "chat_messages", "conversation", "make_ray_vec",
           "restore_episode", "restore_episodes", "run_agent", "__version__"]

_register_envs()
