"""The env server against hostile and careless clients: stuck envs, malformed messages, server
paths, /mcp, reconnects, tokens, slow connections and the server's log.

Every server here binds 127.0.0.1 on a free port and is stopped on exit (by its PID when it is a
process of its own). Misbehaving envs are NumberLine with a patched ``step`` that misbehaves only
for the ``max_position`` a test's session chose, so a bystander session plays normally beside it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import resource
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import websockets.sync.client as websockets_sync

from tests.remote.test_remote import _ask, _retry, assert_same_step, local_env
from tests.utils import ALL_SPECS, free_port, write_card_art

from vlm_envs.cards.number_line import NumberLineEnv
from vlm_envs.cards.points24 import Points24Env
from vlm_envs.remote import RemoteEnv, ServerError, SessionRefused, TokenRefused
from vlm_envs.core.registration import constructor_arguments, path_arguments
from vlm_envs.remote import served_env
from vlm_envs.remote.served_env import PathMask
from vlm_envs.remote.server import (MAX_TEXT_CHARS, ServedEnv, check_env_kwargs, create_app, exposure_warning,
                                     serve_in_process, serve_in_thread)
from vlm_envs.core.spaces import MAX_IMAGE_SIDE

NUMBER_LINE = "gym_cards/NumberLine-v0"
POINTS24 = "gym_cards/Points24-v0"
PLUS = '{"action": "+"}'


def patch_step(monkeypatch, max_position: int, misbehave) -> None:
    """NumberLine's step runs ``misbehave(env)`` first in sessions made with ``max_position``."""
    original = NumberLineEnv.step

    def step(self, action):
        if self.max_position == max_position:
            misbehave(self)
        return original(self, action)

    monkeypatch.setattr(NumberLineEnv, "step", step)


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/ws"


# -- a stuck env ----------------------------------------------------------------------------------
def test_a_stuck_step_answers_an_error_and_frees_its_slot_and_its_core(monkeypatch):
    spins = [0]

    def spin_forever(env):  # a search that never ends, in Python (Points24's solvable_only deal, once)
        while True:
            spins[0] += 1

    patch_step(monkeypatch, 7, spin_forever)
    with serve_in_thread(create_app(NUMBER_LINE, max_sessions=2, step_timeout_s=1.0)) as url:
        bystander, local = RemoteEnv(url), local_env(NUMBER_LINE)
        stuck = RemoteEnv(url, env_kwargs={"max_position": 7}, message_timeout_s=30)
        try:
            assert_same_step(bystander.reset(seed=1), local.reset(seed=1), "bystander reset")
            stuck.reset(seed=0)
            start = time.monotonic()
            with pytest.raises(ServerError, match="closed by the server: a step took longer than the step timeout of 1 s"):
                stuck.step(PLUS)
            assert time.monotonic() - start < 10
            time.sleep(0.3)
            count = spins[0]
            time.sleep(0.5)
            assert spins[0] == count > 0, "the stuck call still burns a core"
            with pytest.raises(ConnectionError):  # its session is closed
                stuck.step(PLUS)
            third = _retry(lambda: RemoteEnv(url), SessionRefused)  # and its slot is free (2 = bystander + this one)
            third.close()
            assert_same_step(bystander.step(PLUS), local.step(PLUS), "bystander after")
        finally:
            for env in (bystander, stuck):
                env.close()


def test_a_reset_that_never_ends_answers_an_error_and_closes_its_session(monkeypatch):
    """The issue's case: Points24 with solvable_only and an unreachable target dealt forever."""
    original = NumberLineEnv.reset

    def reset(self, *, seed=None, options=None):
        while seed == 666:  # a deal that never finds a hand
            pass
        return original(self, seed=seed, options=options)

    monkeypatch.setattr(NumberLineEnv, "reset", reset)
    with serve_in_thread(create_app(NUMBER_LINE, max_sessions=1, step_timeout_s=1.0)) as url:
        with websockets_sync.connect(ws_url(url), max_size=None) as ws:
            answer = _ask(ws, {"type": "reset", "data": {"seed": 666}})
            assert answer["data"]["code"] == "SESSION_ERROR" and "a reset took longer than the step timeout" in answer["data"]["message"]
            with pytest.raises(Exception, match="1000|closed"):  # the server closed the session
                _ask(ws, {"type": "reset", "data": {"seed": 0}})
        _retry(lambda: RemoteEnv(url), SessionRefused).close()  # its only slot is free again


