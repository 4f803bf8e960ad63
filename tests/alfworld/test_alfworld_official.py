"""ALFWorld at the official split sizes: the generator reproduces the shipped evaluation games and the
reference list of train games byte for byte, and refuses (naming the file) a train game that differs.

Generating all 3,553 train games takes about an hour of CPU, so these tests regenerate the first game
of every task type of every split; each game depends only on (seed, split, task type, index), so
the first games of a full run are these.
"""

from __future__ import annotations

import pytest

from vlm_envs.alfworld_wrap import TASK_TYPES, shipped_games_dir
from vlm_envs.alfworld_wrap import generate as gen
from vlm_envs.alfworld_wrap import official, scenes
from vlm_envs.alfworld_wrap.games import COMPLETE_MARKER

EVAL_SPLITS = ("eval_in_distribution", "eval_out_of_distribution")
FIRST_OF_EACH_TYPE = {t: 1 for t in TASK_TYPES.values()}
SHIPPED_EVAL = [shipped_games_dir() / s for s in EVAL_SPLITS]


def test_reference_list_covers_the_official_train_split():
    reference = official.read_digests()
    assert len(reference) == sum(official.OFFICIAL_COUNTS["train"].values()) == 3553
    per_type = {t: sum(folder.startswith(t + "-") for folder in reference) for t in TASK_TYPES.values()}
    assert per_type == official.OFFICIAL_COUNTS["train"]


def test_first_evaluation_games_regenerate_as_shipped(tmp_path):
    paths = gen.generate(tmp_path, counts={s: FIRST_OF_EACH_TYPE for s in EVAL_SPLITS}, progress=False)
    assert len(paths) == 12
    for split in EVAL_SPLITS:
        written = official.written_digests([p for p in paths if tmp_path / split in p.parents], tmp_path / split)
        shipped = official.written_digests([shipped_games_dir() / split / folder / "game.tw-pddl" for folder in written],
                                   shipped_games_dir() / split)
        assert written == shipped


def test_first_train_games_match_the_reference_list(tmp_path):
    paths = gen.generate(tmp_path, counts={"train": FIRST_OF_EACH_TYPE}, avoid=SHIPPED_EVAL, progress=False)
    digests = official.written_digests(paths, tmp_path / "train")
    assert len(digests) == 6
    assert official.digest_mismatches(digests, official.read_digests()) == []


def test_a_train_game_with_a_synthetic_sink_basin_matches_the_reference_list(tmp_path):
    # Its room's sink basin is placed at a synthetic pose: the case whose receptacle name was once
    # generated wrong ("sinkbasinbasin"), which the first game of each type does not exercise.
    folder = "pick_clean_then_place_in_recep-SoapBar-None-CounterTop-418/trial_s0_0008"
    game, traj = scenes.generate_game("train", "pick_clean_then_place_in_recep", 0, 8)
    assert scenes.game_folder_name(traj) == folder.split("/")[0]
    path = gen.write_game(tmp_path / folder, game, traj)
    assert "Sink_bar_" in path.read_text() and "SinkBasin_bar_" not in path.read_text()
    assert official.written_digests([path], tmp_path) == {folder: official.read_digests()[folder]}


def test_a_train_game_that_differs_is_named():
    reference = official.read_digests()
    folder, (game, traj) = next(iter(reference.items()))
    assert official.digest_mismatches({folder: (game, "0" * 64)}, reference) == [
        f"{folder}/traj_data.json: sha256 differs from the reference"]
    assert official.digest_mismatches({folder: ("0" * 64, traj)}, reference) == [
        f"{folder}/game.tw-pddl: sha256 differs from the reference"]
    assert official.digest_mismatches({"pick_x/trial_s0_9999": (game, traj)}, reference) == [
        "pick_x/trial_s0_9999: not in the reference list"]


