"""SFT warm start: oracle data in the reference format, then supervised fine-tuning.

Data format (the one of RL4VLM's released SFT data, LLaVA's conversation JSON)::

    data.json = [{"id": "000012", "image": "images/000012.png",
                  "conversations": [{"from": "human", "value": "<image>\\n{task prompt}"},
                                    {"from": "gpt", "value": "{templated CoT answer}"}]}, ...]

A weak-but-formatted start policy comes from ``sft_wrong_state_frac``: a seeded hash of each
state picks a fixed subset of states whose label is wrong with probability
``sft_wrong_action_prob`` (per-state corruption: a random fraction of wrong labels spread over all
states would leave the right action the majority label everywhere, and the start would not be weak).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from baselines.vlm_ppo import cot
from baselines.vlm_ppo.config import Config, to_json
from baselines.vlm_ppo.device import check_training_dtype, training_device
from baselines.vlm_ppo.encoding import Encoder, release_tower_outputs, stack_images
from baselines.vlm_ppo.envs import make_env
from baselines.vlm_ppo.policy import ActorCritic, hidden_size_of, load_policy
from baselines.vlm_ppo.reading import (
    CAPTION_QUESTION,
    ReadingHead,
    caption,
    image_tokens,
    read_fields,
    reading_accuracy,
    reading_loss,
    reading_task,
)
from vlm_envs.text import build_prompt
from vlm_envs.text.parsing import find_action_key

IMAGE_PREFIX = "<image>\n"


def _unit_hash(*parts) -> float:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def sft_data_dir(cfg: Config) -> Path:
    return Path(cfg.sft_data or Path(cfg.output_dir) / "sft_data")


# The settings that decide what generate_sft_data writes: data made with other values is stale.
DATA_SETTINGS = ("env_id", "env_kwargs", "seed", "cot", "prompt_wording", "sft_samples", "sft_explore",
                 "sft_wrong_state_frac", "sft_wrong_action_prob")


def ensure_sft_data(cfg: Config) -> Path:
    """The SFT data folder, generated if missing.

    Data found in the run's own folder (no ``--sft-data``) must have been made with this run's data
    settings: rerunning a command with new flags would otherwise train on the old data. An explicit
    ``--sft-data`` is used as given.
    """
    out = sft_data_dir(cfg)
    if not (out / "data.json").exists():
        return generate_sft_data(cfg)
    if not cfg.sft_data:
        made_with = json.loads((out / "meta.json").read_text()).get("config", {})
        now = json.loads(to_json(cfg))
        stale = [f"{k}={made_with.get(k)!r} (now {now[k]!r})" for k in DATA_SETTINGS if made_with.get(k) != now[k]]
        if stale:
            raise ValueError(f"the SFT data in {out} was made with other settings: {', '.join(stale)}; delete that "
                             "folder to regenerate it, use another --output-dir, or pass it as --sft-data to reuse it")
    return out


def prompt_task_of(cfg: Config) -> str:
    env = make_env(cfg)
    task = env.unwrapped.prompt_task
    env.close()
    return task


def action_choices(env, info: dict) -> list[str]:
    """The action names the env offers now: its fixed ``action_names`` (the card games), else the
    step's admissible commands (ALFWorld)."""
    return list(getattr(env, "action_names", ())) or list(info.get("admissible_commands", []))


def state_key(task: str, info: dict, name: str) -> str:
    """The state as the CoT answer describes it (true numbers, task, the oracle's action), with or
    without ``cot`` in the data: the action-only answer alone would make every state with the same
    oracle action one state."""
    return cot.answer(task, info, name)


def corrupted(cfg: Config, key: str) -> bool:
    """Whether ``key``'s state is in the fixed, seeded subset of states whose label may be wrong."""
    return _unit_hash(cfg.seed, key) < cfg.sft_wrong_state_frac


def wrong_action(cfg: Config, key: str, right: str, choices: list[str]) -> str:
    """The one wrong action of a corrupted state, fixed per state (a seeded hash): with many actions
    (EZPoints' 13, ALFWorld's commands) random wrong labels would leave the right action the most
    frequent label of the state, and a greedy imitator would play it."""
    others = [a for a in choices if a != right]
    return others[int(_unit_hash(cfg.seed, "wrong", key) * len(others))]


