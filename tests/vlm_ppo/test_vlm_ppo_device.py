"""The trainer where researchers run it, proven on CPU stand-ins: one device for every command (a
``meta`` device standing in for a GPU), precision owned by ``--dtype`` whatever accelerate's config
says, fp32 heads, the frozen vision tower run once per transition, dropout really off."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from baselines.vlm_ppo.config import Config
from baselines.vlm_ppo.encoding import Encoder, vision_tower_of
from baselines.vlm_ppo.policy import ActorCritic, load_policy, train_without_dropout
from tests.tiny_families import CONV_TEMPLATES, FAMILIES
from tests.utils import family_config as _config
from vlm_envs.text import build_prompt


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    """One torch thread for every test here."""


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state, initialised by the first Accelerator: reset it around
    a test that changes the environment accelerate reads."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (300, 300, 3), dtype=np.uint8) for _ in range(n)]


# --- one device for every command: a meta device stands in for the GPU --------------------------
DEVICE_MISMATCH = ("is not on the expected device", "Expected all tensors to be on the same device")
# What computing on meta tensors raises once a value is needed (``.item()``, a copy to the CPU, an
# output size that depends on the data): the model and its inputs got there.
META_DATA_NEEDED = ("meta tensor", "meta_nonzero")

_SFT = ["--sft-samples", "4", "--sft-batch-size", "2", "--aux-reading-coef", "0"]
COMMANDS = {
    "ppo": ["ppo", "--num-envs", "2", "--num-steps", "1"],
    "eval": ["eval", "--eval-episodes", "2", "--eval-greedy-episodes", "2"],
    "sft": ["sft", *_SFT, "--sft-steps", "1", "--align-steps", "0"],
    "alignment": ["sft", *_SFT, "--sft-steps", "1", "--align-steps", "1"],
    "reading_gate": ["sft", *_SFT, "--sft-steps", "0", "--align-steps", "0"],  # straight to the greedy answers
    "demo": ["demo", *_SFT, "--sft-steps", "1"],
}
MODES = [(f, "native") for f in FAMILIES] + [("llava", "reference"), ("llava_next", "reference")]


@pytest.mark.parametrize("family,mode", MODES, ids=[f"{f}-{m}" for f, m in MODES])
def test_every_command_runs_on_accelerates_device(tmp_path, family_path, monkeypatch, family, mode):
    """accelerate's device is ``meta`` (a stand-in GPU): every command must take its model there with
    every input, so it fails only where a value is first read off the device, never on a tensor
    left on the CPU, and never finishes on the CPU (today's ``sft`` did, and ``eval`` chose the
    device with ``torch.cuda.is_available()``)."""
    from accelerate import Accelerator

    from baselines.vlm_ppo.__main__ import main

    monkeypatch.setattr(Accelerator, "device", property(lambda self: torch.device("meta")))
    for name, command in COMMANDS.items():
        out = tmp_path / name
        argv = [*command, "--output-dir", str(out), "--model", str(family_path(family)), "--threads", "1",
                "--conv-template", CONV_TEMPLATES[family], "--image-mode", mode, "--max-new-tokens", "4",
                "--eval-every", "0"]
        with pytest.raises((RuntimeError, NotImplementedError)) as err:
            main(argv)
        message = str(err.value)
        assert not any(m in message for m in DEVICE_MISMATCH), f"{name}: {message}"
        assert any(m in message for m in META_DATA_NEEDED), f"{name}: {message}"
        assert not list(out.rglob("*.safetensors")), f"{name} trained and saved a model on the CPU"


# --- precision: --dtype decides, accelerate's mixed precision cannot -----------------------------
@pytest.mark.parametrize("mixed_precision", ["fp16", "bf16"])
def test_accelerate_mixed_precision_cannot_change_precision(tmp_path, family_path, monkeypatch, fresh_accelerate_state,
                                                            mixed_precision):
    """``accelerate launch --mixed_precision`` (ACCELERATE_MIXED_PRECISION) is overridden with a
    warning: no autocast (bf16 autocast ran the value head in bf16) and no GradScaler (fp16's is
    unscaled twice by the per-group clip; on CPU accelerate makes fp16 a no-op, so the scaler's
    absence is what is checked)."""
    from baselines.vlm_ppo import train

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", mixed_precision)
    runs, seen = [], []
    setup = train.setup

    def recording_setup(cfg):
        run = setup(cfg)
        record = lambda _m, _args, out: seen.append((out.dtype, torch.is_autocast_enabled("cpu")))  # noqa: E731
        run.policy.value_head.register_forward_hook(record)
        run.policy.vlm.get_output_embeddings().register_forward_hook(record)
        runs.append(run)
        return run

    monkeypatch.setattr(train, "setup", recording_setup)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train.train_ppo(_config(tmp_path, family_path("llava"), dtype="bfloat16", lora_r=4, lora_alpha=8))
    assert seen and set(seen) == {(torch.float32, False)}  # rollout, scoring and update passes alike
    accelerator = runs[0].accelerator
    assert accelerator.mixed_precision == "no" and accelerator.scaler is None and not accelerator.native_amp
    assert any(f"mixed_precision='{mixed_precision}'" in str(w.message) and "is ignored" in str(w.message)
               for w in caught)


def test_accumulation_steps_from_accelerates_environment_must_match(tmp_path, family_path, monkeypatch,
                                                                     fresh_accelerate_state):
    """ACCELERATE_GRADIENT_ACCUMULATION_STEPS overrides what the trainer passes to accelerate, which
    divides each loss by it: a value other than --grad-accum-steps would rescale every gradient."""
    from baselines.vlm_ppo import train

    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    with pytest.raises(ValueError, match="ACCELERATE_GRADIENT_ACCUMULATION_STEPS.*--grad-accum-steps"):
        train.setup(_config(tmp_path, family_path("llava"), grad_accum_steps=2))


def test_loss_scale_follows_accelerates_accumulation_steps(tmp_path, family_path, monkeypatch):
    """A later Accelerator() (training_device()) resets accelerate's shared accumulation steps to 1:
    each window's gradient is still the mean over its mini-batches."""
    from baselines.vlm_ppo import train
    from baselines.vlm_ppo.device import training_device

    cfg = _config(tmp_path, family_path("llava"), grad_accum_steps=2, num_steps=1, minibatch_size=1, ppo_epochs=1)
    scaled = []
    run_update = train.ppo_update

    def update(run, *args):
        training_device()
        backward = run.accelerator.backward

        def dividing(loss):  # what accelerate's backward differentiates: the loss over its accumulation steps
            scaled.append(float(loss.detach()) / run.accelerator.gradient_accumulation_steps)
            backward(loss)

        monkeypatch.setattr(run.accelerator, "backward", dividing)
        losses = []
        compute = train.ppo_losses

        def recording(*a, **k):
            out = compute(*a, **k)
            losses.append(out)
            return out

        monkeypatch.setattr(train, "ppo_losses", recording)
        stats = run_update(run, *args)
        totals = [float(l["policy_loss"] + run.cfg.vf_coef * l["value_loss"]) for l in losses]
        assert scaled == pytest.approx([t / 2 for t in totals], rel=1e-5)
        return stats

    monkeypatch.setattr(train, "ppo_update", update)
    train.train_ppo(cfg)
    assert len(scaled) == 2


