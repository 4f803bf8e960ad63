"""Clients of a vlm_envs env server: a gymnasium ``Env`` and a ``VectorEnv`` (``pip install "vlm-envs[serve]"``).

    from vlm_envs.remote import RemoteEnv, make_remote_vec

    env = RemoteEnv("http://127.0.0.1:8000")            # same spaces as TextActions(gym.make(id))
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step('{"action": "8"}')

    envs = make_remote_vec("http://127.0.0.1:8000", 8)  # as gym.make_vec(id, 8, wrappers=[TextActions])

Each :class:`RemoteEnv` is one session (one WebSocket) on the server, spoken to with OpenEnv's
``EnvClient``. Its answers are the local env's, type for type: the same seed and actions give the
same pixels, text, rewards, flags and info (``tests/remote/test_remote.py``).

Failures are never silent and never hang: a lost or silent server raises ``ConnectionError``
naming the session after at most ``message_timeout_s``, and every later call says why; an error
answer (bad input, a step before reset, an env error) raises :class:`ServerError` with the
server's reason. With ``reconnect=True`` the client instead opens a fresh session (retrying a
full or unreachable server for ``reconnect_timeout_s``; a refused token, :class:`TokenRefused`,
fails at once), replays the episode (every reset and action since the last seeded reset) and
checks that each replayed answer equals the recorded one before going on; if that fails, the
episode is lost and every later call says so, and why.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any
from urllib.parse import urlsplit

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from vlm_envs.running.actor_vector import ActorVectorEnv, EnvWorker, ThreadWorkers
from vlm_envs.running.branching import EpisodeLog, EpisodeRecord
from vlm_envs.remote._openenv import import_openenv
from vlm_envs.remote.codec import IMAGE_ENCODINGS, MAX_ANSWER_BYTES, decode_image, decode_value, space_from_json

import_openenv("the remote env client")
from openenv.core.client_types import StepResult  # noqa: E402
from openenv.core.env_client import EnvClient  # noqa: E402
from websockets.asyncio.client import connect as ws_connect  # noqa: E402

from vlm_envs.remote.wire import StepAction, StepAnswer, StepObservation  # noqa: E402

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_RECONNECT_FIRST_WAIT_S, _RECONNECT_MAX_WAIT_S = 0.1, 2.0


class ServerError(RuntimeError):
    """The server answered a message with an error; ``code`` is OpenEnv's (``EXECUTION_ERROR``, ...)."""

    def __init__(self, session: str, code: str, message: str, details: dict | None = None):
        super().__init__(f"{session}: server error {code}: {message}")
        self.code, self.reason, self.details = code, message, details or {}


class SessionRefused(ConnectionRefusedError):
    """The server did not open a session: it is full (``--max-sessions`` reached), or (:class:`TokenRefused`) the token is wrong."""


class TokenRefused(SessionRefused):
    """The server refused the token (missing or wrong): retrying cannot help, so ``reconnect`` does not."""


