"""The embedded default model: a tiny LLaVA built in code, with no download.

* tokenizer: a byte-level BPE trained here on the package's own prompt and answer text
  (``vlm_envs.text`` templates + :mod:`baselines.vlm_ppo.cot` answers), so any string still encodes;
  :data:`ALFWORLD_SPEC` adds ALFWorld's text from the train games and a longer context
  (``python -m baselines.vlm_ppo.tiny --path runs/tiny-alfworld --alfworld True``, then ``--model runs/tiny-alfworld``);
* image processor: the PIL-backed CLIP processor (no torchvision needed), 96x96 input by default;
* model: ``LlavaForConditionalGeneration`` with a 2-layer Llama text model and a 2-layer CLIP
  vision tower whose patch embedding gets a larger init (std 0.2): at CLIP's default 0.02 the
  rendered digits all map to nearly the same features and the tower never learns to read.

:func:`build_tiny_llava` saves everything with ``save_pretrained``; the trainer then loads it
through the same ``AutoProcessor`` + ``AutoModelForImageTextToText`` path as a Hub checkpoint.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# Renders the same string as vlm_envs.text.conversation(prompt, "llava_v1") from chat_messages(prompt).
LLAVA_V1_CHAT_TEMPLATE = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
    "{% for message in messages %}{% if message['role'] == 'user' %} USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% else %} ASSISTANT: {{ message['content'][0]['text'] if message['content'] is not string else message['content'] }}</s>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


@dataclass
class TinySpec:
    """Sizes of the embedded tiny LLaVA."""

    hidden_size: int = 128
    text_layers: int = 2
    vision_layers: int = 2
    heads: int = 4
    image_size: int = 96
    patch_size: int = 12
    vocab_size: int = 2048
    patch_init_std: float = 0.2
    seed: int = 0
    max_positions: int = 1024
    """Context length of the text model (RoPE: no parameters, only attention cost)."""
    alfworld_text: bool = False
    """Also train the tokenizer on ALFWorld's text (:func:`alfworld_corpus`). Opt-in: it changes
    the merges, so the card games' prompts and answers get other tokens than the default model's."""
    alfworld_games: str = ""
    """Game folder that corpus plays (empty: the shipped ``train`` split)."""


ALFWORLD_SPEC = TinySpec(max_positions=2048, alfworld_text=True)
"""The embedded model with room for ALFWorld: its longest shipped prompt (observation, task and
admissible commands, plus 64 image tokens) exceeds the default 1,024 positions with the default
tokenizer, whose merges never saw a room description (docs/training.md, "ALFWorld: the embedded model's capacity")."""


def training_corpus() -> list[str]:
    """Every prompt template (both wordings, CoT and action-only) and many templated answers."""
    from vlm_envs.cards.blackjack import Card
    from vlm_envs.text import build_prompt, conversation
    from vlm_envs.text.prompts import CONVERSATION_TEMPLATES, TASKS

    from baselines.vlm_ppo import cot

    texts: list[str] = []
    formulas = ["", "10+", "6*2", "(3+5)*", "7-", "4/2+10"]
    alf = "You arrive at loc 1.\n\nYour task is to: put a mug in cabinet.\n\nAdmissible actions:\ngo to cabinet 1\nlook"
    for task, cot_flag, wording in itertools.product(TASKS, (True, False), ("reference", "clean")):
        samples = formulas if task in ("ezpoints", "points24") else [alf if task == "alfworld" else ""]
        for text in samples:
            prompt = build_prompt(task, text, cot=cot_flag, wording=wording)
            texts += [conversation(prompt, name) for name in CONVERSATION_TEMPLATES]
    for current, target in itertools.product(range(11), range(11)):
        for action in "+-":
            texts.append(cot.numberline({"Current": current, "Target": target}, action))
    # Totals 2..10 (10 twice: the tokenizers were trained on this list) against every up-card value.
    for player, dealer in itertools.product((*range(2, 11), 10), range(1, 11)):
        upcard = Card(dealer, {1: "A", 10: "K"}.get(dealer, str(dealer)), "H")
        for action in ("stand", "hit"):
            texts.append(cot.blackjack({"player_total": player, "dealer_upcard": upcard}, action))
    for numbers in ([2, 10], [6, 2], [4, 3], [1, 5, 10, 7], [3, 3, 8, 8]):
        for formula in (["" ], [numbers[0]], [numbers[0], "+"], [numbers[0], "*", numbers[1]]):
            for action in [*map(str, range(1, 11)), "+", "-", "*", "/", "(", ")", "="]:
                texts.append(cot.answer("points24", {"Numbers": numbers, "Formula": formula}, action))
                texts.append(cot.answer("ezpoints", {"Numbers": numbers, "Formula": formula}, action))
    return texts


def alfworld_corpus(game_dir: str = "", random_steps: int = 20, seed: int = 0) -> list[str]:
    """ALFWorld's text as the trainer sees it: on every game of the train split (of ``game_dir``,
    default the shipped games), the expert's episode (each step's prompt in both wordings and
    its CoT answer) and an episode of ``random_steps`` random admissible commands (other feedback:
    opened receptacles, failed moves). Only the train split: evaluation games stay unseen."""
    import gymnasium as gym
    import numpy as np

    import vlm_envs  # noqa: F401  (registers the ids)
    from vlm_envs.text import build_prompt, conversation

    from baselines.vlm_ppo import cot

    from vlm_envs.alfworld_wrap import shipped_games_dir

    # The shipped games by default, never the generated full train set: the vocabulary is part of
    # the model and must not depend on whether this machine ran ``generate --preset official``.
    env = gym.make("alfworld/ALFWorld-v0", split="train", game_dir=game_dir or str(shipped_games_dir()))
    u = env.unwrapped
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for game in range(len(u.games)):
        for expert in (True, False):
            obs, info = env.reset(seed=seed + game, options={"game_index": game})
            for _ in range(u.max_steps if expert else random_steps):
                command = u.oracle_action() if expert else str(rng.choice(info["admissible_commands"]))
                texts += [conversation(build_prompt("alfworld", obs["text"], wording=w)) for w in ("reference", "clean")]
                texts.append(cot.answer("alfworld", info, command))
                obs, _, term, trunc, info = env.step(cot.env_action(u, command))
                if term or trunc:
                    break
    env.close()
    return texts


def build_tokenizer(vocab_size: int = 2048, corpus: list[str] | None = None, max_length: int = 2048):
    """Train a byte-level BPE on ``corpus`` (default :func:`training_corpus`) and wrap it in ``PreTrainedTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    # Digits stay single tokens (the model must read them) and every '"' starts a new piece (so
    # JSON keys and values are separate tokens); otherwise merges may cross words, which shrinks
    # the long, fixed prompt templates to a few dozen tokens and keeps CPU steps fast.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex('"'), behavior="merged_with_next"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(training_corpus() if corpus is None else corpus, trainer=trainer)
    bos = bpe.token_to_id("<s>")
    bpe.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=max(2048, max_length),
    )


def build_tiny_llava(path: str | Path, spec: TinySpec | None = None) -> Path:
    """Build the tiny LLaVA (model + processor) and ``save_pretrained`` it to ``path``."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    spec = spec or TinySpec()
    path = Path(path)
    corpus = training_corpus() + alfworld_corpus(spec.alfworld_games) if spec.alfworld_text else None
    tokenizer = build_tokenizer(spec.vocab_size, corpus, spec.max_positions)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=LLAVA_V1_CHAT_TEMPLATE,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=2 * spec.hidden_size,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=False,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=spec.hidden_size,
        intermediate_size=2 * spec.hidden_size,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.hidden_size,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=ids["<image>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():
        patch = model.model.vision_tower.get_input_embeddings()
        patch.weight.normal_(0.0, spec.patch_init_std)
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.bos_token_id = ids["<s>"]
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def main(path: str, alfworld: bool = False) -> None:
    """Build the embedded tiny LLaVA into ``path`` (``--alfworld true``: :data:`ALFWORLD_SPEC`), for ``--model path``."""
    print(build_tiny_llava(path, ALFWORLD_SPEC if alfworld else None))


if __name__ == "__main__":
    import tyro

    tyro.cli(main, config=(tyro.conf.FlagConversionOff,))