def test_lm_head_runs_in_fp32_in_generate_and_scoring(family_path):
    """A bf16 model's LM head gives fp32 logits in both passes, equal to the fp32 product of its inputs."""
    processor, vlm = load_policy(str(family_path("llava")), dtype="bfloat16")
    policy = ActorCritic(vlm, Encoder(processor, vlm.config), temperature=1.0, thought_coef=0.5).eval()
    head = vlm.get_output_embeddings()
    calls = []
    head.register_forward_hook(lambda _m, args, out: calls.append((args[0], out)))
    encoded = policy.encoder.encode([build_prompt("numberline", "")] * 2, _frames(2))
    answers = policy.generate(encoded, greedy=True, max_new_tokens=4)
    generate_calls = len(calls)
    with torch.no_grad():
        policy(encoded, answers, [None, None])
    assert generate_calls >= 1 and len(calls) > generate_calls
    assert head.weight.dtype == torch.bfloat16
    for hidden, logits in calls:
        assert logits.dtype == torch.float32
        assert torch.equal(logits, torch.nn.functional.linear(hidden.float(), head.weight.float()))


# --- the frozen vision tower runs once per transition ---------------------------------------------
@pytest.mark.parametrize("family,mode", MODES, ids=[f"{f}-{m}" for f, m in MODES])
def test_frozen_tower_runs_once_per_transition(tmp_path, family_path, monkeypatch, family, mode):
    """One PPO update with the KL reference and 2 epochs: the tower runs once per transition (at
    sampling), once per bootstrap observation, and in no scoring, reference or epoch pass."""
    from baselines.vlm_ppo import train

    processor, vlm = load_policy(str(family_path(family)))
    tower_class = type(vision_tower_of(vlm)[1])
    runs = []  # the tower's real forward passes (a replay never reaches the class's forward)
    forward = tower_class.forward

    def counting(self, *args, **kwargs):
        runs.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(tower_class, "forward", counting)
    truncated = []
    collect = train.collect_rollout

    def collecting(*args, **kwargs):
        rollout = collect(*args, **kwargs)
        truncated.append(int(rollout.truncated.sum()))
        return rollout

    monkeypatch.setattr(train, "collect_rollout", collecting)
    cfg = _config(tmp_path, family_path(family), family, image_mode=mode, lora_r=4, lora_alpha=8, kl_coef=0.1,
                  num_steps=3)
    train.train_ppo(cfg)
    transitions, bootstrap = cfg.num_steps * cfg.num_envs, cfg.num_envs
    probe = 1  # setup's reachability probe (train.freeze_unreachable): one blank observation
    assert len(runs) == probe + transitions + bootstrap + truncated[0]  # one sample per run


