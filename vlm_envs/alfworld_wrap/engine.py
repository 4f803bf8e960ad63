"""The game engine: alfworld's TextWorld machinery, imported lazily, with load-time caches.

A game is played by textworld's PDDL environment (``textworld.envs.pddl.PddlEnv``: the
fast-downward library applies actions, textworld's grammar writes the feedback) wrapped with
alfworld's ``AlfredDemangler`` (which turns ``Apple_bar__minus_01_dot_23...`` into ``apple 1``).
This module adds only caches around it, never game logic:

* the parsed grammar and domain (``GameLogic``, ~0.25 s of CPU) are shared by every game with the
  same domain and grammar (the env gives all its games one grammar, see ``env.game_data``);
* the PDDL -> SAS translation of a problem is cached, so resetting the same game again is cheap;
* the translation the planner needs (``optimize=True``) is made only when a plan is asked for;
* the text of an admissible command is cached per action and the placeholders its template
  names: in ALFWorld's grammar a command's text depends only on those and on static facts
  (which receptacle is at which location);
* parses and translations are also kept on disk (see :func:`sas_cache_dir`), so a new process
  does not parse or translate a game it has seen before; those of the shipped games ship with the
  package (:func:`shipped_translations_dir`), so even a first reset on a new machine does neither.

Importing this module imports textworld and alfworld; it raises ``DependencyNotInstalled`` with
the ``pip install`` to run when they are missing.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import json
import os
import pickle
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from vlm_envs.alfworld_wrap import cache_root
from vlm_envs.optional import missing_extra

try:  # alfworld writes $ALFWORLD_DATA (default ~/.cache/alfworld) as a side effect of import.
    import fast_downward
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    from textworld.core import GameState
    from textworld.envs.pddl import PddlEnv
    from textworld.envs.pddl import logic as pddl_logic
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise missing_extra("alfworld", "ALFWorld", err) from err


class _FastTextgen:
    """Scoped speed-ups of textworld's text generator, with identical output.

    textworld re-parses (with tatsu) every grammar string and every rule condition each time it
    derives a text, and deep-copies the derivation context (entity infos, variable mappings) at
    every symbol. Inside ``with FAST_TEXTGEN:``

    * parses are memoised by their source string (a fresh deep copy of the parsed symbols is
      returned each time, as the caller mutates them);
    * contexts are copied one level deep: derivation adds keys to the copied dicts but never
      mutates their values, so this is equivalent.

    Outside the block textworld is untouched. ``tests/alfworld/test_alfworld_engine.py`` checks that
    feedback and admissible commands are the same with and without it.
    """

    def __init__(self) -> None:
        from textworld.envs.pddl import textgen
        from textworld.logic import Rule

        self._textgen, self._rule = textgen, Rule
        self._orig_parse = textgen._parse_and_convert
        self._orig_copy = textgen.copy_context
        self._orig_query = Rule.__dict__["parse_conjunctive_query"]
        self._parses: dict = {}
        self._queries: dict = {}
        self._depth = 0

        def parse(text, rule_name="symbols", **kwargs):
            key = (text, rule_name)
            if kwargs.get("trace") or key not in self._parses:
                if kwargs.get("trace"):
                    return self._orig_parse(text, rule_name=rule_name, **kwargs)
                self._parses[key] = self._orig_parse(text, rule_name=rule_name, **kwargs)
            return copy.deepcopy(self._parses[key])

        def copy_context(context):
            return {
                "state": context["state"],
                "facts": context["facts"],
                "variables": dict(context["variables"]),
                "mapping": dict(context["mapping"]),
                "entity_infos": context["entity_infos"],
            }

        orig_query = self._orig_query.__func__

        def parse_conjunctive_query(cls, expr):
            rule = self._queries.get(expr)
            if rule is None:
                rule = self._queries[expr] = orig_query(cls, expr)
            return rule

        self._fast = (parse, copy_context, classmethod(parse_conjunctive_query))

    def __enter__(self):
        if self._depth == 0:
            parse, copy_context, query = self._fast
            self._textgen._parse_and_convert = parse
            self._textgen.copy_context = copy_context
            self._rule.parse_conjunctive_query = query
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            self._textgen._parse_and_convert = self._orig_parse
            self._textgen.copy_context = self._orig_copy
            self._rule.parse_conjunctive_query = self._orig_query
        return False


FAST_TEXTGEN = _FastTextgen()


class GameError(ValueError):
    """A game file is malformed, unplayable, or rejected by the planner."""


def _translate(domain: str, problem: str, optimize: bool) -> tuple[Any, str]:
    """``fast_downward.pddl2sas`` without its side effects; planner exits become :class:`GameError`.

    ``pddl2sas`` overwrites ``sys.argv`` and the translator calls ``sys.exit`` on bad PDDL
    (e.g. "duplicate object"): both are contained here.
    """
    argv = sys.argv
    try:
        return fast_downward.pddl2sas(domain, problem, optimize=optimize)
    except SystemExit as err:
        raise GameError(f"the PDDL translator rejected the problem (exit status {err.code!r})") from None
    except (AssertionError, KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
        raise GameError(f"the PDDL translator failed: {type(err).__name__}: {err}") from None
    finally:
        sys.argv = argv


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)
        return value


# Process-wide caches (each env process has its own; they only hold immutable parse results).
_LOGIC_CACHE = _LRU(8)
_SAS_CACHE = _LRU(64)


def sas_cache_dir() -> Path | None:
    """Where parses and translations are kept across processes: :func:`vlm_envs.alfworld_wrap.cache_root`
    ``/alfworld-sas`` (``VLM_ENVS_CACHE=off`` disables it). Entries are pickles keyed by a hash of
    what they were made from and the versions of fast-downward and textworld; a broken or
    unwritable cache is ignored.
    """
    root = cache_root()
    return None if root is None else root / "alfworld-sas"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in ("fast-downward-textworld", "textworld"):
        try:
            out.append(version(package))
        except PackageNotFoundError:
            out.append("?")
    return "/".join(out)


_VERSIONS = _versions()


def shipped_translations_dir() -> Path:
    """Parses and translations of the shipped games, made at release time (read-only; the disk cache's keys)."""
    return Path(__file__).parent / "translations"


def _entry_name(*made_from: str) -> str:
    digest = hashlib.sha256("\0".join((_VERSIONS, *made_from)).encode()).hexdigest()
    return f"{digest}.pkl.gz"


def _translation_key(domain: str, problem: str, optimize: bool) -> tuple[str, ...]:
    return str(optimize), domain, problem


def _logic_key(domain: str, grammar: str) -> tuple[str, ...]:
    return "GameLogic", domain, grammar


def _read_entry(path: Path) -> Any:
    try:
        with gzip.open(path, "rb") as f:
            return pickle.load(f)
    except Exception:  # missing, truncated or from elsewhere: make it again
        return None


def _write_entry(folder: Path, name: str, result: Any) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{name}.{os.getpid()}.tmp"
        with gzip.open(tmp, "wb", compresslevel=9) as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, folder / name)
    except Exception:
        pass


