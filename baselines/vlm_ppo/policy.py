"""The policy: any image-text-to-text checkpoint plus a value head, and the CoT-scaled log-prob.

One code path for every model: ``AutoProcessor`` + ``AutoModelForImageTextToText`` load a Hub id
(``llava-hf/llava-v1.6-mistral-7b-hf``) or a local directory (the embedded tiny LLaVA, an SFT
output). Nothing here knows token ids: the ``"action"`` boundary comes from character offsets
(spec ppo.md §4.2) and the suppressed tokens from the tokenizer's own special-token list.

Sequence layout used everywhere (generation, re-evaluation, SFT)::

    [pad .. pad  prompt_0 .. prompt_{P-1} | y_0 .. y_{L-1}  pad .. pad]
     left-padded prompt, same length P_max   generated, right-padded to L_max

so the token ``y_k`` of every sample sits at column ``P_max + k``, its log-prob comes from the
logits at column ``P_max + k - 1``, and the value head reads the hidden state at column
``P_max - 1`` (the last prompt token), exactly as during ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from vlm_envs.text.parsing import find_action_key


class ValueHead(nn.Module):
    """The reference head ``Linear(h, 1024) → ReLU → Linear(1024, 512) → ReLU → Linear(512, 1)``, kept in fp32."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 1)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden.float()).squeeze(-1)


def hidden_size_of(config: Any) -> int:
    """The language model's hidden size, read from the config (never hard-coded, bug T23)."""
    text_config = getattr(config, "text_config", None) or config
    return int(text_config.hidden_size)


def suppressed_token_ids(tokenizer) -> list[int]:
    """Special tokens the policy may never emit (image, pad, bos, unk, ...); EOS stays allowed."""
    eos = tokenizer.eos_token_id
    return sorted({i for i in tokenizer.all_special_ids if i != eos})


@dataclass
class Batch:
    """Model inputs for a batch of (prompt, generated text) pairs in the layout above."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask, position_ids, pixel_values, ...
    gen_ids: torch.Tensor  # (B, L_max) generated ids (pad where gen_mask is 0)
    gen_mask: torch.Tensor  # (B, L_max) 1 for real generated tokens
    prompt_len: int  # P_max


def collate(
    processor,
    prompt_ids: Sequence[Sequence[int]],
    images: Sequence[np.ndarray],
    gen_ids: Sequence[Sequence[int]] | None = None,
    device: torch.device | str = "cpu",
) -> Batch:
    """Pad prompts on the left and generations on the right; preprocess the uint8 images."""
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen_ids = gen_ids if gen_ids is not None else [[] for _ in prompt_ids]
    p_max = max(len(p) for p in prompt_ids)
    l_max = max((len(g) for g in gen_ids), default=0)
    b = len(prompt_ids)
    ids = torch.full((b, p_max + l_max), pad, dtype=torch.long)
    mask = torch.zeros((b, p_max + l_max), dtype=torch.long)
    for i, (p, g) in enumerate(zip(prompt_ids, gen_ids)):
        ids[i, p_max - len(p):p_max] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, p_max - len(p):p_max] = 1
        if len(g):
            ids[i, p_max:p_max + len(g)] = torch.as_tensor(list(g), dtype=torch.long)
            mask[i, p_max:p_max + len(g)] = 1
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # what generate() uses
    pixels = processor.image_processor([np.asarray(im) for im in images], return_tensors="pt")
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids, **pixels}
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return Batch(inputs, ids[:, p_max:].to(device), mask[:, p_max:].to(device), p_max)


def encode_prompts(processor, texts: Sequence[str], images: Sequence[np.ndarray]) -> list[list[int]]:
    """Token ids of each full prompt (conversation string with its image placeholder expanded)."""
    from PIL import Image

    out = []
    for text, image in zip(texts, images):
        enc = processor(text=[text], images=[Image.fromarray(np.asarray(image))], return_tensors="np")
        out.append(enc["input_ids"][0].tolist())
    return out


class ActorCritic(nn.Module):
    """A VLM (optionally peft-wrapped) plus a value head at the last prompt token."""

    def __init__(self, vlm: nn.Module, suppress_ids: Sequence[int]):
        super().__init__()
        self.vlm = vlm
        self.value_head = ValueHead(hidden_size_of(vlm.config))
        self.register_buffer("suppress_ids", torch.as_tensor(list(suppress_ids), dtype=torch.long), persistent=False)

    def forward(self, inputs: dict[str, torch.Tensor], prompt_len: int, gen_len: int, gen_ids: torch.Tensor,
                temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token log-probs (B, L) and entropies (B, L) of the tempered, masked softmax; values (B,)."""
        out = self.vlm(**inputs, output_hidden_states=True, logits_to_keep=gen_len + 1 if gen_len else 1)
        hidden = out.hidden_states[-1]
        values = self.value_head(hidden[:, prompt_len - 1])
        if gen_len == 0:
            empty = hidden.new_zeros((hidden.shape[0], 0), dtype=torch.float32)
            return empty, empty, values
        logits = out.logits[:, :gen_len].float()  # columns P-1 .. P+L-2 predict y_0 .. y_{L-1}
        token_lp, entropy = token_logprobs(logits, gen_ids, temperature, self.suppress_ids)
        real = inputs["attention_mask"][:, prompt_len:].bool()  # padding is a suppressed id: -inf, zero it
        return token_lp.masked_fill(~real, 0.0), entropy.masked_fill(~real, 0.0), values


