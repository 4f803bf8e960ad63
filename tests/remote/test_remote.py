"""Envs as a service: the OpenEnv server, RemoteEnv and make_remote_vec against the local envs.

Every server here binds 127.0.0.1 on a free port and is stopped by its fixture; servers run in a
thread of the test process (quick to start), except the one killed mid-episode, a real process.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

import gymnasium as gym
import numpy as np
import pytest
import websockets.sync.client as websockets_sync
from gymnasium.utils.env_checker import check_env, data_equivalence
from gymnasium.vector import AutoresetMode

import vlm_envs
from tests.utils import AVAILABLE_SPECS, free_port, scripted_actions

from vlm_envs.running.agent_loop import run_agent
from vlm_envs.remote import RemoteEnv, ServerError, SessionRefused, make_remote_vec
from vlm_envs.remote.server import (MAX_MESSAGE_BYTES, MAX_TEXT_CHARS, ServedEnv, create_app, serve_in_process,
                                     serve_in_thread)

POINTS24 = "gym_cards/Points24-v0"
ALFWORLD = "alfworld/ALFWorld-v0"
needs_alfworld = pytest.mark.skipif(ALFWORLD not in [s.id for s in AVAILABLE_SPECS], reason="needs the alfworld extra")


@pytest.fixture(scope="module")
def points24_url():
    with serve_in_thread(create_app(POINTS24, max_sessions=40)) as url:
        yield url


def local_env(env_id: str, text_actions=True, **env_kwargs) -> gym.Env:
    env = gym.make(env_id, **env_kwargs)
    return env if text_actions is False else vlm_envs.TextActions(env, **({} if text_actions is True else text_actions))


def assert_same_step(remote, local, where: str) -> None:
    assert data_equivalence(remote, local, exact=True), f"{where}: remote {remote!r:.300} != local {local!r:.300}"


# -- equivalence ----------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", [s.id for s in AVAILABLE_SPECS])
def test_remote_env_plays_exactly_as_the_local_env(env_id):
    with serve_in_thread(create_app(env_id, max_sessions=2)) as url:
        remote, local = RemoteEnv(url, env_id=env_id), local_env(env_id)
        try:
            assert remote.observation_space == local.observation_space
            assert remote.action_space == local.action_space
            assert remote.prompt_task == local.unwrapped.prompt_task
            assert remote.prompt_params == local.unwrapped.prompt_params
            assert remote.action_names == tuple(local.unwrapped.action_names)
            rng = np.random.default_rng(0)
            assert_same_step(remote.reset(seed=7), local.reset(seed=7), "reset")
            for t in range(40 if env_id.startswith("alfworld") else 80):
                action = scripted_actions(local, rng)
                expected = local.step(action)
                assert_same_step(remote.step(action), expected, f"step {t} {action!r}")
                if expected[2] or expected[3]:  # unseeded resets continue the seeded stream, remotely too
                    assert_same_step(remote.reset(), local.reset(), f"reset after step {t}")
        finally:
            remote.close()


def test_index_actions_and_make_kwargs_match_the_plain_env(points24_url):
    kwargs = {"image_size": [64, 96], "text_mode": "full", "target_points": 21}
    remote = RemoteEnv(points24_url, text_actions=False, env_kwargs=kwargs)
    local = gym.make(POINTS24, image_size=(64, 96), text_mode="full", target_points=21)
    try:
        assert remote.prompt_params == local.unwrapped.prompt_params == {"target": 21}
        assert remote.action_space == local.action_space == gym.spaces.Discrete(len(local.unwrapped.action_names))
        assert remote.observation_space == local.observation_space
        assert_same_step(remote.reset(seed=3), local.reset(seed=3), "reset")
        for t, index in enumerate([0, 5, 13, 2, 9, 1]):
            assert_same_step(remote.step(index), local.step(index), f"step {t}")
        with pytest.raises(TypeError, match="action indices"):
            remote.step("8")
    finally:
        remote.close()


def test_oracle_labels_are_a_make_kwarg_of_every_served_id(points24_url):
    from vlm_envs.remote.server import check_env_kwargs

    for spec in AVAILABLE_SPECS:
        assert check_env_kwargs(spec.id, {"oracle_labels": True}) == {"oracle_labels": True}
    remote, local = RemoteEnv(points24_url, env_kwargs={"oracle_labels": True}), local_env(POINTS24, oracle_labels=True)
    try:
        rng = np.random.default_rng(1)
        assert_same_step(remote.reset(seed=5), local.reset(seed=5), "reset")
        for t in range(30):
            action = scripted_actions(local, rng)
            expected = local.step(action)
            assert_same_step(remote.step(action), expected, f"step {t} {action!r}")
            assert isinstance(expected[4]["action_optimal"], bool)
            if expected[2] or expected[3]:
                assert_same_step(remote.reset(), local.reset(), f"reset after step {t}")
    finally:
        remote.close()


def test_text_action_options_reach_the_parser(points24_url):
    options = {"mode": "strict", "on_parse_failure": "penalty", "format_penalty": -2.5}
    remote, local = RemoteEnv(points24_url, text_actions=options), local_env(POINTS24, text_actions=options)
    try:
        remote.reset(seed=1), local.reset(seed=1)
        result = remote.step("eight please")
        assert_same_step(result, local.step("eight please"), "penalised step")
        assert result[1] == -2.5 and result[4]["parse_ok"] is False
    finally:
        remote.close()


def test_remote_env_passes_gymnasium_check_env(points24_url):
    env = RemoteEnv(points24_url)
    try:
        check_env(env, skip_render_check=True)
    finally:
        env.close()


@contextlib.contextmanager
def vector_pair(url: str, n: int, autoreset: AutoresetMode):
    """``make_remote_vec`` and the local ``SyncVectorEnv`` it must equal, closed afterwards."""
    vector_kwargs = {"autoreset_mode": autoreset}
    remote = make_remote_vec(url, n, vector_kwargs=vector_kwargs)
    local = gym.make_vec(POINTS24, n, vectorization_mode="sync", vector_kwargs=vector_kwargs, wrappers=[vlm_envs.TextActions])
    try:
        yield remote, local
    finally:
        remote.close()
        local.close()


@pytest.mark.parametrize("autoreset", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_run_agent_gives_the_same_records_remotely(points24_url, autoreset):
    def policy(prompts, images):  # deterministic in the state: the same records iff the same states
        return ['{"action": "%s"}' % ("=" if len(p) % 3 == 0 else "8") for p in prompts]

    with vector_pair(points24_url, 4, autoreset) as (remote, local):
        got, want = (run_agent(envs, policy, episodes=12, seed=5) for envs in (remote, local))
    assert len(got) == len(want) > 12
    for a, b in zip(got, want):
        assert data_equivalence(a.to_dict(), b.to_dict(), exact=True)


def test_vector_env_matches_sync_vector_env_with_same_step_autoreset(points24_url):
    rng = np.random.default_rng(1)
    with vector_pair(points24_url, 3, AutoresetMode.SAME_STEP) as (remote, local):
        assert remote.single_observation_space == local.single_observation_space
        assert remote.single_action_space == local.single_action_space
        assert remote.get_attr("prompt_task") == local.get_attr("prompt_task")
        assert_same_step(remote.reset(seed=[10, 11, 12]), local.reset(seed=[10, 11, 12]), "reset")
        ended = 0
        for t in range(60):
            actions = tuple(rng.choice(['{"action": "="}', '{"action": "8"}', "?", '{"action": "+"}'], size=3))
            expected = local.step(actions)
            assert_same_step(remote.step(actions), expected, f"vector step {t}")
            ended += int(np.sum(expected[2] | expected[3]))
        assert ended > 0  # final_obs / final_info were compared too


def test_vector_env_with_disabled_autoreset_and_reset_mask_matches_sync(points24_url):
    """The trainer's way: autoreset off, finished envs reset by it with explicit seeds and a reset_mask."""
    rng = np.random.default_rng(2)
    with vector_pair(points24_url, 3, AutoresetMode.DISABLED) as (remote, local):
        assert remote.get_attr("prompt_params") == local.get_attr("prompt_params")
        assert_same_step(remote.reset(seed=[1, 2, 3]), local.reset(seed=[1, 2, 3]), "reset")
        next_seed, resets = 100, 0
        for t in range(40):
            actions = tuple(rng.choice(['{"action": "="}', '{"action": "8"}', "?"], size=3))
            expected = local.step(actions)
            assert_same_step(remote.step(actions), expected, f"step {t}")
            done = expected[2] | expected[3]
            if done.any():
                seeds = [next_seed + i if done[i] else None for i in range(3)]
                options = {"reset_mask": done.copy()}
                assert_same_step(remote.reset(seed=seeds, options=options), local.reset(seed=seeds, options=options), f"reset {t}")
                next_seed, resets = next_seed + 3, resets + 1
        assert resets > 0


