"""A Hugging Face vision-language model as the agent of a vlm_envs vector env.

    python examples/hf_agent.py                                   # tiny random LLaVA built in code, no download
    python examples/hf_agent.py --model llava-hf/llava-v1.6-mistral-7b-hf --env-id gym_cards/Blackjack-v0

One code path for every model: ``AutoProcessor`` + ``AutoModelForImageTextToText``. With
``--model tiny`` (default) a ~1M-parameter LLaVA is built from a config and saved with
``save_pretrained`` (``baselines.vlm_ppo.tiny``), then loaded through the same calls; its answers
are noise, so most of them fail to parse and the env plays its seeded random fallback. The point
is the plumbing: :func:`vlm_envs.running.agent_loop.run_agent` builds each prompt from the env,
``generate`` below turns chat messages + images into text, the env's parser turns text into
actions, and every step comes back as a plain record. Needs ``pip install "vlm-envs[train]"``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import vlm_envs
from vlm_envs.running.agent_loop import run_agent


def load(model: str):
    """``(processor, model)`` for a Hub id, a local folder, or ``"tiny"``."""
    if model == "tiny":
        from baselines.vlm_ppo.tiny import build_tiny_llava

        model = str(build_tiny_llava(tempfile.mkdtemp(prefix="tiny-llava-")))
    processor = AutoProcessor.from_pretrained(model)
    processor.tokenizer.padding_side = "left"  # generation pads on the left (not kept by save/load in transformers v5)
    vlm = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32).eval()
    return processor, vlm


def make_generate(processor, vlm, max_new_tokens: int = 48, temperature: float = 0.2, seed: int = 0):
    """``generate(chat_prompts, images) -> texts`` for :func:`run_agent` (``chat=True``)."""
    tokenizer = processor.tokenizer
    # a random model samples special tokens (<image>, <pad>) too: block them
    suppress = [i for i in tokenizer.all_special_ids if i != tokenizer.eos_token_id]
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def generate(messages: Sequence[list[dict]], images: Sequence[np.ndarray]) -> list[str]:
        texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
        inputs = processor(text=texts, images=[Image.fromarray(im) for im in images], padding=True, return_tensors="pt")
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        out = vlm.generate(**inputs, do_sample=temperature > 0, temperature=temperature or None, max_new_tokens=max_new_tokens,
                           suppress_tokens=suppress, pad_token_id=tokenizer.pad_token_id)
        return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    return generate


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (built in code), a Hub id or a local folder")
    parser.add_argument("--env-id", default="gym_cards/NumberLine-v0")
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.2, help="the paper samples at 0.2; 0 is greedy")
    parser.add_argument("--no-cot", dest="cot", action="store_false", help="action-only prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", metavar="JSONL", help="write the records (images as shapes) to this file")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    processor, vlm = load(args.model)
    envs = gym.make_vec(args.env_id, args.num_envs, vectorization_mode="sync", wrappers=[vlm_envs.TextActions])
    turns = run_agent(envs, make_generate(processor, vlm, args.max_new_tokens, args.temperature, args.seed),
                      episodes=args.episodes, seed=args.seed, cot=args.cot, chat=True)
    envs.close()

    finished = [t for t in turns if t.done]
    summary = {
        "turns": len(turns),
        "episodes": len(finished),
        "success_rate": sum(t.success for t in finished) / max(len(finished), 1),
        "parse_rate": sum(t.parse_ok for t in turns) / max(len(turns), 1),
    }
    print(json.dumps(summary))
    print("first turn:", json.dumps({k: v for k, v in turns[0].to_dict().items() if k not in ("prompt", "image")}))
    if args.save:
        with open(args.save, "w") as f:
            for t in turns:
                record = t.to_dict()
                record["image"] = list(np.shape(record["image"]))
                f.write(json.dumps(record) + "\n")
    return summary


if __name__ == "__main__":
    main()
