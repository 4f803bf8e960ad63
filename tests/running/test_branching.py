"""Branching an episode: a new env in the state of another, by replaying its seed and texts (locally and on a server)."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence

import vlm_envs
from tests.utils import AVAILABLE_SPECS, scripted_actions
from vlm_envs import EpisodeRecord
from vlm_envs.running.agent_loop import info_item

IDS = [spec.id for spec in AVAILABLE_SPECS]
NUMBER_LINE, POINTS24 = "gym_cards/NumberLine-v0", "gym_cards/Points24-v0"
PLUS = json.dumps({"action": "+"})


def steps_into_an_episode(env: gym.Env, chooser: gym.Env, k: int, first_seed: int = 0) -> tuple:
    """Reset ``env`` (and its action ``chooser``, the same env or a local twin) with seeds from
    ``first_seed`` until an episode survives ``k`` scripted steps; the last step's result."""
    rng = np.random.default_rng(first_seed)
    for seed in range(first_seed, first_seed + 50):
        result = env.reset(seed=seed)
        if chooser is not env:
            chooser.reset(seed=seed)
        for _ in range(k):
            action = scripted_actions(chooser, rng)
            if chooser is not env:
                chooser.step(action)
            result = env.step(action)
            if result[2] or result[3]:
                break
        else:
            return result
    raise AssertionError(f"no episode of {env} lasted {k} steps")


def mid_episode_step(env_id: str) -> int:
    return 1 if env_id == "gym_cards/Blackjack-v0" else 4  # a Blackjack hand rarely takes more than two moves


def assert_play_alike(original: gym.Env, branches: list[gym.Env], chooser: gym.Env, steps: int = 12) -> None:
    """Every branch answers each next text exactly as ``original`` does, to the episode's end."""
    rng = np.random.default_rng(123)
    for t in range(steps):
        action = scripted_actions(chooser, rng)
        if chooser is not original:
            chooser.step(action)
        expected = original.step(action)
        for i, env in enumerate(branches):
            got = env.step(action)
            assert data_equivalence(got, expected, exact=True), f"branch {i}, step {t} {action!r}: {got!r:.300} != {expected!r:.300}"
        if expected[2] or expected[3]:
            return


@pytest.mark.parametrize("env_id", IDS)
def test_a_branch_continues_exactly_as_the_original(env_id):
    env = vlm_envs.TextActions(gym.make(env_id))
    obs, _, _, _, info = steps_into_an_episode(env, env, mid_episode_step(env_id))
    twin, twin_obs, twin_info = vlm_envs.branch(env)
    try:
        assert twin.episode_record == env.episode_record
        assert len(env.episode_record.actions) == mid_episode_step(env_id)
        assert data_equivalence((twin_obs, twin_info), (obs, info), exact=True)
        assert_play_alike(env, [twin], env)
    finally:
        twin.close()
        env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_group_copies_of_a_mid_episode_state_in_a_vector_env(env_id):
    """G copies of an episode at step k, as a trainer branches a group rollout."""
    env = vlm_envs.TextActions(gym.make(env_id))
    obs, _, _, _, info = steps_into_an_episode(env, env, mid_episode_step(env_id), first_seed=10)
    envs = gym.make_vec(env_id, 3, vectorization_mode="sync", wrappers=[vlm_envs.TextActions],
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.DISABLED})
    try:
        group_obs, group_infos = vlm_envs.restore_episodes(envs, [env.episode_record] * 3)
        for i in range(3):
            assert np.array_equal(group_obs["image"][i], obs["image"]) and group_obs["text"][i] == obs["text"]
        assert list(envs.get_attr("episode_record")) == [env.episode_record] * 3
        action = scripted_actions(env, np.random.default_rng(5))
        expected = env.step(action)
        obs_g, rewards, terminated, truncated, infos = envs.step((action,) * 3)
        for i in range(3):
            assert np.array_equal(obs_g["image"][i], expected[0]["image"]) and obs_g["text"][i] == expected[0]["text"]
            assert (rewards[i], terminated[i], truncated[i]) == tuple(expected[1:4])
            got_info = {key: info_item(infos, key, i) for key in expected[4]}
            assert data_equivalence(got_info, expected[4]), f"copy {i}: {got_info!r:.300} != {expected[4]!r:.300}"
    finally:
        envs.close()
        env.close()


def test_a_record_round_trips_through_json_and_builds_on_a_new_env():
    env = vlm_envs.TextActions(gym.make(POINTS24, image_size=(64, 96)))
    obs, _, _, _, info = steps_into_an_episode(env, env, 3)
    record = EpisodeRecord(**json.loads(json.dumps(dataclasses.asdict(env.episode_record))))
    assert record == env.episode_record
    other = vlm_envs.TextActions(gym.make(POINTS24, image_size=(64, 96)))
    assert data_equivalence(vlm_envs.restore_episode(other, record), (obs, info), exact=True)
    assert_play_alike(env, [other], env)


def test_the_branch_keeps_the_originals_make_kwargs_and_parsing():
    kwargs = dict(image_size=(64, 96), target_points=21, oracle_labels=True)
    env = vlm_envs.TextActions(gym.make(POINTS24, **kwargs), mode="strict", on_parse_failure="penalty", format_penalty=-0.5)
    steps_into_an_episode(env, env, 3)
    twin, _, _ = vlm_envs.branch(env)
    assert twin.env.spec.kwargs == env.env.spec.kwargs
    assert (twin.mode, twin.on_parse_failure, twin.format_penalty) == ("strict", "penalty", -0.5)
    assert twin.step("no idea")[1] == -0.5


