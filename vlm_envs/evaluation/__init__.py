"""Evaluation you can cite: frozen episode manifests, any policy, result cards with intervals.

::

    from vlm_envs.evaluation import evaluate, load_manifest

    card = evaluate("cards-v0", "oracle", num_envs=8, out="results.json")
    card["summary"]["per_env"]["gym_cards/Points24-v0"]["wilson_95"]

or ``python -m vlm_envs evaluate --manifest cards-v0 --policy oracle --num-envs 8 --out results.json``.
See :mod:`vlm_envs.evaluation.manifests` (what is played), :mod:`vlm_envs.evaluation.policies`
(who plays; :mod:`vlm_envs.evaluation.registry` builds them by name), :mod:`vlm_envs.evaluation.runner`
(why results do not depend on ``num_envs``) and :mod:`vlm_envs.evaluation.card` (what comes out). Only gymnasium, numpy and pillow are imported.
"""

from vlm_envs.evaluation.card import format_table, markdown, wilson_interval
from vlm_envs.evaluation.evaluate import check_out, evaluate
from vlm_envs.evaluation.manifests import Episode, Manifest, load_manifest, manifest_names, seeds_manifest
from vlm_envs.evaluation.policies import Reply, Request
from vlm_envs.evaluation.registry import make_policy, policy_kinds, register_policy
from vlm_envs.evaluation.runner import SetupError, Settings

__all__ = [
    "Episode", "Manifest", "Reply", "Request", "SetupError", "Settings", "check_out", "evaluate", "format_table",
    "load_manifest", "make_policy", "manifest_names", "markdown", "policy_kinds", "register_policy", "seeds_manifest",
    "wilson_interval",
]