def test_idle_sessions_are_closed_while_another_session_is_stuck(monkeypatch):
    """No reaper waits on a stuck env: a session blocked in native code (no step timeout here)
    does not keep an idle one from being closed."""
    release = threading.Event()
    patch_step(monkeypatch, 8, lambda env: release.wait())
    with serve_in_thread(create_app(NUMBER_LINE, max_sessions=3, idle_timeout_s=1.0, step_timeout_s=None)) as url:
        stuck = RemoteEnv(url, env_kwargs={"max_position": 8}, message_timeout_s=60)
        idle = RemoteEnv(url)
        try:
            stuck.reset(seed=0)

            def step_and_wait():
                with contextlib.suppress(Exception):
                    stuck.step(PLUS)

            threading.Thread(target=step_and_wait, daemon=True).start()
            idle.reset(seed=0)
            time.sleep(3.0)
            with pytest.raises(ServerError, match=f"session {idle.session_id} was closed by the server: idle"):
                idle.step(PLUS)
        finally:
            release.set()
            idle.close()
            stuck.close()


# -- messages -------------------------------------------------------------------------------------
MALFORMED = [
    ("[]", "VALIDATION_ERROR", "JSON object"),
    ("5", "VALIDATION_ERROR", "JSON object"),
    ("null", "VALIDATION_ERROR", "JSON object"),
    ('"step"', "VALIDATION_ERROR", "JSON object"),
    (b'{"type": "step", "data": {"text": "8"}}', "INVALID_JSON", "binary frames"),
    ("[" * 100_000 + "]" * 100_000, "INVALID_JSON", "nested deeper"),
    ('{"type": "reset", "data": {"text_actions": {"format_penalty": NaN}}}', "INVALID_JSON", "NaN is not a JSON number"),
    ('{"type": "reset", "data": {"text_actions": {"format_penalty": -Infinity}}}', "INVALID_JSON", "Infinity"),
    ('{"type": "reset", "data": {"text_actions": {"format_penalty": 1e999}}}', "INVALID_JSON", "out of range"),
    ('{"type": "step", "data": {"text": "\\ud800 unpaired"}, "extra": 1}', "VALIDATION_ERROR", "no field(s) ['extra']"),
    ({"type": "state", "data": {}}, "VALIDATION_ERROR", "no field(s) ['data']"),
    ({"type": "step"}, "VALIDATION_ERROR", "needs \\\"data\\\""),
    ({"type": "step", "data": []}, "VALIDATION_ERROR", "JSON object"),
    ({"type": "mcp", "data": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}}, "UNKNOWN_TYPE", "mcp"),
    ({"type": "reset", "data": {"episode_id": "x" * 300}}, "EXECUTION_ERROR", "episode_id"),
]


def test_every_malformed_message_gets_an_error_and_the_session_goes_on():
    with serve_in_thread(create_app(NUMBER_LINE)) as url, websockets_sync.connect(ws_url(url), max_size=None) as ws:
        assert _ask(ws, {"type": "reset", "data": {"seed": 0}})["type"] == "observation"
        for message, code, reason in MALFORMED:
            ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))
            answer = json.loads(ws.recv(timeout=30))
            shown = message[:80] if isinstance(message, (str, bytes)) else message
            assert answer["type"] == "error" and answer["data"]["code"] == code, (shown, answer)
            assert reason in json.dumps(answer["data"]), (shown, answer)
            assert _ask(ws, {"type": "step", "data": {"text": PLUS}})["type"] == "observation", shown


def test_a_step_before_any_reset_says_to_reset_first():
    with serve_in_thread(create_app(NUMBER_LINE)) as url, websockets_sync.connect(ws_url(url), max_size=None) as ws:
        answer = _ask(ws, {"type": "step", "data": {"text": PLUS}})
        assert answer["type"] == "error" and "no episode yet: reset the session first" in answer["data"]["message"]


def test_a_failed_reset_loses_the_episode_instead_of_playing_on_from_a_half_replay():
    with serve_in_thread(create_app(NUMBER_LINE)) as url, websockets_sync.connect(ws_url(url), max_size=None) as ws:
        assert _ask(ws, {"type": "reset", "data": {"seed": 0}})["type"] == "observation"
        failed = _ask(ws, {"type": "reset", "data": {"seed": 0, "replay": [PLUS] * 50}})  # longer than the episode
        assert failed["type"] == "error" and "does not belong to this env or seed" in failed["data"]["message"]
        answer = _ask(ws, {"type": "step", "data": {"text": PLUS}})
        assert answer["type"] == "error" and "the episode was lost: the last reset failed" in answer["data"]["message"]
        assert _ask(ws, {"type": "reset", "data": {"seed": 0}})["type"] == "observation"  # a reset starts over
        assert _ask(ws, {"type": "step", "data": {"text": PLUS}})["type"] == "observation"


