"""ALFWorld as an image+text gymnasium environment, played offline on alfworld's TextWorld engine."""

from __future__ import annotations

import os
import re
from typing import Any, Literal, Sequence, get_args

import numpy as np

from vlm_envs.alfworld_wrap import SPLITS, TASK_TYPES
from vlm_envs.alfworld_wrap.expert import expert_plan
from vlm_envs.alfworld_wrap.games import GameInfo, normalize_task_types, problem_digest, resolve_games
from vlm_envs.alfworld_wrap.schematic import Knowledge, draw
from vlm_envs.alfworld_wrap.tasks import TEMPLATES, FactIndex, describe_task, goal_conditions
from vlm_envs.core.arguments import ServerPath, check_bool, check_finite, check_int, check_path, check_paths
from vlm_envs.core import TextMode, Transition, VLMEnv
from vlm_envs.core.labels import StateLabels
from vlm_envs.core.spaces import text_space
from vlm_envs.text.parsing import MATCH_MODES, CommandMatch, MatchMode, match_command
from vlm_envs.text.prompts import format_alfworld_text

RewardMode = Literal["reference", "delta"]
REWARD_MODES: tuple[RewardMode, ...] = get_args(RewardMode)
ObsTextFormat = Literal["plain", "list_repr"]
OBS_TEXT_FORMATS: tuple[ObsTextFormat, ...] = get_args(ObsTextFormat)
MAX_ACTION_LENGTH = 4096
MAX_STEPS = 1000  # 20x the reference's 50; the episode's history (replayed to copy an env) grows with it
NOTHING_HAPPENS = "Nothing happens."
_TASK_LINE = re.compile(r'^(\s*"rhs":\s*"Your task is to: ).*("\s*)$', re.MULTILINE)
_TASK_PLACEHOLDER = "Your task is to: UNKNOWN GOAL."
# Facts that only record history: ``checked`` (a place or thing was looked at: an effect of look,
# examine, inventory and open that no precondition or goal reads) and textworld's ``not_*`` facts
# (something that was true and no longer is, read only by the feedback text). The state key leaves
# them out, so states that differ only in how they were reached share a key.
_HISTORY_PREDICATES = ("checked",)
_HISTORY_PREFIX = "not_"


def _normalize_grammar(grammar: str) -> str:
    """Put the task sentence back to alfworld's placeholder, so every game shares one parsed grammar."""
    return _TASK_LINE.sub(lambda m: m.group(1) + "UNKNOWN GOAL." + m.group(2), grammar, count=1)


def game_data(game_file: str | os.PathLike) -> dict:
    """A ``game.tw-pddl`` file's content as the env loads it: its grammar's task line is put back to
    alfworld's placeholder, so every game shares one parse of the grammar (~0.25 s of CPU, shipped
    with the package) and the env writes the task sentence itself."""
    from vlm_envs.alfworld_wrap.engine import read_game_file

    data = read_game_file(game_file)
    if isinstance(data.get("grammar"), str):
        data["grammar"] = _normalize_grammar(data["grammar"])
    return data


