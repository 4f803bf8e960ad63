"""What the card games share: the reference-rules switch and the pictures of the cards."""

from __future__ import annotations

from vlm_envs.core.arguments import ServerPath, check_bool
from vlm_envs.cards.drawing import check_card_art
from vlm_envs.core import VLMEnv


class CardEnv(VLMEnv):
    """A game played with a deck of cards (Blackjack, EZPoints, Points24).

    Takes the arguments every card game has, besides :class:`~vlm_envs.core.VLMEnv`'s:

    | argument | default | meaning |
    |---|---|---|
    | ``compat`` | False | the reference's rules, where the game's docstring says they differ |
    | ``card_art`` | None | folder of card PNGs (``HQ.png``, ..., ``back.png``) to use instead of the drawn cards; a path on the machine the env runs on (an env server takes it only from its own configuration) |
    """

    def __init__(self, compat: bool = False, card_art: ServerPath | None = None, **kwargs):
        super().__init__(**kwargs)
        self.compat = check_bool("compat", compat)
        self.card_art = check_card_art(card_art)
