"""The policy: any image-text-to-text checkpoint plus a value head, and the CoT-scaled log-prob.

One code path for every model family: ``AutoProcessor`` + ``AutoModelForImageTextToText`` load a
Hub id or a local directory (the embedded tiny LLaVA, an SFT output). The model's input encoding
lives in :mod:`baselines.vlm_ppo.encoding`; nothing here knows a family or a token id.

Two entry points, as in cleanrl's agent:

* :meth:`ActorCritic.get_value` ``(prompts) -> values``, for bootstrapping;
* :meth:`ActorCritic.forward` (also :meth:`get_logprob_and_value`) ``(prompts, answers) ->``
  :class:`LogprobValue`: the λ-weighted answer log-prob, the value at the last prompt token, and
  per-token log-probs, from ONE teacher-forced pass that keeps only the last hidden state and only
  the logits of the answer positions.

Sampling and scoring use the same distribution: ``softmax(logits / T)`` with the same special
tokens suppressed. :func:`sampling_config` builds a fresh ``GenerationConfig`` and
:func:`generate` hides the checkpoint's own ``generation_config`` during the call, so a
checkpoint that ships ``repetition_penalty`` or ``no_repeat_ngram_size`` cannot change what is sampled.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple, Sequence

import torch
from torch import nn

from baselines.vlm_ppo.algo import action_logprob
from baselines.vlm_ppo.encoding import (
    Encoded,
    Encoder,
    batch_prompts,
    batch_sequences,
    frozen_tower,
    to_device,
    vision_tower_of,
)
from vlm_envs.text.parsing import find_action_key


class ValueHead(nn.Module):
    """``Linear(h, 1024) → ReLU → Linear(1024, 512) → ReLU → Linear(512, 1)`` as in RL4VLM, kept in fp32."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 1)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden.float()).squeeze(-1)


class FP32Linear(nn.Linear):
    """The LM head computed in fp32 whatever the weights' dtype: ``(hidden @ W.T)`` with both cast up.

    In bf16 a logit of ~30 is stored to 0.125, so a bf16 head moves sampled and scored log-probs
    apart; computed in fp32 they agree. ``generate`` and the scoring pass both call the model's
    ``lm_head``, so this one module serves both. A frozen low-precision weight is cast once and
    kept (recast when the tensor changes); a trainable one is cast in each call, so gradients flow.
    """

    _fp32_weight: torch.Tensor | None = None
    _fp32_key: tuple | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return nn.functional.linear(hidden.float(), self._weight_fp32(), bias)

    def _weight_fp32(self) -> torch.Tensor:
        weight = self.weight
        if weight.dtype == torch.float32 or weight.requires_grad:
            return weight.float()
        key = (weight.device, weight.data_ptr(), weight._version)
        if self._fp32_key != key:
            self._fp32_weight, self._fp32_key = weight.detach().float(), key
        return self._fp32_weight


def fp32_lm_head(vlm: nn.Module) -> None:
    """Make the output embedding an :class:`FP32Linear`, in place (same parameters, same state-dict keys)."""
    head = vlm.get_output_embeddings()
    if type(head) is not nn.Linear:
        raise TypeError(f"the output embedding of {type(vlm).__name__} is a {type(head).__name__}, not nn.Linear: "
                        "cannot run it in fp32")
    head.__class__ = FP32Linear


class LogprobValue(NamedTuple):
    """What one teacher-forced pass gives for a batch of (prompt, answer) pairs; all fp32."""

    logprob: torch.Tensor
    """(B,) λ·Σ thought-token log-probs + Σ action-token log-probs."""
    value: torch.Tensor | None
    """(B,) value of the prompt (read at its last token); None for a policy with no value head."""
    token_logprobs: torch.Tensor
    """(B, L) log-prob of each answer token, 0 on padding."""
    answer_mask: torch.Tensor
    """(B, L) True on real answer tokens."""
    thought_logprob: torch.Tensor
    """(B,) Σ log-probs of the thought tokens (before the ``"action"`` key)."""
    action_logprob: torch.Tensor
    """(B,) Σ log-probs of the action tokens (the key and what follows)."""
    entropy: torch.Tensor | None
    """(B,) mean token entropy of the tempered distribution; None unless asked for."""


