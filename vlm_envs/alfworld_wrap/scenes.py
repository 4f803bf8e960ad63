"""Build one ALFRED-style ALFWorld game offline and check it: ``game.tw-pddl`` + ``traj_data.json``.

A game is built from what the alfworld wheel ships (no download):

* a floor plan from ``alfworld/gen/layouts`` (the receptacles of an AI2-THOR room, with the
  agent pose in front of each, and the object types present in that room);
* ``alfworld/gen/constants.py``: which receptacle type can hold which object type, which
  objects are heatable / coolable / cleanable / sliceable / toggleable, which task types suit
  which room type, and the train/test floor-plan numbers;
* ``alfworld/gen/goal_library.py``: the PDDL goal and the text templates of the task type;
* ``alfworld/data/alfred.pddl`` and ``alfred.twl2``: the domain and the text grammar, copied
  into every game file as ALFWorld's own ``game.tw-pddl`` files do.

Objects get ALFRED-style mangled ids (``Apple_bar__minus_01_dot_23_bar_...``), so alfworld's
``AlfredDemangler`` names them ``apple 1``, ``apple 2``... exactly as in the official data.

Every game is checked at generation time: it must load in the real engine, must not be won
before the first action, and its plan must win it when replayed through the engine. The plan comes from a hand-coded expert with full knowledge
(:mod:`vlm_envs.alfworld_wrap.expert`; fast-downward's planner is exact but takes minutes on
rooms of this size) and is stored as the game's ``walkthrough``. Games that fail are rejected with
the reason (:class:`GameRejected`); the generator then tries the next candidate.

Splits: ``train`` and ``eval_in_distribution`` use ALFRED's training floor plans (different
games), ``eval_out_of_distribution`` uses its test floor plans, never seen in training.
Everything is drawn from ``numpy.random.default_rng`` seeded by (seed, split, task type, index,
attempt): the same arguments write the same files, byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vlm_envs.alfworld_wrap import SPLITS, TASK_TYPES

GENERATOR_VERSION = 1
MAX_ATTEMPTS = 60
MAX_WALKTHROUGH = 40  # ALFWorld's expert plans are short; long ones would not fit 50 steps with slack

# Task types that make sense in each room type (alfworld constants.GOALS_VALID).
_ROOM_OF_SCENE = (("Kitchen", range(1, 31)), ("LivingRoom", range(201, 231)), ("Bedroom", range(301, 331)),
                  ("Bathroom", range(401, 431)))
# Receptacles in alfworld's constants that ALFWorld's text games never use.
_SKIPPED_RECEPTACLES = {"PaintingHanger"}
_LAMPS = ("DeskLamp", "FloorLamp")
# Where a lamp may stand (it is toggled where it is; never picked up).
_LAMP_RECEPTACLES = ("Desk", "SideTable", "Dresser", "Shelf", "CoffeeTable", "TVStand", "DiningTable", "Cabinet",
                     "Drawer", "CounterTop", "Bed", "ArmChair", "Sofa", "Ottoman", "Cart")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


class GameRejected(Exception):
    """A candidate game was rejected; the message says why."""


def _alfworld():
    """alfworld's generation data (imported lazily: the generator needs the extra)."""
    import vlm_envs.alfworld_wrap.engine  # noqa: F401 - raises DependencyNotInstalled without the extra

    import alfworld
    import alfworld.gen.constants as constants
    import alfworld.gen.goal_library as goal_library

    return alfworld, constants, goal_library


def layouts_dir() -> Path:
    alfworld, constants, _ = _alfworld()
    return Path(constants.__file__).parent / "layouts"


def room_type(scene: int) -> str:
    for name, numbers in _ROOM_OF_SCENE:
        if scene in numbers:
            return name
    raise ValueError(f"FloorPlan{scene} is not an ALFRED scene")


def split_scenes(split: str) -> list[int]:
    """ALFRED's floor plans of a split (train and in-distribution eval share the training rooms)."""
    _, constants, _ = _alfworld()
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    scenes = constants.TEST_SCENE_NUMBERS if split == "eval_out_of_distribution" else constants.TRAIN_SCENE_NUMBERS
    return sorted(scenes)