@pytest.mark.skipif("alfworld/ALFWorld-v0" not in IDS, reason="needs the alfworld extra")
def test_reset_options_are_part_of_the_record():
    env = vlm_envs.TextActions(gym.make("alfworld/ALFWorld-v0"))
    _, info = env.reset(seed=1, options={"game_index": 2})
    env.step(info["admissible_commands"][0])
    assert env.episode_record.options == {"game_index": 2}
    twin, _, twin_info = vlm_envs.branch(env)
    assert twin_info["game_file"] == info["game_file"]
    assert_play_alike(env, [twin], env, steps=5)


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", ["3", 1.5, None, True])
def test_a_seed_that_is_no_int_is_refused(seed):
    with pytest.raises(TypeError, match="EpisodeRecord.seed must be an int"):
        EpisodeRecord(seed, ())


def test_bad_records_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="seed must be non-negative"):
        EpisodeRecord(-1)
    with pytest.raises(TypeError, match="actions must be a sequence of texts"):
        EpisodeRecord(0, PLUS)  # one text, not a sequence of texts
    with pytest.raises(TypeError, match="actions must be a sequence of texts"):
        EpisodeRecord(0, (PLUS, 3))
    with pytest.raises(TypeError, match="options must be a dict"):
        EpisodeRecord(0, (), options=["game_index", 2])
    env = vlm_envs.TextActions(gym.make(NUMBER_LINE))
    with pytest.raises(TypeError, match="record must be a vlm_envs.EpisodeRecord"):
        vlm_envs.restore_episode(env, {"seed": 0, "actions": []})
    with pytest.raises(TypeError, match="env must be a vlm_envs.TextActions"):
        vlm_envs.branch(gym.make(NUMBER_LINE), EpisodeRecord(0))


def test_a_record_whose_replay_ends_the_episode_is_refused():
    env = vlm_envs.TextActions(gym.make(NUMBER_LINE))
    with pytest.raises(ValueError, match="does not belong to this env or seed, or its episode is over"):
        vlm_envs.branch(env, EpisodeRecord(0, (PLUS,) * 50))  # NumberLine truncates after 10 moves
    env.reset(seed=0)
    while not any(env.step(PLUS)[2:4]):
        pass
    with pytest.raises(ValueError, match="its episode is over"):  # branching a finished episode
        vlm_envs.branch(env)


def test_an_unseeded_episode_has_no_record():
    env = vlm_envs.TextActions(gym.make(NUMBER_LINE))
    with pytest.raises(ValueError, match="did not begin with reset\\(seed=...\\)"):
        env.episode_record  # never reset
    env.reset(seed=0)
    env.step(PLUS)
    env.reset()  # continues the seeded stream: no seed and texts describe it
    with pytest.raises(ValueError, match="did not begin with reset\\(seed=...\\)"):
        vlm_envs.branch(env)


def test_vector_records_must_match_the_envs():
    envs = gym.make_vec(NUMBER_LINE, 2, wrappers=[vlm_envs.TextActions])
    try:
        with pytest.raises(ValueError, match="records has 1 entries for 2 envs"):
            vlm_envs.restore_episodes(envs, [EpisodeRecord(0)])
        with pytest.raises(ValueError, match="one options dict"):
            vlm_envs.restore_episodes(envs, [EpisodeRecord(0), EpisodeRecord(1, options={"x": 1})])
    finally:
        envs.close()


# -- through a server -----------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", IDS)
def test_a_remote_branch_continues_exactly_as_the_original(env_id):
    pytest.importorskip("openenv.core")
    from vlm_envs.remote import RemoteEnv
    from vlm_envs.remote.server import create_app, serve_in_thread

    with serve_in_thread(create_app(env_id, max_sessions=4)) as url:
        original = RemoteEnv(url, env_id=env_id, text_actions={"on_parse_failure": "penalty"})
        local = vlm_envs.TextActions(gym.make(env_id), on_parse_failure="penalty")  # chooses the actions (its oracle), in lockstep
        try:
            obs, _, _, _, info = steps_into_an_episode(original, local, mid_episode_step(env_id))
            twin, twin_obs, twin_info = vlm_envs.branch(original)
            try:
                assert twin.session_id != original.session_id
                assert twin.episode_record == original.episode_record == local.episode_record
                assert data_equivalence((twin_obs, twin_info), (obs, info), exact=True)
                assert_play_alike(original, [twin], local)
            finally:
                twin.close()
        finally:
            original.close()


def test_remote_records_need_text_actions_and_a_fitting_replay():
    pytest.importorskip("openenv.core")
    from vlm_envs.remote import RemoteEnv, ServerError, make_remote_vec
    from vlm_envs.remote.server import create_app, serve_in_thread

    with serve_in_thread(create_app(NUMBER_LINE, max_sessions=6)) as url:
        indices = RemoteEnv(url, text_actions=False)
        remote = RemoteEnv(url)
        envs = make_remote_vec(url, 2, vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.DISABLED})
        try:
            indices.reset(seed=0)
            with pytest.raises(ValueError, match="needs a text-action session"):
                indices.episode_record
            with pytest.raises(ServerError, match="does not belong to this env or seed"):
                vlm_envs.branch(remote, EpisodeRecord(0, (PLUS,) * 50))
            local = vlm_envs.TextActions(gym.make(NUMBER_LINE))
            obs, _, _, _, _ = steps_into_an_episode(remote, local, 2)
            group_obs, _ = vlm_envs.restore_episodes(envs, [remote.episode_record] * 2)  # a group, on the server
            action = scripted_actions(local, np.random.default_rng(0))
            expected, got = remote.step(action), envs.step((action, action))
            for i in range(2):
                assert np.array_equal(group_obs["image"][i], obs["image"])
                assert np.array_equal(got[0]["image"][i], expected[0]["image"]) and got[1][i] == expected[1]
        finally:
            for env in (indices, remote, envs):
                env.close()
