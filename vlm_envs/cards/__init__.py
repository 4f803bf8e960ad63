"""The four card games of RL4VLM: NumberLine, EZPoints, Points24 and Blackjack."""

from vlm_envs.cards.blackjack import BlackjackEnv
from vlm_envs.cards.ez_points import EZPointsEnv
from vlm_envs.cards.number_line import NumberLineEnv
from vlm_envs.cards.points24 import Points24Env

__all__ = ["BlackjackEnv", "EZPointsEnv", "NumberLineEnv", "Points24Env"]
