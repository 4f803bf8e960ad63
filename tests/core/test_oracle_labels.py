"""Per-step oracle labels (``oracle_labels=True``): pairing with observations, state keys, optimality."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

from tests.utils import AVAILABLE_SPECS
from vlm_envs import TextActions
from vlm_envs.core.labels import LABEL_KEYS

IDS = [spec.id for spec in AVAILABLE_SPECS]
CARD_IDS = [i for i in IDS if i.startswith("gym_cards/")]
ALFWORLD_IDS = [i for i in IDS if i.startswith("alfworld/")]
ROOT = Path(__file__).resolve().parents[2]
KEY = re.compile(r"^[0-9a-f]{64}$")


def as_action(env: gym.Env, choice):
    """What ``env.step`` takes for an oracle action or a command: ALFWorld's action is model text."""
    return json.dumps({"action": choice}) if isinstance(choice, str) else choice


def random_action(env: gym.Env, info: dict, rng: np.random.Generator):
    commands = info.get("admissible_commands")
    if commands is not None:
        return as_action(env, commands[int(rng.integers(len(commands)))])
    return int(rng.integers(env.action_space.n))


def play(env_id: str, seed: int, steps: int, labels: bool, oracle: bool = False) -> list[tuple]:
    """Reset and step (random or oracle actions, the same ones with or without labels); every result."""
    env = gym.make(env_id, oracle_labels=labels)
    rng = np.random.default_rng(seed)
    results = [env.reset(seed=seed)]
    for _ in range(steps):
        info = results[-1][-1]
        action = as_action(env, env.unwrapped.oracle_action()) if oracle else random_action(env, info, rng)
        results.append(env.step(action))
        if results[-1][2] or results[-1][3]:
            break
    env.close()
    return results


def without_labels(results: list[tuple]) -> list[tuple]:
    return [(*r[:-1], {k: v for k, v in r[-1].items() if k not in LABEL_KEYS}) for r in results]


def steps_of(env_id: str) -> int:
    return 8 if env_id.startswith("alfworld/") else 40


# -- every registered id ---------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", IDS)
def test_labels_are_off_by_default(env_id):
    for result in play(env_id, seed=0, steps=5, labels=False):
        assert not set(LABEL_KEYS) & set(result[-1])


@pytest.mark.parametrize("env_id", IDS)
def test_labels_change_nothing_but_info(env_id):
    labelled = play(env_id, seed=1, steps=steps_of(env_id), labels=True)
    assert data_equivalence(without_labels(labelled), play(env_id, seed=1, steps=steps_of(env_id), labels=False))


@pytest.mark.parametrize("env_id", IDS)
def test_labels_come_with_every_observation(env_id):
    env = gym.make(env_id, oracle_labels=True)
    rng = np.random.default_rng(2)
    _, info = env.reset(seed=2)
    assert KEY.match(info["state_key"]) and "action_optimal" not in info
    for _ in range(steps_of(env_id)):
        assert info["oracle_action"] == env.unwrapped.oracle_action()  # the state the observation shows
        _, _, terminated, truncated, info = env.step(random_action(env, info, rng))
        assert KEY.match(info["state_key"]) and type(info["action_optimal"]) is bool
        assert ("oracle_action" in info) == (not terminated)
        if terminated or truncated:
            break


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_passes_with_labels(env_id):
    env = gym.make(env_id, oracle_labels=True).unwrapped
    with warnings.catch_warnings():
        if env_id in CARD_IDS:
            warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_the_oracles_own_actions_are_labelled_optimal(env_id):
    """Points24's unsolvable hands included: the oracle ends them at once, the only optimal move there."""
    for seed in range(1 if env_id in ALFWORLD_IDS else 40):
        results = play(env_id, seed, steps=300, labels=True, oracle=True)
        assert results[-1][2] or results[-1][3]
        assert all(r[-1]["action_optimal"] for r in results[1:]), (env_id, seed)