def test_official_preset_marks_the_train_split_complete_only_when_it_matches(tmp_path, monkeypatch, capsys):
    # A one-game "official" train split, so the command's own checking and marking run in seconds.
    simple = "pick_and_place_simple"
    read, reference = official.read_digests, official.read_digests()
    [first] = [f for f in reference if f.startswith(simple + "-") and f.endswith("/trial_s0_0000")]
    monkeypatch.setitem(official.OFFICIAL_COUNTS, "train", {simple: 1})
    monkeypatch.setattr(official, "read_digests", lambda: {first: reference[first]})
    args = ["--preset", "official", "--splits", "train", "--task-types", simple, "--quiet"]
    assert gen.main([*args, "--out", str(tmp_path / "good")]) == 0
    assert (tmp_path / "good" / "train" / COMPLETE_MARKER).read_text() == "1\n"
    assert "all 1 train games match the shipped sha256s" in capsys.readouterr().out

    # A kept game whose bytes differ (an older generator wrote it) is regenerated, not kept.
    kept = tmp_path / "good" / "train" / first / "game.tw-pddl"
    good_bytes = kept.read_bytes()
    kept.write_bytes(good_bytes + b" ")
    assert gen.main([*args, "--out", str(tmp_path / "good")]) == 0
    assert "regenerating 1 games that differ" in capsys.readouterr().out
    assert kept.read_bytes() == good_bytes

    # A game another run left in the folder would be played unchecked: the split must equal the list.
    stray = tmp_path / "good" / "train" / f"{simple}-Stray-None-Box-1" / "trial_s1_0000"
    stray.mkdir(parents=True)
    for name in ("game.tw-pddl", "traj_data.json"):
        (stray / name).write_text("{}")
    assert gen.main([*args, "--out", str(tmp_path / "good")]) == 1
    assert not (tmp_path / "good" / "train" / COMPLETE_MARKER).exists()  # the old mark is gone too
    assert f"{simple}-Stray-None-Box-1/trial_s1_0000: not in the reference list" in capsys.readouterr().err

    monkeypatch.setattr(official, "read_digests", lambda: {first: ("0" * 64, reference[first][1])})
    assert gen.main([*args, "--out", str(tmp_path / "bad")]) == 1
    assert not (tmp_path / "bad" / "train" / COMPLETE_MARKER).exists()
    assert f"{first}/game.tw-pddl: sha256 differs from the reference" in capsys.readouterr().err

    monkeypatch.setattr(official, "read_digests", lambda: {first: reference[first], "x/trial_s0_0001": reference[first]})
    assert gen.main([*args, "--out", str(tmp_path / "good2")]) == 1
    assert "train/x/trial_s0_0001: listed but not written" in capsys.readouterr().err

    recorded = tmp_path / "list.sha256.gz"
    assert gen.main([*args, "--out", str(tmp_path / "record"), "--record-digests", str(recorded)]) == 0
    assert read(recorded) == {first: reference[first]}
    with pytest.raises(SystemExit):
        gen.main(["--out", str(tmp_path / "x"), "--record-digests", str(recorded)])


def test_evaluation_games_are_checked_against_the_manifests(tmp_path):
    counts = {"eval_out_of_distribution": {"pick_and_place_simple": 1}}
    [path] = gen.generate(tmp_path, counts=counts, progress=False)
    assert official.check_official(tmp_path, counts, [path]) == []
    traj = path.with_name("traj_data.json")
    traj.write_text(traj.read_text() + " ")
    [problem] = official.check_official(tmp_path, counts, [path])
    assert problem == f"{traj.relative_to(tmp_path).as_posix()}: sha256 differs from the manifest's"
    path.write_text(path.read_text() + " ")
    [problem] = official.check_official(tmp_path, counts, [path])
    assert problem == f"{path.relative_to(tmp_path).as_posix()}: sha256 differs from the manifest's"


def test_an_interrupted_run_continues_where_it_stopped(tmp_path, monkeypatch):
    simple = {"train": {"pick_and_place_simple": 2}}
    full = gen.generate(tmp_path / "full", seed=5, counts=simple, progress=False)
    gen.generate(tmp_path / "resumed", seed=5, counts={"train": {"pick_and_place_simple": 1}}, progress=False)
    indices = []
    real = gen.generate_game
    monkeypatch.setattr(gen, "generate_game", lambda split, task, seed, index: indices.append(index) or
                        real(split, task, seed, index))
    resumed = gen.generate(tmp_path / "resumed", seed=5, counts=simple, progress=False)
    assert indices[0] == 1  # the game the first run wrote was kept, not generated again
    assert official.written_digests(resumed, tmp_path / "resumed") == official.written_digests(full, tmp_path / "full")
