"""Tiny random checkpoints of every image-text-to-text family the trainer must support.

Test support, not part of the installed trainer: the tests and the trainer benchmarks
(``benchmarks/``, which put the repository root on ``sys.path``) import it as ``tests.tiny_families``.

:func:`build_tiny` builds one family's model and processor from a config in code (nothing is
downloaded), with the family's real structure at toy widths, and ``save_pretrained`` s both, so
``AutoProcessor.from_pretrained(path)`` and ``AutoModelForImageTextToText.from_pretrained(path)``
reload them exactly as they load a Hub checkpoint. Tokenizers are trained here on the package's own
prompts and answers (:func:`baselines.vlm_ppo.tiny.training_corpus`): byte-level BPE for most
families, a sentencepiece-style Metaspace BPE for Gemma3 (:func:`build_metaspace_tokenizer`).
Weights use ``initializer_range=0.2`` by default: at the usual 0.02 a random model's attention is
nearly uniform and a position bug moves logits by less than 1e-3.

No torchvision is needed: every image processor saved here is the PIL backend, and
``AutoImageProcessor`` picks the PIL class on reload when torchvision is absent. The Qwen
processors (``Qwen2VLProcessor``, ``Qwen2_5_VLProcessor``, ``Qwen3VLProcessor``) bundle a video
processor that cannot even be constructed without torchvision, so the Qwen checkpoints are saved
with ``PaddleOCRVLProcessor``: image-only, it expands ``<|image_pad|>`` by ``image_grid_thw`` the
same way and returns the same ``mm_token_type_ids``. Do not detect M-RoPE by processor class; ask
the model config (``text_config.rope_parameters["mrope_section"]``) or the forward signature.

One 300x300 RGB frame, one user turn (transformers 5.24, defaults of :func:`build_tiny`):

==========  ==================================  ============================  =======================================  ======  ==========================================
family      model class                         processor (image processor)   processor outputs                        image   what forward needs beyond input_ids,
                                                                                                                       tokens  attention_mask and pixel_values
==========  ==================================  ============================  =======================================  ======  ==========================================
llava       LlavaForConditionalGeneration       LlavaProcessor                input_ids, attention_mask, pixel_values  16      nothing (CLIP 32 px, patch 8, CLS dropped)
                                                (CLIPImageProcessorPil)       (1,3,32,32)
llava_next  LlavaNextForConditionalGeneration   LlavaNextProcessor            input_ids, attention_mask, pixel_values  24      ``image_sizes`` (AnyRes: base view + 2x2
                                                (LlavaNextImageProcessorPil)  (1,5,3,16,16), image_sizes (1,2)                 tiles, unpadded, image_newline per row)
qwen2_vl    Qwen2VLForConditionalGeneration     PaddleOCRVLProcessor          input_ids, attention_mask, pixel_values  9       ``image_grid_thw``, ``mm_token_type_ids``
                                                (Qwen2VLImageProcessorPil)    (36,1176) flat patches, image_grid_thw           (forward raises without it); M-RoPE
                                                                              (1,3), mm_token_type_ids                         positions from get_rope_index
qwen2_5_vl  Qwen2_5_VLForConditionalGeneration  PaddleOCRVLProcessor          same as qwen2_vl                         9       as qwen2_vl, but NO error without
                                                (Qwen2VLImageProcessorPil)                                                     mm_token_type_ids; windowed vision attn
qwen3_vl    Qwen3VLForConditionalGeneration     PaddleOCRVLProcessor          same keys; patch 16: pixel_values        9       as qwen2_vl; interleaved M-RoPE,
                                                (Qwen2VLImageProcessorPil)    (36,1536)                                        deepstack vision features
gemma3      Gemma3ForConditionalGeneration      Gemma3Processor               input_ids, attention_mask, pixel_values  16      ``token_type_ids`` (bidirectional
                                                (Gemma3ImageProcessorPil)     (1,3,32,32), token_type_ids                      attention inside the image block)
smolvlm     Idefics3ForConditionalGeneration    Idefics3Processor             input_ids, attention_mask, pixel_values  20      ``pixel_attention_mask`` (2x2 tiles +
                                                (Idefics3ImageProcessorPil)   (1,5,3,32,32), pixel_attention_mask              global view, 4 tokens each after the
                                                                              (1,5,32,32)                                      pixel shuffle)
==========  ==================================  ============================  =======================================  ======  ==========================================

What transformers 5.24 does with them (fp32; the padding facts are pinned by
``tests/vlm_ppo/test_tiny_families.py``, the rest were checked by hand):

* Sub-modules: ``model.get_decoder()`` is the language model in every family
  (``model.model.language_model``, except smolvlm: ``model.model.text_model``); ``model.lm_head``.
  Vision tower: ``model.model.vision_tower`` (llava, llava_next, gemma3), ``model.model.visual``
  (Qwen, projector inside it: ``visual.merger``, Qwen3 also ``visual.deepstack_merger_list``),
  ``model.model.vision_model`` (smolvlm). Projector: ``model.model.multi_modal_projector``
  (llava, llava_next, gemma3), ``model.model.connector`` (smolvlm). The vision towers of llava,
  llava_next, gemma3 and smolvlm also have ``q_proj``/``v_proj``: LoRA target names match them too.
* Padding: a right-padded batch [prompt; answer; pad] with no ``position_ids`` gives the unpadded
  logits on real tokens in every family (max difference 4e-6). Left padding without
  ``position_ids`` also agrees (within 1.5e-5): RoPE is relative, and Qwen's ``get_rope_index``
  numbers only unmasked tokens (pads get position 0, so right padding is safe too). Left-padded
  batched greedy ``generate`` gives the single-prompt tokens and scores (within 5e-6).
* Token types: Qwen needs ``mm_token_type_ids`` and Gemma3 ``token_type_ids`` in both ``forward``
  and ``generate``; pad them with 0 alongside ``input_ids``. Without them Qwen2-VL and Qwen3-VL
  ``forward`` raise, but Qwen2.5-VL ``forward`` and every Qwen ``generate`` silently fall back to
  1-D positions (logits off by several units), and Gemma3 attends causally inside the image.
  ``generate`` caches per-row ``rope_deltas`` on ``model.model``; a later forward with
  ``input_ids`` and ``mm_token_type_ids`` recomputes them.
* Special tokens: ``tokenizer.all_special_ids`` lists only named roles and extra special tokens;
  other added special tokens (Qwen ``<|im_start|>``, Gemma3 ``<start_of_turn>``/``<end_of_turn>``,
  Idefics3 ``<global-img>``/``<row_i_col_j>``) are flagged only in ``added_tokens_decoder``.
  The byte-level families share one trained BPE, so its ``<unk> <s> </s> <pad> <image>`` exist
  in every byte-level vocabulary. Qwen and Gemma3 stop at either of two ids (generation config
  ``eos_token_id`` is a list: ``<|im_end|>``/``<|endoftext|>``, ``<eos>``/``<end_of_turn>``).
* Gemma3's chat template writes ``<bos>`` and its tokenizer adds one too (as the real checkpoint
  does): the processor on templated text gives two BOS tokens unless ``add_special_tokens=False``.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "smolvlm")
# SmolVLM's chat template, as its checkpoints ship it.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% elif item['type'] == 'image' %}<image>{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
CONV_TEMPLATES = {family: "llava_v1" if family.startswith("llava") else "chat_template" for family in FAMILIES}
"""The ``--conv-template`` of each family: LLaVA's conversation strings, else the processor's chat template."""

# LLaVA-NeXT-7B's vision geometry (CLIP ViT-L/14 at 336 px, llava-v1.6 pinpoints): 24x24 = 576
# patch tokens per view. Pass as ``build_tiny("llava_next", path, **LLAVA_NEXT_7B_GEOMETRY)``.
LLAVA_NEXT_7B_GEOMETRY = {
    "image_size": 336,
    "patch_size": 14,
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
}

# Qwen-VL and SmolVLM normalise with mean = std = 0.5 per channel.
HALF = [0.5, 0.5, 0.5]


@dataclasses.dataclass
class TinySizes:
    """Widths and image geometry of a tiny checkpoint; any field can be overridden in :func:`build_tiny`.

    Geometry fields a family does not use are ignored: ``image_size``/``patch_size`` (CLIP, SigLIP
    and Idefics3 towers), ``image_grid_pinpoints`` (LLaVA-NeXT), ``min_pixels``/``max_pixels``
    (Qwen resizing), ``mm_tokens_per_image`` (Gemma3 pooling), ``longest_edge`` and
    ``do_image_splitting`` (Idefics3 resize before tiling into ``image_size`` tiles).
    """

    hidden_size: int = 64
    text_layers: int = 2
    heads: int = 4
    vision_hidden_size: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    vocab_size: int = 1024
    initializer_range: float = 0.2
    image_size: int = 32
    patch_size: int = 8
    image_grid_pinpoints: list | None = None
    min_pixels: int = 56 * 56
    max_pixels: int = 84 * 84
    mm_tokens_per_image: int = 16
    longest_edge: int = 64
    do_image_splitting: bool = True


# Per-family geometry defaults, chosen so that a 300x300 frame gives 9-24 image tokens.
GEOMETRY = {
    "llava": {},
    "llava_next": {
        "image_size": 16,
        "image_grid_pinpoints": [[16, 32], [32, 16], [32, 32]],
    },
    "qwen2_vl": {},
    "qwen2_5_vl": {},
    "qwen3_vl": {"min_pixels": 64 * 64, "max_pixels": 96 * 96},
    "gemma3": {"patch_size": 4},
    "smolvlm": {},
}


def build_tiny(family: str, path: str | Path, *, seed: int = 0, geometry: dict | None = None,
               logit_span: float | None = None, dtype=None, device=None, **overrides) -> Path:
    """Build a tiny random ``family`` checkpoint and ``save_pretrained`` model and processor to ``path``.

    ``overrides`` change :class:`TinySizes` fields. ``geometry`` (``{"text": {...}, "vision": {...},
    "model": {...}}``) lays a real checkpoint's config fields over the built config, e.g. a 7B's
    widths (the processor and its small trained tokenizer stay: ids beyond the tokenizer decode to
    nothing). ``logit_span`` scales the LM head (:func:`widen_logits`). ``dtype`` and ``device``
    say where the weights are initialised (a 7B geometry: on the GPU in bf16, with no slow CPU init).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    allowed = {field.name for field in dataclasses.fields(TinySizes)}
    if unknown := set(overrides) - allowed:
        raise ValueError(f"unknown size overrides {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
    if unknown := set(geometry or {}) - {"text", "vision", "model"}:
        raise ValueError(f"unknown geometry keys {sorted(unknown)}; allowed: model, text, vision")
    import torch
    from transformers import AutoModelForImageTextToText

    sizes = TinySizes(**{**GEOMETRY[family], **overrides})
    processor, config, generation_ids = BUILDERS[family](sizes)
    if geometry:
        config = _with_geometry(config, **geometry)
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype or torch.float32)
    _randomise_zero_matrices(model, sizes.initializer_range)
    if logit_span is not None:
        widen_logits(model, processor, logit_span)
    for name, value in generation_ids.items():
        setattr(model.generation_config, name, value)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _with_geometry(config, text: dict | None = None, vision: dict | None = None, model: dict | None = None):
    """``config`` rebuilt with these fields laid over its text, vision and top-level fields; fields the
    constructors derive from the widths (``head_dim``, ``layer_types``) are derived again unless given."""
    derived = {"head_dim", "layer_types"}

    def merged(sub, extra):
        return {**{k: v for k, v in sub.to_dict().items() if k not in derived}, **(extra or {})}

    top = {k: v for k, v in config.to_dict().items() if k not in ("text_config", "vision_config")}
    return type(config).from_dict({**top, **(model or {}), "text_config": merged(config.text_config, text),
                                   "vision_config": merged(config.vision_config, vision)})


