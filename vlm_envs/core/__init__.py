"""The env framework: the base class every environment subclasses, and what it is built from.

==================  =============================================================================
module              owns
==================  =============================================================================
``env``             :class:`VLMEnv`: ``reset`` and ``step``, the hooks an environment implements
``spaces``          the ``Dict(image, text)`` observation space and its live ``Text`` space
``rendering``       fonts, frame resizing, the pygame window
``labels``          the oracle labels' pairing and the ``state_key`` hash
``registration``    the gymnasium ids, and what each registered constructor takes
``arguments``       checks of constructor arguments; ``ServerPath``, the mark of server paths
``caching``         caches bounded in bytes
==================  =============================================================================

Of vlm_envs it imports only :mod:`vlm_envs.text` (prompts) and :mod:`vlm_envs.optional`, and no
environment: ``registration`` names the envs' constructors by string, and ``import vlm_envs`` registers them.
"""

from vlm_envs.core.env import TEXT_MODES, TextMode, Transition, VLMEnv

__all__ = ["TEXT_MODES", "TextMode", "Transition", "VLMEnv"]
