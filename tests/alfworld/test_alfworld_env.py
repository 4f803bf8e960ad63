"""The ALFWorld gymnasium env on the real alfworld/TextWorld engine (no mocks)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import vlm_envs  # noqa: F401
from vlm_envs.alfworld_wrap import ENV_IDS, SPLITS, TASK_TYPES, register_envs, shipped_games_dir
from vlm_envs.alfworld_wrap.engine import read_game_file
from vlm_envs.alfworld_wrap.env import ALFWorldEnv
from vlm_envs.text.prompts import build_prompt

register_envs()


def act(command: str) -> str:
    return json.dumps({"thoughts": "I should do this.", "action": command})


@pytest.mark.parametrize("env_id", sorted(ENV_IDS), ids=str)
def test_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    wanted = ENV_IDS[env_id].get("task_types")
    if wanted:
        assert {g.task_type for g in env.unwrapped.games} == {TASK_TYPES[wanted[0]]}
    env.close()


def _rollout(env, seed, n=12):
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    trace = [(obs["text"], obs["image"].tobytes(), info["task"], info["game_file"])]
    for _ in range(n):
        commands = info["admissible_commands"]
        obs, reward, term, trunc, info = env.step(act(commands[int(rng.integers(len(commands)))]))
        trace.append((obs["text"], obs["image"].tobytes(), reward, term, trunc, info["goal_condition_success_rate"]))
        if term or trunc:
            break
    return trace


def test_seeded_replay_is_identical():
    a, b = gym.make("alfworld/ALFWorld-v0"), gym.make("alfworld/ALFWorld-v0")
    for seed in (0, 1, 2):
        assert _rollout(a, seed) == _rollout(b, seed)
    firsts = {_rollout(a, seed, n=0)[0][3] for seed in range(12)}
    assert len(firsts) > 1  # the seed chooses the game


@pytest.mark.parametrize("split", SPLITS)
def test_oracle_wins_two_shipped_games_of_each_type(split):
    """(Every shipped evaluation game: the oracle result cards in docs/alfworld.md.)"""
    env = ALFWorldEnv(split=split, game_dir=str(shipped_games_dir()))
    by_type = {}
    picked = [i for i, g in enumerate(env.games) if [h.task_type for h in env.games[:i]].count(g.task_type) < 2]
    for i in picked:
        game = env.games[i]
        obs, info = env.reset(seed=i, options={"game_index": i})
        assert info["success"] is False
        done, ret = False, 0.0
        while not done:
            obs, reward, term, trunc, info = env.step(act(env.oracle_action()))
            assert info["legal_action"] and info["parse_ok"] and info["parse_error"] == ""
            ret += reward
            done = term or trunc
        assert term and info["won"] and info["success"] and info["goal_condition_success_rate"] == 1.0, game.name
        assert ret > 50
        by_type.setdefault(game.task_type, []).append(info["success"])
    assert set(by_type) == set(TASK_TYPES.values())


def test_oracle_replans_after_the_agent_deviates():
    env = ALFWorldEnv(task_types=[6])
    obs, info = env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(5):  # wander off the walkthrough
        obs, _, term, trunc, info = env.step(act(info["admissible_commands"][int(rng.integers(len(info["admissible_commands"])))]))
    for _ in range(40):
        obs, _, term, trunc, info = env.step(act(env.oracle_action()))
        if term or trunc:
            break
    assert info["won"]


def _kitchen_with_ten_cabinets():
    env = ALFWorldEnv(split="train")
    for i, game in enumerate(env.games):
        _, info = env.reset(options={"game_index": i})
        if "go to cabinet 10" in info["admissible_commands"]:
            return env, info
    pytest.fail("no shipped train game with 10 cabinets")


@pytest.mark.parametrize(
    "text, expected",
    [
        (act("go to cabinet 1"), "go to cabinet 1"),
        (act("go to cabinet 10"), "go to cabinet 10"),
        ('{"action": "Go To Cabinet 10."}', "go to cabinet 10"),
        ('{"action": "I will go to cabinet 10 now"}', "go to cabinet 10"),
        ('{"action": "go   to\tcabinet 1!"}', "go to cabinet 1"),
        ("I think the best move is: go to cabinet 12", "go to cabinet 12"),
        ('"action": \'go to cabinet 1\'', "go to cabinet 1"),
        ('{"action": "go to cabinet 100"}', None),
        ('{"action": "go to the moon"}', None),
        ("", None),
        ("   \n\t ", None),
        ("asdf qwer zxcv 1234 !!!", None),
        ("x" * 100_000, None),
        ("x" * 100_000 + act("go to cabinet 10"), "go to cabinet 10"),
        ("\u00e9\u4e2d\U0001F600 " + act("look"), "look"),
        ('{"action": ""}', None),
    ],
)
def test_command_matching_vectors(text, expected):
    env, info = _kitchen_with_ten_cabinets()
    facts_before = sorted(env._engine._base._pddl_state.facts, key=str)
    obs, reward, term, trunc, info = env.step(text)
    assert info["matched_command"] == expected
    assert info["legal_action"] is (expected is not None)
    assert info["parse_ok"] is (expected is not None)
    if expected is None:
        assert info["parse_error"] and obs["text"].startswith("Nothing happens.")
        assert sorted(env._engine._base._pddl_state.facts, key=str) == facts_before
        assert reward == pytest.approx(0.0 - 1.0)  # progress level 0, minus the penalty
    else:
        assert info["parse_error"] == ""


def test_non_string_actions_are_illegal_not_crashes():
    env, info = _kitchen_with_ten_cabinets()
    for bad in (None, 3, b"go to cabinet 1", ["go to cabinet 1"]):
        obs, reward, term, trunc, info = env.step(bad)
        assert not info["legal_action"] and "not str" in info["parse_error"]


def test_illegal_actions_are_penalised_and_never_sent_to_the_game():
    env = ALFWorldEnv(illegal_penalty=2.5)
    obs, info = env.reset(seed=0)
    sent = []
    real_step = env._engine.step
    env._engine.step = lambda command: sent.append(command) or real_step(command)  # a spy, not a mock
    admissible = info["admissible_commands"]
    obs, reward, term, trunc, info = env.step("please do a backflip")
    assert sent == [] and not info["legal_action"] and info["matched_command"] is None
    assert reward == pytest.approx(info["goal_condition_success_rate"] - 2.5)
    assert info["admissible_commands"] == admissible and info["feedback"] == "Nothing happens."
    obs, reward, term, trunc, info = env.step(act(admissible[0]))
    assert sent == [admissible[0]] and info["legal_action"]


def test_max_steps_truncates_and_counts_illegal_steps():
    env = ALFWorldEnv(max_steps=3)
    env.reset(seed=0)
    results = [env.step("nonsense")[2:4] for _ in range(3)]
    assert results == [(False, False), (False, False), (False, True)]
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")


def test_reward_modes():
    game = ALFWorldEnv(task_types=[4]).games[0]
    walkthrough = read_game_file(game.game_file)["walkthrough"]
    returns = {}
    for mode in ("reference", "delta"):
        env = ALFWorldEnv(task_types=[4], reward_mode=mode, success_bonus=10.0)
        env.reset(seed=0, options={"game_file": game.game_file})
        rewards, levels = [], []
        for command in walkthrough:
            _, r, term, _, info = env.step(act(command))
            rewards.append(r)
            levels.append(info["goal_condition_success_rate"])
        assert term
        returns[mode] = (rewards, levels)
    rewards, levels = returns["reference"]
    assert rewards == pytest.approx([lv + 10.0 * (i == len(levels) - 1) for i, lv in enumerate(levels)])
    rewards, levels = returns["delta"]
    assert sum(rewards) == pytest.approx(1.0 + 10.0)


def test_task_text_is_drawn_once_per_episode_and_in_the_intro():
    env = ALFWorldEnv(task_types=[1])
    obs, info = env.reset(seed=5)
    task = info["task"]
    assert f"Your task is to: {task}." in info["feedback"] and "UNKNOWN GOAL" not in obs["text"]
    for _ in range(5):
        obs, _, _, _, info = env.step(act(info["admissible_commands"][0]))
        assert info["task"] == task and f"Your task is to: {task}" in obs["text"]


def test_prompt_is_built_from_the_observation_text():
    env = ALFWorldEnv()
    obs, info = env.reset(seed=0)
    prompt = build_prompt("alfworld", obs["text"], cot=True)
    assert prompt == env.prompt(cot=True)
    assert prompt.startswith("Your are an expert in the ALFRED Embodied Environment.")
    assert f"Your task is to {info['task']}." in prompt
    assert "'" + info["admissible_commands"][0] + "'\n '" in prompt
    assert '"action": "{an admissible action}"' in build_prompt("alfworld", obs["text"], cot=False)


def test_list_repr_feedback_option():
    env = ALFWorldEnv(obs_text_format="list_repr")
    obs, info = env.reset(seed=0)
    assert obs["text"].startswith("['-= Welcome to TextWorld, ALFRED! =-\\n\\n")
    assert env.observation_space.contains(obs)


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="split"):
        ALFWorldEnv(split="valid")
    with pytest.raises(ValueError, match="task type"):
        ALFWorldEnv(task_types=[7])
    with pytest.raises(ValueError, match="reward_mode"):
        ALFWorldEnv(reward_mode="sparse")
    with pytest.raises(ValueError, match="max_steps"):
        ALFWorldEnv(max_steps=0)
    with pytest.raises(ValueError, match="max_steps"):
        ALFWorldEnv(max_steps=10**9)
    with pytest.raises(ValueError, match="success_bonus"):
        ALFWorldEnv(success_bonus=float("nan"))
    with pytest.raises(TypeError, match="game_files"):
        ALFWorldEnv(game_files="games/train/a/b/game.tw-pddl")  # one string, not a list
    with pytest.raises(TypeError, match="task_types"):
        ALFWorldEnv(task_types=1.5)
    with pytest.raises(ValueError, match="no playable game") as err:
        ALFWorldEnv(game_dir=str(tmp_path))
    assert str(tmp_path) not in str(err.value)  # errors never show the server's folders
    env = ALFWorldEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")
    with pytest.raises(ValueError, match="game_index"):
        env.reset(options={"game_index": 10_000})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"level": 3})


def test_info_game_file_is_the_path_under_the_games_root():
    """``info["game_file"]`` showed where the server installed its games; now it is the path under
    the games root, as manifests name games, and a reset can name the game that way."""
    from vlm_envs.evaluation.manifests import build_alfworld

    episode = build_alfworld("eval_in_distribution", "test").episodes[3]
    env = ALFWorldEnv(split="eval_in_distribution")
    _, info = env.reset(seed=0, options={"game_file": episode.game["path"]})
    assert info["game_file"] == episode.game["path"]
    _, again = env.reset(seed=0, options={"game_file": str(episode.game_file(shipped_games_dir()))})  # a local path too
    assert again["game_file"] == info["game_file"]
    named = ALFWorldEnv(game_files=[str(episode.game_file(shipped_games_dir()))])
    assert named.reset(seed=0)[1]["game_file"] == episode.game["path"].split("/", 1)[1]  # under the split folder


def test_game_dir_with_official_layout(tmp_path):
    """A folder laid out like ALFWorld's json_2.1.1 (train/valid_seen/valid_unseen), with its filters."""
    src = ALFWorldEnv(split="eval_out_of_distribution").games
    for i, game in enumerate(src[:3]):
        folder = tmp_path / "json_2.1.1" / "valid_unseen" / Path(game.game_file).parent.parent.name / f"trial_{i}"
        folder.mkdir(parents=True)
        data = read_game_file(game.game_file)
        if i == 1:
            data["solvable"] = False  # alfworld skips these
        (folder / "game.tw-pddl").write_text(json.dumps(data))
        (folder / "traj_data.json").write_text((Path(game.game_file).parent / "traj_data.json").read_text())
    sliced = tmp_path / "json_2.1.1" / "valid_unseen" / "pick_and_place_simple-AppleSliced-None-Fridge-1" / "t"
    sliced.mkdir(parents=True)
    env = ALFWorldEnv(split="eval_out_of_distribution", game_dir=str(tmp_path / "json_2.1.1"))
    assert len(env.games) == 2
    _, info = env.reset(seed=0)
    assert info["game_file"].startswith("valid_unseen/") and str(tmp_path) not in info["game_file"]