def widen_logits(model, processor, span: float = 30.0) -> float:
    """Scale ``model``'s LM head in place so that its logits span ``span`` units; returns the factor.

    The span is ``max - min`` over the vocabulary at the last token of a NumberLine prompt (a
    trained 7B model's is ~30; a random tiny model's a few units). Precision effects scale with
    it: bf16 rounds a logit near 16 to a multiple of 1/16, which is 0.3 nats at T 0.2, so a
    random model shows a trained model's bf16 sampler/scorer gap only at this range. A tied head
    (Gemma3) is replaced by an untied random one first: a random model whose head is its input
    embedding repeats its last token with certainty at this range (every log-prob 0, no gap).
    """
    import numpy as np
    import torch

    from baselines.vlm_ppo.encoding import Encoder, batch_prompts, to_device
    from vlm_envs.text import build_prompt

    template = "llava_v1" if model.config.model_type.startswith("llava") else "chat_template"
    frame = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    prompt = Encoder(processor, model.config, template).encode([build_prompt("numberline", "")], [frame])
    inputs = to_device(batch_prompts(prompt, processor.tokenizer.pad_token_id), model.device)
    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        head.weight = torch.nn.Parameter(torch.randn_like(head.weight))
        model.config.tie_word_embeddings = model.config.get_text_config().tie_word_embeddings = False
    with torch.no_grad():
        logits = model(**inputs, logits_to_keep=1).logits[0, -1].float()
        factor = span / float(logits.max() - logits.min())
        head.weight.mul_(factor)
    return factor