def test_lone_surrogates_play_as_the_local_env_plays_them():
    text = '{"action": "+\ud800"}'
    with serve_in_thread(create_app(NUMBER_LINE)) as url:
        remote, local = RemoteEnv(url), local_env(NUMBER_LINE)
        try:
            assert_same_step(remote.reset(seed=4), local.reset(seed=4), "reset")
            assert_same_step(remote.step(text), local.step(text), "a lone surrogate in the action")
            assert_same_step(remote.step("\udfff?"), local.step("\udfff?"), "an unparseable one")
            remote.replay_on_reset = local.replay_on_reset = (text, "\ud800")
            assert_same_step(remote.reset(seed=0), local.reset(seed=0), "replayed")
        finally:
            remote.close()


@pytest.mark.parametrize("steps", [0, -3, 10**9, "10", 2.5])
def test_max_episode_steps_from_a_client_is_checked(steps):
    with pytest.raises((TypeError, ValueError), match="max_episode_steps"):
        check_env_kwargs(NUMBER_LINE, {"max_episode_steps": steps})


@pytest.mark.parametrize("env_kwargs", [[], 0, "", False, [["max_position", 3]]])
def test_env_kwargs_that_are_not_an_object_are_refused(env_kwargs):
    served = ServedEnv(NUMBER_LINE, {})
    try:
        with pytest.raises(TypeError, match="env_kwargs must be a JSON object"):
            served.reset({"seed": 0, "env_kwargs": env_kwargs})
        assert json.loads(served.reset({"seed": 0, "env_kwargs": None}))["type"] == "observation"  # null: the server's own
    finally:
        served.close()


def test_replay_texts_obey_the_step_limit():
    with serve_in_thread(create_app(NUMBER_LINE)) as url:
        remote = RemoteEnv(url)
        try:
            remote.replay_on_reset = ("+" * (MAX_TEXT_CHARS + 1),)
            with pytest.raises(ServerError, match="longer than a step's 1,000,000 characters"):
                remote.reset(seed=0)
        finally:
            remote.close()


@pytest.mark.parametrize("penalty", [float("nan"), float("inf"), -float("inf")])
def test_format_penalty_must_be_finite(penalty):
    with serve_in_thread(create_app(NUMBER_LINE)) as url:
        remote = RemoteEnv(url, text_actions={"on_parse_failure": "penalty", "format_penalty": penalty})
        try:
            with pytest.raises(ServerError, match="INVALID_JSON: Invalid JSON: .*(NaN|Infinity)"):
                remote.reset(seed=0)
        finally:
            remote.close()


def test_the_largest_raw_frame_reaches_remote_env():
    side = MAX_IMAGE_SIDE  # the envs refuse larger frames
    with serve_in_thread(create_app(NUMBER_LINE, max_sessions=1)) as url:
        remote = RemoteEnv(url, image_encoding="raw", env_kwargs={"image_size": [side, side]})
        try:
            obs, _ = remote.reset(seed=0)
            expected, _ = local_env(NUMBER_LINE, image_size=(side, side)).reset(seed=0)
            assert obs["image"].shape == (side, side, 3) and np.array_equal(obs["image"], expected["image"])
        finally:
            remote.close()


def test_an_answer_over_the_clients_limit_is_refused_clearly(monkeypatch):
    monkeypatch.setattr(served_env, "MAX_ANSWER_BYTES", 100_000)
    with serve_in_thread(create_app(NUMBER_LINE)) as url:
        remote = RemoteEnv(url, image_encoding="raw")
        try:
            with pytest.raises(ServerError, match="over the 0 MiB message limit of the clients .*raw 300x300 frames.*png"):
                remote.reset(seed=0)
            assert remote.session_id  # the session goes on
        finally:
            remote.close()


# -- server paths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.id)
def test_arguments_naming_server_paths_are_server_only_for_every_registered_id(spec):
    own = set(constructor_arguments(spec.id))
    paths = path_arguments(spec.id)
    assert own & {"card_art", "game_dir", "game_files"} <= paths  # every one this package has today
    assert not paths & {"image_size", "target_points", "text_mode", "oracle_labels", "split", "max_position"}
    for name in paths:
        with pytest.raises(ValueError, match=rf"\['{name}'\] name paths on the server"):
            check_env_kwargs(spec.id, {name: "/etc"})
        assert check_env_kwargs(spec.id, {name: "/srv/art"}, from_client=False) == {name: "/srv/art"}