def test_state_keys_are_the_same_in_another_process():
    """Keys of the oracle's first states for every id, in a fresh interpreter with another hash seed."""
    code = (
        "import json, sys; sys.path.insert(0, 'tests'); import vlm_envs; "
        "from tests.core.test_oracle_labels import IDS, play; "
        "print(json.dumps({i: [r[-1]['state_key'] for r in play(i, 3, 3, True, oracle=True)] for i in IDS}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
                         check=True).stdout
    there = json.loads(out.strip().splitlines()[-1])
    here = {i: [r[-1]["state_key"] for r in play(i, 3, 3, True, oracle=True)] for i in IDS}
    assert there == here and len({k for keys in here.values() for k in keys}) > len(IDS)


def test_vector_envs_stack_the_labels_with_masks():
    """A terminated sub-env has no oracle action: its mask says so, and the batch stays an int array."""
    envs = gym.make_vec("gym_cards/NumberLine-v0", 3, vectorization_mode="sync", oracle_labels=True)
    envs.action_space.seed(0)
    envs.reset(seed=0)
    seen_terminal = False
    for _ in range(30):
        _, _, terminated, _, infos = envs.step(envs.action_space.sample())
        assert infos["oracle_action"].dtype.kind == "i" and len(infos["state_key"]) == 3
        assert np.array_equal(infos["_oracle_action"], ~terminated)
        seen_terminal |= bool(terminated.any() and not terminated.all())
    assert seen_terminal
    envs.close()


# -- what each env counts as its state and as optimal -------------------------------------------------
def labelled(env_id: str, **kwargs):
    return gym.make(env_id, oracle_labels=True, **kwargs).unwrapped


def keys_at_reset(env, seeds, state, shown) -> dict:
    """Check reset keys are one per ``state(env)`` and differ between states; return what each state
    looked like (``shown(env)``) across the seeds."""
    keys: dict = {}
    views: dict = {}
    for seed in seeds:
        _, info = env.reset(seed=seed)
        keys.setdefault(state(env), set()).add(info["state_key"])
        views.setdefault(state(env), set()).add(shown(env))
    assert all(len(k) == 1 for k in keys.values()), "one state, several keys"
    assert len(set().union(*keys.values())) == len(keys), "several states, one key"
    return views


def test_numberline_key_is_target_and_current_and_optimal_means_closer():
    env = labelled("gym_cards/NumberLine-v0")
    assert len(keys_at_reset(env, range(400), lambda e: (e.target, e.current), lambda e: e.steps)) == 30
    for seed in range(40):
        _, info = env.reset(seed=seed)
        if 0 < info["Current"] < env.max_position and abs(info["Target"] - info["Current"]) > 1:
            env.step(1)
            assert env.step(0)[4]["state_key"] == info["state_key"]  # up and back down: another path, the same state

    rng = np.random.default_rng(0)
    _, info = env.reset(seed=4)
    for _ in range(10):
        before = abs(info["Target"] - info["Current"])
        _, _, terminated, truncated, info = env.step(int(rng.integers(2)))
        assert info["action_optimal"] == (abs(info["Target"] - info["Current"]) < before)
        if terminated or truncated:
            break
    _, info = env.reset(seed=4)
    assert env.step(1 - info["oracle_action"])[4]["action_optimal"] is False  # away from the target


def test_blackjack_key_ignores_card_order_and_suits_and_optimal_means_basic_strategy():
    env = labelled("gym_cards/Blackjack-v0")
    cards = keys_at_reset(env, range(3000), lambda e: (tuple(sorted(c.value for c in e.player)), tuple(c.value for c in e.dealer)),
                          lambda e: (tuple(e.player), tuple(e.dealer)))
    assert sum(len(c) > 1 for c in cards.values()) > 100  # equal keys with other suits, faces or card order

    for seed in range(50):
        _, info = env.reset(seed=seed)
        oracle = info["oracle_action"]
        assert env.step(oracle)[4]["action_optimal"] is True
        env.reset(seed=seed)
        assert env.step(1 - oracle)[4]["action_optimal"] is False


