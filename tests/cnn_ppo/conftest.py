"""The image-only PPO baseline (baselines/cnn_ppo.py) needs the "sb3" extra: without it this folder is skipped."""

from tests.utils import skip_unless_extra

skip_unless_extra("sb3", "stable_baselines3")
