"""Module paths from before a move keep working for one version, warning the code that imports them."""

from __future__ import annotations

import re
import sys

import pytest

MOVED = {**{f"vlm_envs.{name}": f"vlm_envs.core.{name}"
            for name in ("spaces", "rendering", "labels", "registration", "arguments", "caching")},
         **{f"vlm_envs.{name}": f"vlm_envs.running.{name}" for name in ("wrappers", "agent_loop", "ray_pool")},
         **{f"vlm_envs.{name}": f"vlm_envs.tools.{name}" for name in ("play", "gallery")}}


@pytest.mark.parametrize("old, new", MOVED.items())
def test_an_old_path_warns_and_serves_the_new_module(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=re.escape(f"{old} has moved to {new}")) as record:
        __import__(old)
    assert sys.modules[old] is sys.modules[new]
    assert record[0].filename == __file__  # the warning points at the import, so vlm_envs' own use fails its tests


def test_old_paths_keep_their_names(monkeypatch):
    monkeypatch.delitem(sys.modules, "vlm_envs.spaces", raising=False)
    with pytest.warns(DeprecationWarning):
        from vlm_envs.spaces import _LiveTexts, text_space  # noqa: F401  (private names too)
    from vlm_envs.core import VLMEnv  # the old module vlm_envs.core is the new package: no warning

    assert VLMEnv.__module__ == "vlm_envs.core.env"