def test_a_client_cannot_point_card_art_at_a_server_folder():
    with serve_in_thread(create_app(POINTS24)) as url, websockets_sync.connect(ws_url(url), max_size=None) as ws:
        answer = _ask(ws, {"type": "reset", "data": {"seed": 0, "env_kwargs": {"card_art": "/etc"}}})
        assert answer["type"] == "error" and "['card_art'] name paths on the server" in answer["data"]["message"]
        assert "/etc" not in answer["data"]["message"]


def test_error_messages_never_show_server_paths(monkeypatch, tmp_path):
    def missing_file(env):
        raise FileNotFoundError(f"card art {tmp_path}/art/S2.png not found (and ~/games/x.json, /etc/passwd)")

    patch_step(monkeypatch, 9, missing_file)
    with serve_in_thread(create_app(NUMBER_LINE)) as url:
        remote = RemoteEnv(url, env_kwargs={"max_position": 9})
        try:
            remote.reset(seed=0)
            with pytest.raises(ServerError) as err:
                remote.step(PLUS)
            assert str(tmp_path) not in err.value.reason and "/etc/passwd" not in err.value.reason and "~/games" not in err.value.reason
            assert "card art <server path> not found" in err.value.reason
        finally:
            remote.close()


# The server's card art as the operator may give it: relative to where it runs, or with a space.
SERVER_ART = {"relative": lambda tmp_path: "r19art", "with a space": lambda tmp_path: str(tmp_path / "r19 my art" / "x")}


