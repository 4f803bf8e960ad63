"""Blackjack from pixels: hit or stand against a dealer who stands on 17."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from gymnasium import spaces

from vlm_envs.core.arguments import check_bool
from vlm_envs.cards.card_env import CardEnv
from vlm_envs.cards.deck import random_suit
from vlm_envs.cards.drawing import felt_table, place_cards
from vlm_envs.core import Transition
from vlm_envs.core.labels import StateLabels
from vlm_envs.core.rendering import blit_white_text, to_frame


class Card(NamedTuple):
    """A Blackjack card, e.g. ``Card(10, "K", "H")``; ``info`` shows it as the plain tuple ``(10, "K", "H")``."""

    value: int  # 1 for an ace (counted 11 where that does not bust), 10 for J, Q, K
    face: str  # "A", "2".."9", "J", "Q" or "K"
    suit: str  # "H", "S", "D" or "C"

    @property
    def code(self) -> str:
        """The card's sprite name (:mod:`vlm_envs.cards.drawing`), e.g. ``"HK"``."""
        return self.suit + self.face


DECK_VALUES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10)
_CARD_SIZE = (70, 98)
_CANVAS_WIDTH = 300


def draw_card(np_random: np.random.Generator) -> Card:
    """One card from an infinite deck; a ten-valued card shows J, Q or K (never a 10, as the reference)."""
    value = DECK_VALUES[int(np_random.integers(len(DECK_VALUES)))]
    suit = random_suit(np_random)
    if value == 1:
        face = "A"
    elif value == 10:
        face = "JQK"[int(np_random.integers(3))]
    else:
        face = str(value)
    return Card(value, face, suit)


def hand_total(hand: list[Card]) -> int:
    """Sum of values, counting one ace as 11 when that does not bust the hand."""
    total = sum(card.value for card in hand)
    return total + 10 if has_usable_ace(hand) else total


def has_usable_ace(hand: list[Card]) -> bool:
    total = sum(card.value for card in hand)
    return any(card.value == 1 for card in hand) and total + 10 <= 21


def is_natural(hand: list[Card]) -> bool:
    """An ace and a ten-valued card as the first two cards (compares values: docs/reference_differences.md, "Blackjack naturals")."""
    return sorted(card.value for card in hand) == [1, 10]


def score(hand: list[Card]) -> int:
    total = hand_total(hand)
    return 0 if total > 21 else total


def basic_strategy(player_total: int, usable_ace: bool, dealer_upcard: int) -> int:
    """Hit (1) or stand (0) by basic strategy for hit/stand-only play, dealer standing on all 17s."""
    if usable_ace:
        if player_total >= 19:
            return 0
        return 0 if player_total == 18 and 2 <= dealer_upcard <= 8 else 1
    if player_total >= 17:
        return 0
    if player_total >= 13:
        return 0 if 2 <= dealer_upcard <= 6 else 1
    if player_total == 12:
        return 0 if 4 <= dealer_upcard <= 6 else 1
    return 1


def player_card_positions(n: int) -> list[tuple[int, int]]:
    """Up to four cards side by side; more overlap on one row so every card stays visible ("Blackjack layout" in docs/reference_differences.md)."""
    if n <= 4:
        return [(5 + 74 * i, 150) for i in range(n)]
    step = (_CANVAS_WIDTH - 10 - _CARD_SIZE[0]) / (n - 1)
    return [(5 + round(step * i), 150) for i in range(n)]


