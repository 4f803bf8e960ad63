"""The PPO trainer on every image-text-to-text family, through tiny random checkpoints saved and
reloaded with ``from_pretrained`` (the path a Hub checkpoint takes): exactness, image modes,
sampling config, λ boundary, SFT targets, checkpoints, vectorization modes, multi-process."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.vlm_ppo.algo import ppo_losses
from baselines.vlm_ppo.config import Config
from baselines.vlm_ppo.encoding import Encoder
from baselines.vlm_ppo.policy import (
    ActorCritic,
    action_boundary,
    load_policy,
    trainable_vision_parameters,
)
from tests.tiny_families import (
    CONV_TEMPLATES,
    FAMILIES,
    LLAVA_NEXT_7B_GEOMETRY,
    build_metaspace_tokenizer,
    build_tiny,
)
from tests.utils import checkpoint_copy, vectorization_server
from tests.utils import family_config as _config
from vlm_envs.text import build_prompt

TEMPLATE = {**CONV_TEMPLATES, "smollm2-vlm": "chat_template"}
# fp32 rounding grows with width and depth: SmolLM2's 576-wide head and 30 layers move log-probs by up
# to ~1.3e-5 between the cached rollout, the padded re-scoring and the single forward. With the body
# in float64 the re-scoring equals the single forward exactly, and with the head in float64 too the
# rollout equals it within 2e-6; another image, or one extra prompt token, moves them by 0.8 or more.
EXACTNESS_TOLERANCE = {"smollm2-vlm": 5e-5}


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    """One torch thread for every test here."""


def _policy(path, family, temperature=0.7, **load):
    processor, vlm = load_policy(str(path), **load)
    encoder = Encoder(processor, vlm.config, TEMPLATE[family])
    return ActorCritic(vlm, encoder, temperature=temperature, thought_coef=0.5).eval()


def _frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (300, 300, 3), dtype=np.uint8) for _ in range(n)]


def canonical_logprobs(policy, prompt: str, image, answer, temperature):
    """The model's own forward on the processor's outputs for ONE sample, no positions given."""
    processor, vlm = policy.encoder.processor, policy.vlm
    from PIL import Image

    inputs = processor(text=[policy.encoder.render(prompt)], images=[Image.fromarray(image)], return_tensors="pt",
                       add_special_tokens=policy.encoder.conv_template != "chat_template")  # templates write BOS
    p = inputs["input_ids"].shape[1]
    extra = torch.tensor([answer])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in inputs:
            inputs[key] = torch.cat([inputs[key], torch.zeros_like(extra)], 1)
    with torch.no_grad():
        logits = vlm(**inputs).logits[0, p - 1:p - 1 + len(answer)].float() / temperature
    logits = logits.index_fill(-1, policy.suppress_ids, float("-inf"))
    return torch.log_softmax(logits, -1)[torch.arange(len(answer)), torch.tensor(answer)]


# --- (a) exactness: rollout == re-scoring == canonical forward, every family ------------------
@pytest.mark.parametrize("family", [*FAMILIES, "smollm2-vlm"])
def test_rollout_rescoring_and_canonical_logprobs_agree(request, family_path, family):
    """Every tiny family, and the pretrained SmolLM2 VLM (a 30-layer model, built once per session)."""
    path = request.getfixturevalue("smollm2_vlm").path if family == "smollm2-vlm" else family_path(family)
    policy = _policy(path, family, temperature=1.0)
    prompts = [build_prompt("points24", f) for f in ("", "10+", "(3+5)*")]
    images = _frames(3)
    encoded = policy.encoder.encode(prompts, images)
    torch.manual_seed(0)
    answers, scores = policy.generate(encoded, greedy=False, max_new_tokens=12, return_scores=True)
    with torch.no_grad():
        rescored = policy(encoded, answers, [None] * 3).token_logprobs
    sampled = torch.log_softmax(torch.stack(scores, 1).float(), -1)
    worst = 0.0
    for i, a in enumerate(answers):
        assert len(a) > 3
        from_rollout = sampled[i, torch.arange(len(a)), torch.tensor(a)]
        canonical = canonical_logprobs(policy, prompts[i], images[i], a, 1.0)
        worst = max(worst, float((from_rollout - rescored[i, :len(a)]).abs().max()),
                    float((canonical - rescored[i, :len(a)]).abs().max()))
    print(f"\nEXACTNESS {family}: max |delta log p| = {worst:.2e}")
    assert worst < EXACTNESS_TOLERANCE.get(family, 1e-5)


def test_sampled_logprobs_are_the_distribution_sampled(family_path):
    """generate's own log-probs: log_softmax of the processed scores it sampled from, at the sampled token."""
    policy = _policy(family_path("qwen2_vl"), "qwen2_vl", temperature=0.5)
    encoded = policy.encoder.encode([build_prompt("numberline", "")] * 2, _frames(2))
    torch.manual_seed(0)
    answers, logprobs, scores = policy.generate(encoded, greedy=False, max_new_tokens=10, with_logprobs=True,
                                                return_scores=True)
    for i, a in enumerate(answers):
        drawn_from = torch.stack([torch.log_softmax(s[i], -1) for s in scores[:len(a)]])
        assert logprobs[i].dtype == torch.float32 and len(logprobs[i]) == len(a)
        assert torch.equal(logprobs[i], drawn_from[torch.arange(len(a)), torch.tensor(a)])
    with pytest.raises(ValueError, match="with_logprobs needs sampling"):
        policy.generate(encoded, greedy=True, max_new_tokens=4, with_logprobs=True)


