"""Serve one registered vlm_envs id over OpenEnv's WebSocket protocol (``pip install "vlm-envs[serve]"``).

    VLM_ENVS_TOKEN=... python -m vlm_envs serve --env gym_cards/Points24-v0 --port 8000 --max-sessions 32

Each WebSocket connection to ``/ws`` is one session that owns one env (:class:`ServedEnv`). The
messages and answers are OpenEnv's (``reset``, ``step``, ``state``, ``close``; ``observation``,
``state`` and ``error`` with OpenEnv's error codes), so any OpenEnv client plays it. The session
loop is vlm_envs' own: OpenEnv 0.3.0's (``HTTPEnvServer``) ends a session on a malformed message,
cannot bound an env call in time, runs ``state`` on the event loop, and reaps idle sessions by
waiting for their envs to close, so one stuck env stopped the reaping for everyone. Here:

* every env call runs on an :class:`EnvThread` and answers within ``step_timeout_s``, or the
  session is closed and its slot freed (the call is interrupted, never waited for);
* every malformed message gets an error answer and the session goes on;
* an idle session is closed by its own connection; no reaper waits on anything;
* a client that leaves its answers unread for ``SEND_TIMEOUT_S`` is cut off, its slot and unsent frames freed;
* ``--max-sessions`` counts a session from its handshake until its env is handed back;
* access: an ASGI middleware requires the token on every HTTP request and WebSocket handshake;
* HTTP: request headers must arrive within ``header_timeout_s`` (slowloris), at most
  ``limit_concurrency`` connections, and one log line (not a traceback) per closed session or
  exhausted file table.

Wire format, limits and the security model: docs/serving.md; the client: :class:`vlm_envs.remote.RemoteEnv`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import functools
import hmac
import ipaddress
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from vlm_envs.optional import require
from vlm_envs.remote._openenv import import_openenv
from vlm_envs.remote.env_thread import EnvCallTimeout, EnvThread
from vlm_envs.remote.served_env import MAX_TEXT_CHARS, MessageError, PathMask, ServedEnv, check_env_id, check_env_kwargs, env_class

import_openenv("the env server")  # before any of its dependencies, so a missing extra is named
uvicorn = require("uvicorn", "serve", "the env server")
from fastapi import FastAPI, WebSocket  # noqa: E402
from openenv.core.env_server.types import EnvironmentMetadata, HealthResponse, SchemaResponse, State  # noqa: E402
from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol  # noqa: E402

from vlm_envs.remote.wire import StepAction, StepObservation  # noqa: E402

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a WebSocket frame from a client; larger closes that session's connection (1009)
DEFAULT_IDLE_TIMEOUT_S = 600.0
DEFAULT_STEP_TIMEOUT_S = 60.0
HEADER_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 60.0
"""How long an answer may wait for the client to take the previous ones before its connection is
aborted (a client that stops reading would otherwise hold its slot and its unsent frames forever)."""
# Client messages read ahead of the session, per connection (uvicorn's websockets-sansio reads one
# at a time anyway; this bounds the queue of its other WebSocket implementations too).
WS_MAX_QUEUE = 2
# HTTP connections allowed beside the sessions (health checks, refused handshakes); more get 503
HTTP_CONNECTIONS_BEYOND_SESSIONS = 64
_ACCEPT_ERROR_LOG_INTERVAL_S = 10.0
MESSAGE_TYPES = ("reset", "step", "state", "close")

log = logging.getLogger(__name__)


# -- messages -------------------------------------------------------------------------------------
def parse_message(event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An ASGI ``websocket.receive`` event -> ``(type, data)``; anything malformed raises :class:`MessageError`."""
    text = event.get("text")
    if text is None:
        raise MessageError("INVALID_JSON", "binary frames are not part of the protocol: send JSON text")
    try:
        message = json.loads(text, parse_float=_finite_float, parse_constant=_refuse_constant)
    except RecursionError:
        raise MessageError("INVALID_JSON", "Invalid JSON: nested deeper than the parser's recursion limit") from None
    except ValueError as err:
        raise MessageError("INVALID_JSON", f"Invalid JSON: {err}") from None
    if not isinstance(message, dict):
        raise MessageError("VALIDATION_ERROR", f'a message is a JSON object {{"type": ..., "data": {{...}}}}, got {type(message).__name__}')
    kind = message.get("type")
    if kind not in MESSAGE_TYPES:
        raise MessageError("UNKNOWN_TYPE", f"Unknown message type: {kind!r:.80}; the types are {list(MESSAGE_TYPES)}")
    fields = {"type", "data"} if kind in ("reset", "step") else {"type"}
    unknown = sorted(set(message) - fields)
    if unknown:
        raise MessageError("VALIDATION_ERROR", f"a {kind} message has no field(s) {unknown[:5]!r:.200}")
    data = message.get("data", {})
    if kind == "step" and "data" not in message:
        raise MessageError("VALIDATION_ERROR", 'a step message needs "data": {"text": ...} or {"index": ...}')
    if not isinstance(data, dict):
        raise MessageError("VALIDATION_ERROR", f'"data" must be a JSON object, got {type(data).__name__}')
    return kind, data


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _error(code: str, message: str, **details: Any) -> str:
    return json.dumps({"type": "error", "data": {"message": message, "code": code, **details}}, ensure_ascii=True)