def generate_sft_data(cfg: Config) -> Path:
    """Play oracle episodes (with ``sft_explore`` random moves) and write labelled steps as LLaVA JSON + PNGs."""
    from PIL import Image

    out = sft_data_dir(cfg)
    (out / "images").mkdir(parents=True, exist_ok=True)
    env = make_env(cfg)
    rng = np.random.default_rng(cfg.seed)
    u = env.unwrapped
    task = u.prompt_task
    records, episode, n_wrong = [], 0, 0
    while len(records) < cfg.sft_samples:
        obs, info = env.reset(seed=cfg.seed * 1_000_003 + episode)
        episode += 1
        done = False
        while not done and len(records) < cfg.sft_samples:
            choices = action_choices(u, info)
            name = label = cot.oracle_name(u)
            key = state_key(task, info, name)
            if len(choices) > 1 and corrupted(cfg, key) and rng.random() < cfg.sft_wrong_action_prob:
                label = wrong_action(cfg, key, name, choices)
                n_wrong += 1
            idx = f"{len(records):06d}"
            Image.fromarray(obs["image"]).save(out / "images" / f"{idx}.png")
            prompt = build_prompt(task, obs["text"], cot=cfg.cot, wording=cfg.prompt_wording, **u.prompt_params)
            records.append({
                "id": idx,
                "image": f"images/{idx}.png",
                "conversations": [
                    {"from": "human", "value": IMAGE_PREFIX + prompt},
                    {"from": "gpt", "value": cot.answer(task, info, label, cfg.cot)},
                ],
            })
            play = name
            if rng.random() < cfg.sft_explore:
                play = choices[int(rng.integers(len(choices)))]
            obs, _, term, trunc, info = env.step(cot.env_action(u, play))
            done = term or trunc
    env.close()
    start = imitation_start(cfg)
    (out / "data.json").write_text(json.dumps(records, indent=1))
    (out / "meta.json").write_text(json.dumps({"env_id": cfg.env_id, "samples": len(records), "episodes": episode,
                                               "wrong_labels": n_wrong, "imitation_start": start,
                                               "config": json.loads(to_json(cfg))}, indent=1))
    print(f"wrote {len(records)} SFT samples ({n_wrong} with a wrong action) from {episode} episodes to {out}")
    print("a model imitating this data's majority label in every state would succeed in {success:.3f} of "
          "{episodes:.0f} held-out episodes (greedy; the oracle: {oracle:.3f})".format(**start))
    return out


def imitation_start(cfg: Config, episodes: int = 0) -> dict[str, float]:
    """The weak start the data asks for: held-out greedy success (evaluation seeds) of a policy that
    plays each state's majority label, i.e. the fixed wrong action in a corrupted state when
    ``sft_wrong_action_prob > 0.5`` and the oracle's elsewhere; with the oracle's own success.

    It is what SFT aims at (a model that reads perfectly and fits the labels), not a model's start:
    the reading gate and the evaluation before PPO measure that."""
    from baselines.vlm_ppo.envs import held_out
    from vlm_envs.evaluation.seeds import check_eval_seeds

    episodes = episodes or cfg.eval_greedy_episodes or cfg.eval_episodes
    check_eval_seeds(cfg.eval_seed, episodes)
    env = make_env(held_out(cfg))
    u = env.unwrapped
    wins = {"success": 0, "oracle": 0}
    for k in range(episodes):
        for rule in wins:
            _, info = env.reset(seed=cfg.eval_seed + k)
            done, steps = False, 0
            while not done and steps < cfg.eval_max_steps:
                name = cot.oracle_name(u)
                key = state_key(u.prompt_task, info, name)
                choices = action_choices(u, info)
                if rule == "success" and len(choices) > 1 and corrupted(cfg, key) and cfg.sft_wrong_action_prob > 0.5:
                    name = wrong_action(cfg, key, name, choices)
                _, _, term, trunc, info = env.step(cot.env_action(u, name))
                done, steps = term or trunc, steps + 1
            wins[rule] += bool(info.get("success", False))
    env.close()
    return {rule: n / episodes for rule, n in wins.items()} | {"episodes": float(episodes)}


