"""Constructor arguments: every env refuses nonsense at once, and says which arguments name server files."""

from __future__ import annotations

import itertools
import math
import os
import time
import typing
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.utils import ALL_SPECS, AVAILABLE_SPECS, write_card_art
from vlm_envs.cards import EZPointsEnv, NumberLineEnv, Points24Env
from vlm_envs.cards.deck import CARD_VALUES, FULL_DECK, hand_probability
from vlm_envs.cards.formula import reachable_integers, solve
from vlm_envs.cards.number_line import MAX_POSITION
from vlm_envs.core.arguments import ServerPath, names_server_path
from vlm_envs.core.registration import _constructor_annotations, constructor_arguments, path_arguments
from vlm_envs.core.rendering import font

# A call must answer within this: a correctness bound against hangs (a deal that never ends, a
# frame of a billion pixels), not a speed target.
ANSWER_WITHIN_S = 5.0

NONSENSE = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.lists(st.integers(-5, 3000), max_size=3), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
PLAUSIBLE = {
    "target_points": st.integers(-1200, 10_500),
    "max_position": st.integers(-3, MAX_POSITION + 3),
    "image_size": st.lists(st.integers(0, 2100), min_size=2, max_size=2),
    "text_mode": st.sampled_from(["prompt", "full", "verbose"]),
    "render_mode": st.sampled_from([None, "rgb_array", "vr"]),  # "human" would open a window
    "max_steps": st.integers(-2, 1100),
    "split": st.sampled_from(["train", "eval_in_distribution", "test"]),
    "task_types": st.one_of(st.lists(st.integers(0, 7), max_size=3), st.sampled_from(["pick_and_place_simple", "cook"])),
}
# Path arguments get no text: a random string could name a real folder (and ALFWorld would scan it).
PATHS = st.sampled_from([None, 0, 3.5, ["x"], {"a": 1}, "/nonexistent/vlm-envs-test"])


def _arguments(env_id: str) -> st.SearchStrategy[dict]:
    optional = {}
    for name in constructor_arguments(env_id):
        if name in path_arguments(env_id):
            optional[name] = PATHS
        elif name == "render_mode":
            optional[name] = PLAUSIBLE[name]
        else:
            optional[name] = st.one_of(PLAUSIBLE[name], NONSENSE) if name in PLAUSIBLE else NONSENSE
    return st.fixed_dictionaries({}, optional=optional)


def _construct_reset_step(env_id: str, kwargs: dict) -> None:
    try:
        env = gym.make(env_id, **kwargs)
    except (ValueError, TypeError):
        return
    env.reset(seed=0)
    env.step("look" if isinstance(env.action_space, gym.spaces.Text) else 0)
    env.close()


