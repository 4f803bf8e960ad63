"""Cards as codes (suit letter + rank letter, e.g. ``"HQ"``, ``"D2"``, ``"ST"``) and seeded draws.

Pure functions that take the RNG as an argument, so rules are testable without an env.
"""

from __future__ import annotations

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


def card_value(code: str, face_cards_as_10: bool = True) -> int:
    """The card's number in the point games and Blackjack: A=1, J/Q/K=10 (or 11..13)."""
    rank = rank_of(code)
    return min(rank, 10) if face_cards_as_10 else rank


def random_suit(np_random: np.random.Generator) -> str:
    return SUITS[int(np_random.integers(4))]


def deal_distinct(np_random: np.random.Generator, n: int) -> list[str]:
    """``n`` different cards from one shuffled 52-card deck."""
    return [FULL_DECK[i] for i in np_random.choice(len(FULL_DECK), size=n, replace=False)]


def deal_with_replacement(np_random: np.random.Generator, n: int) -> list[str]:
    """``n`` independent uniform draws (rank then suit): the same card can repeat (reference)."""
    return [card_code(random_suit(np_random), int(np_random.integers(1, 14))) for _ in range(n)]