def mangle(name: str) -> str:
    """ALFRED's PDDL spelling of an object id (``Apple|-01.23|...`` -> ``Apple_bar__minus_01_dot_23...``)."""
    for a, b in (("|", "_bar_"), ("-", "_minus_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_")):
        name = name.replace(a, b)
    return name


def _coord(value: float) -> str:
    return f"{value:+06.2f}"


def synthetic_receptacle_id(rtype: str, x: float, y: float, z: float) -> str:
    """A THOR-style id for a receptacle placed at a synthetic pose.

    THOR names a basin after the object it belongs to (``Sink|x|y|z|SinkBasin``), and alfworld's
    demangler names it from the first part plus "basin": ``sinkbasin 1``. ``SinkBasin|x|y|z``
    would become ``sinkbasinbasin 1``, a name ALFWorld never uses.
    """
    coords = f"{_coord(x)}|{_coord(y)}|{_coord(z)}"
    if rtype.endswith("Basin"):
        return f"{rtype[:-len('Basin')]}|{coords}|{rtype}"
    return f"{rtype}|{coords}"


@dataclass
class Receptacle:
    id: str  # mangled
    type: str
    location: str  # mangled
    openable: bool


@dataclass
class Obj:
    id: str
    type: str
    receptacle: Receptacle


@dataclass
class Scene:
    floor_plan: int
    receptacles: list[Receptacle]
    object_types: list[str]  # object types present in the room (pickupable or lamps)


def load_scene(scene: int, rng: np.random.Generator) -> Scene:
    """The receptacles of ``FloorPlan{scene}`` and the object types it holds."""
    _, constants, _ = _alfworld()
    folder = layouts_dir()
    with open(folder / f"FloorPlan{scene}-openable.json") as f:
        poses = json.load(f)
    with open(folder / f"FloorPlan{scene}-objects.json") as f:
        present = json.load(f)
    static = (set(constants.RECEPTACLES) - set(constants.MOVABLE_RECEPTACLES)) - _SKIPPED_RECEPTACLES
    receptacles: list[Receptacle] = []
    used_locations: set[str] = set()

    def location(x: float, z: float, rot: float, horizon: float) -> str:
        cell = [int(round(x / 0.25)), int(round(z / 0.25)), int(round(rot / 90)) % 4, int(round(horizon))]
        while True:  # one receptacle per location, so "go to X" names exactly one receptacle
            name = mangle("loc|" + "|".join(str(v) for v in cell))
            if name not in used_locations:
                used_locations.add(name)
                return name
            cell[3] += 15

    for key in sorted(poses):
        parts = key.split("|")
        rtype = parts[-1] if len(parts) > 4 else parts[0]
        if rtype not in static:
            continue
        x, z, rot, horizon = poses[key]
        receptacles.append(Receptacle(mangle(key), rtype, location(x, z, rot, horizon), rtype in constants.OPENABLE_CLASS_SET))
    have = {r.type for r in receptacles}
    # Receptacles the room has (objects.json) but the openable-points file leaves out (stove
    # burners, coffee machine, garbage can...): placed at synthetic poses.
    for rtype in sorted(t for t in set(present) if t in static and t not in have):
        count = int(rng.integers(2, 5)) if rtype == "StoveBurner" else 1
        for _ in range(count):
            x, y, z = rng.uniform(-3, 3), rng.uniform(0, 1.5), rng.uniform(-3, 3)
            rid = mangle(synthetic_receptacle_id(rtype, x, y, z))
            pose = (x, z, float(rng.integers(0, 4) * 90), float(rng.choice([0, 15, 30, 45, 60])))
            receptacles.append(Receptacle(rid, rtype, location(*pose), rtype in constants.OPENABLE_CLASS_SET))
    rtypes = {r.type for r in receptacles}
    holdable = set()
    for rtype in rtypes:
        holdable |= constants.VAL_RECEPTACLE_OBJECTS.get(rtype, set())
    object_types = sorted(
        t for t in set(present)
        if (t in holdable and t not in static and "Sliced" not in t) or t in _LAMPS
    )
    return Scene(scene, receptacles, object_types)


