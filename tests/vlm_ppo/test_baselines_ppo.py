"""Tests of the PPO baseline (baselines/vlm_ppo) on the embedded tiny LLaVA, CPU only."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from baselines.vlm_ppo.algo import action_logprob, compute_gae, cosine_schedule, ppo_losses, tis_weights
from baselines.vlm_ppo.config import Config
from baselines.vlm_ppo.encoding import Encoder
from baselines.vlm_ppo.policy import ActorCritic, action_boundary, load_policy
from vlm_envs.core.registration import CARD_ENVS as REGISTERED_CARD_ENVS
from tests.utils import checkpoint_copy
from vlm_envs.text import build_prompt, conversation

CARD_ENVS = list(REGISTERED_CARD_ENVS)


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    """One torch thread for every test here."""


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from baselines.vlm_ppo.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny(tiny_path):
    processor, vlm = load_policy(str(tiny_path))
    return processor, vlm.eval()


@pytest.fixture(scope="module")
def policy(tiny):
    processor, vlm = tiny
    return ActorCritic(vlm, Encoder(processor, vlm.config), temperature=0.7, thought_coef=0.5).eval()


def _prompts(policy, n=3, seed=0):
    rng = np.random.default_rng(seed)
    formulas = ["", "10+", "(3+5)*"][:n]
    images = [rng.integers(0, 256, (300, 300, 3), dtype=np.uint8) for _ in formulas]
    return policy.encoder.encode([build_prompt("points24", f) for f in formulas], images)


def tiny_config(tmp_path, tiny_path, **overrides) -> Config:
    base = dict(
        output_dir=str(tmp_path), model=str(tiny_path), threads=1, num_envs=2, num_steps=2, num_updates=1,
        ppo_epochs=1, minibatch_size=2, grad_accum_steps=1, lr=1e-3, end_lr=1e-4, max_grad_norm=1.0,
        temperature=1.0, max_new_tokens=12, eval_every=0, save_every=1, missing_action_key="last5",
    )
    return Config(**{**base, **overrides})


# --- model ----------------------------------------------------------------------------------
def test_tiny_model_is_built_once_by_processes_starting_together(tmp_path, monkeypatch):
    """Two starts at once (as ``accelerate launch`` makes them) build ``tiny-base`` once; the other
    waits and gets the finished model. Before, both saw no model and built into the same folder."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from baselines.vlm_ppo import tiny
    from baselines.vlm_ppo.train import resolve_model

    builds, both_started = [], threading.Barrier(2)

    def slow_build(path, spec=None):
        builds.append(path)
        time.sleep(0.5)
        Path(path).mkdir(parents=True)
        (Path(path) / "config.json").write_text("{}")
        return Path(path)

    def start(_):
        both_started.wait()
        return resolve_model(Config(output_dir=str(tmp_path), model="tiny"))

    monkeypatch.setattr(tiny, "build_tiny_llava", slow_build)
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(start, range(2)))
    assert len(builds) == 1 and paths[0] == paths[1] == str(tmp_path / "tiny-base")
    assert (tmp_path / "tiny-base" / "config.json").exists()


