"""The base class of every vlm_envs environment: image + text observations and the text interface.

:class:`VLMEnv` owns ``reset`` and ``step``: it seeds, checks the action, and assembles the
observation, the oracle labels and the human-mode frame in one order for every env. An
environment subclasses it and implements the abstract hooks

* ``_start_episode(options) -> dict``: draw a new episode from ``self.np_random``; the first
  state's ``info``;
* ``_apply_action(action) -> Transition``: play an action already checked by
  ``_validate_action``; the reward, the end flags and the new state's ``info``;
* ``_render_frame() -> np.ndarray``: the current image, ``(H, W, 3)`` uint8;
* ``_text() -> str``: what the step's prompt needs (``obs["text"]``), e.g. the current formula;
* ``_describe() -> str``: the whole state in words, for text-only agents (``text_mode="full"``);
* ``oracle_action()``: the expert's action in the current state;
* for the oracle labels (:mod:`vlm_envs.core.labels`): ``_full_state() -> dict``, the state as the
  rules see it, and ``_action_optimal(action, before) -> bool``, the env's test of optimality.

An env whose actions are not indices of a ``Discrete`` space (ALFWorld's text) overrides
``_read_action``. It sets the class attributes ``prompt_task`` (the template family in
:mod:`vlm_envs.text.prompts`) and, for a fixed action vocabulary, ``action_names``.
"""

from __future__ import annotations

import abc
from typing import Any, Literal, NamedTuple, get_args

import gymnasium as gym
import numpy as np
from gymnasium import logger

from vlm_envs.core.arguments import check_bool
from vlm_envs.core.labels import StateLabels, state_key
from vlm_envs.core.rendering import HumanWindow
from vlm_envs.core.spaces import observation_space, validate_image_size
from vlm_envs.text.prompts import Wording, build_prompt, chat_messages

TextMode = Literal["prompt", "full"]
TEXT_MODES: tuple[TextMode, ...] = get_args(TextMode)


class Transition(NamedTuple):
    """What an action did, as ``_apply_action`` reports it: the reward, the end flags and the
    ``info`` of the state it led to (the oracle labels are added by :class:`VLMEnv`)."""

    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


