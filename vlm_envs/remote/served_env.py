"""One session's env on the server, and the checks on everything a client may choose.

Only numpy, pillow and gymnasium (and the envs): the protocol and the server are
:mod:`vlm_envs.remote.server`. Every :class:`ServedEnv` method runs on the session's env thread
and returns the answer already encoded as JSON text, so the server's event loop does no env work.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import uuid
from typing import Any, NamedTuple

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

from vlm_envs.core.arguments import check_int
from vlm_envs.core.registration import constructor_arguments, path_arguments, registered_ids
from vlm_envs.remote.codec import IMAGE_ENCODINGS, MAX_ANSWER_BYTES, encode_image, encode_value, space_to_json
from vlm_envs.running.wrappers import TextActions

MAX_TEXT_CHARS = 1_000_000  # a step's text, and each replayed text; a model's answer is a few KB
MAX_EPISODE_ID_CHARS = 255
DEFAULT_IMAGE_ENCODING = "png"
# gym.make arguments that are not the env's own but are safe to pass from a client
_MAKE_ARGUMENTS = ("max_episode_steps",)
MAX_CLIENT_EPISODE_STEPS = 100_000
"""The largest ``max_episode_steps`` a client may ask for (the registered default is
:data:`vlm_envs.core.registration.MAX_EPISODE_STEPS`)."""
# An absolute path of two or more parts (``/etc/S2.png``, ``~/games/x``) in an error message; one
# part is too often not a path (``+/-``): the server's own one-part paths are masked by value.
_ANY_SERVER_PATH = re.compile(r"(?<![\w/.~-])~?/[\w.-]+(?:/[\w.-]*)+")
_MASK = "<server path>"


class MessageError(ValueError):
    """A message the protocol refuses; ``code`` is OpenEnv's error code for it."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class PathMask:
    """Turns an error into the message a client may see: no path on the server shows in it.

    The values of the server's own path arguments (``card_art``, ``game_dir``, ``game_files`` in
    ``server_kwargs``) are masked exactly, as given and as absolute and resolved paths, whatever
    they hold (spaces, one part, relative); any other absolute path is masked by its look.
    """

    def __init__(self, env_id: str, server_kwargs: dict[str, Any]):
        spellings: set[str] = set()
        for name in path_arguments(env_id) & set(server_kwargs):
            value = server_kwargs[name]
            paths = () if value is None else (value,) if isinstance(value, (str, os.PathLike)) else value
            for path in paths:
                spellings |= _spellings(os.fspath(path))
        # longest first, so a path is masked whole before a shorter value inside it (its relative form)
        alternatives = [_as_word(s) for s in sorted(spellings, key=len, reverse=True) if any(c.isalnum() for c in s)]
        self._own_paths = re.compile("|".join(alternatives)) if alternatives else None

    def client_message(self, err: BaseException) -> str:
        """``str(err)`` (or its type's name) with the server's paths masked."""
        message = str(err) or type(err).__name__
        if self._own_paths is not None:
            message = self._own_paths.sub(_MASK, message)
        return _ANY_SERVER_PATH.sub(_MASK, message)


def _spellings(path: str) -> set[str]:
    """``path`` as given, and as the absolute and resolved paths an env's message may show instead."""
    expanded = os.path.expanduser(path)
    return {path, expanded, os.path.abspath(expanded), os.path.realpath(expanded)}


def _as_word(text: str) -> str:
    """A pattern matching ``text`` not as part of a longer word (``art`` is not masked in ``start``)."""
    before = r"(?<!\w)" if re.match(r"\w", text[0]) else ""
    after = r"(?!\w)" if re.match(r"\w", text[-1]) else ""
    return before + re.escape(text) + after


# -- what a client may choose ---------------------------------------------------------------------
def check_env_id(env_id: str) -> str:
    """``env_id`` if vlm_envs registered it; anything else (``os:system``, a ``module:id``) is refused."""
    if not isinstance(env_id, str) or env_id not in registered_ids():
        raise ValueError(f"only ids registered by vlm_envs can be served, got {env_id!r}; known: {', '.join(registered_ids())}")
    return env_id


