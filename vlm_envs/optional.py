"""Optional dependencies: imported on first use; when missing, the error names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from gymnasium.error import DependencyNotInstalled


def missing_extra(extra: str, what: str, cause: ImportError | None = None, also: str = "") -> DependencyNotInstalled:
    """The error for ``what`` needing ``pip install "vlm-envs[extra]"`` (then the command ``also``, for a
    package an extra cannot carry, e.g. one to install with ``--no-deps``)."""
    detail = f" ({cause})" if cause is not None else ""
    then = f" && {also}" if also else ""
    return DependencyNotInstalled(f'{what} needs the "{extra}" extra: pip install "vlm-envs[{extra}]"{then}{detail}')


def require(module: str, extra: str, what: str) -> ModuleType:
    """``import module``, or raise :func:`missing_extra` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing_extra(extra, what, err) from err