def _from_disk(key: tuple[str, ...], make) -> Any:
    """The shipped entry for ``key``, else the disk cache's, else ``make()`` (then written to the disk cache)."""
    name = _entry_name(*key)
    user_cache = sas_cache_dir()
    for folder in (shipped_translations_dir(), user_cache):
        found = None if folder is None else _read_entry(folder / name)
        if found is not None:
            return found
    result = make()
    if user_cache is not None:
        _write_entry(user_cache, name, result)
    return result


def cached_translate(domain: str, problem: str, optimize: bool) -> tuple[Any, str]:
    """:func:`_translate` through the in-process cache, then the shipped translations, then the on-disk cache."""
    return _SAS_CACHE.get_or((domain, problem, optimize), lambda: _from_disk(
        _translation_key(domain, problem, optimize), lambda: _translate(domain, problem, optimize)))


def write_translation(data: Mapping, folder: Path) -> None:
    """Parse and translate a game (as a reset needs them) into ``folder``, under the cache's keys."""
    logic = pddl_logic.GameLogic(domain=data["pddl_domain"], grammar=data["grammar"])  # fresh: resets add types
    problem = data["pddl_problem"]
    entries = {_logic_key(data["pddl_domain"], data["grammar"]): logic,
               _translation_key(logic.domain, problem, False): _translate(logic.domain, problem, False)}
    for key, result in entries.items():
        _write_entry(Path(folder), _entry_name(*key), result)


