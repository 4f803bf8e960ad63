"""Old module paths that keep working for one version, each access warning with the new path."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable


def moved_module(old: str, new: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old``, whose names now live in ``new``: it warns, then forwards."""

    def __getattr__(name: str) -> Any:
        value = getattr(importlib.import_module(new), name)
        warnings.warn(f"{old} moved to {new}: import {name} from {new} ({old} goes in the next version)",
                      DeprecationWarning, stacklevel=2)
        return value

    return __getattr__