def names(env, *symbols: str) -> list[int]:
    return [env.action_names.index(s) for s in symbols]


def deal(env_id: str, values: list[int], **kwargs):
    """An env whose current hand has ``values`` (searched over seeds, so the labels are the env's own)."""
    env = labelled(env_id, **kwargs)
    for seed in range(20000):
        env.reset(seed=seed)
        if sorted(env.numbers) == sorted(values):
            return env, seed
    raise AssertionError(f"no seed deals {values}")


def test_point_game_key_is_values_and_formula():
    env = labelled("gym_cards/EZPoints-v0")
    cards = keys_at_reset(env, range(400), lambda e: tuple(sorted(e.numbers)), lambda e: tuple(e.cards))
    assert max(len(c) for c in cards.values()) > 1  # the same key for other suits and card order

    env, seed = deal("gym_cards/EZPoints-v0", [6, 2])
    after = {}
    for path in (("6", "2", "6"), ("6", "2", "2")):  # a used-up 6 or 2 both append a placeholder
        env.reset(seed=seed)
        for action in names(env, *path):
            *_, info = env.step(action)
        after[path] = info["state_key"]
    assert len(set(after.values())) == 1 and info["Formula"] == [6, 2, " "]
    env.reset(seed=seed)
    assert env.step(names(env, "6")[0])[4]["state_key"] != after[("6", "2", "6")]


def labels_of(env, seed: int, path: tuple[str, ...]) -> list[bool]:
    env.reset(seed=seed)
    return [env.step(a)[4]["action_optimal"] for a in names(env, *path)]


def test_point_game_optimal_means_a_solution_stays_reachable():
    env, seed = deal("gym_cards/EZPoints-v0", [6, 2])
    assert env.solution() == [2, "*", 6]
    assert labels_of(env, seed, ("6", "*", "2", "=")) == [True] * 4  # not the oracle's order, still optimal
    assert labels_of(env, seed, ("6", "+")) == [True, False]  # 6 + 2 is 8
    assert labels_of(env, seed, ("6", "6")) == [True, False]  # the 6 is used up: a penalised placeholder
    assert labels_of(env, seed, ("2", "=")) == [True, False]  # a card left
    assert labels_of(env, seed, ("2", "+", "=")) == [True, False, True]  # lost: ending at once is optimal
    env.reset(seed=seed)
    env.step(names(env, "6")[0])
    assert env.oracle_action() == names(env, "=")[0] and env.completion() == ["*", 2]  # the oracle gave up

    env, seed = deal("gym_cards/Points24-v0", [8, 3, 8, 3])
    assert labels_of(env, seed, ("(", "(", "8", "/", "(", "3", "-", "8", "/", "3", ")", ")", ")", "=")) == [True] * 14
    assert labels_of(env, seed, ("+",)) == [False]  # a formula cannot start with an operator
    assert labels_of(env, seed, ("8", "+", "3", "=")) == [True, False, False, True]  # 8 + (16 from 3, 8, 3) cannot be


def test_points24_unsolvable_hand_only_equals_is_optimal():
    env = labelled("gym_cards/Points24-v0")
    seed = next(s for s in range(100) if not env.reset(seed=s)[1]["solvable"])
    for action, name in enumerate(env.action_names):
        env.reset(seed=seed)
        assert env.step(action)[4]["action_optimal"] == (name == "=")