def _fuzz(env_id: str, max_examples: int):
    @settings(max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(kwargs=_arguments(env_id))
    def check(kwargs):
        start = time.perf_counter()
        _construct_reset_step(env_id, kwargs)
        assert time.perf_counter() - start < ANSWER_WITHIN_S, kwargs

    check()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("env_id", [s.id for s in AVAILABLE_SPECS if s.id.startswith("gym_cards/")])
def test_card_constructors_construct_or_refuse_quickly(env_id):
    """Every call constructs an env that resets and steps, or raises ValueError/TypeError, within the bound."""
    _fuzz(env_id, max_examples=80)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.skipif("alfworld/ALFWorld-v0" not in {s.id for s in AVAILABLE_SPECS}, reason="needs the alfworld extra")
def test_alfworld_constructor_constructs_or_refuses_quickly():
    _fuzz("alfworld/ALFWorld-v0", max_examples=15)


@pytest.mark.parametrize("env_id, bad, error", [
    ("gym_cards/NumberLine-v0", {"max_position": 2.5}, TypeError),
    ("gym_cards/NumberLine-v0", {"max_position": MAX_POSITION + 1}, ValueError),
    ("gym_cards/NumberLine-v0", {"compat": "no"}, TypeError),
    ("gym_cards/Points24-v0", {"target_points": "24"}, TypeError),
    ("gym_cards/Points24-v0", {"target_points": 9999}, ValueError),
    ("gym_cards/Points24-v0", {"solvable_only": 1}, TypeError),
    ("gym_cards/EZPoints-v0", {"target_points": 0}, ValueError),
    ("gym_cards/EZPoints-v0", {"target_points": 23}, ValueError),
    ("gym_cards/Blackjack-v0", {"natural": "yes"}, TypeError),
    ("gym_cards/Blackjack-v0", {"image_size": [300.0, 300.0]}, TypeError),
    ("gym_cards/Blackjack-v0", {"image_size": [300, 300, 3]}, TypeError),
    ("gym_cards/Blackjack-v0", {"image_size": [2049, 300]}, ValueError),
    ("gym_cards/Blackjack-v0", {"oracle_labels": "false"}, TypeError),
    ("gym_cards/Blackjack-v0", {"card_art": 5}, TypeError),
])
def test_bad_values_are_refused_naming_the_argument(env_id, bad, error):
    (name,) = bad
    with pytest.raises(error, match=name):
        gym.make(env_id, **bad)


def test_json_lists_are_image_sizes():
    env = gym.make("gym_cards/NumberLine-v0", image_size=[64, 96])
    assert env.reset(seed=0)[0]["image"].shape == (64, 96, 3)


# -- targets ---------------------------------------------------------------------------------------
def test_ezpoints_deals_real_cards_for_every_reachable_target():
    """Target 0 used to deal cards through negative ranks and 100 raised IndexError; now every
    reachable target deals cards of the deck that solve it with + or *, and the rest are refused."""
    targets = EZPointsEnv.reachable_targets()
    assert targets == {a + b for a in CARD_VALUES for b in CARD_VALUES} | {a * b for a in CARD_VALUES for b in CARD_VALUES}
    assert 100 in targets and 0 not in targets
    for target in sorted(targets):
        for compat in (False, True):
            env = EZPointsEnv(target_points=target, compat=compat)
            for seed in range(20):
                _, info = env.reset(seed=seed)
                assert set(info["Cards"]) <= set(FULL_DECK) and (compat or len(set(info["Cards"])) == 2)
                assert solve(info["Numbers"], target, "+*", False) is not None, (target, info["Cards"])


def test_ezpoints_default_deal_is_the_reference_draw():
    """For 12 the deal draws exactly what the reference's hand-written rule drew, seed for seed."""
    from gymnasium.utils import seeding

    from vlm_envs.cards.deck import card_code, random_suit

    def reference(rng, compat):
        first_rank = int(rng.integers(2, 14))
        first = card_code(random_suit(rng), first_rank)
        v1 = min(first_rank, 10)
        v2 = 12 // v1 if v1 in (1, 2, 3, 4, 6) and rng.integers(2) else 12 - v1
        second = card_code(random_suit(rng), v2)
        while second == first and not compat:
            second = card_code(random_suit(rng), v2)
        return [second, first] if rng.integers(2) else [first, second]

    for compat in (False, True):
        env = EZPointsEnv(compat=compat)
        for seed in range(300):
            env.reset(seed=seed)
            assert env.cards == reference(seeding.np_random(seed)[0], compat)


HANDS = list(itertools.combinations_with_replacement(CARD_VALUES, 4))


@pytest.mark.parametrize("target", [24, 97])
def test_reachable_integers_agree_with_the_exact_solver(target):
    table = reachable_integers(HANDS)
    assert len(HANDS) == 715
    for hand in HANDS:
        assert (target in table[hand]) == (solve(hand, target) is not None), hand


def test_points24_refuses_exactly_the_targets_no_hand_reaches():
    targets = Points24Env.reachable_targets()
    assert (min(targets), max(targets), len(targets)) == (-999, 10_000, 1718)
    assert 24 in targets and 9999 not in targets
    with pytest.raises(ValueError, match="target_points=9999 cannot be reached"):
        Points24Env(target_points=9999, solvable_only=True)


@pytest.mark.parametrize("compat", [False, True])
def test_solvable_only_deals_at_once_for_every_reachable_target(compat):
    """The deal used to redeal forever (target 100000 hung a server session); now every reachable
    target deals a solvable hand in one draw, even one only four tens make."""
    targets = sorted(Points24Env.reachable_targets())
    for target in targets[::23] + [targets[-1]]:
        env = Points24Env(target_points=target, solvable_only=True, compat=compat)
        for seed in range(3):
            _, info = env.reset(seed=seed)
            assert info["solvable"] and set(info["Cards"]) <= set(FULL_DECK), (target, info["Cards"])
            assert compat or len(set(info["Cards"])) == 4


@pytest.mark.parametrize("distinct", [True, False])
def test_hand_probabilities_are_a_distribution(distinct):
    assert math.isclose(sum(hand_probability(hand, distinct) for hand in HANDS), 1.0)


def test_solvable_only_deals_as_dealing_until_solvable_would():
    """The one-draw deal has the distribution of the old redeal loop (fixed seeds: deterministic)."""
    def value_counts(hands):
        return Counter(v for hand in hands for v in hand)

    plain, only = Points24Env(), Points24Env(solvable_only=True)
    redealt = []
    for seed in range(2000):
        _, info = plain.reset(seed=seed)
        if info["solvable"]:
            redealt.append(info["Numbers"])
    direct = [only.reset(seed=seed)[1]["Numbers"] for seed in range(len(redealt))]
    a, b = value_counts(redealt), value_counts(direct)
    n = 4 * len(redealt)
    for value in CARD_VALUES:  # each value's share within 4 standard errors
        p = a[value] / n
        assert abs(a[value] - b[value]) / n < 4 * math.sqrt(2 * p * (1 - p) / n), (value, a[value], b[value])


def test_numberline_widest_label_fits_the_frame():
    assert 30 + font(36, bold=True).getlength(f"Current: {MAX_POSITION}") <= 300
    env = NumberLineEnv(max_position=MAX_POSITION)
    env.reset(seed=0)


# -- server paths ----------------------------------------------------------------------------------
EXPECTED_PATH_ARGUMENTS = {"gym_cards/NumberLine-v0": set(), "gym_cards/EZPoints-v0": {"card_art"},
                           "gym_cards/Points24-v0": {"card_art"}, "gym_cards/Blackjack-v0": {"card_art"}}


@pytest.mark.parametrize("env_id", [s.id for s in ALL_SPECS])
def test_path_arguments_of_every_registered_id(env_id):
    expected = EXPECTED_PATH_ARGUMENTS.get(env_id, {"game_dir", "game_files"})
    assert path_arguments(env_id) == expected
    assert path_arguments(env_id) <= set(constructor_arguments(env_id))


# Constructor arguments that take text but name no file of the machine the env runs on. A new
# argument typed str, a path or a sequence of them must be a ServerPath or be added here with why.
NOT_PATHS = {
    "render_mode": "a gymnasium render mode name",
    "text_mode": "a choice among the env's text layouts",
    "split": "an ALFWorld split name, resolved inside the server's own game folder",
    "task_types": "ALFWorld task type names or numbers",
    "obs_text_format": "a choice among ALFWorld's observation layouts",
    "match_mode": "a choice among ALFWorld's command matchers",
}


def _takes_text_or_paths(annotation) -> bool:
    """Whether an annotation admits a str or a path, alone, optional or in a sequence (not a Literal's fixed choices)."""
    if typing.get_origin(annotation) is typing.Literal:
        return False
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, os.PathLike)):
        return True
    return any(_takes_text_or_paths(arg) for arg in typing.get_args(annotation))


