"""Module paths from before a move keep working for one version, warning the code that imports them."""

from __future__ import annotations

import re
import sys

import pytest

from tests.utils import MOVED_MODULES


@pytest.mark.parametrize("old, new", MOVED_MODULES.items())
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
