"""Rules of the four card games: the reference's reward/termination tables and test vectors."""

from __future__ import annotations

from collections import Counter

import gymnasium as gym
import numpy as np
import pytest

import vlm_envs  # noqa: F401
from vlm_envs.cards.blackjack import Card, basic_strategy, hand_total, is_natural, player_card_positions


def make(env_id: str, **kwargs):
    env = gym.make(env_id, **kwargs).unwrapped
    env.reset(seed=0)
    return env


# -- NumberLine -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "current, target, action, reward, terminated, new_current",
    [(1, 3, 1, 0.0, False, 2), (0, 3, 0, -1.0, False, 0), (2, 3, 1, 1.0, True, 3), (4, 3, 1, -1.0, False, 5)],
)
def test_numberline_step_table(current, target, action, reward, terminated, new_current):
    env = make("gym_cards/NumberLine-v0")
    env.current, env.target = current, target
    _, r, term, trunc, info = env.step(action)
    assert (r, term, trunc, env.current, info["Current"]) == (reward, terminated, False, new_current, new_current)


def test_numberline_truncates_after_2m_steps():
    env = make("gym_cards/NumberLine-v0")
    env.current, env.target = 0, 5
    results = [env.step(0) for _ in range(10)]  # push against the wall
    assert [r[3] for r in results] == [False] * 9 + [True]
    assert not any(r[2] for r in results)


def test_numberline_success_means_no_wasted_move():
    env = make("gym_cards/NumberLine-v0")
    env.current, env.target = 2, 3
    env.step(0)
    env.step(1)
    *_, info = env.step(1)
    assert info["Current"] == 3 and not info["success"] and info["wasted_moves"] == 1


def test_numberline_start_and_target_are_uniform_distinct_pairs():
    env = gym.make("gym_cards/NumberLine-v0").unwrapped
    pairs = Counter()
    for seed in range(6000):
        env.reset(seed=seed)
        pairs[(env.current, env.target)] += 1
    assert len(pairs) == 30 and all(c != t for c, t in pairs)
    assert max(pairs.values()) / min(pairs.values()) < 1.5  # 200 expected each


def test_numberline_compat_reproduces_the_biased_repair():
    env = gym.make("gym_cards/NumberLine-v0", compat=True).unwrapped
    targets = Counter()
    for seed in range(3000):
        env.reset(seed=seed)
        targets[(env.current, env.target)] += 1
    assert targets[(5, 1)] > 0 and (0, 0) not in targets  # p=g=5 -> (5+1) mod 5 = 1


def test_numberline_rejects_degenerate_line():
    with pytest.raises(ValueError, match="max_position"):
        gym.make("gym_cards/NumberLine-v0", max_position=0)


# -- EZPoints / Points24 ----------------------------------------------------------------------------
def set_hand(env, numbers):
    env.cards = [f"H{'A23456789T'[n - 1]}" for n in numbers]
    env.numbers = list(numbers)
    env.formula, env.used, env.episode_return = [], [], 0.0
    env._canvas = None


def play(env, names):
    return [env.step(env.action_names.index(n)) for n in names]


def test_ezpoints_solution_pays_10():
    env = make("gym_cards/EZPoints-v0")
    set_hand(env, [6, 2])
    steps = play(env, ["6", "*", "2", "="])
    assert [s[1] for s in steps] == [0, 0, 0, 10.0] and steps[-1][2] and steps[-1][4]["success"]


def test_ezpoints_invalid_number_appends_placeholder():
    env = make("gym_cards/EZPoints-v0")
    set_hand(env, [6, 2])
    steps = play(env, ["6", "6"])
    assert steps[1][1] == -1.0 and steps[1][4]["Formula"] == [6, " "] and not steps[1][2]
    assert steps[1][0]["text"] == "6 "


def test_ezpoints_length_guard_truncates_the_seventh_step():
    env = make("gym_cards/EZPoints-v0")
    set_hand(env, [6, 2])
    steps = play(env, ["6", "*", "2", "*", "6", "+", "="])
    assert steps[4][1] == -1.0  # invalid 6
    assert steps[6][1:4] == (-1.0, False, True)  # the '=' is ignored, as in the reference


def test_ezpoints_unused_card_fails():
    env = make("gym_cards/EZPoints-v0")
    set_hand(env, [10, 2])
    steps = play(env, ["10", "="])
    assert steps[-1][1] == -1.0 and not steps[-1][4]["success"]


def test_ezpoints_deal_distribution():
    env = gym.make("gym_cards/EZPoints-v0").unwrapped
    identical = 0
    for seed in range(3000):
        env.reset(seed=seed)
        assert env.solution() is not None
        assert "A" not in (env.cards[0][1], env.cards[1][1])  # the reference never deals an ace here
        identical += env.cards[0] == env.cards[1]
        assert 12 in (sum(env.numbers), env.numbers[0] * env.numbers[1])
    assert identical == 0


def test_points24_exact_fractions():
    env = make("gym_cards/Points24-v0")
    set_hand(env, [8, 3, 8, 3])
    steps = play(env, ["8", "/", "(", "3", "-", "8", "/", "3", ")", "="])
    assert steps[-1][1] == 10.0 and steps[-1][4]["success"]
    compat = make("gym_cards/Points24-v0", compat=True)
    set_hand(compat, [8, 3, 8, 3])
    assert play(compat, ["8", "/", "(", "3", "-", "8", "/", "3", ")", "="])[-1][1] == -1.0  # float: 23.999...


