"""EZPoints: combine two cards into a formula that equals 12."""

from __future__ import annotations

from vlm_envs.cards.deck import card_code, random_suit
from vlm_envs.cards.formula_env import FormulaCardEnv
from vlm_envs.rendering import text_advance


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
    First card: rank uniform in 2..13 (never an ace), suit uniform. Second card: the value that
    completes 12 by ``*`` (for values 2, 3, 4, 6, with probability 1/2) or by ``+``, as a number card
    with a uniform suit, redrawn if it is the same physical card as the first (``compat=True``
    allows the duplicate, as the reference). The two cards swap places with probability 1/2.

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
    ``oracle_labels=True`` adds (pairing and hashing: :mod:`vlm_envs.labels`):

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
    | ``target_points`` | 12 | the value to reach |
    | ``render_mode`` | None | ``"rgb_array"`` or ``"human"`` |
    | ``image_size`` | (300, 300) | (height, width) of the image |
    | ``text_mode`` | ``"prompt"`` | ``"full"``: state in words for text-only agents |
    | ``compat`` | False | reference behaviour: ``eval`` semantics (digit concatenation, float ``/``) via a safe AST walker; identical cards allowed |
    | ``card_art`` | None | folder of card PNGs (``HQ.png``, ..., ``back.png``) to use instead of the drawn cards |
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

    def _deal(self) -> list[str]:
        rng = self.np_random
        first_rank = int(rng.integers(2, 14))
        first = card_code(random_suit(rng), first_rank)
        v1 = min(first_rank, 10)
        v2 = self.target_points // v1 if v1 in (1, 2, 3, 4, 6) and rng.integers(2) else self.target_points - v1
        second = card_code(random_suit(rng), v2)
        while second == first and not self.compat:
            second = card_code(random_suit(rng), v2)
        return [second, first] if rng.integers(2) else [first, second]
