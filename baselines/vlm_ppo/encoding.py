"""Observations to model inputs: the one home of how a model reads an (image, prompt) pair.

:class:`Encoder` turns the task prompt into the model's conversation text and calls the model's own
processor once per transition. Everything the processor returns is kept in an :class:`Encoded`
record stored with the transition: the token ids, the per-token type ids some families need
(``mm_token_type_ids`` for Qwen-VL, ``token_type_ids`` for Gemma 3) and the image tensors
(``pixel_values`` plus ``image_grid_thw``, ``image_sizes`` or ``pixel_attention_mask``). Rollout,
bootstrap, re-scoring, SFT and evaluation all batch those records with the two functions below,
so no image is preprocessed twice and no family-specific input is dropped.

Positions are left to the model: the trainer never builds ``position_ids``. Generation takes a
left-padded batch (``generate`` derives positions, and Qwen's M-RoPE index, from the attention
mask); teacher-forced passes take a right-padded ``[prompt ; answer ; pad]`` batch, where every
real token sits where it would sit alone, so the model's default positions are already right.

Image modes:

* ``native``: the checkpoint's own processor (AnyRes tiling for LLaVA-NeXT, dynamic resolution
  for Qwen-VL, image splitting for SmolVLM, ...).
* ``reference``: RL4VLM's preprocessing for LLaVA-style models: resize the shorter side to the
  vision tower's input size (bicubic), centre-crop, CLIP-normalise, and feed the plain
  ``(patches)`` image tokens of the tower's feature layer through the projector, with no AnyRes
  tiles and no newline tokens (576 tokens at 336 px). The released RL4VLM SFT checkpoints expect it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from vlm_envs.text import chat_messages, conversation
from vlm_envs.text.prompts import CONV_TEMPLATES, IMAGE_MODES, LLAVA_TEMPLATES
LLAVA_IMAGE_PLACEHOLDER = "<image>"
_TOKEN_KEYS = ("input_ids", "attention_mask")


@dataclass
class Encoded:
    """One (prompt, image) pair as the model's processor encodes it."""

    input_ids: torch.Tensor
    """(P,) prompt token ids, image placeholders already expanded."""
    per_token: dict[str, torch.Tensor] = field(default_factory=dict)
    """(P,) processor outputs aligned with ``input_ids`` (``mm_token_type_ids``, ``token_type_ids``)."""
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    """Image inputs of this sample, leading dim = its images or patches (``pixel_values``, ``image_grid_thw``, ...)."""
    tower_output: tuple[int, Any] | None = None
    """``(tower_token(tower), output)``: a frozen vision tower's output for this sample, on the model's device,
    recorded by the first pass that needs it and replayed in every later one (:func:`frozen_tower`)."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class SequenceBatch:
    """A right-padded ``[prompt ; answer ; pad]`` batch for teacher-forced passes."""

    inputs: dict[str, Any]
    """Model keyword arguments (no ``position_ids``)."""
    answer_ids: torch.Tensor
    """(B, L) answer tokens, 0 where ``answer_mask`` is 0."""
    answer_mask: torch.Tensor
    """(B, L) bool, True on real answer tokens."""
    prompt_lens: torch.Tensor
    """(B,) prompt length of each sample: its last prompt token is at column ``prompt_lens - 1``."""


def vision_config_of(config) -> Any:
    vision = getattr(config, "vision_config", None)
    if vision is None:
        raise ValueError(f"{type(config).__name__} has no vision_config: not an image-text-to-text model")
    return vision


def vision_tower_of(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """``(name, module)`` of the vision encoder: the sub-model built from ``config.vision_config``.

    Found by structure (the module whose config is the model's vision config), not by a name
    such as ``vision_tower``, so LLaVA's ``vision_tower``, Qwen-VL's ``visual`` and Idefics3's
    ``vision_model`` are all found; for Qwen-VL it includes the patch merger.
    """
    vision = vision_config_of(model.config)
    matches = [(name, m) for name, m in model.named_modules()
               if getattr(m, "config", None) is not None and m is not model
               and type(m.config) is type(vision) and m.config.to_dict() == vision.to_dict()]
    if not matches:
        raise ValueError(f"no submodule of {type(model).__name__} is built from its vision_config "
                         f"({type(vision).__name__}); cannot locate the vision tower")
    return min(matches, key=lambda nm: nm[0].count("."))  # the outermost one


class Encoder:
    """Conversation text and processor outputs for one model; validated against the model at start.

    Args:
        processor: the checkpoint's ``AutoProcessor``.
        config: the model config (used to check the template and the image mode).
        conv_template: ``llava_v1``/``vicuna_v1`` (LLaVA conversation strings with an ``<image>``
            placeholder) or ``chat_template`` (the processor's own chat template).
        image_mode: ``native`` or ``reference`` (see the module docstring).
    """

    def __init__(self, processor, config, conv_template: str = "llava_v1", image_mode: str = "native"):
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config
        self.conv_template = conv_template
        self.image_mode = image_mode
        self.family = getattr(config, "model_type", type(config).__name__)
        self._check_template()
        if image_mode == "reference":
            self._check_reference_mode()
            vision = vision_config_of(config)
            self.reference_size = int(vision.image_size)
            self.reference_tokens = (vision.image_size // vision.patch_size) ** 2

    # --- text ---------------------------------------------------------------------------------
    def render(self, prompt: str) -> str:
        """The model's full input text for a task prompt (image placeholder included)."""
        if self.conv_template == "chat_template":
            return self.processor.apply_chat_template(chat_messages(prompt), add_generation_prompt=True, tokenize=False)
        return conversation(prompt, self.conv_template)

    @property
    def adds_special_tokens(self) -> bool:
        """A chat template writes its own BOS; the LLaVA conversation strings rely on the tokenizer's."""
        return self.conv_template != "chat_template"

    def answer_ids(self, prompt_text: str, answer: str) -> list[int]:
        """Target tokens of ``answer`` exactly as they follow ``prompt_text`` in context, plus the stop token.

        The answer is tokenised together with the prompt and the prompt's tokens are cut off, so a
        tokenizer that merges the leading space (sentencepiece ``▁``) gives the same ids the model
        would produce itself; if the join changes the prompt's own tokens, the answer is tokenised alone.
        """
        prompt_ids = self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        joint = self.tokenizer(prompt_text + answer, add_special_tokens=False)["input_ids"]
        if joint[:len(prompt_ids)] == prompt_ids:
            ids = joint[len(prompt_ids):]
        else:
            ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id]

    def _check_template(self) -> None:
        placeholder = getattr(self.processor, "image_token", None) or LLAVA_IMAGE_PLACEHOLDER
        has_chat = getattr(self.processor, "chat_template", None) is not None
        if self.conv_template == "chat_template":
            if not has_chat:
                raise ValueError(f"conv_template='chat_template' but the {self.family} processor has no chat template; "
                                 f"use conv_template='llava_v1'")
            return
        if self.conv_template not in LLAVA_TEMPLATES:
            raise ValueError(f"conv_template must be one of {CONV_TEMPLATES}, got {self.conv_template!r}")
        if placeholder != LLAVA_IMAGE_PLACEHOLDER or "llava" not in self.family:
            raise ValueError(
                f"conv_template={self.conv_template!r} is LLaVA's conversation format with an '<image>' placeholder, "
                f"but this is a {self.family} model (image token {placeholder!r}); use conv_template='chat_template'")

    def _check_reference_mode(self) -> None:
        model_types = ("llava", "llava_next")
        if self.family not in model_types:
            raise ValueError(f"image_mode='reference' is RL4VLM's LLaVA preprocessing (models {model_types}); "
                             f"a {self.family} model supports image_mode='native' only")

    # --- images ---------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], images: Sequence[np.ndarray]) -> list[Encoded]:
        """One :class:`Encoded` per (task prompt, uint8 frame) pair."""
        return [self._encode_one(self.render(p), np.asarray(im)) for p, im in zip(prompts, images)]

    def encode_observations(self, obs: dict, prompt_for) -> list[Encoded]:
        """Encode a batch of observations (``obs["text"]``, ``obs["image"]``); ``prompt_for`` maps an
        observation's text to its task prompt. The one path from observations to model inputs."""
        return self.encode([prompt_for(text) for text in obs["text"]], list(obs["image"]))

    def _encode_one(self, text: str, image: np.ndarray) -> Encoded:
        if self.image_mode == "reference":
            expanded = text.replace(LLAVA_IMAGE_PLACEHOLDER, LLAVA_IMAGE_PLACEHOLDER * self.reference_tokens)
            ids = self.tokenizer(expanded, return_tensors="pt", add_special_tokens=self.adds_special_tokens)["input_ids"][0]
            return Encoded(ids, {}, {"pixel_values": self.reference_pixels(image)})
        from PIL import Image

        out = self.processor(text=[text], images=[Image.fromarray(image)], return_tensors="pt",
                             add_special_tokens=self.adds_special_tokens)
        ids = out["input_ids"][0]
        per_token, image_inputs = {}, {}
        for key, value in out.items():
            if key in _TOKEN_KEYS or not isinstance(value, torch.Tensor):
                continue
            if value.ndim == 2 and value.shape == out["input_ids"].shape:
                per_token[key] = value[0]
            else:
                image_inputs[key] = value
        return Encoded(ids, per_token, image_inputs)

    def reference_pixels(self, image: np.ndarray) -> torch.Tensor:
        """(1, 3, S, S): shorter side resized to S (bicubic), centre-cropped, scaled, CLIP-normalised."""
        from PIL import Image

        size = self.reference_size
        pil = Image.fromarray(image)
        w, h = pil.size
        scale = size / min(w, h)
        pil = pil.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        left, top = (pil.size[0] - size) // 2, (pil.size[1] - size) // 2
        arr = np.asarray(pil.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        ip = self.processor.image_processor
        arr = (arr - np.asarray(ip.image_mean, np.float32)) / np.asarray(ip.image_std, np.float32)
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]

    def model_inputs(self, model: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        """Forward/generate keyword arguments for a batch; the reference mode splices its plain image tokens."""
        if self.image_mode != "reference":
            return inputs
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        inputs = dict(inputs)
        features = reference_image_features(model, inputs.pop("pixel_values"))
        return {**inputs, "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=list(features))}}

    def image_features(self, model: torch.nn.Module, images: dict[str, torch.Tensor]) -> Sequence[torch.Tensor]:
        """Per image, its projected tokens (tokens, hidden): the mode's image path (tower, then projector)
        on image inputs already on the model's device."""
        if self.image_mode == "reference":
            return reference_image_features(model, images["pixel_values"])
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return base.model.get_image_features(**images, return_dict=True).pooler_output


def reference_image_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, patches, hidden): vision-tower feature layer, CLS dropped, through the projector (LLaVA's plain path)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    _, tower = vision_tower_of(base)
    projector = base.model.multi_modal_projector
    hidden = tower(pixel_values.to(tower.dtype), output_hidden_states=True).hidden_states[config.vision_feature_layer]
    if config.vision_feature_select_strategy == "default":
        hidden = hidden[:, 1:]
    return projector(hidden)


# --- the frozen vision tower, run once per transition --------------------------------------------
_TOWER_TOKENS = itertools.count()


def tower_token(tower: torch.nn.Module) -> int:
    """A number no other tower in this process has or will have (unlike ``id``, which a new object
    can reuse once the old one is freed): which tower recorded an :attr:`Encoded.tower_output`."""
    if "_replay_token" not in tower.__dict__:
        tower._replay_token = next(_TOWER_TOKENS)
    return tower.__dict__["_replay_token"]


@contextlib.contextmanager
def frozen_tower(model: torch.nn.Module, encoder: Encoder, encoded: Sequence[Encoded], device):
    """Within the context, the vision tower replays the recorded outputs of ``encoded`` instead of running.

    A frozen tower's output depends on the image alone, so it is recorded once per sample (in eval
    mode, on ``device``), kept in :attr:`Encoded.tower_output` and replayed in every later pass:
    generate, scoring, the KL reference, each epoch. Only the tower is replayed: everything after
    it (LLaVA's feature-layer selection and LoRA'd projector, LLaVA-NeXT's AnyRes packing, Idefics3's
    connector, Qwen's split by ``image_grid_thw``) runs as usual, so this holds for every family
    whose image path calls its tower once per pass with the images in batch order. A tower with
    trainable parameters (``--train-vision true``) runs in every pass as before.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _, tower = vision_tower_of(base)
    if not encoded or any(p.requires_grad for p in tower.parameters()):
        yield
        return
    token = tower_token(tower)
    for e in encoded:
        if e.tower_output is None or e.tower_output[0] != token:  # unseen, or seen by another model
            e.tower_output = (token, _record_tower(model, tower, encoder, e, device))
    outputs = [e.tower_output[1] for e in encoded]
    replay = type(outputs[0])(**{key: _concat([out[key] for out in outputs]) for key in outputs[0].keys()})
    calls = []

    def replayed(*args, **kwargs):
        if calls:
            raise RuntimeError(f"the {encoder.family} image path ran its vision tower twice in one pass: "
                               "its recorded outputs cannot be replayed (use --train-vision true to run it every time)")
        calls.append(1)
        return replay

    tower.forward = replayed  # an instance attribute: nn.Module.__call__ (and its hooks) now reach it
    try:
        yield
    finally:
        del tower.forward


def release_tower_outputs(encoded: Sequence[Encoded]) -> None:
    """Free the recorded tower outputs of ``encoded`` (held on the device): for records kept beyond
    the passes that replay them, as SFT's samples are for the whole run."""
    for e in encoded:
        e.tower_output = None


@torch.no_grad()
def _record_tower(model: torch.nn.Module, tower: torch.nn.Module, encoder: Encoder, encoded: Encoded, device):
    """The tower's output fields for one sample that the image path reads, as the tower returns them
    (the image path then overwrites ``pooler_output`` with the projected features on the same object).

    Whatever the image path never reads (LLaVA's ``last_hidden_state`` beside its feature layer,
    Qwen-VL's pre-merger states beside the merged ones, the hidden layers no projector takes) is
    dropped: the replay runs the same path, so it never reads them either.
    """
    recorded, read = [], set()

    def record(_module, _args, out):  # keep the fields as returned; the image path gets a copy that notes its reads
        recorded.append((type(out), dict(out)))
        return _reading(out, read)

    hook = tower.register_forward_hook(record)
    was_training = tower.training
    tower.eval()
    try:
        encoder.image_features(model, to_device(encoded.images, device))
    finally:
        hook.remove()
        tower.train(was_training)
    output_type, fields = recorded[0]
    out = output_type(**{key: value for key, value in fields.items() if key in read})
    layers = getattr(encoder.config, "vision_feature_layer", None)
    if out.get("hidden_states") is not None and layers is not None:  # keep only the layers the projector reads
        count = len(out["hidden_states"])
        keep = {layer % count for layer in ([layers] if isinstance(layers, int) else layers)}
        out["hidden_states"] = tuple(h if i in keep else None for i, h in enumerate(out["hidden_states"]))
    return out


def _reading(out, read: set[str]):
    """A copy of the tower output ``out`` that adds to ``read`` each field read from it (every field,
    if it is read as a whole: iterated, indexed by position, converted)."""
    names = {f.name for f in dataclasses.fields(out)}

    class Reading(type(out)):
        _tracking = False  # off while the copy is built and within its own methods

        def __getattribute__(self, name):
            if object.__getattribute__(self, "_tracking"):
                if name in names:
                    read.add(name)
                elif name in ("keys", "values", "items", "to_tuple"):
                    read.update(names)
            return super().__getattribute__(name)

        def __getitem__(self, key):
            if object.__getattribute__(self, "_tracking"):
                read.update({key} if isinstance(key, str) else names)
            with self._untracked():
                return super().__getitem__(key)

        def __iter__(self):
            if object.__getattribute__(self, "_tracking"):
                read.update(names)
            return super().__iter__()

        def __setattr__(self, name, value):  # a write is no read (ModelOutput's own __setattr__ reads keys)
            with self._untracked():
                super().__setattr__(name, value)

        @contextlib.contextmanager
        def _untracked(self):
            was = object.__getattribute__(self, "_tracking")
            object.__setattr__(self, "_tracking", False)
            try:
                yield
            finally:
                object.__setattr__(self, "_tracking", was)

    copy = Reading(**dict(out))
    object.__setattr__(copy, "_tracking", True)
    return copy


def _concat(parts: list) -> Any:
    """One batch from per-sample tower outputs: tensors joined on dim 0, tuples and lists element by element."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts, dim=0)
    if isinstance(parts[0], (tuple, list)):
        return type(parts[0])(_concat(list(items)) if items[0] is not None else None for items in zip(*parts))
    raise TypeError(f"cannot batch a vision tower output of type {type(parts[0]).__name__}")


# --- batching -----------------------------------------------------------------------------------
def batch_prompts(encoded: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Left-padded prompts for ``generate`` (which derives positions from the attention mask)."""
    p_max = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), p_max), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), p_max), dtype=torch.long)
    per_token = {k: torch.zeros((len(encoded), p_max), dtype=v.dtype) for k, v in encoded[0].per_token.items()}
    for i, e in enumerate(encoded):
        ids[i, p_max - len(e):] = e.input_ids
        mask[i, p_max - len(e):] = 1
        for k, v in e.per_token.items():
            per_token[k][i, p_max - len(e):] = v
    return {"input_ids": ids, "attention_mask": mask, **per_token, **stack_images(encoded)}