@pytest.mark.parametrize("rule", ["random", "penalty", "noop"])
def test_text_actions_parse_failure_is_never_optimal(rule):
    """Even when the random fallback happens to play the oracle's move, the model chose nothing."""
    env = TextActions(gym.make("gym_cards/NumberLine-v0", oracle_labels=True), on_parse_failure=rule)
    lucky = 0
    for seed in range(20):
        _, info = env.reset(seed=seed)
        oracle, key = info["oracle_action"], info["state_key"]
        *_, terminated, _, info = env.step("no idea")
        assert info["action_optimal"] is False and not info["parse_ok"]
        if rule == "random":
            lucky += info["action"] == oracle
        else:
            assert info["state_key"] == key and info["oracle_action"] == oracle  # the same state again
        if not terminated:
            *_, info = env.step(json.dumps({"action": env.unwrapped.action_names[info["oracle_action"]]}))
            assert info["parse_ok"] and info["action_optimal"] is True
    assert rule != "random" or lucky > 0


# -- ALFWorld (real engine; one or two games) ---------------------------------------------------------
needs_alfworld = pytest.mark.skipif(not ALFWORLD_IDS, reason='needs the "alfworld" extra')


@pytest.fixture(scope="module")
def alfworld():
    from vlm_envs.alfworld_wrap.env import ALFWorldEnv

    env = ALFWorldEnv(split="eval_in_distribution", oracle_labels=True)
    yield env
    env.close()


def alf_key(env, commands: list[str], seed: int = 0) -> tuple[str, tuple[str, ...]]:
    _, info = env.reset(seed=seed, options={"game_index": 0})
    for command in commands:
        *_, info = env.step(json.dumps({"action": command}))
    return info["state_key"], tuple(info["admissible_commands"])


@needs_alfworld
def test_alfworld_key_is_the_world_not_the_way_there(alfworld):
    visited = alf_key(alfworld, ["go to drawer 1", "go to desk 1"])
    assert visited == alf_key(alfworld, ["go to desk 1"])
    assert visited == alf_key(alfworld, ["go to drawer 1", "open drawer 1", "close drawer 1", "go to desk 1"])
    assert alf_key(alfworld, []) == alf_key(alfworld, ["look", "inventory"]) == alf_key(alfworld, [], seed=1)
    assert len({alf_key(alfworld, c)[0] for c in ([], ["go to drawer 1"], ["go to drawer 2"],
                                                    ["go to drawer 1", "open drawer 1"])}) == 4


@needs_alfworld
def test_alfworld_history_facts_are_read_by_no_rule():
    """The key leaves out ``checked`` and ``not_*`` facts: no precondition or goal of the shipped games reads them."""
    from vlm_envs.alfworld_wrap import shipped_games_dir

    games = [json.loads(p.read_text()) for p in sorted(shipped_games_dir().glob("*/*/*/game.tw-pddl"))]
    assert len(games) > 200
    for domain in {g["pddl_domain"] for g in games}:
        preconditions = [a.split(":precondition")[1].split(":effect")[0] for a in domain.split("(:action")[1:]]
        assert preconditions and not any("checked" in p.lower() for p in preconditions) and "not_" not in domain
    assert not any("checked" in g["pddl_problem"].split(":goal")[1].lower() for g in games)


@needs_alfworld
def test_alfworld_optimal_means_the_oracles_command_or_progress(alfworld):
    for index in (0, next(i for i, g in enumerate(alfworld.games) if g.task_type == "pick_two_obj_and_place")):
        _, info = alfworld.reset(seed=index, options={"game_index": index})
        done = False
        while not done:  # every walkthrough command also shortens the expert's plan
            was = alfworld._expert_steps(alfworld._facts)
            *_, terminated, truncated, info = alfworld.step(json.dumps({"action": info["oracle_action"]}))
            assert info["action_optimal"] and (terminated or alfworld._expert_steps(alfworld._facts) < was)
            done = terminated or truncated
        assert terminated
    _, info = alfworld.reset(seed=0, options={"game_index": 0})
    detour = next(c for c in info["admissible_commands"] if c.startswith("go to") and c != info["oracle_action"])
    for text in ("look", "fly to the moon", detour):
        alfworld.reset(seed=0, options={"game_index": 0})
        assert alfworld.step(json.dumps({"action": text}))[4]["action_optimal"] is False, text
