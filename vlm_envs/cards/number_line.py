"""NumberLine: move the current number to the target, one step of +1 or -1 at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

from vlm_envs.core.arguments import check_bool, check_int
from vlm_envs.core.caching import byte_lru_cache
from vlm_envs.core import Transition, VLMEnv
from vlm_envs.core.labels import StateLabels
from vlm_envs.core.rendering import font, to_frame


MAX_POSITION = 999  # "Current: 999" is the widest label that fits the 300-px frame
_LAYOUT_BYTES = 16 * 2**20  # ~60 states; the default line (max_position=5) has 30


@byte_lru_cache("numberline.layouts", _LAYOUT_BYTES)
def _layout(target: int, current: int) -> np.ndarray:
    """The 300x300 frame of a state, read-only: every ``image_size`` is resized from it, so the
    cache holds one frame per state whatever sizes the envs render at."""
    image = Image.new("RGB", (300, 300), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((30, 60), f"Target: {target}", font=font(36, bold=True), fill=(0, 0, 0))
    draw.text((30, 180), f"Current: {current}", font=font(36, bold=True), fill=(0, 0, 0))
    layout = np.array(image, dtype=np.uint8)
    layout.flags.writeable = False
    return layout


class NumberLineEnv(VLMEnv):
    """Move the current number to the target on the line ``0..max_position``.

    ## Description
    The image shows a target number and a current number; each step adds or subtracts one.
    Moving closer is free, reaching the target pays +1, and any wasted move (away from the target,
    or into a wall) costs -1, so the only successful episodes are the shortest paths.

    ## Action Space
    ``Discrete(2)``; ``action_names = ("-", "+")``.

    | index | name | effect |
    |---|---|---|
    | 0 | ``"-"`` | current -= 1 (unless it is 0) |
    | 1 | ``"+"`` | current += 1 (unless it is ``max_position``) |

    ## Observation Space
    ``Dict(image=Box(0, 255, (H, W, 3), uint8), text=Text(512))``. The 300x300 image is white with
    ``Target: g`` and ``Current: p`` in black DejaVu Sans Bold. ``text`` is ``""``: the state is
    only in the image, as in the paper. ``text_mode="full"`` gives
    ``"Target number: g. Current number: p"`` for text-only agents.

    ## Starting State
    Current uniform in ``0..max_position``; target uniform among the *other* positions
    (``compat=True``: the reference draw, target uniform then moved to ``(target + 1) mod max_position``
    when it equals the start, which is biased).

    ## Rewards
    | event | reward |
    |---|---|
    | target reached | +1 |
    | distance not reduced (moved away, or blocked by a wall) | -1 |
    | moved closer, target not reached | 0 |

    ## Episode End
    Terminated when the target is reached. Truncated after ``2 * max_position`` steps (and by
    ``max_episode_steps=300``, which never fires first). ``info["success"]`` is the paper's success:
    the target was reached with a positive return, i.e. without a single wasted move.

    ## Info
    ``Target``, ``Current``, ``success``, ``wasted_moves``; with ``oracle_labels=True`` also the
    keys below.

    ## Oracle Labels
    ``oracle_labels=True`` adds (pairing and hashing: :mod:`vlm_envs.core.labels`):

    | key | after ``reset`` / ``step`` |
    |---|---|
    | ``state_key`` | sha256 of ``(max_position, target, current)`` of the state the observation shows |
    | ``oracle_action`` | the shortest path's move in that state; absent once terminated |
    | ``action_optimal`` | ``step`` only: the move just made reduced the distance to the target (a move away or into a wall never does) |

    ## Arguments
    | argument | default | meaning |
    |---|---|---|
    | ``max_position`` | 5 | the line is ``0..max_position``, an int in 1..999 (larger numbers would not fit the image) |
    | ``render_mode`` | None | ``"rgb_array"`` or ``"human"`` |
    | ``image_size`` | (300, 300) | (height, width) of the image, ints in 16..2048 |
    | ``text_mode`` | ``"prompt"`` | ``"full"``: state in words for text-only agents |
    | ``compat`` | False | the reference's biased start/target draw |
    | ``oracle_labels`` | False | add ``state_key``, ``oracle_action``, ``action_optimal`` to ``info`` |

    ## Version History
    * v0: RL4VLM's NumberLine, seeded, with an unbiased target draw.
    """

    prompt_task = "numberline"
    action_names = ("-", "+")

    def __init__(self, max_position: int = 5, compat: bool = False, **kwargs):
        self.max_position = check_int("max_position", max_position, 1, MAX_POSITION)
        self.compat = check_bool("compat", compat)
        super().__init__(**kwargs)
        self.action_space = spaces.Discrete(2)
        self.current = self.target = self.steps = self.wasted_moves = 0

    def _start_episode(self, options: dict[str, Any]) -> dict[str, Any]:
        m = self.max_position
        self.current = int(self.np_random.integers(m + 1))
        if self.compat:
            self.target = int(self.np_random.integers(m + 1))
            if self.target == self.current:
                self.target = (self.target + 1) % m
        else:
            self.target = int(self.np_random.integers(m))
            self.target += self.target >= self.current  # uniform over the positions != current
        self.steps = self.wasted_moves = 0
        return self._get_info()

    def _apply_action(self, action: int) -> Transition:
        before = abs(self.current - self.target)
        move = 1 if action == 1 else -1
        self.current = min(max(self.current + move, 0), self.max_position)
        after = abs(self.current - self.target)
        self.steps += 1
        terminated = after == 0
        reward = 1.0 if terminated else (-1.0 if after >= before else 0.0)
        self.wasted_moves += reward < 0
        truncated = not terminated and self.steps >= 2 * self.max_position
        return Transition(reward, terminated, truncated, self._get_info())

    def oracle_action(self) -> int:
        """The shortest path: ``+`` below the target, ``-`` above it."""
        return 1 if self.current < self.target else 0

    def _full_state(self) -> dict[str, Any]:
        return {"max_position": self.max_position, "target": self.target, "current": self.current}

    def _action_optimal(self, action: int, before: StateLabels) -> bool:
        """The move brought the current number closer to the target."""
        return abs(self.target - self.current) < abs(before.state["target"] - before.state["current"])

    def _get_info(self) -> dict[str, Any]:
        success = self.current == self.target and self.wasted_moves == 0
        return {"Target": self.target, "Current": self.current, "success": success, "wasted_moves": self.wasted_moves}

    def _text(self) -> str:
        return ""

    def _describe(self) -> str:
        return f"Target number: {self.target}. Current number: {self.current}"

    def _render_frame(self) -> np.ndarray:
        return to_frame(_layout(self.target, self.current), self.image_size)
