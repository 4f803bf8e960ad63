"""Play a manifest's episodes with a policy on ``num_envs`` env slots, in-process or in subprocesses.

Why results do not depend on ``num_envs``, vectorization or completion order: every episode is
played from its own ``reset(seed=...)`` (the env, ``TextActions``' fallback draws and the game
choice are all seeded by it), each policy reply depends only on its own request
(:mod:`vlm_envs.evaluation.policies`), and records are stored by manifest index. Slots only
decide *when* an episode is played, never *what* happens in it.

Envs are not gymnasium vector envs here: a vector env steps every sub-env together, while an
evaluation must start a specific episode (env id, kwargs, seed, game) in whichever slot frees up
and leave finished slots idle. ``sync`` slots live in this process; ``async`` slots are one
worker process each, answering as soon as their env is done, in whatever order that happens.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import traceback
import warnings
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Iterable, Literal, get_args

import gymnasium as gym
import numpy as np

from vlm_envs.alfworld_wrap.games import GAME_FILES, game_digests
from vlm_envs.evaluation.manifests import Episode, Manifest, entry_digests
from vlm_envs.evaluation.policies import Policy, Request, action_text, normalize_replies
from vlm_envs.text.parsing import ParseMode
from vlm_envs.text.prompts import Wording, build_prompt, text_only_prompt
from vlm_envs.running.wrappers import OnParseFailure, TextActions

Vectorization = Literal["sync", "async"]
VECTORIZATIONS: tuple[Vectorization, ...] = get_args(Vectorization)
# Keys of the final info left off the card: long and already summarised elsewhere.
_BULKY_INFO_KEYS = ("admissible_commands", "feedback")


@dataclass(frozen=True)
class Settings:
    """How episodes are played (recorded on the result card: they change results)."""

    text_mode: str = "prompt"  # "full": the state in words, for text-only models
    cot: bool = True
    wording: Wording = "reference"
    parse_mode: ParseMode = "lenient"
    on_parse_failure: OnParseFailure = "random"
    format_penalty: float = -1.0  # the reward of an unparsable answer with on_parse_failure="penalty"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class SetupError(ValueError):
    """An evaluation that cannot start as asked (raised before any episode is played)."""


def env_key(episode: Episode) -> str:
    """Episodes with equal keys are played on the same env."""
    return json.dumps([episode.env_id, episode.kwargs], sort_keys=True)


class EpisodePlayer:
    """One slot: makes (and keeps) the envs its episodes need, plays one episode at a time."""

    def __init__(self, settings: Settings, needs_oracle: bool, games_root: str | None, skip_invalid_games: bool = False,
                 game_files: dict[str, list[str]] | None = None):
        self.settings = settings
        self.needs_oracle = needs_oracle
        self.games_root = games_root
        self.skip_invalid_games = skip_invalid_games
        self.game_files = game_files or {}
        self._envs: dict[str, gym.Env] = {}
        self._env: gym.Env | None = None
        self._info: dict[str, Any] = {}

    def _make(self, episode: Episode) -> gym.Env:
        key = env_key(episode)
        if key not in self._envs:
            # Labels change nothing in the game and cost little; they give each record its count of optimal actions.
            kwargs = {**episode.kwargs, "oracle_labels": True}
            if self.settings.text_mode != "prompt":
                kwargs["text_mode"] = self.settings.text_mode
            if self.skip_invalid_games and "alfworld_wrap" in str(gym.spec(episode.env_id).entry_point):
                kwargs["skip_invalid_games"] = True
            if key in self.game_files:  # the manifest's games of this env (checked against it), not a folder scan
                kwargs["game_files"] = self.game_files[key]
            self._envs[key] = TextActions(gym.make(episode.env_id, **kwargs), mode=self.settings.parse_mode,
                                          on_parse_failure=self.settings.on_parse_failure,
                                          format_penalty=self.settings.format_penalty)
        return self._envs[key]

    def start(self, episode: dict[str, Any]) -> dict[str, Any]:
        spec = Episode.from_dict(episode)
        self._env = self._make(spec)
        options = None
        if spec.game is not None:
            options = {"game_file": str(spec.game_file(self.games_root))}
        obs, info = self._env.reset(seed=spec.seed, options=options)
        view = self._view(obs, info, 0.0, False, False)
        view["skipped_games"] = list(getattr(self._env.unwrapped, "skipped_games", []))
        return view

    def step(self, text: str) -> dict[str, Any]:
        obs, reward, terminated, truncated, info = self._env.step(text)
        return self._view(obs, info, float(reward), bool(terminated), bool(truncated))

    def _view(self, obs, info, reward: float, terminated: bool, truncated: bool) -> dict[str, Any]:
        base = self._env.unwrapped
        done = terminated or truncated
        view = {"reward": reward, "terminated": terminated, "truncated": truncated, "done": done,
                "image": np.asarray(obs["image"]), "info": info}
        if not done:
            if self.settings.text_mode == "full":
                prompt = text_only_prompt(base.describe(), base.prompt(cot=self.settings.cot, wording=self.settings.wording))
            else:  # from the observation's text, as every loop builds it (an env made with text_mode="full" included)
                prompt = build_prompt(base.prompt_task, obs["text"], cot=self.settings.cot, wording=self.settings.wording,
                                      **base.prompt_params)
            view["prompt"] = prompt
            commands = info.get("admissible_commands")
            view["actions"] = tuple(commands) if commands is not None else tuple(base.action_names)
            if self.needs_oracle:
                action = info["oracle_action"]
                view["oracle"] = action_text(base.action_names[action] if isinstance(action, (int, np.integer)) else action)
        return view

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs = {}


class SyncSlots:
    """Slots in this process. ``schedule_seed`` shuffles the order queued commands run (for tests)."""

    def __init__(self, n: int, make_player, schedule_seed: int | None = None):
        self.players = [make_player() for _ in range(n)]
        self._queue: list[tuple[int, str, Any]] = []
        self._order = np.random.default_rng(schedule_seed) if schedule_seed is not None else None

    def submit(self, slot: int, command: str, payload: Any) -> None:
        self._queue.append((slot, command, payload))

    def collect(self) -> list[tuple[int, dict]]:
        queue, self._queue = self._queue, []
        if self._order is not None:
            queue = [queue[i] for i in self._order.permutation(len(queue))]
        return [(slot, getattr(self.players[slot], command)(payload)) for slot, command, payload in queue]

    def close(self) -> None:
        for player in self.players:
            player.close()


def _worker(conn: Connection, player_args: tuple) -> None:
    player = EpisodePlayer(*player_args)
    try:
        while True:
            command, payload = conn.recv()
            if command == "close":
                break
            try:
                conn.send(("ok", getattr(player, command)(payload)))
            except Exception:  # noqa: BLE001 - reported to the parent, which raises it
                conn.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        player.close()
        conn.close()


class AsyncSlots:
    """One worker process per slot; :meth:`collect` returns answers in the order they arrive."""

    def __init__(self, n: int, player_args: tuple, context: str | None = None):
        ctx = multiprocessing.get_context(context)
        self.conns: list[Connection] = []
        self.processes = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_worker, args=(child, player_args), daemon=True)
            process.start()
            child.close()
            self.conns.append(parent)
            self.processes.append(process)
        self._busy: set[int] = set()

    def submit(self, slot: int, command: str, payload: Any) -> None:
        self.conns[slot].send((command, payload))
        self._busy.add(slot)

    def collect(self) -> list[tuple[int, dict]]:
        if not self._busy:
            return []
        ready = wait([self.conns[s] for s in self._busy])
        out = []
        for conn in ready:
            slot = self.conns.index(conn)
            self._busy.discard(slot)
            status, value = conn.recv()
            if status == "error":
                raise RuntimeError(f"env worker {slot} failed:\n{value}")
            out.append((slot, value))
        return out

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()


@dataclass
class _Running:
    index: int
    episode: Episode
    step: int = 0
    total_return: float = 0.0
    optimal_actions: int = 0  # steps whose action the env labelled optimal
    parse_failures: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)
    policy_error: str = ""  # the reason of the reply being played, when the policy failed
    started: bool = False  # the reset view has been seen


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types (numpy scalars and arrays, tuples, sets)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _record(state: _Running, view: dict) -> dict[str, Any]:
    info = view["info"]
    record = {
        "index": state.index, "env_id": state.episode.env_id, "seed": state.episode.seed,
        "return": state.total_return, "length": state.step, "optimal_actions": state.optimal_actions,
        "success": bool(info.get("success", False)),
        "terminated": view["terminated"], "truncated": view["truncated"] or not view["done"],  # by the env, or by play's max_steps
        "parse_failures": state.parse_failures, "parse_failure_reasons": dict(sorted(state.reasons.items())),
        "final_info": json_safe({k: v for k, v in info.items() if k not in _BULKY_INFO_KEYS}),
    }
    if state.episode.game is not None:
        record["game"] = state.episode.game["path"]
    if "task_type" in info:
        record["task_type"] = info["task_type"]
    return record


def check_games(manifest: Manifest, games_root: str | Path | None, skip_invalid: bool) -> dict[int, str]:
    """Verify the sha256 of each named game's files; return ``{index: reason}`` of the invalid ones when skipping."""
    invalid: dict[int, str] = {}
    hashes: dict[Path, tuple[str, ...]] = {}
    for index, episode in enumerate(manifest.episodes):
        if episode.game is None:
            continue
        path = episode.game_file(games_root)
        if path not in hashes:
            hashes[path] = game_digests(path)
        differ = [(path.with_name(name), ours) for name, ours, listed in
                  zip(GAME_FILES, hashes[path], entry_digests(episode.game)) if ours != listed]
        if not differ:
            continue
        file, digest = differ[0]
        reason = f"{file}: missing" if not digest else f"{file}: sha256 differs from the manifest's"
        if not skip_invalid:
            raise SetupError(f"manifest {manifest.name!r} episode {index}: {reason} (skip_invalid_games=True skips it)")
        warnings.warn(f"skipping manifest episode {index}: {reason}", stacklevel=3)
        invalid[index] = reason
    return invalid