@dataclass
class TaskParams:
    task_type: str
    object_target: str
    parent_target: str  # "" for look_at_obj_in_light
    toggle_target: str  # "" except for look_at_obj_in_light

    def as_pddl_params(self) -> dict:
        """``traj_data.json``'s ``pddl_params`` (the keys alfworld reads)."""
        return {
            "object_target": self.object_target,
            "parent_target": self.parent_target,
            "toggle_target": self.toggle_target,
            "mrecep_target": "",
            "object_sliced": False,
        }


def _can_hold(constants, rtype: str, otype: str) -> bool:
    return otype in constants.VAL_RECEPTACLE_OBJECTS.get(rtype, set())


def choose_task(task_type: str, scene: Scene, rng: np.random.Generator) -> TaskParams:
    """Draw task parameters valid for the room (raises :class:`GameRejected` if there are none)."""
    _, constants, _ = _alfworld()
    if room_type(scene.floor_plan) not in constants.GOALS_VALID[task_type]:
        raise GameRejected(f"{task_type} is not set in a {room_type(scene.floor_plan)}")
    rtypes = sorted({r.type for r in scene.receptacles})
    pickable = [t for t in scene.object_types if t not in _LAMPS]
    # The receptacle the state change needs, which is not also the goal receptacle.
    needs = {"pick_clean_then_place_in_recep": ("Cleanable", "SinkBasin"),
             "pick_heat_then_place_in_recep": ("Heatable", "Microwave"),
             "pick_cool_then_place_in_recep": ("Coolable", "Fridge")}
    if task_type == "look_at_obj_in_light":
        lamps = [t for t in scene.object_types if t in _LAMPS]
        if not lamps or not pickable:
            raise GameRejected("no lamp or no object for look_at_obj_in_light in this room")
        return TaskParams(task_type, str(rng.choice(pickable)), "", str(rng.choice(lamps)))
    if task_type in needs:
        prop, tool = needs[task_type]
        if tool not in rtypes:
            raise GameRejected(f"{task_type} needs a {tool}")
        pickable = [t for t in pickable if t in constants.VAL_ACTION_OBJECTS[prop]]
        rtypes = [r for r in rtypes if r != tool]
    room_types = {x.type for x in scene.receptacles}
    # The object must also fit somewhere that is not the goal receptacle type (its start).
    pairs = [(o, r) for o in pickable for r in rtypes
             if _can_hold(constants, r, o) and any(_can_hold(constants, r2, o) for r2 in room_types if r2 != r)]
    if not pairs:
        raise GameRejected(f"no (object, receptacle) pair for {task_type} in this room")
    o, r = pairs[int(rng.integers(len(pairs)))]
    return TaskParams(task_type, o, r, "")


def place_objects(scene: Scene, task: TaskParams, rng: np.random.Generator) -> list[Obj]:
    """Instances of the room's object types, each in a receptacle that can hold it.

    The task's target objects start outside every goal-type receptacle, so no game is won before
    the first action; pick_two gets at least two targets.
    """
    _, constants, _ = _alfworld()
    objects: list[Obj] = []
    used_ids: set[str] = set()
    for otype in scene.object_types:
        target = otype == task.object_target
        if otype in _LAMPS:
            if otype != task.toggle_target and rng.random() < 0.5:
                continue
            count = 1
            spots = [r for r in scene.receptacles if r.type in _LAMP_RECEPTACLES and not r.openable]
        else:
            lo = 2 if (target and task.task_type == "pick_two_obj_and_place") else 1
            count = int(rng.integers(lo, constants.MAX_NUM_OF_OBJ_INSTANCES + 1))
            if not target and rng.random() < 0.35:  # not every object type of the room is there
                continue
            spots = [r for r in scene.receptacles if _can_hold(constants, r.type, otype)]
            if target and task.parent_target:
                spots = [r for r in spots if r.type != task.parent_target]
        if not spots:
            if target or otype == task.toggle_target:
                raise GameRejected(f"no receptacle can hold the target {otype}")
            continue
        for _ in range(count):
            spot = spots[int(rng.integers(len(spots)))]
            while True:
                oid = mangle(f"{otype}|{_coord(rng.uniform(-3, 3))}|{_coord(rng.uniform(0, 2))}|{_coord(rng.uniform(-3, 3))}")
                if oid not in used_ids:
                    used_ids.add(oid)
                    break
            objects.append(Obj(oid, otype, spot))
    return objects


