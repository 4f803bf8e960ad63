"""Exact formula evaluation, an exact solver and a completion search for the point games.

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
import itertools
import operator
import sys
from collections import Counter
from fractions import Fraction
from typing import Iterable, Sequence, Union

import numpy as np

from vlm_envs.core.caching import ByteLRU, byte_lru_cache, deep_sizeof

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


# The evaluator reads tokens left to right and keeps its state: one level per open parenthesis
# (the outermost first), each ``(sum of its finished terms, sign of the open term, product of the
# open term's factors so far or None, pending "*" or "/" or None)``, and whether an operand (a
# number or "(") must come next. Being incremental, it also gives the state of an unfinished
# formula, which the completion search below starts from.
_Level = tuple
_State = tuple[tuple[_Level, ...], bool]
_NEW_LEVEL: _Level = (Fraction(0), 1, None, None)
_START: _State = ((_NEW_LEVEL,), True)


def _apply_factor(levels: tuple[_Level, ...], value: Fraction) -> tuple[_Level, ...] | None:
    """The levels once the innermost one takes ``value`` as its next factor; ``None`` if that divides by zero."""
    total, sign, term, pending = levels[-1]
    if term is not None and pending == "/" and value == 0:
        return None
    term = value if term is None else _OPS[pending](term, value)
    return (*levels[:-1], (total, sign, term, None))


def _feed(state: _State, token: Token, position: int) -> _State:
    """The state after ``token``, the ``position``-th (placeholders not counted); raises
    :class:`FormulaError` if it cannot come there."""
    levels, operand_due = state
    if operand_due:
        if isinstance(token, int) and not isinstance(token, bool):
            return _checked(_apply_factor(levels, Fraction(token))), False
        if token == "(":
            return (*levels, _NEW_LEVEL), True
        raise FormulaError(f"expected a number or '(' at position {position}, got {token!r}")
    total, sign, term, _ = levels[-1]
    if token in ("+", "-"):
        return (*levels[:-1], (total + sign * term, 1 if token == "+" else -1, None, None)), True
    if token in ("*", "/"):
        return (*levels[:-1], (total, sign, term, token)), True
    if token == ")" and len(levels) > 1:
        return _checked(_apply_factor(levels[:-1], total + sign * term)), False
    raise FormulaError(f"unexpected {token!r} at position {position}")


def _checked(levels: tuple[_Level, ...] | None) -> tuple[_Level, ...]:
    if levels is None:
        raise FormulaError("division by zero")
    return levels


def _parse(tokens: Sequence[Token]) -> _State:
    """The evaluator's state after ``tokens`` (placeholders skipped)."""
    state = _START
    for position, token in enumerate(t for t in tokens if t != PLACEHOLDER):
        state = _feed(state, token, position)
    return state


def evaluate(tokens: Sequence[Token]) -> Fraction:
    """The exact value of a formula; raises :class:`FormulaError` with a reason if malformed."""
    if all(t == PLACEHOLDER for t in tokens):
        raise FormulaError("empty formula")
    levels, operand_due = _parse(tokens)
    if operand_due:
        raise FormulaError("formula ends where a number or '(' is expected")
    if len(levels) > 1:
        raise FormulaError("missing ')'")
    total, sign, term, _ = levels[0]
    return total + sign * term


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
# The solver's and the completion search's caches are keyed by target, which a remote client
# chooses, so each is bounded in bytes. Sub-problems known to have no solution, keyed by
# (target, ops, parentheses, state), are shared by every hand of a target (3-4x faster searches).
_STATE_ITEM_BYTES = sys.getsizeof((0.0, 0)) + sys.getsizeof(0.0) + sys.getsizeof(2**30)


def _dead_end_bytes(key: tuple, _: bool) -> int:
    """:func:`deep_sizeof` of a dead end's key, from its fixed shape (sizing each of the many small
    keys object by object would slow the search by half)."""
    target, ops, parentheses, state = key
    return (sys.getsizeof(key) + sys.getsizeof(target) + sys.getsizeof(ops) + 2 * sys.getsizeof(parentheses)
            + sys.getsizeof(state) + len(state) * _STATE_ITEM_BYTES)