def _server_art(monkeypatch, tmp_path, spelling: str) -> str:
    """A card-art folder for the server's --env-kwargs, spelled as ``SERVER_ART[spelling]``; the server runs in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    art = SERVER_ART[spelling](tmp_path)
    write_card_art(tmp_path / art)
    return art


def _assert_hidden(art: str, message: str) -> None:
    for shown in (art, os.path.abspath(art), os.path.realpath(art)):
        assert shown not in message, (shown, message)


@pytest.mark.parametrize("spelling", list(SERVER_ART))
def test_a_bad_client_kwarg_shows_none_of_the_servers_path_arguments(monkeypatch, tmp_path, spelling):
    """gymnasium appended every make kwarg to a constructor's TypeError, the server's card_art among them."""
    art = _server_art(monkeypatch, tmp_path, spelling)
    with serve_in_thread(create_app(POINTS24, env_kwargs={"card_art": art})) as url, \
            websockets_sync.connect(ws_url(url), max_size=None) as ws:
        answer = _ask(ws, {"type": "reset", "data": {"seed": 0, "env_kwargs": {"target_points": True}}})
        assert answer["type"] == "error" and answer["data"]["message"] == "target_points must be an int, got True", answer
        _assert_hidden(art, json.dumps(answer))


@pytest.mark.parametrize("spelling", list(SERVER_ART))
def test_an_env_error_naming_the_servers_path_arguments_masks_them(monkeypatch, tmp_path, spelling):
    art = _server_art(monkeypatch, tmp_path, spelling)

    def step(self, action):
        raise FileNotFoundError(f"cannot read {art}/S2.png, {os.path.abspath(art)} or {os.path.realpath(art)}/back.png")

    monkeypatch.setattr(Points24Env, "step", step)
    with serve_in_thread(create_app(POINTS24, env_kwargs={"card_art": art})) as url:
        remote = RemoteEnv(url)
        try:
            remote.reset(seed=0)
            with pytest.raises(ServerError) as err:
                remote.step('{"formula": "1+2"}')
        finally:
            remote.close()
    assert err.value.reason.startswith("cannot read <server path>/S2.png, <server path> or <server path>"), err.value.reason
    _assert_hidden(art, err.value.reason)


def test_the_servers_path_values_are_masked_whole_and_as_words():
    mask = PathMask("alfworld/ALFWorld-v0", {"game_dir": "/srv", "game_files": ["games/a b.json", "~/g.json"], "max_steps": 7})
    message = mask.client_message(ValueError(f"/srv, games/a b.json, {os.path.expanduser('~/g.json')} and /srv/x; "
                                             "max_steps 7 at the start of /srvx"))
    assert message == "<server path>, <server path>, <server path> and <server path>/x; max_steps 7 at the start of /srvx"
    assert PathMask("alfworld/ALFWorld-v0", {"game_dir": "."}).client_message(ValueError("got 2.5.")) == "got 2.5."
    assert PathMask(POINTS24, {"card_art": None}).client_message(ValueError("x")) == "x"


def test_state_leaves_out_the_servers_path_arguments(tmp_path):
    write_card_art(tmp_path)
    served = ServedEnv(POINTS24, {"card_art": str(tmp_path), "target_points": 24})
    try:
        state = json.loads(served.state())["data"]
        assert state["env_kwargs"] == {"target_points": 24} and str(tmp_path) not in json.dumps(state)
    finally:
        served.close()


# -- /mcp -----------------------------------------------------------------------------------------
def test_mcp_is_not_served_so_it_takes_no_slots_and_reads_no_bodies():
    with serve_in_thread(create_app(NUMBER_LINE, max_sessions=2)) as url:
        create = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "openenv/session/create", "params": {}}).encode()
        for body in (create, create, b"x" * (20 * 1024 * 1024)):
            request = urllib.request.Request(f"{url}/mcp", data=body, headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.URLError) as refused:  # 404, or for the big body a reset or broken pipe: it is not read
                urllib.request.urlopen(request, timeout=30)
            if isinstance(refused.value, urllib.error.HTTPError) or len(body) < 1000:
                assert refused.value.code == 404 and len(refused.value.read()) < 1000
        with pytest.raises(Exception, match="404|403|rejected"):
            websockets_sync.connect(url.replace("http://", "ws://") + "/mcp", open_timeout=10)
        sessions = [RemoteEnv(url), RemoteEnv(url)]  # both slots are still free
        for env in sessions:
            env.close()


# -- reconnect ------------------------------------------------------------------------------------
def test_reconnect_waits_for_the_lost_sessions_slot(monkeypatch):
    """With --max-sessions equal to the envs, the lost session still holds its slot when the client
    comes back: the client retries instead of giving up at once."""
    slow = threading.Event()
    slow.set()

    def stall_once(env):
        if slow.is_set():
            slow.clear()
            time.sleep(3.0)

    patch_step(monkeypatch, 6, stall_once)
    with serve_in_thread(create_app(NUMBER_LINE, max_sessions=1, step_timeout_s=None)) as url:
        remote = RemoteEnv(url, env_kwargs={"max_position": 6}, reconnect=True, message_timeout_s=1.0, reconnect_timeout_s=30)
        local = local_env(NUMBER_LINE, max_position=6)
        try:
            assert_same_step(remote.reset(seed=3), local.reset(seed=3), "reset")
            lost = remote.session_id
            assert_same_step(remote.step(PLUS), local.step(PLUS), "the stalled step, on a new session")
            assert remote.session_id != lost
            assert_same_step(remote.step(PLUS), local.step(PLUS), "after")
        finally:
            remote.close()


def test_reconnect_gives_up_after_its_timeout_and_says_so_from_then_on():
    port = free_port()
    with serve_in_thread(create_app(NUMBER_LINE), port=port) as url:
        remote = RemoteEnv(url, reconnect=True, message_timeout_s=2, reconnect_timeout_s=1.5)
        remote.reset(seed=0)
    try:
        start = time.monotonic()
        with pytest.raises(ConnectionError, match="reconnecting failed for 1.5 s"):
            remote.step(PLUS)
        assert time.monotonic() - start < 10
        with pytest.raises(ConnectionError, match="the episode was lost: .*reconnecting failed"):
            remote.step(PLUS)
    finally:
        remote.close()


def test_reconnect_fails_at_once_when_the_server_refuses_the_token():
    port = free_port()
    with serve_in_thread(create_app(NUMBER_LINE, token="old-token"), port=port) as url:
        remote = RemoteEnv(url, token="old-token", reconnect=True, message_timeout_s=5, reconnect_timeout_s=30)
        remote.reset(seed=0)
    try:
        with serve_in_thread(create_app(NUMBER_LINE, token="new-token"), port=port):
            start = time.monotonic()
            with pytest.raises(TokenRefused, match="reconnecting failed: .*missing or wrong token"):
                remote.step(PLUS)
            assert time.monotonic() - start < 10, "a refused token was retried for the reconnect timeout"
            with pytest.raises(ConnectionError, match="the episode was lost: .*missing or wrong token"):
                remote.step(PLUS)
    finally:
        remote.close()


def test_without_reconnect_every_call_after_a_lost_connection_says_why():
    with serve_in_thread(create_app(NUMBER_LINE)) as url:
        remote = RemoteEnv(url, message_timeout_s=5)
        remote.reset(seed=0)
    try:
        with pytest.raises(ConnectionError, match="connection lost") as first:
            remote.step(PLUS)
        for call in (lambda: remote.step(PLUS), lambda: remote.reset(seed=0)):
            with pytest.raises(ConnectionError, match="connection lost .*reconnect=False") as later:
                call()
            assert str(first.value) in str(later.value)
    finally:
        remote.close()


# -- access ---------------------------------------------------------------------------------------
def _status(url: str, authorization: str | None) -> int:
    request = urllib.request.Request(f"{url}/health", headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def test_the_token_scheme_is_case_insensitive_and_basic_carries_it_as_the_password():
    basic = lambda credentials: "Basic " + base64.b64encode(credentials).decode()  # noqa: E731
    with serve_in_thread(create_app(NUMBER_LINE, token="s3cret")) as url:
        for good in ("Bearer s3cret", "bearer s3cret", "BEARER  s3cret ", basic(b"vlm:s3cret"), "basic " + basic(b":s3cret")[6:]):
            assert _status(url, good) == 200, good
        for bad in (None, "Bearer wrong", "s3cret", "Token s3cret", basic(b"s3cret:"), "Basic !!!", "Bearer s3cret2"):
            assert _status(url, bad) == 401, bad


def test_no_api_documentation_is_served():
    with serve_in_thread(create_app(NUMBER_LINE)) as url:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{url}{path}", timeout=30)
            assert refused.value.code == 404, path
        assert _status(url, None) == 200


def test_a_stock_openenv_client_reaches_a_token_server_with_the_token_in_its_url():
    from openenv.auto.auto_env import AutoEnv
    from openenv.core.generic_client import GenericEnvClient

    from vlm_envs.remote.codec import decode_image

    with serve_in_thread(create_app(NUMBER_LINE, token="s3cret-Token_1")) as url:
        with_token = url.replace("http://", "http://vlm:s3cret-Token_1@")
        expected = local_env(NUMBER_LINE).reset(seed=5)[0]["image"]
        with GenericEnvClient(base_url=with_token).sync() as env:
            assert np.array_equal(decode_image(env.reset(seed=5).observation["image"]), expected)

        async def play_async():
            async with GenericEnvClient(base_url=with_token) as env:
                return (await env.reset(seed=5)).observation

        assert np.array_equal(decode_image(asyncio.run(play_async())["image"]), expected)
        with AutoEnv.from_env("vlm/numberline", base_url=with_token, skip_install=True).sync() as env:
            assert np.array_equal(decode_image(env.reset(seed=5).observation["image"]), expected)
        with pytest.raises(Exception, match="403|rejected"), GenericEnvClient(base_url=url).sync() as env:
            env.reset(seed=5)


# -- operations -----------------------------------------------------------------------------------
@pytest.fixture
def served_arguments(monkeypatch):
    """``python -m vlm_envs serve`` with ``serve`` replaced by a recorder of its arguments."""
    import vlm_envs.remote.server as server
    from vlm_envs.__main__ import main

    calls: list[tuple] = []
    monkeypatch.setattr(server, "serve", lambda *args: calls.append(args))
    monkeypatch.delenv("VLM_ENVS_TOKEN", raising=False)

    def run(*argv: str) -> tuple:
        calls.clear()
        main(["serve", "--env", NUMBER_LINE, *argv])
        return calls[0]

    return run


def test_the_token_comes_from_a_file_or_the_environment(served_arguments, monkeypatch, tmp_path, capsys):
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\n")
    assert served_arguments("--token-file", str(token_file))[5] == "from-the-file"
    monkeypatch.setenv("VLM_ENVS_TOKEN", "from-the-environment")
    assert served_arguments()[5] == "from-the-environment"
    assert served_arguments("--token", "given")[5] == "given"
    for argv in (("--token", "a", "--token-file", str(token_file)), ("--token-file", str(tmp_path / "missing"))):
        with pytest.raises(SystemExit) as exit_info:
            served_arguments(*argv)
        assert exit_info.value.code == 2
    token_file.write_text("\n")
    with pytest.raises(SystemExit):
        served_arguments("--token-file", str(token_file))
    assert "is empty" in capsys.readouterr().err


def test_a_zero_timeout_means_never(served_arguments):
    args = served_arguments("--idle-timeout", "0", "--step-timeout", "0")
    assert args[6:8] == (None, None)
    assert served_arguments()[6:8] == (600.0, 60.0)
    with pytest.raises(SystemExit):
        served_arguments("--idle-timeout", "-1")
    for timeouts in ({"idle_timeout_s": 0}, {"step_timeout_s": -1.0}):
        with pytest.raises(ValueError, match="must be positive, or None for no limit"):
            create_app(NUMBER_LINE, **timeouts)


def test_serving_beyond_loopback_without_a_token_warns(monkeypatch):
    import vlm_envs.remote.server as server

    for host in ("0.0.0.0", "::", "192.168.1.20", "envs.example.org"):
        assert "without a token" in exposure_warning(host, None)
    for host, token in (("127.0.0.1", None), ("::1", None), ("localhost", None), ("0.0.0.0", "t")):
        assert exposure_warning(host, token) is None
    warnings: list[str] = []
    monkeypatch.setattr(server.log, "warning", lambda message, *args: warnings.append(message % args if args else message))
    monkeypatch.setattr(server.uvicorn.Server, "run", lambda self: None)  # nothing binds
    server.serve(NUMBER_LINE, host="0.0.0.0")
    assert len(warnings) == 1 and "serving on 0.0.0.0 without a token" in warnings[0]


def test_slow_request_headers_are_cut_off(monkeypatch):
    with serve_in_thread(create_app(NUMBER_LINE), header_timeout_s=1.0) as url:
        port = int(url.rsplit(":", 1)[1])
        slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(30)]
        for sock in slow:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        open_ = set(range(len(slow)))
        deadline = time.monotonic() + 6
        while open_ and time.monotonic() < deadline:  # a header line every 0.2 s, as slowloris does
            time.sleep(0.2)
            for k in list(open_):
                try:
                    slow[k].sendall(b"X-Slow: 1\r\n")
                except OSError:
                    open_.discard(k)
        for sock in slow:
            sock.close()
        assert not open_, f"{len(open_)} of 30 slow connections still open after 6 s"
        assert _status(url, None) == 200


@contextlib.contextmanager
def unread_websocket(url: str):
    """A WebSocket on ``url``'s /ws whose client reads nothing past the handshake (with a tiny
    receive buffer); yields its ``send(message)``, and closes it on exit."""
    from websockets.client import ClientProtocol
    from websockets.protocol import State
    from websockets.uri import parse_uri

    protocol = ClientProtocol(parse_uri(ws_url(url)))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        protocol.send_request(protocol.connect())
        sock.sendall(b"".join(protocol.data_to_send()))
        while protocol.state is State.CONNECTING and (data := sock.recv(1)):  # byte by byte: nothing past the handshake
            protocol.receive_data(data)
        assert protocol.state is State.OPEN, protocol.handshake_exc

        def send(message: dict) -> None:
            protocol.send_text(json.dumps(message).encode())
            sock.sendall(b"".join(protocol.data_to_send()))

        yield send


def test_a_client_that_stops_reading_is_cut_off_and_its_slot_freed(monkeypatch):
    """It sends resets for large raw frames and reads none: the answers wait for it past the send
    timeout, then its connection is aborted and the only slot serves the next client."""
    import vlm_envs.remote.server as server

    lines: list[str] = []
    monkeypatch.setattr(server.log, "info", lambda message, *args: lines.append(message % args))
    with serve_in_thread(create_app(NUMBER_LINE, max_sessions=1, idle_timeout_s=None), send_timeout_s=1.0) as url:
        with unread_websocket(url) as send:
            for seed in range(4):
                send({"type": "reset", "data": {"seed": seed, "image_encoding": "raw", "env_kwargs": {"image_size": [1024, 1024]}}})
            start = time.monotonic()
            _retry(lambda: RemoteEnv(url), SessionRefused, seconds=15).close()
            print(f"the slot was free after {time.monotonic() - start:.1f} s")
    assert len([line for line in lines if "closed: the client stopped reading" in line]) == 1, lines


def _wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.1)
    return predicate()


def test_a_full_file_table_and_client_closes_log_one_line_each(tmp_path):
    """Out of file descriptors, asyncio logged a traceback per refused connection (megabytes a
    second); a stock client's close logged a traceback too. Both are one line now."""
    from openenv.core.generic_client import GenericEnvClient

    log = tmp_path / "server.log"
    with serve_in_process(NUMBER_LINE, "--log-level", "info", log=log) as (proc, url):
        for seed in range(3):
            with GenericEnvClient(base_url=url).sync() as env:
                env.reset(seed=seed)
                env.step({"text": PLUS})
        assert _wait_for(lambda: log.read_text().count("closed: the client closed it") == 3), log.read_text()[-3000:]
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (64, 64))
        port = int(url.rsplit(":", 1)[1])
        held = []
        for _ in range(100):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        time.sleep(3)
        for sock in held:
            sock.close()
    text = log.read_text()
    assert "Traceback" not in text and len(text) < 5000, text[-3000:]
    assert 1 <= text.count("cannot accept connections") <= 2