def check_env_kwargs(env_id: str, env_kwargs: Any, *, from_client: bool = True) -> dict[str, Any]:
    """``env_kwargs`` if every key is an argument of the env's own constructor (or ``max_episode_steps``);
    from a client, the arguments that name server paths (:func:`path_arguments`) are refused."""
    if not isinstance(env_kwargs, dict):
        raise TypeError(f"env_kwargs must be a JSON object, got {type(env_kwargs).__name__}")
    server_only = sorted(set(env_kwargs) & path_arguments(env_id)) if from_client else []
    if server_only:
        raise ValueError(f"{server_only} name paths on the server: only the server's --env-kwargs may set them")
    own = [name for name in constructor_arguments(env_id) if name != "render_mode"]
    unknown = sorted(set(env_kwargs) - set(own) - set(_MAKE_ARGUMENTS))
    if unknown:
        raise ValueError(f"{env_id} has no argument(s) {unknown}; it takes {own + list(_MAKE_ARGUMENTS)}")
    if "max_episode_steps" in env_kwargs:  # gym.make's own argument: no env constructor checks it
        check_int("max_episode_steps", env_kwargs["max_episode_steps"], 1, MAX_CLIENT_EPISODE_STEPS)
    return dict(env_kwargs)


def check_text_actions(text_actions: Any) -> dict[str, Any] | None:
    """``True`` or a dict of ``TextActions`` arguments -> that dict; ``False`` -> ``None`` (index actions)."""
    if text_actions is True:
        return {}
    if text_actions is False:
        return None
    if not isinstance(text_actions, dict):
        raise TypeError(f"text_actions must be true, false or a JSON object of TextActions arguments, got {text_actions!r}")
    own = [name for name in inspect.signature(TextActions).parameters if name != "env"]
    unknown = sorted(set(text_actions) - set(own))
    if unknown:
        raise ValueError(f"TextActions has no argument(s) {unknown}; it takes {own}")
    return dict(text_actions)


def check_replay(replay: Any) -> tuple[str, ...]:
    """Texts to replay after a reset, each within the step limit."""
    if replay is None:
        return ()
    if not isinstance(replay, list) or not all(isinstance(text, str) for text in replay):
        raise TypeError("replay must be a list of texts")
    too_long = [k for k, text in enumerate(replay) if len(text) > MAX_TEXT_CHARS]
    if too_long:
        raise ValueError(f"replay text(s) {too_long[:5]} are longer than a step's {MAX_TEXT_CHARS:,} characters")
    return tuple(replay)


def env_class(env_id: str) -> type:
    """The class ``gym.make(env_id)`` builds (from vlm_envs' own registry entry, never from client text)."""
    return load_env_creator(gym.spec(check_env_id(env_id)).entry_point)


# -- the session's env ----------------------------------------------------------------------------
class _ResetRequest(NamedTuple):
    """A checked reset: ``config`` is ``(env_kwargs over the server's defaults, TextActions arguments or None)``."""

    seed: int | None
    episode_id: str | None
    options: dict | None
    config: tuple[dict[str, Any], dict[str, Any] | None]
    image_encoding: str
    replay: tuple[str, ...]