_DEAD_ENDS = ByteLRU("formula.dead_ends", 8 * 2**20, _dead_end_bytes)


_FLOAT_OPS = {"+": float.__add__, "-": float.__sub__, "*": float.__mul__, "/": float.__truediv__}


@byte_lru_cache("formula.solutions", 2**20)
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
    _DEAD_ENDS.put(key, True)
    return None


def solve(values: Sequence[int], target: int, ops: str = "+-*/", parentheses: bool = True) -> list[Token] | None:
    """A formula using every value exactly once that equals ``target`` exactly, or ``None``.

    The result is a token list such as ``[8, "/", "(", 3, "-", 8, "/", 3, ")"]``. Results are
    cached by the sorted values, so repeated hands cost nothing.
    """
    found = _solve(tuple(sorted(values)), target, ops, parentheses)
    return None if found is None else list(found)


# -- reachable targets ---------------------------------------------------------------------------
_ARRAY_OPS = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}
_MAX_EXACT_VALUE, _MAX_EXACT_VALUES = 13, 4


def reachable_integers(hands: Iterable[Sequence[int]], ops: str = "+-*/") -> dict[tuple[int, ...], np.ndarray]:
    """Every integer a formula with parentheses and ``ops`` reaches exactly from each hand, using
    each value once: a sorted int array per hand, keyed by the sorted hand.

    The search is over values, like :func:`_pieces`: a multiset splits into two parts in every
    way, and each value of one part meets each value of the other. It runs on floats, ~30x faster
    than fractions, and is exact for hands of at most four values of at most 13: every value is
    then a fraction whose denominator is at most 13**3, so two different values differ by more
    than 1e-7 (merging values equal to 9 decimals never merges two of them), a value that is not
    an integer is more than 1e-4 from one, and float error stays below 1e-10.
    """
    hands = [tuple(sorted(hand)) for hand in hands]
    if any(len(hand) > _MAX_EXACT_VALUES or max(hand) > _MAX_EXACT_VALUE for hand in hands):
        raise ValueError(f"reachable_integers is exact for hands of at most {_MAX_EXACT_VALUES} values of at most "
                         f"{_MAX_EXACT_VALUE}")
    values: dict[tuple[int, ...], np.ndarray] = {}

    def combined(multiset: tuple[int, ...]) -> np.ndarray:
        """Every finite value of ``part op rest``, over the splits of ``multiset``, with repeats."""
        results = []
        for part, rest in _submultisets(multiset):
            if part and rest:
                left, right = reach(part), reach(rest)
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    results += [_ARRAY_OPS[op].outer(left, right).ravel() for op in ops]
        found = np.concatenate(results)
        return found[np.isfinite(found)]

    def reach(multiset: tuple[int, ...]) -> np.ndarray:
        if multiset not in values:
            if len(multiset) == 1:
                values[multiset] = np.array(multiset, dtype=float)
            else:
                found = combined(multiset)
                _, first = np.unique(np.round(found, 9), return_index=True)  # the values themselves stay unrounded
                values[multiset] = found[first]
        return values[multiset]

    integers = {}
    for hand in hands:
        found = combined(hand) if len(hand) > 1 else reach(hand)
        nearest = np.round(found)
        integers[hand] = np.unique(nearest[np.abs(found - nearest) < 1e-6]).astype(np.int64)
    return integers