def batch_sequences(encoded: Sequence[Encoded], answers: Sequence[Sequence[int]], pad_id: int) -> SequenceBatch:
    """Right-padded ``[prompt ; answer ; pad]``: every token keeps the position it has alone."""
    lens = [len(e) + len(a) for e, a in zip(encoded, answers)]
    b, s_max, l_max = len(encoded), max(lens), max((len(a) for a in answers), default=0)
    ids = torch.full((b, s_max), pad_id, dtype=torch.long)
    mask = torch.zeros((b, s_max), dtype=torch.long)
    per_token = {k: torch.zeros((b, s_max), dtype=v.dtype) for k, v in encoded[0].per_token.items()}
    answer_ids = torch.zeros((b, l_max), dtype=torch.long)
    answer_mask = torch.zeros((b, l_max), dtype=torch.bool)
    for i, (e, a) in enumerate(zip(encoded, answers)):
        p, n = len(e), len(a)
        ids[i, :p] = e.input_ids
        if n:
            ids[i, p:p + n] = torch.as_tensor(list(a), dtype=torch.long)
            answer_ids[i, :n] = ids[i, p:p + n]
            answer_mask[i, :n] = True
        mask[i, :p + n] = 1
        for k, v in e.per_token.items():  # answer tokens are text: type 0
            per_token[k][i, :p] = v
    inputs = {"input_ids": ids, "attention_mask": mask, **per_token, **stack_images(encoded)}
    return SequenceBatch(inputs, answer_ids, answer_mask, torch.tensor([len(e) for e in encoded]))


def stack_images(encoded: Sequence[Encoded]) -> dict[str, torch.Tensor]:
    """Concatenate each image input over the batch along dim 0 (zero-padding dim 1 where tile counts differ)."""
    out = {}
    for key in encoded[0].images:
        parts = [e.images[key] for e in encoded]
        if len({p.shape[1:] for p in parts}) > 1 and parts[0].ndim >= 3:
            width = max(p.shape[1] for p in parts)
            parts = [torch.nn.functional.pad(p, (0, 0) * (p.ndim - 2) + (0, width - p.shape[1])) for p in parts]
        out[key] = torch.cat(parts, dim=0)
    return out


def to_device(inputs: dict[str, Any], device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