def load_sft_data(cfg: Config, encoder: Encoder) -> list[dict]:
    """Samples: the encoded prompt (as at RL time), the answer's in-context ids + stop token, the image."""
    from PIL import Image

    root = sft_data_dir(cfg)
    records = json.loads((root / "data.json").read_text())
    task = prompt_task_of(cfg)
    encoded: dict[tuple, object] = {}  # identical (prompt, frame) pairs (NumberLine has 30 frames) are encoded once
    samples = []
    for rec in records:
        human, gpt = rec["conversations"][0]["value"], rec["conversations"][1]["value"]
        prompt = human[len(IMAGE_PREFIX):] if human.startswith(IMAGE_PREFIX) else human
        image = np.array(Image.open(root / rec["image"]).convert("RGB"))
        key = (prompt, hashlib.sha1(image.tobytes()).hexdigest())
        if key not in encoded:
            encoded[key] = encoder.encode([prompt], [image])[0]
        samples.append({"prompt": encoded[key], "image": image, "answer": gpt,
                        "answer_ids": encoder.answer_ids(encoder.render(prompt), gpt), "fields": read_fields(gpt, task)})
    return samples


def check_context(samples: list[dict], config) -> None:
    """Refuse data longer than the model's positions (RoPE models would run on, extrapolating silently)."""
    text_config = getattr(config, "text_config", None) or config
    limit = getattr(text_config, "max_position_embeddings", None)
    longest = max(len(s["prompt"]) + len(s["answer_ids"]) for s in samples)
    if limit and longest > limit:
        raise ValueError(
            f"the longest SFT sample is {longest} tokens (prompt, image tokens and answer), more than the model's "
            f"{limit} positions. For ALFWorld, build the embedded model with its vocabulary and context: "
            f"python -m baselines.vlm_ppo.tiny --path DIR --alfworld True, then --model DIR")


@torch.no_grad()
def answer_accuracy(policy: ActorCritic, samples: list[dict], max_new_tokens: int) -> dict[str, float]:
    """Greedy answers vs. labels: exact match, and match of the CoT part before ``"action"`` (the reading gate)."""
    policy.eval()
    exact = prefix = 0
    tokenizer = policy.encoder.tokenizer
    for s0 in range(0, len(samples), 32):
        chunk = samples[s0:s0 + 32]
        prompts = [s["prompt"] for s in chunk]
        answers = policy.generate(prompts, greedy=True, max_new_tokens=max_new_tokens)
        release_tower_outputs(prompts)
        for s, text in zip(chunk, tokenizer.batch_decode(answers, skip_special_tokens=True)):
            text = text.strip()
            exact += text == s["answer"]
            k_pred, k_true = find_action_key(text), find_action_key(s["answer"])
            prefix += k_pred is not None and k_true is not None and text[:k_pred[0]] == s["answer"][:k_true[0]]
    return {"exact": exact / len(samples), "cot_prefix": prefix / len(samples)}


def _reading_batch(batch: list[dict]) -> tuple[dict, torch.Tensor]:
    """Image inputs and the true number fields of ``batch``."""
    return stack_images([s["prompt"] for s in batch]), torch.tensor([s["fields"] for s in batch], dtype=torch.long)


