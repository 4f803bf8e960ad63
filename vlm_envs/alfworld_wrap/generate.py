"""Generate ALFRED-style ALFWorld games offline: ``game.tw-pddl`` + ``traj_data.json`` per game.

::

    python -m vlm_envs.alfworld_wrap.generate --out games --seed 0 --games-per-type 2
    python -m vlm_envs.alfworld_wrap.generate --preset official --splits train

Each game is built and checked by :mod:`vlm_envs.alfworld_wrap.scenes`; the official preset's
sizes and sha256 checks are :mod:`vlm_envs.alfworld_wrap.official`'s. This module writes a folder
of games, continuing an interrupted run, and is the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from vlm_envs._moved import moved_names
from vlm_envs.alfworld_wrap import SPLITS, TASK_TYPES, official_games_dir, shipped_games_dir
from vlm_envs.alfworld_wrap.games import COMPLETE_MARKER, find_games, problem_digest
from vlm_envs.alfworld_wrap.official import OFFICIAL_COUNTS, OFFICIAL_ORDER, check_official, discard_stale
from vlm_envs.alfworld_wrap.scenes import game_folder_name, generate_game


def write_game(folder: Path, game: dict, traj: dict) -> Path:
    """Write ``traj_data.json``, then ``game.tw-pddl`` (sorted keys: identical bytes for identical games).

    The game file is written last and renamed into place, so a folder holding it is complete even
    if the run was killed: an interrupted run can be continued (:func:`generate` keeps such games).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "traj_data.json").write_text(json.dumps(traj, indent=1, sort_keys=True) + "\n")
    partial = folder / "game.tw-pddl.partial"
    partial.write_text(json.dumps(game, indent=1, sort_keys=True) + "\n")
    partial.replace(folder / "game.tw-pddl")
    return folder / "game.tw-pddl"


def written_games(out: Path) -> dict[tuple[str, str, str], Path]:
    """The games already under ``out``, by (split, task type, trial folder): what a killed run left."""
    return {(path.parts[-4], path.parts[-3].split("-")[0], path.parts[-2]): path
            for path in out.glob("*/*/*/game.tw-pddl")} if out.is_dir() else {}


def uniform_counts(games_per_type: int, splits: Sequence[str] = SPLITS,
                   task_types: Sequence[str] = tuple(TASK_TYPES.values())) -> dict[str, dict[str, int]]:
    return {split: {t: games_per_type for t in task_types} for split in splits}