def test_replay_on_reset_restores_episodes_as_text_actions_does(points24_url):
    """The trainer's checkpoint restore: set_attr("replay_on_reset", texts) then reset(seed=...)."""
    records = [('{"action": "8"}', "?"), (), ('{"action": "+"}',)]
    with vector_pair(points24_url, 3, AutoresetMode.DISABLED) as (remote, local):
        for envs in (remote, local):
            envs.set_attr("replay_on_reset", records)
        assert_same_step(remote.reset(seed=[5, 6, 7]), local.reset(seed=[5, 6, 7]), "restored")
        assert_same_step(remote.step(("=",) * 3), local.step(("=",) * 3), "after the restore")
        remote.set_attr("replay_on_reset", [("=",) * 300] * 3)  # longer than any episode
        with pytest.raises(ServerError, match="does not belong to this env or seed"):
            remote.reset(seed=[5, 6, 7])


# -- load -----------------------------------------------------------------------------------------
def _trajectory(env: gym.Env, seed: int, steps: int) -> list:
    """``steps`` steps of seeded random text (autoreset by hand), as comparable records."""
    rng = np.random.default_rng(seed)
    records = [env.reset(seed=seed)]
    for _ in range(steps):
        commands = records[-1][-1].get("admissible_commands")
        if commands is not None:  # ALFWorld: a random admissible command
            action = commands[int(rng.integers(len(commands)))]
        else:
            action = rng.choice(['{"action": "="}', '{"action": "8"}', "?", '{"action": "+"}', '{"action": "*"}'])
        result = env.step(str(action))
        records.append(result)
        if result[2] or result[3]:
            records.append(env.reset())
    return records


