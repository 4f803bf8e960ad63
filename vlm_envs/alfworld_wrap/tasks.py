"""Task descriptions and goal-condition progress, computed from the game's facts.

Pure functions (no engine import): facts are ``(predicate, (arg, ...))`` tuples with alfworld's
demangled names, e.g. ``("inreceptacle", ("apple 1", "fridge 1"))``,
``("objecttype", ("apple 1", "appletype"))``.

The goal conditions mirror alfworld's THOR tasks (``alfworld/env/tasks.py``), which the
reference's ``goal_condition_success_rate`` came from, evaluated on the TextWorld facts:

==================================  ===========================================================
task type                           conditions (each counts 1)
==================================  ===========================================================
pick_and_place_simple               a target object is in a goal receptacle
pick_two_obj_and_place              one, then two target objects in the same goal receptacle
look_at_obj_in_light                a target object is held; a target lamp is on where the agent is
pick_clean/heat/cool_then_place     a target object in a goal receptacle; a target object is
                                    clean/hot/cool; one object is both
==================================  ===========================================================

All conditions hold exactly when the game's PDDL goal holds (``won``); tests check this.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

Fact = tuple[str, tuple[str, ...]]

# The text templates of alfworld/gen/goal_library.py (alfworld 0.4.2), so drawing a task text
# needs no import of alfworld. tests/alfworld/test_alfworld_engine.py checks they match the wheel's.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "pick_and_place_simple": ("put a {obj} in {recep}", "put some {obj} on {recep}"),
    "look_at_obj_in_light": ("look at {obj} under the {toggle}", "examine the {obj} with the {toggle}"),
    "pick_clean_then_place_in_recep": ("put a clean {obj} in {recep}", "clean some {obj} and put it in {recep}"),
    "pick_heat_then_place_in_recep": ("put a hot {obj} in {recep}", "heat some {obj} and put it in {recep}"),
    "pick_cool_then_place_in_recep": ("put a cool {obj} in {recep}", "cool some {obj} and put it in {recep}"),
    "pick_two_obj_and_place": ("put two {obj} in {recep}", "find two {obj} and put them in {recep}"),
}
_STATE_FLAG = {
    "pick_clean_then_place_in_recep": "isclean",
    "pick_heat_then_place_in_recep": "ishot",
    "pick_cool_then_place_in_recep": "iscool",
}


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> list:
    """Sort key that puts ``cabinet 2`` before ``cabinet 10``."""
    return [int(p) if p.isdigit() else p for p in _DIGITS.split(name)]


def describe_task(task_type: str, pddl_params: Mapping[str, object], template_index: int) -> str:
    """Fill template ``template_index`` of the task type as alfworld does (lower-cased types)."""
    templates = TEMPLATES[task_type]
    template = templates[template_index % len(templates)]

    def word(key: str) -> str:
        return str(pddl_params.get(key) or "").lower()

    return template.format(obj=word("object_target"), recep=word("parent_target"),
                           toggle=word("toggle_target"), mrecep=word("mrecep_target"))


class FactIndex:
    """The facts of one state, indexed for the goal-condition queries."""

    def __init__(self, facts: Iterable[Fact]):
        self.by_pred: dict[str, list[tuple[str, ...]]] = defaultdict(list)
        for name, args in facts:
            self.by_pred[name].append(tuple(a.strip() for a in args))
        self.type_of = {args[0]: args[1] for args in self.by_pred["objecttype"]}
        self.type_of.update({args[0]: args[1] for args in self.by_pred["receptacletype"]})
        self.unary = {name: {args[0] for args in self.by_pred[name]}
                      for name in ("isclean", "ishot", "iscool", "istoggled", "issliced", "opened", "openable")}

    def facts(self) -> list[Fact]:
        """Every fact, sorted: the state in a canonical form."""
        return sorted((name, args) for name, args_list in self.by_pred.items() for args in args_list)

    def of_type(self, entity_type: str) -> set[str]:
        wanted = entity_type.lower() + "type"
        return {name for name, t in self.type_of.items() if t == wanted}

    def contents(self) -> dict[str, list[str]]:
        inside: dict[str, list[str]] = defaultdict(list)
        for obj, rec in self.by_pred["inreceptacle"]:
            inside[rec].append(obj)
        return inside

    def agent_location(self) -> str | None:
        locs = [args[1] for args in self.by_pred["atlocation"]]
        return locs[0] if locs else None

    def receptacle_at(self, location: str | None) -> str | None:
        for rec, loc in self.by_pred["receptacleatlocation"]:
            if loc == location:
                return rec
        return None

    def held(self) -> list[str]:
        return [args[1] for args in self.by_pred["holds"]]


def goal_conditions(task_type: str, pddl_params: Mapping[str, object], facts: FactIndex | Sequence[Fact]) -> tuple[int, int]:
    """``(satisfied, total)`` goal conditions of the task in the state described by ``facts``."""
    index = facts if isinstance(facts, FactIndex) else FactIndex(facts)
    obj_type = str(pddl_params.get("object_target") or "")
    targets = index.of_type(obj_type)
    if task_type == "look_at_obj_in_light":
        lamps = index.of_type(str(pddl_params.get("toggle_target") or ""))
        here = index.receptacle_at(index.agent_location())
        inside = index.contents()
        held = any(o in targets for o in index.held())
        lit = any(lamp in index.unary["istoggled"] and lamp in inside.get(here, ()) for lamp in lamps)
        return int(held) + int(lit), 2
    goal_receptacles = index.of_type(str(pddl_params.get("parent_target") or ""))
    inside = index.contents()
    placed = [o for r in goal_receptacles for o in inside.get(r, ()) if o in targets]
    if task_type == "pick_and_place_simple":
        return int(bool(placed)), 1
    if task_type == "pick_two_obj_and_place":
        best = max((sum(o in targets for o in inside.get(r, ())) for r in goal_receptacles), default=0)
        return min(best, 2), 2
    if task_type in _STATE_FLAG:
        flagged = index.unary[_STATE_FLAG[task_type]] & targets
        return int(bool(placed)) + int(bool(flagged)) + int(any(o in flagged for o in placed)), 3
    raise ValueError(f"unsupported task type {task_type!r}")


def goal_condition_success_rate(task_type: str, pddl_params: Mapping[str, object], facts) -> float:
    satisfied, total = goal_conditions(task_type, pddl_params, facts)
    return satisfied / total
