"""The seed protocol: which reset seeds evaluation holds out, and which training may use.

* Training episodes reset with seeds in ``[TRAIN_SEED_BASE, 2 * TRAIN_SEED_BASE)`` (:func:`train_seed`);
  held-out evaluation seeds lie below :data:`TRAIN_SEED_BASE` (:func:`check_eval_seeds`), so the
  two never meet, for any run seed.
* A trainer's held-out evaluation plays seeds ``first + k`` for its k-th episode, from
  :data:`HELD_OUT_SEED` by default (the VLM trainer's ``--eval-seed``, the CNN baseline's fixed seeds).
* The shipped manifests' episodes start at :data:`EVAL_SEED_BASE`, far from the small seeds
  that training and examples use.
"""

from __future__ import annotations

import numpy as np

TRAIN_SEED_BASE = 2**31
"""Training episode seeds are at least this; evaluation seeds are below it."""
HELD_OUT_SEED = 100_000
"""The first seed of a trainer's held-out evaluation episodes (by default)."""
EVAL_SEED_BASE = 1_000_000
"""The first seed of the shipped manifests' card episodes."""


def train_seed(*key: int) -> int:
    """The training reset seed drawn from ``key`` (e.g. run seed, process, env, episode), in ``[2**31, 2**32)``."""
    word = np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint32)[0]
    return TRAIN_SEED_BASE + int(word) % TRAIN_SEED_BASE


def check_eval_seeds(first: int, count: int) -> None:
    """``ValueError`` unless the evaluation seeds ``first .. first + count - 1`` lie below the training seeds."""
    if first < 0 or first + count > TRAIN_SEED_BASE:
        raise ValueError(f"evaluation seeds {first}..{first + count - 1} must lie in [0, 2**31) to stay disjoint "
                         f"from the training seeds")
