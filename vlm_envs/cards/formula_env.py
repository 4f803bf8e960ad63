"""What EZPoints and Points24 share: building a formula from the dealt cards, token by token."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
from gymnasium import spaces

from vlm_envs.core.arguments import check_int
from vlm_envs.cards.card_env import CardEnv
from vlm_envs.cards.deck import card_value
from vlm_envs.cards.drawing import felt_table, place_cards
from vlm_envs.cards.formula import (
    PLACEHOLDER,
    FormulaError,
    Token,
    complete,
    evaluate,
    evaluate_compat,
    format_formula,
    solve,
)
from vlm_envs.core import Transition
from vlm_envs.core.labels import StateLabels
from vlm_envs.core.rendering import blit_white_text, text_advance, to_frame

SOLVED_REWARD = 10.0
FAIL_REWARD = -1.0
NUMBER_NAMES = tuple(str(v) for v in range(1, 11))


class FormulaCardEnv(CardEnv):
    """Shared rules of the point games; subclasses set the class attributes and ``_deal``.

    Step semantics (the RL4VLM code's): a number is valid while it has been used fewer
    times than it was dealt; an invalid number appends a ``" "`` placeholder and costs -1; ``=``
    ends the episode and scores +10 for a formula that uses every card once and equals the target
    exactly, -1 otherwise; a formula longer than ``max_formula_length`` at the start of a step
    ends the episode as truncated with -1 (the action is ignored, as in the reference).
    """

    operators: str = ""
    n_cards: int = 0
    max_formula_length: int = 0
    # Layout of the 300x300 frame.
    card_size: tuple[int, int] = (0, 0)
    card_positions: tuple[tuple[int, int], ...] = ()
    label: tuple[tuple[int, int], str] = ((0, 0), "")  # where the "Formula:" label goes
    formula_origin: tuple[float, int] = (0.0, 0)  # where the first token goes
    font_size: int = 16

    def __init__(self, target_points: int, **kwargs):
        super().__init__(**kwargs)
        self.target_points = self._check_target(target_points)
        self.prompt_params = {"target": self.target_points}
        self.action_names = NUMBER_NAMES + tuple(self.operators) + ("=",)
        self.action_space = spaces.Discrete(len(self.action_names))
        self.cards: list[str] = []
        self.numbers: list[int] = []
        self.formula: list[Token] = []
        self.used: list[int] = []
        self.episode_return = 0.0
        self._canvas: np.ndarray | None = None  # cards, label and the tokens drawn so far
        self._drawn = 0
        self._pen_x = 0.0

    # -- to implement -------------------------------------------------------------------------
    @abc.abstractmethod
    def _deal(self) -> list[str]:
        """The codes of the cards of a new episode, drawn from ``self.np_random``."""

    @classmethod
    @abc.abstractmethod
    def reachable_targets(cls) -> frozenset[int]:
        """Every target that some hand this game deals can reach under the exact rules."""

    def _check_target(self, target_points: object) -> int:
        target = check_int("target_points", target_points)
        reachable = self.reachable_targets()
        if target not in reachable:
            ops = " ".join(self._arithmetic()[0])
            listed = (", ".join(map(str, sorted(reachable))) if len(reachable) <= 64
                      else f"{len(reachable):,} integers from {min(reachable)} to {max(reachable)}")
            raise ValueError(f"target_points={target} cannot be reached: no hand of {self.n_cards} cards makes it "
                             f"with {ops}; the reachable targets are {listed}")
        return target

    # -- VLMEnv hooks ------------------------------------------------------------------------
    def _start_episode(self, options: dict[str, Any]) -> dict[str, Any]:
        self.cards = self._deal()
        self.numbers = [card_value(code) for code in self.cards]
        self.formula, self.used = [], []
        self.episode_return = 0.0
        self._canvas = None
        return self._get_info(success=False)

    def _apply_action(self, action: int) -> Transition:
        symbol = self.action_names[action]
        reward, terminated, truncated, success = 0.0, False, False, False
        if len(self.formula) > self.max_formula_length:
            reward, truncated = FAIL_REWARD, True
        elif symbol == "=":
            reward, terminated = self._score(), True
            # The paper's success: a positive episode return (solved, and fewer than 10 penalties).
            success = reward == SOLVED_REWARD and self.episode_return + reward > 0
        elif symbol.isdigit():
            value = int(symbol)
            if self.used.count(value) < self.numbers.count(value):
                self.used.append(value)
                self.formula.append(value)
            else:
                self.formula.append(PLACEHOLDER)
                reward = FAIL_REWARD
        else:
            self.formula.append(symbol)
        self.episode_return += reward
        return Transition(reward, terminated, truncated, self._get_info(success=success))

    # -- rules --------------------------------------------------------------------------------
    def _score(self) -> float:
        """Reward of ``=``: +10 for an exact solution that uses every card once, else -1."""
        try:
            if self.compat:  # reference: float/eval semantics, then the card-count rule
                value = evaluate_compat(self.formula)
                return SOLVED_REWARD if value == self.target_points and len(self.used) == self.n_cards else FAIL_REWARD
            value = evaluate(self.formula)
        except FormulaError:
            return FAIL_REWARD
        uses_every_card = sorted(self.used) == sorted(self.numbers)
        return SOLVED_REWARD if uses_every_card and value == self.target_points else FAIL_REWARD

    def _arithmetic(self) -> tuple[str, bool]:
        """This game's operators, and whether it has parentheses."""
        return self.operators.replace("(", "").replace(")", ""), "(" in self.operators

    def solution(self) -> list[Token] | None:
        """An exact solution for the dealt cards with this game's operators, or ``None``."""
        return solve(self.numbers, self.target_points, *self._arithmetic())

    def completion(self, formula: list[Token] | None = None) -> list[Token] | None:
        """Tokens that turn ``formula`` (default: the current one) into an exact solution with the
        cards left, within the length limit (``[]``: it is one); ``None`` when no tokens can."""
        formula = self.formula if formula is None else formula
        ops, parentheses = self._arithmetic()
        return complete(formula, self.numbers, self.target_points, ops, parentheses, self.max_formula_length)

    def oracle_action(self) -> int:
        """The next token of the solver's exact solution; ``=`` once the formula has left it.

        The oracle follows one solution from the empty formula; after a deviation (or for an
        unsolvable Points24 hand) it presses ``=`` to end the episode at once.
        """
        solution = self.solution()
        done = len(self.formula)
        if solution is None or self.formula != solution[:done] or done == len(solution):
            return self.action_names.index("=")
        return self.action_names.index(str(solution[done]))

    def _full_state(self) -> dict[str, Any]:
        return {"target_points": self.target_points, "compat": self.compat, "numbers": sorted(self.numbers),
                "formula": list(self.formula)}

    def _action_optimal(self, action: int, before: StateLabels) -> bool:
        """The token keeps an exact solution reachable (``=``: the formula is one); once none is
        reachable, only ``=`` is: the episode is lost, and ending it at once is the oracle's move."""
        formula, symbol = before.state["formula"], self.action_names[action]
        rest = self.completion(formula)
        if rest is None:
            return symbol == "="
        if symbol == "=":
            return rest == []
        return self.completion([*formula, int(symbol) if symbol.isdigit() else symbol]) is not None

    # -- observation --------------------------------------------------------------------------
    def _get_info(self, success: bool) -> dict[str, Any]:
        return {
            "Cards": list(self.cards),
            "Numbers": list(self.numbers),
            "Formula": list(self.formula),
            "solvable": self.solution() is not None,
            "target_points": self.target_points,
            "success": success,
        }

    def _text(self) -> str:
        return format_formula(self.formula)

    def _describe(self) -> str:
        return f"Cards: {self.cards!r}. Numbers: {self.numbers!r}. Current formula: {format_formula(self.formula)}."

    def _render_frame(self) -> np.ndarray:
        if self._canvas is None:  # the cards change only at reset: compose them once per episode
            self._canvas = felt_table()
            place_cards(self._canvas, self.cards, list(self.card_positions), self.card_size, self.card_art)
            (x, y), text = self.label
            blit_white_text(self._canvas, text, x, y, self.font_size)
            self._drawn, self._pen_x = 0, self.formula_origin[0]
        # The formula only grows, so only new tokens are drawn, space-separated as in the reference.
        for token in self.formula[self._drawn :]:
            blit_white_text(self._canvas, str(token), round(self._pen_x), self.formula_origin[1], self.font_size)
            self._pen_x += text_advance(f"{token} ", self.font_size)
        self._drawn = len(self.formula)
        return to_frame(self._canvas, self.image_size)