def _randomise_zero_matrices(model, std: float) -> None:
    """Give zero-initialised weight matrices random values so every part of the model carries signal.

    Gemma3 starts its image projection at zero, which makes a random Gemma3 ignore the image (and
    hides any mistake in how image tokens are attended); 1-D zeros (norm offsets, biases) stay.
    """
    import torch

    with torch.no_grad():
        for weight in model.parameters():
            if weight.ndim >= 2 and not weight.any():
                weight.normal_(0.0, std)


# ----------------------------------------------------------------------------------------------
# Tokenizers


@functools.lru_cache(maxsize=4)
def _byte_level_json(vocab_size: int) -> str:
    """The trained byte-level BPE of :func:`tiny.build_tokenizer`, serialised (training takes ~1 s)."""
    from baselines.vlm_ppo.tiny import build_tokenizer

    return build_tokenizer(vocab_size).backend_tokenizer.to_str()


def _wrap(backend_json: str, *, bos, eos, pad, add_bos: bool, named=None, extra=(), unk=None):
    """A ``PreTrainedTokenizerFast`` with a family's special tokens, from a serialised backend."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(backend_json),
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        add_bos_token=add_bos,
        extra_special_tokens=dict(named or {}),
        padding_side="left",
        model_max_length=4096,
    )
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in extra], special_tokens=True)
    return tokenizer


def _byte_level(sizes: TinySizes, **roles):
    return _wrap(_byte_level_json(sizes.vocab_size), **roles)


GEMMA3_NAMED_TOKENS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}
GEMMA3_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", *GEMMA3_NAMED_TOKENS.values()]


@functools.lru_cache(maxsize=4)
def _metaspace_json(vocab_size: int) -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from baselines.vlm_ppo.tiny import training_corpus

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # Sentencepiece style: a word's leading space becomes "▁" and belongs to the word. Quotes with
    # the space before and the punctuation after them are pieces of their own, as in the Llama and
    # Gemma vocabularies: '{"action": "hit"}' -> ▁{ " action ": ▁" hit "}, so the opening quote of
    # a JSON key shares its token with the space before it, never with the key.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        pre_tokenizers.Split(Regex('▁?"[,:}]*'), behavior="isolated"),
    ])
    bpe.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")])
    byte_pieces = [f"<0x{value:02X}>" for value in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=GEMMA3_TOKENS + byte_pieces, show_progress=False
    )
    bpe.train_from_iterator(training_corpus(), trainer=trainer)
    return bpe.to_str()


def build_metaspace_tokenizer(vocab_size: int = 1024):
    """Gemma3-style sentencepiece tokenizer: Metaspace BPE with byte fallback, ``<bos>`` prepended.

    Trained on :func:`baselines.vlm_ppo.tiny.training_corpus`, so ``▁"`` and ``",`` are merged
    pieces, as in Llama and Gemma vocabularies.
    """
    return _wrap(
        _metaspace_json(vocab_size),
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        add_bos=True,
        named=GEMMA3_NAMED_TOKENS,
        extra=["<start_of_turn>", "<end_of_turn>"],
    )


# ----------------------------------------------------------------------------------------------
# Chat templates: each family's real template, reduced to what one image and text turns use.

LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST] "
    "{% for item in message['content'] if item['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] }}{% endfor %} [/INST]"
    "{% elif message['role'] == 'assistant' %} {{ message['content'][0]['text'] }}</s>{% endif %}{% endfor %}"
)

_QWEN_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
)
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n" + _QWEN_CONTENT + "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL dropped the default system prompt.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n" + _QWEN_CONTENT + "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


# ----------------------------------------------------------------------------------------------
# Families: each returns (processor, model config, generation-config ids).


def _text_widths(sizes: TinySizes, tokenizer) -> dict:
    """Text-model fields every family shares (vocab sized to the tokenizer, ids from it)."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": sizes.hidden_size,
        "intermediate_size": 2 * sizes.hidden_size,
        "num_hidden_layers": sizes.text_layers,
        "num_attention_heads": sizes.heads,
        "num_key_value_heads": sizes.heads,
        "max_position_embeddings": 4096,
        "initializer_range": sizes.initializer_range,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "tie_word_embeddings": False,
    }


