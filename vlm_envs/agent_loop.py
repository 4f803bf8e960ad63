"""Moved to :mod:`vlm_envs.running.agent_loop`; this path works for one more version, with a ``DeprecationWarning``."""

from vlm_envs._moved import moved_module

__getattr__ = moved_module(__name__, "vlm_envs.running.agent_loop")