def align_vision(cfg: Config, policy: ActorCritic, head: ReadingHead, samples: list[dict], rng: random.Random,
                 log) -> float:
    """Stage 1 (LLaVA-style alignment, on the reading objective): train only the vision tower, the
    projector and the reading head for ``align_steps`` steps so the image tokens carry the numbers."""
    from tqdm.auto import tqdm

    params = vision_path_parameters(policy.vlm) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.align_lr, weight_decay=0.0)
    policy.vlm.train()
    acc = float("nan")
    t0 = time.time()
    bar = tqdm(range(cfg.align_steps), desc="align")
    for step in bar:
        images, labels = _reading_batch(rng.sample(samples, min(cfg.sft_batch_size, len(samples))))
        loss, acc = reading_loss(head, policy, images, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
        log.write(f"align{step},{loss.item():.6f},{cfg.align_lr:.3e},{time.time() - t0:.1f},,{loss.item():.6f},{acc:.3f}\n")
    return acc


def caption_samples(encoder: Encoder, samples: list[dict], task: str) -> list[dict]:
    """One caption sample per distinct frame whose numbers are all known: the frame with
    :data:`CAPTION_QUESTION`, answered by :func:`caption` of its numbers."""
    prompt = encoder.render(CAPTION_QUESTION)
    frames: dict[bytes, dict] = {}
    for s in samples:
        frame = s["image"].tobytes()
        if min(s["fields"], default=-1) >= 0 and frame not in frames:
            frames[frame] = {"prompt": encoder.encode([CAPTION_QUESTION], [s["image"]])[0],
                             "answer_ids": encoder.answer_ids(prompt, caption(task, s["fields"]))}
    return list(frames.values())


def align_captions(cfg: Config, policy: ActorCritic, samples: list[dict], rng: random.Random, log) -> float:
    """Stage 1 on the captioning objective: train only the vision tower and the projector for
    ``align_caption_steps`` steps so that the frozen language model states the frame's numbers.
    Returns the last step's loss (mean per answer token)."""
    from tqdm.auto import tqdm

    vision = vision_path_parameters(policy.vlm)
    vision_ids = {id(p) for p in vision}
    frozen = [p for p in policy.vlm.parameters() if p.requires_grad and id(p) not in vision_ids]
    for p in frozen:  # no weight gradients for the LM: its activations still pass them to the image tokens
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(vision, lr=cfg.align_lr, weight_decay=0.0)
    policy.vlm.train()
    loss = torch.full((), float("nan"))
    t0 = time.time()
    try:
        bar = tqdm(range(cfg.align_caption_steps), desc="caption")
        for step in bar:
            loss = sft_loss(policy, rng.sample(samples, min(cfg.align_caption_batch_size, len(samples))))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            log.write(f"caption{step},{loss.item():.6f},{cfg.align_lr:.3e},{time.time() - t0:.1f},{loss.item():.6f},,\n")
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return loss.item()


def train_sft(cfg: Config, model_path: str) -> Path:
    """Vision alignment (``align_steps``), then fine-tuning of ``model_path`` on the SFT data (mean token
    cross-entropy on the answer, plus ``aux_reading_coef`` x the reading loss); reading gate; save."""
    from tqdm.auto import tqdm

    check_training_dtype(cfg.dtype)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ensure_sft_data(cfg)
    processor, vlm = load_policy(model_path, dtype=cfg.dtype, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                 lora_dropout=cfg.lora_dropout, train_vision=cfg.sft_train_vision)
    vlm.to(training_device())
    if cfg.gradient_checkpointing:
        vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        vlm.enable_input_require_grads()
    encoder = Encoder(processor, vlm.config, cfg.conv_template, cfg.image_mode)
    samples = load_sft_data(cfg, encoder)
    check_context(samples, vlm.config)
    rng = random.Random(cfg.seed)
    held_out = rng.sample(samples, min(64, len(samples)))
    ac = ActorCritic(vlm, encoder, temperature=1.0, thought_coef=1.0)
    task = prompt_task_of(cfg)
    has_fields = any(f >= 0 for s in samples for f in s["fields"])
    use_reading = has_fields and (cfg.align_steps > 0 or cfg.aux_reading_coef > 0)
    head = None
    if use_reading:  # sized by the model's own image tokens for one frame, and by the task's numbers
        with torch.no_grad():
            tokens = image_tokens(ac, _reading_batch(samples[:1])[0]).shape[1]
        reading = reading_task(task)
        head = ReadingHead(tokens, hidden_size_of(vlm.config), len(reading.fields), reading.classes).to(ac.device)
    out = Path(cfg.output_dir) / "sft" if not cfg.sft_output else Path(cfg.sft_output)
    log = open(Path(cfg.output_dir) / "sft_log.csv", "w")
    log.write("step,loss,lr,elapsed_s,lm_loss,reading_loss,reading_acc\n")
    t0 = time.time()
    if use_reading and cfg.align_steps > 0:
        acc = align_vision(cfg, ac, head, samples, rng, log)
        print(f"vision alignment: {cfg.align_steps} steps in {time.time() - t0:.0f}s, reading-head accuracy {acc:.2f}")
    captions = caption_samples(encoder, samples, task) if cfg.align_caption_steps > 0 else []
    if cfg.align_caption_steps > 0 and not captions:
        print("caption alignment skipped: no SFT answer states all of the image's numbers (ALFWorld, --cot False)")
    if captions:
        t1 = time.time()
        loss = align_captions(cfg, ac, captions, rng, log)
        print(f"caption alignment: {cfg.align_caption_steps} steps on {len(captions)} frames in "
              f"{time.time() - t1:.0f}s, last loss {loss:.3f} per token")
    params = [p for p in vlm.parameters() if p.requires_grad] + (list(head.parameters()) if use_reading else [])
    optimizer = torch.optim.AdamW(params, lr=cfg.sft_lr, weight_decay=0.0)
    warmup = max(1, int(0.03 * cfg.sft_steps))
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * min(s / max(cfg.sft_steps, 1), 1.0)))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * cosine(s))
    vlm.train()
    bar = tqdm(range(cfg.sft_steps), desc="sft")
    for step in bar:
        batch = rng.sample(samples, min(cfg.sft_batch_size, len(samples)))
        lm_loss = sft_loss(ac, batch)
        r_loss, r_acc = torch.zeros(()), float("nan")
        if use_reading and cfg.aux_reading_coef > 0:
            images, labels = _reading_batch(batch)
            r_loss, r_acc = reading_loss(head, ac, images, labels)
        loss = lm_loss + cfg.aux_reading_coef * r_loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{lm_loss.item():.4f}", read=f"{r_acc:.2f}")
        log.write(f"{step},{loss.item():.6f},{scheduler.get_last_lr()[0]:.3e},{time.time() - t0:.1f},"
                  f"{lm_loss.item():.6f},{r_loss.item():.6f},{r_acc:.3f}\n")
    log.close()
    seconds = time.time() - t0
    acc = answer_accuracy(ac, held_out, cfg.max_new_tokens)
    print(f"SFT done in {seconds:.0f}s; greedy answers on {len(held_out)} training samples: "
          f"exact {acc['exact']:.2f}, CoT prefix {acc['cot_prefix']:.2f}")
    if has_fields:
        gate = reading_accuracy(cfg, ac)
        acc.update(gate)
        fields = ", ".join(f"{k[5:]} {v:.2f}" for k, v in gate.items() if k not in ("read/states", "read/oracle_action"))
        print(f"reading gate (greedy CoT fields on {gate['read/states']:.0f} held-out states): {fields}; "
              f"oracle action {gate['read/oracle_action']:.2f}")
    vlm = vlm.merge_and_unload() if cfg.lora_r > 0 else vlm
    vlm.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "sft_metrics.json").write_text(json.dumps({**acc, "seconds": seconds}))
    return out


def sft_loss(policy: ActorCritic, batch: list[dict]) -> torch.Tensor:
    """Mean negative log-likelihood of the answer tokens (temperature 1, the same token mask as RL)."""
    prompts = [s["prompt"] for s in batch]
    out = policy(prompts, [s["answer_ids"] for s in batch], [None] * len(batch), temperature=1.0)
    release_tower_outputs(prompts)  # one pass per sample and step: nothing to replay, much to hold
    mask = out.answer_mask.float()
    return -(out.token_logprobs * mask).sum() / mask.sum()


def vision_path_parameters(vlm) -> list[torch.nn.Parameter]:
    """The vision tower's and the projector's parameters (what the alignment stage trains): every
    parameter outside the language model and its output head."""
    base = vlm.get_base_model() if hasattr(vlm, "get_base_model") else vlm
    lm = {id(p) for p in base.get_decoder().parameters()} | {id(p) for p in base.get_output_embeddings().parameters()}
    return [p for p in base.parameters() if id(p) not in lm]