def _vision_widths(sizes: TinySizes) -> dict:
    return {
        "hidden_size": sizes.vision_hidden_size,
        "intermediate_size": 2 * sizes.vision_hidden_size,
        "num_hidden_layers": sizes.vision_layers,
        "num_attention_heads": sizes.vision_heads,
        "image_size": sizes.image_size,
        "patch_size": sizes.patch_size,
        "initializer_range": sizes.initializer_range,
    }


def _ids(tokenizer, eos=None) -> dict:
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": eos if eos is not None else tokenizer.eos_token_id,
    }


def _llava_tokenizer(sizes: TinySizes):
    return _byte_level(sizes, bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True, named={"image_token": "<image>"})


def _llava(sizes: TinySizes):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from baselines.vlm_ppo.tiny import LLAVA_V1_CHAT_TEMPLATE

    tokenizer = _llava_tokenizer(sizes)
    square = {"height": sizes.image_size, "width": sizes.image_size}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": sizes.image_size}, crop_size=square),
        tokenizer=tokenizer,
        patch_size=sizes.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=LLAVA_V1_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**_vision_widths(sizes), projection_dim=sizes.hidden_size),
        text_config=LlamaConfig(**_text_widths(sizes, tokenizer)),
        image_token_index=tokenizer.image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(sizes.image_size // sizes.patch_size) ** 2,
    )
    return processor, config, _ids(tokenizer)