def test_state_runs_on_the_thread_that_steps_a_serial_env(monkeypatch):
    """Envs that are not thread-safe (ALFWorld) are built, stepped, described and closed on one thread."""
    from vlm_envs.alfworld_wrap.env import ALFWorldEnv

    assert ALFWorldEnv.thread_safe is False
    threads: set[str] = set()

    def action_names(self):  # read by the build, the text parser and state
        threads.add(threading.current_thread().name)
        return ("-", "+")

    monkeypatch.setattr(NumberLineEnv, "thread_safe", False)
    monkeypatch.setattr(NumberLineEnv, "action_names", property(action_names))
    with serve_in_thread(create_app(NUMBER_LINE)) as url:
        threads.clear()  # the app's own check of the configuration, before any session
        first, second = RemoteEnv(url), RemoteEnv(url)
        try:
            for env in (first, second):
                env.reset(seed=0)
                env.step(PLUS)
        finally:
            first.close()
            second.close()
    assert threads == {"vlm-envs-env"}, threads


# -- soak and memory ------------------------------------------------------------------------------
def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_short_soak_loses_no_well_behaved_session():
    summary = _benchmark("serve_soak").main(["--sessions", "4", "--seconds", "6"])
    assert summary["lost"] == 0, summary["problems"]
    assert summary["episodes_equal"] == summary["episodes"] > 0 and summary["steps"] > 0
    assert summary["errors_answered"] == summary["errors_sent"] > 0
    assert summary["connections"]["cut off"] + summary["connections"]["oversized frame"] > 0
    assert summary["tracebacks"] == 0