def token_logprobs(logits: torch.Tensor, gen_ids: torch.Tensor, temperature: float,
                   suppress_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``log softmax(logits / T)`` with suppressed ids at -inf (as in sampling), gathered at ``gen_ids``."""
    logits = logits.float() / temperature
    if suppress_ids is not None and suppress_ids.numel():
        logits = logits.index_fill(-1, suppress_ids.to(logits.device), float("-inf"))
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, gen_ids.unsqueeze(-1)).squeeze(-1)
    probs = logp.exp()
    entropy = -(probs * torch.where(probs > 0, logp, torch.zeros_like(logp))).sum(-1)
    return chosen, entropy


def _strip_trailing_specials(ids: Sequence[int], special: set[int]) -> int:
    n = len(ids)
    while n and ids[n - 1] in special:
        n -= 1
    return n


def action_boundary(tokenizer, ids: Sequence[int]) -> int | None:
    """Index of the generated token holding the opening quote of the last ``"action":`` key.

    Tokens before it are "thought" tokens (scaled by λ), it and those after are "action" tokens.
    ``None`` when the decoded text has no action key. Character offsets come from the tokenizer's
    ``offset_mapping`` when re-encoding the decoded text gives back the same ids (the usual case);
    otherwise (a non-canonical split the sampler happened to produce) from the lengths of the
    decoded prefixes.
    """
    ids = list(ids)
    special = set(tokenizer.all_special_ids)
    n = _strip_trailing_specials(ids, special)
    core = ids[:n]
    text = tokenizer.decode(core, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    span = find_action_key(text)
    if span is None:
        return None
    start = span[0]
    if not any(i in special for i in core) and getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if enc["input_ids"] == core:
            for k, (_, end) in enumerate(enc["offset_mapping"]):
                if end > start:
                    return k
    prefixes = tokenizer.batch_decode([core[:k + 1] for k in range(n)], skip_special_tokens=True,
                                      clean_up_tokenization_spaces=False)
    for k, prefix in enumerate(prefixes):
        if len(prefix) > start and prefix[:start + 1] == text[:start + 1]:
            return k
    return None


def generate(vlm: nn.Module, processor, prompt_ids: Sequence[Sequence[int]], images: Sequence[np.ndarray], *,
             greedy: bool, temperature: float, max_new_tokens: int, suppress_ids: Sequence[int],
             device: torch.device | str = "cpu", return_scores: bool = False):
    """Sample (or greedily decode) one answer per prompt from exactly ``softmax(logits / T)``.

    ``top_k=0, top_p=1`` are passed explicitly (bug T16). Returns the generated ids of each
    sample, cut after the first EOS (kept), and optionally the per-step scores.
    """
    tokenizer = processor.tokenizer
    batch = collate(processor, prompt_ids, images, device=device)
    inputs = {k: v for k, v in batch.inputs.items() if k != "position_ids"}
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}
    out = vlm.generate(
        **inputs, do_sample=not greedy, max_new_tokens=max_new_tokens, num_beams=1,
        suppress_tokens=list(suppress_ids), pad_token_id=pad, eos_token_id=eos,
        return_dict_in_generate=True, output_scores=return_scores, **sampling,
    )
    seqs = out.sequences[:, batch.prompt_len:].tolist()
    gens = []
    for seq in seqs:
        cut = seq.index(eos) + 1 if eos in seq else len(seq)
        gens.append(seq[:cut])
    return (gens, out.scores) if return_scores else gens


def load_policy(name_or_path: str, *, dtype: str = "float32", lora_r: int = 0, lora_alpha: int = 256,
                lora_dropout: float = 0.05, train_vision: bool = False, adapter_path: str | None = None):
    """Load processor + model through the Auto classes; optionally wrap the model in LoRA.

    Returns ``(processor, vlm)``. The vision tower is frozen unless ``train_vision`` (bug T9).
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor  # the train extra (checked by the CLI)

    processor = AutoProcessor.from_pretrained(name_or_path)
    processor.tokenizer.padding_side = "left"  # not kept across save/load in transformers v5
    vlm = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=getattr(torch, dtype))
    if adapter_path or lora_r > 0:
        from peft import LoraConfig, PeftModel, get_peft_model

        if adapter_path:
            vlm = PeftModel.from_pretrained(vlm, adapter_path, is_trainable=True)
        else:
            parts = r"(language_model|multi_modal_projector" + (r"|vision_tower)" if train_vision else ")")
            target = parts + r".*\.(q_proj|k_proj|v_proj|o_proj|out_proj|gate_proj|up_proj|down_proj|fc1|fc2|linear_1|linear_2)$"
            config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
                                target_modules=r".*" + target, task_type="CAUSAL_LM")
            vlm = get_peft_model(vlm, config)
    elif not train_vision:
        for name, param in vlm.named_parameters():
            if "vision_tower" in name:
                param.requires_grad_(False)
    return processor, vlm
