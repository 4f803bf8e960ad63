"""Serve one registered vlm_envs id through OpenEnv's server (``pip install "vlm-envs[serve]"``).

    python -m vlm_envs serve --env gym_cards/Points24-v0 --port 8000 --max-sessions 32 --token SECRET

The server is OpenEnv's (:class:`openenv.core.env_server.HTTPEnvServer` on a FastAPI app): each
WebSocket connection to ``/ws`` is one session that owns one env, built by :class:`ServedEnv`;
OpenEnv caps the sessions (``--max-sessions``), reaps idle ones (``--idle-timeout``) and answers
malformed messages with an error while the other sessions go on. This module adds what OpenEnv
leaves to the application:

* the env: only an id registered by vlm_envs, never a ``module:Class`` entry point, with make
  kwargs checked against the env's own arguments;
* the session's messages: ``reset`` (seed, options, make kwargs, text or index actions, image
  encoding) and ``step`` (``{"text": ...}`` or ``{"index": ...}``); the answer carries the image
  (base64 PNG or raw bytes), the text, the typed info, the reward and both end flags;
* access: an ASGI middleware that requires ``Authorization: Bearer <token>`` (``--token``) on
  every HTTP request and WebSocket handshake; the server binds 127.0.0.1 unless told otherwise.

Wire format and client: docs/serving.md, :class:`vlm_envs.remote.RemoteEnv`.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import inspect
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

from vlm_envs.optional import require
from vlm_envs.registration import registered_ids
from vlm_envs.remote._openenv import import_openenv
from vlm_envs.remote.codec import IMAGE_ENCODINGS, encode_image, encode_value, space_to_json
from vlm_envs.wrappers import TextActions

import_openenv("the env server")  # before any of its dependencies, so a missing extra is named
from fastapi import FastAPI  # noqa: E402
from pydantic import Field, StrictInt, StrictStr  # noqa: E402
from openenv.core.env_server import Action, ConcurrencyConfig, Environment, HTTPEnvServer, Observation, ServerMode, State  # noqa: E402

MAX_TEXT_CHARS = 1_000_000  # a step's text; longer is refused (a model's answer is a few KB)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a WebSocket frame; larger closes that session's connection
DEFAULT_IMAGE_ENCODING = "png"
# gym.make arguments that are not the env's own but are safe to pass from a client
_MAKE_ARGUMENTS = ("max_episode_steps",)
# Env arguments that name files on the server: only the server's own --env-kwargs may set them,
# so client text never chooses what the server reads from disk.
SERVER_ONLY_ARGUMENTS = ("game_dir", "game_files")


class StepAction(Action):
    """A step: the model's raw text (parsed by ``TextActions``) or an action index, exactly one."""

    text: StrictStr | None = Field(default=None, max_length=MAX_TEXT_CHARS, description="the model's output text")
    index: StrictInt | None = Field(default=None, ge=0, description="an action index (sessions reset with text_actions=false)")


class StepObservation(Observation):
    """A reset or step answer. ``reward`` and ``done`` (terminated or truncated) are OpenEnv's fields."""

    image: dict[str, Any] = Field(description="{encoding: png|raw, shape: [H, W, 3], data: base64}")
    text: str = Field(description='obs["text"]')
    info: dict[str, Any] = Field(description="the step's info, tagged JSON (vlm_envs.remote.codec)")
    terminated: bool = False
    truncated: bool = False


def check_env_id(env_id: str) -> str:
    """``env_id`` if vlm_envs registered it; anything else (``os:system``, a ``module:id``) is refused."""
    if not isinstance(env_id, str) or env_id not in registered_ids():
        raise ValueError(f"only ids registered by vlm_envs can be served, got {env_id!r}; known: {', '.join(registered_ids())}")
    return env_id


def check_env_kwargs(env_id: str, env_kwargs: Any, *, from_client: bool = True) -> dict[str, Any]:
    """``env_kwargs`` if every key is an argument of the env's own constructor (or ``max_episode_steps``);
    from a client, arguments naming server files (:data:`SERVER_ONLY_ARGUMENTS`) are refused."""
    if not isinstance(env_kwargs, dict):
        raise TypeError(f"env_kwargs must be a JSON object, got {type(env_kwargs).__name__}")
    server_only = sorted(set(env_kwargs) & set(SERVER_ONLY_ARGUMENTS)) if from_client else []
    if server_only:
        raise ValueError(f"{server_only} name files on the server: only the server's --env-kwargs may set them")
    own = list(_own_arguments(env_id))
    unknown = sorted(set(env_kwargs) - set(own) - set(_MAKE_ARGUMENTS))
    if unknown:
        raise ValueError(f"{env_id} has no argument(s) {unknown}; it takes {own + list(_MAKE_ARGUMENTS)}")
    return dict(env_kwargs)


