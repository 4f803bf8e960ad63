"""The exact formula evaluator, the compat evaluator, the solver and the completion search."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm_envs.cards.formula import FormulaError, complete, evaluate, evaluate_compat, solve


@pytest.mark.parametrize(
    "tokens, value",
    [
        ([8, "/", "(", 3, "-", 8, "/", 3, ")"], Fraction(24)),
        ([1, "+", 2, "*", 3], Fraction(7)),
        (["(", 1, "+", 2, ")", "*", 3], Fraction(9)),
        ([10, "-", 4, "-", 3], Fraction(3)),  # left associative
        ([6, " ", "*", 2], Fraction(12)),  # placeholders are dropped
        ([1, "/", 3], Fraction(1, 3)),
    ],
)
def test_evaluate(tokens, value):
    assert evaluate(tokens) == value


@pytest.mark.parametrize(
    "tokens, reason",
    [
        ([], "empty"),
        ([1, 2], "unexpected"),  # no digit concatenation
        ([1, "*", "*", 2], "expected a number"),  # no power
        ([1, "/", "/", 2], "expected a number"),  # no floor division
        (["-", 1], "expected a number"),  # no unary minus
        (["(", ")"], "expected a number"),
        (["(", 1, "+", 2], "missing"),
        ([1, "+"], "ends"),
        ([1, "/", "(", 2, "-", 2, ")"], "division by zero"),
    ],
)
def test_evaluate_rejects_with_reason(tokens, reason):
    with pytest.raises(FormulaError, match=reason):
        evaluate(tokens)


def test_compat_matches_python_eval_semantics():
    assert evaluate_compat([1, 2, "*", 2, "*", 1]) == 24
    assert evaluate_compat([8, "/", "(", 3, "-", 8, "/", 3, ")"]) == 8 / (3 - 8 / 3)
    assert evaluate_compat([2, "*", "*", 3]) == 8
    assert evaluate_compat([7, "/", "/", 2]) == 3
    assert evaluate_compat(["-", 3, "+", 5]) == 2
    for bad in ([1, "+"], [1, "/", "(", 2, "-", 2, ")"], [10, "*", "*", 10, "*", "*", 10]):
        with pytest.raises(FormulaError):
            evaluate_compat(bad)


def test_compat_never_executes_code():
    with pytest.raises(FormulaError):
        evaluate_compat(["__import__('os')"])


def test_solver_finds_exact_solutions_for_every_hand():
    solvable = 0
    for values in itertools.combinations_with_replacement(range(1, 11), 4):
        solution = solve(values, 24)
        if solution is not None:
            solvable += 1
            assert evaluate(solution) == 24
            assert sorted(t for t in solution if isinstance(t, int)) == sorted(values)
    assert solvable == 566  # of the 715 multisets of values 1..10
    assert solve([1, 1, 1, 1], 24) is None
    assert solve([6, 2], 12, "+*", parentheses=False) == [2, "*", 6]


token = st.one_of(st.integers(1, 10), st.sampled_from(["+", "-", "*", "/", "(", ")", " "]))


@settings(max_examples=500, deadline=None)
@given(st.lists(token, max_size=21))
def test_evaluators_never_crash(tokens):
    for fn in (evaluate, evaluate_compat):
        try:
            fn(tokens)
        except FormulaError:
            pass


def _python_value(tokens) -> Fraction | None:
    """The value Python's own parser gives the formula over exact fractions; ``None`` for what our grammar
    forbids (unary signs, ``()``, adjacent numbers) or a division by zero."""
    kept = [t for t in tokens if t != " "]
    for before, token in zip([None, *kept], kept):
        if token in ("+", "-") and (before is None or before in ("+", "-", "*", "/", "(")):
            return None  # a unary sign: Python takes it, our grammar does not
    try:
        value = eval(" ".join(f"Fraction({t})" if isinstance(t, int) else t for t in kept), {"Fraction": Fraction})  # noqa: S307
    except (SyntaxError, ZeroDivisionError, TypeError):
        return None
    return value if isinstance(value, Fraction) else None


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 10), st.sampled_from(["+", "-", "*", "/", "(", ")", " "])), max_size=14))
def test_evaluate_agrees_with_pythons_parser(tokens):
    try:
        value = evaluate(tokens)
    except FormulaError:
        value = None
    assert value == _python_value(tokens)


def _valid_prefix(tokens) -> bool:
    """Whether some tokens could follow ``tokens`` to make a formula (the grammar alone, no values)."""
    depth, operand_due = 0, True
    for token in (t for t in tokens if t != " "):
        if operand_due and token == "(":
            depth += 1
        elif operand_due and isinstance(token, int):
            operand_due = False
        elif not operand_due and token in ("+", "-", "*", "/"):
            operand_due = True
        elif not operand_due and token == ")" and depth:
            depth -= 1
        else:
            return False
    return True


def _brute_force_completion(prefix, values, target, ops, parentheses, max_length) -> bool:
    """Whether any token sequence completes ``prefix`` (every sequence tried, up to the length)."""
    symbols = sorted(set(values)) + list(ops) + (["(", ")"] if parentheses else [])

    def search(tokens) -> bool:
        used = sorted(t for t in tokens if isinstance(t, int))
        if used == sorted(values):
            try:
                if evaluate(tokens) == target:
                    return True
            except FormulaError:
                pass
        if len(tokens) == max_length:
            return False
        return any(search([*tokens, s]) for s in symbols
                   if _valid_prefix([*tokens, s]) and (not isinstance(s, int) or used.count(s) < values.count(s)))

    return _valid_prefix(prefix) and search(list(prefix))


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.integers(1, 6), min_size=1, max_size=3), target=st.integers(-3, 30),
       arithmetic=st.sampled_from([("+-*/", True), ("+*", False), ("-/", True)]), length=st.integers(0, 4),
       room=st.integers(0, 6), data=st.data())
def test_completion_exists_exactly_when_brute_force_finds_one(values, target, arithmetic, length, room, data):
    ops, parentheses = arithmetic
    symbols = [*range(1, 7), *ops, *("()" if parentheses else ""), " "]
    prefix: list = []
    for _ in range(length):  # mostly prefixes the grammar allows, so the search has work to do
        allowed = [s for s in symbols if _valid_prefix([*prefix, s])] or symbols
        prefix.append(data.draw(st.sampled_from(allowed if data.draw(st.integers(0, 9)) else symbols)))
    max_length = len(prefix) + room
    found = complete(prefix, values, target, ops, parentheses, max_length)
    assert (found is not None) == _brute_force_completion(prefix, values, target, ops, parentheses, max_length)
    if found is not None:
        formula = [*prefix, *found]
        assert evaluate(formula) == target and len(formula) <= max_length
        assert sorted(t for t in formula if isinstance(t, int)) == sorted(values)


def test_completion_of_the_solvers_solution_and_of_other_prefixes():
    solution = solve([8, 3, 8, 3], 24)
    assert complete([], [8, 3, 8, 3], 24) == solution and complete(solution, [8, 3, 8, 3], 24) == []
    assert complete(solution[:4], [8, 3, 8, 3], 24) == solution[4:]
    assert complete([6], [6, 2], 12, "+*", parentheses=False) == ["*", 2]  # another order than the solver's
    assert complete([6, "+"], [6, 2], 12, "+*", parentheses=False) is None
    assert complete([6, 6], [6, 2], 12, "+*", parentheses=False) is None  # a value used more often than dealt
    assert complete(["("], [3, 5, 7, 9], 24, max_length=3) is None  # too short for four numbers
    assert complete([1, 2], [1, 2], 12) is None  # no digit concatenation