def test_points24_digit_concatenation_only_in_compat():
    names = ["1", "2", "*", "2", "*", "1", "="]  # "12*2*1" under eval
    env = make("gym_cards/Points24-v0")
    set_hand(env, [1, 2, 2, 1])
    assert play(env, names)[-1][1] == -1.0
    compat = make("gym_cards/Points24-v0", compat=True)
    set_hand(compat, [1, 2, 2, 1])
    assert play(compat, names)[-1][1] == 10.0


def test_points24_length_guard_and_division_by_zero():
    env = make("gym_cards/Points24-v0")
    set_hand(env, [1, 2, 3, 4])
    steps = play(env, ["("] * 21 + ["="])
    assert steps[-1][1:4] == (-1.0, False, True)
    set_hand(env, [1, 1, 4, 6])
    assert play(env, ["4", "/", "(", "1", "-", "1", ")", "*", "6", "="])[-1][1] == -1.0


def test_points24_deals_distinct_cards_and_reports_solvability():
    env = gym.make("gym_cards/Points24-v0").unwrapped
    solvable = 0
    for seed in range(500):
        _, info = env.reset(seed=seed)
        assert len(set(env.cards)) == 4
        solvable += info["solvable"]
    assert 0.6 < solvable / 500 < 0.95
    only = gym.make("gym_cards/Points24-v0", solvable_only=True).unwrapped
    assert all(only.reset(seed=s)[1]["solvable"] for s in range(200))


def test_points24_compat_draws_with_replacement():
    env = gym.make("gym_cards/Points24-v0", compat=True).unwrapped
    assert any(len(set(env.reset(seed=s)[1]["Cards"])) < 4 for s in range(500))


def test_points24_face_cards_as_values_is_rejected_clearly():
    with pytest.raises(ValueError, match="treat_face_cards_as_10"):
        gym.make("gym_cards/Points24-v0", treat_face_cards_as_10=False)


# -- Blackjack ---------------------------------------------------------------------------------------
def test_blackjack_natural_payout_fixed_and_compat():
    for compat, expected in ((False, 1.5), (True, 1.0)):
        env = make("gym_cards/Blackjack-v0", natural=True, compat=compat)
        env.player = [Card(1, "A", "H"), Card(10, "K", "S")]
        env.dealer = [Card(10, "Q", "D"), Card(8, "8", "C")]
        _, reward, terminated, _, info = env.step(0)
        assert (reward, terminated, info["success"]) == (expected, True, True)


def test_blackjack_sab_natural_wins():
    env = make("gym_cards/Blackjack-v0", sab=True)
    env.player = [Card(1, "A", "H"), Card(10, "K", "S")]
    env.dealer = [Card(10, "Q", "D"), Card(1, "A", "C")]  # dealer natural too: a push
    assert env.step(0)[1] == 0.0


def test_blackjack_bust_and_dealer_play():
    env = make("gym_cards/Blackjack-v0")
    env.player = [Card(10, "K", "H"), Card(10, "Q", "S")]
    env.np_random = np.random.default_rng(0)
    _, reward, terminated, _, info = env.step(1)
    assert hand_total(env.player) > 21 and (reward, terminated, info["success"]) == (-1.0, True, False)
    env.reset(seed=5)
    env.step(0)
    assert hand_total(env.dealer) >= 17


def test_blackjack_helpers():
    assert hand_total([Card(1, "A", "H"), Card(6, "6", "S")]) == 17
    assert hand_total([Card(1, "A", "H"), Card(6, "6", "S"), Card(10, "K", "S")]) == 17
    assert is_natural([Card(10, "K", "S"), Card(1, "A", "H")]) and not is_natural([Card(10, "K", "S"), Card(9, "9", "H")])
    assert basic_strategy(16, False, 10) == 1 and basic_strategy(16, False, 6) == 0 and basic_strategy(18, True, 9) == 1
    positions = player_card_positions(7)
    assert positions[0] == (5, 150) and positions[-1][0] + 70 <= 300 - 5 + 1


def test_blackjack_info_keeps_hole_card_out_of_text_and_image():
    env = make("gym_cards/Blackjack-v0", text_mode="full")
    obs = env._get_obs()
    hole_face = env.dealer[1].face
    assert obs["text"].startswith(f"Dealer's card: {env.dealer[0].face}.")
    env.dealer[1] = env.dealer[1]._replace(face="K" if hole_face != "K" else "Q")
    env._frame = None
    assert np.array_equal(env._render_frame(), obs["image"])  # the hole card never shows


def test_text_modes():
    nl = make("gym_cards/NumberLine-v0", text_mode="full")
    assert nl._get_obs()["text"] == f"Target number: {nl.target}. Current number: {nl.current}"
    p24 = make("gym_cards/Points24-v0", text_mode="full")
    assert p24._get_obs()["text"].startswith("Cards: [")
    assert make("gym_cards/Points24-v0")._get_obs()["text"] == ""