def test_trainable_tower_runs_in_every_pass(tmp_path, family_path):
    """With ``train_vision`` the tower's outputs change with its weights: nothing is replayed."""
    processor, vlm = load_policy(str(family_path("llava")), train_vision=True)
    policy = ActorCritic(vlm, Encoder(processor, vlm.config), temperature=1.0, thought_coef=0.5).eval()
    tower = vision_tower_of(vlm)[1]
    runs = []
    tower.register_forward_hook(lambda *_: runs.append(1))
    encoded = policy.encoder.encode([build_prompt("numberline", "")], _frames(1))
    answers = policy.generate(encoded, greedy=True, max_new_tokens=3)
    with torch.no_grad():
        policy(encoded, answers, [None])
        policy(encoded, answers, [None])
    assert len(runs) == 3 and encoded[0].tower_output is None


# The tower output fields each family's image path reads: all a replay keeps.
READ_FIELDS = {"llava": {"pooler_output", "hidden_states"}, "llava_next": {"pooler_output", "hidden_states"},
               "qwen2_vl": {"pooler_output"}, "qwen2_5_vl": {"pooler_output"},
               "qwen3_vl": {"pooler_output", "deepstack_features"}, "gemma3": {"last_hidden_state", "pooler_output"},
               "smolvlm": {"last_hidden_state"}}


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_keeps_only_the_fields_the_image_path_reads(family_path, family):
    """The recorded tower output holds only what the image path reads (LLaVA's feature layer, not its
    ``last_hidden_state``; Qwen's merged states, not the pre-merger ones), and replaying it scores
    exactly as running the tower."""
    processor, vlm = load_policy(str(family_path(family)))
    policy = ActorCritic(vlm, Encoder(processor, vlm.config, CONV_TEMPLATES[family]), temperature=1.0,
                         thought_coef=0.5).eval()
    encoded = policy.encoder.encode([build_prompt("numberline", "")], _frames(1))
    tower = vision_tower_of(vlm)[1]
    with torch.no_grad():
        tower.requires_grad_(True)  # a trainable tower runs in every pass: nothing recorded
        ran = policy(encoded, [[5, 6, 7]], [None]).token_logprobs
        tower.requires_grad_(False)
        policy(encoded, [[5, 6, 7]], [None])
        replayed = policy(encoded, [[5, 6, 7]], [None]).token_logprobs
    assert set(encoded[0].tower_output[1].keys()) == READ_FIELDS[family]
    assert torch.equal(replayed, ran)


def test_recorded_tower_outputs_are_not_replayed_by_another_model(family_path, monkeypatch):
    """An Encoded scored by one model, then by another: the second records its own tower's outputs,
    even where the first model was freed and its tower's ``id`` reused (every ``id`` equal here)."""
    from baselines.vlm_ppo import encoding

    monkeypatch.setattr(encoding, "id", lambda obj: 0, raising=False)
    policies = []
    for seed in (0, 1):
        processor, vlm = load_policy(str(family_path("llava")))
        with torch.no_grad():  # a different tower: its outputs differ from the first's
            for p in vision_tower_of(vlm)[1].parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.1)
        policies.append(ActorCritic(vlm, Encoder(processor, vlm.config), temperature=1.0, thought_coef=0.5).eval())
    prompt, frame = [build_prompt("numberline", "")], _frames(1)
    encoded = policies[0].encoder.encode(prompt, frame)
    answers = policies[0].generate(encoded, greedy=True, max_new_tokens=3)
    with torch.no_grad():
        policies[0](encoded, answers, [None])
        replayed = policies[1](encoded, answers, [None]).token_logprobs
        fresh = policies[1](policies[1].encoder.encode(prompt, frame), answers, [None]).token_logprobs
    assert torch.equal(replayed, fresh)