# -- sessions -------------------------------------------------------------------------------------
class Sessions:
    """The server's sessions: their slots, their env threads and their conversation.

    All bookkeeping happens on the event loop; env work happens on the env threads: a thread per
    session, or one shared by every session of an env that is not thread-safe (ALFWorld).
    """

    def __init__(self, env_id: str, defaults: dict[str, Any], max_sessions: int, idle_timeout_s: float | None,
                 step_timeout_s: float | None, thread_safe: bool):
        self.env_id, self.defaults, self.max_sessions = env_id, defaults, max_sessions
        self.idle_timeout_s, self.step_timeout_s = idle_timeout_s, step_timeout_s
        self.active = 0
        self._paths = PathMask(env_id, defaults)
        self._shared_thread = None if thread_safe else EnvThread("vlm-envs-env")

    async def serve(self, websocket: WebSocket) -> None:
        """One session, from the handshake to its env handed back to its thread to close."""
        await websocket.accept()
        if self.active >= self.max_sessions:
            await _send_quietly(websocket, _error("CAPACITY_REACHED", f"the server is full: {self.active} of {self.max_sessions} sessions",
                                                  active_sessions=self.active, max_sessions=self.max_sessions))
            await _close_quietly(websocket)
            return
        self.active += 1
        thread = self._shared_thread or EnvThread("vlm-envs-session")
        served: ServedEnv | None = None
        ended = "the server stopped"
        try:
            served = await thread.call(functools.partial(ServedEnv, self.env_id, self.defaults), self.step_timeout_s)
            log.info("session %s opened (%d of %d)", served.session_id, self.active, self.max_sessions)
            ended = await self._converse(websocket, served, thread)
        except EnvCallTimeout:
            ended = f"building its env took longer than the step timeout of {self.step_timeout_s:g} s"
            await _send_quietly(websocket, _error("FACTORY_ERROR", ended))
        except Exception as err:  # noqa: BLE001  (the server's own --env-kwargs failed here; said to the client and logged)
            ended = f"building its env failed: {self._paths.client_message(err)}"
            await _send_quietly(websocket, _error("FACTORY_ERROR", ended))
        finally:
            self.active -= 1
            if served is not None:
                thread.submit(served.close)  # after its last call; a stuck thread never runs it, and nothing waits
            if thread is not self._shared_thread:
                thread.stop()
            await _close_quietly(websocket)
            log.info("session %s closed: %s", served.session_id if served else "(no env)", ended)

    async def _converse(self, websocket: WebSocket, served: ServedEnv, thread: EnvThread) -> str:
        """Answer the session's messages until it ends; returns why it ended."""
        while True:
            try:
                event = await asyncio.wait_for(websocket.receive(), self.idle_timeout_s)
            except TimeoutError:
                reason = f"idle for more than {self.idle_timeout_s:g} s"
                await _send_quietly(websocket, _error("SESSION_ERROR", f"session {served.session_id} was closed by the server: {reason}"))
                return reason
            if event["type"] == "websocket.disconnect":
                return f"the connection closed (code {event.get('code')})"
            try:
                kind, data = parse_message(event)
                if kind == "close":
                    return "the client closed it"
                call = served.state if kind == "state" else functools.partial(getattr(served, kind), data)
                answer = await thread.call(call, self.step_timeout_s)
            except EnvCallTimeout:
                reason = f"a {kind} took longer than the step timeout of {self.step_timeout_s:g} s"
                log.warning("session %s closed: %s (its env call was interrupted)", served.session_id, reason)
                await _send_quietly(websocket, _error("SESSION_ERROR", f"session {served.session_id} was closed by the server: {reason}"))
                return reason
            except MessageError as err:
                answer = _error(err.code, self._paths.client_message(err))
            except Exception as err:  # noqa: BLE001  (an error is an answer: bad input, an env error)
                answer = _error("EXECUTION_ERROR", self._paths.client_message(err))
            unsent = await _send_quietly(websocket, answer)
            if unsent:
                return unsent


