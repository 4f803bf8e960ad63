"""Observation spaces shared by every environment: ``Dict(image=Box, text=Text)``."""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils.shared_memory import read_from_shared_memory

from vlm_envs.core.arguments import check_int

# gymnasium's default Text charset is letters and digits only; prompts and game feedback also
# contain spaces, punctuation and newlines. Every character an env emits must be in here.
TEXT_CHARSET = frozenset(string.printable)


class EnvText(spaces.Text):
    """``spaces.Text`` whose async-vector shared memory is read live.

    gymnasium's ``AsyncVectorEnv`` (shared memory on, its default) reads a ``Text`` observation
    from shared memory once, at construction, so every later step returns stale text. This
    subclass registers a reader that decodes the current contents on access (see ``_LiveTexts``).
    """


class _LiveTexts(Sequence):
    """The texts in an ``AsyncVectorEnv`` shared buffer, decoded when read; copies are plain tuples."""

    def __init__(self, space: EnvText, shared_memory, n: int):
        self._space = space
        self._rows = np.frombuffer(shared_memory.get_obj(), dtype=np.int32).reshape(n, space.max_length)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self)[index]
        chars, pad = self._space.character_list, len(self._space.character_set)
        return "".join(chars[v] for v in self._rows[index] if v < pad)

    def __len__(self) -> int:
        return len(self._rows)

    def __deepcopy__(self, memo) -> tuple[str, ...]:
        return tuple(self)

    def __eq__(self, other) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    def __repr__(self) -> str:
        return repr(tuple(self))


@read_from_shared_memory.register(EnvText)
def _read_live_texts(space: EnvText, shared_memory, n: int = 1) -> _LiveTexts:
    return _LiveTexts(space, shared_memory, n)


def text_space(max_length: int) -> spaces.Text:
    """A ``Text`` space over printable ASCII (incl. whitespace) of at most ``max_length`` characters."""
    return EnvText(max_length=max_length, min_length=0, charset="".join(sorted(TEXT_CHARSET)))


def observation_space(image_size: tuple[int, int], max_text_length: int) -> spaces.Dict:
    """``Dict(image=Box(0, 255, (H, W, 3), uint8), text=Text(max_text_length))``."""
    height, width = image_size
    return spaces.Dict(
        {
            "image": spaces.Box(0, 255, (height, width, 3), dtype=np.uint8),
            "text": text_space(max_text_length),
        }
    )


MAX_IMAGE_SIDE = 2048
"""Largest frame side: a frame is rendered every step, and a 2048x2048 one is already 12 MiB raw; a
bigger one is a typo, or (from a remote client) an attempt to exhaust memory."""
MIN_IMAGE_SIDE = 16


def validate_image_size(image_size: object) -> tuple[int, int]:
    """Check an ``(height, width)`` pair of ints (a list from JSON is fine) and return it as a tuple."""
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise TypeError(f"image_size must be a (height, width) pair of ints, got {image_size!r}")
    height, width = (check_int(f"image_size[{i}]", side) for i, side in enumerate(image_size))
    if not (MIN_IMAGE_SIDE <= height <= MAX_IMAGE_SIDE and MIN_IMAGE_SIDE <= width <= MAX_IMAGE_SIDE):
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} and at most "
                         f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} (a frame is rendered per step), got {image_size!r}")
    return height, width
