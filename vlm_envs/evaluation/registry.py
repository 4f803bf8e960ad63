"""Policy kinds: ``make_policy("KIND:TARGET")`` for the kinds built in here and those another package adds.

=====================  =========================================================================
``oracle``             the env's expert (``env.unwrapped.oracle_action()``), written as model text
``random``             a uniformly random action (card games) or admissible command (ALFWorld)
``openai:URL``         an OpenAI-compatible chat-completions server
                       (:mod:`vlm_envs.evaluation.openai_policy`)
``hf:PATH_OR_ID``      an image-text-to-text checkpoint through the trainer's policy code
                       (:mod:`baselines.vlm_ppo.hf_policy`, with the ``train`` extra)
=====================  =========================================================================

A kind ``K`` is a factory ``factory(target, **options) -> Policy``, found in this order:

1. registered in this process: ``register_policy("K", factory)`` (a plugin module registers its
   kind when it is imported);
2. built in: an ``importlib.metadata.EntryPoint`` value (``"module:attribute"``) below;
3. installed: an entry point named ``K`` in the group ``vlm_envs.policies`` of any installed
   distribution. This is how ``hf:`` is found without vlm_envs importing the trainer: this
   project's ``setup.cfg`` declares ``hf = baselines.vlm_ppo.hf_policy:HFPolicy``, and pip writes
   it into the install's metadata (an editable install made before the entry point existed
   needs ``pip install -e .`` again).

Entry points are only loaded when their kind is asked for, so ``import vlm_envs.evaluation``
stays light.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable

from gymnasium.error import DependencyNotInstalled

from vlm_envs.evaluation.policies import OraclePolicy, Policy, RandomPolicy

ENTRY_POINT_GROUP = "vlm_envs.policies"
SCRIPTED_POLICIES = ("oracle", "random")
PolicyFactory = Callable[..., Policy]

_BUILT_IN = {"openai": "vlm_envs.evaluation.openai_policy:OpenAIPolicy"}
# Kinds that another part of this project provides, and the extra that brings them.
_EXTRA_OF_KIND = {"hf": "train"}
_registered: dict[str, PolicyFactory] = {}


def register_policy(kind: str, factory: PolicyFactory) -> None:
    """Make ``make_policy("KIND:TARGET", **options)`` return ``factory(TARGET, **options)``."""
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ValueError(f"kind must be a name such as 'hf', got {kind!r}")
    if kind in SCRIPTED_POLICIES:
        raise ValueError(f"{kind!r} is a scripted policy; choose another kind")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {factory!r}")
    if _registered.get(kind, factory) is not factory:
        raise ValueError(f"policy kind {kind!r} is already registered to {_registered[kind]!r}")
    _registered[kind] = factory


def policy_kinds() -> list[str]:
    """Every kind ``make_policy`` can build now (scripted, registered, built in, installed)."""
    installed = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return [*SCRIPTED_POLICIES, *sorted(set(_registered) | set(_BUILT_IN) | installed)]


def make_policy(spec: str, **options: Any) -> Policy:
    """The policy named by ``spec`` (``oracle``, ``random`` or ``KIND:TARGET``); ``options`` go to the kind's factory."""
    if spec == "oracle":
        return OraclePolicy()
    if spec == "random":
        return RandomPolicy()
    kind, _, target = spec.partition(":")
    if not target:
        raise ValueError(f"unknown policy {spec!r}; use oracle, random or KIND:TARGET with a kind of {policy_kinds()[2:]}")
    return policy_factory(kind)(target, **options)


def policy_factory(kind: str) -> PolicyFactory:
    """The factory of ``kind`` (see the module docstring for where it is looked up)."""
    if kind not in _registered:
        if kind in _BUILT_IN:
            found = [EntryPoint(kind, _BUILT_IN[kind], ENTRY_POINT_GROUP)]
        else:
            found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
        if found:
            register_policy(kind, found[0].load())
    if kind in _registered:
        return _registered[kind]
    if kind in _EXTRA_OF_KIND:
        extra = _EXTRA_OF_KIND[kind]
        raise DependencyNotInstalled(f'the {kind}: policy needs the "{extra}" extra: pip install "vlm-envs[{extra}]" '
                                     f'(in a source checkout, pip install -e ".[{extra}]", which also declares the '
                                     f'{kind}: entry point)')
    raise ValueError(f"unknown policy kind {kind!r}; use oracle, random or KIND:TARGET with a kind of {policy_kinds()[2:]}")
