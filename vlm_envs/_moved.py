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
