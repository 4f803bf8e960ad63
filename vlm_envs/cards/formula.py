"""Exact formula evaluation and an exact solver for the point games (spec envs.md §5).

A formula is the list of tokens the agent appended: ``int`` card values and the operator strings
``+ - * / ( )``; ``" "`` placeholders (invalid-number turns) are ignored. Nothing here calls
``eval``.

Grammar (each number token is one card value; no unary operators, no digit concatenation)::

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := NUMBER | '(' expr ')'
"""

from __future__ import annotations

import ast
import functools
import itertools
import operator
from fractions import Fraction
from typing import Sequence, Union

Token = Union[int, str]
PLACEHOLDER = " "
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


class FormulaError(ValueError):
    """A formula that does not parse or cannot be evaluated; the message says why."""


def format_formula(tokens: Sequence[Token], sep: str = "") -> str:
    """Join tokens as the reference does: no separator in prompts, single spaces in images."""
    return sep.join(str(t) for t in tokens)


class _Parser:
    def __init__(self, tokens: Sequence[Token]):
        self.tokens = [t for t in tokens if t != PLACEHOLDER]
        self.pos = 0

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def parse(self) -> Fraction:
        if not self.tokens:
            raise FormulaError("empty formula")
        value = self.expr()
        if self.pos != len(self.tokens):
            raise FormulaError(f"unexpected {self.peek()!r} at position {self.pos}")
        return value

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = _OPS[self.take()](value, self.term())  # type: ignore[index]
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op, right = self.take(), self.factor()
            if op == "/" and right == 0:
                raise FormulaError("division by zero")
            value = _OPS[op](value, right)  # type: ignore[index]
        return value

    def factor(self) -> Fraction:
        token = self.peek()
        if token is None:
            raise FormulaError("formula ends where a number or '(' is expected")
        if isinstance(token, int) and not isinstance(token, bool):
            self.take()
            return Fraction(token)
        if token == "(":
            self.take()
            value = self.expr()
            if self.peek() != ")":
                raise FormulaError("missing ')'")
            self.take()
            return value
        raise FormulaError(f"expected a number or '(' at position {self.pos}, got {token!r}")


def evaluate(tokens: Sequence[Token]) -> Fraction:
    """The exact value of a formula; raises :class:`FormulaError` with a reason if malformed."""
    return _Parser(tokens).parse()


# -- reference (compat) evaluation ---------------------------------------------------------------
_MAX_EXPONENT = 64  # `10**10**10` would hang the reference; such values can never hit the target
_COMPAT_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}
_COMPAT_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _compat_node(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _COMPAT_UNARY:
        return _COMPAT_UNARY[type(node.op)](_compat_node(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _COMPAT_BINOPS:
        left, right = _compat_node(node.left), _compat_node(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise FormulaError("exponent too large")
        return _COMPAT_BINOPS[type(node.op)](left, right)
    raise FormulaError(f"unsupported expression {type(node).__name__}")


def evaluate_compat(tokens: Sequence[Token]) -> float | int:
    """What the reference's ``eval("".join(tokens))`` returns, computed by a restricted AST walker.

    Digits concatenate (``1``, ``2`` is twelve), ``**`` is power, ``//`` floor division, unary
    signs are allowed and ``/`` is float division, exactly as Python would evaluate the string.
    """
    text = format_formula(tokens)
    try:
        tree = ast.parse(text, mode="eval")
        return _compat_node(tree.body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError, MemoryError) as err:
        raise FormulaError(f"reference eval fails: {err}") from None


# -- solver --------------------------------------------------------------------------------------
# Sub-problems already known to have no solution, keyed by (target, ops, parentheses, state).
_DEAD_ENDS: set[tuple] = set()


_FLOAT_OPS = {"+": float.__add__, "-": float.__sub__, "*": float.__mul__, "/": float.__truediv__}


@functools.lru_cache(maxsize=None)
def _solve(values: tuple[int, ...], target: int, ops: str, parentheses: bool) -> tuple[Token, ...] | None:
    # Floats make the search ~10x faster than Fractions; every candidate is then checked exactly.
    items = [(float(v), (v,), _ATOM) for v in values]
    return _search(items, target, ops, parentheses)


def _wrap(tokens: tuple[Token, ...], needs: bool) -> tuple[Token, ...]:
    return ("(", *tokens, ")") if needs else tokens


def _search(items: list, target: int, ops: str, parentheses: bool) -> tuple[Token, ...] | None:
    if len(items) == 1:
        value, tokens, _ = items[0]
        return tokens if abs(value - target) < 1e-6 and evaluate(tokens) == target else None
    # Without parentheses an operand's precedence limits what it can combine with, so it is part
    # of the state; with them, only the multiset of values matters.
    state = tuple(sorted((round(value, 9), 0 if parentheses else prec) for value, _, prec in items))
    key = (target, ops, parentheses, state)
    if key in _DEAD_ENDS:
        return None
    for i, j in itertools.permutations(range(len(items)), 2):
        (a, ta, pa), (b, tb, pb) = items[i], items[j]
        rest = [item for k, item in enumerate(items) if k not in (i, j)]
        for op in ops:
            if op == "/" and b == 0:
                continue
            prec = _PRECEDENCE[op]
            left_paren = pa < prec
            right_paren = pb < prec or (pb == prec and op in "-/")
            if not parentheses and (left_paren or right_paren):
                continue
            tokens = (*_wrap(ta, left_paren), op, *_wrap(tb, right_paren))
            found = _search([*rest, (_FLOAT_OPS[op](a, b), tokens, prec)], target, ops, parentheses)
            if found is not None:
                return found
    _DEAD_ENDS.add(key)
    return None


def solve(values: Sequence[int], target: int, ops: str = "+-*/", parentheses: bool = True) -> list[Token] | None:
    """A formula using every value exactly once that equals ``target`` exactly, or ``None``.

    The result is a token list such as ``[8, "/", "(", 3, "-", 8, "/", 3, ")"]``. Results are
    cached by the sorted values, so repeated hands cost nothing.
    """
    found = _solve(tuple(sorted(values)), target, ops, parentheses)
    return None if found is None else list(found)