@functools.lru_cache(maxsize=None)
def _own_arguments(env_id: str) -> tuple[str, ...]:
    """The env's own constructor arguments (fixed per id: computed once, not on every reset)."""
    creator = load_env_creator(gym.spec(check_env_id(env_id)).entry_point)  # our own registry entry, never client text
    return tuple(name for name in _constructor_arguments(creator) if name != "render_mode")


def _constructor_arguments(cls: type) -> list[str]:
    """The named arguments of ``cls(...)``, following ``**kwargs`` up to the base classes that take them."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in klass.__dict__:
            continue
        params = list(inspect.signature(klass.__dict__["__init__"]).parameters.values())[1:]
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


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


class ServedEnv(Environment):
    """One session's env, behind OpenEnv's ``Environment`` API.

    The env is ``TextActions(gym.make(env_id, **env_kwargs), **text_actions)`` (or the plain env
    when the session resets with ``text_actions=false``), so a session plays exactly as that
    local env. A reset may change the configuration; the env is rebuilt only when it does.
    """

    SUPPORTS_CONCURRENT_SESSIONS = True  # every session owns its env; nothing is shared

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None = None):
        super().__init__()
        self.env_id = check_env_id(env_id)
        self.session_id = uuid.uuid4().hex[:12]
        self._defaults = check_env_kwargs(env_id, env_kwargs or {}, from_client=False)  # the server's --env-kwargs
        self._config = (self._defaults, {})
        self._image_encoding = DEFAULT_IMAGE_ENCODING
        self._env: gym.Env | None = self._build(*self._config)
        self.thread_safe = bool(getattr(self._env.unwrapped, "thread_safe", True))
        self._episode_id: str | None = None
        self._steps = 0
        self._closed = ""

    def _build(self, env_kwargs: dict[str, Any], text_actions: dict[str, Any] | None) -> gym.Env:
        env = gym.make(self.env_id, **env_kwargs)
        return TextActions(env, **text_actions) if text_actions is not None else env

    # -- OpenEnv API ------------------------------------------------------------------------
    def reset(
        self,
        seed: int | None = None,
        episode_id: str | None = None,
        options: dict[str, Any] | None = None,
        env_kwargs: dict[str, Any] | None = None,
        text_actions: bool | dict[str, Any] = True,
        image_encoding: str = DEFAULT_IMAGE_ENCODING,
        env_id: str | None = None,
        replay: list[str] | None = None,
        **unknown: Any,
    ) -> StepObservation:
        """Start an episode; ``env_kwargs`` (over the server's defaults), ``text_actions`` and ``image_encoding`` configure the session."""
        self._check_open()
        if unknown:
            raise ValueError(f"unknown reset field(s) {sorted(unknown)}")
        if env_id is not None and check_env_id(env_id) != self.env_id:
            raise ValueError(f"this server serves {self.env_id}, not {env_id}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or null, got {seed!r}")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a JSON object or null, got {options!r}")
        if image_encoding not in IMAGE_ENCODINGS:
            raise ValueError(f"image_encoding must be one of {IMAGE_ENCODINGS}, got {image_encoding!r}")
        if replay is not None and (not isinstance(replay, list) or not all(isinstance(t, str) for t in replay)):
            raise TypeError("replay must be a list of texts")
        config = ({**self._defaults, **check_env_kwargs(self.env_id, env_kwargs or {})}, check_text_actions(text_actions))
        if config != self._config:
            env = self._build(*config)  # first, so that a refused configuration leaves the session as it was
            self._close_env()
            self._env, self._config = env, config
        self._image_encoding = image_encoding
        if replay:  # TextActions replays the texts after the reset (restoring a checkpointed episode)
            if not isinstance(self._env, TextActions):
                raise ValueError("replay needs a text-action session (text_actions=true)")
            self._env.replay_on_reset = tuple(replay)
        obs, info = self._env.reset(seed=seed, options=options)
        self._episode_id, self._steps = episode_id or uuid.uuid4().hex[:12], 0
        return self._answer(obs, None, False, False, info)

    def step(self, action: StepAction, timeout_s: float | None = None, **kwargs: Any) -> StepObservation:
        self._check_open()
        if (action.text is None) == (action.index is None):
            raise ValueError('a step carries exactly one of "text" or "index"')
        text_session = self._config[1] is not None or isinstance(self._env.action_space, gym.spaces.Text)
        if text_session and action.text is None:
            raise ValueError('this session takes text actions ({"text": ...}); reset with text_actions=false for indices')
        if not text_session and action.index is None:
            raise ValueError('this session takes action indices ({"index": ...}); reset with text_actions=true for text')
        obs, reward, terminated, truncated, info = self._env.step(action.text if text_session else action.index)
        self._steps += 1
        return self._answer(obs, reward, bool(terminated), bool(truncated), info)

    @property
    def state(self) -> State:
        """The session, and everything a client needs to mirror the env: spaces, prompt task and parameters, names."""
        self._check_open()
        env = self._env
        base = env.env if isinstance(env, TextActions) else env
        return State(
            episode_id=self._episode_id, step_count=self._steps, session_id=self.session_id, env_id=self.env_id,
            env_kwargs=self._config[0], observation_space=space_to_json(env.observation_space),
            action_space=space_to_json(base.action_space), text_action_space=space_to_json(TextActions(base).action_space),
            prompt_task=env.unwrapped.prompt_task, action_names=list(env.unwrapped.action_names),
            prompt_params=encode_value(dict(env.unwrapped.prompt_params)),
            metadata=encode_value(dict(env.metadata)),
            max_episode_steps=env.spec.max_episode_steps if env.spec is not None else None,
        )

    def close(self) -> None:
        """Free the env (OpenEnv calls this when the session ends or idles past the timeout)."""
        self._close_env()
        self._closed = f"session {self.session_id} was closed by the server (client gone or idle past the timeout)"

    # -- helpers ----------------------------------------------------------------------------
    def _answer(self, obs: dict, reward: Any, terminated: bool, truncated: bool, info: dict) -> StepObservation:
        return StepObservation(
            image=encode_image(obs["image"], self._image_encoding), text=obs["text"], info=encode_value(info),
            terminated=terminated, truncated=truncated, done=terminated or truncated,
            reward=None if reward is None else (reward if type(reward) in (int, float) else float(reward)),
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(self._closed)

    def _close_env(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


class SerialServedEnv(ServedEnv):
    """A :class:`ServedEnv` for envs that are not thread-safe: OpenEnv runs every session on one shared thread."""

    REQUIRES_SINGLE_THREAD_EXECUTOR = True


class BearerToken:
    """ASGI middleware: every HTTP request and WebSocket handshake must carry ``Authorization: Bearer <token>``.

    OpenEnv's app has no authentication of its own. A refused HTTP request gets 401; a refused
    WebSocket handshake is closed before it is accepted (the client sees HTTP 403).
    """

    def __init__(self, app, token: str):
        if not token:
            raise ValueError("the token must be a non-empty string")
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self._expected):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await receive()  # the websocket.connect event
            return await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong bearer token"})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": b'{"detail": "missing or wrong bearer token"}'})


