"""Import OpenEnv for the server and the client, without its web UI."""

from __future__ import annotations

import sys

from vlm_envs.optional import require


def import_openenv(what: str) -> None:
    """``import openenv.core`` (or say which extra to install), skipping its Gradio web UI.

    ``openenv.core`` imports its optional Gradio playground at import time when Gradio is
    installed (openenv-core's own dependencies install it): about two thirds of the import time,
    for a UI neither the server nor the client uses. OpenEnv treats a missing Gradio as "no web
    UI", so Gradio is hidden for that one import and visible again afterwards; a process that
    imported Gradio or OpenEnv already is left as it is.
    """
    if "openenv.core" in sys.modules:
        return
    hide = "gradio" not in sys.modules
    if hide:
        sys.modules["gradio"] = None  # makes `import gradio` raise ModuleNotFoundError
    try:
        require("openenv.core", "serve", what)
    finally:
        if hide:
            del sys.modules["gradio"]