def _unmarked_text_arguments(annotations) -> list[str]:
    """Arguments that take text or paths, are not ServerPath and are not in NOT_PATHS; unannotated ones too."""
    return [name for name, annotation in annotations if name not in NOT_PATHS and (
        annotation is typing.Any or (_takes_text_or_paths(annotation) and not names_server_path(annotation)))]


@pytest.mark.parametrize("env_id", [s.id for s in ALL_SPECS])
def test_every_argument_that_takes_a_path_is_a_server_path_or_known_not_to_name_a_file(env_id):
    """A path argument typed plain ``str`` would be a client's to set: the server would read what it names."""
    assert _unmarked_text_arguments(_constructor_annotations(env_id)) == []


def test_the_path_argument_net_catches_plain_text_and_path_types():
    caught = [("art_dir", str), ("maps", Path), ("files", typing.Optional[Sequence[os.PathLike]]), ("untyped", typing.Any)]
    passed = [("card_art", typing.Optional[ServerPath]), ("files", Sequence[ServerPath]), ("mode", typing.Literal["a", "b"]),
              ("size", tuple[int, int]), ("text_mode", str)]
    assert _unmarked_text_arguments(caught + passed) == ["art_dir", "maps", "files", "untyped"]


def test_path_arguments_refuses_foreign_ids():
    with pytest.raises(ValueError, match="not an id registered by vlm_envs"):
        path_arguments("CartPole-v1")


@pytest.mark.parametrize("env_id", sorted(k for k, v in EXPECTED_PATH_ARGUMENTS.items() if v))
def test_card_art_errors_reveal_no_server_path(tmp_path, env_id):
    """``card art /etc/S2.png not found`` told a client which files a folder held; now a missing
    folder and an incomplete one get the same message, naming neither the folder nor its files."""
    incomplete = tmp_path / "secret-folder"
    write_card_art(incomplete, skip="S2")
    messages = []
    for folder in (incomplete, tmp_path / "missing", "\0"):
        with pytest.raises(ValueError) as err:
            gym.make(env_id, card_art=str(folder))
        messages.append(str(err.value).split(" was raised from")[0])
    assert len(set(messages)) == 1 and "secret-folder" not in messages[0] and str(tmp_path) not in messages[0]


def test_card_art_is_drawn_and_cached_once_per_folder_however_spelled(tmp_path):
    from vlm_envs.cards.drawing import card_sprite

    write_card_art(tmp_path / "art")
    before = len(card_sprite.cache)
    frames = []
    for spelling in (tmp_path / "art", f"{tmp_path}/./art", f"{tmp_path}/art/../art/"):
        env = gym.make("gym_cards/Blackjack-v0", card_art=str(spelling))
        frames.append(env.reset(seed=0)[0]["image"])
    assert all(np.array_equal(frames[0], f) for f in frames)
    assert not np.array_equal(frames[0], gym.make("gym_cards/Blackjack-v0").reset(seed=0)[0]["image"])
    assert len(card_sprite.cache) - before <= 5  # the cards of one table, once
