"""ALFWorld engine, generator and task logic, on the real alfworld/TextWorld engine (no mocks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlm_envs.alfworld_wrap import TASK_TYPES, shipped_games_dir
from vlm_envs.alfworld_wrap import generate as gen
from vlm_envs.alfworld_wrap import scenes
from vlm_envs.alfworld_wrap.engine import Engine, GameError, read_game_file
from vlm_envs.alfworld_wrap.expert import expert_plan
from vlm_envs.alfworld_wrap.games import find_games
from vlm_envs.alfworld_wrap.tasks import TEMPLATES, FactIndex, goal_conditions

SHIPPED = find_games(shipped_games_dir(), tuple(TASK_TYPES.values()))


def _first_per_type(games, n=1):
    count, out = {}, []
    for g in games:
        if count.get(g.task_type, 0) < n:
            count[g.task_type] = count.get(g.task_type, 0) + 1
            out.append(g)
    return out


def _one_per_type(games):
    return _first_per_type(games)


# Two games of each task type in each split: what per-game tests play (the full evaluation sets
# are swept by the oracle result cards in docs/alfworld.md).
SAMPLE = [g for split in ("train", "eval_in_distribution", "eval_out_of_distribution")
          for g in _first_per_type(find_games(shipped_games_dir() / split, tuple(TASK_TYPES.values())), 2)]


def test_shipped_set_covers_every_task_type_in_every_split():
    root = shipped_games_dir()
    for split in ("train", "eval_in_distribution", "eval_out_of_distribution"):
        types = {g.task_type for g in find_games(root / split, tuple(TASK_TYPES.values()))}
        assert types == set(TASK_TYPES.values()), split


def test_splits_are_disjoint_and_ood_uses_unseen_floor_plans():
    root = shipped_games_dir()
    problems, plans = {}, {}
    for split in ("train", "eval_in_distribution", "eval_out_of_distribution"):
        games = find_games(root / split, tuple(TASK_TYPES.values()))
        problems[split] = {read_game_file(g.game_file)["pddl_problem"] for g in games}
        plans[split] = {json.loads((Path(g.game_file).parent / "traj_data.json").read_text())["scene"]["scene_num"] for g in games}
    assert not problems["train"] & problems["eval_in_distribution"]
    assert not problems["train"] & problems["eval_out_of_distribution"]
    assert not (plans["train"] | plans["eval_in_distribution"]) & plans["eval_out_of_distribution"]


def test_templates_match_the_alfworld_wheel():
    import alfworld.gen.goal_library as glib

    for task_type, templates in TEMPLATES.items():
        assert tuple(glib.gdict[task_type]["templates"]) == templates


def test_generator_is_deterministic(tmp_path):
    a = gen.generate(tmp_path / "a", seed=7, games_per_type=1, splits=["train"],
                     task_types=["pick_two_obj_and_place", "look_at_obj_in_light"], progress=False)
    b = gen.generate(tmp_path / "b", seed=7, games_per_type=1, splits=["train"],
                     task_types=["pick_two_obj_and_place", "look_at_obj_in_light"], progress=False)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes()
        assert (pa.parent / "traj_data.json").read_bytes() == (pb.parent / "traj_data.json").read_bytes()
    c = gen.generate(tmp_path / "c", seed=8, games_per_type=1, splits=["train"],
                     task_types=["pick_two_obj_and_place"], progress=False)
    assert c[0].read_bytes() != a[0].read_bytes()


@pytest.mark.parametrize("scene", [418, 425, 429])  # rooms whose sink basin is placed at a synthetic pose
def test_generated_receptacles_get_alfworlds_names(scene):
    from types import SimpleNamespace

    from alfworld.agents.utils.misc import Demangler

    receptacles = scenes.load_scene(scene, np.random.default_rng(0)).receptacles
    ids = {r.type: r.id.lower() for r in receptacles}  # the engine sees PDDL names lowercased
    demangler = Demangler(game_infos={i: SimpleNamespace(id=i) for i in ids.values()})
    names = {rtype: demangler.demangle_alfred_name(i).rsplit(" ", 1)[0] for rtype, i in ids.items()}
    assert names["SinkBasin"] == "sinkbasin"  # not "sinkbasinbasin"
    assert all(name == rtype.lower() for rtype, name in names.items())


def test_shipped_games_use_alfworlds_basin_names():
    for game in SHIPPED:
        text = Path(game.game_file).read_text()
        assert "SinkBasin_bar_" not in text and "BathtubBasin_bar_" not in text, game.game_file


def test_generated_game_is_recorded_solvable_with_walkthrough(tmp_path):
    [path] = gen.generate(tmp_path, seed=3, games_per_type=1, splits=["eval_out_of_distribution"],
                          task_types=["pick_cool_then_place_in_recep"], progress=False)
    game = read_game_file(path)
    traj = json.loads((path.parent / "traj_data.json").read_text())
    assert game["solvable"] is True and game["walkthrough"]
    assert traj["task_type"] == "pick_cool_then_place_in_recep"
    assert traj["scene"]["scene_num"] in range(1, 7)  # ALFRED's test kitchens
    engine = Engine()
    engine.load(game)
    result = engine.reset()
    for command in game["walkthrough"]:
        assert command in result.admissible_commands
        result = engine.step(command)
    assert result.won


def _corrupt(game: dict, **changes) -> dict:
    bad = dict(game)
    bad.update(changes)
    return bad


def test_corrupt_games_are_rejected_with_a_clear_error(tmp_path):
    good = read_game_file(SHIPPED[0].game_file)
    problem = good["pddl_problem"]
    duplicated = problem.replace("agent1 - agent", "agent1 - agent\n        agent1 - agent", 1)
    engine = Engine()
    with pytest.raises(GameError, match="bad.tw-pddl: the PDDL translator rejected"):
        engine.load(_corrupt(good, pddl_problem=duplicated), "bad.tw-pddl")
    with pytest.raises(GameError, match="missing or empty 'pddl_problem'"):
        engine.load(_corrupt(good, pddl_problem=""), "bad.tw-pddl")
    with pytest.raises(GameError, match="bad.tw-pddl"):
        engine.load(_corrupt(good, pddl_problem=problem[: len(problem) // 2]), "bad.tw-pddl")
    broken = tmp_path / "game.tw-pddl"
    broken.write_text('{"pddl_domain": "(define')
    with pytest.raises(GameError, match="not a game.tw-pddl file"):
        read_game_file(broken)
    # the engine still plays a good game afterwards
    engine.load(good, "good")
    assert engine.reset().admissible_commands


def test_translator_leaves_sys_argv_alone():
    argv = list(sys.argv)
    engine = Engine()
    engine.load(read_game_file(SHIPPED[1].game_file))
    engine.reset()
    assert sys.argv == argv


def test_unsolvable_candidate_is_rejected():
    info = next(g for g in SHIPPED if g.task_type == "pick_and_place_simple")
    game = read_game_file(info.game_file)
    traj = json.loads((Path(info.game_file).parent / "traj_data.json").read_text())
    assert scenes.check_game(game, traj) == game["walkthrough"]
    # The goal receptacle type can no longer hold the object: the game cannot be won.
    target = traj["pddl_params"]
    line = f"(canContain {target['parent_target']}Type {target['object_target']}Type)"
    assert line in game["pddl_problem"]
    bad = _corrupt(game, pddl_problem=game["pddl_problem"].replace(line, ""))
    with pytest.raises(scenes.GameRejected):
        scenes.check_game(bad, traj)


class _PlainTextWorld:
    """textworld's own PddlEnv + alfworld's AlfredDemangler, with none of our caches."""

    def __init__(self, data):
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
        from textworld.envs.pddl import PddlEnv

        self.env = AlfredDemangler(PddlEnv(textworld.EnvInfos(facts=True, admissible_commands=True, won=True)))
        self.env.load(data)

    @staticmethod
    def _out(state):
        return state.feedback, list(state["admissible_commands"]), sorted((f.name, tuple(v.name for v in f.arguments)) for f in state["facts"]), bool(state["won"])

    def reset(self):
        return self._out(self.env.reset())

    def step(self, command):
        return self._out(self.env.step(command)[0])


@pytest.mark.parametrize("game", [g for split in ("train", "eval_out_of_distribution")
                                  for g in _one_per_type(find_games(shipped_games_dir() / split, tuple(TASK_TYPES.values())))],
                         ids=lambda g: f"{Path(g.game_file).parts[-4]}-{g.task_type}")
def test_engine_caches_change_nothing_textworld_says(game):
    """Feedback, admissible commands, facts and won are textworld's own, step for step (the
    out-of-distribution games' translations come from the package, the train games' are made here)."""
    data = read_game_file(game.game_file)
    argv = list(sys.argv)
    plain = _PlainTextWorld(data)
    sys.argv = argv  # textworld's translator overwrites it; ours does not
    ours = Engine()
    ours.load(data)

    def mine(r):
        return r.feedback, r.admissible_commands, sorted(r.facts), r.won

    a, b = plain.reset(), mine(ours.reset())
    assert a == b
    rng = __import__("random").Random(0)
    # detours first (go somewhere, open, examine, inventory, look), then the walkthrough
    commands = ["inventory", "look"] + [None] * 8 + list(data["walkthrough"])
    for command in commands:
        admissible = a[1]
        if command is None:
            command = rng.choice(admissible)
        if command not in admissible:
            continue
        a, b = plain.step(command), mine(ours.step(command))
        assert a == b, command
    ours.reset()
    assert mine(ours.reset()) == plain.reset()


def test_a_shipped_evaluation_game_loads_without_parsing_or_translating(monkeypatch, tmp_path):
    """The env's grammar parse (~0.25 s of CPU, one for every game) and each evaluation game's
    PDDL translation (seconds) ship with the package, so a first reset on a new machine, even the
    first of a process, does neither."""
    from textworld.envs.pddl import logic as pddl_logic

    from vlm_envs.alfworld_wrap import engine as eng
    from vlm_envs.alfworld_wrap.env import ALFWorldEnv

    def refuse(*args, **kwargs):
        raise AssertionError("parsed or translated a shipped evaluation game")

    monkeypatch.setenv("VLM_ENVS_CACHE", str(tmp_path))  # an empty disk cache
    monkeypatch.setattr(pddl_logic.GameLogic, "__init__", refuse)
    monkeypatch.setattr(eng, "_translate", refuse)
    eng._LOGIC_CACHE.clear()
    eng._SAS_CACHE.clear()
    played = 0
    for split in ("eval_in_distribution", "eval_out_of_distribution"):
        env = ALFWorldEnv(split=split)
        for i in range(len(env.games)):
            _, info = env.reset(seed=i, options={"game_index": i})
            assert info["admissible_commands"], env.games[i].game_file
        played += len(env.games)
    assert played == 274 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("game", SAMPLE, ids=lambda g: g.name)
def test_goal_conditions_reach_one_exactly_when_won(game):
    data = read_game_file(game.game_file)
    engine = Engine()
    engine.load(data)
    result = engine.reset()
    assert goal_conditions(game.task_type, game.pddl_params, result.facts)[0] < goal_conditions(
        game.task_type, game.pddl_params, result.facts)[1]
    progress = []
    for command in data["walkthrough"]:
        result = engine.step(command)
        s, t = goal_conditions(game.task_type, game.pddl_params, result.facts)
        progress.append(s)
        assert (s == t) == result.won
    assert result.won and progress == sorted(progress)


def test_expert_replans_after_a_detour():
    game = next(g for g in SHIPPED if g.task_type == "pick_two_obj_and_place")
    engine = Engine()
    engine.load(read_game_file(game.game_file))
    result = engine.reset()
    # wander: open and visit things, pick up something unrelated when possible
    for _ in range(6):
        options = [c for c in result.admissible_commands if c.startswith(("go to", "open", "take"))]
        result = engine.step(options[-1])
    plan = expert_plan(game.task_type, game.pddl_params, FactIndex(result.facts))
    for command in plan:
        assert command in result.admissible_commands
        result = engine.step(command)
    assert result.won


def test_generator_cli(tmp_path):
    out = tmp_path / "games"
    proc = subprocess.run(
        [sys.executable, "-m", "vlm_envs.alfworld_wrap.generate", "--out", str(out), "--games-per-type", "1",
         "--splits", "train", "--task-types", "pick_and_place_simple", "--quiet",
         "--write-translations", str(tmp_path / "translations")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 1 games" in proc.stdout
    [game] = out.glob("train/*/*/game.tw-pddl")
    # what it wrote is what the env looks up: the parse of the env's grammar and the translation
    from vlm_envs.alfworld_wrap import engine as eng
    from vlm_envs.alfworld_wrap.env import game_data

    data = game_data(game)
    wanted = {eng._entry_name(*eng._logic_key(data["pddl_domain"], data["grammar"])),
              eng._entry_name(*eng._translation_key(data["pddl_domain"], data["pddl_problem"], False))}
    assert {p.name for p in (tmp_path / "translations").iterdir()} == wanted