class BlackjackEnv(CardEnv):
    """Blackjack played from an image of the table.

    ## Description
    gymnasium's toy-text Blackjack (infinite deck, dealer stands on 17 including soft 17, no
    doubling or splitting), observed as a picture: the dealer's up-card and hole card (face down),
    and the player's cards.

    ## Action Space
    ``Discrete(2)``; ``action_names = ("stand", "hit")``.

    | index | name | effect |
    |---|---|---|
    | 0 | ``"stand"`` | the dealer plays out the hand and the episode ends |
    | 1 | ``"hit"`` | the player takes a card |

    ## Observation Space
    ``Dict(image=Box(0, 255, (H, W, 3), uint8), text=Text(512))``. The 300x300 felt-green image shows
    ``Dealer`` with the up-card and a card back, and ``Player`` with every player card (overlapping
    when there are more than four). ``text`` is ``""`` (the state is in the image, as in the paper);
    ``text_mode="full"`` gives ``"Dealer's card: K. Player's cards: 7, 9."`` for text-only agents.

    ## Starting State
    Two cards each; only the dealer's first card is face up. A value is drawn uniformly from
    1..9, 10, 10, 10, 10 and a suit uniformly; a ten-valued card shows J, Q or K.

    ## Rewards
    | event | reward |
    |---|---|
    | hit and bust | -1 |
    | stand and win / push / lose | +1 / 0 / -1 |
    | stand and win with a natural, ``natural=True`` | +1.5 |
    | player natural and dealer not, ``sab=True`` | +1 |

    ## Episode End
    Terminated on stand or bust. ``max_episode_steps=300`` never fires. ``info["success"]`` is True
    when the final reward is positive (the hand is won).

    ## Info
    ``Player Card`` and ``Dealer Card`` (lists of ``(value, face, suit)``, a :class:`Card`'s fields;
    ``Dealer Card`` includes the hole card: for logging only, never for the agent), ``dealer_upcard``, ``player_total``,
    ``usable_ace``, ``success``; with ``oracle_labels=True`` also the keys below.

    ## Oracle Labels
    ``oracle_labels=True`` adds (pairing and hashing: :mod:`vlm_envs.core.labels`):

    | key | after ``reset`` / ``step`` |
    |---|---|
    | ``state_key`` | sha256 of the rules (``natural``, ``sab``, ``compat``), the player's card values (as a multiset: the order they came in and suits and faces are left out) and the dealer's values, up-card first, hole card included |
    | ``oracle_action`` | basic strategy's action in that state (:func:`basic_strategy`); absent once terminated |
    | ``action_optimal`` | ``step`` only: the action just taken was basic strategy's |

    Basic strategy is the policy that maximises the expected return from what the player sees
    (total, usable ace, dealer's up-card) with an infinite deck (``tests/cards/test_oracles.py`` checks
    it against an exact dynamic program); the hole card in the key makes states finer than what
    the player sees, so equal observations can carry different keys.

    ## Arguments
    | argument | default | meaning |
    |---|---|---|
    | ``natural`` | False | a winning natural pays 1.5 |
    | ``sab`` | False | Sutton & Barto rules: a natural beats any non-natural dealer hand |
    | ``render_mode`` | None | ``"rgb_array"`` or ``"human"`` |
    | ``image_size`` | (300, 300) | (height, width) of the image, ints in 16..2048 |
    | ``text_mode`` | ``"prompt"`` | ``"full"``: state in words for text-only agents |
    | ``compat`` | False | the reference's rules: ``natural`` and ``sab`` never take effect ("Blackjack naturals" in docs/reference_differences.md) |
    | ``card_art`` | None | folder of card PNGs to use instead of the drawn cards; a path on the machine the env runs on (an env server takes it only from its own configuration) |
    | ``oracle_labels`` | False | add ``state_key``, ``oracle_action``, ``action_optimal`` to ``info`` |

    ## Version History
    * v0: RL4VLM's Blackjack with working naturals, all player cards visible, seeded draws only.
    """

    prompt_task = "blackjack"
    action_names = ("stand", "hit")

    def __init__(self, natural: bool = False, sab: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.natural, self.sab = check_bool("natural", natural), check_bool("sab", sab)
        self.action_space = spaces.Discrete(2)
        self.dealer: list[Card] = []
        self.player: list[Card] = []
        self._frame: np.ndarray | None = None

    def _start_episode(self, options: dict[str, Any]) -> dict[str, Any]:
        self.dealer = [draw_card(self.np_random), draw_card(self.np_random)]
        self.player = [draw_card(self.np_random), draw_card(self.np_random)]
        self._frame = None
        return self._get_info(success=False)

    def _apply_action(self, action: int) -> Transition:
        if action == 1:
            self.player.append(draw_card(self.np_random))
            self._frame = None
            terminated = hand_total(self.player) > 21
            reward = -1.0 if terminated else 0.0
        else:
            terminated = True
            while hand_total(self.dealer) < 17:
                self.dealer.append(draw_card(self.np_random))
            reward = float(np.sign(score(self.player) - score(self.dealer)))
            reward = self._natural_bonus(reward)
        return Transition(reward, terminated, False, self._get_info(success=terminated and reward > 0))

    def _natural_bonus(self, reward: float) -> float:
        if self.compat:
            return reward
        if self.sab and is_natural(self.player) and not is_natural(self.dealer):
            return 1.0
        if not self.sab and self.natural and is_natural(self.player) and reward == 1.0:
            return 1.5
        return reward

    def oracle_action(self) -> int:
        """Basic strategy for this rule set (hit/stand only, dealer stands on soft 17)."""
        return basic_strategy(hand_total(self.player), has_usable_ace(self.player), self.dealer[0].value)

    def _full_state(self) -> dict[str, Any]:
        return {"natural": self.natural, "sab": self.sab, "compat": self.compat,
                "player": sorted(card.value for card in self.player), "dealer": [card.value for card in self.dealer]}

    def _action_optimal(self, action: int, before: StateLabels) -> bool:
        """The action is basic strategy's in the state it was taken in."""
        return action == before.oracle_action

    def _get_info(self, success: bool) -> dict[str, Any]:
        return {
            # Plain tuples: info reads the same locally, from a vector env and from an env server.
            "Dealer Card": [tuple(card) for card in self.dealer],
            "Player Card": [tuple(card) for card in self.player],
            "dealer_upcard": tuple(self.dealer[0]),
            "player_total": hand_total(self.player),
            "usable_ace": has_usable_ace(self.player),
            "success": success,
        }

    def _text(self) -> str:
        return ""

    def _describe(self) -> str:
        faces = ", ".join(card.face for card in self.player)
        return f"Dealer's card: {self.dealer[0].face}. Player's cards: {faces}."

    def _render_frame(self) -> np.ndarray:
        if self._frame is None:  # the picture changes only when the player's hand does
            table = felt_table()
            blit_white_text(table, "Dealer", 5, 5, 16, bold=True)
            place_cards(table, [self.dealer[0].code, "back"], [(5, 25), (78, 25)], _CARD_SIZE, self.card_art)
            blit_white_text(table, "Player", 5, 130, 16, bold=True)
            codes = [card.code for card in self.player]
            place_cards(table, codes, player_card_positions(len(codes)), _CARD_SIZE, self.card_art)
            self._frame = to_frame(table, self.image_size)
        return self._frame.copy()