def test_saved_tiny_model_reloads_through_auto_classes(tiny_path, tiny):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_path)
    model = AutoModelForImageTextToText.from_pretrained(tiny_path).eval()
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    prompt = conversation(build_prompt("numberline", ""))
    image = np.zeros((300, 300, 3), np.uint8)
    enc = processor(text=[prompt], images=[image], return_tensors="pt")
    n_image = int((enc["input_ids"] == model.config.image_token_id).sum())
    assert n_image == (96 // 12) ** 2
    text_ids = processor.tokenizer(prompt.replace("<image>", ""), add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.decode(text_ids) == prompt.replace("<image>", "")
    with torch.no_grad():
        a = model(**enc).logits
        b = tiny[1](**enc).logits
    assert torch.equal(a, b)


def test_value_depends_on_prompt_only(policy):
    prompts = _prompts(policy)
    answers = [[5, 6, 7], [8], [9, 10, 11, 12]]
    with torch.no_grad():
        out = policy(prompts, answers, [1, 0, 2])
        bare = policy.get_value(prompts)
    assert torch.allclose(out.value, bare, atol=1e-5)
    assert torch.isfinite(out.token_logprobs).all() and out.token_logprobs[1, 1:].eq(0).all()  # padding scores 0


# --- the λ boundary ---------------------------------------------------------------------------
def _boundary_char(tokenizer, ids, k):
    """(start, end) characters covered by token k, from decoded prefixes."""
    before = tokenizer.decode(ids[:k], skip_special_tokens=True)
    upto = tokenizer.decode(ids[:k + 1], skip_special_tokens=True)
    return len(before), len(upto)


@pytest.mark.parametrize("text", [
    '{"current number": "3", "target number": "1", "thoughts": "I should subtract one.", "action": "-"}',
    '{"thoughts": "I have 13 points.",\n"action": "hit"}',
    '{"thoughts": "x"} then  "action" :  "stand"}',
])
def test_boundary_found_at_last_action_key(tiny, text):
    tokenizer = tiny[0].tokenizer
    ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    k = action_boundary(tokenizer, ids)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    quote = full.lower().rfind('"action"')
    start, end = _boundary_char(tokenizer, ids, k)
    assert start <= quote < end  # the boundary token holds the key's opening quote
    assert full[quote] == '"'


def test_boundary_absent_and_repeated(tiny):
    tokenizer = tiny[0].tokenizer
    assert action_boundary(tokenizer, tokenizer("I think + is right", add_special_tokens=False)["input_ids"]) is None
    assert action_boundary(tokenizer, []) is None
    text = '{"action": "+", "thoughts": "no wait", "action": "-"}'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    k = action_boundary(tokenizer, ids)
    start, end = _boundary_char(tokenizer, ids, k)
    assert start <= text.rfind('"action"') < end
    assert start > text.find('"action"')


def test_boundary_split_across_tokens(tiny):
    """A non-canonical split (as a sampler can produce) still finds the key through decoded prefixes."""
    tokenizer = tiny[0].tokenizer
    pieces = ['{"thoughts": "add one", "ac', 'ti', 'on', '"', ':', ' "+"}']
    ids = [i for p in pieces for i in tokenizer(p, add_special_tokens=False)["input_ids"]]
    text = "".join(pieces)
    assert tokenizer.decode(ids) == text
    assert tokenizer(text, add_special_tokens=False)["input_ids"] != ids
    k = action_boundary(tokenizer, ids)
    start, end = _boundary_char(tokenizer, ids, k)
    assert start <= text.rfind('"action"') < end


def test_action_logprob_scales_thoughts():
    lp = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    thought = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    action = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert action_logprob(lp, thought, action, 0.5).item() == pytest.approx(0.5 * -3.0 - 7.0)


# --- GAE, losses, schedule ----------------------------------------------------------------------
def test_gae_by_hand_with_truncation():
    gamma, lam = 0.9, 0.5
    # one env, 4 steps: step 1 terminates, step 3 is truncated (final value 2.0); next value 5.0
    rewards = torch.tensor([[1.0], [2.0], [0.0], [1.0]])
    values = torch.tensor([[0.5], [1.0], [0.2], [0.4]])
    term = torch.tensor([[False], [True], [False], [False]])
    trunc = torch.tensor([[False], [False], [False], [True]])
    final = torch.tensor([[0.0], [0.0], [0.0], [2.0]])
    adv, ret = compute_gae(rewards, values, term, trunc, torch.tensor([5.0]), final, gamma, lam)
    d3 = 1.0 + 0.9 * 2.0 - 0.4  # bootstrap from the final observation, not from next_value
    d2 = 0.0 + 0.9 * 0.4 - 0.2
    d1 = 2.0 - 1.0  # terminal
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    expected = [d0 + 0.45 * d1, d1, d2 + 0.45 * d3, d3]
    assert adv.squeeze(1).tolist() == pytest.approx(expected)
    assert ret.squeeze(1).tolist() == pytest.approx([e + v for e, v in zip(expected, [0.5, 1.0, 0.2, 0.4])])
    adv_ref, _ = compute_gae(rewards, values, term, trunc, torch.tensor([5.0]), final, gamma, lam,
                             bootstrap_on_truncation=False)
    assert adv_ref[3, 0].item() == pytest.approx(1.0 - 0.4)


def test_ppo_losses_mask_and_guard():
    old = torch.zeros(3)
    adv = torch.tensor([1.0, -1.0, 5.0])
    valid = torch.tensor([True, True, False])
    v = torch.zeros(3)
    out = ppo_losses(torch.tensor([0.5, 0.0, 9.0]), old, adv, valid, v, v, torch.ones(3), clip=0.1)
    # sample 2 is policy-invalid; sample 0's ratio e^0.5 is clipped to 1.1
    assert out["policy_loss"].item() == pytest.approx(-(1.1 * 1.0 - 1.0) / 2)
    assert out["value_loss"].item() == pytest.approx(0.5)
    guarded = ppo_losses(torch.tensor([3.0, 0.0, 0.0]), old, adv, valid, v, v, v, clip=0.1, ratio_guard=10.0)
    assert guarded["policy_loss"].item() == pytest.approx(-(1.1 - 1.0) / 2)


def test_tis_weights_truncate_and_weight_the_clipped_loss():
    scored = torch.tensor([-1.0, -2.0, -3.0, -4.0], requires_grad=True)
    sampled = torch.tensor([-1.5, -1.0, -3.0, -9.0])
    w = tis_weights(scored, sampled, cap=2.0)
    assert w.tolist() == pytest.approx([np.exp(0.5), np.exp(-1.0), 1.0, 2.0])  # exp(5) truncated to the cap
    assert not w.requires_grad
    new = torch.tensor([0.05, -0.3, 0.0, 0.02])
    old = torch.zeros(4)
    adv = torch.tensor([1.0, -2.0, 0.5, 3.0])
    valid = torch.tensor([True, True, True, False])
    v = torch.zeros(4)
    out = ppo_losses(new, old, adv, valid, v, v, v, clip=0.1, is_weight=w)
    r, a = np.exp([0.05, -0.3, 0.0]), [1.0, -2.0, 0.5]  # the valid samples; sample 1's clip binds
    per_sample = [-min(ri * ai, np.clip(ri, 0.9, 1.1) * ai) for ri, ai in zip(r, a)]
    weights = [np.exp(0.5), np.exp(-1.0), 1.0]
    assert out["policy_loss"].item() == pytest.approx(np.mean([w_ * p for w_, p in zip(weights, per_sample)]), rel=1e-5)
    plain = ppo_losses(new, old, adv, valid, v, v, v, clip=0.1)
    assert plain["policy_loss"].item() == pytest.approx(np.mean(per_sample), rel=1e-5)
    with pytest.raises(ValueError, match="cap"):
        tis_weights(scored, sampled, cap=0.0)


def test_tis_cap_defaults_by_dtype_and_refuses_caps_below_one():
    from baselines.vlm_ppo.train import check_config, tis_cap

    assert tis_cap(Config()) == 0.0 and tis_cap(Config(dtype="bfloat16", lora_r=8)) == 2.0
    assert tis_cap(Config(dtype="bfloat16", lora_r=8, tis_cap=0.0)) == 0.0 and tis_cap(Config(tis_cap=3.0)) == 3.0
    for bad in (-1.0, 0.5):
        with pytest.raises(ValueError, match="tis_cap"):
            check_config(Config(tis_cap=bad))


def test_float16_training_is_refused_at_start(tmp_path):
    """fp16 without loss scaling underflows: ppo and sft refuse it before loading anything."""
    from baselines.vlm_ppo.sft import train_sft
    from baselines.vlm_ppo.train import check_config

    cfg = Config(dtype="float16", lora_r=8, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="fp16 needs loss scaling.*bfloat16"):
        check_config(cfg)
    with pytest.raises(ValueError, match="fp16 needs loss scaling.*bfloat16"):
        train_sft(cfg, str(tmp_path / "no-model"))


def test_lr_schedule_never_rises():
    f = cosine_schedule(10, 1e-5, 1e-9)
    lrs = [1e-5 * f(s) for s in range(15)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[10] == pytest.approx(1e-9)
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))


# --- SFT ----------------------------------------------------------------------------------------
def test_sft_data_format_and_loss_decreases(tmp_path, tiny_path):
    import json

    from baselines.vlm_ppo.sft import generate_sft_data, load_sft_data, sft_loss

    cfg = tiny_config(tmp_path, tiny_path, sft_samples=12, sft_wrong_state_frac=1.0, sft_wrong_action_prob=1.0)
    out = generate_sft_data(cfg)
    records = json.loads((out / "data.json").read_text())
    assert len(records) == 12
    rec = records[0]
    assert (out / rec["image"]).exists()
    assert rec["conversations"][0]["from"] == "human" and rec["conversations"][0]["value"].startswith("<image>\n")
    assert rec["conversations"][1]["from"] == "gpt" and '"action": ' in rec["conversations"][1]["value"]
    assert json.loads((out / "meta.json").read_text())["wrong_labels"] == 12  # every label corrupted
    processor, vlm = load_policy(str(tiny_path), train_vision=True)
    ac = ActorCritic(vlm, Encoder(processor, vlm.config), temperature=1.0, thought_coef=1.0)
    samples = load_sft_data(cfg, ac.encoder)
    optimizer = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=3e-3)
    batch = samples[:8]
    with torch.no_grad():
        before = sft_loss(ac, batch).item()
    for _ in range(5):
        loss = sft_loss(ac, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = sft_loss(ac, batch).item()
    assert after < before - 0.5


# --- reading: auxiliary objective and gate ------------------------------------------------------
def test_read_fields_parses_the_cot_numbers():
    from baselines.vlm_ppo import cot
    from baselines.vlm_ppo.reading import read_fields

    assert read_fields(cot.numberline({"Current": 3, "Target": 1}, "-")) == [1, 3]
    assert read_fields('{"current number": "4", "thoughts": "..."}') == [-1, 4]
    assert read_fields("no fields") == [-1, -1]


def test_reading_objective_learns_digits_and_gate_scores_states(tmp_path, tiny_path):
    """The vision path (tower + projector) learns to read NumberLine frames through the reading head
    in a few steps, and the gate reports per-field accuracy over all 30 distinct held-out states."""
    from baselines.vlm_ppo.reading import (
        ReadingHead,
        heldout_states,
        image_tokens,
        reading_accuracy,
        reading_loss,
    )

    torch.manual_seed(0)
    cfg = tiny_config(tmp_path, tiny_path, max_new_tokens=10)
    states = heldout_states(cfg)
    assert len(states) == 30 and {tuple(s["fields"]) for s in states} == {(t, c) for t in range(6) for c in range(6) if t != c}
    from baselines.vlm_ppo.encoding import stack_images
    from baselines.vlm_ppo.sft import vision_path_parameters

    processor, vlm = load_policy(str(tiny_path), train_vision=True)
    policy = ActorCritic(vlm, Encoder(processor, vlm.config), temperature=1.0, thought_coef=1.0)
    picked = [s for s in states if tuple(s["fields"]) in {(0, 5), (5, 0), (2, 3), (3, 2)}]
    images = stack_images(policy.encoder.encode([""] * len(picked), [s["image"] for s in picked]))
    labels = torch.tensor([s["fields"] for s in picked])
    head = ReadingHead(image_tokens(policy, images).shape[1], vlm.config.text_config.hidden_size)
    optimizer = torch.optim.AdamW(vision_path_parameters(vlm) + list(head.parameters()), lr=1e-3)
    first, _ = reading_loss(head, policy, images, labels)
    for _ in range(80):
        loss, acc = reading_loss(head, policy, images, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert acc == 1.0 and loss.item() < 0.3 * first.item()
    gate = reading_accuracy(cfg, policy, states[:8])
    assert gate["read/states"] == 8 and 0.0 <= gate["read/all"] <= gate["read/current_number"] <= 1.0


# --- full PPO runs ------------------------------------------------------------------------------
def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("env_id", CARD_ENVS, ids=[e.split("/")[1] for e in CARD_ENVS])
def test_one_rollout_and_update_changes_the_weights(tmp_path, tiny_path, env_id):
    from baselines.vlm_ppo.train import train_ppo

    cfg = tiny_config(tmp_path, tiny_path, env_id=env_id)
    metrics = train_ppo(cfg)
    assert np.isfinite(metrics["losses/policy_loss"]) and np.isfinite(metrics["losses/value_loss"])
    before, after = _weights(tiny_path), _weights(tmp_path / "checkpoints" / "update_00000" / "model")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("lm_head" in k for k in changed)  # reached only through the policy loss
    assert any("language_model" in k for k in changed)
    assert not any("vision_tower" in k for k in changed)  # frozen by default
    assert (tmp_path / "metrics.csv").exists()


def test_resume_gives_the_same_next_update(tmp_path, tiny_path):
    from baselines.vlm_ppo.train import train_ppo

    straight = tiny_config(tmp_path / "a", tiny_path, num_updates=2, eval_every=1, eval_episodes=2)
    train_ppo(straight)
    resumed_dir = checkpoint_copy(tmp_path / "a", tmp_path / "b")
    train_ppo(dataclasses.replace(straight, output_dir=str(resumed_dir), resume=True))
    a = _weights(tmp_path / "a" / "checkpoints" / "update_00001" / "model")
    b = _weights(resumed_dir / "checkpoints" / "update_00001" / "model")
    assert a.keys() == b.keys()
    first = _weights(tmp_path / "a" / "checkpoints" / "update_00000" / "model")
    assert any(not torch.equal(a[k], first[k]) for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    from safetensors.torch import load_file

    va = load_file(str(tmp_path / "a" / "checkpoints" / "update_00001" / "value_head.safetensors"))
    vb = load_file(str(resumed_dir / "checkpoints" / "update_00001" / "value_head.safetensors"))
    assert all(torch.equal(va[k], vb[k]) for k in va)


# --- CLI ----------------------------------------------------------------------------------------
def test_every_config_field_is_documented_and_in_help():
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(Config)))
    body = tree.body[0].body
    documented = {node.target.id for node, nxt in zip(body, body[1:])
                  if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr)}
    fields = [f.name for f in dataclasses.fields(Config)]
    assert set(fields) == documented
    out = subprocess.run([sys.executable, "-m", "baselines.vlm_ppo", "ppo", "--help"], capture_output=True,
                         text=True, check=True, env={**__import__("os").environ, "COLUMNS": "200"}).stdout
    for name in fields:
        assert "--" + name.replace("_", "-") in out