class VLMEnv(gym.Env, abc.ABC):
    """Common machinery: ``reset``, ``step``, observation space, rendering modes, prompts. See the module docstring."""

    metadata: dict[str, Any] = {"render_modes": ["rgb_array", "human"], "render_fps": 4}
    prompt_task: str = ""
    action_names: tuple[str, ...] = ()
    max_text_length: int = 512
    # False when instances in one process must not step at the same time from different threads
    # (an env server then runs all its sessions on one thread).
    thread_safe: bool = True
    # Parameters of the prompt beyond obs["text"] (the point games: {"target": target_points}),
    # for callers that build prompts from observations: build_prompt(task, text, **prompt_params).
    prompt_params: dict[str, Any] = {}

    def __init__(
        self,
        render_mode: str | None = None,
        image_size: tuple[int, int] = (300, 300),
        text_mode: TextMode = "prompt",
        oracle_labels: bool = False,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
        self.render_mode = render_mode
        self.image_size = validate_image_size(image_size)
        self.text_mode = text_mode
        self.oracle_labels = check_bool("oracle_labels", oracle_labels)
        self.observation_space = observation_space(self.image_size, self.max_text_length)
        self._window: HumanWindow | None = None
        self._has_reset = False
        self._labels: StateLabels | None = None  # of the state the next action is taken in

    # -- to implement -------------------------------------------------------------------------
    @abc.abstractmethod
    def _start_episode(self, options: dict[str, Any]) -> dict[str, Any]:
        """Start a new episode, drawing only from ``self.np_random``; the ``info`` of its first state."""

    @abc.abstractmethod
    def _apply_action(self, action: Any) -> Transition:
        """Play ``action`` (as ``_validate_action`` returned it) from the current state."""

    @abc.abstractmethod
    def _render_frame(self) -> np.ndarray:
        """The current image, ``(H, W, 3)`` uint8."""

    @abc.abstractmethod
    def _text(self) -> str:
        """What the step's prompt needs (``obs["text"]`` in ``text_mode="prompt"``)."""

    @abc.abstractmethod
    def _describe(self) -> str:
        """The whole state in words (``obs["text"]`` in ``text_mode="full"``)."""

    @abc.abstractmethod
    def oracle_action(self) -> Any:
        """The expert's action in the current state."""

    @abc.abstractmethod
    def _full_state(self) -> dict[str, Any]:
        """The state as the rules see it (JSON-serialisable), with the arguments that change the rules
        (what ``state_key`` hashes; :mod:`vlm_envs.core.labels` says what is left out)."""

    @abc.abstractmethod
    def _action_optimal(self, action: Any, before: StateLabels) -> bool:
        """Whether ``action``, just taken in the state ``before``, was optimal (the env is now in
        the state it led to)."""

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._has_reset = False  # until the episode has started: a failed reset leaves nothing to step in
        info = self._start_episode(options or {})
        self._has_reset = True
        obs, info = self._get_obs(), self._label_reset(info)
        self._after_transition()
        return obs, info

    def step(self, action: Any):
        action = self._validate_action(action)
        reward, terminated, truncated, info = self._apply_action(action)
        obs, info = self._get_obs(), self._label_step(info, action, terminated)
        self._after_transition()
        return obs, float(reward), terminated, truncated, info

    # -- shared -------------------------------------------------------------------------------
    def _validate_action(self, action: Any) -> Any:
        """The action as the rules take it, or a clear error for a step before reset or a bad action."""
        if not self._has_reset:
            raise RuntimeError("call reset() before step()")
        return self._read_action(action)

    def _read_action(self, action: Any) -> Any:
        """The action as an int, or a ``ValueError`` for one outside the ``Discrete`` action space."""
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space} (names: {self.action_names})")
        return int(action)

    def _get_obs(self) -> dict[str, Any]:
        text = self._text() if self.text_mode == "prompt" else self._describe()
        return {"image": self._render_frame(), "text": text}

    def _label_reset(self, info: dict[str, Any]) -> dict[str, Any]:
        """``info`` of a reset, with the labels of the first state when ``oracle_labels`` is on."""
        return self._with_state_labels(info, terminated=False) if self.oracle_labels else info

    def _label_step(self, info: dict[str, Any], action: Any, terminated: bool) -> dict[str, Any]:
        """``info`` of a step, with the labels of the new state and whether ``action`` was optimal."""
        if not self.oracle_labels:
            return info
        optimal = bool(self._action_optimal(action, self._labels))  # judged before the new state's labels replace them
        return {**self._with_state_labels(info, terminated), "action_optimal": optimal}

    def _with_state_labels(self, info: dict[str, Any], terminated: bool) -> dict[str, Any]:
        state = self._full_state()
        oracle = None if terminated else self.oracle_action()
        self._labels = StateLabels(state_key(type(self).__name__, state), oracle, state)
        labels = {"state_key": self._labels.state_key}
        if not terminated:
            labels["oracle_action"] = oracle
        return {**info, **labels}

    def _after_transition(self) -> None:
        """The end of ``reset`` and ``step``: gymnasium's human mode renders every frame."""
        if self.render_mode == "human":
            self.render()

    def prompt(self, cot: bool = True, wording: Wording = "reference", chat: bool = False) -> str | list[dict]:
        """The task prompt for the current state (chat messages with an image slot if ``chat``)."""
        prompt = build_prompt(self.prompt_task, self._text(), cot=cot, wording=wording, **self.prompt_params)
        return chat_messages(prompt) if chat else prompt

    def describe(self) -> str:
        """The whole current state in words (the ``text_mode="full"`` observation)."""
        return self._describe()

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            logger.warn(
                "You are calling render method without specifying any render mode. "
                'You can specify the render_mode at initialization, e.g. gym.make(id, render_mode="rgb_array")'
            )
            return None
        frame = self._render_frame()
        if self.render_mode == "rgb_array":
            return frame
        if self._window is None:
            self._window = HumanWindow(type(self).__name__, self.metadata["render_fps"])
        self._window.show(frame)
        return None

    def close(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_window"] = None  # a pygame window cannot be pickled or copied
        return state