def game_logic(domain: str, grammar: str) -> Any:
    """The parsed grammar + domain (``textworld.envs.pddl.logic.GameLogic``), parsed once per machine."""
    return _LOGIC_CACHE.get_or((domain, grammar), lambda: _from_disk(
        _logic_key(domain, grammar), lambda: pddl_logic.GameLogic(domain=domain, grammar=grammar)))


class CachedPddlState(pddl_logic.PddlState):
    """``PddlState`` whose translations are cached and whose planner encoding is made on demand."""

    def __init__(self, downward_lib, pddl_problem: str, logic) -> None:  # noqa: D107 - mirrors the parent
        from collections import Counter, defaultdict

        from textworld.logic import Proposition, Variable

        self._facts = defaultdict(set)
        self._vars_by_name = {}
        self._vars_by_type = defaultdict(set)
        self._var_counts = Counter()
        self._logic = logic
        self.downward_lib = downward_lib
        self.pddl_problem = pddl_problem
        self._replan_loaded = False

        self.task, self.sas = cached_translate(logic.domain, pddl_problem, optimize=False)
        self._actions = {a.name: a for a in self.task.actions}
        for type_ in self.task.types:
            try:
                logic.types.add(textworld.logic.Type(type_.name, type_.supertype_names))
            except ValueError:
                pass
        self.downward_lib.load_sas(self.sas.encode("utf-8"))
        self.name2type = {o.name: o.type_name for o in self.task.objects}

        facts = []
        for atom in self.task.init:
            if isinstance(atom, fast_downward.translate.pddl.conditions.Atom) and atom.predicate != "=":
                facts.append(Proposition(atom.predicate, [Variable(arg, self.name2type[arg]) for arg in atom.args]))
        self.add_facts(facts)
        atoms = (pddl_logic.Atom * self.downward_lib.get_state_size())()
        self.downward_lib.get_state(atoms)
        self.add_facts([f for f in (a.get_fact(self.name2type) for a in atoms) if not f.is_negation])

    def replan(self, infos):
        if not self._replan_loaded:
            _, sas_replan = cached_translate(self._logic.domain, self.pddl_problem, optimize=True)
            self.downward_lib.load_sas_replan(sas_replan.encode("utf-8"))
            self._replan_loaded = True
        return super().replan(infos)


class FastPddlEnv(PddlEnv):
    """textworld's ``PddlEnv`` with the caches described in the module docstring.

    ``reset``/``step`` are the parent's; only loading and the per-step command list are faster.
    The feedback of an action is still derived by textworld's grammar from the live state.
    """

    def __init__(self, infos=None) -> None:
        super().__init__(infos)
        self._command_cache: dict[tuple, str] = {}
        self._template_refs: dict[str, set[str]] = {}

    def load(self, filename_or_data: str | Mapping) -> None:
        if isinstance(filename_or_data, Mapping):
            data, self._game_file = filename_or_data, None
        else:
            with open(filename_or_data) as f:
                data = json.load(f)
            self._game_file = filename_or_data
        self._game_data = data
        self.walkthrough = data.get("walkthrough")
        self._logic = game_logic(data["pddl_domain"], data["grammar"])
        self._pddl_state = CachedPddlState(self.downward_lib, data["pddl_problem"], self._logic)
        self._entity_infos = self._get_entity_infos()
        self._command_cache = {}
        self._template_refs = {}

    def reset(self):
        # As the parent's, with the cached state class (the parent re-translates the problem).
        self._pddl_state = CachedPddlState(self.downward_lib, self._game_data["pddl_problem"], self._logic)
        self.prev_state = None
        self.state = GameState()
        self._last_action = None
        self._moves = 0
        context = {
            "state": self._pddl_state,
            "facts": list(self._pddl_state.facts),
            "variables": {},
            "mapping": {},
            "entity_infos": self._entity_infos,
        }
        self.state.feedback = self._logic.grammar.derive("#intro#", context)
        self.state.raw = self.state.feedback
        self._gather_infos()
        return self.state

    def _gather_infos(self):
        state = self.state
        state["won"] = self._pddl_state.check_goal()
        state["lost"] = False
        state["_entity_infos"] = self._entity_infos
        state["_facts"] = list(self._pddl_state.facts)
        if self.request_infos.facts:
            state["facts"] = list(map(self._get_human_readable_fact, state["_facts"]))
        state["last_action"] = None
        state["_last_action"] = self._last_action
        state["_valid_actions"] = actions = list(self._pddl_state.all_applicable_actions())
        mapping = None
        commands = []
        for action in actions:
            # The command text depends only on the placeholders its template names (``go to``'s
            # text names ``r`` and ``lend``, not where the agent starts) and on static facts.
            refs = self._template_refs.get(action.name)
            if refs is None:
                template = self._logic.actions[action.name].template
                refs = self._template_refs[action.name] = {
                    ph.name for ph in action.mapping if re.search(rf"\b{re.escape(ph.name)}\b", template)
                }
            key = (action.name,) + tuple(sorted((ph.name, v.name) for ph, v in action.mapping.items() if ph.name in refs))
            command = self._command_cache.get(key)
            if command is None:
                if mapping is None:
                    mapping = {k: info.name for k, info in self._entity_infos.items()}
                context = {
                    "state": self._pddl_state,
                    "facts": state["_facts"],
                    "variables": {ph.name: self._entity_infos[var.name] for ph, var in action.mapping.items()},
                    "mapping": action.mapping,
                    "entity_infos": self._entity_infos,
                }
                action.command_template = self._logic.grammar.derive(action.command_template, context)
                command = self._command_cache[key] = action.format_command(mapping)
            commands.append(command)
        state["_valid_commands"] = commands
        state["admissible_commands"] = sorted(set(commands))
        if self.request_infos.moves:
            state["moves"] = self._moves
        if self.request_infos.policy_commands:
            state["policy_commands"] = self._pddl_state.replan(self._entity_infos)


