"""Task prompts for every environment, built from the environment's text observation.

The prompt for a step is a pure function of the task name and that step's ``obs["text"]``, so
a trainer that only sees observations (vector envs, other processes, other RL libraries) builds
exactly the prompt the env itself would::

    prompt = build_prompt("points24", obs["text"], cot=True)
    messages = chat_messages(prompt)          # for processor.apply_chat_template(...)
    full = conversation(prompt)               # LLaVA-1.5 style string with the <image> slot

``wording="reference"`` (default) gives the RL4VLM templates byte for byte;
``wording="clean"`` fixes their typos and stray backslashes.

The point games take the env's target (``build_prompt("ezpoints", text, target=10)``; envs pass
their own ``prompt_params``). The reference text hard-codes 12 and 24, so it refuses any other
target rather than state the wrong goal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, get_args

from vlm_envs.text import reference_templates as ref

Wording = Literal["reference", "clean"]
WORDINGS: tuple[Wording, ...] = get_args(Wording)

_CLEAN_JSON_FOOTER = "Your response should be a valid JSON object in the following format:\n"

_NUMBERLINE_INTRO = (
    "You are playing a game called number line. You will see a target number and a current number "
    "in the image. And your goal is to move the current number closer to the target by choosing "
    "either adding or subtracting one to the current number. "
)
_BLACKJACK_INTRO = "You are a blackjack player. You are observing the current game state, you can choose between ['stand', 'hit']. "


def _points_intro(n_cards: str, choices: str) -> str:
    return (
        f"You are an expert card game player. You are observing {n_cards} cards in the image. "
        "You are observing the current formula: {formula}. "
        f"You can choose between [{choices}]. The number or operator you choose will be appended "
        "to the current formula. Note that 'J', 'Q', and 'K' count as '10'. Your goal is to output "
        "a formula that evaluates to {target}, and each number can only be used once. "
    )


_EZ_CHOICES = ", ".join(f"'{s}'" for s in [*map(str, range(1, 11)), "+", "*", "="])
_P24_CHOICES = ", ".join(f"'{s}'" for s in [*map(str, range(1, 11)), "+", "-", "*", "/", "(", ")", "="])
_POINTS_THOUGHTS = (
    '"thoughts": "first check whether the current formula is complete and equals {target}; if so, '
    "output '='; otherwise choose the number or operator to append\",\n"
)
_ALFWORLD_INTRO = (
    "You are an expert in the ALFRED Embodied Environment. You are also given the following text "
    "description of the current scene: {obs}. Your task is to {task}. Your admissible actions of "
    "the current situation are: [{adm}]. "
)

CLEAN_TEMPLATES: dict[str, tuple[str, str]] = {
    "numberline": (
        _NUMBERLINE_INTRO + _CLEAN_JSON_FOOTER + '{"current number": "x", "target number": "x", '
        '"thoughts": "first read out the current and target number, then think about which action '
        'to choose", "action": "-" or "+"}',
        _NUMBERLINE_INTRO + _CLEAN_JSON_FOOTER + '{"action": "-" or "+"}',
    ),
    "blackjack": (
        _BLACKJACK_INTRO + _CLEAN_JSON_FOOTER + '{"thoughts": "first describe your total points and '
        "the dealer's total points, then think about which action to choose\", "
        '"action": "stand" or "hit"}',
        _BLACKJACK_INTRO + _CLEAN_JSON_FOOTER + '{"action": "stand" or "hit"}',
    ),
    "ezpoints": (
        _points_intro("two", _EZ_CHOICES) + _CLEAN_JSON_FOOTER + '{\n"cards": [x, y],\n'
        '"current formula": "{formula}",\n' + _POINTS_THOUGHTS + '"action": "number or operator"\n}',
        _points_intro("two", _EZ_CHOICES) + _CLEAN_JSON_FOOTER + '{"action": "number or operator"}',
    ),
    "points24": (
        _points_intro("four", _P24_CHOICES) + _CLEAN_JSON_FOOTER + '{\n"cards": [x, y, z, w],\n'
        '"current formula": "{formula}",\n' + _POINTS_THOUGHTS + '"action": "number or operator"\n}',
        _points_intro("four", _P24_CHOICES) + _CLEAN_JSON_FOOTER + '{"action": "number or operator"}',
    ),
    "alfworld": (
        _ALFWORLD_INTRO + _CLEAN_JSON_FOOTER + '{\n"thoughts": "first describe what you see using the '
        'text description, then think about which action completes the task",\n'
        '"action": "an admissible action"\n}',
        _ALFWORLD_INTRO + _CLEAN_JSON_FOOTER + '{"action": "an admissible action"}',
    ),
}

REFERENCE_TEMPLATES: dict[str, tuple[str, str]] = {
    "numberline": (ref.NUMBERLINE_COT, ref.NUMBERLINE_ACTION),
    "blackjack": (ref.BLACKJACK_COT, ref.BLACKJACK_ACTION),
    "ezpoints": (ref.EZPOINTS_COT, ref.EZPOINTS_ACTION),
    "points24": (ref.POINTS24_COT, ref.POINTS24_ACTION),
    "alfworld": (ref.ALFWORLD_COT, ref.ALFWORLD_ACTION),
}


def _no_fields(text: str) -> dict[str, str]:
    return {}


def _formula_field(text: str) -> dict[str, str]:
    return {"formula": text}


# ALFWorld's obs["text"] is laid out by vlm_envs.alfworld_wrap as
#   "{feedback}\n\nYour task is to: {task}\n\nAdmissible actions:\n{one command per line}".
ALFWORLD_TASK_HEADER = "\n\nYour task is to: "
ALFWORLD_ADMISSIBLE_HEADER = "\n\nAdmissible actions:\n"


def format_alfworld_text(feedback: str, task: str, admissible: list[str]) -> str:
    """Lay out ALFWorld's per-step text observation (the inverse of :func:`_alfworld_fields`)."""
    return f"{feedback}{ALFWORLD_TASK_HEADER}{task}{ALFWORLD_ADMISSIBLE_HEADER}" + "\n".join(admissible)


