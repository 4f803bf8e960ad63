"""Unreadable ALFWorld games are named, and can be skipped with a warning that the result card counts."""

from __future__ import annotations

import shutil
from pathlib import Path

import gymnasium as gym
import pytest

import vlm_envs  # noqa: F401
from vlm_envs.alfworld_wrap.games import InvalidGame
from vlm_envs.evaluation import Episode, Manifest, evaluate
from vlm_envs.evaluation.manifests import game_entry

SPLIT = "eval_out_of_distribution"


@pytest.fixture
def game_dir(tmp_path) -> tuple[Path, Path]:
    """Three shipped games copied into a folder, the second with a corrupt traj_data.json."""
    from vlm_envs.alfworld_wrap.env import ALFWorldEnv

    games = ALFWorldEnv(split=SPLIT).games[:3]
    for game in games:
        source = Path(game.game_file).parent
        shutil.copytree(source, tmp_path / SPLIT / source.parent.name / source.name)
    corrupt = tmp_path / SPLIT / Path(games[1].game_file).parent.parent.name / Path(games[1].game_file).parent.name / "traj_data.json"
    corrupt.write_text('{"task_type": "pick_and_place_simple", ')
    return tmp_path, corrupt


def test_a_corrupt_game_file_is_named(game_dir):
    root, corrupt = game_dir
    with pytest.raises(InvalidGame, match=f"{corrupt}: cannot be read as JSON.*skip_invalid_games=True"):
        gym.make("alfworld/ALFWorld-v0", split=SPLIT, game_dir=str(root))


def test_invalid_games_can_be_skipped_with_a_warning_and_are_counted_on_the_card(game_dir):
    root, corrupt = game_dir
    with pytest.warns(UserWarning, match=str(corrupt)):
        env = gym.make("alfworld/ALFWorld-v0", split=SPLIT, game_dir=str(root), skip_invalid_games=True)
    assert len(env.unwrapped.games) == 2 and len(env.unwrapped.skipped_games) == 1
    assert str(corrupt) in env.unwrapped.skipped_games[0]

    # Episodes that name no game play the env's folder: the unreadable game is skipped and counted.
    seeded = Manifest("folder", tuple(Episode("alfworld/ALFWorld-v0", {"split": SPLIT, "game_dir": str(root)}, s)
                                      for s in range(3))).with_hash()
    with pytest.warns(UserWarning, match=str(corrupt)):
        card = evaluate(seeded, "oracle", skip_invalid_games=True)
    assert card["complete"] and [r["success"] for r in card["episodes"]] == [True, True, True]
    assert len(card["skipped_games"]) == 1 and str(corrupt) in card["skipped_games"][0]
    assert {r["task_type"] for r in card["episodes"]} == set(card["summary"]["per_task_type"])

    # A manifest's games are the ones it names: an unreadable game beside them plays no part.
    named = Manifest("two-games", tuple(Episode("alfworld/ALFWorld-v0", {"split": SPLIT}, i, game_entry(root, g.game_file))
                                        for i, g in enumerate(env.unwrapped.games))).with_hash()
    card = evaluate(named, "oracle", games_root=root)
    assert card["complete"] and [r["success"] for r in card["episodes"]] == [True, True] and card["skipped_games"] == []


@pytest.mark.parametrize("changed", ["game.tw-pddl", "traj_data.json"])
def test_a_manifest_game_whose_bytes_changed_is_refused_or_skipped(tmp_path, changed):
    """Either file of a game changes the episode (traj_data.json holds the task and the expert's plan)."""
    from vlm_envs.evaluation import load_manifest

    episode = load_manifest("alfworld-out-of-distribution-v0").episodes[0]
    copy = tmp_path / Path(episode.game["path"]).parent
    shutil.copytree(vlm_envs.alfworld_wrap.shipped_games_dir() / Path(episode.game["path"]).parent, copy)
    manifest = Manifest("bad-hash", (episode,)).with_hash()
    assert evaluate(manifest, "oracle", games_root=tmp_path)["episodes"][0]["success"]  # the unchanged copy plays
    (copy / changed).write_bytes((copy / changed).read_bytes().replace(b"1", b"2", 1))
    with pytest.raises(ValueError, match=f"{copy / changed}: sha256 differs from the manifest's"):
        evaluate(manifest, "oracle", games_root=tmp_path)
    with pytest.warns(UserWarning, match="skipping manifest episode 0"):
        card = evaluate(manifest, "oracle", games_root=tmp_path, skip_invalid_games=True)
    assert card["complete"] and card["episodes"] == [] and card["skipped"][0]["index"] == 0


def test_alfworld_manifest_episodes_give_the_same_records_sync_and_async():
    from vlm_envs.evaluation import load_manifest

    full = load_manifest("alfworld-out-of-distribution-v0")
    manifest = Manifest("ood-sample", full.episodes[:3]).with_hash()
    sync = evaluate(manifest, "random", num_envs=1)
    asynchronous = evaluate(manifest, "random", num_envs=2, vectorization="async")
    assert sync["episodes"] == asynchronous["episodes"]
    assert [r["game"] for r in sync["episodes"]] == [e.game["path"] for e in manifest.episodes]
    oracle = evaluate(manifest, "oracle", num_envs=2)
    assert all(r["success"] for r in oracle["episodes"])


def test_split_train_plays_the_full_train_set_only_once_it_is_marked_complete(tmp_path, monkeypatch):
    from vlm_envs.alfworld_wrap import TASK_TYPES, games, shipped_games_dir

    monkeypatch.setenv("VLM_ENVS_CACHE", str(tmp_path))
    train = tmp_path / "alfworld-games-official" / "train"
    for game in games.resolve_games("train", tuple(TASK_TYPES.values()))[:2]:  # the shipped ones, here
        source = Path(game.game_file).parent
        shutil.copytree(source, train / source.parent.name / source.name)

    monkeypatch.setattr(games, "_told_train_source", False)
    with pytest.warns(UserWarning, match="the small shipped train set"):
        assert games.default_games_root("train") == shipped_games_dir()  # generated, but not marked complete

    (train / games.COMPLETE_MARKER).write_text("2\n")
    monkeypatch.setattr(games, "_told_train_source", False)
    with pytest.warns(UserWarning, match=f"the full official train set at {train}"):
        played = games.resolve_games("train", tuple(TASK_TYPES.values()))
    assert sorted(Path(g.game_file).parent.relative_to(train).as_posix() for g in played) == sorted(
        p.parent.relative_to(train).as_posix() for p in train.rglob("game.tw-pddl"))
    assert games.default_games_root("eval_in_distribution") == shipped_games_dir()  # evaluation: always shipped