def create_app(
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    max_sessions: int = 8,
    token: str | None = None,
    idle_timeout_s: float | None = 600.0,
):
    """OpenEnv's FastAPI app serving ``env_id``, with the bearer-token check when ``token`` is set.

    Checks the id and the kwargs, and builds one env first, so a bad configuration fails here
    rather than in the first session.
    """
    probe = ServedEnv(env_id, env_kwargs)
    session_class = ServedEnv if probe.thread_safe else SerialServedEnv
    probe.close()
    config = ConcurrencyConfig(max_concurrent_envs=max_sessions, session_timeout=idle_timeout_s)
    app = FastAPI(title=f"vlm_envs: {env_id}", description="OpenEnv server; sessions on the /ws WebSocket (docs/serving.md)")
    # OpenEnv's "production" mode: the session WebSocket without the stateless HTTP /reset, /step and
    # /state, which build a fresh env per request (so they never continue an episode, and they
    # would build envs past --max-sessions).
    server = HTTPEnvServer(functools.partial(session_class, env_id, env_kwargs), StepAction, StepObservation,
                           concurrency_config=config)
    server.register_routes(app, mode=ServerMode.PRODUCTION)
    return BearerToken(app, token) if token else app


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Run ``app`` on a free port (``port=0``) in a background thread; yields its ``http://`` URL, stops on exit.

    For notebooks, tests and benchmarks: the server shares the process, so it starts in a blink.
    """
    uvicorn = require("uvicorn", "serve", "the env server")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted server can take its port back
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, ws_max_size=MAX_MESSAGE_BYTES, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="vlm-envs-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {start_timeout_s:g} s")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def serve(
    env_id: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    env_kwargs: dict[str, Any] | None = None,
    max_sessions: int = 8,
    token: str | None = None,
    idle_timeout_s: float | None = 600.0,
) -> None:
    """Run the server until interrupted (``python -m vlm_envs serve``)."""
    uvicorn = require("uvicorn", "serve", "the env server")
    app = create_app(env_id, env_kwargs, max_sessions, token, idle_timeout_s)
    uvicorn.run(app, host=host, port=port, ws_max_size=MAX_MESSAGE_BYTES, log_level="warning")


__all__ = ["BearerToken", "ServedEnv", "StepAction", "StepObservation", "check_env_id", "check_env_kwargs", "create_app", "serve", "serve_in_thread"]