async def _send_quietly(websocket: WebSocket, text: str) -> str | None:
    """Send ``text``; ``None`` once sent, else why not: the client is gone or stopped reading (not an error of the server's)."""
    try:
        await websocket.send_text(text)
        return None
    except ClientStoppedReading as err:
        return str(err)
    except Exception:  # noqa: BLE001  (starlette's WebSocketDisconnect, or a close already under way)
        return "the client disconnected"


async def _close_quietly(websocket: WebSocket) -> None:
    with contextlib.suppress(Exception):  # the client may have closed first
        await websocket.close()


# -- access ---------------------------------------------------------------------------------------
class BearerToken:
    """ASGI middleware: every HTTP request and WebSocket handshake must carry the token.

    ``Authorization: Bearer <token>`` (the scheme in any case), or HTTP Basic with the token as the
    password, which is what a client sends for a URL ``http://user:<token>@host:port``: the way a
    stock OpenEnv client, which cannot set headers, reaches a token server. A refused HTTP request
    gets 401; a refused WebSocket handshake is closed before it is accepted (the client sees 403).
    """

    def __init__(self, app, token: str):
        if not isinstance(token, str) or not token.strip():
            raise ValueError("the token must be a non-empty string")
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if self._authorized(dict(scope.get("headers") or []).get(b"authorization", b"")):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await receive()  # the websocket.connect event
            return await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong token"})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b'Bearer, Basic realm="vlm_envs"')]})
        await send({"type": "http.response.body", "body": b'{"detail": "missing or wrong token"}'})

    def _authorized(self, header: bytes) -> bool:
        scheme, _, credentials = header.strip().partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() == b"basic":
            try:
                credentials = base64.b64decode(credentials, validate=True).partition(b":")[2]
            except binascii.Error:
                return False
        elif scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials, self._token)


def exposure_warning(host: str, token: str | None) -> str | None:
    """What to tell the operator who serves beyond this machine without a token (``None``: nothing)."""
    if token:
        return None
    try:
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # a host name: it may resolve to anything
        pass
    return (f"serving on {host} without a token: anyone who can reach this port can open sessions; "
            "set VLM_ENVS_TOKEN or --token-file (docs/serving.md, 'Security model')")