@dataclass
class StepResult:
    """What the engine reports after ``reset``/``step`` (names are demangled: ``apple 1``)."""

    feedback: str
    admissible_commands: list[str]
    won: bool
    facts: list[tuple[str, tuple[str, ...]]] = field(repr=False)


class Engine:
    """One game at a time on textworld's PDDL env wrapped with alfworld's demangler.

    Each instance owns its own copy of the fast-downward library, so several engines can live in
    one process. ``fast=False`` turns off the text-generation speed-ups (:data:`FAST_TEXTGEN`).
    """

    def __init__(self, fast: bool = True) -> None:
        infos = textworld.EnvInfos(facts=True, admissible_commands=True, won=True)
        self._base = FastPddlEnv(infos)
        self._env = AlfredDemangler(self._base)
        self._speed = FAST_TEXTGEN if fast else contextlib.nullcontext()
        self.game_data: dict | None = None

    def load(self, data: Mapping, name: str = "<game>") -> None:
        """Load a game from its ``game.tw-pddl`` content. Raises :class:`GameError` naming ``name``."""
        if not isinstance(data, Mapping):
            raise GameError(f"{name}: a game.tw-pddl JSON object was expected, got {type(data).__name__}")
        for key in ("pddl_domain", "grammar", "pddl_problem"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise GameError(f"{name}: missing or empty {key!r}")
        try:
            with self._speed:
                self._env.load(data)
        except GameError as err:
            raise GameError(f"{name}: {err}") from None
        except Exception as err:  # the grammar parser (tatsu) raises its own exception types
            raise GameError(f"{name}: cannot load the game: {type(err).__name__}: {err}") from None
        self.game_data = dict(data)

    def reset(self) -> StepResult:
        with self._speed:
            return self._result(self._env.reset())

    def step(self, command: str) -> StepResult:
        """Play an admissible ``command`` (the caller guarantees it is one)."""
        with self._speed:
            state, _, _ = self._env.step(command)
            return self._result(state)

    def plan(self) -> list[str]:
        """A plan from the current state to the goal (the fast-downward planner; ~1 s)."""
        with self._speed:
            return list(self._base._pddl_state.replan(self._base._entity_infos))

    @staticmethod
    def _result(state) -> StepResult:
        facts = [(f.name, tuple(v.name for v in f.arguments)) for f in state["facts"]]
        return StepResult(state.feedback, list(state["admissible_commands"]), bool(state["won"]), facts)


def read_game_file(path: str | os.PathLike) -> dict:
    """Read a ``game.tw-pddl`` file, with a clear :class:`GameError` if it is not one."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as err:
        raise GameError(f"{path}: cannot read the game file ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise GameError(f"{path}: not a game.tw-pddl file (invalid JSON: {err})") from None
    if not isinstance(data, dict):
        raise GameError(f"{path}: not a game.tw-pddl file (a JSON object was expected)")
    return data


__all__ = ["Engine", "GameError", "StepResult", "game_logic", "read_game_file"]
