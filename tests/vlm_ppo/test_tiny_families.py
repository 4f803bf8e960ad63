"""Tiny checkpoints of every image-text-to-text family (tests/tiny_families.py), CPU only.

Each family is built, reloaded through the Auto classes as a Hub checkpoint would be, and run on
real env frames and prompts; the padding checks pin down what the trainer may rely on.
"""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import vlm_envs  # noqa: F401  (registers the gym_cards ids)
from tests.tiny_families import (
    FAMILIES,
    LLAVA_NEXT_7B_GEOMETRY,
    build_metaspace_tokenizer,
    build_tiny,
)
from vlm_envs.text import build_prompt

# family -> (model class, image processor class, processor output keys, image tokens per frame)
EXPECTED = {
    "llava": ("LlavaForConditionalGeneration", "CLIPImageProcessorPil", {"pixel_values"}, 16),
    "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextImageProcessorPil", {"pixel_values", "image_sizes"}, 24),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLImageProcessorPil", {"pixel_values", "image_grid_thw", "mm_token_type_ids"}, 9),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLImageProcessorPil", {"pixel_values", "image_grid_thw", "mm_token_type_ids"}, 9),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen2VLImageProcessorPil", {"pixel_values", "image_grid_thw", "mm_token_type_ids"}, 9),
    "gemma3": ("Gemma3ForConditionalGeneration", "Gemma3ImageProcessorPil", {"pixel_values", "token_type_ids"}, 16),
    "smolvlm": ("Idefics3ForConditionalGeneration", "Idefics3ImageProcessorPil", {"pixel_values", "pixel_attention_mask"}, 20),
}
TOKEN_TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")
GREEDY = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    """One torch thread for every test here."""