# -- the app --------------------------------------------------------------------------------------
def create_app(
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    max_sessions: int = 8,
    token: str | None = None,
    idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S,
    step_timeout_s: float | None = DEFAULT_STEP_TIMEOUT_S,
):
    """The ASGI app serving ``env_id``: ``/ws`` sessions, ``GET /health``, ``/schema`` and ``/metadata``,
    behind the token when one is given. ``None`` timeouts mean no limit.

    Checks the id and the kwargs, and builds one env first, so a bad configuration fails here
    rather than in the first session.
    """
    defaults = check_env_kwargs(check_env_id(env_id), env_kwargs or {}, from_client=False)
    if not isinstance(max_sessions, int) or max_sessions < 1:
        raise ValueError(f"max_sessions must be a positive int, got {max_sessions!r}")
    for name, value in (("idle_timeout_s", idle_timeout_s), ("step_timeout_s", step_timeout_s)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, or None for no limit; got {value!r}")
    ServedEnv(env_id, defaults).close()
    cls = env_class(env_id)
    sessions = Sessions(env_id, defaults, max_sessions, idle_timeout_s, step_timeout_s, bool(getattr(cls, "thread_safe", True)))

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        _log_accept_errors_briefly(asyncio.get_running_loop())
        yield

    # No /docs, /redoc or /openapi.json: the protocol is docs/serving.md, and a server says no more than it must.
    app = FastAPI(title=f"vlm_envs: {env_id}", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sessions = sessions
    metadata = EnvironmentMetadata(name=env_id, description=(cls.__doc__ or env_id).strip().splitlines()[0])
    schema = SchemaResponse(action=StepAction.model_json_schema(), observation=StepObservation.model_json_schema(),
                            state=State.model_json_schema())
    app.get("/health", response_model=HealthResponse)(lambda: HealthResponse())
    app.get("/schema", response_model=SchemaResponse)(lambda: schema)
    app.get("/metadata", response_model=EnvironmentMetadata)(lambda: metadata)
    app.websocket("/ws")(sessions.serve)
    return BearerToken(app, token) if token else app


def _log_accept_errors_briefly(loop: asyncio.AbstractEventLoop) -> None:
    """Out of file descriptors, asyncio logs a traceback per refused connection and schedules a
    retry for each (thousands a second, and a traceback per retry left when the server stops);
    log one line every few seconds instead."""
    default = loop.get_exception_handler() or (lambda loop, context: loop.default_exception_handler(context))
    last = [-math.inf]

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        refused = str(context.get("message", "")).startswith("socket.accept() out of system resource")
        if not refused and "_start_serving" not in repr(context.get("handle")):  # not asyncio's accept retries
            return default(loop, context)
        if refused and time.monotonic() - last[0] >= _ACCEPT_ERROR_LOG_INTERVAL_S:
            last[0] = time.monotonic()
            log.warning("cannot accept connections: %s (raise the open-file limit, ulimit -n, or lower --max-sessions)",
                        context.get("exception"))

    loop.set_exception_handler(handler)


# -- running it -----------------------------------------------------------------------------------
class HeaderTimeoutH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers have not all arrived
    ``header_timeout_s`` after it opened (or after its last answer). uvicorn has no such limit: a
    client sending its headers a byte at a time kept its connection forever (slowloris)."""

    def __init__(self, *args: Any, header_timeout_s: float = HEADER_TIMEOUT_S, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._headers_due: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_headers()  # of the next request on this kept-alive connection

    def handle_websocket_upgrade(self, event) -> None:
        self._headers_due.cancel()
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc) -> None:
        self._headers_due.cancel()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
        self._headers_due = self.loop.call_later(self._header_timeout_s, self._close_if_no_request, self.cycle)

    def _close_if_no_request(self, cycle) -> None:
        if self.cycle is cycle and not self.transport.is_closing():  # no new request began
            self.transport.close()


class ClientStoppedReading(Exception):
    """A client left its answers unread past the send timeout; its connection was aborted.

    Not an ``OSError``, so starlette passes it to the session as it is and the session says why it ended.
    """


class SendTimeoutWebSockets(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, aborting a connection whose client has not taken its earlier
    answers ``send_timeout_s`` after the next one is ready. Without it, a client that never reads
    held its session slot and its unsent frames forever: this protocol before uvicorn 0.53 buffered
    every answer (a raw 2048 px frame is 16 MiB of base64), later ones wait for the buffer to drain
    with no limit.
    The wait is the transport's own flow control (``pause_writing``/``resume_writing``)."""

    def __init__(self, *args: Any, send_timeout_s: float = SEND_TIMEOUT_S, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._send_timeout_s = send_timeout_s
        self._drained = asyncio.Event()
        self._drained.set()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._drained.clear()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._drained.set()

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        self._drained.set()  # nothing drains now: the send goes on to find the connection gone

    async def send(self, message) -> None:
        if not self._drained.is_set():
            try:
                await asyncio.wait_for(self._drained.wait(), self._send_timeout_s)
            except TimeoutError:
                self.transport.abort()  # drops the unsent frames; the session frees its slot
                raise ClientStoppedReading(f"the client stopped reading: its answers were left unread for {self._send_timeout_s:g} s") from None
        await super().send(message)


def _uvicorn_config(app, header_timeout_s: float, send_timeout_s: float, **kwargs: Any):
    return uvicorn.Config(app, http=functools.partial(HeaderTimeoutH11, header_timeout_s=header_timeout_s),
                          ws=functools.partial(SendTimeoutWebSockets, send_timeout_s=send_timeout_s),
                          ws_max_size=MAX_MESSAGE_BYTES, ws_max_queue=WS_MAX_QUEUE, lifespan="on", **kwargs)


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0,
                    header_timeout_s: float = HEADER_TIMEOUT_S, send_timeout_s: float = SEND_TIMEOUT_S,
                    limit_concurrency: int | None = None) -> Iterator[str]:
    """Run ``app`` on a free port (``port=0``) in a background thread; yields its ``http://`` URL, stops on exit.

    For notebooks, tests and benchmarks: the server shares the process, so it starts in a blink.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted server can take its port back
    sock.bind((host, port))
    config = _uvicorn_config(app, header_timeout_s, send_timeout_s, log_level="warning", limit_concurrency=limit_concurrency)
    server = uvicorn.Server(config)
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


@contextlib.contextmanager
def serve_in_process(env_id: str, *options: str, token: str | None = None, log: str | os.PathLike | None = None,
                     start_timeout_s: float = 120.0) -> Iterator[tuple[subprocess.Popen, str]]:
    """``python -m vlm_envs serve --env env_id *options`` on 127.0.0.1 and a free port, in its own
    process; yields ``(process, url)`` once ``/health`` answers, and stops the process by its PID on exit.

    For tests and benchmarks that need the server apart (its memory, a kill, its log): ``token``
    reaches it through ``VLM_ENVS_TOKEN``, never its command line; ``log`` receives its stderr.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    environ = {**os.environ, "VLM_ENVS_TOKEN": token} if token else {k: v for k, v in os.environ.items() if k != "VLM_ENVS_TOKEN"}
    with contextlib.ExitStack() as stack:
        stderr = stack.enter_context(open(log, "ab")) if log is not None else None
        proc = subprocess.Popen([sys.executable, "-m", "vlm_envs", "serve", "--env", env_id, "--host", "127.0.0.1", "--port", str(port),
                                 *options], env=environ, stdout=subprocess.DEVNULL, stderr=stderr)
        stack.callback(_stop, proc)
        url = f"http://127.0.0.1:{port}"
        health = urllib.request.Request(f"{url}/health", headers={"Authorization": f"Bearer {token}"} if token else {})
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(health, timeout=2):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited with code {proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start within {start_timeout_s:g} s") from None
                time.sleep(0.1)
        yield proc, url


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(timeout=30)


def serve(
    env_id: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    env_kwargs: dict[str, Any] | None = None,
    max_sessions: int = 8,
    token: str | None = None,
    idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S,
    step_timeout_s: float | None = DEFAULT_STEP_TIMEOUT_S,
    log_level: str = "warning",
) -> None:
    """Run the server until interrupted (``python -m vlm_envs serve``)."""
    app = create_app(env_id, env_kwargs, max_sessions, token, idle_timeout_s, step_timeout_s)
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)  # this module's lines beside uvicorn's, same format
    log_config["loggers"][__name__] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    config = _uvicorn_config(app, HEADER_TIMEOUT_S, SEND_TIMEOUT_S, host=host, port=port, log_level=log_level, log_config=log_config,
                             limit_concurrency=max_sessions + HTTP_CONNECTIONS_BEYOND_SESSIONS)
    warning = exposure_warning(host, token)
    if warning:
        log.warning(warning)
    uvicorn.Server(config).run()


__all__ = ["BearerToken", "ServedEnv", "Sessions", "StepAction", "StepObservation", "check_env_id", "check_env_kwargs",
           "create_app", "exposure_warning", "parse_message", "serve", "serve_in_process", "serve_in_thread"]
