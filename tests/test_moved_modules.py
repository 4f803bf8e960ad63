"""Module paths from before a move keep working for one version, warning the code that imports them."""

from __future__ import annotations

import importlib
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


MOVED_NAMES = [
    *(("vlm_envs.evaluation.policies", name, "vlm_envs.evaluation.registry") for name in ("make_policy", "SCRIPTED_POLICIES")),
    *(("vlm_envs.alfworld_wrap.generate", name, "vlm_envs.alfworld_wrap.scenes")
      for name in ("build_game", "check_game", "load_scene", "GameRejected", "Scene", "GENERATOR_VERSION")),
    *(("vlm_envs.alfworld_wrap.generate", name, "vlm_envs.alfworld_wrap.official")
      for name in ("read_digests", "write_digests", "digest_mismatches", "OFFICIAL_TRAIN_DIGESTS")),
]


@pytest.mark.parametrize("old, name, new", MOVED_NAMES)
def test_a_moved_name_warns_and_is_the_same_object(old, name, new):
    module, home = importlib.import_module(old), importlib.import_module(new)
    with pytest.warns(DeprecationWarning, match=re.escape(f"{old}.{name} has moved to {new}.{name}")) as record:
        value = getattr(module, name)
    assert value is getattr(home, name)
    assert record[0].filename == __file__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope


def test_the_hf_policy_of_the_old_path_warns_and_comes_through_the_registry(monkeypatch):
    from vlm_envs.evaluation import hf_policy, registry

    monkeypatch.setattr(registry, "_registered", {})
    def factory(target):  # stands in for the trainer's HFPolicy, which the train extra registers
        return target

    registry.register_policy("hf", factory)
    with pytest.warns(DeprecationWarning, match="HFPolicy has moved to baselines.vlm_ppo.hf_policy"):
        from vlm_envs.evaluation.hf_policy import HFPolicy
    assert HFPolicy is factory
    with pytest.raises(AttributeError):
        hf_policy.Encoder