def play(
    manifest: Manifest,
    policy: Policy,
    *,
    indices: Iterable[int],
    num_envs: int = 1,
    vectorization: Vectorization = "sync",
    settings: Settings = Settings(),
    games_root: str | Path | None = None,
    on_record=None,
    frames: dict[int, Path] | None = None,
    schedule_seed: int | None = None,
    skip_invalid_games: bool = False,
    skipped_games: set[str] | None = None,
    max_steps: int | None = None,
) -> dict[int, dict[str, Any]]:
    """Play the manifest episodes ``indices``; return ``{index: record}`` and call ``on_record(record)`` as each ends.

    ``frames`` maps an index to a folder where that episode's images are saved as PNG files.
    ``max_steps`` ends an episode that has not ended by then (recorded as truncated).
    With ``skip_invalid_games``, ALFWorld envs skip unreadable games of their split (with a
    warning) and the reasons are added to ``skipped_games``.
    """
    if vectorization not in VECTORIZATIONS:
        raise ValueError(f"vectorization must be one of {VECTORIZATIONS}, got {vectorization!r}")
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be a positive int or None, got {max_steps!r}")
    pending = collections.deque(indices)
    if not pending:
        return {}
    root = None if games_root is None else str(games_root)
    game_files: dict[str, list[str]] = {}  # the games to play, per env
    for episode in (manifest.episodes[i] for i in pending):
        if episode.game is not None:
            game_files.setdefault(env_key(episode), []).append(str(episode.game_file(root)))
    n = min(num_envs, len(pending))
    player_args = (settings, policy.needs_oracle, root, skip_invalid_games, game_files)
    if vectorization == "sync":
        slots = SyncSlots(n, lambda: EpisodePlayer(*player_args), schedule_seed)
    else:
        slots = AsyncSlots(n, player_args)
    frames = frames or {}
    running: dict[int, _Running] = {}
    records: dict[int, dict[str, Any]] = {}

    def start(slot: int) -> None:
        index = pending.popleft()
        running[slot] = _Running(index, manifest.episodes[index])
        slots.submit(slot, "start", manifest.episodes[index].to_dict())

    try:
        for slot in range(n):
            start(slot)
        while running:
            waiting: list[tuple[int, Request]] = []
            for slot, view in slots.collect():
                state = running[slot]
                if skipped_games is not None:
                    skipped_games.update(view.get("skipped_games", ()))
                _account(state, view)
                if state.index in frames:
                    _save_frame(view["image"], frames[state.index], state.index, state.step)
                if view["done"] or state.step == max_steps:
                    records[state.index] = record = _record(state, view)
                    if on_record is not None:
                        on_record(record)
                    del running[slot]
                    if pending:
                        start(slot)
                    continue
                waiting.append((slot, Request(state.index, state.episode.seed, state.step, view["prompt"], view["image"],
                                              view["actions"], view.get("oracle"))))
            if waiting:
                replies = normalize_replies(policy.act([r for _, r in waiting]), len(waiting))
                for (slot, _), reply in zip(waiting, replies):
                    running[slot].policy_error = reply.error
                    slots.submit(slot, "step", reply.text if not reply.error else "")
    finally:
        slots.close()
    return records


def _account(state: _Running, view: dict) -> None:
    """Add a step's outcome to the running episode; the first view (the reset) only starts it."""
    if not state.started:
        state.started = True
        return
    state.step += 1
    state.total_return += view["reward"]
    state.optimal_actions += bool(view["info"]["action_optimal"])
    if state.policy_error or not view["info"].get("parse_ok", True):
        state.parse_failures += 1
        reason = f"policy: {state.policy_error}" if state.policy_error else view["info"].get("parse_error", "")
        state.reasons[reason] += 1


def _save_frame(image: np.ndarray, folder: Path, index: int, step: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"episode{index:05d}_step{step:03d}.png")