class ServedEnv:
    """One session's env: ``TextActions(gym.make(env_id, **env_kwargs), **text_actions)``, or the
    plain env when the session resets with ``text_actions=false``, so a session plays exactly as
    that local env. A reset may change the configuration; the env is rebuilt only when it does.

    ``defaults`` are the server's ``--env-kwargs`` (checked by the caller, path arguments allowed).
    """

    def __init__(self, env_id: str, defaults: dict[str, Any]):
        self.env_id = env_id
        self.session_id = uuid.uuid4().hex[:12]
        self._defaults = defaults
        self._config: tuple[dict[str, Any], dict[str, Any] | None] = (defaults, {})
        self._image_encoding = DEFAULT_IMAGE_ENCODING
        self._env: gym.Env | None = self._build(*self._config)
        self._episode_id: str | None = None
        self._steps = 0
        self._lost = "no episode yet: reset the session first"  # why a step cannot be played; "" once reset

    def _build(self, env_kwargs: dict[str, Any], text_actions: dict[str, Any] | None) -> gym.Env:
        try:
            env = gym.make(self.env_id, **env_kwargs)
        except TypeError as err:
            # gymnasium re-raises a constructor's TypeError as "... was raised from the environment
            # creator for ID with kwargs ({...})": every kwarg, the server's own paths among them.
            # The env's own message names the argument at fault; that is the answer.
            cause = err.__cause__
            if isinstance(cause, TypeError) and str(err).startswith(f"{cause} was raised from the environment creator"):
                raise cause from None
            raise
        return TextActions(env, **text_actions) if text_actions is not None else env

    def reset(self, data: dict[str, Any]) -> str:
        """Start an episode; ``env_kwargs`` (over the server's defaults), ``text_actions`` and
        ``image_encoding`` configure the session. A failed reset loses the episode."""
        unknown = sorted(set(data) - set(_RESET_FIELDS))
        if unknown:
            raise MessageError("VALIDATION_ERROR", f"unknown reset field(s) {unknown[:5]!r:.200}; a reset takes {list(_RESET_FIELDS)}")
        request = self._check_reset(**data)
        if request.config != self._config:
            env = self._build(*request.config)  # first, so that a refused configuration leaves the session as it was
            self._env.close()
            self._env, self._config = env, request.config
        self._image_encoding = request.image_encoding
        self._lost = "the episode was lost: the last reset failed; reset again"
        if request.replay:  # TextActions replays the texts after the reset (restoring a checkpointed episode)
            self._env.replay_on_reset = request.replay
        obs, info = self._env.reset(seed=request.seed, options=request.options)
        self._episode_id, self._steps, self._lost = request.episode_id or uuid.uuid4().hex[:12], 0, ""
        return self._answer(obs, None, False, False, info)

    def step(self, data: dict[str, Any]) -> str:
        """One step: ``{"text": ...}`` (text-action sessions) or ``{"index": ...}``."""
        unknown = sorted(set(data) - {"text", "index"})
        if unknown:
            raise MessageError("VALIDATION_ERROR", f'unknown step field(s) {unknown[:5]!r:.200}; a step is {{"text": ...}} or {{"index": ...}}')
        text, index = data.get("text"), data.get("index")
        if (text is None) == (index is None):
            raise MessageError("VALIDATION_ERROR", 'a step carries exactly one of "text" or "index"')
        if text is not None and not isinstance(text, str):
            raise MessageError("VALIDATION_ERROR", f'"text" must be a string, got {type(text).__name__}')
        if text is not None and len(text) > MAX_TEXT_CHARS:
            raise MessageError("VALIDATION_ERROR", f'"text" must have at most {MAX_TEXT_CHARS:,} characters, got {len(text):,}')
        if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
            raise MessageError("VALIDATION_ERROR", f'"index" must be a non-negative integer, got {index!r}')
        if self._lost:
            raise RuntimeError(f"session {self.session_id}: {self._lost}")
        text_session = self._config[1] is not None or isinstance(self._env.action_space, gym.spaces.Text)
        if text_session and text is None:
            raise ValueError('this session takes text actions ({"text": ...}); reset with text_actions=false for indices')
        if not text_session and index is None:
            raise ValueError('this session takes action indices ({"index": ...}); reset with text_actions=true for text')
        obs, reward, terminated, truncated, info = self._env.step(text if text_session else index)
        self._steps += 1
        return self._answer(obs, reward, bool(terminated), bool(truncated), info)

    def state(self) -> str:
        """The session, and everything a client needs to mirror the env: spaces, prompt task and parameters, names.
        Server paths among the make kwargs are left out."""
        env = self._env
        base = env.env if isinstance(env, TextActions) else env
        paths = path_arguments(self.env_id)
        return _json({"type": "state", "data": {
            "episode_id": self._episode_id, "step_count": self._steps, "session_id": self.session_id, "env_id": self.env_id,
            "env_kwargs": encode_value({k: v for k, v in self._config[0].items() if k not in paths}),
            "observation_space": space_to_json(env.observation_space), "action_space": space_to_json(base.action_space),
            "text_action_space": space_to_json(TextActions(base).action_space), "prompt_task": env.unwrapped.prompt_task,
            "action_names": list(env.unwrapped.action_names), "prompt_params": encode_value(dict(env.unwrapped.prompt_params)),
            "metadata": encode_value(dict(env.metadata)),
            "max_episode_steps": env.spec.max_episode_steps if env.spec is not None else None,
        }})

    def close(self) -> None:
        """Free the env."""
        if self._env is not None:
            self._env.close()
            self._env = None

    # -- helpers ----------------------------------------------------------------------------
    def _check_reset(self, seed: Any = None, episode_id: Any = None, options: Any = None, env_kwargs: Any = None,
                     text_actions: Any = True, image_encoding: Any = DEFAULT_IMAGE_ENCODING, env_id: Any = None,
                     replay: Any = None) -> _ResetRequest:
        """A reset message's fields (these parameters are the protocol's list of them), checked."""
        if env_id is not None and check_env_id(env_id) != self.env_id:
            raise ValueError(f"this server serves {self.env_id}, not {env_id}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or null, got {seed!r}")
        if episode_id is not None and (not isinstance(episode_id, str) or len(episode_id) > MAX_EPISODE_ID_CHARS):
            raise ValueError(f"episode_id must be a string of at most {MAX_EPISODE_ID_CHARS} characters or null")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a JSON object or null, got {options!r}")
        if image_encoding not in IMAGE_ENCODINGS:
            raise ValueError(f"image_encoding must be one of {IMAGE_ENCODINGS}, got {image_encoding!r}")
        config = ({**self._defaults, **check_env_kwargs(self.env_id, {} if env_kwargs is None else env_kwargs)},
                  check_text_actions(text_actions))
        replay = check_replay(replay)
        if replay and config[1] is None:
            raise ValueError("replay needs a text-action session (text_actions=true)")
        return _ResetRequest(seed, episode_id, options, config, image_encoding, replay)

    def _answer(self, obs: dict, reward: Any, terminated: bool, truncated: bool, info: dict) -> str:
        """OpenEnv's observation message: ``{"observation": {...}, "reward", "done"}``."""
        if reward is not None and type(reward) not in (int, float):
            reward = float(reward)
        text = _json({"type": "observation", "data": {
            "observation": {"image": encode_image(obs["image"], self._image_encoding), "text": obs["text"],
                            "info": encode_value(info), "terminated": terminated, "truncated": truncated},
            "reward": reward, "done": terminated or truncated,
        }})
        if len(text) > MAX_ANSWER_BYTES:
            height, width = obs["image"].shape[:2]
            raise ValueError(f"the answer is {len(text) / 2**20:.0f} MiB, over the {MAX_ANSWER_BYTES / 2**20:.0f} MiB message limit "
                             f"of the clients ({self._image_encoding} {height}x{width} frames): use image_encoding='png' "
                             f"or a smaller image_size")
        return text


_RESET_FIELDS = tuple(inspect.signature(ServedEnv._check_reset).parameters)[1:]  # the fields of a reset's "data"


def _json(message: dict[str, Any]) -> str:
    """A message as JSON text; ASCII, so a lone surrogate in a client's text travels as ``\\udXXX``
    and comes back as the same string, as the local env would keep it."""
    return json.dumps(message, ensure_ascii=True)

