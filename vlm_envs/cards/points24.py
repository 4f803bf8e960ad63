"""Points24: combine four cards into a formula that equals 24."""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import numpy as np

from vlm_envs.core.arguments import check_bool
from vlm_envs.cards.deck import CARD_VALUES, deal_distinct, deal_values, deal_with_replacement, hand_probability
from vlm_envs.cards.formula import reachable_integers
from vlm_envs.cards.formula_env import FormulaCardEnv


class Points24Env(FormulaCardEnv):
    """Build a formula equal to 24 from the four dealt cards, one token per step.

    ## Description
    The classic 24 game: four cards, each used exactly once, with ``+ - * /`` and parentheses.
    J, Q and K count as 10 and A as 1. Arithmetic is exact (fractions), so ``8/(3-8/3)`` is 24.
    Many hands have no solution (as in the paper); ``info["solvable"]`` says which.

    ## Action Space
    ``Discrete(17)``; ``action_names`` is the text vocabulary used by prompts and the parser.

    | index | 0..9 | 10 | 11 | 12 | 13 | 14 | 15 | 16 |
    |---|---|---|---|---|---|---|---|---|
    | name | ``"1"`` .. ``"10"`` | ``"+"`` | ``"-"`` | ``"*"`` | ``"/"`` | ``"("`` | ``")"`` | ``"="`` |

    ## Observation Space
    ``Dict(image=Box(0, 255, (H, W, 3), uint8), text=Text(512))``. The 300x300 image shows the four
    cards and the formula under a ``Formula:`` label. ``text`` is the formula joined with no
    separator, the prompt's ``{formula}``; ``text_mode="full"`` describes the state in words.

    ## Starting State
    Four different cards from a shuffled 52-card deck (``compat=True``: four independent draws
    with replacement, as the reference). ``solvable_only=True`` deals from the hands with an exact
    solution, each with its probability under that deal, in one draw (what dealing again until a
    hand is solvable would give, without the wait).

    ## Rewards
    | event | reward |
    |---|---|
    | a number already used as often as it was dealt (a ``" "`` placeholder is appended) | -1 |
    | ``=`` with a formula equal to 24 that uses all four cards | +10 |
    | ``=`` otherwise (wrong value, unused card, malformed formula, division by zero) | -1 |
    | anything else | 0 |

    ## Episode End
    Terminated at ``=``. Truncated with -1 when a step starts with a formula longer than 20 tokens
    (that step's action is ignored, as in the reference), and by ``max_episode_steps=300``.
    ``info["success"]`` is the paper's success: a ``=`` step that scored +10 with a positive episode
    return (fewer than 10 invalid-number penalties before it).

    ## Info
    ``Cards``, ``Numbers``, ``Formula``, ``solvable`` (an exact solution exists), ``target_points``, ``success``;
    with ``oracle_labels=True`` also the keys below.

    ## Oracle Labels
    ``oracle_labels=True`` adds (pairing and hashing: :mod:`vlm_envs.core.labels`):

    | key | after ``reset`` / ``step`` |
    |---|---|
    | ``state_key`` | sha256 of ``target_points``, ``compat``, the dealt values as a multiset (suits, faces and card order left out) and the formula's tokens |
    | ``oracle_action`` | ``oracle_action()`` in that state; absent once terminated |
    | ``action_optimal`` | ``step`` only: the token keeps an exact solution reachable with the cards left within the length limit (``env.unwrapped.completion()`` finds one); ``=`` when the formula is a solution. A number already used up never is. Once no solution is reachable, only ``=`` is optimal: the episode is lost, and ending it at once is the oracle's move. An unsolvable hand is lost from the start: ``=`` is optimal at once, as the oracle plays it. |

    The labels follow the exact rules, also with ``compat=True``. The oracle follows the solver's
    one solution and presses ``=`` as soon as the formula leaves it, even where another solution
    is still reachable (the formula started with the other card, say): there its
    ``oracle_action`` is not an optimal action, and ``env.unwrapped.completion()`` gives one that is.

    ## Arguments
    | argument | default | meaning |
    |---|---|---|
    | ``target_points`` | 24 | the value to reach: one of the 1,718 integers from -999 to 10,000 that some four cards make exactly (``Points24Env.reachable_targets()``; others raise ``ValueError``, also with ``compat=True``) |
    | ``treat_face_cards_as_10`` | True | only True is supported (the reference has no prompt or parser for False) |
    | ``solvable_only`` | False | deal only hands with an exact solution |
    | ``render_mode`` | None | ``"rgb_array"`` or ``"human"`` |
    | ``image_size`` | (300, 300) | (height, width) of the image, ints in 16..2048 |
    | ``text_mode`` | ``"prompt"`` | ``"full"``: state in words for text-only agents |
    | ``compat`` | False | reference behaviour: ``eval`` semantics (float ``/``, digit concatenation) via a safe AST walker; cards drawn with replacement |
    | ``card_art`` | None | folder of card PNGs to use instead of the drawn cards; a path on the machine the env runs on (an env server takes it only from its own configuration) |
    | ``oracle_labels`` | False | add ``state_key``, ``oracle_action``, ``action_optimal`` to ``info`` |

    ## Version History
    * v0: RL4VLM's Points24 with the fixes listed in ``docs/reference_differences.md`` (seeding, exact fractions, distinct cards).
    """

    prompt_task = "points24"
    operators = "+-*/()"
    n_cards = 4
    max_formula_length = 20
    card_size = (67, 93)
    card_positions = ((5, 103), (78, 103), (152, 103), (226, 103))
    label = ((10, 210), "Formula:")
    formula_origin = (10.0, 240)
    font_size = 16

    def __init__(
        self,
        target_points: int = 24,
        treat_face_cards_as_10: bool = True,
        solvable_only: bool = False,
        **kwargs,
    ):
        if not check_bool("treat_face_cards_as_10", treat_face_cards_as_10):
            raise ValueError(
                "treat_face_cards_as_10=False is not supported: the reference prompts and parser "
                "only know the numbers 1..10 (docs/reference_differences.md, \"Points24 face cards\")"
            )
        self.solvable_only = check_bool("solvable_only", solvable_only)
        super().__init__(target_points=target_points, **kwargs)
        if self.solvable_only:
            self._solvable_hands, self._hand_weights = self._hands_reaching(self.target_points)

    @classmethod
    def reachable_targets(cls) -> frozenset[int]:
        return _reach_table(cls.n_cards, cls.operators).targets

    def solution(self) -> list | None:
        """An exact solution for the dealt cards, or ``None``; a hand that cannot reach the target
        is refuted from the table of reachable integers, without a search (~25 ms)."""
        reached = _reach_table(self.n_cards, self.operators).by_hand[tuple(sorted(self.numbers))]
        return super().solution() if _holds(reached, self.target_points) else None

    def _hands_reaching(self, target: int) -> tuple[tuple[tuple[int, ...], ...], np.ndarray]:
        """The hands (values) with an exact solution for ``target``, and each one's share of the deals that have one."""
        by_hand = _reach_table(self.n_cards, self.operators).by_hand
        solvable = tuple(hand for hand, reached in by_hand.items() if _holds(reached, target))
        weights = np.array([hand_probability(hand, distinct=not self.compat) for hand in solvable])
        return solvable, weights / weights.sum()

    def _deal(self) -> list[str]:
        if not self.solvable_only:
            deal = deal_with_replacement if self.compat else deal_distinct
            return deal(self.np_random, self.n_cards)
        # A deal conditioned on having a solution, in one draw: a hand by its probability among
        # the solvable ones, then its cards (dealing again until one is solvable can take
        # thousands of deals for a rare target).
        hand = self._solvable_hands[int(self.np_random.choice(len(self._solvable_hands), p=self._hand_weights))]
        return deal_values(self.np_random, hand, distinct=not self.compat)


class _Reach(NamedTuple):
    by_hand: dict[tuple[int, ...], np.ndarray]  # sorted hand -> the sorted integers it reaches exactly
    targets: frozenset[int]  # every integer some hand reaches


@functools.cache
def _reach_table(n_cards: int, operators: str) -> _Reach:
    """What every hand of ``n_cards`` card values reaches with the ``+ - * /`` in ``operators``
    (with parentheses). Computed once per process (~0.4 s)."""
    hands = itertools.combinations_with_replacement(CARD_VALUES, n_cards)
    by_hand = reachable_integers(hands, operators.replace("(", "").replace(")", ""))
    return _Reach(by_hand, frozenset(np.concatenate(list(by_hand.values())).tolist()))


def _holds(sorted_values: np.ndarray, value: int) -> bool:
    i = int(np.searchsorted(sorted_values, value))
    return i < len(sorted_values) and int(sorted_values[i]) == value