def test_recorded_tower_outputs_are_freed_after_use(tmp_path, family_path, monkeypatch):
    """A rollout (and its recorded tower outputs) is gone before the next collection; SFT's samples,
    kept for the whole run, hold no tower outputs after a step or a greedy check."""
    import weakref

    from baselines.vlm_ppo import sft, train

    previous, alive = [], []
    collect = train.collect_rollout

    def collecting(*args, **kwargs):
        alive.extend(ref() is not None for ref in previous)
        rollout = collect(*args, **kwargs)
        previous[:] = [weakref.ref(rollout), weakref.ref(rollout.prompts[0])]
        return rollout

    monkeypatch.setattr(train, "collect_rollout", collecting)
    train.train_ppo(_config(tmp_path, family_path("llava"), num_updates=2, num_steps=1, minibatch_size=1,
                            save_every=0))
    assert alive == [False, False]

    processor, vlm = load_policy(str(family_path("llava")))
    policy = ActorCritic(vlm, Encoder(processor, vlm.config), temperature=1.0, thought_coef=1.0)
    samples = [{"prompt": e, "answer_ids": [5, 6, 7], "answer": "x"}
               for e in policy.encoder.encode([build_prompt("numberline", "")] * 2, _frames(2))]
    sft.sft_loss(policy, samples).backward()
    assert all(s["prompt"].tower_output is None for s in samples)
    sft.answer_accuracy(policy, samples, max_new_tokens=2)
    assert all(s["prompt"].tower_output is None for s in samples)


# --- dropout, adapters, evaluation batch -----------------------------------------------------------
def test_train_without_dropout_turns_attention_dropout_off(tmp_path, family_path):
    """Attention dropout is a float the attention layers apply in train mode, not an nn.Dropout."""
    import shutil

    path = tmp_path / "dropout"
    shutil.copytree(family_path("llava"), path)
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["attention_dropout"] = config["vision_config"]["attention_dropout"] = 0.5
    (path / "config.json").write_text(json.dumps(config))
    processor, vlm = load_policy(str(path), train_vision=True)  # the tower's own passes too
    policy = ActorCritic(vlm, Encoder(processor, vlm.config), temperature=1.0, thought_coef=0.5)
    encoded = policy.encoder.encode([build_prompt("numberline", "")], _frames(1))
    train_without_dropout(policy)
    torch.manual_seed(0)
    first = policy(encoded, [[5, 6, 7]], [None]).token_logprobs
    torch.manual_seed(1)
    second = policy(encoded, [[5, 6, 7]], [None]).token_logprobs
    assert policy.training and torch.equal(first, second)


def test_low_precision_lora_adapters_are_refused(family_path, monkeypatch):
    """peft older than 0.12 left adapters in the base's bf16: refused with the version to install
    (simulated by turning off peft's adapter upcast), and the train extra asks for peft>=0.12."""
    import configparser
    from pathlib import Path

    import peft

    get_peft_model = peft.get_peft_model
    monkeypatch.setattr(peft, "get_peft_model", lambda *a, **k: get_peft_model(*a, **k, autocast_adapter_dtype=False))
    with pytest.raises(ValueError, match=r"torch.bfloat16, not float32 .*peft>=0\.12"):
        load_policy(str(family_path("llava")), dtype="bfloat16", lora_r=4, lora_alpha=8)
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    assert "peft>=0.12" in setup["options.extras_require"]["train"].split()


def test_greedy_evaluation_batch_is_a_config_field(tmp_path, family_path, monkeypatch):
    """``eval_batch_size`` bounds the envs played (and the observations decoded) at once."""
    from baselines.vlm_ppo import evaluation

    widths = []
    play = evaluation.play
    monkeypatch.setattr(evaluation, "play", lambda *args, **kw: (widths.append(kw["num_envs"]), play(*args, **kw))[1])
    processor, vlm = load_policy(str(family_path("llava")))
    policy = ActorCritic(vlm, Encoder(processor, vlm.config), temperature=1.0, thought_coef=0.5)
    sizes = []
    generate = policy.generate
    policy.generate = lambda prompts, **kw: (sizes.append(len(prompts)), generate(prompts, **kw))[1]
    cfg = _config(tmp_path, family_path("llava"), eval_batch_size=3, eval_greedy_episodes=7, max_new_tokens=4,
                  eval_max_steps=2)
    result = evaluation.evaluate(cfg, policy, greedy=True)
    assert widths == [3, 3, 1] and max(sizes) <= 3 and result["episodes"] == 7  # 7 episodes in batches of 3
    with pytest.raises(ValueError, match="eval_batch_size"):
        evaluation.evaluate(Config(eval_batch_size=0), policy, greedy=True)