def _llava_next(sizes: TinySizes):
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextProcessor, MistralConfig
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tokenizer = _llava_tokenizer(sizes)
    square = {"height": sizes.image_size, "width": sizes.image_size}
    pinpoints = sizes.image_grid_pinpoints or [[sizes.image_size, sizes.image_size]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": sizes.image_size}, crop_size=square, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=sizes.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**_vision_widths(sizes), projection_dim=sizes.hidden_size),
        text_config=MistralConfig(**_text_widths(sizes, tokenizer), sliding_window=None),
        image_token_index=tokenizer.image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=pinpoints,
        image_seq_length=(sizes.image_size // sizes.patch_size) ** 2,
    )
    return processor, config, _ids(tokenizer)


QWEN_NAMED_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}


def _qwen_processor(sizes: TinySizes, patch_size: int, template: str):
    from transformers import PaddleOCRVLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _byte_level(
        sizes,
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        add_bos=False,
        named=QWEN_NAMED_TOKENS,
        extra=["<|im_start|>"],
    )
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=sizes.min_pixels,
        max_pixels=sizes.max_pixels,
        patch_size=patch_size,
        temporal_patch_size=2,
        merge_size=2,
        # Qwen3-VL normalises with 0.5; Qwen2-VL and Qwen2.5-VL keep the processor's CLIP statistics.
        **({"image_mean": HALF, "image_std": HALF} if patch_size == 16 else {}),
    )
    return PaddleOCRVLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def _qwen(sizes: TinySizes, config_name: str, vision: dict, *, patch_size=14, template=QWEN2_VL_CHAT_TEMPLATE,
          mrope_section=(2, 3, 3), rope=None, text=None):
    """A Qwen-VL family: shared tokenizer, processor, M-RoPE text config and generation ids."""
    import transformers

    processor = _qwen_processor(sizes, patch_size, template)
    tokenizer = processor.tokenizer
    head_dim = sizes.hidden_size // sizes.heads
    if 2 * sum(mrope_section) != head_dim:
        raise ValueError(f"hidden_size/heads must be {2 * sum(mrope_section)} for the tiny Qwen M-RoPE sections")
    rope_parameters = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": list(mrope_section), **(rope or {})}
    config = getattr(transformers, config_name)(
        text_config={**_text_widths(sizes, tokenizer), "rope_parameters": rope_parameters, **(text or {})},
        vision_config={
            "depth": sizes.vision_layers,
            "num_heads": sizes.vision_heads,
            "patch_size": patch_size,
            "initializer_range": sizes.initializer_range,
            **vision,
        },
        **{f"{name}_id": tokenizer.convert_tokens_to_ids(token) for name, token in QWEN_NAMED_TOKENS.items()},
    )
    end_of_text = tokenizer.pad_token_id  # Qwen-VL-Instruct stops at <|im_end|> or <|endoftext|>
    ids = {"pad_token_id": end_of_text, "bos_token_id": end_of_text, "eos_token_id": [tokenizer.eos_token_id, end_of_text]}
    return processor, config, ids


