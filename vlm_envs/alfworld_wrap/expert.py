"""A hand-coded expert that plans from the full game state (the oracle, and the generator's walkthroughs).

fast-downward's planner (``textworld``'s ``replan``) is exact but its search blows up on rooms of
the paper's size (minutes for a two-object task in a 30-receptacle kitchen). The six ALFWorld
task types have a fixed shape, so a plan can be written down directly from the facts, like
alfworld's own ``HandCodedTWAgent`` but with full knowledge (it is an oracle):

1. put down a held object that is not a target (in the nearest receptacle that accepts it);
2. fetch a target object (go to its receptacle, open it if closed, take it);
3. clean / heat / cool it at a sink basin / microwave / fridge if the task asks;
4. go to a goal receptacle, open it if closed, move the object there (twice for pick_two);
   for look_at_obj_in_light, go to the lamp and turn it on.

Plans are only proposals: the generator replays every walkthrough in the real engine and keeps
the game only if it is won, and the env checks each proposed command is admissible.
"""

from __future__ import annotations

from typing import Mapping

from vlm_envs.alfworld_wrap.tasks import FactIndex
from vlm_envs.alfworld_wrap.tasks import natural_key as _natural_key

_TOOL = {
    "pick_clean_then_place_in_recep": ("isclean", "clean", "sinkbasintype"),
    "pick_heat_then_place_in_recep": ("ishot", "heat", "microwavetype"),
    "pick_cool_then_place_in_recep": ("iscool", "cool", "fridgetype"),
}


class _Planner:
    def __init__(self, facts: FactIndex):
        self.f = facts
        self.location = facts.receptacle_at(facts.agent_location())
        self.opened = set(facts.unary["opened"])
        self.where = {obj: rec for obj, rec in facts.by_pred["inreceptacle"]}
        self.held = sorted(facts.held(), key=_natural_key)
        self.contain = {(rt, ot) for rt, ot in facts.by_pred["cancontain"]}
        self.commands: list[str] = []

    def receptacles(self, rtype: str) -> list[str]:
        return sorted((r for r, t in self.f.type_of.items() if t == rtype and r in self._all_receptacles()), key=_natural_key)

    def _all_receptacles(self) -> set[str]:
        return {args[0] for args in self.f.by_pred["receptacletype"]}

    def go(self, rec: str, open_it: bool = True) -> None:
        if self.location != rec:
            self.commands.append(f"go to {rec}")
            self.location = rec
        if open_it and rec in self.f.unary["openable"] and rec not in self.opened:
            self.commands.append(f"open {rec}")
            self.opened.add(rec)

    def take(self, obj: str) -> None:
        rec = self.where.pop(obj)
        self.go(rec)
        self.commands.append(f"take {obj} from {rec}")
        self.held.append(obj)

    def put(self, obj: str, rec: str) -> None:
        self.go(rec)
        self.commands.append(f"move {obj} to {rec}")
        self.held.remove(obj)
        self.where[obj] = rec

    def put_away(self, obj: str) -> None:
        otype = self.f.type_of.get(obj)
        fits = sorted((r for r in self._all_receptacles() if (self.f.type_of.get(r), otype) in self.contain), key=_natural_key)
        if not fits:
            raise ValueError(f"no receptacle accepts {obj}")
        self.put(obj, self.location if self.location in fits else fits[0])


def expert_plan(task_type: str, pddl_params: Mapping[str, object], facts: FactIndex) -> list[str]:
    """Commands that complete the task from the state ``facts`` (full knowledge)."""
    p = _Planner(facts)
    obj_type = str(pddl_params.get("object_target") or "").lower() + "type"
    targets = sorted((o for o, t in facts.type_of.items() if t == obj_type and o not in p._all_receptacles()), key=_natural_key)
    for obj in list(p.held):
        if obj not in targets:
            p.put_away(obj)

    if task_type == "look_at_obj_in_light":
        lamp_type = str(pddl_params.get("toggle_target") or "").lower() + "type"
        lamps = sorted((o for o, t in facts.type_of.items() if t == lamp_type), key=_natural_key)
        if not lamps or not targets:
            return []
        if not any(o in targets for o in p.held):
            p.take(targets[0])
        lamp = lamps[0]
        p.go(p.where[lamp])
        if lamp not in facts.unary["istoggled"]:
            p.commands.append(f"use {lamp}")
        return p.commands

    goal_type = str(pddl_params.get("parent_target") or "").lower() + "type"
    goals = p.receptacles(goal_type)
    if not goals or not targets:
        return []
    need = 2 if task_type == "pick_two_obj_and_place" else 1
    # The goal receptacle holding the most targets already (ties: first by name).
    goal = max(goals, key=lambda r: sum(p.where.get(o) == r for o in targets))
    flag = _TOOL.get(task_type)
    placed = [o for o in targets if p.where.get(o) == goal and (flag is None or o in facts.unary[flag[0]])]
    for obj in placed[:need]:
        targets.remove(obj)
    for _ in range(need - min(len(placed), need)):
        held = [o for o in p.held if o in targets]
        obj = held[0] if held else next((o for o in targets if o in p.where and p.where[o] != goal), None)
        if obj is None:
            obj = next((o for o in targets if o in p.where), None)
        if obj is None:
            return []
        if obj not in p.held:
            p.take(obj)
        if flag is not None and obj not in facts.unary[flag[0]]:
            tools = p.receptacles(flag[2])
            if not tools:
                return []
            p.go(tools[0], open_it=False)  # heating, cooling, cleaning work on a closed appliance
            p.commands.append(f"{flag[1]} {obj} with {tools[0]}")
        p.put(obj, goal)
        targets.remove(obj)
    return p.commands
