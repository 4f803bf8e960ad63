"""The exact formula evaluator, the compat evaluator and the solver (spec envs.md §5)."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm_envs.cards.formula import FormulaError, evaluate, evaluate_compat, solve


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