# -- completion ----------------------------------------------------------------------------------
def _submultisets(values: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every way to split ``values`` into a part and the rest (as sorted tuples), each split once."""
    splits = set()
    for mask in range(1 << len(values)):
        part = tuple(v for i, v in enumerate(values) if mask >> i & 1)
        rest = tuple(v for i, v in enumerate(values) if not mask >> i & 1)
        splits.add((part, rest))
    return sorted(splits)


def _keep(table: dict, value: Fraction, tokens: tuple[Token, ...]) -> None:
    """Record ``tokens`` for ``value`` unless ``table`` already has a shorter way to write it."""
    if value not in table or len(tokens) < len(table[value]):
        table[value] = tokens


# An upper bound of a _pieces table item's bytes beyond its token objects (small ints and
# operator strings, which Python shares): the Fraction key with its two ints and the tokens'
# tuple, which the allocator rounds up to 16 bytes.
_PIECE_ITEM_BYTES = sys.getsizeof(Fraction(1, 3)) + 2 * sys.getsizeof(2**30) + sys.getsizeof(()) + 16


def _pieces_bytes(key: tuple, tables: tuple[dict, ...]) -> int:
    """:func:`deep_sizeof` of a :func:`_pieces` entry, bounded from above in a pass over the
    tokens (sizing every object costs ~10x the search that built them)."""
    items = sum(sys.getsizeof(table) + _PIECE_ITEM_BYTES * len(table) + 8 * sum(map(len, table.values()))
                for table in tables)
    return deep_sizeof(key) + sys.getsizeof(tables) + items


@byte_lru_cache("formula.pieces", 32 * 2**20, _pieces_bytes)
def _pieces(values: tuple[int, ...], ops: str, parentheses: bool) -> tuple[dict, dict, dict, dict]:
    """The shortest way to write each value reachable with exactly ``values`` (sorted), as four kinds
    of piece: a factor (a number, or a parenthesised expression), a term (factors joined by ``*``
    and ``/``), a multiplicative tail (``* f / g ...``, keyed by the multiplier it applies) and an
    additive tail (``+ t - u ...``, keyed by the amount it adds). Each maps value -> tokens."""
    if len(values) == 1:
        factor: dict = {Fraction(values[0]): (values[0],)}
        term = dict(factor)
    else:
        split = [(a, b) for a, b in _submultisets(values) if a and b]
        term, grouped = {}, {}  # terms of several factors; expressions of several terms
        for a, b in split:
            for f, f_tokens in _pieces(a, ops, parentheses)[0].items():
                for r, r_tokens in _pieces(b, ops, parentheses)[2].items():
                    _keep(term, f * r, f_tokens + r_tokens)
            for t, t_tokens in _pieces(a, ops, parentheses)[1].items():
                for w, w_tokens in _pieces(b, ops, parentheses)[3].items():
                    _keep(grouped, t + w, t_tokens + w_tokens)
        factor = {}
        if parentheses:
            for table in (term, grouped):
                for value, tokens in table.items():
                    _keep(factor, value, ("(", *tokens, ")"))
        for value, tokens in factor.items():
            _keep(term, value, tokens)
    multiply, add = {}, {}
    for f, tokens in factor.items():
        if "*" in ops:
            _keep(multiply, f, ("*", *tokens))
        if "/" in ops and f != 0:
            _keep(multiply, 1 / f, ("/", *tokens))
    for t, tokens in term.items():
        if "+" in ops:
            _keep(add, t, ("+", *tokens))
        if "-" in ops:
            _keep(add, -t, ("-", *tokens))
    for a, b in _submultisets(values):
        if a and b:
            for table, combine in ((multiply, operator.mul), (add, operator.add)):
                pieces_a, pieces_b = (_pieces(x, ops, parentheses)[2 if table is multiply else 3] for x in (a, b))
                for x, x_tokens in pieces_a.items():
                    for y, y_tokens in pieces_b.items():
                        _keep(table, combine(x, y), x_tokens + y_tokens)
    return factor, term, multiply, add


_NOTHING = {Fraction(1): ()}  # an empty multiplicative tail
_NO_TERMS = {Fraction(0): ()}  # an empty additive tail


@byte_lru_cache("formula.completions", 4 * 2**20)
def _finish(state: _State, remaining: tuple[int, ...], budget: int, target: int, ops: str,
            parentheses: bool) -> tuple[Token, ...] | None:
    """Tokens that end the formula in ``state`` with exactly ``remaining``, within ``budget`` tokens.

    After the prefix, the innermost open level reads: the factor that is due (if any), more
    factors of the open term, more terms, then its ``)``; the level below then goes on the same
    way with the group's value as its factor. Each part is one of :func:`_pieces`, with its own
    share of the remaining values."""
    levels, operand_due = state
    total, sign, term, pending = levels[-1]
    innermost_is_last = len(levels) == 1
    for head, rest in _submultisets(remaining):
        if operand_due == (not head):
            continue
        if not operand_due:
            heads = {term: ()}
        elif term is None:  # a new term starts: it brings its own factors
            heads = _pieces(head, ops, parentheses)[1]
        else:
            heads = {}
            for f, tokens in _pieces(head, ops, parentheses)[0].items():
                if pending == "*" or f != 0:
                    heads[_OPS[pending](term, f)] = tokens
        for factors, rest2 in _submultisets(rest):
            if factors and operand_due and term is None:
                continue  # already part of the new term
            multiply = _pieces(factors, ops, parentheses)[2] if factors else _NOTHING
            for terms, rest3 in _submultisets(rest2):
                if innermost_is_last and rest3:
                    continue
                add = _pieces(terms, ops, parentheses)[3] if terms else _NO_TERMS
                for base, head_tokens in heads.items():
                    for r, r_tokens in multiply.items():
                        value = total + sign * base * r
                        if innermost_is_last:
                            w_tokens = add.get(target - value)
                            if w_tokens is not None and len(head_tokens) + len(r_tokens) + len(w_tokens) <= budget:
                                return head_tokens + r_tokens + w_tokens
                            continue
                        for w, w_tokens in add.items():
                            used = len(head_tokens) + len(r_tokens) + len(w_tokens) + 1
                            below = _apply_factor(levels[:-1], value + w)
                            if below is None or used > budget:
                                continue
                            found = _finish((below, False), rest3, budget - used, target, ops, parentheses)
                            if found is not None:
                                return head_tokens + r_tokens + w_tokens + (")",) + found
    return None


def complete(tokens: Sequence[Token], values: Sequence[int], target: int, ops: str = "+-*/", parentheses: bool = True,
             max_length: int | None = None) -> list[Token] | None:
    """Tokens that turn the prefix ``tokens`` into a formula using every value exactly once and
    equal to ``target`` exactly, with at most ``max_length`` tokens in all; ``None`` if none do.

    ``[]`` means ``tokens`` is already such a formula. ``" "`` placeholders in the prefix count
    toward the length and are otherwise ignored, as by :func:`evaluate`. Where the prefix starts
    the solver's own solution, its rest is returned. Otherwise the prefix is parsed into the
    evaluator's state, and the values still to place are shared out among the pieces that can
    follow it (:func:`_finish`), each written the shortest way (:func:`_pieces`): the search is
    over values, not token sequences, so a hopeless prefix is refuted in milliseconds.
    """
    tokens = list(tokens)
    remaining = Counter(values)
    remaining.subtract(t for t in tokens if isinstance(t, int))
    if min(remaining.values(), default=0) < 0:
        return None  # the prefix uses a value more often than it was dealt
    solution = solve(values, target, ops, parentheses)
    if solution is None:
        return None
    # Without a limit: room for every value, an operator and a pair of parentheses each, and a ")" per open one.
    budget = max_length - len(tokens) if max_length is not None else 4 * len(values) + len(tokens)
    if solution[:len(tokens)] == tokens and len(solution) - len(tokens) <= budget:
        return solution[len(tokens):]
    try:
        state = _parse(tokens)
    except FormulaError:
        return None  # no token appended can mend it
    found = _finish(state, tuple(sorted(remaining.elements())), budget, target, ops, parentheses)
    return None if found is None else list(found)
