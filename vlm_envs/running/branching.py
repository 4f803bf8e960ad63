"""Branching an episode: a new env in exactly the state of another, made by replaying its record.

Every vlm_envs env is deterministic given its reset seed (and reset options) and the texts sent
since, so that :class:`EpisodeRecord` is the whole state of a text-action env. A live env
(:class:`vlm_envs.TextActions`, or :class:`vlm_envs.remote.RemoteEnv` with text actions) keeps
the record of its current episode as ``env.episode_record``, and

    twin, obs, info = vlm_envs.branch(env)        # a fresh env whose next step is env's next step

builds a new env as ``env`` was built and replays the record on it (``replay_on_reset`` then
``reset(seed=...)``, as checkpoint restore does), locally or on the server. For ``G`` copies of an
episode at step ``k`` (group rollouts that branch mid-episode), replay one record in every
sub-env of a vector env:

    record = env.episode_record
    obs, infos = vlm_envs.restore_episodes(envs, [record] * G)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np


@dataclasses.dataclass(frozen=True)
class EpisodeRecord:
    """An episode's state as plain data: replaying ``actions`` after ``reset(seed=seed, options=options)``.

    JSON-able: ``EpisodeRecord(**dataclasses.asdict(record))`` round-trips (lists become tuples).
    """

    seed: int
    """The episode's reset seed (a non-negative int)."""
    actions: tuple[str, ...] = ()
    """The texts sent since that reset, in order."""
    options: dict[str, Any] | None = None
    """The reset's options (ALFWorld: ``game_index`` or ``game_file``), or None."""

    def __post_init__(self):
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise TypeError(f"EpisodeRecord.seed must be an int, got {type(self.seed).__name__}: {self.seed!r}")
        if self.seed < 0:
            raise ValueError(f"EpisodeRecord.seed must be non-negative, got {self.seed}")
        if isinstance(self.actions, str) or not isinstance(self.actions, Sequence) or not all(
                isinstance(text, str) for text in self.actions):
            raise TypeError(f"EpisodeRecord.actions must be a sequence of texts (str), got {self.actions!r:.200}")
        if self.options is not None and not isinstance(self.options, dict):
            raise TypeError(f"EpisodeRecord.options must be a dict or None, got {type(self.options).__name__}")
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "actions", tuple(self.actions))


class EpisodeLog:
    """The record of the current episode, kept by an env as it is reset and stepped.

    An episode begun by ``reset()`` without a seed continues the previous episode's random stream,
    so no record describes it: reading ``record`` then raises ``ValueError``.
    """

    def __init__(self):
        self._start: tuple[int, dict | None] | None = None
        self._actions: list[str] = []

    def reset(self, seed: int | None, options: dict | None) -> None:
        # A vector env's masked reset hands each env the options left after popping ``reset_mask``: {} means none.
        self._start = None if seed is None else (int(seed), dict(options) if options else None)
        self._actions = []

    def step(self, text: str) -> None:
        self._actions.append(text)

    @property
    def record(self) -> EpisodeRecord:
        if self._start is None:
            raise ValueError("this episode has no record: it did not begin with reset(seed=...), so no seed and "
                             "actions reproduce it; reset with a seed to branch or restore it")
        seed, options = self._start
        return EpisodeRecord(seed, tuple(self._actions), options)


def restore_episode(env: gym.Env, record: EpisodeRecord) -> tuple[Any, dict[str, Any]]:
    """Put ``env`` (a :class:`vlm_envs.TextActions` or text-action ``RemoteEnv``) in ``record``'s state.

    Returns what the last replayed step returned (or the reset's observation and info when the
    record has no actions): the observation and info the recorded env shows now. Raises
    ``ValueError`` when the replay ends the episode (the record is not this env's, or is over).
    """
    _check_record(record)
    env.replay_on_reset = record.actions
    return env.reset(seed=record.seed, options=record.options)


def restore_episodes(envs: gym.vector.VectorEnv, records: Sequence[EpisodeRecord]) -> tuple[Any, dict[str, Any]]:
    """Put sub-env ``i`` of ``envs`` (built with ``wrappers=[vlm_envs.TextActions]``, or ``make_remote_vec``) in ``records[i]``'s state.

    Any vectorization works (sync, async, Ray, remote). A vector reset gives every sub-env the
    same options, so the records must agree on them.
    """
    records = list(records)
    if len(records) != envs.num_envs:
        raise ValueError(f"records has {len(records)} entries for {envs.num_envs} envs")
    for record in records:
        _check_record(record)
    options = {repr(record.options) for record in records}
    if len(options) > 1:
        raise ValueError(f"records: a vector reset passes one options dict to every env, got {sorted(options)}")
    envs.set_attr("replay_on_reset", [record.actions for record in records])
    return envs.reset(seed=[record.seed for record in records], options=records[0].options)


def branch(env: gym.Env, record: EpisodeRecord | None = None) -> tuple[gym.Env, Any, dict[str, Any]]:
    """A new env built as ``env`` was, in the state of ``record`` (default: ``env``'s current episode).

    ``env`` is a :class:`vlm_envs.TextActions` (over an env made by ``gym.make``) or a
    :class:`vlm_envs.remote.RemoteEnv` with text actions (a new session on the same server).
    Returns ``(new_env, obs, info)``: the observation and info ``env`` shows at that point; from
    then on, the same texts give both envs the same observations, rewards, flags and info.
    """
    if not callable(getattr(env, "fresh_copy", None)):
        raise TypeError(f"env must be a vlm_envs.TextActions or a vlm_envs.remote.RemoteEnv (the outermost wrapper), "
                        f"got {type(env).__name__}")
    record = env.episode_record if record is None else record
    _check_record(record)
    new_env = env.fresh_copy()
    try:
        obs, info = restore_episode(new_env, record)
    except BaseException:
        new_env.close()
        raise
    return new_env, obs, info


def _check_record(record: Any) -> None:
    if not isinstance(record, EpisodeRecord):
        raise TypeError(f"record must be a vlm_envs.EpisodeRecord, got {type(record).__name__}")
