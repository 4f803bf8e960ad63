"""vlm_envs: image+text gymnasium environments for training vision-language models with RL.

``import vlm_envs`` registers every id (``gym_cards/NumberLine-v0``, ``gym_cards/EZPoints-v0``,
``gym_cards/Points24-v0``, ``gym_cards/Blackjack-v0``, and the ALFWorld ids) and imports only
gymnasium, numpy and pillow.
"""

from vlm_envs.core.registration import register_envs as _register_envs
from vlm_envs.text.prompts import build_prompt, chat_messages, conversation
from vlm_envs.wrappers import TextActions

__version__ = "0.1.0"
__all__ = ["TextActions", "build_prompt", "chat_messages", "conversation", "__version__"]

_register_envs()
