"""Make an environment take the model's raw output text as its action."""

from __future__ import annotations

from typing import Any, Literal, SupportsFloat, get_args

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlm_envs.core.arguments import check_finite
from vlm_envs.running.branching import EpisodeLog, EpisodeRecord
from vlm_envs.core.spaces import text_space
from vlm_envs.text.parsing import PARSE_MODES, ParseMode, parse_action

OnParseFailure = Literal["random", "penalty", "noop"]
ON_PARSE_FAILURE: tuple[OnParseFailure, ...] = get_args(OnParseFailure)
_MAX_ACTION_TEXT = 4096


class TextActions(gym.Wrapper):
    """``step(text)``: parse the model's output into the env's action.

    ``env = vlm_envs.TextActions(gym.make("gym_cards/Points24-v0"))`` then
    ``env.step('{"thoughts": "...", "action": "8"}')``. With vector envs:
    ``gym.make_vec(id, n, wrappers=[vlm_envs.TextActions])``.

    Parsing reads the value of the last ``"action":`` key and looks it up in
    ``env.unwrapped.action_names``. When the text names no single action, ``on_parse_failure`` decides:

    =============  ===================================================================================
    ``random``     a uniformly random action is played (the paper's setting); the draw comes from a
                   generator seeded by ``reset(seed=...)``, so episodes stay reproducible.
    ``penalty``    the game does not advance; reward ``format_penalty``; same observation.
    ``noop``       the game does not advance; reward 0 (a wasted turn).
    =============  ===================================================================================

    The wrapper owns the step limit: it counts every turn, parsed or not, and truncates the
    episode on the turn that reaches ``max_episode_steps`` (of ``env.spec``), so a model that
    wastes turns on unparseable text is truncated like any other. (gymnasium's ``TimeLimit``
    inside only sees the turns that reached the game, so it can never end an episode first.)

    Every step adds to ``info``: ``parse_ok`` (bool), ``action`` (the index played, -1 when the game
    did not advance) and ``parse_error`` (``""`` when parsing succeeded, otherwise the reason).

    Environments whose action space is already text (ALFWorld) parse internally and report the
    same keys; this wrapper passes them through unchanged, so trainers can wrap every env alike.

    With the env's ``oracle_labels=True`` (:mod:`vlm_envs.core.labels`), a turn whose text did not parse
    has ``info["action_optimal"] = False`` whatever was played: the model chose no action, and a
    ``random`` fallback move is the wrapper's. ``state_key`` and ``oracle_action`` stay those of the
    state the returned observation shows (the same state again under ``penalty`` and ``noop``).

    **Restoring an episode.** The envs are deterministic given the reset seed and the texts sent,
    so an episode is restored by replaying them: set ``replay_on_reset`` to the texts (in a vector
    env, ``envs.set_attr("replay_on_reset", [texts_0, texts_1, ...])``), then ``reset(seed=...)``
    with the episode's seed returns the observation after the last of them. Checkpoints use this
    instead of pickling envs, so it works wherever the envs run (in-process, subprocesses, Ray).
    ``episode_record`` is the current episode's seed, reset options and texts, and
    ``vlm_envs.branch(env)`` makes a new env in the same state (:mod:`vlm_envs.running.branching`).

    Args:
        env: an environment with a ``Discrete`` action space and ``action_names``.
        mode: ``"strict"``, ``"lenient"`` (default) or ``"compat"`` (the reference parser).
        on_parse_failure: ``"random"`` (default), ``"penalty"`` or ``"noop"``.
        format_penalty: the reward of a ``"penalty"`` turn (a finite number).
        aliases: extra spellings, e.g. ``{"stick": "stand", "stay": "stand"}`` for Blackjack.
    """

    def __init__(
        self,
        env: gym.Env,
        mode: ParseMode = "lenient",
        on_parse_failure: OnParseFailure = "random",
        format_penalty: float = -1.0,
        aliases: dict[str, str] | None = None,
    ):
        super().__init__(env)
        if aliases is not None and not (isinstance(aliases, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in aliases.items())):
            raise TypeError(f"aliases must map spellings to action names (str to str), got {aliases!r}")
        if mode not in PARSE_MODES:
            raise ValueError(f"mode must be one of {PARSE_MODES}, got {mode!r}")
        if on_parse_failure not in ON_PARSE_FAILURE:
            raise ValueError(f"on_parse_failure must be one of {ON_PARSE_FAILURE}, got {on_parse_failure!r}")
        self.passthrough = isinstance(env.action_space, spaces.Text)
        if not self.passthrough:
            if not isinstance(env.action_space, spaces.Discrete):
                raise TypeError(f"TextActions needs a Discrete or Text action space, got {env.action_space}")
            self.vocab = tuple(env.unwrapped.action_names)
            if len(self.vocab) != env.action_space.n:
                raise ValueError(f"action_names has {len(self.vocab)} entries for {env.action_space}")
            unknown = set((aliases or {}).values()) - set(self.vocab)
            if unknown:
                raise ValueError(f"aliases map to unknown actions {sorted(unknown)}; vocabulary: {self.vocab}")
            self.action_space = text_space(_MAX_ACTION_TEXT)
        self.mode = mode
        self.on_parse_failure = on_parse_failure
        self.format_penalty = check_finite("format_penalty", format_penalty)
        self.aliases = dict(aliases or {})
        self._max_steps = env.spec.max_episode_steps if env.spec is not None else None
        self._oracle_labels = bool(getattr(env.unwrapped, "oracle_labels", False))
        self._rng = np.random.default_rng()
        self._elapsed = 0
        self._last_obs: Any = None
        self._last_info: dict[str, Any] = {}
        self.replay_on_reset: tuple[str, ...] = ()
        self._log = EpisodeLog()

    @property
    def episode_record(self) -> EpisodeRecord:
        """The current episode's seed, reset options and the texts sent since (``ValueError`` after an unseeded reset)."""
        return self._log.record

    def fresh_copy(self) -> TextActions:
        """A new env built as this one was (``gym.make`` of the inner env's spec, the same parsing), not yet reset."""
        if self.env.spec is None:
            raise ValueError("this env was not made by gym.make, so it cannot be rebuilt: build a new one yourself "
                             "and call vlm_envs.restore_episode(new_env, env.episode_record)")
        return TextActions(gym.make(self.env.spec), mode=self.mode, on_parse_failure=self.on_parse_failure,
                           format_penalty=self.format_penalty, aliases=self.aliases)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            # Own stream for fallback draws, so parse failures do not shift the game's card draws.
            self._rng = np.random.default_rng([seed, 0x7E47])
        self._elapsed = 0
        self._last_obs, self._last_info = obs, info
        self._log.reset(seed, options)
        replay, self.replay_on_reset = tuple(self.replay_on_reset), ()
        for k, text in enumerate(replay):
            obs, _, terminated, truncated, info = self.step(text)
            if terminated or truncated:
                raise ValueError(f"replaying {len(replay)} actions after reset(seed={seed}) ended the episode at "
                                 f"action {k}: the record does not belong to this env or seed, or its episode is over")
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if self.passthrough:
            result = self.env.step(action)
            self._log.step(action)
            return result
        self._elapsed += 1
        at_limit = self._max_steps is not None and self._elapsed >= self._max_steps  # every turn counts
        result = parse_action(action, self.vocab, self.mode, self.aliases)
        index = result.index
        if index is None and self.on_parse_failure == "random":
            index = int(self._rng.integers(len(self.vocab)))
        if index is None:
            reward = self.format_penalty if self.on_parse_failure == "penalty" else 0.0
            truncated = at_limit
            obs, info = self._last_obs, {**self._last_info, "success": False}
            terminated = False
        else:
            obs, reward, terminated, truncated, info = self.env.step(index)
            truncated = bool(truncated) or (not terminated and at_limit)
        self._last_obs, self._last_info = obs, info
        self._log.step(action)
        info = {**info, "parse_ok": result.ok, "action": -1 if index is None else index, "parse_error": result.reason}
        if self._oracle_labels and not result.ok:
            info["action_optimal"] = False
        return obs, reward, terminated, truncated, info