def pddl_problem(name: str, scene: Scene, objects: Sequence[Obj], task: TaskParams, start: str) -> str:
    """The PDDL problem of a game, in the layout of ALFWorld's ``game.tw-pddl`` files."""
    _, constants, goal_library = _alfworld()
    props = {
        "cleanable": constants.VAL_ACTION_OBJECTS["Cleanable"],
        "heatable": constants.VAL_ACTION_OBJECTS["Heatable"],
        "coolable": constants.VAL_ACTION_OBJECTS["Coolable"],
        "sliceable": constants.VAL_ACTION_OBJECTS["Sliceable"],
        "toggleable": constants.VAL_ACTION_OBJECTS["Toggleable"],
    }
    otypes = sorted({o.type for o in objects} | {task.object_target} | ({task.toggle_target} - {""}))
    rtypes = sorted({r.type for r in scene.receptacles} | ({task.parent_target} - {""}))
    locations = [start] + [r.location for r in scene.receptacles]
    lines = [f"(define (problem {name})", "    (:domain alfred)", "    (:objects", "        agent1 - agent"]
    lines += [f"        {t}Type - otype" for t in otypes]
    lines += [f"        {t}Type - rtype" for t in rtypes]
    lines += [f"        {o.id} - object" for o in objects]
    lines += [f"        {r.id} - receptacle" for r in scene.receptacles]
    lines += [f"        {loc} - location" for loc in locations]
    lines += ["        )", "    (:init", f"        (atLocation agent1 {start})"]
    for r in scene.receptacles:
        lines.append(f"        (receptacleType {r.id} {r.type}Type)")
        lines.append(f"        (receptacleAtLocation {r.id} {r.location})")
        if r.openable:
            lines.append(f"        (openable {r.id})")
    for o in objects:
        lines.append(f"        (objectType {o.id} {o.type}Type)")
        lines.append(f"        (objectAtLocation {o.id} {o.receptacle.location})")
        lines.append(f"        (inReceptacle {o.id} {o.receptacle.id})")
        lines.append(f"        (wasInReceptacle {o.id} {o.receptacle.id})")
        if o.type not in _LAMPS:
            lines.append(f"        (pickupable {o.id})")
        for prop, types in props.items():
            if o.type in types:
                lines.append(f"        ({prop} {o.id})")
    for rt in rtypes:
        for ot in otypes:
            if _can_hold(constants, rt, ot):
                lines.append(f"        (canContain {rt}Type {ot}Type)")
    lines.append("    )")
    goal = goal_library.gdict[task.task_type]["pddl"].format(
        obj=task.object_target, recep=task.parent_target, toggle=task.toggle_target, mrecep=""
    )
    lines.append(goal.replace("#", "-").strip())
    return "\n".join(lines) + "\n"


def task_description(task: TaskParams, template: str) -> str:
    """A goal template filled as alfworld does (lower-cased object types)."""
    return template.format(obj=task.object_target.lower(), recep=task.parent_target.lower(),
                           toggle=task.toggle_target.lower(), mrecep="")


def build_game(split: str, task_type: str, rng: np.random.Generator, scene_number: int | None = None) -> tuple[dict, dict]:
    """One candidate game: ``(game.tw-pddl content, traj_data.json content)``, not yet checked."""
    alfworld, _, goal_library = _alfworld()
    scenes = split_scenes(split)
    scene_number = int(rng.choice(scenes)) if scene_number is None else scene_number
    scene = load_scene(scene_number, rng)
    task = choose_task(task_type, scene, rng)
    objects = place_objects(scene, task, rng)
    start = mangle(f"loc|{int(rng.integers(-12, 13))}|{int(rng.integers(-12, 13))}|{int(rng.integers(0, 4))}|30")
    if start in {r.location for r in scene.receptacles}:
        raise GameRejected("the start location coincides with a receptacle")
    name = f"plan_{int(rng.integers(10**9)):09d}"
    problem = pddl_problem(name, scene, objects, task, start)
    with open(alfworld.ALFRED_PDDL_PATH) as f:
        domain = f.read()
    with open(alfworld.ALFRED_TWL2_PATH) as f:
        grammar = f.read()
    templates = goal_library.gdict[task_type]["templates"]
    description = task_description(task, templates[int(rng.integers(len(templates)))])
    game = {
        "pddl_domain": domain,
        "grammar": grammar.replace("UNKNOWN GOAL", description),
        "pddl_problem": problem,
    }
    traj = {
        "task_type": task_type,
        "pddl_params": task.as_pddl_params(),
        "scene": {"floor_plan": f"FloorPlan{scene_number}", "scene_num": scene_number,
                  "room_type": room_type(scene_number)},
        "num_receptacles": len(scene.receptacles),
        "num_objects": len(objects),
    }
    return game, traj