# -- the image never shows hidden state ----------------------------------------------------------
def _variant_with_hidden_state(data: dict, walkthrough: list[str]) -> tuple[dict, str]:
    """The same game plus (a) a teddy bear inside a closed receptacle the walkthrough never opens,
    (b) the target object secretly cold. Returns the new game and that receptacle's name."""
    problem = data["pddl_problem"]
    lines = problem.splitlines()
    receptacles = [ln.split()[0] for ln in lines if ln.strip().endswith("- receptacle")]
    openable = {ln.strip()[len("(openable "):-1] for ln in lines if ln.strip().startswith("(openable ")}
    hidden = next(r for r in sorted(openable) if r.split("_bar_")[0].lower() not in " ".join(walkthrough))
    loc = next(ln.split()[2].rstrip(")") for ln in lines if ln.strip().startswith(f"(receptacleAtLocation {hidden} "))
    bear = "TeddyBear_bar__plus_00_dot_11_bar__plus_00_dot_22_bar__plus_00_dot_33"
    problem = problem.replace("agent1 - agent", f"agent1 - agent\n        TeddyBearType - otype\n        {bear} - object", 1)
    target = next(ln.split()[1] for ln in lines if ln.strip().startswith("(objectType ") and "BreadType" in ln)
    extra = (f"        (objectType {bear} TeddyBearType)\n        (objectAtLocation {bear} {loc})\n"
             f"        (inReceptacle {bear} {hidden})\n        (pickupable {bear})\n        (isCool {target})\n")
    problem = problem.replace("    (:init\n", "    (:init\n" + extra, 1)
    assert receptacles and problem != data["pddl_problem"]
    return dict(data, pddl_problem=problem), hidden


