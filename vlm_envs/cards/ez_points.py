"""EZPoints: combine two cards into a formula that equals 12."""

from __future__ import annotations

import operator

from vlm_envs.cards.deck import CARD_VALUES, RANKS, card_code, random_suit, rank_value
from vlm_envs.cards.formula_env import FormulaCardEnv
from vlm_envs.core.rendering import text_advance


class EZPointsEnv(FormulaCardEnv):
    """Build a formula equal to 12 from the two dealt cards, one token per step.

    ## Description
    Two cards are dealt face up. Every step appends a number or an operator to the formula; ``=``
    submits it. J, Q and K count as 10 and A as 1. Every hand is solvable with ``+`` or ``*``.

    ## Action Space
    ``Discrete(13)``; ``action_names`` is the text vocabulary used by prompts and the parser.

    | index | 0..9 | 10 | 11 | 12 |
    |---|---|---|---|---|
    | name | ``"1"`` .. ``"10"`` | ``"+"`` | ``"*"`` | ``"="`` |

    ## Observation Space
    ``Dict(image=Box(0, 255, (H, W, 3), uint8), text=Text(512))``. The 300x300 image shows the two
    cards and the caption ``Formula: 6 *``. ``text`` is the formula joined with no separator
    (``"6*"``), the ``{formula}`` of the prompt; with ``text_mode="full"`` it describes the whole
    state in words (cards, numbers, formula) for text-only agents.

    ## Starting State
    First card: rank uniform among those whose value some card value completes to the target by
    ``+`` or ``*`` (for 12: 2..13, never an ace), suit uniform. Second card: the value that
    completes it, by ``*`` or ``+`` with probability 1/2 each where both do (for 12: values 2, 3, 4,
    6), else by the one that does, as a number card (10 as ``T``) with a uniform suit, redrawn if
    it is the same physical card as the first (``compat=True`` allows the duplicate, as the
    reference). The two cards swap places with probability 1/2. For 12 this is the reference's
    draw, seed for seed.

    ## Rewards
    | event | reward |
    |---|---|
    | a number already used as often as it was dealt (a ``" "`` placeholder is appended) | -1 |
    | ``=`` with a formula equal to 12 that uses both cards | +10 |
    | ``=`` otherwise (wrong value, unused card, malformed formula) | -1 |
    | anything else | 0 |

    ## Episode End
    Terminated at ``=``. Truncated with -1 when a step starts with a formula longer than 5 tokens
    (the action of that step is ignored, as in the reference), and by ``max_episode_steps=300``.
    ``info["success"]`` is the paper's success: a ``=`` step that scored +10 with a positive episode
    return (fewer than 10 invalid-number penalties before it).

    ## Info
    ``Cards`` (codes like ``"HQ"``), ``Numbers`` (values, display order), ``Formula`` (token list),
    ``solvable``, ``target_points``, ``success``; with ``oracle_labels=True`` also the keys below.

    ## Oracle Labels
    ``oracle_labels=True`` adds (pairing and hashing: :mod:`vlm_envs.core.labels`):

    | key | after ``reset`` / ``step`` |
    |---|---|
    | ``state_key`` | sha256 of ``target_points``, ``compat``, the dealt values as a multiset (suits, faces and card order left out) and the formula's tokens |
    | ``oracle_action`` | ``oracle_action()`` in that state; absent once terminated |
    | ``action_optimal`` | ``step`` only: the token keeps an exact solution reachable with the cards left within the length limit (``env.unwrapped.completion()`` finds one); ``=`` when the formula is a solution. A number already used up never is. Once no solution is reachable, only ``=`` is optimal: the episode is lost, and ending it at once is the oracle's move. |

    The labels follow the exact rules, also with ``compat=True``. The oracle follows the solver's
    one solution and presses ``=`` as soon as the formula leaves it, even where another solution
    is still reachable (the formula started with the other card, say): there its
    ``oracle_action`` is not an optimal action, and ``env.unwrapped.completion()`` gives one that is.

    ## Arguments
    | argument | default | meaning |
    |---|---|---|
    | ``target_points`` | 12 | the value to reach: a sum or product of two card values (1..21, 24, 25, ..., 100; others raise ``ValueError``) |
    | ``render_mode`` | None | ``"rgb_array"`` or ``"human"`` |
    | ``image_size`` | (300, 300) | (height, width) of the image, ints in 16..2048 |
    | ``text_mode`` | ``"prompt"`` | ``"full"``: state in words for text-only agents |
    | ``compat`` | False | reference behaviour: ``eval`` semantics (digit concatenation, float ``/``) via a safe AST walker; identical cards allowed |
    | ``card_art`` | None | folder of card PNGs (``HQ.png``, ..., ``back.png``) to use instead of the drawn cards; a path on the machine the env runs on (an env server takes it only from its own configuration) |
    | ``oracle_labels`` | False | add ``state_key``, ``oracle_action``, ``action_optimal`` to ``info`` |

    ## Version History
    * v0: RL4VLM's EZPoints with the fixes listed in ``docs/reference_differences.md`` (seeding, exact evaluator, distinct cards).
    """

    prompt_task = "ezpoints"
    operators = "+*"
    n_cards = 2
    max_formula_length = 5
    card_size = (135, 189)
    card_positions = ((5, 55), (153, 55))
    label = ((10, 258), "Formula: ")
    formula_origin = (10 + text_advance("Formula: ", 20), 258)
    font_size = 20

    def __init__(self, target_points: int = 12, **kwargs):
        super().__init__(target_points=target_points, **kwargs)
        # The first card is one that some card completes to the target (for 12: never an ace).
        self._first_ranks = tuple(rank for rank in range(1, len(RANKS) + 1)
                                  if completing_values(rank_value(rank), self.target_points))

    @classmethod
    def reachable_targets(cls) -> frozenset[int]:
        return frozenset(_OPERATIONS[op](a, b) for op in cls.operators for a in CARD_VALUES for b in CARD_VALUES)

    def _deal(self) -> list[str]:
        rng = self.np_random
        first_rank = self._first_ranks[int(rng.integers(len(self._first_ranks)))]
        first = card_code(random_suit(rng), first_rank)
        completions = completing_values(rank_value(first_rank), self.target_points)
        ops = list(completions)
        value = completions[ops[int(rng.integers(2))] if len(ops) == 2 else ops[0]]
        second = card_code(random_suit(rng), value)
        while second == first and not self.compat:
            second = card_code(random_suit(rng), value)
        return [second, first] if rng.integers(2) else [first, second]


_OPERATIONS = {"+": operator.add, "*": operator.mul}


def completing_values(value: int, target: int) -> dict[str, int]:
    """The card values that make ``target`` with ``value``, by operator: ``{"+": target - value,
    "*": target / value}``, each only where it is a whole card value."""
    found = {"+": target - value}
    if target % value == 0:
        found["*"] = target // value
    return {op: other for op, other in found.items() if other in CARD_VALUES}
