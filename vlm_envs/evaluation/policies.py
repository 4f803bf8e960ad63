"""Policies for evaluation: anything that turns a step's prompt (and image) into model text.

A policy answers a batch of :class:`Request` s with one :class:`Reply` (or plain ``str``) each.
**Contract:** each reply depends only on its own request, never on which other requests share
the batch or in which order episodes finish. Random choices are drawn from a generator seeded
by the request's ``(episode, seed, step)``. This is what makes a result card identical for
any ``--num-envs`` and vectorization.

:func:`vlm_envs.evaluation.make_policy` builds one from its command-line name
(:mod:`vlm_envs.evaluation.registry`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from vlm_envs._moved import moved_names


@dataclass(frozen=True)
class Request:
    """What a policy sees for one step of one episode."""

    episode: int  # index of the episode in the manifest
    seed: int  # the episode's reset seed
    step: int  # 0 for the first action of the episode
    prompt: str  # the env's task prompt for this step (the state in words first, in text mode "full")
    image: np.ndarray  # (H, W, 3) uint8
    actions: tuple[str, ...]  # the action vocabulary, or this step's admissible commands (ALFWorld)
    oracle: str | None = None  # the expert's action as model text, when the policy asked for it

    def rng(self) -> np.random.Generator:
        """A generator owned by this request alone (see the module's contract)."""
        return np.random.default_rng([self.episode, self.seed, self.step, 0x5EED])


@dataclass(frozen=True)
class Reply:
    """A policy's answer: the model text, or ``error`` when no answer could be had.

    An error (a server that kept failing, a malformed body) is played as a parse failure and
    its reason is recorded on the result card.
    """

    text: str
    error: str = ""


class Policy(Protocol):
    needs_oracle: bool

    def describe(self) -> dict[str, Any]:
        """What the result card records about the policy (name, model, decoding settings)."""

    def act(self, requests: Sequence[Request]) -> Sequence[Reply | str]:
        """One reply per request, each depending only on its request."""

    def close(self) -> None:
        """Release what the policy holds (processes, connections, models)."""


def action_text(action: str) -> str:
    """An action written as a model would answer: ``{"action": "hit"}``."""
    return json.dumps({"action": action})


class OraclePolicy:
    """The env's expert: the best play the package knows, through the same text path as a model."""

    needs_oracle = True

    def describe(self) -> dict[str, Any]:
        return {"name": "oracle"}

    def act(self, requests: Sequence[Request]) -> list[str]:
        return [r.oracle for r in requests]

    def close(self) -> None:
        pass


class RandomPolicy:
    """A uniformly random action (card games) or admissible command (ALFWorld)."""

    needs_oracle = False

    def describe(self) -> dict[str, Any]:
        return {"name": "random"}

    def act(self, requests: Sequence[Request]) -> list[str]:
        return [action_text(r.actions[int(r.rng().integers(len(r.actions)))]) for r in requests]

    def close(self) -> None:
        pass


def normalize_replies(replies: Sequence[Reply | str], n: int) -> list[Reply]:
    """Replies as :class:`Reply` objects, checking there is one per request."""
    replies = list(replies)
    if len(replies) != n:
        raise ValueError(f"the policy returned {len(replies)} replies for {n} requests")
    return [r if isinstance(r, Reply) else Reply(str(r)) for r in replies]


# Moved to the policy registry: served from here until the next version, with a DeprecationWarning.
__getattr__ = moved_names(__name__, dict.fromkeys(("make_policy", "SCRIPTED_POLICIES"), "vlm_envs.evaluation.registry"))
