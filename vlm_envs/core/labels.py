"""Per-step oracle labels, for turn-level credit and for evaluation (opt in: ``oracle_labels=True``).

Every env takes ``oracle_labels`` (default ``False``: no cost, ``info`` unchanged), so
``gym.make("gym_cards/Blackjack-v0", oracle_labels=True)`` works, locally, in vector envs and on
an env server. The labels follow gymnasium's pairing of ``info`` with the observation it comes
with:

====================  ================================================================================
key                   value
====================  ================================================================================
``state_key``         after ``reset`` and every ``step``: a sha256 (hex) of the state the new
                      observation shows, hidden parts included (Blackjack's hole card, ALFWorld's
                      unseen facts). Equal states have equal keys, however they were reached (e.g. to
                      group steps of different episodes by state, as GiGPO's anchor states do); the
                      point games key the formula as written, so placeholder positions count.
``oracle_action``     after ``reset`` and every ``step``: the oracle's action in that state
                      (``env.unwrapped.oracle_action()``: an index, or a command for ALFWorld);
                      **absent** once the episode has terminated (there is nothing left to do). It
                      is left out rather than set to ``None`` because vector envs stack each key
                      into one array per batch, typed by its first value; the key's ``_oracle_action``
                      mask then says which sub-envs have one.
``action_optimal``    after every ``step`` (not ``reset``): whether the action just taken was optimal
                      in the state it was taken in, i.e. the state of the previous ``state_key``. In
                      a vector env with next-step autoreset, a sub-env's reset step has none: the
                      ``_action_optimal`` mask says which sub-envs have one (and the key is missing
                      from a batch in which every sub-env reset).
                      ``vlm_envs.TextActions`` sets it to ``False`` on a turn whose text did not parse:
                      the model chose no action (a fallback move is the wrapper's, not the model's).
====================  ================================================================================

What counts as the state, the oracle and "optimal" is each env's own (its class docstring,
"Oracle Labels"); the pairing above and the hashing are written once, in
:class:`vlm_envs.core.VLMEnv` and here.

**The key.** ``state_key`` hashes a canonical JSON text (sorted keys, no spaces, ASCII) of the
env's class name and its :meth:`~vlm_envs.core.VLMEnv._full_state`: the state as the rules see
it, plus the constructor arguments that change the rules (rewards, transitions or the oracle).
Left out: the step count (time limits truncate, they are not part of the game), the random
generator (future draws are chance, not state), and what only changes the picture (card suits
and faces, the order the player's cards were dealt in, ALFWorld's task wording and what the
agent has seen so far). So two steps share a key exactly when the game is in the same position,
even when their observations differ in such details. The key never uses Python's ``hash()``
(salted per process): it is the same in every process, on every machine, in every version
that does not change the env's state or rules.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

LABEL_KEYS: tuple[str, ...] = ("state_key", "oracle_action", "action_optimal")


def state_key(env_name: str, state: Mapping[str, Any]) -> str:
    """The sha256 (hex) of ``env_name`` and ``state`` (JSON types only) as canonical JSON."""
    text = json.dumps({"env": env_name, "state": state}, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class StateLabels:
    """What an env remembers of the state its next action is taken in, to judge that action."""

    state_key: str
    oracle_action: Any  # None when the state is terminal
    state: dict[str, Any]  # the env's _full_state(), as hashed