def _load(url: str, env_id: str, sessions: int, steps: int, **env_kwargs) -> None:
    """``sessions`` threads play at once; each session's records must equal the local env's, in order."""
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def play(i: int) -> None:
        try:
            env = RemoteEnv(url, env_kwargs=env_kwargs)
            try:
                results[i] = _trajectory(env, seed=100 + i, steps=steps)
            finally:
                env.close()
        except BaseException as err:  # reported below, with the session
            errors.append(err)

    threads = [threading.Thread(target=play, args=(i,)) for i in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors[:3]
    assert sorted(results) == list(range(sessions))
    local = local_env(env_id, **env_kwargs)
    for i in range(sessions):
        want = _trajectory(local, seed=100 + i, steps=steps)
        assert len(results[i]) == len(want)
        for t, (a, b) in enumerate(zip(results[i], want)):
            assert_same_step(a, b, f"session {i}, record {t}")


@pytest.fixture
def quick_thread_switches():
    """Client and server threads share this interpreter here: hand the GIL over sooner (restored after)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.slow
def test_load_32_sessions_x_200_steps_of_points24(points24_url, quick_thread_switches):
    # 64x64 frames keep the 12,800 steps (remote and local) within CI's budget; the image still
    # crosses the wire at every step. Full-size throughput: benchmarks/serve_throughput.py.
    _load(points24_url, POINTS24, sessions=32, steps=200, image_size=[64, 64])


@pytest.mark.slow
@needs_alfworld
def test_load_8_sessions_x_50_steps_of_alfworld():
    with serve_in_thread(create_app(ALFWORLD, max_sessions=8)) as url:
        _load(url, ALFWORLD, sessions=8, steps=50)


# -- faults ---------------------------------------------------------------------------------------
@pytest.fixture
def server_process(tmp_path):
    """``python -m vlm_envs serve`` in its own process (killed by the test, or stopped at the end)."""
    with serve_in_process("gym_cards/NumberLine-v0", log=tmp_path / "server.log") as (proc, url):
        yield proc, url, int(url.rsplit(":", 1)[1])


def test_killed_server_raises_connection_error_naming_the_session_and_reconnect_replays(server_process):
    proc, url, port = server_process
    patient = RemoteEnv(url, message_timeout_s=2)
    plain = RemoteEnv(url, message_timeout_s=5)
    durable = RemoteEnv(url, reconnect=True, message_timeout_s=5, reconnect_timeout_s=20)
    local = local_env("gym_cards/NumberLine-v0")
    try:
        plain.reset(seed=0)
        assert_same_step(durable.reset(seed=4), local.reset(seed=4), "reset")
        for action in ['{"action": "+"}', "??", '{"action": "-"}']:
            assert_same_step(durable.step(action), local.step(action), action)
            plain.step(action)
        patient.reset(seed=0)
        os.kill(proc.pid, signal.SIGSTOP)  # hung: the answer never comes
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=f"session {patient.session_id} on .*: no answer within 2 s"):
            patient.step('{"action": "+"}')
        patient.close()  # drops the connection without waiting for the hung server
        assert time.monotonic() - start < 6
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

        start = time.monotonic()
        with pytest.raises(ConnectionError, match=f"session {plain.session_id}"):
            plain.step('{"action": "+"}')
        assert time.monotonic() - start < 10

        lost_session = durable.session_id
        with serve_in_thread(create_app("gym_cards/NumberLine-v0"), port=port):  # a fresh server on the same address
            for action in ['{"action": "+"}', "??", '{"action": "+"}']:
                assert_same_step(durable.step(action), local.step(action), f"after reconnect {action}")
            assert durable.session_id != lost_session
    finally:
        for env in (patient, plain, durable):
            env.close()


def test_reconnect_refuses_a_server_that_replays_differently_and_the_episode_stays_lost():
    port = free_port()
    with serve_in_thread(create_app(POINTS24), port=port) as url:
        env = RemoteEnv(url, reconnect=True, message_timeout_s=5, reconnect_timeout_s=10)
        env.reset(seed=0)
        env.step('{"action": "8"}')
    try:
        with serve_in_thread(create_app(POINTS24, env_kwargs={"image_size": [64, 64]}), port=port):
            with pytest.raises(RuntimeError, match="differs from the lost one"):
                env.step('{"action": "8"}')
            # every later call says so (it once reached the fresh, never reset session: "Cannot call env.step()...")
            for call in (lambda: env.step('{"action": "8"}'), lambda: env.reset(seed=1)):
                with pytest.raises(ConnectionError, match="the episode was lost: .*differs from the lost one"):
                    call()
    finally:
        env.close()


def test_unseeded_episode_cannot_be_restored():
    port = free_port()
    with serve_in_thread(create_app(POINTS24), port=port) as url:
        env = RemoteEnv(url, reconnect=True, message_timeout_s=5)
        env.reset()
    try:
        with pytest.raises(ConnectionError, match="never reset with a seed"):
            env.step('{"action": "8"}')
    finally:
        env.close()


def _live_envs() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, ServedEnv) and o._env is not None)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_idle_sessions_are_closed_and_open_close_cycles_leave_memory_flat():
    with serve_in_thread(create_app("gym_cards/NumberLine-v0", max_sessions=4, idle_timeout_s=1.0)) as url:
        idle = RemoteEnv(url)
        idle.reset(seed=0)
        deadline = time.monotonic() + 30  # OpenEnv's reaper looks every max(timeout / 4, 5 s)
        while _live_envs() and time.monotonic() < deadline:  # watching sends nothing, so the session stays idle
            time.sleep(0.5)
        assert _live_envs() == 0, "the idle session's env was not freed"
        with pytest.raises(ServerError, match=f"session {idle.session_id} was closed by the server"):
            idle.step('{"action": "+"}')
        idle.close()
        baseline = _live_envs()

        ws_url = url.replace("http://", "ws://") + "/ws"

        def cycle():  # one session opened, played and closed (a bare OpenEnv client: the server is under test)
            with websockets_sync.connect(ws_url, max_size=None) as ws:
                assert _ask(ws, {"type": "reset", "data": {"seed": 1}})["type"] == "observation"
                ws.send(json.dumps({"type": "close"}))
                with pytest.raises(Exception):  # the server ends the session and closes the connection
                    ws.recv(timeout=30)

        for _ in range(100):
            cycle()
        before = _rss_mb()
        for _ in range(900):
            cycle()
        growth = _rss_mb() - before
        time.sleep(0.5)  # the last closes are handled by the server asynchronously
        assert _live_envs() == baseline == 0
        print(f"RSS growth over 900 open/close cycles: {growth:.1f} MB")
        assert growth < 25, f"RSS grew {growth:.1f} MB over 900 open/close cycles"


def _retry(make, error: type[BaseException], seconds: float = 10.0):
    """``make()``, retried while it raises ``error`` (the server frees a closed session's slot asynchronously)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return make()
        except error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_sessions_past_max_sessions_are_refused_clearly():
    with serve_in_thread(create_app(POINTS24, max_sessions=2)) as url:
        first, second = RemoteEnv(url), RemoteEnv(url)
        with pytest.raises(SessionRefused, match="full"):
            RemoteEnv(url)
        first.close()
        third = _retry(lambda: RemoteEnv(url), SessionRefused)  # a freed slot is reusable
        for env in (second, third):
            env.reset(seed=0)
            env.close()


# -- bad input and access -------------------------------------------------------------------------
def _ask(ws, message) -> dict:
    ws.send(message if isinstance(message, str) else json.dumps(message))
    return json.loads(ws.recv(timeout=30))


BAD_MESSAGES = [
    ("{not json", "INVALID_JSON", "Invalid JSON"),
    ({"type": "dance"}, "UNKNOWN_TYPE", "dance"),
    ({"type": "step", "data": {"text": 5}}, "VALIDATION_ERROR", "string"),
    ({"type": "step", "data": {"index": "1"}}, "VALIDATION_ERROR", "integer"),
    ({"type": "step", "data": {"text": "x" * (MAX_TEXT_CHARS + 1)}}, "VALIDATION_ERROR", "at most"),
    ({"type": "step", "data": {"text": "8", "session_id": "0123456789ab"}}, "VALIDATION_ERROR", "unknown step field"),
    ({"type": "step", "data": {"text": "8", "index": 1}}, "VALIDATION_ERROR", "exactly one"),
    ({"type": "step", "data": {"index": 1}}, "EXECUTION_ERROR", "takes text actions"),
    ({"type": "step", "data": {}}, "VALIDATION_ERROR", "exactly one"),
    ({"type": "reset", "data": {"seed": "abc"}}, "EXECUTION_ERROR", "seed"),
    ({"type": "reset", "data": {"seed": 1, "colour": "red"}}, "VALIDATION_ERROR", "unknown reset field"),
    ({"type": "reset", "data": {"env_kwargs": {"command": "rm -rf /"}}}, "EXECUTION_ERROR", "has no argument"),
    ({"type": "reset", "data": {"env_kwargs": {"image_size": "huge"}}}, "EXECUTION_ERROR", "image_size"),
    ({"type": "reset", "data": {"env_kwargs": {"image_size": [40000, 40000]}}}, "EXECUTION_ERROR", "at most"),
    ({"type": "reset", "data": {"env_kwargs": "text"}}, "EXECUTION_ERROR", "JSON object"),
    ({"type": "reset", "data": {"env_id": "os:system"}}, "EXECUTION_ERROR", "only ids registered by vlm_envs"),
    ({"type": "reset", "data": {"text_actions": {"mode": "psychic"}}}, "EXECUTION_ERROR", "mode"),
    ({"type": "reset", "data": {"image_encoding": "jpeg"}}, "EXECUTION_ERROR", "image_encoding"),
]


def test_clients_cannot_name_server_files():
    from vlm_envs.remote.server import check_env_kwargs

    for kwargs in ({"game_dir": "/etc"}, {"game_files": ["/etc/passwd"]}):
        with pytest.raises(ValueError, match="only the server's --env-kwargs"):
            check_env_kwargs("alfworld/ALFWorld-v0", kwargs)
        assert check_env_kwargs("alfworld/ALFWorld-v0", kwargs, from_client=False) == kwargs


def test_bad_messages_get_an_error_with_a_reason_and_the_server_keeps_serving(points24_url):
    bystander, local = RemoteEnv(points24_url), local_env(POINTS24)
    assert_same_step(bystander.reset(seed=2), local.reset(seed=2), "bystander reset")
    ws_url = points24_url.replace("http://", "ws://") + "/ws"
    try:
        with websockets_sync.connect(ws_url, max_size=None) as ws:
            assert _ask(ws, {"type": "reset", "data": {"seed": 0}})["type"] == "observation"
            for t, (message, code, reason) in enumerate(BAD_MESSAGES):
                answer = _ask(ws, message)
                assert answer["type"] == "error" and answer["data"]["code"] == code, (message if len(str(message)) < 200 else code, answer)
                assert reason in json.dumps(answer["data"])[:5000], (reason, answer["data"])
                # the same session still plays, and so does everyone else's
                assert _ask(ws, {"type": "step", "data": {"text": '{"action": "8"}'}})["type"] == "observation", code
                assert_same_step(bystander.step('{"action": "8"}'), local.step('{"action": "8"}'), f"bystander after {code}")
        with websockets_sync.connect(ws_url, max_size=None) as ws:  # a frame over the size limit ends only its own session
            ws.send(json.dumps({"type": "step", "data": {"text": "x" * MAX_MESSAGE_BYTES}}))
            with pytest.raises(Exception, match="1009|too big"):
                ws.recv(timeout=30)
        assert_same_step(bystander.step('{"action": "="}'), local.step('{"action": "="}'), "bystander after an oversized frame")
    finally:
        bystander.close()


def test_no_stateless_http_episode_endpoints(points24_url):
    """Episodes live on the WebSocket; OpenEnv's stateless HTTP /reset and /step are not served."""
    for path in ("/reset", "/step"):
        request = urllib.request.Request(f"{points24_url}{path}", data=b"{}", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code in (404, 405)
    with urllib.request.urlopen(f"{points24_url}/health", timeout=30) as answer:
        assert answer.status == 200


def test_only_registered_ids_and_their_own_arguments_are_served():
    for bad in ("os:system", "vlm_envs:gym_cards/Points24-v0", "CartPole-v1", "gym_cards/NoSuchGame-v0"):
        with pytest.raises(ValueError, match="only ids registered by vlm_envs"):
            create_app(bad)
    with pytest.raises(ValueError, match="has no argument"):
        create_app(POINTS24, env_kwargs={"entry_point": "os:system"})
    from vlm_envs.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--env", "os:system"])
    assert exit_info.value.code == 2


def test_server_binds_loopback_by_default(capsys):
    import inspect

    from vlm_envs.__main__ import main
    from vlm_envs.remote.server import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "default: 127.0.0.1" in capsys.readouterr().out


def test_bearer_token_is_required():
    with serve_in_thread(create_app("gym_cards/NumberLine-v0", token="s3cret")) as url:
        for token in (None, "wrong"):
            with pytest.raises(SessionRefused, match="token"):
                RemoteEnv(url, token=token)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/health", timeout=30)
        assert refused.value.code == 401
        request = urllib.request.Request(f"{url}/health", headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
        env = RemoteEnv(url, token="s3cret")
        try:
            assert env.reset(seed=0)[0]["image"].shape == (300, 300, 3)
        finally:
            env.close()


def test_any_openenv_client_can_play(points24_url):
    """OpenEnv's own generic client (what OpenEnv-consuming trainers use) speaks to the server as is."""
    from openenv.core.generic_client import GenericEnvClient

    from vlm_envs.remote.codec import decode_image, decode_value

    local = local_env(POINTS24)
    local_obs, _ = local.reset(seed=9)
    with GenericEnvClient(base_url=points24_url).sync() as env:
        answer = env.reset(seed=9).observation
        assert np.array_equal(decode_image(answer["image"]), local_obs["image"])
        result = env.step({"text": '{"action": "8"}'})
        obs, reward, terminated, truncated, info = local.step('{"action": "8"}')
        assert np.array_equal(decode_image(result.observation["image"]), obs["image"])
        assert (result.reward, result.done, decode_value(result.observation["info"])) == (reward, terminated or truncated, info)


def test_client_and_server_share_one_typed_wire_model():
    """The server's ``/schema`` and the client's steps and answers are the models of vlm_envs.remote.wire,
    and what a session's env writes (plain JSON) holds to them."""
    from pydantic import ValidationError

    from vlm_envs.remote import client, server, wire

    assert (server.StepAction, server.StepObservation) == (wire.StepAction, wire.StepObservation)
    served = ServedEnv(POINTS24, {})
    try:
        answers = [json.loads(served.reset({"seed": 3}))["data"], json.loads(served.step({"text": '{"action": "="}'}))["data"]]
    finally:
        served.close()
    local = local_env(POINTS24)
    expected = [local.reset(seed=3), local.step('{"action": "="}')]
    for data, (obs, *rest) in zip(answers, expected):
        result = client._SessionClient._parse_result(None, data)
        assert isinstance(result.observation, wire.StepObservation)
        remote_obs, *remote_rest = RemoteEnv._unpack(result)
        assert np.array_equal(remote_obs["image"], obs["image"]) and remote_obs["text"] == obs["text"]
        assert remote_rest[-1] == rest[-1]  # the info
    assert client._SessionClient._step_payload(None, wire.StepAction(index=3)) == {"index": 3}
    broken = {**answers[1], "observation": {k: v for k, v in answers[1]["observation"].items() if k != "text"}}
    with pytest.raises(ValidationError, match="text"):
        client._SessionClient._parse_result(None, broken)
