"""Frozen, hash-checked lists of evaluation episodes.

A manifest is a JSON file that names every episode of an evaluation::

    {"name": "cards-v0", "description": "...",
     "episodes": [{"env_id": "gym_cards/NumberLine-v0", "kwargs": {"max_position": 5}, "seed": 1000000},
                  {"env_id": "alfworld/ALFWorld-v0", "kwargs": {"split": "eval_in_distribution"}, "seed": 0,
                   "game": {"path": "eval_in_distribution/<task folder>/<trial>/game.tw-pddl",
                            "sha256": "...", "traj_data_sha256": "..."}},
                  ...]}

An episode is ``gym.make(env_id, **kwargs)`` then ``reset(seed=seed)`` (and, for ALFWorld, the
named game, whose ``game.tw-pddl`` must match ``sha256`` and whose ``traj_data.json``, the task
that decides the task sentence, the reward and the expert, must match ``traj_data_sha256``). The
manifest's own identity is the sha256 of its
file: every result card carries it, so two numbers are comparable exactly when their manifest
hashes agree.

The shipped manifests live in ``vlm_envs/evaluation/data/`` and are written by
``python -m vlm_envs.evaluation --write`` (deterministic; a test checks that the shipped
files are what the builders produce).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from vlm_envs.core.registration import CARD_ENVS
from vlm_envs.evaluation.seeds import EVAL_SEED_BASE

CARD_EPISODES = 500
NUMBERLINE_EPISODES_PER_START = 17  # 30 start states x 17 = 510 >= CARD_EPISODES
SMOKE_EPISODES_PER_ENV = 3
# A game's entry names the sha256 of each of the game's files (``GAME_FILES``), in that order.
GAME_DIGEST_KEYS = ("sha256", "traj_data_sha256")


def game_entry(root: str | Path, game_file: str | Path) -> dict[str, str]:
    """A manifest's record of a game: its path under ``root`` and the sha256 of each of its files."""
    from vlm_envs.alfworld_wrap.games import game_digests

    return {"path": Path(game_file).relative_to(root).as_posix(), **dict(zip(GAME_DIGEST_KEYS, game_digests(game_file)))}


def entry_digests(game: dict[str, str]) -> tuple[str, ...]:
    """The sha256s a manifest's game entry lists, in the order of ``GAME_FILES``."""
    return tuple(game[key] for key in GAME_DIGEST_KEYS)


@dataclass(frozen=True)
class Episode:
    """One evaluation episode: ``gym.make(env_id, **kwargs).reset(seed=seed)``, optionally a named game."""

    env_id: str
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    seed: int = 0
    game: dict[str, str] | None = field(default=None, hash=False)  # game_entry(): path and sha256s

    def game_file(self, games_root: str | Path) -> Path:
        """Where this episode's named game is, under ``games_root``."""
        return Path(games_root) / self.game["path"]

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"env_id": self.env_id, "kwargs": self.kwargs, "seed": self.seed}
        if self.game is not None:
            record["game"] = self.game
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Episode:
        unknown = set(record) - {"env_id", "kwargs", "seed", "game"}
        game = record.get("game")
        bad_game = game is not None and (not isinstance(game, dict) or set(game) != {"path", *GAME_DIGEST_KEYS})
        if unknown or bad_game or "env_id" not in record or not isinstance(record.get("seed", 0), int):
            raise ValueError(f"not a manifest episode (a game needs path, {', '.join(GAME_DIGEST_KEYS)}): {record!r}")
        return cls(record["env_id"], dict(record.get("kwargs") or {}), int(record.get("seed", 0)), record.get("game"))