def check_game(game: dict, traj: dict, name: str = "<game>", planner: str = "expert") -> list[str]:
    """Check a game in the real engine and return a winning walkthrough.

    The plan comes from the hand-coded expert (:mod:`vlm_envs.alfworld_wrap.expert`) or, with
    ``planner="fast-downward"``, from textworld's planner (exact but minutes on large rooms).
    Raises :class:`GameRejected` when the game does not load, is won before the first action,
    has no plan, or its plan does not win when replayed in the engine.
    """
    from vlm_envs.alfworld_wrap.engine import Engine, GameError
    from vlm_envs.alfworld_wrap.expert import expert_plan
    from vlm_envs.alfworld_wrap.tasks import FactIndex

    engine = Engine()
    try:
        engine.load(game, name)
        first = engine.reset()
    except GameError as err:
        raise GameRejected(str(err)) from None
    if first.won:
        raise GameRejected("the goal already holds before the first action")
    if planner == "expert":
        plan = expert_plan(traj["task_type"], traj["pddl_params"], FactIndex(first.facts))
    elif planner == "fast-downward":
        plan = engine.plan()
    else:
        raise ValueError(f"planner must be 'expert' or 'fast-downward', got {planner!r}")
    if not plan:
        raise GameRejected("the planner found no plan (unsolvable)")
    if len(plan) > MAX_WALKTHROUGH:
        raise GameRejected(f"the plan is too long ({len(plan)} > {MAX_WALKTHROUGH} steps)")
    engine.reset()
    result = first
    for i, command in enumerate(plan):
        if command not in result.admissible_commands:
            raise GameRejected(f"plan step {i + 1} {command!r} is not admissible when replayed")
        result = engine.step(command)
    if not result.won:
        raise GameRejected("replaying the plan does not win the game")
    return plan


def game_folder_name(traj: dict) -> str:
    """ALFWorld's folder naming: ``{task type}-{object}-{movable recep}-{parent or toggle}-{scene}``."""
    p = traj["pddl_params"]
    parent = p["parent_target"] or p["toggle_target"]
    return f"{traj['task_type']}-{p['object_target']}-None-{parent}-{traj['scene']['scene_num']}"


def generate_game(split: str, task_type: str, seed: int, index: int, log=None) -> tuple[dict, dict]:
    """The ``index``-th checked game of (split, task type): deterministic in its arguments."""
    if task_type not in TASK_TYPES.values():
        raise ValueError(f"unknown task type {task_type!r}; known: {sorted(TASK_TYPES.values())}")
    split_id = SPLITS.index(split) if split in SPLITS else -1
    if split_id < 0:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    type_id = [k for k, v in TASK_TYPES.items() if v == task_type][0]
    reasons = []
    for attempt in range(MAX_ATTEMPTS):
        rng = np.random.default_rng([seed, split_id, type_id, index, attempt])
        try:
            game, traj = build_game(split, task_type, rng)
            walkthrough = check_game(game, traj, f"{split}/{task_type}#{index}")
        except GameRejected as err:
            reasons.append(str(err))
            if log:
                log(f"  rejected candidate {attempt}: {err}")
            continue
        game["solvable"] = True
        game["walkthrough"] = walkthrough
        traj["split"] = split
        # the command's name, as recorded in the shipped games (their sha256s cover these bytes)
        traj["generator"] = {"name": "vlm_envs.alfworld_wrap.generate", "version": GENERATOR_VERSION,
                             "seed": seed, "index": index, "attempt": attempt, "alfworld": _version("alfworld"), "textworld": _version("textworld")}
        return game, traj
    raise GameRejected(f"no valid {task_type} game in {split} after {MAX_ATTEMPTS} candidates; last reasons: {reasons[-3:]}")