def test_image_never_shows_hidden_state(tmp_path):
    env = ALFWorldEnv(split="train", task_types=[4])
    game = next(g for g in env.games if g.pddl_params["object_target"] == "Bread")
    data = read_game_file(game.game_file)
    walkthrough = data["walkthrough"]
    variant, hidden = _variant_with_hidden_state(data, walkthrough)
    folder = tmp_path / "variant" / "trial"
    folder.mkdir(parents=True)
    (folder / "game.tw-pddl").write_text(json.dumps(variant))
    (folder / "traj_data.json").write_text((Path(game.game_file).parent / "traj_data.json").read_text())
    a = ALFWorldEnv(game_files=[game.game_file], render_mode="rgb_array")
    b = ALFWorldEnv(game_files=[str(folder / "game.tw-pddl")], render_mode="rgb_array")
    oa, ia = a.reset(seed=0)
    ob, ib = b.reset(seed=0)
    # the hidden facts are really in game b
    facts_b = {(n, args) for n, args in b._engine.reset().facts}
    b.reset(seed=0)
    assert any(n == "inreceptacle" and args[0].startswith("teddybear") for n, args in facts_b)
    assert any(n == "iscool" for n, args in facts_b)
    assert np.array_equal(oa["image"], ob["image"])
    hidden_name = a._knowledge.receptacles  # demangled names are the same in both games
    assert hidden_name == b._knowledge.receptacles
    for command in walkthrough[:-1]:
        oa, *_ = a.step(act(command))
        ob, *_ = b.step(act(command))
        assert np.array_equal(oa["image"], ob["image"]), command
        assert a.describe().split("What you have observed:")[1] == b.describe().split("What you have observed:")[1]
    # Power check: once the agent opens the hidden receptacle, the images differ.
    name = next(r for r in b._knowledge.receptacles if b._engine._base._entity_infos[hidden.lower()].name.strip() == r)
    for command in (f"go to {name}", f"open {name}"):
        oa, *_ = a.step(act(command))
        ob, *_ = b.step(act(command))
    assert "teddybear" in ob["text"] and not np.array_equal(oa["image"], ob["image"])