TOWER = {"llava": "model.vision_tower", "llava_next": "model.vision_tower", "qwen2_vl": "model.visual",
         "qwen2_5_vl": "model.visual", "qwen3_vl": "model.visual", "gemma3": "model.vision_tower",
         "smolvlm": "model.vision_model"}


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_tower_frozen_by_structure(family_path, family):
    from baselines.vlm_ppo.encoding import vision_tower_of

    processor, vlm = load_policy(str(family_path(family)))
    assert vision_tower_of(vlm)[0] == TOWER[family]
    assert not any(p.requires_grad for n, p in vlm.named_parameters() if n.startswith(TOWER[family] + "."))
    assert trainable_vision_parameters(vlm) == []
    assert any(p.requires_grad for p in vlm.parameters())
    _, lora = load_policy(str(family_path(family)), lora_r=4, lora_alpha=8)
    assert trainable_vision_parameters(lora) == []
    assert any("lora_" in n for n, p in lora.named_parameters() if p.requires_grad)


def test_wrong_template_names_the_right_one(family_path):
    processor, vlm = load_policy(str(family_path("qwen2_vl")))
    with pytest.raises(ValueError, match="use conv_template='chat_template'"):
        Encoder(processor, vlm.config, "llava_v1")
    with pytest.raises(ValueError, match="image_mode='native' only"):
        Encoder(processor, vlm.config, "chat_template", image_mode="reference")


# --- (b) a checkpoint's generation_config cannot reshape sampling ----------------------------
def test_checkpoint_generation_config_does_not_leak(tmp_path):
    path = build_tiny("llava", tmp_path / "m")
    config = json.loads((path / "generation_config.json").read_text())
    # repetition_penalty etc. are overridden explicitly; min_p and sequence_bias are left None in the
    # trainer's config, so only hiding the checkpoint's generation_config keeps them out
    config.update(repetition_penalty=1.8, no_repeat_ngram_size=2, top_k=3, temperature=5.0, min_p=0.5,
                  sequence_bias=[[[5], 8.0], [[6], -8.0]])
    (path / "generation_config.json").write_text(json.dumps(config))
    policy = _policy(path, "llava", temperature=1.0)
    assert policy.vlm.generation_config.repetition_penalty == 1.8  # the checkpoint really ships it
    encoded = policy.encoder.encode([build_prompt("numberline", "")] * 2, _frames(2))
    torch.manual_seed(1)
    answers, scores = policy.generate(encoded, greedy=False, max_new_tokens=24, return_scores=True)
    with torch.no_grad():
        rescored = policy(encoded, answers, [None, None]).token_logprobs
    sampled = torch.log_softmax(torch.stack(scores, 1).float(), -1)
    for i, a in enumerate(answers):
        assert (sampled[i, torch.arange(len(a)), torch.tensor(a)] - rescored[i, :len(a)]).abs().max() < 1e-5
        assert torch.isfinite(sampled[i, :len(a)]).sum() > 3 * len(a)  # no top-k cut: the full vocabulary


# --- (c) epoch-0 ratio is exactly 1, fp32 and bf16 ------------------------------------------
@pytest.mark.parametrize("dtype,lora_r", [("float32", 0), ("bfloat16", 4)])
def test_epoch0_ratio_is_one(tmp_path, family_path, dtype, lora_r):
    """With LoRA dropout configured and gradient checkpointing on: a pass with dropout active, or in
    another mode than the behaviour scoring, would move the ratio off 1."""
    from baselines.vlm_ppo.train import train_ppo

    metrics = train_ppo(_config(tmp_path, family_path("llava"), dtype=dtype, lora_r=lora_r, lora_alpha=8,
                                lora_dropout=0.5, gradient_checkpointing=True, num_steps=3, num_updates=2))
    # (the second update's: once LoRA's B has moved off 0, its dropout would show)
    assert metrics["charts/epoch0_ratio_dev"] == 0.0
    assert metrics["losses/ratio_dev"] > 0.0  # after optimizer steps the policy really moved