def generate(out: Path, seed: int = 0, games_per_type: int = 2, splits: Sequence[str] = SPLITS,
             task_types: Sequence[str] = tuple(TASK_TYPES.values()), progress: bool = True,
             counts: dict[str, dict[str, int]] | None = None, avoid: Sequence[str | Path] = ()) -> list[Path]:
    """Generate ``games_per_type`` games (or ``counts[split][task_type]``) for every split and task type under ``out/<split>/``.

    Games are unique across splits (by problem content), and differ from the games under the
    folders in ``avoid``; a duplicate is replaced by the next index. Splits are written in the
    order of ``counts`` (default: ``splits``). Games already written under ``out`` by an
    interrupted run with the same seed are kept, not generated again, so rerunning the same
    command continues it; the result is the same files.
    """
    counts = counts if counts is not None else uniform_counts(games_per_type, splits, task_types)
    previous = written_games(out)
    written: list[Path] = []
    seen: set[str] = set()
    for folder in avoid:
        for game in find_games(folder, tuple(TASK_TYPES.values())):
            seen.add(problem_digest(json.loads(Path(game.game_file).read_text())))
    total = sum(sum(per_type.values()) for per_type in counts.values())
    start = time.perf_counter()
    for split, per_type in counts.items():
        for task_type, wanted in per_type.items():
            index, made = 0, 0
            while made < wanted:
                trial = f"trial_s{seed}_{index:04d}"
                kept = previous.get((split, task_type, trial))
                if kept is not None:
                    game = json.loads(kept.read_text())
                else:
                    game, traj = generate_game(split, task_type, seed, index)
                index += 1
                digest = problem_digest(game)
                if digest in seen:
                    continue
                seen.add(digest)
                written.append(kept or write_game(out / split / game_folder_name(traj) / trial, game, traj))
                made += 1
                if progress:
                    sys.stderr.write(f"\r[{len(written)}/{total}] {split:<26} {task_type:<32} "
                                     f"{time.perf_counter() - start:6.1f}s")
                    sys.stderr.flush()
    if progress:
        sys.stderr.write("\n")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm_envs.alfworld_wrap.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output folder (games go to OUT/<split>/...); default with --preset "
                                                  "official: the cache folder that split='train' reads")
    parser.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    parser.add_argument("--games-per-type", type=int, default=2, help="games per (split, task type) (default 2)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--task-types", nargs="+", default=list(TASK_TYPES.values()), choices=list(TASK_TYPES.values()))
    parser.add_argument("--preset", choices=("official",),
                        help="official: ALFWorld's split sizes (3,553 train, 140 in-distribution, 134 out-of-distribution "
                             "games, with its task-type mix), evaluation splits first; --splits picks some of them. "
                             "Games are checked against the sha256s shipped with the package (train: a list; evaluation: "
                             "the manifests); the train split is marked complete (split='train' then plays it) only when "
                             "its folder matches the list exactly. Rerunning an interrupted command continues it")
    parser.add_argument("--avoid", nargs="*", type=Path, default=[], help="folders whose games must not be repeated")
    parser.add_argument("--write-translations", type=Path, metavar="FOLDER",
                        help="also store each game's grammar parse and PDDL translation in FOLDER "
                             "(vlm_envs/alfworld_wrap/translations for the shipped games: their first reset then "
                             "skips the parser and the translator)")
    parser.add_argument("--record-digests", type=Path, metavar="FILE",
                        help="with --preset official: write the train games' sha256 list to FILE instead of checking "
                             "them against the shipped list (how the shipped list was made)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.games_per_type < 1:
        parser.error("--games-per-type must be positive")
    counts = None
    if args.preset == "official":
        counts = {s: {t: n for t, n in OFFICIAL_COUNTS[s].items() if t in args.task_types}
                  for s in OFFICIAL_ORDER if s in args.splits}
        if args.out is None:
            args.out = official_games_dir()
        if "train" in args.splits and not args.avoid:  # train never repeats a shipped evaluation game
            args.avoid = [shipped_games_dir() / s for s in ("eval_in_distribution", "eval_out_of_distribution")]
    elif args.out is None:
        parser.error("--out is required without --preset official")
    if args.record_digests is not None and counts is None:
        parser.error("--record-digests needs --preset official")
    full_train = counts is not None and counts.get("train") == OFFICIAL_COUNTS["train"]
    if full_train:  # set again only once every train game checks out
        (args.out / "train" / COMPLETE_MARKER).unlink(missing_ok=True)
    if counts is not None and args.record_digests is None and args.seed == 0:
        stale = discard_stale(args.out, list(counts))
        if stale:
            print(f"regenerating {stale} games that differ from the shipped sha256s (written by an older generator)")
    paths = generate(args.out, args.seed, args.games_per_type, args.splits, args.task_types, progress=not args.quiet,
                     counts=counts, avoid=args.avoid)
    if args.write_translations is not None:
        from vlm_envs.alfworld_wrap.engine import write_translation
        from vlm_envs.alfworld_wrap.env import game_data

        for path in paths:
            write_translation(game_data(path), args.write_translations)
    print(f"wrote {len(paths)} games under {args.out}")
    if counts is None:
        return 0
    problems = check_official(args.out, counts, paths, record=args.record_digests)
    if problems:
        hint = " (the shipped lists are of --seed 0's games)" if args.seed != 0 else ""
        print(f"{len(problems)} games differ from the shipped sha256 lists{hint}, e.g.:\n  " + "\n  ".join(problems[:10]),
              file=sys.stderr)
        return 1
    if full_train:
        train_root = args.out / "train"
        (train_root / COMPLETE_MARKER).write_text(f"{len(list(train_root.rglob('game.tw-pddl')))}\n")
    return 0


# Moved out by the split into scene building and the official-split checks: served from here until the
# next version, with a DeprecationWarning.
__getattr__ = moved_names(__name__, {
    **dict.fromkeys(("GameRejected", "layouts_dir", "room_type", "split_scenes", "mangle", "synthetic_receptacle_id",
                     "Receptacle", "Obj", "Scene", "load_scene", "TaskParams", "choose_task", "place_objects",
                     "pddl_problem", "task_description", "build_game", "check_game", "GENERATOR_VERSION",
                     "MAX_ATTEMPTS", "MAX_WALKTHROUGH"), "vlm_envs.alfworld_wrap.scenes"),
    **dict.fromkeys(("write_digests", "read_digests", "digest_mismatches", "shipped_reference", "written_digests",
                     "OFFICIAL_TRAIN_DIGESTS"), "vlm_envs.alfworld_wrap.official")})

if __name__ == "__main__":
    sys.exit(main())
