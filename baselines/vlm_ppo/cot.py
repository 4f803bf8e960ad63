"""Templated chain-of-thought answers in the reference output format (for SFT data and the tokenizer).

Each function turns one step's ``info`` (the env's own fields) and a chosen action name into the
answer text an SFT'd RL4VLM model gives: a JSON-like object whose last key is ``"action"``.
The thoughts follow the *given* action, so an answer whose
action was deliberately corrupted still reads as one consistent (wrong) decision.
"""

from __future__ import annotations

from typing import Callable

from vlm_envs.cards.blackjack import Card, hand_total
from vlm_envs.text.prompts import DEFAULT_TARGETS


def numberline(info: dict, action: str) -> str:
    current, target = int(info["Current"]), int(info["Target"])
    verb = "add one to" if action == "+" else "subtract one from"
    return (
        f'{{"current number": "{current}", "target number": "{target}", '
        f'"thoughts": "The current number is {current} and the target number is {target}. '
        f'I should {verb} the current number.", "action": "{action}"}}'
    )


def blackjack(info: dict, action: str) -> str:
    """The player's total as the env reports it (``info["player_total"]``) and the dealer's face-up
    card (``info["dealer_upcard"]``) counted by the env's rules: an ace shows 11 points."""
    player = int(info["player_total"])
    dealer = hand_total([Card(*info["dealer_upcard"])])
    return (
        f'{{"thoughts": "I have {player} points and the dealer has {dealer} points. '
        f'I should {action}.", "action": "{action}"}}'
    )


def _points(default_target: int) -> Callable[[dict, str], str]:
    """The answer of a point game; the target is the env's own (``info["target_points"]``), else the default."""

    def answer(info: dict, action: str) -> str:
        target = int(info.get("target_points", default_target))
        numbers = ", ".join(str(int(n)) for n in info.get("Numbers", []))
        formula = "".join(str(x) for x in info.get("Formula", []))
        if action == "=":
            thought = f"The current formula {formula} is complete and equals {target}. I should output '='."
        else:
            thought = f"The current formula {formula or 'is empty and'} is not complete. I should append '{action}'."
        return (
            f'{{"cards": [{numbers}], "current formula": {formula}, '
            f'"thoughts": "{thought}", "action": "{action}"}}'
        )

    return answer


def alfworld(info: dict, action: str) -> str:
    """The expert's step as a CoT over the admissible commands: the task, how many commands the
    state admits, and the chosen one (``info`` is the env's: ``task``, ``admissible_commands``)."""
    task = str(info.get("task", "")).rstrip(". ")
    admissible = info.get("admissible_commands", [])
    return (
        f'{{"thoughts": "My task is to {task}. Of the {len(admissible)} admissible actions, '
        f'{action} brings me closer to completing it. I should {action}.", "action": "{action}"}}'
    )


ANSWERS: dict[str, Callable[[dict, str], str]] = {
    "numberline": numberline,
    "alfworld": alfworld,
    "blackjack": blackjack,
    "ezpoints": _points(DEFAULT_TARGETS["ezpoints"]),
    "points24": _points(DEFAULT_TARGETS["points24"]),
}


def answer(task: str, info: dict, action: str, cot: bool = True) -> str:
    """The reference-format answer for ``task`` given the step's ``info`` and the action name."""
    if not cot:
        return f'{{"action": "{action}"}}'
    return ANSWERS[task](info, action)


def oracle_name(env) -> str:
    """The name of ``env``'s (unwrapped) oracle action: a command already, or an index into ``action_names``."""
    oracle = env.oracle_action()
    return oracle if isinstance(oracle, str) else env.action_names[oracle]


def env_action(env, name: str):
    """What ``env`` (unwrapped) takes for the action ``name``: its index for an env with
    ``action_names`` (the card games), else the action-only answer text (ALFWorld's commands)."""
    names = tuple(getattr(env, "action_names", ()))
    return names.index(name) if names else answer(env.prompt_task, {}, name, cot=False)
