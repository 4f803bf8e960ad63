"""The ``hf:PATH`` policy with the embedded tiny LLaVA: greedy and sampled, independent of num_envs."""

from __future__ import annotations

import pytest

import baselines.vlm_ppo.hf_policy  # noqa: F401  (registers hf:, also where the install predates its entry point)
from baselines.vlm_ppo.tiny import build_tiny_llava
from vlm_envs.__main__ import main
from vlm_envs.evaluation import Manifest, evaluate, load_manifest, make_policy


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny") / "model"))


def _manifest(n: int = 3) -> Manifest:
    smoke = load_manifest("smoke-v0").episodes
    return Manifest("tiny-hf", (smoke[9], smoke[3], smoke[10])[:n]).with_hash()  # Blackjack, EZPoints: short episodes


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_hf_policy_answers_are_reproducible_and_batch_independent(tiny_model, temperature):
    policy = make_policy(f"hf:{tiny_model}", temperature=temperature, max_new_tokens=12)
    assert policy.describe() == {"name": "hf", "model": tiny_model, "temperature": temperature, "max_new_tokens": 12,
                                 "conv_template": "llava_v1", "image_mode": "native",  # as the trainer wraps LLaVA
                                 "dtype": "float32", "device": "cpu"}
    one = evaluate(_manifest(), policy, num_envs=1)
    three = evaluate(_manifest(), policy, num_envs=3, schedule_seed=2)  # other batches, other order
    assert one["episodes"] == three["episodes"]
    assert all(r["length"] >= 1 for r in one["episodes"])
    policy.close()


def test_sampling_differs_from_greedy_somewhere(tiny_model):
    from vlm_envs.evaluation import Request

    import numpy as np

    requests = [Request(0, 1, step, "Say something", np.zeros((300, 300, 3), np.uint8), ("-", "+")) for step in range(4)]
    greedy = make_policy(f"hf:{tiny_model}", max_new_tokens=8).act(requests)
    sampled = make_policy(f"hf:{tiny_model}", temperature=1.0, max_new_tokens=8).act(requests)
    assert len({r.text for r in greedy}) == 1  # greedy: the same input, the same answer
    assert len({r.text for r in sampled}) > 1  # each step has its own sampling seed


def test_cli_with_hf_policy(tiny_model, tmp_path, capsys):
    manifest = tmp_path / "m.json"
    manifest.write_text(_manifest(1).to_json())
    assert main(["evaluate", "--manifest", str(manifest), "--policy", f"hf:{tiny_model}", "--max-new-tokens", "8",
                 "--out", str(tmp_path / "r.json")]) == 0
    assert tiny_model in capsys.readouterr().out


@pytest.mark.parametrize("family", ["qwen2_vl", "gemma3"])
def test_hf_policy_with_a_chat_template_family(tmp_path, family):
    """Families other than LLaVA go through the processor's chat template, as the trainer encodes them."""
    from tests.tiny_families import build_tiny

    path = str(build_tiny(family, tmp_path / family))
    policy = make_policy(f"hf:{path}", max_new_tokens=8)
    assert policy.describe()["conv_template"] == "chat_template"
    one = evaluate(_manifest(2), policy, num_envs=1)
    two = evaluate(_manifest(2), policy, num_envs=2, schedule_seed=1)
    assert one["episodes"] == two["episodes"] and all(r["length"] >= 1 for r in one["episodes"])
    policy.close()