def test_cli_keeps_old_flags_and_validates_choices():
    from baselines.vlm_ppo.config import parse_args

    command, cfg = parse_args(["ppo", "--no-key", "last5", "--bootstrap-on-truncation", "false", "--num-envs", "3"])
    assert (command, cfg.missing_action_key, cfg.bootstrap_on_truncation, cfg.num_envs) == ("ppo", "last5", False, 3)
    with pytest.raises(SystemExit):
        parse_args(["ppo", "--vectorization", "threads"])  # not a choice: refused at parse time
    _, paper = parse_args(["ppo", "--preset", "paper", "--env-id", "alfworld/ALFWorld-v0"])
    assert (paper.lora_r, paper.lora_alpha, paper.dtype, paper.gradient_checkpointing, paper.temperature,
            paper.thought_coef, paper.num_steps, paper.grad_accum_steps, paper.image_mode) == (
        128, 256, "bfloat16", True, 0.2, 0.2, 1024, 256, "reference")
    _, override = parse_args(["ppo", "--preset", "paper", "--lr", "3e-5"])
    assert override.lr == 3e-5 and override.lora_r == 128  # explicit flags win over the preset


def test_deterministic_flag_turns_on_deterministic_kernels_before_any_command(monkeypatch, tmp_path):
    """``--deterministic true``: what a same-seed GPU run needs to be bit-identical is set before the command runs."""
    import torch

    from baselines.vlm_ppo import __main__ as cli
    from baselines.vlm_ppo import train

    seen = {}
    monkeypatch.setattr(train, "train_ppo", lambda cfg: seen.update(on=torch.are_deterministic_algorithms_enabled(),
                                                                   cublas=os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        cli.main(["ppo", "--output-dir", str(tmp_path), "--deterministic", "true"])
    finally:
        torch.use_deterministic_algorithms(was)
    assert seen == {"on": True, "cublas": ":4096:8"}


def test_metrics_combine_over_processes_by_their_kind(monkeypatch):
    import accelerate.utils

    from baselines.vlm_ppo.train import over_processes

    # process 0 has 4 policy-valid answers of 8 and finished 1 episode; process 1 all 8 and 3 episodes;
    # process 2 no policy-valid answer, so no gap and no TIS weight
    every = [{"charts/policy_valid": 0.5, "charts/behaviour_logp_gap": 0.4, "charts/behaviour_logp_gap_max": 0.9,
              "charts/tis_weight": 1.2, "charts/episodes_in_window": 1, "charts/train_return": 2.0},
             {"charts/policy_valid": 1.0, "charts/behaviour_logp_gap": 0.1, "charts/behaviour_logp_gap_max": 0.3,
              "charts/tis_weight": 0.9, "charts/episodes_in_window": 3, "charts/train_return": 6.0},
             {"charts/policy_valid": 0.0, "charts/behaviour_logp_gap": float("nan"),
              "charts/behaviour_logp_gap_max": float("nan"), "charts/episodes_in_window": 0,
              "charts/train_return": float("nan")}]
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda objects: every)
    out = over_processes(None, every[2])
    assert out["charts/behaviour_logp_gap_max"] == 0.9
    assert out["charts/behaviour_logp_gap"] == pytest.approx((0.5 * 0.4 + 1.0 * 0.1) / 1.5)
    assert out["charts/tis_weight"] == pytest.approx((0.5 * 1.2 + 1.0 * 0.9) / 1.5)
    assert out["charts/train_return"] == pytest.approx((2.0 + 3 * 6.0) / 4)
    assert out["charts/episodes_in_window"] == 4 and out["charts/policy_valid"] == pytest.approx(0.5)