@pytest.fixture(scope="module")
def wide_llava(tmp_path_factory):
    """The tiny LLaVA with its LM head scaled so that its logits span a 7B-like 30 units."""
    return build_tiny("llava", tmp_path_factory.mktemp("wide") / "model", logit_span=30.0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_behaviour_gap_and_truncated_importance_sampling(tmp_path, wide_llava, monkeypatch, dtype):
    """bf16: the sampler's log-probs differ from the scored ones, and the first mini-batch's policy
    loss is the clipped loss weighted by min(exp(scored - sampled), 2) (TIS on by default).
    fp32: the gap is below 1e-4 and TIS is off by default."""
    from baselines.vlm_ppo import train

    calls, rollouts, epochs = [], [], []

    def recording(name, record):
        original = getattr(train, name)

        def wrapper(*args, **kwargs):
            out = original(*args, **kwargs)
            record(args, out)
            return out
        monkeypatch.setattr(train, name, wrapper)

    recording("ppo_losses", lambda args, out: calls.append((args, out)))
    recording("score_rollout", lambda args, out: rollouts.append(args[1]))
    recording("minibatches", lambda args, out: epochs.append(out))
    metrics = train.train_ppo(_config(tmp_path, wide_llava, dtype=dtype, lora_r=4, lora_alpha=8, temperature=0.2,
                                      ppo_epochs=1, num_envs=4, num_steps=2, minibatch_size=4, max_new_tokens=24))
    rollout, first = rollouts[0], epochs[0][0]
    args, out = calls[0]
    new_logp, old_logp, adv, valid, is_weight = args[0], args[1], args[2], args[3], args[9]
    assert torch.equal(new_logp.detach(), old_logp)  # before the first step: π_old is the scored policy
    gaps = rollout.behaviour_gaps()
    assert len(gaps) == 8 and metrics["charts/behaviour_logp_gap_max"] == pytest.approx(float(gaps.max()))
    if dtype == "float32":
        assert is_weight is None and metrics["charts/behaviour_logp_gap_max"] < 1e-4
        return
    assert metrics["charts/behaviour_logp_gap"] > 0
    scored, sampled = rollout.logprobs.flatten()[first], rollout.sampled_logprobs.flatten()[first]
    weight = torch.exp(scored - sampled).clamp(max=2.0)
    ratio = torch.exp(new_logp.detach() - old_logp)
    unweighted = -torch.min(ratio * adv, ratio.clamp(0.9, 1.1) * adv)
    assert valid.all() and not torch.allclose(weight, torch.ones(4), atol=1e-3)
    loss = float(out["policy_loss"].detach())
    assert loss == pytest.approx(float((weight * unweighted).mean()), rel=1e-6, abs=1e-9)
    assert abs(loss - float(unweighted.mean())) > 1e-4


def test_bf16_full_finetuning_refused(tmp_path, family_path):
    from baselines.vlm_ppo.train import train_ppo

    with pytest.raises(ValueError, match="no fp32 master copy"):
        train_ppo(_config(tmp_path, family_path("llava"), dtype="bfloat16", lora_r=0))


# --- (d) the boundary on a sentencepiece (Metaspace) tokenizer --------------------------------
def test_action_boundary_on_metaspace_tokenizer():
    tokenizer = build_metaspace_tokenizer()
    vocab = tokenizer.get_vocab()
    assert "▁\"" in vocab and "\"," in vocab
    text = '{"thoughts": "I should hit.", "action": "hit"}'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    k = action_boundary(tokenizer, ids)
    before = tokenizer.decode(ids[:k], skip_special_tokens=True)
    through = tokenizer.decode(ids[:k + 1], skip_special_tokens=True)
    quote = text.rfind('"action"')
    assert len(before) <= quote < len(through)  # token k holds the key's opening quote
    assert through[quote] == '"' and tokenizer.convert_ids_to_tokens(ids)[k].lstrip("▁").startswith('"')


# --- (e) SFT targets are the in-context tokens -------------------------------------------------
@pytest.mark.parametrize("family", ["llava", "gemma3", "qwen2_vl"])
def test_sft_targets_equal_in_context_tokens(family_path, family):
    policy = _policy(family_path(family), family)
    tokenizer = policy.encoder.tokenizer
    prompt_text = policy.encoder.render(build_prompt("blackjack", ""))
    answer = '{"thoughts": "I have 13 points.", "action": "hit"}'
    target = policy.encoder.answer_ids(prompt_text, answer)
    joint = tokenizer(prompt_text + answer, add_special_tokens=False)["input_ids"]
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    # after the prompt's own tokens, the targets spell exactly the answer ...
    assert tokenizer.decode(prompt + target[:-1]) == tokenizer.decode(prompt) + answer
    # ... and are the joint tokenisation's where the join keeps the prompt's tokens
    if joint[:len(prompt)] == prompt:
        assert target[:-1] == joint[len(prompt):]
    assert target[-1] == tokenizer.eos_token_id


# --- (f) the ratio guard with a negative advantage --------------------------------------------
def test_ratio_guard_with_negative_advantage():
    old = torch.zeros(2)
    adv = torch.tensor([-1.0, -2.0])
    valid = torch.ones(2, dtype=torch.bool)
    v = torch.zeros(2)
    new = torch.tensor([3.0, 0.0])  # ratio e^3 > 10 triggers the guard
    guarded = ppo_losses(new, old, adv, valid, v, v, v, clip=0.1, ratio_guard=10.0)
    assert guarded["policy_loss"].item() == pytest.approx(-(1.1 * -1.0 + 1.0 * -2.0) / 2)
    plain = ppo_losses(new, old, adv, valid, v, v, v, clip=0.1, ratio_guard=0.0)
    assert plain["policy_loss"].item() == pytest.approx(-(np.exp(3.0) * -1.0 + 1.0 * -2.0) / 2)


# --- image modes --------------------------------------------------------------------------------
def test_reference_image_mode_gives_576_tokens_on_llava_next_7b_geometry(tmp_path):
    path = build_tiny("llava_next", tmp_path / "m", **LLAVA_NEXT_7B_GEOMETRY)
    processor, vlm = load_policy(str(path))
    frame = _frames(1)
    native = Encoder(processor, vlm.config, "llava_v1", "native").encode(["x"], frame)[0]
    reference = Encoder(processor, vlm.config, "llava_v1", "reference")
    encoded = reference.encode(["x"], frame)[0]
    image_id = vlm.config.image_token_id
    assert int((encoded.input_ids == image_id).sum()) == 576
    assert int((native.input_ids == image_id).sum()) > 576  # AnyRes tiles + newlines
    assert tuple(encoded.images["pixel_values"].shape) == (1, 3, 336, 336)
    policy = ActorCritic(vlm, reference, temperature=1.0, thought_coef=0.5).eval()
    torch.manual_seed(0)
    answers, scores = policy.generate([encoded], greedy=False, max_new_tokens=6, return_scores=True)
    with torch.no_grad():
        rescored = policy([encoded], answers, [None]).token_logprobs[0, :len(answers[0])]
    sampled = torch.log_softmax(torch.stack(scores, 1).float(), -1)[0, torch.arange(len(answers[0])), torch.tensor(answers[0])]
    assert (sampled - rescored).abs().max() < 1e-5


# --- every family: SFT step, PPO update, greedy eval, resume ------------------------------------
def _weights(path):
    from safetensors.torch import load_file

    return {k: v for f in sorted(Path(path).glob("*.safetensors")) for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_sft_ppo_eval_resume(tmp_path, family_path, family):
    from baselines.vlm_ppo.sft import train_sft
    from baselines.vlm_ppo.train import train_ppo

    path = family_path(family)
    cfg = _config(tmp_path / "a", path, family, num_updates=2, eval_every=2, sft_samples=8, sft_steps=2,
                  sft_batch_size=4, sft_lr=1e-3)
    sft_dir = train_sft(cfg, str(path))
    assert json.loads((sft_dir / "sft_metrics.json").read_text())["exact"] >= 0.0
    assert any(not torch.equal(a, b) for a, b in zip(_weights(path).values(), _weights(sft_dir).values()))
    straight = train_ppo(cfg)
    assert 0.0 <= straight["eval/greedy_success"] <= 1.0 and straight["eval/greedy_episodes"] == 2
    resumed_dir = checkpoint_copy(tmp_path / "a", tmp_path / "b")
    train_ppo(dataclasses.replace(cfg, output_dir=str(resumed_dir), resume=True))
    a = _weights(tmp_path / "a" / "checkpoints" / "update_00001" / "model")
    b = _weights(resumed_dir / "checkpoints" / "update_00001" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), family


# --- checkpoints: every vectorization mode, bit-identical; no code execution ---------------------
def _csv_rows(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def _metrics_rows(path):
    return [{k: v for k, v in r.items() if not k.endswith("_s") and k != "charts/tokens_per_s"} for r in _csv_rows(path)]


@pytest.fixture(scope="module")
def sync_blackjack_metrics(tmp_path_factory, family_path):
    """metrics.csv of the sync run that every vectorization mode must reproduce."""
    from baselines.vlm_ppo.train import train_ppo

    out = tmp_path_factory.mktemp("sync_reference")
    train_ppo(_config(out, family_path("llava"), env_id="gym_cards/Blackjack-v0", num_updates=3, num_steps=3))
    return _metrics_rows(out / "metrics.csv")


@pytest.mark.parametrize("vectorization", ["sync", "async", "ray", "remote"])
def test_resume_is_bit_identical_in_every_vectorization(tmp_path, family_path, vectorization, sync_blackjack_metrics):
    server = vectorization_server(vectorization, "gym_cards/Blackjack-v0")
    from baselines.vlm_ppo.train import train_ppo

    with server as url:
        _resume_and_compare(tmp_path, family_path, vectorization, url, train_ppo)
    assert _metrics_rows(tmp_path / "a" / "metrics.csv") == sync_blackjack_metrics  # same run in every mode


def _resume_and_compare(tmp_path, family_path, vectorization, url, train_ppo):
    cfg = _config(tmp_path / "a", family_path("llava"), env_id="gym_cards/Blackjack-v0", num_updates=3,
                  num_steps=3, vectorization=vectorization, env_url=url)
    train_ppo(cfg)
    state = json.loads((tmp_path / "a" / "checkpoints" / "update_00000" / "trainer_state_0.json").read_text())
    assert "envs" in state and all(isinstance(t, str) for r in state["envs"]["records"] for t in r)
    checkpoint_copy(tmp_path / "a", tmp_path / "b")
    train_ppo(dataclasses.replace(cfg, output_dir=str(tmp_path / "b"), resume=True))
    assert _metrics_rows(tmp_path / "a" / "metrics.csv") == _metrics_rows(tmp_path / "b" / "metrics.csv")
    a, b = (_weights(tmp_path / d / "checkpoints" / "update_00002" / "model") for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('VLM_PWNED', '/tmp/vlm_pwned')}",))


def test_crafted_checkpoint_does_not_execute_code(tmp_path, family_path, monkeypatch):
    from baselines.vlm_ppo.train import train_ppo

    cfg = _config(tmp_path, family_path("llava"))
    train_ppo(cfg)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("VLM_PWNED", str(marker))
    ckpt = tmp_path / "checkpoints" / "update_00000"
    (ckpt / "optimizer.pt").write_bytes(pickle.dumps({"state": _Exploit()}))
    with pytest.raises(ValueError, match="refused"):
        train_ppo(dataclasses.replace(cfg, resume=True, num_updates=2))
    assert not marker.exists()


# --- reproducibility and seed streams ------------------------------------------------------------
def test_same_seed_same_metrics(tmp_path, family_path):
    from baselines.vlm_ppo.train import train_ppo

    for d in "ab":
        train_ppo(_config(tmp_path / d, family_path("llava"), num_updates=2, eval_every=1, save_every=0))
    assert _metrics_rows(tmp_path / "a" / "metrics.csv") == _metrics_rows(tmp_path / "b" / "metrics.csv")


@pytest.mark.parametrize("seed", [0, 1, 10, 100_000, 2**31 - 1])
def test_train_and_eval_seeds_are_disjoint(seed):
    from baselines.vlm_ppo.envs import episode_seed
    from vlm_envs.evaluation.seeds import TRAIN_SEED_BASE, check_eval_seeds

    train = {episode_seed(seed, p, n, k) for p in range(2) for n in range(4) for k in range(50)}
    assert min(train) >= TRAIN_SEED_BASE and len(train) == 400
    check_eval_seeds(Config().eval_seed, 10_000)
    with pytest.raises(ValueError):
        check_eval_seeds(TRAIN_SEED_BASE - 5, 10)


# --- KL penalty to the initial policy ------------------------------------------------------------
def test_reference_logprobs_are_the_initial_model(family_path):
    """The KL reference (adapter switched off) equals the model loaded without LoRA, and differs
    from the current policy once the adapter has moved."""
    from baselines.vlm_ppo.rollout import Rollout, score_rollout

    policy = _policy(family_path("llava"), "llava", temperature=1.0, lora_r=4, lora_alpha=8)
    base = _policy(family_path("llava"), "llava", temperature=1.0)
    with torch.no_grad():
        for name, p in policy.vlm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    encoded = policy.encoder.encode([build_prompt("numberline", "")] * 2, _frames(2))
    torch.manual_seed(0)
    answers = policy.generate(encoded, greedy=False, max_new_tokens=8)
    rollout = Rollout(1, 2)
    rollout.prompts, rollout.answers, rollout.boundaries = encoded, answers, [None, None]
    score_rollout(policy, rollout, [[0, 1]], with_reference=True)
    with torch.no_grad():
        initial = base(encoded, answers, [None, None]).token_logprobs
        current = policy(encoded, answers, [None, None]).token_logprobs
    for i, a in enumerate(answers):
        assert torch.allclose(rollout.ref_token_logprobs[i], initial[i, :len(a)], atol=1e-5)
        assert not torch.allclose(rollout.ref_token_logprobs[i], current[i, :len(a)], atol=1e-3)


def test_kl_penalty_uses_the_adapter_off_model(tmp_path, family_path):
    from baselines.vlm_ppo.train import train_ppo

    metrics = train_ppo(_config(tmp_path, family_path("llava"), lora_r=4, lora_alpha=8, kl_coef=0.5, num_updates=2,
                                ppo_epochs=2))
    assert metrics["losses/kl"] > 0.0 and np.isfinite(metrics["losses/kl"])
    with pytest.raises(ValueError, match="needs LoRA"):
        train_ppo(_config(tmp_path / "x", family_path("llava"), kl_coef=0.1))


def test_accumulation_remainder_is_stepped_not_carried(tmp_path, family_path, monkeypatch):
    """3 mini-batches per epoch with 2 accumulated: 2 optimizer steps per epoch, no gradient left over;
    the shorter window is averaged over its own size. Accumulation goes through accelerate's state:
    only a window's last backward has ``sync_gradients`` set, which is where a DeepSpeed engine steps
    (before, it stayed set on every mini-batch: 3 DeepSpeed steps per epoch, not 2)."""
    from accelerate import Accelerator
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from baselines.vlm_ppo import train

    steps, leftovers, window_ends, weights, losses = [], [], [], [], []
    original = train.ppo_update

    def checking(run, *args):
        out = original(run, *args)
        leftovers.append(max((float(p.grad.abs().max()) for p in run.policy.parameters() if p.grad is not None),
                             default=0.0))
        return out

    backward, ppo_losses_ = Accelerator.backward, train.ppo_losses

    def recording_backward(self, loss, **kwargs):
        window_ends.append(bool(self.sync_gradients))
        weights.append(float(loss.detach()) / self.gradient_accumulation_steps)  # what reaches torch's backward
        return backward(self, loss, **kwargs)

    def recording_losses(*args, **kwargs):
        out = ppo_losses_(*args, **kwargs)
        losses.append(float((out["policy_loss"] + 0.5 * out["value_loss"]).detach()))
        return out

    monkeypatch.setattr(train, "ppo_update", checking)
    monkeypatch.setattr(Accelerator, "backward", recording_backward)
    monkeypatch.setattr(train, "ppo_losses", recording_losses)
    hook = register_optimizer_step_post_hook(lambda *_: steps.append(1))
    try:
        train.train_ppo(_config(tmp_path, family_path("llava"), num_envs=2, num_steps=3, minibatch_size=2,
                                grad_accum_steps=2, ppo_epochs=2, vf_coef=0.5))
    finally:
        hook.remove()
    assert len(steps) == 2 * 2 and leftovers == [0.0]
    assert window_ends == [False, True, True] * 2
    assert weights == pytest.approx([loss * w for loss, w in zip(losses, [0.5, 0.5, 1.0] * 2)], rel=1e-6)


# --- multi-process (accelerate, gloo on CPU) -----------------------------------------------------
def _launch(cfg: Config, *extra: str, processes: int = 2, deepspeed_config: dict | None = None
            ) -> tuple[list[dict], str]:
    """``tests/instrumented_ppo.py`` in ``processes`` real DDP processes (accelerate's launcher, torchrun
    underneath; ACCELERATE_USE_CPU selects gloo on CPU), or under DeepSpeed with ``deepspeed_config``;
    each process's counters, and stdout."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if deepspeed_config is None:
        backend = ["--multi_gpu"]
        env["ACCELERATE_USE_CPU"] = "true"
    else:
        (out / "deepspeed.json").write_text(json.dumps(deepspeed_config))
        backend = ["--use_deepspeed", "--deepspeed_config_file", str(out / "deepspeed.json")]
        env["DS_ACCELERATOR"] = "cpu"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *backend, "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "tests.instrumented_ppo", json.dumps(dataclasses.asdict(cfg)), str(out), *extra]
    # its own process group: processes stuck at a collective are killed with the launcher
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=Path(__file__).resolve().parents[2], start_new_session=True) as launcher:
        try:
            stdout, stderr = launcher.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            raise
    assert launcher.returncode == 0, stderr[-4000:]
    return [json.loads((out / f"process_{r}.json").read_text()) for r in range(processes)], stdout


def test_two_processes_train_evaluate_and_log_as_one(tmp_path, family_path):
    """Two DDP processes training the vision tower of a LLaVA whose ``vision_feature_layer`` is -2:
    its last layer and post-layernorm reach no loss and are frozen at setup (before, DDP stopped
    with "Expected to have finished reduction"). Each process steps once per accumulation window;
    both hold identical weights and play distinct env seeds; held-out episodes are split over the
    two and give exactly one process's numbers; logged training metrics cover both processes; and
    process 1, whose clock runs 1,000x fast, still follows process 0's decision on the time limit."""
    path = family_path("llava")
    cfg = _config(tmp_path / "run", path, env_id="gym_cards/Blackjack-v0", train_vision=True, num_steps=3,
                  num_updates=2, ppo_epochs=2, minibatch_size=2, grad_accum_steps=2, max_new_tokens=8,
                  eval_every=5, eval_sampled=True, eval_episodes=16, eval_greedy_episodes=16, time_limit_min=10.0)
    processes, stdout = _launch(cfg, "--fast-clock-on-rank", "1")
    out = Path(cfg.output_dir)
    # 3 mini-batches per epoch in windows of 2 and 1, 2 epochs, 2 updates
    for counts in processes:
        assert (counts["optimizer_steps"], counts["window_ends"], counts["backwards"]) == (8, 8, 12)
    assert "time limit" not in stdout  # both processes ran every update, as process 0 decided
    states = [json.loads((out / "checkpoints" / "update_00001" / f"trainer_state_{r}.json").read_text())
              for r in (0, 1)]
    first = json.loads((out / "checkpoints" / "update_00000" / "trainer_state_0.json").read_text())
    assert states[0]["weights_sha256"] == states[1]["weights_sha256"] != first["weights_sha256"]
    assert not set(states[0]["envs"]["seeds"]) & set(states[1]["envs"]["seeds"])
    before, after = _weights(path), _weights(out / "checkpoints" / "update_00001" / "model")
    tower = "vision_tower.encoder.layers"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(f"{tower}.0."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(f"{tower}.1.") or "post_layernorm" in k)
    assert "frozen 18 trainable parameters that no loss reaches" in stdout

    rows = {int(r["update"]): r for r in _csv_rows(out / "metrics.csv")}
    for update in (0, 1):
        local = [counts["local_metrics"][update] for counts in processes]
        row = {k: float(v) for k, v in rows[update].items() if v != ""}
        episodes = [m["charts/episodes_in_window"] for m in local]
        assert min(episodes) > 0 and row["charts/episodes_in_window"] == sum(episodes)
        assert row["charts/tokens_per_s"] == pytest.approx(sum(m["charts/tokens_per_s"] for m in local))
        assert row["charts/value_mean"] == pytest.approx(np.mean([m["charts/value_mean"] for m in local]))
        assert row["charts/train_success"] == pytest.approx(
            sum(m["charts/train_success"] * n for m, n in zip(local, episodes)) / sum(episodes))

    from baselines.vlm_ppo.evaluation import evaluate
    from baselines.vlm_ppo.train import build_policy

    policy = build_policy(cfg)
    for mode in ("greedy", "sampled"):
        alone = evaluate(cfg, policy, greedy=mode == "greedy")
        shared = {k: float(rows[-1][f"eval/{mode}_{k}"]) for k in alone}
        assert shared == alone, mode
    assert alone["episodes"] == 16 and shared["episodes"] == 16
    assert all(counts["eval_generates"] > 0 for counts in processes)  # the sampled batches were split


def test_two_processes_full_finetuning_in_reference_mode(tmp_path, family_path):
    """LLaVA-NeXT fully fine-tuned in reference mode (no newline tokens): ``image_newline`` reaches no
    loss and is frozen at setup; before, two DDP processes stopped at the first backward."""
    path = family_path("llava_next")
    cfg = _config(tmp_path / "run", path, "llava_next", image_mode="reference", lora_r=0, max_new_tokens=8)
    processes, stdout = _launch(cfg)
    assert [c["optimizer_steps"] for c in processes] == [2, 2]  # one window per epoch, 2 epochs
    assert "no loss reaches: vlm.model.image_newline" in stdout
    ckpt = Path(cfg.output_dir) / "checkpoints" / "update_00000"
    states = [json.loads((ckpt / f"trainer_state_{r}.json").read_text()) for r in (0, 1)]
    assert states[0]["weights_sha256"] == states[1]["weights_sha256"]


def test_two_processes_critic_free_leave_nothing_unused(tmp_path, family_path):
    """GiGPO in two DDP processes, each with one group of two envs: no value head exists, so no
    parameter is left out of a backward pass (a value head outside the loss would stop DDP at the
    first step); rollouts of whole episodes differ in size between the processes, yet both take
    the same number of backward passes; they stay in sync and their groups play distinct seeds."""
    cfg = _config(tmp_path / "run", family_path("llava"), env_id="gym_cards/Blackjack-v0", algo="gigpo",
                  group_size=2, num_updates=2, max_new_tokens=8)
    processes, stdout = _launch(cfg)
    sizes = [[m["charts/env_steps"] for m in c["local_metrics"]] for c in processes]
    assert sizes[0] != sizes[1]  # whole episodes: the two rollouts differ in size...
    # ...yet both take the fewer mini-batches (2 per epoch in one window), 2 epochs, 2 updates: before,
    # the larger took more backward passes than the other joined, and DDP waited for ever
    assert [(c["backwards"], c["optimizer_steps"]) for c in processes] == [(8, 4), (8, 4)]
    assert "no loss reaches" not in stdout
    ckpt = Path(cfg.output_dir) / "checkpoints" / "update_00001"
    states = [json.loads((ckpt / f"trainer_state_{r}.json").read_text()) for r in (0, 1)]
    assert states[0]["weights_sha256"] == states[1]["weights_sha256"] and not (ckpt / "value_head.safetensors").exists()
    seeds = [s["envs"]["seeds"] for s in states]
    assert seeds[0][0] == seeds[0][1] and seeds[1][0] == seeds[1][1] and seeds[0][0] != seeds[1][0]


def test_deepspeed_and_fsdp_are_refused_with_what_is_untested():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from baselines.vlm_ppo.train import check_parallelism

    for stage in (2, 3):
        deepspeed = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED,
                                    state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage)))
        with pytest.raises(ValueError, match=rf"DeepSpeed \(ZeRO-{stage}\) is not supported by this trainer: untested"):
            check_parallelism(deepspeed)
    with pytest.raises(ValueError, match="FSDP is not supported by this trainer: untested.*weights that generate"):
        check_parallelism(SimpleNamespace(distributed_type=DistributedType.FSDP))
    check_parallelism(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU))  # plain DDP runs


