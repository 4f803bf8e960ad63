"""Cards as codes (suit letter + rank letter, e.g. ``"HQ"``, ``"D2"``, ``"ST"``) and seeded draws.

Pure functions that take the RNG as an argument, so rules are testable without an env.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

SUITS = "HSDC"
RANKS = "A23456789TJQK"  # rank r (1..13) is RANKS[r - 1]
FULL_DECK: tuple[str, ...] = tuple(s + r for s in SUITS for r in RANKS)


def card_code(suit: str, rank: int) -> str:
    """``card_code("H", 12) == "HQ"``."""
    return suit + RANKS[rank - 1]


def rank_of(code: str) -> int:
    """The rank 1..13 of a card code (A=1, ..., K=13)."""
    return RANKS.index(code[1]) + 1


def rank_value(rank: int, face_cards_as_10: bool = True) -> int:
    """A rank's number in the point games and Blackjack: A=1, J/Q/K=10 (or 11..13)."""
    return min(rank, 10) if face_cards_as_10 else rank


def card_value(code: str, face_cards_as_10: bool = True) -> int:
    """The card's number in the point games and Blackjack: A=1, J/Q/K=10 (or 11..13)."""
    return rank_value(rank_of(code), face_cards_as_10)


def random_suit(np_random: np.random.Generator) -> str:
    return SUITS[int(np_random.integers(4))]


def deal_distinct(np_random: np.random.Generator, n: int) -> list[str]:
    """``n`` different cards from one shuffled 52-card deck."""
    return [FULL_DECK[i] for i in np_random.choice(len(FULL_DECK), size=n, replace=False)]


def deal_with_replacement(np_random: np.random.Generator, n: int) -> list[str]:
    """``n`` independent uniform draws (rank then suit): the same card can repeat (reference)."""
    return [card_code(random_suit(np_random), int(np_random.integers(1, 14))) for _ in range(n)]


def _cards_by_value() -> dict[int, tuple[str, ...]]:
    by_value: dict[int, list[str]] = {}
    for code in FULL_DECK:
        by_value.setdefault(card_value(code), []).append(code)
    return {value: tuple(codes) for value, codes in sorted(by_value.items())}


CARDS_BY_VALUE = _cards_by_value()  # face cards count 10
CARD_VALUES: tuple[int, ...] = tuple(CARDS_BY_VALUE)


def hand_probability(values: Sequence[int], distinct: bool) -> float:
    """The probability that a deal of ``len(values)`` cards shows exactly these values (as a
    multiset, face cards as 10): from one shuffled deck (:func:`deal_distinct`) if ``distinct``,
    else by independent draws (:func:`deal_with_replacement`)."""
    counts = Counter(values)
    if distinct:
        ways = math.prod(math.comb(len(CARDS_BY_VALUE[v]), k) for v, k in counts.items())
        return ways / math.comb(len(FULL_DECK), len(values))
    orders = math.factorial(len(values)) // math.prod(math.factorial(k) for k in counts.values())
    return orders * math.prod((len(CARDS_BY_VALUE[v]) / len(FULL_DECK)) ** k for v, k in counts.items())


def deal_values(np_random: np.random.Generator, values: Sequence[int], distinct: bool) -> list[str]:
    """Cards with exactly ``values`` (face cards as 10), as the deal would give them once its values
    are known: each value's cards drawn uniformly among the deck's cards of that value (different
    cards if ``distinct``), in a uniformly random order."""
    cards = []
    for value, k in sorted(Counter(values).items()):
        pool = CARDS_BY_VALUE[value]
        cards += [pool[i] for i in np_random.choice(len(pool), size=k, replace=not distinct)]
    return [cards[i] for i in np_random.permutation(len(cards))]
