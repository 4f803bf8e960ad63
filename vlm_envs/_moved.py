"""Old module paths that keep working for one version after a move, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys
import warnings


def moved_module(old: str, new: str) -> None:
    """Serve the module being imported as ``old`` by the module ``new`` (the same object, so private
    names, monkeypatching and pickles made before the move keep working), and warn the importer."""
    warnings.warn(f"{old} has moved to {new}: import it from there ({old} goes in the next version)",
                  DeprecationWarning, stacklevel=3)  # 3: the line that imports the old path
    sys.modules[old] = importlib.import_module(new)


def moved_names(old: str, homes: dict[str, str]):
    """A module ``__getattr__`` for module ``old`` serving each name of ``homes`` (moved out of ``old``) from its
    new module ``homes[name]`` (the same object), with a warning to the code that reads it."""

    def __getattr__(name: str):
        if name not in homes:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(f"{old}.{name} has moved to {homes[name]}.{name}: import it from there "
                      f"({old}.{name} goes in the next version)", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(homes[name]), name)

    return __getattr__
