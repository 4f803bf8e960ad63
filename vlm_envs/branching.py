"""Moved to :mod:`vlm_envs.running.branching`; this path works until the next version, with a DeprecationWarning."""

from vlm_envs._moved import moved_module

moved_module(__name__, "vlm_envs.running.branching")