def _qwen_vision_widths(sizes: TinySizes) -> dict:
    """Qwen2.5-VL and Qwen3-VL towers: own width, merger projecting to the text width."""
    return {
        "hidden_size": sizes.vision_hidden_size,
        "intermediate_size": 2 * sizes.vision_hidden_size,
        "out_hidden_size": sizes.hidden_size,
    }


def _qwen2_vl(sizes: TinySizes):
    vision = {"embed_dim": sizes.vision_hidden_size, "hidden_size": sizes.hidden_size, "mlp_ratio": 2}
    return _qwen(sizes, "Qwen2VLConfig", vision)


def _qwen2_5_vl(sizes: TinySizes):
    vision = {
        **_qwen_vision_widths(sizes),
        "window_size": 56,  # 2x2 merged tokens per window, so windowing is exercised
        "fullatt_block_indexes": [sizes.vision_layers - 1],
    }
    return _qwen(sizes, "Qwen2_5_VLConfig", vision)


def _qwen3_vl(sizes: TinySizes):
    vision = {
        **_qwen_vision_widths(sizes),
        "num_position_embeddings": 64,  # an 8x8 learned grid, interpolated to each image
        "deepstack_visual_indexes": [0],
    }
    return _qwen(
        sizes,
        "Qwen3VLConfig",
        vision,
        patch_size=16,
        template=QWEN3_VL_CHAT_TEMPLATE,
        mrope_section=(4, 2, 2),
        rope={"mrope_interleaved": True},
        text={"head_dim": sizes.hidden_size // sizes.heads},
    )


def _gemma3(sizes: TinySizes):
    from transformers import Gemma3Config, Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tokenizer = build_metaspace_tokenizer(sizes.vocab_size)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": sizes.image_size, "width": sizes.image_size}, image_mean=HALF, image_std=HALF
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=sizes.mm_tokens_per_image,
    )
    head_dim = sizes.hidden_size // sizes.heads
    text = _text_widths(sizes, tokenizer)
    text.update(
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        num_key_value_heads=max(1, sizes.heads // 2),
        sliding_window=512,
        layer_types=["sliding_attention"] * (sizes.text_layers - 1) + ["full_attention"],
        tie_word_embeddings=True,
    )
    vision = _vision_widths(sizes)
    config = Gemma3Config(
        text_config=Gemma3TextConfig(**text),
        vision_config=SiglipVisionConfig(**{k: v for k, v in vision.items() if k != "initializer_range"}),
        mm_tokens_per_image=sizes.mm_tokens_per_image,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
        initializer_range=sizes.initializer_range,
        tie_word_embeddings=True,
    )
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    return processor, config, _ids(tokenizer, eos=[tokenizer.eos_token_id, end_of_turn])


def _smolvlm(sizes: TinySizes):
    from transformers import Idefics3Config, Idefics3Processor, Idefics3VisionConfig, LlamaConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tiles = [f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]
    tokenizer = _byte_level(
        sizes,
        bos="<|im_start|>",
        eos="<end_of_utterance>",
        pad="<|im_end|>",
        add_bos=False,
        extra=["<fake_token_around_image>", "<image>", "<global-img>", *tiles],
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": sizes.longest_edge},
        max_image_size={"longest_edge": sizes.image_size},
        do_image_splitting=sizes.do_image_splitting,
        image_mean=HALF,
        image_std=HALF,
    )
    scale_factor = 2
    image_seq_len = (sizes.image_size // sizes.patch_size) ** 2 // scale_factor**2
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    vision = _vision_widths(sizes)
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**vision),
        text_config=LlamaConfig(**_text_widths(sizes, tokenizer)),
        scale_factor=scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    return processor, config, _ids(tokenizer)


BUILDERS = {
    "llava": _llava,
    "llava_next": _llava_next,
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_5_vl,
    "qwen3_vl": _qwen3_vl,
    "gemma3": _gemma3,
    "smolvlm": _smolvlm,
}