@dataclass(frozen=True)
class Manifest:
    """A named, hashed list of episodes."""

    name: str
    episodes: tuple[Episode, ...]
    description: str = ""
    sha256: str = ""

    def to_json(self) -> str:
        """The file's bytes: one episode per line, so diffs of a manifest stay readable."""
        lines = ",\n".join("  " + json.dumps(e.to_dict(), sort_keys=True) for e in self.episodes)
        head = json.dumps({"name": self.name, "description": self.description})[:-1]
        return f'{head}, "episodes": [\n{lines}\n]}}\n'

    @classmethod
    def from_json(cls, text: str, source: str = "<manifest>") -> Manifest:
        try:
            data = json.loads(text)
            episodes = tuple(Episode.from_dict(e) for e in data["episodes"])
            name = str(data["name"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{source} is not a valid manifest: {err}") from None
        if not episodes:
            raise ValueError(f"{source} lists no episode")
        digest = hashlib.sha256(text.encode()).hexdigest()
        return cls(name, episodes, str(data.get("description", "")), digest)

    def with_hash(self) -> Manifest:
        """This manifest with ``sha256`` set to the hash of :meth:`to_json` (for manifests built in code)."""
        return Manifest(self.name, self.episodes, self.description, hashlib.sha256(self.to_json().encode()).hexdigest())


def manifests_dir() -> Path:
    return Path(str(resources.files("vlm_envs.evaluation") / "data"))


def manifest_names() -> list[str]:
    """The shipped manifests, e.g. ``["alfworld-in-distribution-v0", "cards-v0", ...]``."""
    return sorted(p.stem for p in manifests_dir().glob("*.json"))


def load_manifest(name_or_path: str | Path) -> Manifest:
    """A shipped manifest by name (``"cards-v0"``) or any manifest file by path."""
    path = Path(name_or_path)
    if not path.suffix == ".json" or not path.exists():
        path = manifests_dir() / f"{name_or_path}.json"
        if not path.exists():
            raise ValueError(f"unknown manifest {str(name_or_path)!r}; shipped: {', '.join(manifest_names())} (or a path to a .json file)")
    return Manifest.from_json(path.read_text(), str(path))


def seeds_manifest(env_ids: list[str], episodes: int, seed: int, kwargs: dict[str, Any] | None = None) -> Manifest:
    """An unshipped manifest: episode ``i`` of each env is ``gym.make(env_id, **kwargs)`` reset with ``seed + i``
    (the quick ``--env`` form, and a trainer's held-out evaluation)."""
    listed = tuple(Episode(e, dict(kwargs or {}), seed + i) for e in env_ids for i in range(episodes))
    return Manifest(f"seeds:{seed}+{episodes}", listed, "ad hoc: consecutive seeds").with_hash()


# -- builders of the shipped manifests -----------------------------------------------------------

def _card_kwargs(env_id: str) -> dict[str, Any]:
    return dict(CARD_ENVS[env_id][1])


def numberline_start_states(max_position: int = 5) -> list[tuple[int, int]]:
    """Every (current, target) pair NumberLine can start from."""
    return [(c, t) for c in range(max_position + 1) for t in range(max_position + 1) if c != t]


def _numberline_episodes(per_start: int, first_seed: int) -> list[Episode]:
    """``per_start`` seeds for each start state: the first seeds from ``first_seed`` that deal it."""
    import gymnasium as gym

    env_id = "gym_cards/NumberLine-v0"
    kwargs = _card_kwargs(env_id)
    env = gym.make(env_id, **kwargs).unwrapped
    wanted = {state: [] for state in numberline_start_states(kwargs["max_position"])}
    seed = first_seed
    while any(len(seeds) < per_start for seeds in wanted.values()):
        env.reset(seed=seed)
        seeds = wanted[(env.current, env.target)]
        if len(seeds) < per_start:
            seeds.append(seed)
        seed += 1
    return sorted((Episode(env_id, kwargs, s) for seeds in wanted.values() for s in seeds), key=lambda e: e.seed)


def build_cards(episodes: int = CARD_EPISODES, per_start: int = NUMBERLINE_EPISODES_PER_START) -> Manifest:
    listed = _numberline_episodes(per_start, EVAL_SEED_BASE)
    for env_id in CARD_ENVS:
        if env_id != "gym_cards/NumberLine-v0":
            listed += [Episode(env_id, _card_kwargs(env_id), EVAL_SEED_BASE + i) for i in range(episodes)]
    return Manifest("cards-v0", tuple(listed), (
        f"The four card games at their registered settings: NumberLine {per_start} seeds for each of its 30 start "
        f"states, {episodes} seeded episodes of EZPoints, Points24 and Blackjack.")).with_hash()


def build_smoke() -> Manifest:
    listed = [Episode(env_id, _card_kwargs(env_id), EVAL_SEED_BASE + i)
              for env_id in CARD_ENVS for i in range(SMOKE_EPISODES_PER_ENV)]
    return Manifest("smoke-v0", tuple(listed), "A few episodes of each card game, for checking a setup in seconds.").with_hash()


def build_alfworld(split: str, name: str) -> Manifest:
    """Every shipped game of ``split``, in sorted order, each reset with seed = its position."""
    from vlm_envs.alfworld_wrap import shipped_games_dir
    from vlm_envs.alfworld_wrap.games import find_games, split_dir

    root = shipped_games_dir()
    games = find_games(split_dir(root, split), tuple(_task_types()))
    listed = tuple(Episode("alfworld/ALFWorld-v0", {"split": split}, i, game_entry(root, g.game_file))
                   for i, g in enumerate(games))
    where = "in-distribution (ALFRED training floor plans)" if split == "eval_in_distribution" else \
        "out-of-distribution (ALFRED test floor plans, never seen in training)"
    return Manifest(name, listed, f"Every shipped {where} ALFWorld evaluation game, once.").with_hash()


def _task_types() -> list[str]:
    from vlm_envs.alfworld_wrap import TASK_TYPES

    return list(TASK_TYPES.values())


BUILDERS: dict[str, Callable[[], Manifest]] = {
    "cards-v0": build_cards,
    "smoke-v0": build_smoke,
    "alfworld-in-distribution-v0": lambda: build_alfworld("eval_in_distribution", "alfworld-in-distribution-v0"),
    "alfworld-out-of-distribution-v0": lambda: build_alfworld("eval_out_of_distribution", "alfworld-out-of-distribution-v0"),
}
