"""The text-action interface: raw model output in, env action out, with reported validity."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence

from tests.utils import CARD_SPECS
from vlm_envs import TextActions


def test_valid_text_plays_the_named_action():
    env = TextActions(gym.make("gym_cards/NumberLine-v0"))
    env.reset(seed=0)
    _, _, _, _, info = env.step('{"thoughts": "go up", "action": "+"}')
    assert info["parse_ok"] and info["action"] == 1 and info["parse_error"] == ""


def test_random_fallback_is_seeded_and_reported():
    def run():
        env = TextActions(gym.make("gym_cards/Points24-v0"))
        env.reset(seed=11)
        return [env.step("no idea")[4]["action"] for _ in range(15)]

    first = run()
    assert first == run() and len(set(first)) > 1
    env = TextActions(gym.make("gym_cards/Points24-v0"))
    env.reset(seed=11)
    info = env.step("no idea")[4]
    assert not info["parse_ok"] and "action" in info["parse_error"]


def test_fallback_draws_do_not_shift_the_game():
    plain = gym.make("gym_cards/Points24-v0")
    wrapped = TextActions(gym.make("gym_cards/Points24-v0"))
    for seed in range(5):
        assert plain.reset(seed=seed)[1]["Cards"] == wrapped.reset(seed=seed)[1]["Cards"]


@pytest.mark.parametrize("rule, reward", [("penalty", -0.5), ("noop", 0.0)])
def test_penalty_and_noop_do_not_step_the_game(rule, reward):
    env = TextActions(gym.make("gym_cards/EZPoints-v0"), on_parse_failure=rule, format_penalty=-0.5)
    obs, _ = env.reset(seed=0)
    obs2, r, terminated, truncated, info = env.step("garbage")
    assert r == reward and not terminated and not truncated
    assert data_equivalence(obs, obs2) and info["Formula"] == [] and info["action"] == -1
    assert not info["parse_ok"] and not info["success"]


def test_unparsable_turns_count_toward_the_time_limit():
    env = TextActions(gym.make("gym_cards/EZPoints-v0", max_episode_steps=5), on_parse_failure="penalty")
    env.reset(seed=0)
    truncations = [env.step("?")[3] for _ in range(5)]
    assert truncations == [False] * 4 + [True]


def test_step_limit_counts_every_turn_parsed_or_not():
    """garbage, garbage, hit with max_episode_steps=3: the third turn is truncated (it used to run on)."""
    env = TextActions(gym.make("gym_cards/Blackjack-v0", max_episode_steps=3), on_parse_failure="noop")
    seed = next(s for s in range(100) if env.reset(seed=s)[1]["player_total"] <= 11)  # a hit cannot bust
    env.reset(seed=seed)
    turns = [env.step(text) for text in ("garbage", "garbage", '{"action": "hit"}')]
    assert [t[3] for t in turns] == [False, False, True] and not any(t[2] for t in turns)
    assert turns[2][4]["parse_ok"]


def test_strict_mode_and_aliases():
    env = TextActions(gym.make("gym_cards/Blackjack-v0"), mode="strict", on_parse_failure="penalty", aliases={"stick": "stand"})
    env.reset(seed=0)
    info = env.step('"action": "stick"')[4]
    assert info["parse_ok"] and info["action"] == 0


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="on_parse_failure"):
        TextActions(gym.make("gym_cards/Blackjack-v0"), on_parse_failure="explode")
    with pytest.raises(ValueError, match="mode"):
        TextActions(gym.make("gym_cards/Blackjack-v0"), mode="loose")
    with pytest.raises(ValueError, match="aliases"):
        TextActions(gym.make("gym_cards/Blackjack-v0"), aliases={"stay": "fold"})
    with pytest.raises(TypeError, match="aliases"):
        TextActions(gym.make("gym_cards/Blackjack-v0"), aliases=["stay"])


@pytest.mark.parametrize("penalty", [float("nan"), float("inf"), -float("inf")])
def test_format_penalty_must_be_finite(penalty):
    """A NaN or infinite penalty was accepted and then poisoned every return it entered."""
    with pytest.raises(ValueError, match="format_penalty must be finite"):
        TextActions(gym.make("gym_cards/Blackjack-v0"), on_parse_failure="penalty", format_penalty=penalty)
    with pytest.raises(TypeError, match="format_penalty"):
        TextActions(gym.make("gym_cards/Blackjack-v0"), format_penalty="-1")


@pytest.mark.parametrize("text", ["", "\x00" * 10, "ü" * 100_000, '{"action": "' + "9" * 50_000 + '"}', "🂡🂮 action"])
def test_any_text_is_accepted(text):
    for spec in CARD_SPECS:
        env = TextActions(gym.make(spec.id))
        env.reset(seed=0)
        obs, *_, info = env.step(text)
        assert isinstance(info["parse_ok"], bool) and env.observation_space.contains(obs)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_envs_with_text_actions(mode):
    kwargs = {"shared_memory": False} if mode == "async" else {}
    envs = gym.make_vec("gym_cards/NumberLine-v0", 2, vectorization_mode=mode, wrappers=[TextActions], vector_kwargs=kwargs)
    envs.reset(seed=0)
    _, _, _, _, infos = envs.step(np.array(['"action": "+"', "nonsense"], dtype=object))
    assert list(infos["parse_ok"]) == [True, False]
    envs.close()