def _alfworld_fields(text: str) -> dict[str, str]:
    head, _, commands = text.rpartition(ALFWORLD_ADMISSIBLE_HEADER)
    feedback, _, task = head.rpartition(ALFWORLD_TASK_HEADER)
    admissible = [c for c in commands.split("\n") if c]
    # The reference shows each command in single quotes, joined by a newline and a space.
    return {"obs": feedback, "task": task, "adm": "\n ".join(f"'{c}'" for c in admissible)}


@dataclass(frozen=True)
class PromptTask:
    """How one environment's prompt is filled: which template family, which fields from the text."""

    name: str
    fields_from_text: Callable[[str], dict[str, str]]


TASKS: dict[str, PromptTask] = {
    "numberline": PromptTask("numberline", _no_fields),
    "blackjack": PromptTask("blackjack", _no_fields),
    "ezpoints": PromptTask("ezpoints", _formula_field),
    "points24": PromptTask("points24", _formula_field),
    "alfworld": PromptTask("alfworld", _alfworld_fields),
}


def template(task: str, *, cot: bool = True, wording: Wording = "reference") -> str:
    """The unfilled template of ``task`` (``numberline``, ``ezpoints``, ``points24``, ``blackjack``, ``alfworld``)."""
    if task not in TASKS:
        raise ValueError(f"unknown prompt task {task!r}; known: {sorted(TASKS)}")
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, got {wording!r}")
    templates = REFERENCE_TEMPLATES if wording == "reference" else CLEAN_TEMPLATES
    return templates[task][0 if cot else 1]


# The target the reference prompts state (they hard-code it): EZPoints 12, Points24 24.
DEFAULT_TARGETS: dict[str, int] = {"ezpoints": 12, "points24": 24}


def build_prompt(task: str, text: str, *, cot: bool = True, wording: Wording = "reference", target: int | None = None) -> str:
    """The task prompt for one step, from the task name and that step's ``obs["text"]``.

    ``target``: the value the point games must reach (default: the reference's 12 / 24); envs
    pass theirs through ``env.unwrapped.prompt_params``. ``wording="reference"`` refuses a
    non-default target: its text says 12 / 24.
    """
    prompt = template(task, cot=cot, wording=wording)
    fields = TASKS[task].fields_from_text(text)
    if task in DEFAULT_TARGETS:
        default = DEFAULT_TARGETS[task]
        target = default if target is None else int(target)
        if wording == "reference" and target != default:
            raise ValueError(f"the reference {task} prompt states the target {default} and cannot say {target}; "
                             "use wording='clean', which states the env's target")
        fields["target"] = str(target)
    elif target is not None:
        raise ValueError(f"the {task} prompt has no target")
    for key, value in fields.items():
        prompt = prompt.replace("{" + key + "}", value)
    return prompt


def text_only_prompt(state: str, prompt: str) -> str:
    """The prompt for a text-only model: the task prompt, then the state in words (``env.unwrapped.describe()``).

    The task prompt is the same on every turn, so it comes first: a server's prefix cache
    (llama.cpp, vLLM, SGLang) then reuses it and processes only the few state tokens per request.
    """
    return f"{prompt}\nState: {state}"


def chat_messages(prompt: str) -> list[dict]:
    """One user turn holding an image slot then the prompt, for ``processor.apply_chat_template``."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


# How a task prompt is wrapped for a model: a LLaVA conversation (LLaVA models) or the processor's
# own chat template. Declared here, once, for the trainer's config and the hf: policy's flags.
LlavaTemplate = Literal["llava_v1", "vicuna_v1"]
LLAVA_TEMPLATES: tuple[LlavaTemplate, ...] = get_args(LlavaTemplate)
ConvTemplate = Literal[LlavaTemplate, "chat_template"]
CONV_TEMPLATES: tuple[ConvTemplate, ...] = get_args(ConvTemplate)
# How the frame reaches the model: ``native`` (the checkpoint's own processor) or ``reference``
# (RL4VLM's resize and centre crop, LLaVA models).
ImageMode = Literal["native", "reference"]
IMAGE_MODES: tuple[ImageMode, ...] = get_args(ImageMode)

CONVERSATION_TEMPLATES: dict[LlavaTemplate, str] = {
    # LLaVA's `llava_v1`, the RL4VLM default at RL time.
    "llava_v1": (
        "A chat between a curious human and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the human's questions. USER: <image>\n{qs} ASSISTANT:"
    ),
    # LLaVA's `vicuna_v1`, which RL4VLM's SFT script selected (`--version v1`).
    "vicuna_v1": (
        "A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. USER: <image>\n{qs} ASSISTANT:"
    ),
}


def conversation(prompt: str, template_name: str = "llava_v1") -> str:
    """Wrap a task prompt in a LLaVA conversation template (use the same one for SFT and RL)."""
    if template_name not in CONVERSATION_TEMPLATES:
        raise ValueError(f"unknown conversation template {template_name!r}; known: {sorted(CONVERSATION_TEMPLATES)}")
    return CONVERSATION_TEMPLATES[template_name].replace("{qs}", prompt)