@pytest.fixture(scope="module")
def frames():
    """A NumberLine and a Blackjack frame (300x300 RGB uint8) with their prompts."""
    samples = []
    for env_id, task in (("gym_cards/NumberLine-v0", "numberline"), ("gym_cards/Blackjack-v0", "blackjack")):
        env = gym.make(env_id)
        obs, _ = env.reset(seed=0)
        env.close()
        samples.append((obs["image"], build_prompt(task, obs["text"])))
    return samples


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """family -> (processor, model) reloaded from the saved tiny checkpoint, built once per module."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cache = {}

    def load(family):
        if family not in cache:
            path = build_tiny(family, tmp_path_factory.mktemp(family))
            processor = AutoProcessor.from_pretrained(path)
            processor.tokenizer.padding_side = "left"  # not saved with the tokenizer in transformers v5
            cache[family] = processor, AutoModelForImageTextToText.from_pretrained(path).eval()
        return cache[family]

    return load


def chat(processor, prompt):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode(processor, samples):
    texts = [chat(processor, prompt) for _, prompt in samples]
    return processor(images=[[image] for image, _ in samples], text=texts, padding=True, return_tensors="pt")


def image_token_id(config):
    return getattr(config, "image_token_id", None) or config.image_token_index


@pytest.mark.parametrize("family", FAMILIES)
def test_family_reloads_and_generates(family, loaded, frames):
    processor, model = loaded(family)
    model_class, image_processor_class, extra_keys, image_tokens = EXPECTED[family]
    assert type(model).__name__ == model_class
    assert type(processor.image_processor).__name__ == image_processor_class
    assert model.config.get_text_config().vocab_size == len(processor.tokenizer)

    inputs = encode(processor, frames[:1])
    assert set(inputs) == {"input_ids", "attention_mask"} | extra_keys
    assert int((inputs["input_ids"] == image_token_id(model.config)).sum()) == image_tokens
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, **GREEDY)
    assert logits.shape == (*inputs["input_ids"].shape, len(processor.tokenizer))
    assert torch.isfinite(logits).all()
    assert out.sequences.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_image_reaches_the_language_model(family, loaded, frames):
    processor, model = loaded(family)
    with torch.no_grad():
        last = [model(**encode(processor, [(image, frames[0][1])])).logits[0, -1] for image, _ in frames]
    assert (last[0] - last[1]).abs().max() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_ids_match_the_tokenizer(family, loaded):
    processor, model = loaded(family)
    tokenizer, generation = processor.tokenizer, model.generation_config
    assert generation.pad_token_id == tokenizer.pad_token_id
    eos = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    assert tokenizer.eos_token_id in eos
    # Stop tokens are added special tokens; in transformers v5 `all_special_ids` lists only the named
    # roles and extra special tokens, so e.g. Gemma3's <end_of_turn> is special but not among them.
    assert all(tokenizer.added_tokens_decoder[i].special for i in eos)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_generate_matches_single_prompts(family, loaded, frames):
    processor, model = loaded(family)
    batch = encode(processor, frames)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the two prompts should differ in length"
    with torch.no_grad():
        batched = model.generate(**batch, **GREEDY)
        for row, sample in enumerate(frames):
            single_inputs = encode(processor, [sample])
            single = model.generate(**single_inputs, **GREEDY)
            new = single.sequences[0, single_inputs["input_ids"].shape[1]:]
            assert batched.sequences[row, batch["input_ids"].shape[1]:].tolist() == new.tolist()
            for step_single, step_batched in zip(single.scores, batched.scores):
                torch.testing.assert_close(step_batched[row], step_single[0], atol=1e-4, rtol=0)


def right_padded(processor, encodings, answers):
    """Batch [prompt; answer; pad] rows, token-type ids padded with 0, image tensors concatenated."""
    pad = processor.tokenizer.pad_token_id
    rows = [torch.cat([enc["input_ids"][0], answer]) for enc, answer in zip(encodings, answers)]
    width = max(len(row) for row in rows)
    batch = {"input_ids": torch.full((len(rows), width), pad), "attention_mask": torch.zeros((len(rows), width), dtype=torch.long)}
    for key in set(encodings[0]) - {"input_ids", "attention_mask"}:
        if key in TOKEN_TYPE_KEYS:
            batch[key] = torch.zeros((len(rows), width), dtype=torch.long)
            for i, enc in enumerate(encodings):
                batch[key][i, : enc[key].shape[1]] = enc[key][0]
        else:
            batch[key] = torch.cat([enc[key] for enc in encodings])
    for i, row in enumerate(rows):
        batch["input_ids"][i, : len(row)] = row
        batch["attention_mask"][i, : len(row)] = 1
    return batch, [len(row) for row in rows]


@pytest.mark.parametrize("family", FAMILIES)
def test_right_padded_forward_matches_unpadded(family, loaded, frames):
    """No position_ids passed: the trainer's re-evaluation forward pass on [prompt; answer; pad]."""
    processor, model = loaded(family)
    encodings = [encode(processor, [sample]) for sample in frames]
    answers = [
        processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        for text in ('{"action": "+"}', '{"thoughts": "The player has 13", "action": "hit"}')
    ]
    batch, lengths = right_padded(processor, encodings, answers)
    with torch.no_grad():
        padded = model(**batch).logits
        for i, (enc, answer) in enumerate(zip(encodings, answers)):
            alone, _ = right_padded(processor, [enc], [answer])
            torch.testing.assert_close(padded[i, : lengths[i]], model(**alone).logits[0], atol=1e-5, rtol=0)


def test_llava_next_with_7b_vision_geometry(tmp_path, frames):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = build_tiny("llava_next", tmp_path, **LLAVA_NEXT_7B_GEOMETRY)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert model.config.image_seq_length == 24 * 24
    inputs = encode(processor, frames[:1])
    image_tokens = int((inputs["input_ids"] == model.config.image_token_index).sum())
    # The 336 px base view gives 576 tokens; AnyRes tiles add at least one 24x24 view plus newlines.
    assert image_tokens > 2 * 576
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_unknown_family_or_override_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown family"):
        build_tiny("blip", tmp_path)
    with pytest.raises(ValueError, match="unknown size overrides"):
        build_tiny("llava", tmp_path, hidden=3)


def test_metaspace_tokenizer_round_trips_and_merges_quotes():
    tokenizer = build_metaspace_tokenizer()
    vocab = tokenizer.get_vocab()
    assert '▁"' in vocab and '",' in vocab
    for text in ('{"thoughts": "I see 7", "action": "+"}', "Hello  world\n x ", "é ü 中文 ✓"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    pieces = tokenizer.convert_ids_to_tokens(tokenizer('"a", "b"', add_special_tokens=False)["input_ids"])
    assert '",' in pieces
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