class _SessionClient(EnvClient[dict, dict, dict]):
    """OpenEnv's WebSocket client for one session, plus the bearer token and a clear error per failure."""

    def __init__(self, url: str, token: str | None, connect_timeout_s: float, message_timeout_s: float, compression: bool):
        super().__init__(url, connect_timeout_s=connect_timeout_s, message_timeout_s=message_timeout_s, max_message_size_mb=MAX_ANSWER_BYTES / 2**20)
        self._token, self._compression = token, compression
        self._broken = False  # a message failed: the connection is only dropped, never used again
        self.name = f"session on {url}"

    async def connect(self) -> _SessionClient:
        """OpenEnv's ``connect`` with an ``Authorization`` header; loopback never goes through a proxy."""
        if self._ws is not None:
            return self
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        proxy = None if urlsplit(self._ws_url).hostname in _LOOPBACK else True
        try:
            self._ws = await ws_connect(self._ws_url, open_timeout=self._connect_timeout, max_size=self._max_message_size,
                                        additional_headers=headers, proxy=proxy,
                                        compression="deflate" if self._compression else None)
        except Exception as err:
            status = getattr(getattr(err, "response", None), "status_code", None)
            if status in (401, 403):
                raise TokenRefused(f"{self._ws_url} refused the connection (HTTP {status}): missing or wrong token") from err
            raise ConnectionError(f"cannot connect to {self._ws_url}: {err}") from err
        return self

    async def disconnect(self) -> None:
        """Ask the server to end the session and let it close the connection (it frees the env first).

        OpenEnv's client closes its side right after the ``close`` message, which races the
        server's own close and makes it log an error per session.
        """
        if self._ws is None:
            return
        if self._broken:  # the server is gone or hung: do not wait for it
            self._ws.transport.abort()
            self._ws = None
            return
        try:
            await self._send({"type": "close"})
            await asyncio.wait_for(self._ws.wait_closed(), timeout=self._connect_timeout)
        except Exception:  # the server is gone already, or slow: drop our side
            pass
        finally:
            await self._ws.close()
            self._ws = None

    async def _send_and_receive(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._broken:
            raise ConnectionError(f"{self.name}: the connection was lost earlier")
        try:
            await self._send(message)
            response = await self._receive()
        except Exception as err:
            self._broken = True
            response = None if isinstance(err, TimeoutError) else await self._last_words()
            if response is None:
                if isinstance(err, TimeoutError):
                    raise ConnectionError(f"{self.name}: no answer within {self._message_timeout:g} s") from err
                # OSError, websockets' ConnectionClosed and friends
                raise ConnectionError(f"{self.name}: connection lost ({type(err).__name__}: {err})") from err
        if response.get("type") == "error":
            data = response.get("data", {})
            code, reason = str(data.get("code", "UNKNOWN")), str(data.get("message", "unknown error"))
            if code == "CAPACITY_REACHED":
                raise SessionRefused(f"{self.name}: the server is full ({reason})")
            raise ServerError(self.name, code, reason, {k: v for k, v in data.items() if k not in ("code", "message")})
        return response

    async def _last_words(self) -> dict[str, Any] | None:
        """The error the server sent before closing, if any: a full server refuses and closes at once,
        possibly before the client's first message goes out."""
        try:
            message = json.loads(await asyncio.wait_for(self._ws.recv(), timeout=1.0))
        except Exception:
            return None
        return message if isinstance(message, dict) and message.get("type") == "error" else None

    def _step_payload(self, action: StepAction) -> dict:
        return action.model_dump(exclude_none=True)

    def _parse_result(self, payload: dict) -> StepResult[StepObservation]:
        answer = StepAnswer.model_validate(payload)
        return StepResult(observation=answer.observation, reward=answer.reward, done=answer.done)

    def _parse_state(self, payload: dict) -> dict:
        return payload


class RemoteEnv(gym.Env):
    """One env on a vlm_envs server, behind gymnasium's ``Env`` API.

    Args:
        url: the server, ``http://host:port`` (or ``ws://``).
        env_id: the id you expect the server to serve; checked, so a client never plays the wrong game.
        env_kwargs: make kwargs for this session's env (checked by the server against the env's arguments).
        text_actions: ``True`` (default): ``step`` takes the model's text, as
            ``vlm_envs.TextActions(env)``; a dict: ``TextActions`` arguments (``mode``,
            ``on_parse_failure``, ``format_penalty``, ``aliases``); ``False``: action indices, as
            the plain env (ALFWorld takes text either way).
        image_encoding: ``"png"`` (default) or ``"raw"``; see docs/serving.md for which is faster where.
        token: the server's ``--token``.
        reconnect: on a lost connection, replay the episode on a fresh session (see the module docs).
        connect_timeout_s, message_timeout_s: bounds on connecting and on each answer.
        reconnect_timeout_s: how long ``reconnect`` keeps trying to reach the server.
        compression: WebSocket permessage-deflate (off by default: the image is compressed or not by ``image_encoding``).
    """

    def __init__(
        self,
        url: str,
        *,
        env_id: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
        text_actions: bool | dict[str, Any] = True,
        image_encoding: str = "png",
        token: str | None = None,
        reconnect: bool = False,
        connect_timeout_s: float = 10.0,
        message_timeout_s: float = 60.0,
        reconnect_timeout_s: float = 30.0,
        compression: bool = False,
    ):
        if image_encoding not in IMAGE_ENCODINGS:
            raise ValueError(f"image_encoding must be one of {IMAGE_ENCODINGS}, got {image_encoding!r}")
        if not isinstance(text_actions, (bool, dict)):
            raise TypeError(f"text_actions must be a bool or a dict of TextActions arguments, got {text_actions!r}")
        self.url = url
        self._connection = dict(token=token, connect_timeout_s=connect_timeout_s, message_timeout_s=message_timeout_s,
                                compression=compression)
        self._config = {"env_kwargs": dict(env_kwargs or {}), "text_actions": text_actions,
                        "image_encoding": image_encoding, "env_id": env_id}
        self.reconnect, self.reconnect_timeout_s = reconnect, reconnect_timeout_s
        # (kind, payload, digest of the answer) since the last seeded reset; None: nothing seeded to replay from
        self._history: list[tuple[str, Any, str]] | None = []
        self.replay_on_reset: tuple[str, ...] = ()  # as vlm_envs.TextActions: texts the next reset plays (on the server)
        self._log = EpisodeLog()
        self._client = None
        self._lost = ""  # why the episode could not be restored; once set, every call raises it
        self._open()

    # -- session ----------------------------------------------------------------------------
    def _open(self) -> None:
        """Open a session and read the env's description (spaces, prompt task, action names) from it."""
        client = _SessionClient(self.url, **self._connection).sync()
        try:
            client.connect()
            if self._config["env_kwargs"]:  # the server builds the env with these kwargs at a reset
                client.reset(**self._config)
            state = client.state()
        except BaseException:
            _close_quietly(client)
            raise
        expected = self._config["env_id"]
        if expected is not None and state["env_id"] != expected:
            _close_quietly(client)
            raise ValueError(f"{self.url} serves {state['env_id']}, not {expected}")
        self._client, self.session_id = client, state["session_id"]
        client.async_client.name = f"session {self.session_id} on {self.url}"
        self.env_id = state["env_id"]
        self.observation_space = space_from_json(state["observation_space"])
        text = self._config["text_actions"] is not False
        self.action_space = space_from_json(state["text_action_space" if text else "action_space"])
        self.metadata = decode_value(state["metadata"])
        self.prompt_task = state["prompt_task"]
        self.prompt_params = decode_value(state.get("prompt_params", {}))
        self.action_names = tuple(state["action_names"])
        self.max_episode_steps = state["max_episode_steps"]
        self._text_session = isinstance(self.action_space, gym.spaces.Text)

    def _call(self, kind: str, payload: Any) -> tuple:
        """Send one reset or step and unpack the answer; on a lost connection, fail clearly or
        (``reconnect``) restore the episode."""
        if self._lost:
            raise ConnectionError(self._lost)
        if self._client is None:
            raise ConnectionError(f"{self.url}: this RemoteEnv is closed")
        try:
            return self._send(kind, payload)
        except ConnectionError as err:
            # The connection's state is unknown now (a late answer could pair with the next message): drop it.
            if not self.reconnect:
                self._lose(f"{err}; this RemoteEnv has no connection since (reconnect=False): make a new one")
                raise
            _close_quietly(self._client)
            self._client = None
            lost = str(err)
        try:
            self._restore(lost)
        except BaseException as err:
            self._lose(f"{self.url}: the episode was lost: {err}")
            raise
        return self._send(kind, payload)

    def _lose(self, why: str) -> None:
        """Give the episode up: drop the connection, and make every later call raise ``why``."""
        self._lost = why
        if self._client is not None:
            _close_quietly(self._client)
            self._client = None

    def _send(self, kind: str, payload: Any) -> tuple:
        if kind == "reset":
            result = self._client.reset(**payload, **self._config)
        else:
            result = self._client.step(payload)
        unpacked = self._unpack(result)
        if self.reconnect:
            if kind == "reset" and (payload.get("seed") is not None or not self._history):
                self._history = [] if payload.get("seed") is not None else None
            if self._history is not None:
                self._history.append((kind, payload, _digest(result, unpacked[0]["image"])))
        return unpacked

    def _restore(self, lost: str) -> None:
        """A fresh session, the episode replayed from the last seeded reset, every answer checked."""
        history, self._history = self._history, []
        if history is None:
            raise ConnectionError(f"{lost}; cannot restore: this session was never reset with a seed, so its episode cannot be replayed")
        deadline = time.monotonic() + self.reconnect_timeout_s
        wait = _RECONNECT_FIRST_WAIT_S
        while True:
            try:
                self._open()
                break
            except TokenRefused as err:  # the server's token changed: waiting cannot help
                raise TokenRefused(f"{lost}; reconnecting failed: {err}") from err
            except ConnectionError as err:  # a full server (SessionRefused) included: the lost session may still hold its slot
                if time.monotonic() + wait > deadline:
                    raise ConnectionError(f"{lost}; reconnecting failed for {self.reconnect_timeout_s:g} s: {err}") from err
                time.sleep(wait)
                wait = min(2 * wait, _RECONNECT_MAX_WAIT_S)
        for step, (kind, payload, digest) in enumerate(history):
            self._send(kind, payload)
            if self._history[-1][2] != digest:
                raise RuntimeError(f"session {self.session_id}: the replayed episode differs from the lost one at "
                                   f"message {step} ({kind}); the server is not serving the same env")

    # -- branching --------------------------------------------------------------------------
    @property
    def episode_record(self) -> EpisodeRecord:
        """The current episode's seed, reset options and the texts sent since, as ``vlm_envs.TextActions.episode_record``."""
        if self._config["text_actions"] is False:
            raise ValueError("episode_record needs a text-action session: the server replays texts through TextActions, "
                             "so make the RemoteEnv with text_actions=True (or a dict of TextActions arguments)")
        return self._log.record

    def fresh_copy(self) -> RemoteEnv:
        """A new session on the same server, configured as this one, not yet reset."""
        return RemoteEnv(self.url, **self._config, **self._connection, reconnect=self.reconnect,
                         reconnect_timeout_s=self.reconnect_timeout_s)

    # -- gymnasium API ----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        replay, self.replay_on_reset = list(self.replay_on_reset), []
        obs, _, _, _, info = self._call("reset", {"seed": seed, "options": options, "replay": replay})
        self._log.reset(seed, options)
        for text in replay:
            self._log.step(text)
        return obs, info

    def step(self, action: Any):
        if self._text_session:
            if not isinstance(action, str):
                raise TypeError(f"this env takes text actions (str), got {type(action).__name__}: {action!r}")
            # Built unchecked: pydantic refuses a lone surrogate, which is a str the local env takes;
            # the server checks every step.
            payload = StepAction.model_construct(text=action)
        else:
            if not isinstance(action, (int, np.integer)) or isinstance(action, bool):
                raise TypeError(f"this env takes action indices (int), got {type(action).__name__}: {action!r}")
            payload = StepAction.model_construct(index=int(action))
        result = self._call("step", payload)
        self._log.step(action)
        return result

    def close(self) -> None:
        if self._client is not None:
            _close_quietly(self._client)
            self._client = None

    @staticmethod
    def _unpack(result: StepResult):
        answer = result.observation
        obs = {"image": decode_image(answer.image), "text": answer.text}
        reward = result.reward if result.reward is not None else 0.0
        return obs, reward, answer.terminated, answer.truncated, decode_value(answer.info)


def _digest(result: StepResult, image: np.ndarray) -> str:
    """A fingerprint of one answer, to check a replay (its decoded image's pixels, not their encoding)."""
    answer = result.observation
    pixels = image.tobytes()
    rest = json.dumps([result.reward, answer.text, answer.info, answer.terminated, answer.truncated], sort_keys=True)
    return hashlib.sha256(pixels + rest.encode()).hexdigest()


def _close_quietly(client) -> None:
    try:
        client.close()
    except Exception:  # the server may be gone already; the connection is dropped either way
        pass


class RemoteVectorEnv(ActorVectorEnv):
    """``num_envs`` sessions on one server behind gymnasium's ``VectorEnv`` API (each steps in its own thread).

    The batching, seeding, autoreset and ``call``/``get_attr`` are
    :class:`vlm_envs.running.actor_vector.ActorVectorEnv`'s, so it behaves as ``SyncVectorEnv``
    does. ``session_kwargs`` go to every :class:`RemoteEnv`.
    """

    def __init__(self, url: str, num_envs: int, copy: bool = True,
                 autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP, **session_kwargs: Any):
        if num_envs < 1:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        mode = AutoresetMode(autoreset_mode)
        make = lambda: EnvWorker([lambda: RemoteEnv(url, **session_kwargs)], mode.value)  # noqa: E731
        workers = ThreadWorkers([make] * num_envs, thread_name_prefix="remote-env")
        try:
            super().__init__(workers, copy=copy, autoreset_mode=mode)
        except BaseException:
            workers.close()
            raise


def make_remote_vec(
    url: str,
    num_envs: int = 1,
    vector_kwargs: dict[str, Any] | None = None,
    **session_kwargs: Any,
) -> RemoteVectorEnv:
    """``gym.make_vec``'s shape for a server: ``make_remote_vec(url, n, vector_kwargs={...}, **session_kwargs)``.

    ``vector_kwargs``: ``autoreset_mode`` (e.g. ``AutoresetMode.SAME_STEP``, as the trainer uses)
    and ``copy``. ``session_kwargs``: :class:`RemoteEnv`'s (``env_kwargs``, ``text_actions``,
    ``token``, ``reconnect``, ...). Text actions are on by default, as
    ``gym.make_vec(id, n, wrappers=[vlm_envs.TextActions])``.
    """
    return RemoteVectorEnv(url, num_envs, **(vector_kwargs or {}), **session_kwargs)


__all__ = ["RemoteEnv", "RemoteVectorEnv", "ServerError", "SessionRefused", "TokenRefused", "make_remote_vec"]