def test_deepspeed_engine_steps_once_per_window(tmp_path, family_path):
    """A real DeepSpeed ZeRO-2 engine (CPU, one process; the start-up refusal lifted to watch it):
    it steps where accelerate's ``sync_gradients`` marks a window's end, 8 times in 12 backward
    passes (3 mini-batches per epoch in windows of 2 and 1, 2 epochs, 2 updates). Before, the flag
    stayed set on every mini-batch and the engine stepped 12 times."""
    pytest.importorskip("deepspeed")
    cfg = _config(tmp_path / "run", family_path("llava"), num_steps=3, num_updates=2, max_new_tokens=8)
    config = {"train_micro_batch_size_per_gpu": cfg.minibatch_size, "gradient_accumulation_steps": "auto",
              "train_batch_size": "auto", "gradient_clipping": 1.0, "zero_optimization": {"stage": 2}}
    (counts,), _ = _launch(cfg, "--any-backend", processes=1, deepspeed_config=config)
    assert (counts["optimizer_steps"], counts["window_ends"], counts["backwards"]) == (8, 8, 12)


def test_deepspeed_launch_stops_at_start(tmp_path):
    """What ``accelerate launch --use_deepspeed`` sets up: the trainer stops before loading a model."""
    pytest.importorskip("deepspeed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_DEEPSPEED": "true",
           "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, "-m", "baselines.vlm_ppo", "ppo", "--output-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "DeepSpeed (ZeRO-3) is not supported by this trainer: untested" in done.stderr
    assert not (tmp_path / "tiny-base").exists()


# --- the GPU check, at tiny widths on the CPU ------------------------------------------------------
def run_gpu_check(names: set[str], *flags: str) -> dict[str, list[str]]:
    """``benchmarks/gpu_check.py --tiny FLAGS``: its table rows whose first cell is one of ``names``, by that cell."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--tiny", *flags], capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in out.stdout.splitlines() if line.startswith("| ")]
    return {row[0]: row[1:] for row in cells if row[0] in names}


def test_gpu_check_runs_at_tiny_widths():
    """``benchmarks/gpu_check.py --tiny``: the GPU check's own code (its two families, the paper preset,
    ``train_ppo`` in a child process) at tiny widths, so the command is known to work the day a GPU is."""
    rows = run_gpu_check({"llava_next", "qwen2_5_vl"})
    assert set(rows) == {"llava_next", "qwen2_5_vl"}
    for cells in rows.values():
        processes, tokens_per_s, ratio_dev, gap = cells[0], float(cells[5]), float(cells[8]), cells[9]
        assert processes == "1" and tokens_per_s > 0 and ratio_dev == 0.0
        assert float(gap.split("/")[0]) > 0  # bf16 with a 30-unit logit span: the sampler is not the scorer


def test_gpu_check_runs_the_smollm2_backbone_at_a_smoke_budget(smollm2_vlm):
    """``gpu_check.py --backbone smollm2 --tiny``: numberline-smollm2's whole ``demo`` pipeline (alignment,
    SFT, greedy evaluation, PPO, greedy evaluation) at a smoke budget on the session's SmolLM2 VLM (not
    rebuilt). NumberLine only, to stay near a minute: ALFWorld runs the same code with its own flags."""
    rows = run_gpu_check({"numberline-smollm2"}, "--backbone", "smollm2", "--envs", "numberline",
                         "--smollm2-model", str(smollm2_vlm.path))
    assert set(rows) == {"numberline-smollm2"}
    device, minutes, before, after, updates, metric = rows["numberline-smollm2"]
    assert device == "cpu" and float(minutes) > 0 and updates == "1" and metric == "eval/greedy_start_success"
    for success in (before, after):  # "0.000 (0.000-0.793, n=1)": one greedy episode, with its interval
        assert 0 <= float(success.split()[0]) <= 1 and success.endswith("n=1)")
