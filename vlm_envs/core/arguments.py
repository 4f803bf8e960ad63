"""Checks of constructor arguments, and the mark of the arguments that name files on the server.

Every env checks its arguments before any other work, so a bad value (from a config file, the
command line or a remote client's JSON) is a ``TypeError`` (wrong type) or ``ValueError`` (out of
range) whose message names the argument, never a crash deep in the rules or a silent cast
(``int(1.7)``, ``bool("no")``).
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Any, Union, get_args

import numpy as np

SERVER_PATH = "server path"
ServerPath = Annotated[Union[str, os.PathLike], SERVER_PATH]
"""The annotation of an argument that names a file or folder of the machine the env runs on
(``card_art``, ``game_dir``; ``Sequence[ServerPath]`` for ``game_files``). An env server lets only
its own configuration set these: :func:`vlm_envs.core.registration.path_arguments` finds them."""


def names_server_path(annotation: Any) -> bool:
    """Whether a (resolved) annotation is, or contains, :data:`ServerPath`."""
    if SERVER_PATH in getattr(annotation, "__metadata__", ()):
        return True
    return any(names_server_path(arg) for arg in get_args(annotation))


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; floats and bools are refused, not truncated."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if low is not None and high is not None else (
            f"at least {low}" if low is not None else f"at most {high}")
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def check_finite(name: str, value: Any) -> float:
    """``value`` as a finite float (NaN and infinities would poison every return they enter)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_path(name: str, value: Any) -> str:
    """A path argument as a string (``str`` or ``os.PathLike``)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")
    return os.fspath(value)


def check_paths(name: str, value: Any) -> list[str]:
    """A list of paths; one string is refused (it would be read as one path per character)."""
    if isinstance(value, (str, os.PathLike)) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of paths, got {type(value).__name__}")
    return [check_path(f"{name}[{i}]", path) for i, path in enumerate(value)]