class ALFWorldEnv(VLMEnv):
    """
    ## Description

    ALFWorld (Shridhar et al., ICLR 2021) as used by RL4VLM (Zhai et al., NeurIPS 2024): a
    household task ("put a hot apple in fridge") played with text commands in a room of 10-30
    receptacles. The game runs on the **real** alfworld/TextWorld engine (textworld's PDDL env,
    the fast-downward library, alfworld's demangler and grammar), offline: no ALFRED download, no
    AI2-THOR. Games come from a set shipped with the package (made by
    ``python -m vlm_envs.alfworld_wrap.generate`` from the floor plans, object constraints and goal
    templates inside the alfworld wheel), from a folder of generated games, or from ALFWorld's
    official ``json_2.1.1`` data when the user has it (``game_dir=$ALFWORLD_DATA/json_2.1.1``).

    The image is a **schematic** of what the agent has observed (receptacles as tiles, where the
    agent is, open/closed, contents seen, what it holds), not a THOR camera frame; it never shows
    hidden state (see :mod:`vlm_envs.alfworld_wrap.schematic`).

    Six task types: ``pick_and_place_simple`` (Pick), ``look_at_obj_in_light`` (Look),
    ``pick_clean_then_place_in_recep`` (Clean), ``pick_heat_then_place_in_recep`` (Heat),
    ``pick_cool_then_place_in_recep`` (Cool), ``pick_two_obj_and_place`` (Pick2).

    ## Action Space

    ``Text(max_length=4096)``: the model's raw output. It is matched to one admissible command
    with :func:`vlm_envs.text.parsing.match_command` (``match_mode="fixed"``: the value of the
    last ``"action":`` key, then an exact match, then the longest admissible command contained in
    it as whole words, so ``go to cabinet 10`` is never read as ``go to cabinet 1``; then the same
    in the last 30 characters). Text of any length is accepted. Unmatched text is **never sent to
    the game**: the step is illegal, the game does not advance, the feedback is
    ``"Nothing happens."`` and the penalty applies. Illegal steps count toward ``max_steps``.

    | command (alfworld 0.4.2)          | example                          |
    |-----------------------------------|----------------------------------|
    | ``go to {recep}``                 | ``go to fridge 1``               |
    | ``open`` / ``close {recep}``      | ``open drawer 2``                |
    | ``take {obj} from {recep}``       | ``take apple 1 from countertop 1`` |
    | ``move {obj} to {recep}``         | ``move apple 1 to fridge 1``     |
    | ``heat`` / ``cool`` / ``clean {obj} with {recep}`` | ``heat apple 1 with microwave 1`` |
    | ``use {lamp}``, ``slice {obj} with {knife}`` | ``use desklamp 1``     |
    | ``examine {obj or recep}``, ``inventory``, ``look``, ``help`` |       |

    (alfworld 0.4 writes ``move X to Y`` where older versions wrote ``put X in/on Y``.)

    ## Observation Space

    ``Dict(image=Box(0, 255, (H, W, 3), uint8), text=Text(16384))``. ``text`` is
    ``vlm_envs.text.prompts.format_alfworld_text(feedback, task, admissible)``: the game's feedback
    (the intro at reset), the task, and the admissible commands one per line, so
    ``vlm_envs.build_prompt("alfworld", obs["text"])`` gives the RL4VLM prompt. With
    ``obs_text_format="list_repr"`` the feedback is written as the reference did (``repr([...])``).

    ## Starting State

    A game drawn uniformly (with replacement) from the split by ``self.np_random``, or the one
    named by ``reset(options={"game_index": i})`` / ``{"game_file": path}`` (as ``info["game_file"]``
    shows it, or the file's own path). The task sentence is
    drawn once per episode from the task type's templates (``info["task"]``).

    ## Rewards

    The paper's shaping, ``success_bonus * won + progress - illegal_penalty * illegal``, with the
    goal-condition progress computed from the game's facts. ``reward_mode="delta"`` (default) pays
    the *change* of ``goal_condition_success_rate`` at each step, so a return counts progress once;
    ``reward_mode="reference"`` pays its *level* at every step, as the RL4VLM code did (see
    docs/reference_differences.md, "Progress reward"),
    which rewards standing still once a sub-goal is met.
    Defaults ``success_bonus=50``, ``illegal_penalty=1``. Progress is computed from the game's
    facts (:mod:`vlm_envs.alfworld_wrap.tasks`).

    ## Episode End

    * Termination: the task is done (``won``).
    * Truncation: ``max_steps`` (default 50) steps taken, illegal ones included (docs/reference_differences.md, "Step limit": the
      reference's off-by-one let 52 happen).

    ## Info

    ``won``, ``success`` (``won``, present every step), ``goal_condition_success_rate``,
    ``task_type``, ``task``, ``game_file`` (the game's path under its games folder, e.g.
    ``eval_in_distribution/<task folder>/<trial>/game.tw-pddl``, never where that folder is
    installed), ``admissible_commands`` (for the new state),
    ``matched_command`` (``None`` if illegal), ``legal_action``, ``parse_ok``, ``parse_error``
    (``""`` when ok), ``feedback`` (the raw feedback string); with ``oracle_labels=True`` also the
    keys below.

    ## Oracle Labels

    ``oracle_labels=True`` adds (pairing and hashing: :mod:`vlm_envs.core.labels`):

    | key                | after ``reset`` / ``step``                                                     |
    |--------------------|--------------------------------------------------------------------------------|
    | ``state_key``      | sha256 of the game's identity (the sha256 of its PDDL problem), the reward arguments and the game's state facts, sorted (where everything is, open, hot, held...; hidden ones included), less those that only record history (``checked``, textworld's ``not_*``) |
    | ``oracle_action``  | ``oracle_action()`` in that state (a command); absent once won                 |
    | ``action_optimal`` | ``step`` only: the command is the oracle's, or it makes progress: the hand-coded expert (:mod:`vlm_envs.alfworld_wrap.expert`) plans fewer commands from the new state than from the old one (winning counts as 0). Unmatched text, ``look``, ``examine`` and detours are not. |

    Why progress and not "equals the oracle's command": several commands are often equally good
    (taking either of two apples that lie together, say), and equality would call all but one of
    them wrong. Why also the oracle's command: it follows the game's walkthrough while the agent
    does, which the expert's plan need not shorten on other game sets (on the shipped games every
    walkthrough command does: tested). The expert is a fixed recipe, not a search for a shortest
    plan (it fetches the first target object by name, for one), so the labels are as good as that
    recipe: going first to where a second apple lies counts as not optimal. Cost: two expert plans
    a step (pure Python on the facts, well under a millisecond) besides ``oracle_action()`` itself
    (the planner only where the expert has none). Equal keys can come with different observations
    (the task wording, what the schematic shows the agent has seen) and with different oracle
    commands (the oracle keeps to the walkthrough only while the agent follows it).

    ## Arguments

    * ``split``: ``"train"`` (default), ``"eval_in_distribution"``, ``"eval_out_of_distribution"``.
    * ``task_types``: ids 1-6 or names; default all six.
    * ``game_dir``: a folder of games (ours, or ALFWorld's ``json_2.1.1``; the split's subfolder
      ``train``/``valid_seen``/``valid_unseen`` is used when present). Default: the shipped set.
    * ``game_files``: explicit ``game.tw-pddl`` paths (overrides ``split``/``game_dir``).
      ``game_dir`` and ``game_files`` name files of the machine the env runs on
      (:data:`vlm_envs.core.arguments.ServerPath`): an env server takes them only from its own configuration.
    * ``max_steps=50`` (an int in 1..1000), ``reward_mode``, ``success_bonus=50.0``,
      ``illegal_penalty=1.0`` (finite numbers).
    * ``obs_text_format``: ``"plain"`` (default) or ``"list_repr"``.
    * ``match_mode``: ``"fixed"`` (default) or ``"compat"`` (the reference matcher).
    * ``image_size=(300, 300)`` (ints in 16..2048), ``render_mode`` (``"rgb_array"``, ``"human"``), ``text_mode``.
    * ``skip_invalid_games``: a game whose files cannot be read raises an error naming the file
      (default); ``True`` skips it with a warning naming it, and lists it in ``env.unwrapped.skipped_games``.
    * ``oracle_labels``: add ``state_key``, ``oracle_action``, ``action_optimal`` to ``info`` (default ``False``).

    ## Registered Configurations

    * ``alfworld/ALFWorld-v0``: all six task types.
    * ``alfworld/ALFWorld-Pick-v0``, ``-Look-v0``, ``-Clean-v0``, ``-Heat-v0``, ``-Cool-v0``,
      ``-Pick2-v0``: one task type each (``task_types=(k,)``).

    ## Oracle

    ``env.unwrapped.oracle_action()`` returns the next expert command: the game's recorded
    walkthrough while the agent follows it, else a plan from the current state by the
    hand-coded expert from the current (full) state (:mod:`vlm_envs.alfworld_wrap.expert`),
    with the fast-downward planner as a last resort.

    ## Version History

    * v0: initial version (alfworld 0.4.2, textworld 1.7.0).
    """

    prompt_task = "alfworld"
    max_text_length = 16384
    thread_safe = False  # the engine patches textworld's text generator process-wide while it runs (engine.FAST_TEXTGEN)

    def __init__(
        self,
        render_mode: str | None = None,
        split: str = "train",
        task_types: Sequence[int | str] | None = None,
        game_dir: ServerPath | None = None,
        game_files: Sequence[ServerPath] | None = None,
        max_steps: int = 50,
        reward_mode: RewardMode = "delta",
        success_bonus: float = 50.0,
        illegal_penalty: float = 1.0,
        obs_text_format: ObsTextFormat = "plain",
        match_mode: MatchMode = "fixed",
        image_size: tuple[int, int] = (300, 300),
        text_mode: TextMode = "prompt",
        skip_invalid_games: bool = False,
        oracle_labels: bool = False,
    ):
        from vlm_envs.alfworld_wrap.engine import Engine  # raises DependencyNotInstalled without the extra

        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
        if obs_text_format not in OBS_TEXT_FORMATS:
            raise ValueError(f"obs_text_format must be one of {OBS_TEXT_FORMATS}, got {obs_text_format!r}")
        if match_mode not in MATCH_MODES:
            raise ValueError(f"match_mode must be one of {MATCH_MODES}, got {match_mode!r}")
        self.max_steps = check_int("max_steps", max_steps, 1, MAX_STEPS)
        self.success_bonus = check_finite("success_bonus", success_bonus)
        self.illegal_penalty = check_finite("illegal_penalty", illegal_penalty)
        skip_invalid_games = check_bool("skip_invalid_games", skip_invalid_games)
        game_dir = None if game_dir is None else check_path("game_dir", game_dir)
        game_files = None if game_files is None else check_paths("game_files", game_files)
        super().__init__(render_mode=render_mode, image_size=image_size, text_mode=text_mode,
                         oracle_labels=oracle_labels)
        self.split = split
        self.task_types = normalize_task_types(task_types)
        self.skipped_games: list[str] = []  # why each invalid game was skipped (skip_invalid_games=True)
        self.games: list[GameInfo] = resolve_games(split, self.task_types, game_dir, game_files,
                                                   self.skipped_games if skip_invalid_games else None)
        self.reward_mode = reward_mode
        self.obs_text_format = obs_text_format
        self.match_mode = match_mode
        self.action_space = text_space(MAX_ACTION_LENGTH)

        self._engine_class = Engine
        self._engine = None
        self._game_cache: dict[str, dict] = {}
        self._problem_digests: dict[str, str] = {}  # game file -> its identity in state keys
        self._game: GameInfo | None = None
        self._task = ""
        self._feedback = ""
        self._admissible: list[str] = []
        self._facts: FactIndex | None = None
        self._facts_before: FactIndex | None = None  # the facts a step started from
        self._knowledge: Knowledge | None = None
        self._won = False
        self._gcsr = 0.0
        self._steps = 0
        self._history: list[str] = []  # the commands played this episode (legal ones)
        self._plan: list[str] = []  # the oracle's remaining plan
        self._frame: tuple[tuple, np.ndarray] | None = None

    # -- VLMEnv hooks ------------------------------------------------------------------------
    def _start_episode(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = set(options) - {"game_index", "game_file"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; known: game_index, game_file")
        if "game_index" in options:
            index = options["game_index"]
            if not isinstance(index, (int, np.integer)) or not 0 <= index < len(self.games):
                raise ValueError(f"game_index must be an int in [0, {len(self.games)}), got {index!r}")
            game = self.games[int(index)]
        elif "game_file" in options:
            by_file = {**{g.relative_path: g for g in self.games}, **{g.game_file: g for g in self.games}}
            if str(options["game_file"]) not in by_file:
                raise ValueError(f"game_file {options['game_file']!r} is not one of this env's games "
                                 "(name one as info['game_file'] does, or by its path)")
            game = by_file[str(options["game_file"])]
        else:
            game = self.games[int(self.np_random.integers(len(self.games)))]
        self._task = describe_task(game.task_type, game.pddl_params, int(self.np_random.integers(len(TEMPLATES[game.task_type]))))
        self._start(game)
        self._plan = list(self._game_data(game).get("walkthrough") or [])
        return self._info(matched=None, legal=True, parse_error="")

    def _read_action(self, action: Any) -> CommandMatch:
        """Any model output is a move: the admissible command it names, or an illegal step when it
        names none (not a ``str``, empty, too long...). Only a finished episode refuses a step."""
        if self._won or self._steps >= self.max_steps:
            raise RuntimeError("the episode is over (terminated or truncated); call reset()")
        return match_command(action, self._admissible, mode=self.match_mode)

    def _apply_action(self, match: CommandMatch) -> Transition:
        self._steps += 1
        previous = self._gcsr
        self._facts_before = self._facts  # for the oracle labels: the same facts as the previous state key, indexed
        if match.ok:
            self._play(match.command)
        else:
            self._feedback = NOTHING_HAPPENS  # the text is not sent to the game
        progress = self._gcsr - previous if self.reward_mode == "delta" else self._gcsr
        reward = self.success_bonus * self._won + progress - self.illegal_penalty * (not match.ok)
        terminated = self._won
        truncated = not terminated and self._steps >= self.max_steps
        return Transition(reward, terminated, truncated, self._info(match.command, match.ok, match.reason))

    # -- oracle ------------------------------------------------------------------------------
    def oracle_action(self) -> str:
        """The next expert command: the walkthrough while followed, else a fresh plan."""
        if self._game is None:
            raise RuntimeError("call reset() before oracle_action()")
        if self._won:
            return "look"
        if not self._plan or self._plan[0] not in self._admissible:
            self._plan = expert_plan(self._game.task_type, self._game.pddl_params, self._facts)
        if not self._plan or self._plan[0] not in self._admissible:
            self._plan = self._engine.plan()  # fast-downward: exact, slow; a last resort
        if not self._plan:
            return "look"
        return self._plan[0]

    def _full_state(self) -> dict[str, Any]:
        game = self._game.game_file
        if game not in self._problem_digests:
            self._problem_digests[game] = problem_digest(self._game_data(self._game))
        return {"game": self._problem_digests[game], "reward_mode": self.reward_mode,
                "success_bonus": self.success_bonus, "illegal_penalty": self.illegal_penalty,
                "facts": [fact for fact in self._facts.facts()
                          if fact[0] not in _HISTORY_PREDICATES and not fact[0].startswith(_HISTORY_PREFIX)]}

    def _action_optimal(self, match: CommandMatch, before: StateLabels) -> bool:
        """The command is the oracle's, or it makes progress: the expert's plan from the new state
        is shorter than from the old one."""
        command = match.command
        if command is None:
            return False  # unmatched text never reaches the game
        if command == before.oracle_action and command != "look":  # "look" is the oracle's no-plan fallback
            return True
        was = self._expert_steps(self._facts_before)
        now = 0 if self._won else self._expert_steps(self._facts)
        return was is not None and now is not None and now < was

    def _expert_steps(self, facts: FactIndex) -> int | None:
        """How many commands the hand-coded expert needs from ``facts`` (not won); ``None`` when it has no plan."""
        return len(expert_plan(self._game.task_type, self._game.pddl_params, facts)) or None

    def _text(self) -> str:
        feedback = repr([self._feedback]) if self.obs_text_format == "list_repr" else self._feedback
        return format_alfworld_text(feedback, self._task, self._admissible)

    def _describe(self) -> str:
        return self._text() + "\n\nWhat you have observed:\n" + self._knowledge.describe()

    def _render_frame(self) -> np.ndarray:
        key = self._knowledge.snapshot()
        if self._frame is None or self._frame[0] != key:
            self._frame = (key, draw(self._knowledge, self.image_size))
        return self._frame[1].copy()

    # -- internals ---------------------------------------------------------------------------
    def _game_data(self, game: GameInfo) -> dict:
        data = self._game_cache.get(game.game_file)
        if data is None:
            data = self._game_cache[game.game_file] = game_data(game.game_file)
        return data

    def _start(self, game: GameInfo) -> None:
        if self._engine is None:
            self._engine = self._engine_class()
        if self._game is None or self._game.game_file != game.game_file:
            self._game = None
            self._engine.load(self._game_data(game), game.game_file)
        self._game = game
        result = self._engine.reset()
        self._feedback = result.feedback.replace(_TASK_PLACEHOLDER, f"Your task is to: {self._task}.")
        self._set_state(result)
        self._knowledge = Knowledge.start(self._facts)
        self._gcsr = self._progress()
        self._won = result.won
        self._steps = 0
        self._history = []
        self._frame = None

    def _play(self, command: str) -> None:
        result = self._engine.step(command)
        self._history.append(command)
        self._feedback = result.feedback
        self._set_state(result)
        self._knowledge.update(self._facts, command)
        self._gcsr = self._progress()
        self._won = result.won
        if self._plan and self._plan[0] == command:
            self._plan.pop(0)
        else:
            self._plan = []

    def _set_state(self, result) -> None:
        self._admissible = result.admissible_commands
        self._facts = FactIndex(result.facts)

    def _progress(self) -> float:
        satisfied, total = goal_conditions(self._game.task_type, self._game.pddl_params, self._facts)
        return satisfied / total

    def _info(self, matched: str | None, legal: bool, parse_error: str) -> dict[str, Any]:
        return {
            "won": bool(self._won),
            "success": bool(self._won),
            "goal_condition_success_rate": float(self._gcsr),
            "task_type": self._game.task_type,
            "task": self._task,
            "game_file": self._game.relative_path,
            "admissible_commands": list(self._admissible),
            "matched_command": matched,
            "legal_action": bool(legal),
            "parse_ok": bool(legal),
            "parse_error": "" if legal else parse_error,
            "feedback": self._feedback,
        }

    # -- pickling: the engine is a C library; rebuild it by replaying the episode --------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_engine"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._game is not None:
            feedback, admissible, history, plan = self._feedback, self._admissible, list(self._history), self._plan
            knowledge, steps, frame = self._knowledge, self._steps, self._frame
            game, self._game = self._game, None
            self._start(game)
            for command in history:
                self._play(command)
            self._feedback, self._admissible, self._history, self._plan = feedback, admissible, history, plan
            self._knowledge, self._steps, self._frame = knowledge, steps, frame


__all__ = ["ALFWorldEnv", "TASK_TYPES"]