def test_image_shows_what_was_observed():
    env = ALFWorldEnv(split="train", task_types=[4], render_mode="rgb_array")
    obs0, info = env.reset(seed=0, options={"game_index": 0})
    assert env.render().shape == (300, 300, 3) and env.render().dtype == np.uint8
    walkthrough = read_game_file(env._game.game_file)["walkthrough"]
    obs1, *_ = env.step(act(walkthrough[0]))
    assert not np.array_equal(obs0["image"], obs1["image"])
    obs2, *_ = env.step(act("inventory"))  # nothing new observed: same picture
    assert np.array_equal(obs1["image"], obs2["image"])
    big = ALFWorldEnv(split="train", task_types=[4], image_size=(512, 640))
    assert big.reset(seed=0)[0]["image"].shape == (512, 640, 3)


def test_pickle_mid_episode_resumes_the_same_game():
    env = ALFWorldEnv()
    obs, info = env.reset(seed=4)
    for command in info["admissible_commands"][:1] + ["inventory"]:
        obs, *_ = env.step(act(command))
    clone = pickle.loads(pickle.dumps(env))
    a = env.step(act(env.oracle_action()))
    b = clone.step(act(clone.oracle_action()))
    assert a[0]["text"] == b[0]["text"] and np.array_equal(a[0]["image"], b[0]["image"]) and a[1:4] == b[1:4]


def test_async_vector_env_returns_the_same_text_as_sync():
    kwargs = dict(num_envs=2, vector_kwargs={"shared_memory": False})
    sync = gym.make_vec("alfworld/ALFWorld-v0", vectorization_mode="sync", num_envs=2)
    asyn = gym.make_vec("alfworld/ALFWorld-v0", vectorization_mode="async", **kwargs)
    try:
        os_, _ = sync.reset(seed=11)
        oa, _ = asyn.reset(seed=11)
        assert list(os_["text"]) == list(oa["text"]) and np.array_equal(os_["image"], oa["image"])
        actions = (act("look"), "junk")
        s = sync.step(actions)
        a = asyn.step(actions)
        assert list(s[0]["text"]) == list(a[0]["text"]) and np.allclose(s[1], a[1])
        assert list(s[4]["legal_action"]) == [True, False]
    finally:
        sync.close()
        asyn.close()