def hidden_size_of(config) -> int:
    """The language model's hidden size, read from the config (never hard-coded)."""
    text_config = getattr(config, "text_config", None) or config
    return int(text_config.hidden_size)


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Tokens that end an answer: the tokenizer's EOS plus the checkpoint's own end-of-turn ids."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return sorted(i for i in ids if i is not None)


def suppressed_token_ids(tokenizer, stop_ids: Sequence[int] = ()) -> list[int]:
    """Special tokens the policy may never emit (image, pad, bos, unk, ...); stop tokens stay allowed."""
    keep = set(stop_ids) | {tokenizer.eos_token_id}
    # all_special_ids lists only the named roles; chat markers (<|im_start|>, <start_of_turn>, ...)
    # are flagged special only in added_tokens_decoder.
    added = {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
    return sorted((set(tokenizer.all_special_ids) | added) - keep)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float, suppress_ids: torch.Tensor,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 ``log softmax(logits / T)`` with suppressed ids at -inf (as in sampling), gathered at ``ids``."""
    logits = logits.float() / temperature
    if suppress_ids.numel():
        logits = logits.index_fill(-1, suppress_ids.to(logits.device), float("-inf"))
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return chosen, None
    probs = logp.exp()
    return chosen, -(probs * torch.where(probs > 0, logp, torch.zeros_like(logp))).sum(-1)


def split_masks(answer_mask: torch.Tensor, boundaries: Sequence[int | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Thought / action token masks (B, L): tokens before the boundary are thought, the rest action."""
    thought = torch.zeros_like(answer_mask, dtype=torch.float32)
    action = torch.zeros_like(thought)
    for i, k in enumerate(boundaries):
        if k is not None:
            thought[i, :k] = 1.0
            action[i, k:] = answer_mask[i, k:].float()
    return thought, action


def train_without_dropout(module: nn.Module) -> None:
    """Train mode (so gradient checkpointing is active) with every dropout off, LoRA's included:
    the policy being scored and optimised is then exactly the one that sampled.

    Attention dropout is no module: attention layers keep the config's rate as a float
    (``attention_dropout``, CLIP's ``dropout``) and apply it whenever they are in train mode, so
    those floats are set to 0 (for good: no PPO pass uses dropout)."""
    module.train()
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
        for name, value in vars(m).items():
            if "dropout" in name and isinstance(value, float) and value > 0:
                setattr(m, name, 0.0)


class ActorCritic(nn.Module):
    """A VLM (optionally peft-wrapped), its :class:`Encoder` and a value head at the last prompt token
    (``value_head=False``: none at all, for the critic-free algorithms: nothing to hold, optimise or
    leave unused under data parallelism)."""

    def __init__(self, vlm: nn.Module, encoder: Encoder, *, temperature: float, thought_coef: float,
                 value_head: bool = True):
        super().__init__()
        self.vlm = vlm
        self.encoder = encoder
        self.value_head = ValueHead(hidden_size_of(vlm.config)).to(next(vlm.parameters()).device) if value_head else None
        self.temperature = float(temperature)
        self.thought_coef = float(thought_coef)
        tokenizer = encoder.tokenizer
        self.stop_ids = stop_token_ids(tokenizer, getattr(vlm, "generation_config", None))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.suppress_list = suppressed_token_ids(tokenizer, self.stop_ids)
        self.register_buffer("suppress_ids", torch.as_tensor(self.suppress_list, dtype=torch.long,
                                                             device=self.device), persistent=False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, prompts: Sequence[Encoded], answers: Sequence[Sequence[int]],
                boundaries: Sequence[int | None], with_entropy: bool = False,
                temperature: float | None = None) -> LogprobValue:
        """λ-weighted log-probs and values of ``answers`` after ``prompts``, from one teacher-forced pass."""
        batch = batch_sequences(prompts, answers, self.pad_id)
        length = batch.answer_ids.shape[1]
        # Per sample, the columns whose outputs we need: the last prompt token (value, and the
        # logits of answer token 0) and the answer tokens but the last (logits of tokens 1..L-1).
        columns = (batch.prompt_lens - 1)[:, None] + torch.arange(max(length, 1))[None]
        columns = columns.clamp(max=batch.inputs["input_ids"].shape[1] - 1)
        with frozen_tower(self.vlm, self.encoder, prompts, self.device):
            hidden, logits = self._run(batch.inputs, columns)
        value = None if self.value_head is None else self.value_head(hidden[:, 0])
        answer_mask = batch.answer_mask.to(logits.device)
        t = self.temperature if temperature is None else temperature
        lp, entropy = token_logprobs(logits[:, :length], batch.answer_ids.to(logits.device), t,
                                     self.suppress_ids, with_entropy)
        lp = lp.masked_fill(~answer_mask, 0.0)
        thought, action = (m.to(logits.device) for m in split_masks(answer_mask.cpu(), boundaries))
        thought_lp, action_lp = (lp * thought).sum(-1), (lp * action).sum(-1)
        logprob = action_logprob(lp, thought, action, self.thought_coef)
        mean_entropy = None
        if entropy is not None:
            mean_entropy = entropy.masked_fill(~answer_mask, 0.0).sum(-1) / answer_mask.sum(-1).clamp(min=1)
        return LogprobValue(logprob, value, lp, answer_mask, thought_lp, action_lp, mean_entropy)

    get_logprob_and_value = forward

    def get_value(self, prompts: Sequence[Encoded]) -> torch.Tensor:
        """(B,) values of prompts alone (the bootstrap)."""
        if self.value_head is None:
            raise ValueError("this policy has no value head (a critic-free algorithm)")
        return self(prompts, [[] for _ in prompts], [None for _ in prompts]).value

    def _run(self, inputs: dict, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (B, K, H) entering the LM head, and the logits (B, K, V), at ``columns`` (B, K).

        Only the last hidden state is read (captured at the LM head's input), no layer stack is
        kept, no KV cache is built, and the head runs on the needed columns only.
        """
        captured = []
        head = self.vlm.get_output_embeddings()
        hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            kwargs = self.encoder.model_inputs(self.vlm, to_device(inputs, self.device))
            out = self.vlm(**kwargs, use_cache=False, logits_to_keep=columns.to(self.device))
        finally:
            hook.remove()
        return captured[0], out.logits

    # --- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: Sequence[Encoded], *, greedy: bool, max_new_tokens: int,
                 return_scores: bool = False, with_logprobs: bool = False):
        """Sample (or greedily decode) one answer per prompt from exactly ``softmax(logits / T)``.

        Returns each answer's ids, cut after its first stop token (kept); with ``with_logprobs``
        (sampling only) also each answer's sampled log-probs (:func:`sampled_logprobs`); with
        ``return_scores`` also the per-step processed scores (for tests), in that order.
        """
        if greedy and with_logprobs:
            raise ValueError("with_logprobs needs sampling (greedy=False): greedy decoding draws from no distribution")
        config = sampling_config(greedy=greedy, temperature=self.temperature, max_new_tokens=max_new_tokens,
                                 pad_id=self.pad_id, stop_ids=self.stop_ids, suppress_ids=self.suppress_list,
                                 output_scores=return_scores or with_logprobs)
        with frozen_tower(self.vlm, self.encoder, prompts, self.device), _own_generation_config(self.vlm):
            inputs = self.encoder.model_inputs(self.vlm, to_device(batch_prompts(prompts, self.pad_id), self.device))
            width = inputs["input_ids"].shape[1]
            out = self.vlm.generate(**inputs, generation_config=config)
        answers = []
        for seq in out.sequences[:, width:].tolist():
            cut = next((k + 1 for k, t in enumerate(seq) if t in self.stop_ids), len(seq))
            answers.append(seq[:cut])
        extras = (sampled_logprobs(out.scores, out.sequences[:, width:], answers),) if with_logprobs else ()
        extras += (out.scores,) if return_scores else ()
        return (answers, *extras) if extras else answers


def sampled_logprobs(scores: Sequence[torch.Tensor], tokens: torch.Tensor, answers: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Per answer, the fp32 log-prob of each token under the distribution it was drawn from.

    ``scores[t]`` (B, V) are generate's processed scores of step ``t``: the fp32 logits after
    suppression and division by T, exactly what generate passes to its softmax and multinomial.
    In bf16 these differ from the teacher-forced pass's log-probs (another kernel path, the KV
    cache, bf16-rounded logits): the trainer logs that gap and corrects for it.
    """
    steps = torch.stack([torch.log_softmax(s.float(), -1).gather(-1, tokens[:, t, None].to(s.device)).squeeze(-1)
                         for t, s in enumerate(scores)], 1).cpu()
    return [steps[i, :len(a)] for i, a in enumerate(answers)]


def sampling_config(*, greedy: bool, temperature: float, max_new_tokens: int, pad_id: int, stop_ids: Sequence[int],
                    suppress_ids: Sequence[int], output_scores: bool = False):
    """A complete ``GenerationConfig``: every logits processor that could reshape the distribution is off."""
    from transformers import GenerationConfig

    sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0, "min_p": None, "typical_p": 1.0,
                                  "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
    return GenerationConfig(
        do_sample=not greedy, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0,
        repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0, bad_words_ids=None, sequence_bias=None, forced_bos_token_id=None,
        forced_eos_token_id=None, begin_suppress_tokens=None, exponential_decay_length_penalty=None,
        renormalize_logits=False, suppress_tokens=list(suppress_ids), pad_token_id=pad_id,
        eos_token_id=list(stop_ids), return_dict_in_generate=True, output_scores=output_scores, use_cache=True,
        **sampling,
    )


@contextlib.contextmanager
def _own_generation_config(vlm: nn.Module):
    """Hide the checkpoint's ``generation_config`` so ``generate`` fills no unset field from it."""
    from transformers import GenerationConfig

    model = vlm.get_base_model() if hasattr(vlm, "get_base_model") else vlm
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


# --- the λ boundary -----------------------------------------------------------------------------
def action_boundary(tokenizer, ids: Sequence[int]) -> int | None:
    """Index of the answer token holding the opening quote of the last ``"action":`` key.

    Tokens before it are "thought" tokens (scaled by λ), it and those after are "action" tokens.
    ``None`` when the decoded text has no action key. The character offset comes from the
    tokenizer's ``offset_mapping`` when re-encoding the decoded text gives back the same ids (the
    usual case); otherwise (a non-canonical split the sampler produced, or a sentencepiece
    tokenizer that merges ``▁"``) from the decoded prefixes.
    """
    ids = list(ids)
    special = set(tokenizer.all_special_ids)
    n = len(ids)
    while n and ids[n - 1] in special:
        n -= 1
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


def boundaries_of(tokenizer, answers: Sequence[Sequence[int]], missing_action_key: str) -> list[int | None]:
    """Per answer: its first action token, or None (left out of the policy loss).

    ``missing_action_key="last5"`` reproduces RL4VLM for answers with no action key: their last
    5 tokens count as the action.
    """
    out = []
    for ids in answers:
        k = action_boundary(tokenizer, ids) if ids else None
        if k is None and ids and missing_action_key == "last5":
            k = max(len(ids) - 5, 0)
        out.append(k)
    return out


def keep_format_failures(answers: Sequence[Sequence[int]], boundaries: Sequence[int | None], stop_ids: Sequence[int],
                         penalised: Sequence[bool]) -> list[int | None]:
    """``boundaries`` with each key-less answer that was cut off (no stop token: it ran to
    ``max_new_tokens``) or ``penalised`` (given the format penalty) kept in the policy loss: its
    boundary at its end, so the whole answer counts as thought tokens (scaled by λ)."""
    stops = set(stop_ids)
    return [len(ids) if k is None and ids and (ids[-1] not in stops or bad) else k
            for ids, k, bad in zip(answers, boundaries, penalised)]


# --- loading ------------------------------------------------------------------------------------
def load_policy(name_or_path: str, *, dtype: str = "float32", lora_r: int = 0, lora_alpha: int = 256,
                lora_dropout: float = 0.05, train_vision: bool = False, adapter_path: str | None = None):
    """Load processor + model through the Auto classes (safetensors only); optionally wrap in LoRA.

    Returns ``(processor, vlm)``. The vision tower (found by structure) is frozen unless
    ``train_vision``. LoRA goes on every linear layer outside the vision tower (inside it too with
    ``train_vision``) except the output head, which runs in fp32 (:class:`FP32Linear`). LoRA
    adapters are fp32 on any base dtype.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor  # the train extra (checked by the CLI)

    try:
        processor = AutoProcessor.from_pretrained(name_or_path)
    except (ImportError, ValueError) as err:
        if "torchvision" in str(err).lower():
            raise ImportError(f"the processor of {name_or_path} needs torchvision (Qwen-VL's bundles a video processor): "
                              f"pip install torchvision (the build matching your torch)") from err
        raise
    processor.tokenizer.padding_side = "left"  # not kept across save/load in transformers v5
    # No Hub kernels: transformers would fetch them at run time and re-pick them at every train/eval
    # switch, so the sampling (eval) and scoring (train) passes could run different kernels.
    vlm = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=getattr(torch, dtype), use_safetensors=True,
                                                      use_kernels=False)
    fp32_lm_head(vlm)
    tower_name, tower = vision_tower_of(vlm)
    if adapter_path or lora_r > 0:
        from peft import LoraConfig, PeftModel, get_peft_model

        if adapter_path:
            vlm = PeftModel.from_pretrained(vlm, adapter_path, is_trainable=True)
        else:
            head = vlm.get_output_embeddings()
            targets = [name for name, m in vlm.named_modules()
                       if isinstance(m, nn.Linear) and m is not head
                       and (train_vision or not (name == tower_name or name.startswith(tower_name + ".")))]
            config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
                                target_modules=targets, task_type="CAUSAL_LM")
            vlm = get_peft_model(vlm, config)
        check_adapters_fp32(vlm)
    elif not train_vision:
        tower.requires_grad_(False)
    return processor, vlm


def check_adapters_fp32(vlm: nn.Module) -> None:
    """Refuse low-precision LoRA weights: lr-1e-5 updates round away in bf16 (peft casts adapters
    to fp32 on a bf16/fp16 base from version 0.12 on)."""
    low = sorted({str(p.dtype) for p in vlm.parameters() if p.requires_grad and p.dtype != torch.float32})
    if low:
        import peft

        raise ValueError(f"LoRA adapters are {', '.join(low)}, not float32 (peft {peft.__version__}): "
                         "pip install 'peft>=0.12'")


def trainable_vision_parameters(vlm: nn.Module) -> list[str]:
    """Names of trainable parameters inside the vision tower (empty when it is frozen)."""
    base = vlm.get_base_model() if hasattr(vlm, "get_base_model") else vlm
    name, tower = vision_tower_of(base)
    return [f"{name}.{n}" for n, p in tower.named_parameters() if p.requires_grad]