# Distinct frame sizes (1,000 of them) and targets (1..460: every one reachable by a Points24 hand).
RSS_GROWTH_BOUND_MIB = 100
THOUSAND_SESSIONS = {
    NUMBER_LINE: lambda i: {"image_size": [256 + i // 25, 256 + 12 * (i % 25)]},
    POINTS24: lambda i: {"image_size": [256 + i // 25, 256 + 12 * (i % 25)], "target_points": 1 + i % 460, "oracle_labels": True},
}


@pytest.mark.slow
@pytest.mark.parametrize("env_id", list(THOUSAND_SESSIONS))
def test_a_thousand_sessions_with_distinct_sizes_and_targets_leave_server_memory_bounded(env_id, tmp_path):
    kwargs_of = THOUSAND_SESSIONS[env_id]

    rss_mib = _benchmark("serve_soak").rss_mib
    failures: list[str] = []

    def sessions(indices, url):
        try:
            for i in indices:
                with websockets_sync.connect(ws_url(url), max_size=None) as ws:
                    answer = _ask(ws, {"type": "reset", "data": {"seed": i, "env_kwargs": kwargs_of(i), "image_encoding": "raw"}})
                    assert answer["type"] == "observation", (kwargs_of(i), answer)
                    ws.send(json.dumps({"type": "close"}))
        except Exception as err:  # noqa: BLE001  (reported by the test below)
            failures.append(repr(err)[:500])

    with serve_in_process(env_id, "--max-sessions", "4", log=tmp_path / "server.log") as (proc, url):
        with websockets_sync.connect(ws_url(url), max_size=None) as ws:  # warm up: imports, the first frames
            for seed in range(10):
                assert _ask(ws, {"type": "reset", "data": {"seed": seed}})["type"] == "observation"
        before = rss_mib(proc.pid)
        workers = [threading.Thread(target=sessions, args=(range(k, 1000, 4), url)) for k in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=600)
        after = rss_mib(proc.pid)
    assert not failures, failures
    print(f"{env_id}: server RSS {before:.0f} -> {after:.0f} MiB over 1,000 sessions")
    assert after - before < RSS_GROWTH_BOUND_MIB, f"server RSS grew {after - before:.0f} MiB ({before:.0f} -> {after:.0f})"

